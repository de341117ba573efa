"""One evaluation of a train state on the whole validation split, and its outputs.

The training loop (every `eval_every_steps`) and `evaluate_run` (behind
`python -m daps_jax.evaluate`) both use `Evaluator` and `write_outputs`, so a
checkpoint evaluated afterwards gives the numbers the run logged at that step. Outputs in the workdir:
`eval_<step>.json` (metrics, FID protocol, data), `images/recon_<step>.png`,
`images/codebook_<step>.png` (sorted code frequencies and per-position usage),
`codes/counts_<step>.npy` ([L, V] histogram), and the scalars and both figures
in TensorBoard.
"""

import datetime
import json
import os
from typing import NamedTuple

from absl import logging
import jax
import ml_collections
import numpy as np

from daps_jax import build
from daps_jax import checkpoint
from daps_jax import config_lib
from daps_jax import data
from daps_jax import evaluation
from daps_jax import figures
from daps_jax import images as images_lib
from daps_jax import parallel
from daps_jax import state as state_lib
from daps_jax import writers
from daps_jax.fid import scorer
from daps_jax.fid import weights

# What `--metrics` may name, and the result keys each selects.
METRICS = ('psnr', 'ssim', 'elbo', 'codebook', 'fid')
_KEY_PREFIXES = {
    'psnr': ('eval/psnr',), 'ssim': ('eval/ssim',), 'fid': ('eval/fid',),
    'elbo': ('eval/log_p', 'eval/kl', 'eval/elbo', 'eval/beta_elbo'),
    'codebook': ('codebook/',),
}


class Result(NamedTuple):
  metrics: dict[str, float]  # 'eval/psnr', 'eval/fid', 'codebook/perplexity', ...
  grid: tuple[np.ndarray, np.ndarray] | None  # (originals, reconstructions) in [0, 1]
  counts: np.ndarray | None  # [L, V] int64 code histogram over the split
  fid_protocol: dict | None  # `scorer.Protocol.describe()` when FID was computed


def select(metrics: dict[str, float], names: tuple[str, ...]) -> dict[str, float]:
  """The entries of `metrics` that the metric `names` (from METRICS) ask for."""
  prefixes = tuple(p for name in names for p in _KEY_PREFIXES[name])
  return {k: v for k, v in metrics.items() if k.startswith(prefixes) or k == 'eval/num_examples'}


class Evaluator:
  """The compiled eval step, the FID scorer and the mean-image baseline of a run."""

  def __init__(self, config: ml_collections.ConfigDict, networks: build.Networks,
               method: build.Method, spec: data.DatasetSpec, *, fid: str):
    """fid: 'off'; 'auto' (FID when the Inception weights are on disk, otherwise a
    warning naming the command); 'required' (their absence is an error)."""
    self._config, self._method, self._spec = config, method, spec
    self._p_eval = parallel.pmap_step(evaluation.eval_step, networks=networks,
                                      encode=method.encode, spec=spec)
    self._baseline_psnr = None
    self.fid = None
    if fid == 'off':
      return
    try:
      params, error = weights.load(config.fid.weights), None
    except weights.WeightsError as e:
      params, error = None, e
    # Every process must take the same branch: the FID pass has collectives.
    if not parallel.all_processes(params is not None):
      error = error or weights.WeightsError(
          'Another process has no Inception weights; run python -m daps_jax.fid.weights on '
          'every host (or share the file via --config.fid.weights).')
      if fid == 'required' or config.fid.weights:
        raise error
      logging.warning('No FID in this run: %s', error)
      return
    num_examples = data.num_eval_examples(config.data.name, config.data.dir)
    self.fid = scorer.FidScorer(config.fid, spec, num_examples, params)

  def __call__(self, state, step: int, *, with_fid: bool = True) -> Result:
    """Evaluates the device-replicated `state` at `step` on the validation split."""
    config = self._config
    batches = data.eval_batches(config.data.name, data_dir=config.data.dir,
                                batch_size=parallel.process_batch_size(config.eval_batch_size),
                                process_index=jax.process_index(),
                                process_count=jax.process_count())
    fid = self.fid if with_fid else None
    rng = jax.random.fold_in(state_lib.run_keys(config.seed)[2], step)
    metrics, grid, counts = evaluation.evaluate(
        self._p_eval, state, batches, rng, beta_final=self._method.beta_final, spec=self._spec,
        num_grid_images=config.num_grid_images, fid=fid)
    if self._baseline_psnr is None:
      self._baseline_psnr = evaluation.mean_image_psnr(
          config.data.name, config.data.dir, seed=config.seed,
          eval_batch_size=parallel.process_batch_size(config.eval_batch_size))
    metrics['eval/psnr_mean_image'] = self._baseline_psnr
    return Result(metrics, grid, counts, fid.protocol.describe() if fid else None)


def write_outputs(workdir: str, step: int, result: Result, writer: writers.MetricWriter, *,
                  config: ml_collections.ConfigDict, extra: dict | None = None) -> str:
  """Writes an evaluation's files, scalars and figures; returns the JSON's path.

  Only the writer process (process 0) writes and renders anything.
  `extra` (e.g. the checkpoint evaluated) is added to eval_<step>.json.
  """
  path = os.path.join(workdir, f'eval_{step:08d}.json')
  if not parallel.is_writer():
    return path
  writer.write_scalars(step, result.metrics)
  pictures = {}
  if result.counts is not None:
    pictures['codebook'] = figures.codebook_figure(result.counts, title=f'step {step}')
  if result.grid is not None:
    pictures['reconstructions'] = images_lib.reconstruction_grid(*result.grid)
  writer.write_images(step, pictures)
  for name, picture in pictures.items():
    short = 'recon' if name == 'reconstructions' else name
    images_lib.save_png(os.path.join(workdir, 'images', f'{short}_{step:08d}.png'), picture)
  if result.counts is not None:
    counts_path = os.path.join(workdir, 'codes', f'counts_{step:08d}.npy')
    os.makedirs(os.path.dirname(counts_path), exist_ok=True)
    np.save(counts_path, result.counts)
  record = {
      'step': step, 'method': config.method.name, 'dataset': config.data.name,
      'split': data.get_spec(config.data.name).eval_split,
      'num_examples': int(result.metrics.get('eval/num_examples', 0)),
      'fid_protocol': result.fid_protocol,
      'metrics': result.metrics,
      'date': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
      **(extra or {}),
  }
  with open(path + '.tmp', 'w') as f:
    json.dump(record, f, indent=2, sort_keys=True)
  os.replace(path + '.tmp', path)
  return path


def summary(metrics: dict[str, float]) -> str:
  """One log line: ELBO (when defined), PSNR, SSIM, FID (when computed), codebook."""
  parts = []
  if 'eval/elbo' in metrics:
    parts.append(f'ELBO {metrics["eval/elbo"]:.2f}, beta-ELBO {metrics.get("eval/beta_elbo", 0):.2f}')
  if 'eval/psnr' in metrics:
    parts.append(f'PSNR {metrics["eval/psnr"]:.2f} dB'
                 + (f' (mean image {metrics["eval/psnr_mean_image"]:.2f} dB)'
                    if 'eval/psnr_mean_image' in metrics else ''))
  if 'eval/ssim' in metrics:
    parts.append(f'SSIM {metrics["eval/ssim"]:.4f}')
  if 'eval/fid' in metrics:
    parts.append(f'FID {metrics["eval/fid"]:.2f}')
  if 'codebook/used_fraction' in metrics:
    parts.append(f'codebook used {metrics["codebook/used_fraction"]:.3f}, '
                 f'perplexity {metrics["codebook/perplexity"]:.1f}')
  return '; '.join(parts)


class EvaluateError(ValueError):
  """A workdir, checkpoint or flag that cannot be evaluated; the message says why."""


def load_config(workdir: str) -> ml_collections.ConfigDict:
  """The run's config.json on top of today's defaults (fields added since are filled in)."""
  path = os.path.join(workdir, 'config.json')
  if not os.path.exists(path):
    raise EvaluateError(f'{path} does not exist: --workdir must be a directory that '
                        'python -m daps_jax.main trained into.')
  with open(path) as f:
    saved = json.load(f)
  config = config_lib.base_config()
  for key, value in saved.items():
    if isinstance(value, dict) and key in config:
      config[key] = ml_collections.ConfigDict({**config[key].to_dict(), **value})
    else:
      config[key] = value
  return config


def evaluate_run(workdir: str, *, step: int | None = None,
                 metrics: tuple[str, ...] = METRICS,
                 overrides: dict | None = None) -> tuple[dict, str]:
  """Evaluates checkpoint `step` (None: newest) of the run in `workdir`.

  Args:
    workdir: the run directory.
    step: the checkpoint step.
    metrics: names from `evaluator.METRICS`.
    overrides: dotted config fields to change first (e.g. {'data.dir': ...}).
  Returns:
    (the selected metrics, the path of eval_<step>.json).
  """
  unknown = sorted(set(metrics) - set(METRICS))
  if unknown:
    raise EvaluateError(f'--metrics: unknown {unknown}; choose from '
                        f'{",".join(METRICS)}.')
  config = load_config(workdir)
  for dotted, value in (overrides or {}).items():
    *parents, leaf = dotted.split('.')
    node = config
    for parent in parents:
      node = node[parent]
    node[leaf] = value
  config_lib.validate(config, num_devices=jax.device_count())
  spec = data.get_spec(config.data.name)
  networks = build.networks(config, spec.image_shape, bn_axis_name=parallel.AXIS)
  method = build.method(config, networks, spec.image_shape)

  ckpt = checkpoint.Checkpointer(workdir, config.keep_checkpoints)
  try:
    available = ckpt.all_steps()
    step = available[-1] if step is None and available else step
    if step is None or step not in available:
      raise EvaluateError(f'No checkpoint {"" if step is None else step} in {ckpt.directory}; '
                          f'available steps: {available or "none"}.')
    state, _ = ckpt.restore(step, build.initial_state(config, networks, method, spec))
  finally:
    ckpt.close()

  evaluator = Evaluator(config, networks, method, spec,
                        fid='required' if 'fid' in metrics else 'off')
  result = evaluator(parallel.replicate(state), step, with_fid='fid' in metrics)
  result = result._replace(metrics=select(result.metrics, metrics))
  if 'codebook' not in metrics:
    result = result._replace(counts=None)
  with writers.MetricWriter(os.path.join(workdir, 'evaluate'),
                            is_writer=parallel.is_writer()) as writer:
    path = write_outputs(
        workdir, step, result, writer, config=config,
        extra={'checkpoint': os.path.join(ckpt.directory, str(step)),
               'metrics_requested': list(metrics)})
  return result.metrics, path
