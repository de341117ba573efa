#!/usr/bin/env bash
# The long CPU runs behind the README's "Does DAPS beat the baselines here?": the 20,000-step
# Fashion-MNIST comparison with the code priors of its substrate table, and the schedule and
# codebook study on the embedded MNIST. They run in lanes that survive the loss of the machine.
#
# A lane trains one piece after another (`python -m daps_jax.compare` or `python -m
# bench.study`, which skip finished runs). After each piece, `keep` copies every finished
# run's small files into bench/results/: the config, metrics.jsonl, evals and final code
# histogram of each run, and, for a comparison run, its prior's config, metrics, evals and
# sample grid. Checkpoints are not kept, so a run (or a wanted prior) still in progress when
# the machine goes is trained again from its start; run `keep` before stopping to keep what
# finished since. Every lane first restores the kept files, so the tools skip what they hold.
#
# Usage: bench/long_runs.sh LANE
#   slow     comparison: daps x3 (priors on 2), vimco x2, grmck_na x2
#   fast     comparison: fsq, vqvae, gumbel_na, daps_na x3 (priors on 2), gumbel x3
#   study    study: daps, daps_na x 3 dual solvers x 2 beta horizons x 2 rates x 2 seeds
#   keep     rewrite the kept runs from the workdirs' finished runs
#   restore  copy the kept runs into the workdirs, leaving what they hold
#   tables   the comparison, the substrate table and the study from the finished runs,
#            written to bench/results/compare_fashion_mnist_20k/{,priors/} and study_mnist/
# Run two lanes side by side on two cores: quality numbers do not depend on the load, and
# the comparison figure's seconds come from compare_fashion_mnist_20k/step_times.json (timed
# on the idle machine by `python -m bench.train_step`, see bench/README.md), not these runs.
#
# Variables: RUNS, the workdirs' parent (default: ~/daps_runs); DATA (default:
# /usr/share/datasets/fashion-mnist, Debian's dataset-fashion-mnist); PYTHON (default:
# python); KEEP, the kept runs' parent (default: bench/results).
set -euo pipefail
cd "$(dirname "$0")/.."

RUNS="${RUNS:-${HOME}/daps_runs}"
DATA="${DATA:-/usr/share/datasets/fashion-mnist}"
PYTHON="${PYTHON:-python}"
KEEP="${KEEP:-bench/results}"
COMPARE=compare_fashion_mnist_20k   # under RUNS (the runs) and KEEP (runs/, the tables)
STUDY=study_mnist
PRIOR_METHODS=" daps daps_na gumbel_na fsq vqvae "
PRIOR_SEEDS=2
COMMON=(--config=configs/fashion_mnist.py:short "--config.data.dir=${DATA}"
        --config.total_steps=20000 --config.eval_every_steps=2000
        --config.checkpoint_every_steps=1000 --config.log_every_steps=200
        --config.fid.every_steps=-1 "--workdir=${RUNS}/${COMPARE}")
PRIOR=(--priors --prior_config.sample.num_fid_samples=2000)
BISECTION=daps:method.dual_solver=bisection,daps_na:method.dual_solver=bisection
STUDY_FLAGS=(--config=configs/mnist.py:quickstart --config.fid.every_steps=-1
             "--solvers=adam100,short,bisection" "--horizons=1,10" "--workdir=${RUNS}/${STUDY}")

step8() { printf %08d "$1"; }

keep_runs() {  # NAME TOTAL_STEPS PRIORS(0|1): RUNS/NAME's finished runs -> KEEP/NAME/runs
  local name=$1 steps=$2 priors=$3 new="${KEEP}/$1/runs.new" run rel method seed dest
  rm -rf "${new}"
  mkdir -p "${new}"
  while IFS= read -r run; do
    [[ -e "${run}/codes/counts_$(step8 "${steps}").npy" ]] || continue
    rel=${run#"${RUNS}/${name}/"}
    method=$(basename "$(dirname "${run}")")
    seed=${run##*_}
    if [[ ${priors} == 1 && "${PRIOR_METHODS}" == *" ${method} "* && ${seed} -lt ${PRIOR_SEEDS}
          && ! -e "${run}/prior/eval_$(step8 2000).json" ]]; then
      continue  # Its prior would need the checkpoint, which is not kept.
    fi
    dest="${new}/${rel}"
    mkdir -p "${dest}/codes"
    cp "${run}"/config.json "${run}"/metrics.jsonl "${run}"/eval_*.json "${dest}/"
    cp "${run}/codes/counts_$(step8 "${steps}").npy" "${dest}/codes/"
    if [[ -e "${run}/prior/eval_$(step8 2000).json" ]]; then
      mkdir -p "${dest}/prior"
      cp "${run}"/prior/config.json "${run}"/prior/metrics.jsonl "${run}"/prior/eval_*.json \
         "${run}/prior/samples_$(step8 2000).png" "${dest}/prior/"
    fi
  done < <(find "${RUNS}/${name}" -type d -name 'seed_*' 2>/dev/null | sort)
  rm -rf "${KEEP}/${name}/runs"
  mv "${new}" "${KEEP}/${name}/runs"
}

keep() { keep_runs "${COMPARE}" 20000 1; keep_runs "${STUDY}" 8000 0; }

restore() {
  local name
  for name in "${COMPARE}" "${STUDY}"; do
    mkdir -p "${RUNS}/${name}"
    if [[ -d "${KEEP}/${name}/runs" ]]; then cp -rn "${KEEP}/${name}/runs"/. "${RUNS}/${name}"/; fi
  done
}

piece() {  # LOG COMMAND...: run one piece of a lane, then keep what finished
  local log="${RUNS}/log_$1.txt"
  shift
  echo "=== $(date -u +%FT%T) $*"
  "$@" > "${log}" 2>&1 || { echo "FAILED: see ${log}"; keep; exit 1; }
  keep
}

unit() {  # METHOD NUM_SEEDS [prior]: a comparison piece
  local method=$1 seeds=$2 extra=()
  if [[ "${3:-}" == prior ]]; then extra+=("${PRIOR[@]}"); fi
  if [[ ${method} == daps || ${method} == daps_na ]]; then
    extra+=("--method_overrides=${method}:method.dual_solver=bisection")
  fi
  piece "${method}_${seeds}" "${PYTHON}" -m daps_jax.compare "${COMMON[@]}" "--methods=${method}" \
    "--seeds=${seeds}" "${extra[@]}"
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
  study)
    restore
    for rate in 1e-3 3e-4; do
      for seeds in 1 2; do
        for method in daps_na daps; do
          piece "study_${method}_${rate}_${seeds}" "${PYTHON}" -m bench.study "${STUDY_FLAGS[@]}" \
            "--methods=${method}" "--seeds=${seeds}" "--learning_rates=${rate}"
        done
      done
    done ;;
  keep) keep ;;
  restore) restore ;;
  tables)
    restore
    "${PYTHON}" -m daps_jax.compare "${COMMON[@]}" \
      --methods=daps,daps_na,gumbel,gumbel_na,fsq,vqvae,vimco,grmck_na --seeds=3 \
      --method_seeds=vimco=2,grmck_na=2 "--method_overrides=${BISECTION}" \
      "--step_times=${KEEP}/${COMPARE}/step_times.json"
    cp "${RUNS}/${COMPARE}"/results.{md,csv,png} "${KEEP}/${COMPARE}/"
    "${PYTHON}" -m daps_jax.compare "${COMMON[@]}" --methods=daps,daps_na,gumbel_na,fsq,vqvae \
      "--seeds=${PRIOR_SEEDS}" "--method_overrides=${BISECTION}" "${PRIOR[@]}"
    mkdir -p "${KEEP}/${COMPARE}/priors"
    cp "${RUNS}/${COMPARE}"/priors/* "${KEEP}/${COMPARE}/priors/"
    "${PYTHON}" -m bench.study "${STUDY_FLAGS[@]}" --methods=daps,daps_na --seeds=2 \
      --learning_rates=1e-3,3e-4 "--output=${KEEP}/${STUDY}" ;;
  *)
    echo "usage: $0 slow|fast|study|keep|restore|tables (see the header of $0)" >&2
    exit 2 ;;
esac
