"""Evaluates a trained run: python -m daps_jax.evaluate --workdir=DIR.

Restores the run's config (`DIR/config.json`) and a checkpoint (the newest, or
`--checkpoint=STEP`), computes the asked metrics on the whole validation split
with the same code and keys as the training loop's evaluation, and writes
`DIR/eval_<step>.json`, `DIR/images/recon_<step>.png` and
`DIR/images/codebook_<step>.png`. FID needs the Inception weights
(`python -m daps_jax.fid.weights`); nothing is downloaded here.
"""

import sys

from absl import app
from absl import flags
from absl import logging

from daps_jax import config_lib
from daps_jax import errors
from daps_jax import parallel
from daps_jax.evaluation import outputs
from daps_jax.evaluation import run

_WORKDIR = flags.DEFINE_string('workdir', None, 'Run directory (config.json, checkpoints/).')
_CHECKPOINT = flags.DEFINE_integer('checkpoint', None, 'Step to evaluate (default: the newest).')
_METRICS = flags.DEFINE_list('metrics', list(outputs.METRICS),
                             f'Any of {",".join(outputs.METRICS)}.')
_DATA_DIR = flags.DEFINE_string('data_dir', None, 'Override config.data.dir (data moved).')
_BATCH = flags.DEFINE_integer('eval_batch_size', None, 'Override config.eval_batch_size.')
_FID_PROTOCOL = flags.DEFINE_enum('fid_protocol', None, list(config_lib.FID_PROTOCOLS),
                                  'Override config.fid.protocol.')
_FID_REFERENCE = flags.DEFINE_string('fid_reference', None,
                                     "Statistics .npz (mu, sigma) of the 'authors' protocol.")
_FID_WEIGHTS = flags.DEFINE_string('fid_weights', None, 'Override config.fid.weights.')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}', exitcode=2)
  overrides = {field: flag.value for field, flag in (
      ('data.dir', _DATA_DIR), ('eval_batch_size', _BATCH), ('fid.protocol', _FID_PROTOCOL),
      ('fid.reference', _FID_REFERENCE), ('fid.weights', _FID_WEIGHTS)) if flag.value is not None}
  try:
    metrics, path = run.evaluate_run(_WORKDIR.value, step=_CHECKPOINT.value,
                                     metrics=tuple(_METRICS.value), overrides=overrides)
  except errors.UserError as e:
    sys.exit(f'error: {e}')
  logging.info('Wrote %s', path)
  if parallel.is_writer():
    print(f'{outputs.summary(metrics)}. Written to {path}.')


if __name__ == '__main__':
  flags.mark_flags_as_required(['workdir'])
  app.run(main, flags_parser=config_lib.parse_flags)
