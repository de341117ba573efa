"""MNIST, binarised (x > 127), Bernoulli decoder: L=8, V=256, D=64 (64 bits).

Arguments (after a colon, comma separated):
  method=NAME   any of daps_jax.methods.NAMES (default daps), with its
                settings of spec section 5 (in its module, daps_jax/methods/).
  short         settings for runs of a few thousand steps on a CPU: batch 64,
                learning rate 1e-3, and for DAPS eta starting at 1 with a dual
                learning rate of 1e-2 (a short run cannot wait for eta to decay
                from 100); everything else is the paper's.
  quickstart    `short` on the embedded 5,000 MNIST digits (4,000 train / 1,000
                held out; no download), 8,000 steps: ~8 minutes on a 2-core CPU.
                For DAPS, beta anneals over 10x the run's steps
                (method.beta_horizon): it keeps the codebook in use at the same
                PSNR (README, "Schedule and codebook study"); 1 is the spec's.
Example: --config=configs/mnist.py:method=daps_na
"""

from daps_jax import config_lib
from daps_jax import methods


def get_config(arg=None):
  arg = config_lib.parse_arg(arg, method='daps', short=False, quickstart=False)
  config = config_lib.base_config()
  config.data.name = 'mnist'
  config.total_steps = 250_000
  config.batch_size = 256
  config.model = config_lib.model(
      num_tokens=8, vocab_size=256, width=64, encoder_layers=1, decoder_layers=1,
      na_layers=2, na_mlp_ratio=6,
      decoder=config_lib.mlp_decoder(embed_dim=64, hidden_dims=(64, 256)),
      likelihood=config_lib.bernoulli())
  methods.configure(config, arg.method, 'mnist')  # Its settings for this dataset.
  if arg.short or arg.quickstart:
    config.batch_size = 64
    config.eval_every_steps = 2_000
    config.checkpoint_every_steps = 2_000
    config.log_every_steps = 200
    config.optim.learning_rate = 1e-3
    if 'eta_init' in config.method:
      config.method.eta_init = 1.0
      config.method.eta_learning_rate = 1e-2
  if arg.quickstart:
    config.data.name = 'mnist_embedded'
    config.total_steps = 8_000
    config.eval_batch_size = 500
    if arg.method == 'daps':
      config.method.beta_horizon = 10.0
  return config
