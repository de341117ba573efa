"""Trains a discrete VAE: python -m daps_jax.main --config=configs/mnist.py --workdir=DIR.

Dotted overrides work for every config field, e.g. `--config.batch_size=64`.
Running the same command again resumes from the newest checkpoint in DIR.
"""

import logging as std_logging
import os
import sys

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

from daps_jax import config_lib
from daps_jax import errors
from daps_jax import parallel
from daps_jax import preemption
from daps_jax import train
from daps_jax.evaluation import outputs

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Config file, e.g. configs/mnist.py:method=daps.',
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory for checkpoints, metrics and images.')
_DISTRIBUTED = flags.DEFINE_bool(
    'distributed', False, 'Call jax.distributed.initialize() with JAX\'s cluster detection '
    '(multi-host TPU pods, SLURM); implied by --coordinator_address.')
_COORDINATOR = flags.DEFINE_string(
    'coordinator_address', None, 'HOST:PORT of process 0, for processes started by hand '
    '(launch/local_multiprocess.sh); needs --num_processes and --process_id.')
_NUM_PROCESSES = flags.DEFINE_integer('num_processes', None, 'Processes in the job.')
_PROCESS_ID = flags.DEFINE_integer('process_id', None, 'This process, in [0, num_processes).')
_RESUME_FALLBACK = flags.DEFINE_bool(
    'resume_fallback', True, 'When the newest checkpoint cannot be restored, rename it to '
    '<step>.corrupt and resume from the previous one (--noresume_fallback: stop with the error).')
_CACHE_DIR = flags.DEFINE_string(
    'compilation_cache_dir', os.path.expanduser('~/.cache/daps_jax/xla'),
    'Persistent XLA compilation cache ("" disables it).')


class _QuietCheckpointing(std_logging.Filter):
  """Drops orbax's per-save INFO chatter; its warnings and errors still show, as one line
  each (a failed save ends the run with a CheckpointError that says what to do)."""

  def filter(self, record: std_logging.LogRecord) -> bool:
    if '/orbax/' not in record.pathname:
      return True
    record.exc_info = record.exc_text = None
    return record.levelno >= std_logging.WARNING


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}', exitcode=2)
  logging.get_absl_handler().addFilter(_QuietCheckpointing())
  explicit = (_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  if any(v is not None for v in explicit):
    if any(v is None for v in explicit):
      raise app.UsageError('--coordinator_address, --num_processes and --process_id go '
                           'together; give all three (or --distributed to auto-detect).',
                           exitcode=2)
    jax.distributed.initialize(*explicit)
  elif _DISTRIBUTED.value:
    jax.distributed.initialize()
  if _CACHE_DIR.value:
    jax.config.update('jax_compilation_cache_dir', _CACHE_DIR.value)
    jax.config.update('jax_persistent_cache_min_entry_size_bytes', -1)
    jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.5)
  logging.info('JAX %s on %s: process %d of %d, %d local devices, %d global devices.',
               jax.__version__, jax.default_backend(), jax.process_index(), jax.process_count(),
               jax.local_device_count(), jax.device_count())
  try:
    result = train.train_and_evaluate(_CONFIG.value, _WORKDIR.value,
                                      resume_fallback=_RESUME_FALLBACK.value)
  except errors.UserError as e:
    sys.exit(f'error: {e}')  # Bad input: the message says what to fix; no traceback.
  except preemption.Preempted as e:
    logging.warning('%s', e)
    sys.exit(e.exit_code)  # 128 + the signal, as if killed by it: schedulers requeue.
  if result and parallel.is_writer():
    print(f'Held-out {outputs.summary(result)}. Outputs in {_WORKDIR.value}.')


if __name__ == '__main__':
  flags.mark_flags_as_required(['config', 'workdir'])
  app.run(main, flags_parser=config_lib.parse_flags)
