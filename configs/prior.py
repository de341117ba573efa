"""The autoregressive code prior trained on a finished run's codes (daps_jax.prior).

python -m daps_jax.prior --workdir=RUN [--config=configs/prior.py] [--config.total_steps=N]

The defaults train on the quickstart run (8 tokens of 256 codes, 4,000 digits)
in a few minutes on a 2-core CPU; longer latents want more width and steps.
Every field is a dotted override; there are no colon arguments.
"""

from daps_jax import config_lib
from daps_jax.prior import config as prior_config


def get_config(arg=None):
  config_lib.parse_arg(arg)
  return prior_config.default()
