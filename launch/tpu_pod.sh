#!/usr/bin/env bash
# Train on a Cloud TPU pod slice, all of its hosts at once: create the TPU VM unless it exists
# (start it if it is stopped), put this code on every worker, install it there, run
#   python -m daps_jax.main --distributed ARGS
# on every worker, then stop or delete the TPU if asked. jax.distributed.initialize() finds the
# other workers by itself on Cloud TPU. `gcloud compute tpus tpu-vm ssh --worker=all` runs the
# command on all workers in parallel and streams the output of all of them here, interleaved
# (worker 0 is process 0). Interrupting gcloud may leave the trainers running on the workers.
# Give a gs:// --workdir: a local one is on each worker's own disk.
#
# Variables (environment):
#   TPU_NAME          name of the TPU VM                                   (required)
#   ZONE              its zone, e.g. us-central2-b                          (required)
#   ACCELERATOR_TYPE  e.g. v4-32                                            (required to create it)
#   TPU_VERSION       runtime image of a new TPU VM                         (default: tpu-ubuntu2204-base)
#   PROJECT           Google Cloud project, passed as --project             (default: gcloud's own)
#   CREATE_FLAGS      more flags for `tpu-vm create`, e.g. "--spot"          (default: none)
#   REPO_URL          git URL the workers clone (or update) into REMOTE_DIR  (default: none: copy
#                     this checkout instead, see below)
#   GIT_REF           branch, tag or commit of REPO_URL to check out         (default: its HEAD)
#   REMOTE_DIR        code directory on the workers; a relative path (or ~/...) is under the home
#                     directory there                                        (default: daps_jax)
#   STOP_AFTER        1 to stop the TPU at the end, also after a failure     (default: 0); not all
#                     TPU types can be stopped
#   DELETE_AFTER      1 to delete the TPU at the end, also after a failure   (default: 0)
#   ASSUME_EXISTS     1 to use the TPU without checking that it exists (no `describe`, no create)
#                                                                            (default: 0)
#   DRY_RUN           1 to print the commands instead of running them (or pass --dry-run first).
#                     gcloud is never called then, so the TPU counts as missing and the create
#                     command is printed, unless ASSUME_EXISTS=1.
#
# Without REPO_URL, the working tree (uncommitted changes too; not .git, .venv, venv, workdirs,
# caches) is packed into a tarball, copied to every worker with `tpu-vm scp --worker=all` and
# unpacked over REMOTE_DIR. The code is installed into REMOTE_DIR/.venv with
# `pip install -e '.[tpu]'`; the venv is kept for later runs. Remote commands are quoted for the
# workers' login shell (bash on TPU VM images).
#
# Example:
#   TPU_NAME=daps-v4 ZONE=us-central2-b ACCELERATOR_TYPE=v4-32 STOP_AFTER=1 launch/tpu_pod.sh \
#     --config=configs/imagenet.py --workdir=gs://my-bucket/daps/imagenet
set -euo pipefail

TPU_NAME="${TPU_NAME:-}"
ZONE="${ZONE:-}"
ACCELERATOR_TYPE="${ACCELERATOR_TYPE:-}"
TPU_VERSION="${TPU_VERSION:-tpu-ubuntu2204-base}"
PROJECT="${PROJECT:-}"
CREATE_FLAGS="${CREATE_FLAGS:-}"
REPO_URL="${REPO_URL:-}"
GIT_REF="${GIT_REF:-HEAD}"
REMOTE_DIR="${REMOTE_DIR:-daps_jax}"
STOP_AFTER="${STOP_AFTER:-0}"
DELETE_AFTER="${DELETE_AFTER:-0}"
ASSUME_EXISTS="${ASSUME_EXISTS:-0}"
DRY_RUN="${DRY_RUN:-0}"
if [[ "${1:-}" == "--dry-run" ]]; then
  DRY_RUN=1
  shift
fi

usage() {
  echo "usage: TPU_NAME=.. ZONE=.. [ACCELERATOR_TYPE=v4-32] [TPU_VERSION=..] [PROJECT=..] [REPO_URL=.. [GIT_REF=..]] [REMOTE_DIR=..] [STOP_AFTER=1] [DELETE_AFTER=1] [ASSUME_EXISTS=1] $0 [--dry-run] --config=configs/X.py --workdir=DIR [...]" >&2
  exit 2
}
if [[ $# -eq 0 ]]; then
  usage
fi
for name in TPU_NAME ZONE; do
  if [[ -z "${!name}" ]]; then
    echo "${name} is required." >&2
    usage
  fi
done
for arg in "$@"; do
  case "${arg}" in
    --distributed|--coordinator_address*|--num_processes*|--process_id*)
      echo "Leave out '${arg}': this script passes --distributed." >&2
      exit 2 ;;
  esac
done
REMOTE_DIR="${REMOTE_DIR#\~/}"  # The remote shell starts in the home directory.
read -r -a create_flags <<< "${CREATE_FLAGS}"

cd "$(dirname "$0")/.."
# shellcheck source-path=SCRIPTDIR/..
source launch/common.sh
if [[ "${DRY_RUN}" != 1 ]] && ! command -v gcloud >/dev/null; then
  echo "gcloud not found: install the Google Cloud CLI (https://cloud.google.com/sdk/docs/install)." >&2
  exit 2
fi

where=("--zone=${ZONE}")
if [[ -n "${PROJECT}" ]]; then
  where+=("--project=${PROJECT}")
fi
tpu=(gcloud compute tpus tpu-vm)
on_all_workers() {  # on_all_workers COMMAND: runs the shell command on every worker.
  run "${tpu[@]}" ssh "${TPU_NAME}" "${where[@]}" --worker=all "--command=$1"
}
remote_dir="$(quoted "${REMOTE_DIR}")"

# 1. The TPU VM: reuse it (starting it if stopped), or create it.
state=""
if [[ "${ASSUME_EXISTS}" == 1 ]]; then
  state=assumed
else
  describe=("${tpu[@]}" describe "${TPU_NAME}" "${where[@]}" '--format=value(state)')
  echo "+ $(quoted "${describe[@]}")"
  if [[ "${DRY_RUN}" == 1 ]]; then
    echo "(dry run: gcloud is not called; the TPU VM counts as missing)"
  else
    state="$("${describe[@]}" 2>/dev/null)" || state=""
  fi
fi
if [[ -z "${state}" ]]; then
  if [[ -z "${ACCELERATOR_TYPE}" ]]; then
    echo "TPU VM ${TPU_NAME} not found in ${ZONE}; set ACCELERATOR_TYPE (e.g. v4-32) to create it." >&2
    exit 2
  fi
  echo "Creating the TPU VM ${TPU_NAME} (${ACCELERATOR_TYPE}, ${TPU_VERSION})."
  run "${tpu[@]}" create "${TPU_NAME}" "${where[@]}" "--accelerator-type=${ACCELERATOR_TYPE}" \
    "--version=${TPU_VERSION}" ${create_flags[@]+"${create_flags[@]}"}
elif [[ "${state}" == STOPPED ]]; then
  echo "Starting the stopped TPU VM ${TPU_NAME}."
  run "${tpu[@]}" start "${TPU_NAME}" "${where[@]}"
elif [[ "${state}" == assumed ]]; then
  echo "Using the TPU VM ${TPU_NAME} (ASSUME_EXISTS=1)."
else
  echo "Using the existing TPU VM ${TPU_NAME} (state: ${state})."
fi

# From here on, stop or delete the TPU at the end if asked, whatever happens.
finish() {
  local status=$?
  trap - EXIT
  if [[ "${DELETE_AFTER}" == 1 ]]; then
    echo "Deleting the TPU VM ${TPU_NAME}."
    run "${tpu[@]}" delete "${TPU_NAME}" "${where[@]}" --quiet || status=$((status ? status : 1))
  elif [[ "${STOP_AFTER}" == 1 ]]; then
    echo "Stopping the TPU VM ${TPU_NAME}."
    run "${tpu[@]}" stop "${TPU_NAME}" "${where[@]}" || status=$((status ? status : 1))
  fi
  exit "${status}"
}
trap finish EXIT

# 2. The code, on every worker.
if [[ -n "${REPO_URL}" ]]; then
  echo "Cloning ${REPO_URL} (${GIT_REF}) into ~/${REMOTE_DIR} on every worker."
  on_all_workers "set -e; if [ ! -d ${remote_dir}/.git ]; then git clone --quiet $(quoted "${REPO_URL}") ${remote_dir}; fi; git -C ${remote_dir} fetch --quiet origin $(quoted "${GIT_REF}"); git -C ${remote_dir} checkout --quiet --force FETCH_HEAD"
else
  tarball="${TMPDIR:-/tmp}/daps_jax_${TPU_NAME}.tar.gz"
  echo "Copying this checkout to ~/${REMOTE_DIR} on every worker."
  run tar -czf "${tarball}" --exclude=.git --exclude=.venv --exclude=venv --exclude=workdirs \
    --exclude=__pycache__ --exclude='*.egg-info' --exclude=.pytest_cache .
  run "${tpu[@]}" scp "${tarball}" "${TPU_NAME}:daps_jax_code.tar.gz" "${where[@]}" --worker=all
  run rm -f "${tarball}"
  on_all_workers "set -e; mkdir -p ${remote_dir}; tar -xzf daps_jax_code.tar.gz -C ${remote_dir}; rm daps_jax_code.tar.gz"
fi

# 3. Install, on every worker (python3-venv is added when the image lacks it).
echo "Installing daps_jax[tpu] into ~/${REMOTE_DIR}/.venv on every worker."
on_all_workers "set -e; cd ${remote_dir}; if [ ! -x .venv/bin/python ]; then python3 -m venv .venv || { sudo apt-get update -qq && sudo apt-get install -y -qq python3-venv && python3 -m venv .venv; }; fi; .venv/bin/pip install --quiet --upgrade pip; .venv/bin/pip install --quiet -e \".[tpu]\""

# 4. Train: the same command on every worker, output streamed here.
echo "Training on every worker of ${TPU_NAME}."
on_all_workers "cd ${remote_dir} && exec .venv/bin/python -m daps_jax.main --distributed $(quoted "$@")"
