"""LAFAN1 motion, 32-frame windows, Gaussian (fixed variance 0.25): L=64, V=1024, D=128 (640 bits).

Argument: method=NAME, any of daps_jax.methods.NAMES (default daps), with its
spec section 5 settings for LAFAN1 (in its module, daps_jax/methods/). Needs the
clips prepared into `--config.data.dir`:
  python -m daps_jax.data.prepare --dataset=lafan1 --source_dir=CLIPS --data_dir=OUT
(CLIPS: the Ubisoft LAFAN1 .bvh files, or the Unitree-H1 retargeted .csv files;
see the README's data section). The feature count C is read from OUT.
"""

from daps_jax import config_lib
from daps_jax import methods


def get_config(arg=None):
  arg = config_lib.parse_arg(arg, method='daps')
  config = config_lib.base_config()
  config.data.name = 'lafan1'
  config.total_steps = 250_000
  config.batch_size = 256
  config.eval_batch_size = 200
  config.model = config_lib.model(
      num_tokens=64, vocab_size=1024, width=128, encoder_layers=2, decoder_layers=2,
      na_layers=6, na_mlp_ratio=4,
      decoder=config_lib.motion_decoder(embed_dim=128, num_layers=2),
      likelihood=config_lib.gaussian(variance=0.25))
  methods.configure(config, arg.method, 'lafan1')  # Its settings for this dataset.
  return config
