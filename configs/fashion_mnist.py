"""Fashion-MNIST, binarised (x > 127), with MNIST's networks and settings.

Reads the standard IDX files from `--config.data.dir` (Debian's
`dataset-fashion-mnist` puts them in /usr/share/datasets/fashion-mnist) or a
prepared tfds `fashion_mnist`. Argument: method=daps|daps_na.
"""

import pathlib

from daps_jax import config_lib


def get_config(arg=None):
  arg = config_lib.parse_arg(arg, method='daps')
  config = config_lib.load(pathlib.Path(__file__).with_name('mnist.py'), f'method={arg.method}')
  config.data.name = 'fashion_mnist'
  return config
