"""ImageNet-256, Gaussian ResNet decoder: L=1024, V=1024, D=128 (10,240 bits).

Argument: method=NAME, any of daps_jax.methods.NAMES (default daps). Needs a
prepared tfds `imagenet2012` in `--config.data.dir`
(python -m daps_jax.data.prepare --dataset=imagenet2012
--manual_dir=DIR_WITH_THE_ILSVRC2012_TARS).
"""

from daps_jax import config_lib
from daps_jax import methods


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
  methods.configure(config, arg.method, 'imagenet2012')  # Its settings for this dataset.
  # Memory (exact: the same numbers): attention 128 queries at a time, and DAPS's
  # teacher-forced pass one of the K samples at a time. B = 64, K = 8 then compiles to
  # 9.6 GB of temporaries instead of 158 GB (python -m bench.memory --configs=imagenet
  # --methods=daps --paper_batch).
  config.model.attention_chunk = 128
  if 'sample_chunks' in config.method:
    config.method.sample_chunks = config.method.num_samples
  return config
