"""Times the AR encoder's rollout (`latents.sample_latents`) against its memory-traffic floor.

  python -m bench.rollout --config=imagenet --batch_size=64 [--bandwidth_gbs=4800]

The rollout is L sequential steps; at step t every decoder layer reads its whole
fixed-length self-attention cache (k and v, [B*K, H, L, Dh]) and the inputs'
cross-attention keys and values ([B, H, S, Dh], read once per input, not per
sample). Those bytes over the device's memory bandwidth are a floor on the
rollout's time that no schedule of the same reads beats; the ratio of the
measured time to it says how far the rollout is from being bandwidth-bound.
The bandwidth is `--bandwidth_gbs`, else the device kind's entry in BANDWIDTH_GBS
(none for CPUs: then only the bytes are reported). One JSON record per call.
"""

import datetime
import json
import os
import sys
import time

from absl import app
from absl import flags
import jax
import numpy as np

from bench import common
from daps_jax import build
from daps_jax import latents

# Peak HBM bandwidth of the accelerators we are lent, GB/s (vendor figures).
BANDWIDTH_GBS = {'NVIDIA H100 80GB HBM3': 3350.0, 'NVIDIA H200': 4800.0}

_CONFIG = flags.DEFINE_string('config', 'imagenet', 'A config in configs/, without .py.')
_BATCH = flags.DEFINE_integer('batch_size', None, "Inputs B (default: the config's batch).")
_REPEATS = flags.DEFINE_integer('repeats', 3, 'Timed rollouts after the compiling one.')
_BANDWIDTH = flags.DEFINE_float('bandwidth_gbs', None, 'Memory bandwidth, GB/s.')
_OUTPUT = flags.DEFINE_string('output', None, 'JSON file of the record (default: stdout only).')


def kv_bytes(*, batch: int, samples: int, tokens: int, width: int, layers: int,
             memory_tokens: int, itemsize: int = 4) -> int:
  """Bytes of keys and values one rollout reads: L steps x layers x (the self-attention
  cache of B*K sequences + the cross-attention memory of B inputs), k and v each."""
  per_step = layers * 2 * width * itemsize * (batch * samples * tokens + batch * memory_tokens)
  return tokens * per_step


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}', exitcode=2)
  config = common.load_config(_CONFIG.value, 'daps')
  batch = _BATCH.value or config.batch_size
  run = build.assemble(config)
  encoder = run.networks.encoder
  state = jax.device_put(run.initial_state())
  x = jax.device_put(np.random.default_rng(0).standard_normal(
      (batch, *run.spec.shape)).astype(np.float32))
  k = config.method.num_samples
  rollout = jax.jit(lambda params, x, key: latents.sample_latents(
      encoder, {'params': params}, x, key, k).tokens)
  start = time.perf_counter()
  jax.block_until_ready(rollout(state.encoder.params, x, jax.random.key(0)))
  compile_s = time.perf_counter() - start
  times = []
  for i in range(_REPEATS.value):
    start = time.perf_counter()
    jax.block_until_ready(rollout(state.encoder.params, x, jax.random.key(i + 1)))
    times.append(time.perf_counter() - start)
  m = config.model
  moved = kv_bytes(batch=batch, samples=k, tokens=m.num_tokens, width=m.width,
                   layers=m.decoder_layers, memory_tokens=m.num_tokens)
  device = jax.devices()[0].device_kind
  bandwidth = _BANDWIDTH.value or BANDWIDTH_GBS.get(device)
  seconds = float(np.median(times))
  record = {'config': _CONFIG.value, 'batch_size': batch, 'num_samples': k,
            'num_tokens': m.num_tokens, 'width': m.width, 'decoder_layers': m.decoder_layers,
            'device': device, 'jax': jax.__version__, 'compile_s': compile_s,
            'rollout_s': seconds, 'rollout_s_all': times, 'kv_bytes': moved,
            'bandwidth_gbs': bandwidth,
            'floor_s': moved / (bandwidth * 1e9) if bandwidth else None,
            'command': ' '.join(sys.argv),
            'date': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')}
  if bandwidth:
    record['ratio_to_floor'] = seconds / record['floor_s']
  line = (f'{_CONFIG.value} B={batch} K={k} L={m.num_tokens}: rollout {seconds:.3f} s '
          f'(compile {compile_s:.1f} s), K/V read {moved / 1e9:.1f} GB')
  if bandwidth:
    line += f', floor {record["floor_s"]:.3f} s at {bandwidth:.0f} GB/s: {record["ratio_to_floor"]:.1f}x'
  print(line, flush=True)
  if _OUTPUT.value:
    os.makedirs(os.path.dirname(_OUTPUT.value) or '.', exist_ok=True)
    with open(_OUTPUT.value, 'w') as f:
      json.dump(record, f, indent=1)


if __name__ == '__main__':
  app.run(main)
