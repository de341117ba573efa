"""MNIST, binarised (x > 127), Bernoulli decoder: L=8, V=256, D=64 (64 bits).

Arguments (after a colon, comma separated):
  method=daps|daps_na   the encoder family (default daps).
  quickstart            the embedded 5,000 MNIST digits (4,000 train / 1,000
                        held out; no download) and a run of ~8 minutes on a 2-core
                        CPU. A short run cannot wait for eta to decay from 100, so
                        it starts at eta = 1 with a faster dual and a larger
                        learning rate; everything else is the paper's.
Example: --config=configs/mnist.py:method=daps_na
"""

from daps_jax import config_lib

# Per-method settings of spec section 5.
_METHODS = {
    'daps': dict(ess_target=0.33, beta=(0.5, 0.01)),
    'daps_na': dict(ess_target=0.5, beta=(0.5, 0.01)),
}


def get_config(arg=None):
  arg = config_lib.parse_arg(arg, method='daps', quickstart=False)
  config = config_lib.base_config()
  config.data.name = 'mnist'
  config.total_steps = 250_000
  config.batch_size = 256
  config.model = config_lib.model(
      num_tokens=8, vocab_size=256, width=64, encoder_layers=1, decoder_layers=1,
      na_layers=2, na_mlp_ratio=6,
      decoder=config_lib.mlp_decoder(embed_dim=64, hidden_dims=(64, 256)),
      likelihood=config_lib.bernoulli())
  config.method = config_lib.daps_method(arg.method, _METHODS)
  if arg.quickstart:
    config.data.name = 'mnist_embedded'
    config.total_steps = 8_000
    config.batch_size = 64
    config.eval_batch_size = 500
    config.eval_every_steps = 2_000
    config.checkpoint_every_steps = 2_000
    config.log_every_steps = 200
    config.optim.learning_rate = 1e-3
    config.method.eta_init = 1.0
    config.method.eta_learning_rate = 1e-2
  return config
