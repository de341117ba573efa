"""Trains an autoregressive prior over the codes of a trained run.

  python -m daps_jax.prior --workdir=RUN [--config=configs/prior.py] [--config.total_steps=N]

RUN is a directory `python -m daps_jax.main` (or `compare`) trained into; the
prior goes to RUN/prior/ (see `daps_jax.prior.loop`). Running it again resumes.
"""

import os
import sys

from absl import app
from absl import flags
from ml_collections import config_flags

from daps_jax import config_lib
from daps_jax import errors
from daps_jax import preemption
from daps_jax.prior import loop

_DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))), 'configs', 'prior.py')
_CONFIG = config_flags.DEFINE_config_file('config', _DEFAULT_CONFIG, 'The prior config.',
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'The trained run whose codes are modelled.')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}', exitcode=2)
  try:
    metrics = loop.train_prior(_WORKDIR.value, _CONFIG.value)
  except errors.UserError as e:
    sys.exit(f'error: {e}')
  except preemption.Preempted as e:
    sys.exit(e.exit_code)
  print(f'Held-out prior: {loop.summary(metrics)}. Outputs in '
        f'{os.path.join(_WORKDIR.value, loop.PRIOR_DIR)}.')


if __name__ == '__main__':
  flags.mark_flags_as_required(['workdir'])
  app.run(main, flags_parser=config_lib.parse_flags)
