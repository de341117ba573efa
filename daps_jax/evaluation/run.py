"""Evaluates a checkpoint of a trained run (behind `python -m daps_jax.evaluate`).

Restores the run's config (`DIR/config.json`, with fields added since filled
from today's defaults) and a checkpoint, evaluates it with the trainer's
`loop.Evaluator` and eval keys, and writes `outputs.write`'s files beside the
trainer's; TensorBoard events go to `DIR/evaluate/tb`.
"""

import os

import ml_collections

from daps_jax import build
from daps_jax import checkpoint
from daps_jax import config_lib
from daps_jax import errors
from daps_jax import files
from daps_jax import methods
from daps_jax import parallel
from daps_jax import writers
from daps_jax.evaluation import loop
from daps_jax.evaluation import outputs


class EvaluateError(errors.UserError):
  """A workdir, checkpoint or flag that cannot be evaluated; the message says why."""


def load_config(workdir: str) -> ml_collections.ConfigDict:
  """The run's config.json on top of today's defaults: fields added since it was
  trained read as their defaults (the trainer's, the model's optional fields, and
  the method's own)."""
  path = os.path.join(workdir, 'config.json')
  if not os.path.exists(path):
    raise EvaluateError(f'{path} does not exist: --workdir must be a directory that '
                        'python -m daps_jax.main trained into.')
  saved = files.read_json(path, EvaluateError, 'restore it from the run, or copy the '
                          'config the run was trained with there.')
  config = config_lib.base_config()
  config.model = config_lib.optional_model_fields()
  name = saved.get('method', {}).get('name')
  if name in methods.NAMES:  # Fields the method gained since; its per-dataset values are saved.
    config.method = methods.module(name).config(name, 'mnist')
  _merge(config, saved)
  return config


def _merge(node: ml_collections.ConfigDict, saved: dict) -> None:
  """Writes `saved` into `node`, keeping the types of the fields `node` has; a None the
  run saved was an optional field then and stays one (a placeholder)."""
  for key, value in saved.items():
    if isinstance(value, dict):
      if key not in node:
        node[key] = ml_collections.ConfigDict()
      _merge(node[key], value)
    elif key in node or value is not None:
      node[key] = tuple(value) if isinstance(value, list) else value
    else:
      node[key] = ml_collections.config_dict.placeholder(object)


def evaluate_run(workdir: str, *, step: int | None = None,
                 metrics: tuple[str, ...] = outputs.METRICS,
                 overrides: dict | None = None) -> tuple[dict, str]:
  """Evaluates checkpoint `step` (None: newest) of the run in `workdir`.

  Args:
    workdir: the run directory.
    step: the checkpoint step.
    metrics: names from `outputs.METRICS`.
    overrides: dotted config fields to change first (e.g. {'data.dir': ...}).
  Returns:
    (the selected metrics, the path of eval_<step>.json).
  """
  unknown = sorted(set(metrics) - set(outputs.METRICS))
  if unknown:
    raise EvaluateError(f'--metrics: unknown {unknown}; choose from '
                        f'{",".join(outputs.METRICS)}.')
  config = load_config(workdir)
  for dotted, value in (overrides or {}).items():
    config_lib.set_field(config, dotted, value)
  config_lib.validate(config, num_devices=parallel.device_count())
  run = build.assemble(config, bn_axis_name=parallel.AXIS)
  if run.spec.modality != 'image':  # SSIM and FID are of images: skipped, not zero.
    metrics = tuple(m for m in metrics if m not in outputs.IMAGE_METRICS)

  ckpt = checkpoint.Checkpointer(workdir, config.keep_checkpoints)
  try:
    available = ckpt.all_steps()
    step = available[-1] if step is None and available else step
    if step is None or step not in available:
      raise EvaluateError(f'No checkpoint {"" if step is None else step} in {ckpt.directory}; '
                          f'available steps: {available or "none"}.')
    state, _ = ckpt.restore(step, run.initial_state())
  finally:
    ckpt.close()

  evaluator = loop.Evaluator(run, fid='required' if 'fid' in metrics else 'off')
  result = evaluator(parallel.replicate(state), step, with_fid='fid' in metrics)
  result = result._replace(metrics=outputs.select(result.metrics, metrics))
  if 'codebook' not in metrics:
    result = result._replace(counts=None)
  path = outputs.json_path(workdir, step)
  if parallel.is_writer():
    with writers.MetricWriter(os.path.join(workdir, 'evaluate')) as writer:
      path = outputs.write(
          workdir, step, result, writer, config=config, spec=run.spec,
          extra={'checkpoint': os.path.join(ckpt.directory, str(step)),
                 'metrics_requested': list(metrics)})
  return result.metrics, path
