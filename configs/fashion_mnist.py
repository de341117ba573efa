"""Fashion-MNIST, binarised (x > 127), with MNIST's networks and settings.

Reads the standard IDX files from `--config.data.dir` (Debian's
`dataset-fashion-mnist` puts them in /usr/share/datasets/fashion-mnist) or a
prepared tfds `fashion_mnist`. Arguments: method=NAME and short, as for MNIST.
"""

import pathlib

from daps_jax import config_lib


def get_config(arg=None):
  arg = config_lib.parse_arg(arg, method='daps', short=False)
  config = config_lib.load(pathlib.Path(__file__).with_name('mnist.py'),
                           f'method={arg.method},short={arg.short}')
  config.data.name = 'fashion_mnist'
  return config
