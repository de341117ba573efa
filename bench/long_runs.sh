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
# Usage: bench/long_runs.sh lane [REGEX]|keep|restore|tables
#   lane     train the pieces below in order, skipping finished ones and those of a method
#            another lane is training (a lock per method); start one lane per core. With
#            REGEX (bash's =~), only the pieces it matches, e.g. 'grmck_na' or '^study:':
#            start long pieces early in a sitting (see above: an unfinished run starts over)
#            and give its last hour to short ones (the study's runs are kept one by one)
#   keep     rewrite the kept runs from the workdirs' finished runs
#   restore  copy the kept runs into the workdirs, leaving what they hold
#   tables   the comparison, the substrate table and the study from the finished runs,
#            written to bench/results/compare_fashion_mnist_20k/{,priors/} and study_mnist/
# The pieces, in order: seeds 0 and 1 with priors of daps, fsq, vqvae, gumbel_na, daps_na
# (the substrate table); gumbel x3; seed 2 of those five; vimco x2; grmck_na x2; then the
# study's daps and daps_na x 3 dual solvers x 2 beta horizons, per learning rate and seed.
# Lanes run side by side on two cores: quality numbers do not depend on the load, and
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
PRIOR_METHODS=(daps daps_na gumbel_na fsq vqvae)
PRIOR_STEPS=2000            # configs/prior.py's total_steps
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
  local name=$1 new="${KEEP}/$1/runs.new" run prior dest
  rm -rf "${new}"
  mkdir -p "${new}"
  # runs.finished and prior.loop.finished are the tools' own tests of a finished run.
  while read -r run prior; do
    dest="${new}/${run#"${RUNS}/${name}/"}"
    mkdir -p "${dest}/codes"
    cp "${run}"/config.json "${run}"/metrics.jsonl "${run}"/eval_*.json "${dest}/"
    cp "${run}/codes/counts_$(step8 "$2").npy" "${dest}/codes/"
    if [[ ${prior} == 1 ]]; then
      mkdir -p "${dest}/prior"
      cp "${run}"/prior/config.json "${run}"/prior/metrics.jsonl "${run}"/prior/eval_*.json \
         "${run}/prior/samples_$(step8 "${PRIOR_STEPS}").png" "${dest}/prior/"
    fi
  done < <("${PYTHON}" - "${RUNS}/${name}" "$2" "$3" "${PRIOR_STEPS}" "${PRIOR_SEEDS}" \
             "${PRIOR_METHODS[@]}" <<'PY'
import pathlib, sys
from daps_jax import runs
from daps_jax.prior import loop
root, steps, priors, prior_steps, prior_seeds, *prior_methods = sys.argv[1:]
for run in sorted(pathlib.Path(root).glob('**/seed_*')):
  if not runs.finished(str(run), int(steps)):
    continue
  has_prior = loop.finished(str(run / loop.PRIOR_DIR), int(prior_steps))
  wanted = (priors == '1' and run.parent.name in prior_methods
            and int(run.name.split('_')[1]) < int(prior_seeds))
  if has_prior or not wanted:  # A wanted prior would need the checkpoint, which is not kept.
    print(run, int(has_prior))
PY
  )
  rm -rf "${KEEP}/${name}/runs"
  mv "${new}" "${KEEP}/${name}/runs"
}

locked() {  # COMMAND...: run it holding the lanes' lock on the kept runs
  mkdir -p "${RUNS}"
  flock "${RUNS}/.keep.lock" "$@"
}

keep() { keep_runs "${COMPARE}" 20000 1; keep_runs "${STUDY}" 8000 0; }

restore() {
  local name
  for name in "${COMPARE}" "${STUDY}"; do
    mkdir -p "${RUNS}/${name}"
    if [[ -d "${KEEP}/${name}/runs" ]]; then cp -rn "${KEEP}/${name}/runs"/. "${RUNS}/${name}"/; fi
  done
}

piece_command() {  # PIECE: sets COMMAND to the command that trains it
  local kind method arg seeds extra=()
  IFS=: read -r kind method arg seeds <<< "$1"
  if [[ ${kind} == compare ]]; then
    if [[ ${arg} == prior ]]; then extra+=("${PRIOR[@]}"); fi
    if [[ ${method} == daps || ${method} == daps_na ]]; then
      extra+=("--method_overrides=${method}:method.dual_solver=bisection")
    fi
    COMMAND=("${PYTHON}" -m daps_jax.compare "${COMMON[@]}" "--methods=${method}"
             "--seeds=${seeds}" "${extra[@]}")
  else
    COMMAND=("${PYTHON}" -m bench.study "${STUDY_FLAGS[@]}" "--methods=${method}"
             "--seeds=${seeds}" "--learning_rates=${arg}")
  fi
}

PIECES=()
for seeds in 1 2; do
  for method in daps fsq vqvae gumbel_na daps_na; do PIECES+=("compare:${method}:prior:${seeds}"); done
done
for seeds in 1 2 3; do PIECES+=("compare:gumbel:-:${seeds}"); done
for method in daps fsq vqvae gumbel_na daps_na; do PIECES+=("compare:${method}:-:3"); done
for seeds in 1 2; do PIECES+=("compare:vimco:-:${seeds}" "compare:grmck_na:-:${seeds}"); done
for rate in 1e-3 3e-4; do
  for seeds in 1 2; do
    for method in daps_na daps; do PIECES+=("study:${method}:${rate}:${seeds}"); done
  done
done

lane() {
  # Each scan runs the first piece that is not done and whose method no other lane holds;
  # a method's pieces run in order (each adds a seed to the one before), under its lock.
  local pattern=${1:-} piece kind method rest done_file ran
  mkdir -p "${RUNS}/.lanes"
  locked "$0" restore
  while :; do
    ran=0
    for piece in "${PIECES[@]}"; do
      done_file="${RUNS}/.lanes/${piece//:/_}.done"
      [[ -e ${done_file} ]] && continue
      [[ -n ${pattern} && ! ${piece} =~ ${pattern} ]] && continue
      IFS=: read -r kind method rest <<< "${piece}"
      # -E 75: the method is another lane's; try the next piece.
      if flock -n -E 75 "${RUNS}/.lanes/${kind}_${method}.lock" "$0" piece "${piece}"; then
        touch "${done_file}"
        ran=1
        break
      elif [[ $? != 75 ]]; then
        exit 1
      fi
    done
    if [[ ${ran} == 0 ]]; then
      echo "=== $(date -u +%FT%T) nothing left for this lane"
      return
    fi
  done
}

run_piece() {  # PIECE: train it (finished runs are skipped), then keep what finished
  local log="${RUNS}/log_${1//:/_}.txt"
  piece_command "$1"
  echo "=== $(date -u +%FT%T) $1"
  "${COMMAND[@]}" > "${log}" 2>&1 || { echo "FAILED: see ${log}"; locked "$0" keep-unlocked; exit 1; }
  locked "$0" keep-unlocked
}

case "${1:-}" in
  lane) lane "${2:-}" ;;
  piece) run_piece "$2" ;;  # Internal: one piece, under its method's lock (see lane).
  keep) locked "$0" keep-unlocked ;;
  keep-unlocked) keep ;;
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
    echo "usage: $0 lane [REGEX]|keep|restore|tables (see the header of $0)" >&2
    exit 2 ;;
esac
