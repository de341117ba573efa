#!/usr/bin/env bash
# The GPU benchmark in one call, for a lent accelerator machine (<= 8 minutes on an H100/H200):
#
#   bash bench/device.sh OUT [WHEELS]
#
# 1. bench.train_step: mnist, cifar10, imagenet x daps, daps_na, fsq at the paper's per-device
#    batch (ImageNet's config defaults fit B=64: bench/results/memory_imagenet_daps.json);
# 2. bench.memory: the compiled memory of the same steps;
# 3. bench.rollout: the ImageNet rollout at B=64 against its K/V-read floor at the HBM bandwidth;
# 4. the quickstart (configs/mnist.py:quickstart, FID off), its wall time and final metrics;
# then OUT/device.json: one file naming the device, with every record above.
#
# python3 must have jax with its CUDA plugin, flax, optax, orbax-checkpoint, chex and absl-py
# (the lent machines' image does). The project's other packages travel as wheels in WHEELS
# (default .whl; see bench/README.md for the pip download line) and are installed to /tmp/site.
set -euo pipefail
OUT=${1:?usage: bash bench/device.sh OUT [WHEELS]}
WHEELS=${2:-.whl}
cd "$(dirname "$0")/.."
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if compgen -G "$WHEELS/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site "$WHEELS"/*.whl
  export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > "$OUT/gpu.txt" \
  || echo "no nvidia-smi" > "$OUT/gpu.txt"
timeout 240 python3 -m bench.train_step --configs=mnist,cifar10,imagenet \
  --methods=daps,daps_na,fsq --paper_batch --steps=10 --nomerge \
  --output="$OUT/train_step.json" || echo "bench.train_step: exit $?" >> "$OUT/errors.txt"
timeout 60 python3 -m bench.memory --configs=mnist,cifar10,imagenet --methods=daps,daps_na,fsq \
  --paper_batch --output="$OUT/memory.json" || echo "bench.memory: exit $?" >> "$OUT/errors.txt"
timeout 60 python3 -m bench.rollout --config=imagenet --batch_size=64 \
  --output="$OUT/rollout.json" || echo "bench.rollout: exit $?" >> "$OUT/errors.txt"
start=$(date +%s)
timeout 120 python3 -m daps_jax.main --config=configs/mnist.py:quickstart \
  --workdir="$OUT/quickstart_run" --config.fid.every_steps=-1 --compilation_cache_dir= \
  > "$OUT/quickstart.log" 2>&1 || echo "quickstart: exit $?" >> "$OUT/errors.txt"
echo $(( $(date +%s) - start )) > "$OUT/quickstart_wall_s.txt"
python3 - "$OUT" <<'PY'
import glob, json, os, sys
out = sys.argv[1]
def load(name):
  path = os.path.join(out, name)
  return json.load(open(path)) if os.path.exists(path) else None
evals = sorted(glob.glob(os.path.join(out, 'quickstart_run', 'eval_*.json')))
summary = {
    'gpu': open(os.path.join(out, 'gpu.txt')).read().strip(),
    'train_step': load('train_step.json'), 'memory': load('memory.json'),
    'rollout': load('rollout.json'),
    'quickstart': {'wall_s': int(open(os.path.join(out, 'quickstart_wall_s.txt')).read()),
                   'final': json.load(open(evals[-1]))['metrics'] if evals else None},
    'errors': open(os.path.join(out, 'errors.txt')).read() if os.path.exists(
        os.path.join(out, 'errors.txt')) else '',
}
json.dump(summary, open(os.path.join(out, 'device.json'), 'w'), indent=1)
print(json.dumps({k: v for k, v in summary.items() if k in ('gpu', 'quickstart', 'errors')}))
PY
