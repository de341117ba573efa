"""CIFAR-10, standardised pixels, Gaussian ResNet decoder: L=64, V=512, D=128 (576 bits).

Argument: method=NAME, any of daps_jax.methods.NAMES (default daps). Needs a
prepared tfds `cifar10` in `--config.data.dir`
(python -m daps_jax.data.prepare --dataset=cifar10).
"""

from daps_jax import config_lib
from daps_jax import methods


def get_config(arg=None):
  arg = config_lib.parse_arg(arg, method='daps')
  config = config_lib.base_config()
  config.data.name = 'cifar10'
  config.total_steps = 250_000
  config.batch_size = 256
  config.model = config_lib.model(
      num_tokens=64, vocab_size=512, width=128, encoder_layers=2, decoder_layers=2,
      na_layers=4, na_mlp_ratio=6,
      decoder=config_lib.resnet_decoder(embed_dim=128),
      likelihood=config_lib.gaussian())
  methods.configure(config, arg.method, 'cifar10')  # Its settings for this dataset.
  return config
