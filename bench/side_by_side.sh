#!/usr/bin/env bash
# Our DAPS step beside the authors' (mdrolet01/jadex, daps-iclr2026), the speed of our memory and
# speed options, and our whole trainer on real data: one sitting on an idle machine.
#
#   JADEX_DIR=path/to/jadex PYTHON=venv/bin/python bash bench/side_by_side.sh OUT [ROUNDS]
#
# PYTHON is one venv holding both implementations (../shared/tools/jadex_bench.py says how);
# FASHION_DIR (default /usr/share/datasets/fashion-mnist) holds the Fashion-MNIST IDX files.
# Each round times, alternating implementations, MNIST B=256, CIFAR-10 B=32 and ImageNet B=2,
# then our options one at a time (method.top_k=2 and model.dtype=bfloat16 on MNIST and CIFAR-10,
# method.sample_chunks=8, model.remat=True, model.attention_chunk=16 on CIFAR-10; ImageNet
# without its memory defaults), then the two whole trainers on real Fashion-MNIST at batch 256
# (ours, ours with steps_per_dispatch=10, the authors' through bench/jadex_trainer.py). OUT gets
# every JSON record and uptime before each case (load.txt); python -m bench.side_by_side OUT
# makes the table.
set -euo pipefail
OUT=$(realpath -m "${1:?usage: JADEX_DIR=... PYTHON=... bash bench/side_by_side.sh OUT [ROUNDS]}")
ROUNDS=${2:-2}
PY=${PYTHON:-python3}
JADEX_BENCH=${JADEX_BENCH:-$(cd "$(dirname "$0")/../.." && pwd)/shared/tools/jadex_bench.py}
FASHION_DIR=${FASHION_DIR:-/usr/share/datasets/fashion-mnist}
cd "$(dirname "$0")/.."
mkdir -p "$OUT"
ours() {  # name config batch [override...]
  local name=$1 config=$2 batch=$3
  shift 3
  echo "$(date -u +%FT%TZ) ours $name: $(uptime)" >> "$OUT/load.txt"
  "$PY" -m bench.train_step --configs="$config" --methods=daps --batch_size="$batch" --steps=5 \
    --nomerge --output="$OUT/ours_${name}_r${round}.json" "${@/#/--override=}"
}
theirs() {  # dataset batch
  echo "$(date -u +%FT%TZ) jadex $1: $(uptime)" >> "$OUT/load.txt"
  "$PY" "$JADEX_BENCH" --dataset="$1" --model=daps --batch="$2" --steps=5 \
    --output="$OUT/jadex_r${round}.jsonl"
}
trainer() {  # name [flag...]: our trainer, Fashion-MNIST at the paper's batch, 300 steps, FID off.
  local name=$1 run="$OUT/trainer_run"
  shift
  echo "$(date -u +%FT%TZ) ours trainer $name: $(uptime)" >> "$OUT/load.txt"
  rm -rf "$run"
  "$PY" -m daps_jax.main --config=configs/fashion_mnist.py --config.data.dir="$FASHION_DIR" \
    --config.total_steps=300 --config.log_every_steps=50 --config.eval_every_steps=300 \
    --config.fid.every_steps=-1 --compilation_cache_dir= --workdir="$run" "$@" \
    > "$OUT/trainer_${name}_r${round}.log" 2>&1
  cp "$run/metrics.jsonl" "$OUT/trainer_${name}_r${round}_metrics.jsonl"
  rm -rf "$run"
}
theirs_trainer() {  # The authors' trainer on the same files, batch and steps.
  echo "$(date -u +%FT%TZ) jadex trainer: $(uptime)" >> "$OUT/load.txt"
  "$PY" -m bench.jadex_trainer --model=daps --batch=256 --steps=300 \
    --fashion_dir="$FASHION_DIR" --output="$OUT/jadex_trainer_r${round}.jsonl"
}
for round in $(seq "$ROUNDS"); do
  ours mnist mnist 256;          theirs mnist 256
  theirs cifar 32;               ours cifar10 cifar10 32
  ours imagenet imagenet 2;      theirs imagenet256 2
  ours mnist_top_k2 mnist 256 method.top_k=2
  ours mnist_bf16 mnist 256 model.dtype=bfloat16
  ours cifar10_bf16 cifar10 32 model.dtype=bfloat16
  ours cifar10_top_k2 cifar10 32 method.top_k=2
  ours cifar10_sample_chunks8 cifar10 32 method.sample_chunks=8
  ours cifar10_remat cifar10 32 model.remat=True
  ours cifar10_attention_chunk16 cifar10 32 model.attention_chunk=16
  ours imagenet_no_memory_options imagenet 2 method.sample_chunks=1 model.attention_chunk=0
  trainer plain;  theirs_trainer;  trainer steps_per_dispatch10 --config.steps_per_dispatch=10
done
