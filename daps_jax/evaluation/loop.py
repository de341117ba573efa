"""One evaluation of a train state on the whole validation split.

`Evaluator` compiles the pure `step.eval_step` over the devices, holds the FID
scorer (when the Inception weights are there) and the mean-image baseline, and
turns the summed batch metrics into a `outputs.Result`: ELBO and beta-ELBO (only
with an analytic q(z|x)), PSNR (per input on [0, 1], averaged), for images SSIM
and the FID of the reconstructions, for motion the authors' per-batch PSNR, and
codebook usage over the whole split.
"""

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from daps_jax import build
from daps_jax import data
from daps_jax import metrics as metrics_lib
from daps_jax import parallel
from daps_jax import state as state_lib
from daps_jax.evaluation import outputs
from daps_jax.evaluation import step as step_lib
from daps_jax.fid import scorer
from daps_jax.fid import weights


class Evaluator:
  """The compiled eval step, the FID scorer and the mean-image baseline of a run."""

  def __init__(self, run: build.Assembly, *, fid: str):
    """fid: 'off'; 'auto' (FID when the Inception weights are on disk, otherwise a
    warning naming the command); 'required' (their absence is an error)."""
    self._run = run
    self._p_eval = parallel.pmap_step(step_lib.eval_step, networks=run.networks,
                                      encode=run.method.encode, spec=run.spec)
    self._baseline_psnr = None
    self.fid = None
    if fid == 'off':
      return
    if run.spec.modality != 'image':  # FID is of images; other modalities have none.
      return
    f = run.config.fid
    try:
      params, error = weights.load(f.weights), None
    except weights.WeightsError as e:
      params, error = None, e
    # Every process must take the same branch: the FID pass has collectives.
    if not parallel.all_processes(params is not None):
      error = error or weights.WeightsError(
          'Another process has no Inception weights; run python -m daps_jax.fid.weights on '
          'every host (or share the file via --config.fid.weights).')
      if fid == 'required' or f.weights:
        raise error
      logging.warning('No FID in this run: %s', error)
      return
    self.fid = scorer.FidScorer(
        params, spec=run.spec, num_examples=data.num_eval_examples(run.spec.name,
                                                                    run.config.data.dir),
        protocol=f.protocol, resolution=f.resolution, chunk_size=f.chunk_size,
        reference=f.reference, stats_dir=f.stats_dir)

  def _batches(self):
    config = self._run.config
    return data.eval_batches(config.data.name, data_dir=config.data.dir,
                             batch_size=parallel.process_batch_size(config.eval_batch_size),
                             **parallel.process_rows())

  def __call__(self, state, step: int, *, with_fid: bool = True) -> outputs.Result:
    """Evaluates the device-replicated `state` at `step` on the validation split."""
    config, spec = self._run.config, self._run.spec
    fid = self.fid if with_fid else None
    rng = jax.random.fold_in(state_lib.run_keys(config.seed)[2], step)
    totals, grid = None, None
    if fid is not None:
      fid.begin()
    for i, batch in enumerate(self._batches()):
      sums, recon = self._p_eval(state, parallel.shard(batch), jax.random.fold_in(rng, i))
      if fid is not None:
        fid.add(recon, batch)
      sums = jax.tree.map(lambda x: np.asarray(x, np.float64), parallel.unreplicate(sums))
      totals = sums if totals is None else jax.tree.map(np.add, totals, sums)
      if grid is None and config.num_grid_images:
        grid = _grid(batch, parallel.unshard(recon), spec, config.num_grid_images)
    if totals is None or totals['count'] == 0:
      raise ValueError('The validation split is empty: nothing to evaluate.')
    metrics = _metrics(totals, self._run.method.beta_final)
    if fid is not None:
      metrics['eval/fid'] = fid.result()
    if self._baseline_psnr is None:
      self._baseline_psnr = mean_image_psnr(
          config.data.name, config.data.dir, seed=config.seed,
          eval_batch_size=parallel.process_batch_size(config.eval_batch_size))
    metrics['eval/psnr_mean_image'] = self._baseline_psnr
    return outputs.Result(metrics, grid, totals['code_counts'].astype(np.int64),
                          fid.protocol.describe() if fid else None)


def _grid(batch: dict, recon: np.ndarray, spec: data.DatasetSpec,
          num: int) -> tuple[np.ndarray, np.ndarray]:
  """The first `num` (originals, reconstructions) of a host batch, padding left out."""
  keep = batch['mask'][:num]
  originals = np.asarray(spec.to_unit(batch['inputs'][:num]))[keep]
  return np.clip(originals, 0, 1), recon[:num][keep]


def _metrics(totals: dict, beta_final: float | None) -> dict[str, float]:
  """Split-level metrics from the summed batch metrics; ELBO only with a `kl` sum."""
  n = totals['count']
  result = {'eval/log_p': totals['log_p'] / n, 'eval/psnr': totals['psnr'] / n,
            'eval/num_examples': n}
  if 'ssim' in totals:
    result['eval/ssim'] = totals['ssim'] / n
  if 'psnr_batch' in totals:
    result['eval/psnr_batch'] = totals['psnr_batch'] / totals['batches']
  if 'kl' in totals:
    result['eval/kl'] = totals['kl'] / n
    result['eval/elbo'] = (totals['log_p'] - totals['kl']) / n
    if beta_final is not None:
      result['eval/beta_elbo'] = (totals['log_p'] - beta_final * totals['kl']) / n
  result.update(metrics_lib.codebook_usage(totals['code_counts']))
  return {k: float(v) for k, v in result.items()}


def mean_image_psnr(name: str, data_dir: str | None, *, seed: int, eval_batch_size: int,
                    num_examples: int = 4096) -> float:
  """PSNR of predicting the mean train input for every eval input (a baseline).

  The mean is taken over the first `num_examples` of the shuffled train stream
  (the whole split when smaller); eval inputs are streamed, so any split size
  works. Inputs in [0, 1], per-input PSNR averaged as in `Evaluator`.
  """
  spec = data.get_spec(name, data_dir)
  loader = data.train_loader(name, data_dir=data_dir, batch_size=min(256, num_examples),
                             seed=seed)
  needed = min(num_examples, loader.num_examples)
  total, count = 0.0, 0
  while count < needed:  # The first epoch: `needed` distinct examples.
    batch = np.asarray(spec.to_unit(next(loader)['inputs']), np.float64)[:needed - count]
    total, count = total + batch.sum(0), count + len(batch)
  mean = np.clip(total / count, 0.0, 1.0)
  psnr_sum, n = 0.0, 0
  for batch in data.eval_batches(name, data_dir=data_dir, batch_size=eval_batch_size):
    x = np.asarray(spec.to_unit(batch['inputs']))
    psnr = np.asarray(metrics_lib.psnr(jnp.broadcast_to(mean, x.shape), x))
    psnr_sum, n = psnr_sum + psnr[batch['mask']].sum(), n + batch['mask'].sum()
  return float(psnr_sum / n)
