"""Prints trainable parameter counts per config and method.

  python -m daps_jax.param_count                      # every dataset config and method
  python -m daps_jax.param_count --config=configs/cifar10.py:method=daps_na
  python -m daps_jax.param_count --config=configs/lafan1.py --config.data.dir=OUT

Counts come from shapes only (`jax.eval_shape`): nothing is allocated. The AR
encoder has one token-embedding row more than the paper's (the start token).
LAFAN1's networks depend on its feature count C: with `data.dir` set, the
prepared dataset's; without, one row per clip format with its features before
any is dropped (BVH 136, H1 CSV 29).
"""

import glob
import os

from absl import app
from absl import flags
from ml_collections import config_flags

from daps_jax import build
from daps_jax import config_lib
from daps_jax import methods
from daps_jax.data import motion

_CONFIG = config_flags.DEFINE_config_file('config', None, 'One config; default: all in configs/.')
_CONFIG_DIR = flags.DEFINE_string('config_dir', 'configs', 'Where the dataset configs live.')

# Trainable parameters of the paper's AR models (spec section 2).
PAPER_AR_COUNTS = {'mnist': 423_824, 'cifar10': 1_318_950, 'imagenet2012': 1_541_206}


def _row(name: str, config, spec=None) -> str:
  c = build.param_counts(config, spec)
  line = (f'{name:<34} encoder {c["encoder"]:>10,}  decoder {c["decoder"]:>9,}  '
          f'total {c["total"]:>10,}  bits {config_lib.bits_per_input(config):>7.1f}')
  if 'value' in c:
    line += f'  (value network {c["value"]:,})'
  paper = PAPER_AR_COUNTS.get(config.data.name)
  if paper and config.method.name == 'daps':
    line += f'  paper {paper:,} (+{c["total"] - paper} = start-token row of D)'
  return line


def main(argv):
  del argv
  if _CONFIG.value is not None:
    _print(flags.FLAGS['config'].config_filename, _CONFIG.value)
    return
  for path in sorted(glob.glob(os.path.join(_CONFIG_DIR.value, '*.py'))):
    for method in methods.NAMES:
      config = config_lib.load(path, f'method={method}')
      _print(f'{os.path.basename(path)}:method={method}', config)


def _print(name: str, config) -> None:
  if config.data.name != motion.NAME or config.data.dir:
    print(_row(name, config))
    return
  for kind, channels in motion.NOMINAL_FEATURES.items():
    print(_row(f'{name} ({kind}, C={channels})', config, motion.nominal_spec(channels)))


if __name__ == '__main__':
  app.run(main)
