"""DAPS with the bisection trust region, trained on every dataset config.

  python -m bench.bisection_configs --workdir=/tmp/bisection_configs \\
      --output=bench/results/bisection_configs

Each config in configs/ that names a dataset is loaded with `method=daps` and
`method.dual_solver=bisection` and everything else its own (networks, K, the
spec's ESS target and β schedule), then `daps_jax.train` trains it for `--steps`
steps at a small batch (`BATCH`, a CPU's) with a log record every step and one
evaluation at the end. Data: MNIST, CIFAR-10 and ImageNet from
`tfds.testing.mock_data` (random images of the real shapes); Fashion-MNIST from
Debian's IDX files (`--fashion_dir`); LAFAN1 from generated H1 CSV clips, prepared
by `daps_jax.data.prepare`'s code. Nothing is downloaded. A config whose run in
WORKDIR finished is read, not trained again (one trained with other settings is
refused).

Reported per config (`results.json`, `results.md`): the largest deviation of
ESS / K from the target over the steps where η is inside its bracket, η's range,
the steps where η sat on the bracket (the target out of reach) with their ESS / K,
and the final evaluation. A run that stops, or a non-finite record, fails the tool.
"""

import contextlib
import datetime
import json
import math
import os
import pathlib
import platform
import shlex
import sys

from absl import app
from absl import flags
import jax

from bench import common
from daps_jax import config_lib
from daps_jax import report
from daps_jax import runs
from daps_jax.data import motion

CONFIGS = ('mnist', 'fashion_mnist', 'cifar10', 'imagenet', 'lafan1')
BATCH = {'mnist': 32, 'fashion_mnist': 32, 'cifar10': 8, 'imagenet': 2, 'lafan1': 8}
MOCKED = ('mnist', 'cifar10', 'imagenet2012')  # tfds datasets read from mock_data.
MOCK_EXAMPLES = 8  # Per split of the mocked datasets.

_CONFIGS = flags.DEFINE_list('configs', list(CONFIGS), 'Dataset configs (files in configs/).')
_STEPS = flags.DEFINE_integer('steps', 10, 'Training steps per config.')
_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory of the runs (outside the repository).')
_OUTPUT = flags.DEFINE_string('output', None, 'Directory of results.{json,md}; default WORKDIR.')
_FASHION = flags.DEFINE_string('fashion_dir', '/usr/share/datasets/fashion-mnist',
                               "Fashion-MNIST's IDX files.")
flags.mark_flags_as_required(['workdir'])


def _lafan1_data(root: pathlib.Path) -> str:
  """Prepared generated H1 CSV clips (the tests' generator) under `root`."""
  from tests import motion_clips  # pylint: disable=g-import-not-at-top
  out = root / 'lafan1_data'
  if not (out / motion.NAME).exists():
    motion.prepare(motion_clips.write_clips(root / 'lafan1_clips', 'csv', 200), out)
  return str(out)


def configure(name: str, steps: int, root: pathlib.Path):
  config = common.load_config(name, 'daps')
  config.method.dual_solver = 'bisection'
  config.total_steps = steps
  config.batch_size = config.eval_batch_size = BATCH[name]
  config.log_every_steps = 1
  config.eval_every_steps = config.checkpoint_every_steps = steps
  config.num_grid_images = 2
  config.fid.every_steps = -1
  if name == 'fashion_mnist':
    config.data.dir = _FASHION.value
  elif name == 'lafan1':
    config.data.dir = _lafan1_data(root)
  config_lib.validate(config, num_devices=jax.device_count())
  return config


def train_one(name: str, steps: int, root: pathlib.Path) -> dict:
  config = configure(name, steps, root)
  workdir = str(root / name)
  data = contextlib.nullcontext()
  if config.data.name in MOCKED:
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    data = tfds.testing.mock_data(num_examples=MOCK_EXAMPLES)
  with data:
    runs.train_unless_finished(config, workdir, name)
  run = runs.load_run(workdir, config, seed_offset=0)
  final = run.final
  records = [r for r in run.curve if 'dual/ess_fraction' in r and 'eval/psnr' not in r]
  target = config.method.ess_target
  ess = [r['dual/ess_fraction'] for r in records]
  eta = [r['dual/eta'] for r in records]
  values = [v for r in records for v in r.values() if isinstance(v, float)]
  values += [v for v in final.values() if isinstance(v, float)]
  if len(records) != steps or not all(math.isfinite(v) for v in values):
    raise RuntimeError(f'{name}: {len(records)} step records of {steps}, or a non-finite value.')
  low, high = config.method.eta_min * 1.0001, config.method.eta_max / 1.0001
  on_bracket = [not low < e < high for e in eta]
  inside = [abs(e - target) for e, clamped in zip(ess, on_bracket) if not clamped]
  return {
      'config': name, 'data': config.data.name, 'batch_size': config.batch_size,
      'K': config.method.num_samples, 'L': config.model.num_tokens,
      'V': config.model.vocab_size, 'steps': steps, 'ess_target': target,
      'max_abs_ess_error_inside': max(inside, default=float('nan')),
      'eta_min_seen': min(eta), 'eta_max_seen': max(eta),
      'on_bracket': [{'step': r['step'], 'eta': r['dual/eta'], 'ess_fraction': e}
                     for r, e, clamped in zip(records, ess, on_bracket) if clamped],
      'final_eval': {k: final[k] for k in sorted(final) if k.startswith('eval/')},
  }


def table(records: list[dict]) -> list[str]:
  header = ['config', 'data', 'B', 'K', 'L', 'V', 'steps', 'ESS/K target',
            'max abs(ESS/K - target), η inside the bracket', 'η range',
            'steps with η on the bracket: ESS/K', 'final eval PSNR (dB)']
  body = []
  for r in records:
    clamped = ', '.join(f"step {b['step']}: {b['ess_fraction']:.3f}" for b in r['on_bracket'])
    body.append([str(r[k]) for k in ('config', 'data', 'batch_size', 'K', 'L', 'V', 'steps')] + [
        f"{r['ess_target']:g}", f"{r['max_abs_ess_error_inside']:.1e}",
        f"{r['eta_min_seen']:.3g}–{r['eta_max_seen']:.3g}", clamped or '–',
        f"{r['final_eval'].get('eval/psnr', float('nan')):.2f}"])
  return report.markdown_table(header, body)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}', exitcode=2)
  unknown = [c for c in _CONFIGS.value if c not in CONFIGS]
  if unknown:
    raise app.UsageError(f'--configs: unknown {unknown}; valid: {", ".join(CONFIGS)}.')
  root = pathlib.Path(_WORKDIR.value)
  root.mkdir(parents=True, exist_ok=True)
  records = [train_one(name, _STEPS.value, root) for name in _CONFIGS.value]
  output = pathlib.Path(_OUTPUT.value or _WORKDIR.value)
  output.mkdir(parents=True, exist_ok=True)
  command = 'python -m bench.bisection_configs ' + ' '.join(shlex.quote(a) for a in sys.argv[1:])
  header = {'command': command, 'date': datetime.date.today().isoformat(),
            'machine': f'{platform.node()}, {os.cpu_count()} CPUs, jax {jax.__version__}'}
  (output / 'results.json').write_text(json.dumps({'header': header, 'records': records},
                                                  indent=1) + '\n')
  lines = ['# DAPS with `method.dual_solver=bisection` on every dataset config', '',
           *[f'- {k}: {v}' for k, v in header.items()], '', *table(records)]
  (output / 'results.md').write_text('\n'.join(lines) + '\n')
  print('\n'.join(lines))


if __name__ == '__main__':
  app.run(main)
