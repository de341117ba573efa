"""The tiny config every test uses: MNIST-family networks shrunk to seconds on a CPU.

The quickstart (embedded MNIST digits, no download) with 2 steps at batch 8, a
16-code vocabulary, width 16, K = 4 and FID off; every field can still be
overridden. Argument: method=NAME, as for configs/mnist.py.
"""

import pathlib

from daps_jax import config_lib


def get_config(arg=None):
  arg = config_lib.parse_arg(arg, method='daps')
  config = config_lib.load(pathlib.Path(__file__).with_name('mnist.py'),
                           f'method={arg.method},quickstart')
  config.total_steps = 2
  config.batch_size = 8
  config.eval_batch_size = 250
  config.eval_every_steps = 2
  config.checkpoint_every_steps = 2
  config.log_every_steps = 1
  config.num_grid_images = 4
  config.fid.every_steps = -1  # Tests that want FID turn it on (it costs an Inception pass).
  if 'num_samples' in config.method:
    config.method.num_samples = 4
  config.model.vocab_size = 16
  config.model.width = 16
  config.model.decoder.embed_dim = 8
  config.model.decoder.hidden_dims = (16,)
  return config
