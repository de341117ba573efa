"""ImageNet-256, Gaussian ResNet decoder: L=1024, V=1024, D=128 (10,240 bits).

Argument: method=NAME (daps, daps_na, gumbel, gumbel_na, grmck, grmck_na, vqvae,
fsq, ppo). Needs a prepared tfds `imagenet2012` in `--config.data.dir`
(python -m daps_jax.data.prepare --dataset=imagenet2012
--manual_dir=DIR_WITH_THE_ILSVRC2012_TARS).
"""

from daps_jax import config_lib

# Per-method settings of spec section 5.
_METHODS = {
    'daps': dict(ess_target=0.25, beta=(50.0, 1.0)),
    'daps_na': dict(ess_target=0.25, beta=(50.0, 1.0)),
    'gumbel': dict(beta=(50.0, 1.0), tau=(1.0, 0.75), optim=dict(learning_rate=1e-4)),
    'gumbel_na': dict(beta=(50.0, 1.0), tau=(1.0, 0.1)),
    'grmck': dict(beta=(10.0, 1.0), tau=(1.0, 0.75), num_gumbels=10),
    'grmck_na': dict(beta=(10.0, 1.0), tau=(1.0, 0.1), num_gumbels=10),
    'vqvae': dict(commitment_cost=0.25),
    'fsq': dict(levels=(8, 5, 5, 5)),
    'ppo': dict(beta=(50.0, 1.0)),
}


def get_config(arg=None):
  arg = config_lib.parse_arg(arg, method='daps')
  config = config_lib.base_config()
  config.data.name = 'imagenet2012'
  config.total_steps = 300_000
  config.batch_size = 64
  config.eval_batch_size = 64
  config.eval_every_steps = 10_000
  config.checkpoint_every_steps = 5_000
  config.model = config_lib.model(
      num_tokens=1024, vocab_size=1024, width=128, encoder_layers=2, decoder_layers=2,
      na_layers=6, na_mlp_ratio=4,
      decoder=config_lib.resnet_decoder(embed_dim=128),
      likelihood=config_lib.gaussian(variance_range=(0.01, 1.0)))
  config.method = config_lib.method(arg.method, _METHODS)
  config.optim.update(config_lib.optim_overrides(arg.method, _METHODS))
  return config
