"""CIFAR-10, standardised pixels, Gaussian ResNet decoder: L=64, V=512, D=128 (576 bits).

Argument: method=NAME (daps, daps_na, gumbel, gumbel_na, grmck, grmck_na, vqvae,
fsq, ppo). Needs a prepared tfds `cifar10` in `--config.data.dir`
(python -m daps_jax.data.prepare --dataset=cifar10).
"""

from daps_jax import config_lib

# Per-method settings of spec section 5.
_METHODS = {
    'daps': dict(ess_target=0.33, beta=(6.0, 0.01)),
    'daps_na': dict(ess_target=0.33, beta=(6.0, 1.0)),
    'gumbel': dict(beta=(6.0, 0.01), tau=(1.0, 1.0),
                   optim=dict(schedule='cosine', learning_rate=1e-4, final_learning_rate=1e-5)),
    'gumbel_na': dict(beta=(6.0, 1.0), tau=(1.0, 0.1)),
    'grmck': dict(beta=(3.0, 0.01), tau=(1.0, 0.75), num_gumbels=100),
    'grmck_na': dict(beta=(3.0, 0.01), tau=(1.0, 0.1), num_gumbels=100),
    'vqvae': dict(commitment_cost=0.25),
    'fsq': dict(levels=(8, 8, 8)),
    'ppo': dict(beta=(6.0, 0.01)),
}


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
  config.method = config_lib.method(arg.method, _METHODS)
  config.optim.update(config_lib.optim_overrides(arg.method, _METHODS))
  return config
