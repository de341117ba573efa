#!/usr/bin/env bash
# Run N processes of the trainer on this machine, joined by a coordinator on localhost: the way to
# try multi-host training without a cluster. Process i (0 .. N-1) runs, in the background,
#   PYTHON -m daps_jax.main ARGS --coordinator_address=localhost:PORT --num_processes=N --process_id=i
# with stdout and stderr in LOG_DIR/process_<i>.log; process 0's log is also shown here as it
# grows. The script waits for all of them. When one fails it stops the others, prints which
# process failed and the end of its log, and exits with that process's status.
#
# Arguments: N, the number of processes (a positive integer), then the trainer's arguments (an
# optional `--` before them is dropped). Leave out --distributed and the three coordinator flags:
# this script sets them. The script runs from the repository root, so relative paths (PYTHON,
# LOG_DIR, --workdir) are taken from there.
#
# Variables (environment):
#   PYTHON               interpreter with daps_jax installed    (default: .venv/bin/python if it
#                        is executable, else python3)
#   PORT                 coordinator port on localhost          (default: a free port, found with
#                        python3's socket module; 12355 under dry run)
#   PLATFORM             cpu | gpu                              (default: cpu)
#                          cpu: every process gets JAX_PLATFORMS=cpu and
#                               XLA_FLAGS=--xla_force_host_platform_device_count=DEVICES_PER_PROCESS
#                               (appended to any XLA_FLAGS already set): fake CPU devices.
#                          gpu: every process gets its own GPUs through CUDA_VISIBLE_DEVICES
#                               (process i: GPUs i*K .. i*K+K-1 for K = DEVICES_PER_PROCESS) and
#                               no JAX_PLATFORMS, so JAX picks the GPUs. Needs N*K GPUs.
#   DEVICES_PER_PROCESS  devices per process, K                 (default: 1)
#   LOG_DIR              directory of the process_<i>.log files (default: DIR/logs for the
#                        --workdir=DIR among the arguments, else /tmp)
#   DRY_RUN              1 to print the commands instead of running them (or pass --dry-run first,
#                        before or right after N)
#
# Example:
#   launch/local_multiprocess.sh 2 --config=configs/mnist.py:quickstart --workdir=workdirs/mp2
#   PLATFORM=gpu launch/local_multiprocess.sh 4 --config=configs/cifar10.py --workdir=runs/cifar4
set -euo pipefail

PLATFORM="${PLATFORM:-cpu}"
DEVICES_PER_PROCESS="${DEVICES_PER_PROCESS:-1}"
DRY_RUN="${DRY_RUN:-0}"
if [[ "${1:-}" == "--dry-run" ]]; then
  DRY_RUN=1
  shift
fi

usage() {
  echo "usage: [PYTHON=..] [PORT=..] [PLATFORM=cpu|gpu] [DEVICES_PER_PROCESS=K] [LOG_DIR=..] $0 N [--dry-run] [--] --config=configs/X.py --workdir=DIR [...]" >&2
  exit 2
}
if [[ $# -eq 0 ]]; then
  usage
fi
NUM_PROCESSES="$1"
shift
if [[ ! "${NUM_PROCESSES}" =~ ^[1-9][0-9]*$ ]]; then
  echo "N (the number of processes) must be a positive integer, got '${NUM_PROCESSES}'." >&2
  usage
fi
if [[ "${1:-}" == "--dry-run" ]]; then
  DRY_RUN=1
  shift
fi
if [[ "${1:-}" == "--" ]]; then
  shift
fi
if [[ $# -eq 0 ]]; then
  usage
fi
case "${PLATFORM}" in
  cpu|gpu) ;;
  *) echo "PLATFORM must be cpu or gpu, got '${PLATFORM}'." >&2; exit 2 ;;
esac
if [[ ! "${DEVICES_PER_PROCESS}" =~ ^[1-9][0-9]*$ ]]; then
  echo "DEVICES_PER_PROCESS must be a positive integer, got '${DEVICES_PER_PROCESS}'." >&2
  exit 2
fi
workdir=""
previous=""
for arg in "$@"; do
  case "${arg}" in
    --distributed|--distributed=*|--coordinator_address|--coordinator_address=*|--num_processes|--num_processes=*|--process_id|--process_id=*)
      echo "Leave out '${arg}': this script sets the coordinator flags." >&2
      exit 2 ;;
    --workdir=*) workdir="${arg#--workdir=}" ;;
    *) if [[ "${previous}" == "--workdir" ]]; then workdir="${arg}"; fi ;;
  esac
  previous="${arg}"
done

cd "$(dirname "$0")/.."
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x .venv/bin/python ]]; then
    PYTHON=.venv/bin/python
  else
    PYTHON=python3
  fi
fi
if [[ -z "${LOG_DIR:-}" ]]; then
  # A remote workdir (gs://...) cannot take shell redirections.
  if [[ -n "${workdir}" && "${workdir}" != *://* ]]; then
    LOG_DIR="${workdir}/logs"
  else
    LOG_DIR=/tmp
  fi
fi
if [[ -z "${PORT:-}" ]]; then
  if [[ "${DRY_RUN}" == 1 ]]; then
    PORT=12355
  else
    finder=python3
    if ! command -v python3 >/dev/null; then
      finder="${PYTHON}"
    fi
    # Free now; another program could still take it before process 0 binds it (rare).
    PORT="$("${finder}" -c 'import socket; s = socket.socket(); s.bind(("localhost", 0)); print(s.getsockname()[1])')"
  fi
fi
if [[ ! "${PORT}" =~ ^[0-9]+$ ]]; then
  echo "PORT must be a port number, got '${PORT}'." >&2
  exit 2
fi

# shellcheck source-path=SCRIPTDIR/..
source launch/common.sh

echo "Starting ${NUM_PROCESSES} processes of daps_jax.main (${PLATFORM}, ${DEVICES_PER_PROCESS} device(s) each), coordinator localhost:${PORT}, logs ${LOG_DIR}/process_<i>.log (process 0's shown here)."
run mkdir -p "${LOG_DIR}"
pids=()
for ((i = 0; i < NUM_PROCESSES; i++)); do
  if [[ "${PLATFORM}" == cpu ]]; then
    environment=(JAX_PLATFORMS=cpu
                 "XLA_FLAGS=${XLA_FLAGS:+${XLA_FLAGS} }--xla_force_host_platform_device_count=${DEVICES_PER_PROCESS}")
  else
    gpus=""
    for ((d = i * DEVICES_PER_PROCESS; d < (i + 1) * DEVICES_PER_PROCESS; d++)); do
      gpus+="${gpus:+,}${d}"
    done
    environment=("CUDA_VISIBLE_DEVICES=${gpus}")
  fi
  cmd=(env "${environment[@]}" "${PYTHON}" -m daps_jax.main "$@"
       "--coordinator_address=localhost:${PORT}" "--num_processes=${NUM_PROCESSES}"
       "--process_id=${i}")
  log="${LOG_DIR}/process_${i}.log"
  echo "+ $(quoted "${cmd[@]}") > $(quoted "${log}") 2>&1 &"
  if [[ "${DRY_RUN}" != 1 ]]; then
    "${cmd[@]}" > "${log}" 2>&1 &
    pids+=("$!")
  fi
done
if [[ "${DRY_RUN}" == 1 ]]; then
  echo "+ tail -n +1 -f $(quoted "${LOG_DIR}/process_0.log") &"
  exit 0
fi

# Show process 0's log. GNU tail's --pid makes tail end by itself, after the last lines, once
# process 0 is gone; other tails are stopped a moment after.
follow=(tail -n +1 -f)
tail_ends_itself=0
if tail --pid="$$" -n 0 /dev/null >/dev/null 2>&1; then
  follow+=("--pid=${pids[0]}")
  tail_ends_itself=1
fi
follow+=("${LOG_DIR}/process_0.log")
echo "+ $(quoted "${follow[@]}") &"
"${follow[@]}" &
tail_pid=$!

stop_all() {
  local pid
  for pid in ${pids[@]+"${pids[@]}"}; do
    if [[ -n "${pid}" ]]; then
      kill "${pid}" 2>/dev/null || true
    fi
  done
  for pid in ${pids[@]+"${pids[@]}"}; do
    if [[ -n "${pid}" ]]; then
      wait "${pid}" 2>/dev/null || true
    fi
  done
  pids=()
}
finish_tail() {
  if [[ "${tail_ends_itself}" == 1 ]]; then
    wait "${tail_pid}" 2>/dev/null || true
  else
    sleep 1
    kill "${tail_pid}" 2>/dev/null || true
  fi
}
trap 'stop_all; kill "${tail_pid}" 2>/dev/null || true' EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Poll rather than `wait -n`, to know which process ended (and to work with older bash).
remaining="${NUM_PROCESSES}"
while ((remaining > 0)); do
  for i in "${!pids[@]}"; do
    pid="${pids[i]}"
    if [[ -z "${pid}" ]] || kill -0 "${pid}" 2>/dev/null; then
      continue
    fi
    status=0
    wait "${pid}" || status=$?
    pids[i]=""
    remaining=$((remaining - 1))
    if ((status != 0)); then
      stop_all
      finish_tail
      log="${LOG_DIR}/process_${i}.log"
      echo "Process ${i} of ${NUM_PROCESSES} failed (exit status ${status}); stopped the others. End of ${log}:" >&2
      tail -n 30 "${log}" >&2
      exit "${status}"
    fi
  done
  if ((remaining > 0)); then
    sleep 0.2
  fi
done
finish_tail
echo "All ${NUM_PROCESSES} processes finished; logs in ${LOG_DIR}."
