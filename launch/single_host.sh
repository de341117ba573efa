#!/usr/bin/env bash
# Train on one machine (all its local devices): install into a venv, then run
# `python -m daps_jax.main` with the arguments given.
#
# Variables (environment):
#   VENV         virtual environment to create or reuse   (default: .venv)
#   ACCELERATOR  cpu | cuda | tpu: which extra to install  (default: cpu)
#   DRY_RUN      1 to print the commands instead of running them (or pass --dry-run first)
#
# Example:
#   ACCELERATOR=cuda launch/single_host.sh --config=configs/cifar10.py --workdir=runs/cifar
set -euo pipefail

VENV="${VENV:-.venv}"
ACCELERATOR="${ACCELERATOR:-cpu}"
DRY_RUN="${DRY_RUN:-0}"
if [[ "${1:-}" == "--dry-run" ]]; then
  DRY_RUN=1
  shift
fi

case "${ACCELERATOR}" in
  cpu) extra="" ;;
  cuda|tpu) extra="[${ACCELERATOR}]" ;;
  *) echo "ACCELERATOR must be cpu, cuda or tpu, got '${ACCELERATOR}'." >&2; exit 2 ;;
esac
if [[ $# -eq 0 ]]; then
  echo "usage: [VENV=..] [ACCELERATOR=cpu|cuda|tpu] $0 [--dry-run] --config=configs/X.py --workdir=DIR [...]" >&2
  exit 2
fi

cd "$(dirname "$0")/.."
# shellcheck source-path=SCRIPTDIR/..
source launch/common.sh
if [[ ! -x "${VENV}/bin/python" ]]; then
  run python3 -m venv "${VENV}"
fi
run "${VENV}/bin/pip" install --quiet -e ".${extra}"
run "${VENV}/bin/python" -m daps_jax.main "$@"
