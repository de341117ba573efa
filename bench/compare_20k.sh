#!/usr/bin/env bash
# The 20,000-step Fashion-MNIST comparison (README: "Does DAPS beat the baselines here?") and
# the code priors of its substrate table, in units that survive the loss of the machine.
#
# A unit trains the next seed of one method with `python -m daps_jax.compare` (finished seeds
# are skipped), with --priors where the substrate table wants that seed. After each unit the
# finished runs' small files are kept in bench/results/compare_fashion_mnist_20k/runs/: the
# config, metrics.jsonl, evals and final code histogram of each run, and its prior's config,
# metrics, evals and sample grid. Checkpoints are not kept: a run (or a wanted prior) still in
# progress when the machine goes is trained again from its start. Every lane first restores
# the kept files into WORKDIR, so `compare` skips what they hold.
#
# Usage: bench/compare_20k.sh slow|fast|keep|restore|table
#   slow     daps x3 (priors on 2), vimco x2, grmck_na x2
#   fast     fsq, vqvae, gumbel_na, daps_na x3 (priors on 2), gumbel x3
#   keep     rewrite runs/ from WORKDIR's finished runs (the lanes do this after each unit)
#   restore  copy runs/ into WORKDIR, leaving what WORKDIR has (every lane does this first)
#   table    the comparison and the substrate table from the finished runs, written to
#            bench/results/compare_fashion_mnist_20k/ and its priors/
# Run `slow` and `fast` side by side on two cores: quality numbers do not depend on the load,
# and the figure's seconds come from step_times.json (timed on the idle machine, by
# `python -m bench.train_step`, see bench/README.md), not from these runs.
#
# Variables: WORKDIR (default: ~/daps_runs/compare_fashion_mnist_20k); DATA (default:
# /usr/share/datasets/fashion-mnist, Debian's dataset-fashion-mnist); PYTHON (default: python);
# KEEP (default: bench/results/compare_fashion_mnist_20k/runs).
set -euo pipefail
cd "$(dirname "$0")/.."

WORKDIR="${WORKDIR:-${HOME}/daps_runs/compare_fashion_mnist_20k}"
DATA="${DATA:-/usr/share/datasets/fashion-mnist}"
PYTHON="${PYTHON:-python}"
RESULTS=bench/results/compare_fashion_mnist_20k
KEEP="${KEEP:-${RESULTS}/runs}"
STEPS=20000
PRIOR_STEPS=2000            # configs/prior.py's total_steps
PRIOR_METHODS=" daps daps_na gumbel_na fsq vqvae "
PRIOR_SEEDS=2
COMMON=(--config=configs/fashion_mnist.py:short "--config.data.dir=${DATA}"
        "--config.total_steps=${STEPS}" --config.eval_every_steps=2000
        --config.checkpoint_every_steps=1000 --config.log_every_steps=200
        --config.fid.every_steps=-1 "--workdir=${WORKDIR}")
PRIOR=(--priors --prior_config.sample.num_fid_samples=2000)
BISECTION=daps:method.dual_solver=bisection,daps_na:method.dual_solver=bisection

wants_prior() {  # METHOD SEED_INDEX
  [[ "${PRIOR_METHODS}" == *" $1 "* && $2 -lt ${PRIOR_SEEDS} ]]
}

keep() {
  local new="${KEEP}.new" run method seed dest
  rm -rf "${new}"
  mkdir -p "${new}"
  for run in "${WORKDIR}"/*/seed_*; do
    [[ -e "${run}/codes/counts_$(printf %08d "${STEPS}").npy" ]] || continue
    method=$(basename "$(dirname "${run}")")
    seed=${run##*_}
    if wants_prior "${method}" "${seed}" \
        && [[ ! -e "${run}/prior/eval_$(printf %08d "${PRIOR_STEPS}").json" ]]; then
      continue  # Its prior would need the checkpoint, which is not kept.
    fi
    dest="${new}/${method}/seed_${seed}"
    mkdir -p "${dest}/codes"
    cp "${run}"/config.json "${run}"/metrics.jsonl "${run}"/eval_*.json "${dest}/"
    cp "${run}/codes/counts_$(printf %08d "${STEPS}").npy" "${dest}/codes/"
    if [[ -e "${run}/prior/eval_$(printf %08d "${PRIOR_STEPS}").json" ]]; then
      mkdir -p "${dest}/prior"
      cp "${run}"/prior/config.json "${run}"/prior/metrics.jsonl "${run}"/prior/eval_*.json \
         "${run}/prior/samples_$(printf %08d "${PRIOR_STEPS}").png" "${dest}/prior/"
    fi
  done
  rm -rf "${KEEP}"
  mv "${new}" "${KEEP}"
}

restore() {
  mkdir -p "${WORKDIR}"
  if [[ -d "${KEEP}" ]]; then cp -rn "${KEEP}"/. "${WORKDIR}"/; fi
}

unit() {  # METHOD NUM_SEEDS [prior]
  local method=$1 seeds=$2 extra=()
  if [[ "${3:-}" == prior ]]; then extra+=("${PRIOR[@]}"); fi
  if [[ ${method} == daps || ${method} == daps_na ]]; then
    extra+=("--method_overrides=${method}:method.dual_solver=bisection")
  fi
  echo "=== $(date -u +%FT%T) ${method}: seeds 0..$((seeds - 1)) ${extra[*]}"
  "${PYTHON}" -m daps_jax.compare "${COMMON[@]}" "--methods=${method}" "--seeds=${seeds}" \
    "${extra[@]}" > "${WORKDIR}/log_${method}_${seeds}.txt" 2>&1 \
    || { echo "FAILED: see ${WORKDIR}/log_${method}_${seeds}.txt"; keep; exit 1; }
  keep
}

case "${1:-}" in
  slow)
    restore
    unit daps 1 prior; unit daps 2 prior; unit daps 3
    unit vimco 1; unit vimco 2; unit grmck_na 1; unit grmck_na 2 ;;
  fast)
    restore
    for seeds in 1 2; do
      for method in fsq vqvae gumbel_na daps_na; do unit "${method}" "${seeds}" prior; done
    done
    for seeds in 1 2 3; do unit gumbel "${seeds}"; done
    for method in fsq vqvae gumbel_na daps_na; do unit "${method}" 3; done ;;
  keep) keep ;;
  restore) restore ;;
  table)
    restore
    "${PYTHON}" -m daps_jax.compare "${COMMON[@]}" \
      --methods=daps,daps_na,gumbel,gumbel_na,fsq,vqvae,vimco,grmck_na --seeds=3 \
      --method_seeds=vimco=2,grmck_na=2 "--method_overrides=${BISECTION}" \
      "--step_times=${RESULTS}/step_times.json"
    cp "${WORKDIR}"/results.md "${WORKDIR}"/results.csv "${WORKDIR}"/results.png "${RESULTS}/"
    "${PYTHON}" -m daps_jax.compare "${COMMON[@]}" --methods=daps,daps_na,gumbel_na,fsq,vqvae \
      "--seeds=${PRIOR_SEEDS}" "--method_overrides=${BISECTION}" "${PRIOR[@]}"
    mkdir -p "${RESULTS}/priors"
    cp "${WORKDIR}"/priors/* "${RESULTS}/priors/" ;;
  *)
    echo "usage: $0 slow|fast|keep|restore|table (see the header of $0)" >&2
    exit 2 ;;
esac
