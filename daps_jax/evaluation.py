"""Evaluation on the full validation split.

`eval_step` is pure and returns masked sums, summed over the device axis. A
method's `encode` gives the codes and the eval-mode decoder output: one
stochastic latent sample per input for the categorical encoders
(`categorical_encode`: DAPS, Gumbel, GR-MCK, PPO), deterministic quantisation
for VQ-VAE and FSQ; the reconstruction is the decoder mean. `evaluate` runs it
over every batch and turns the sums into metrics: ELBO and beta-ELBO (only with
an analytic q(z|x)), PSNR and SSIM (per image on [0, 1], averaged), codebook
usage over the whole split and, given a `fid.scorer.FidScorer`, the FID of the
reconstructions.

Shape legend: B batch per device, L latent tokens, V codebook size.
"""

from typing import Callable, Iterable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from daps_jax import data
from daps_jax import latents
from daps_jax import metrics as metrics_lib
from daps_jax import parallel
from daps_jax import state as state_lib
from daps_jax.fid import scorer


class Encoding(NamedTuple):
  tokens: jax.Array  # [B, L] int32 code indices
  out: jax.Array  # decoder output (likelihood parameters), eval mode
  kl: jax.Array | None  # [B] KL(q || uniform) along the path; None without analytic q


def categorical_encode(state: state_lib.State, images: jax.Array, rng: jax.Array, *, networks,
                       axis_name: str | None = None) -> Encoding:
  """One latent sample per input from q(z|x), its path KL and the decoder output."""
  enc_vars = {'params': state.encoder.params}
  rollout = latents.sample_latents(networks.encoder, enc_vars, images, rng, 1, axis_name)
  kl = latents.score_latents(networks.encoder, enc_vars, images, rollout.tokens).kl[:, 0]
  tokens = rollout.tokens[:, 0]
  out = networks.decoder.apply(state_lib.variables(state.decoder), tokens, train=False)
  return Encoding(tokens, out, kl)


def eval_step(state: state_lib.State, batch: dict, rng: jax.Array, *, networks,
              encode: Callable[..., Encoding], spec: data.DatasetSpec,
              axis_name: str | None = None) -> tuple[dict, jax.Array]:
  """Masked sums over a batch and the reconstructions in [0, 1].

  Args:
    state: the train state.
    batch: {'image': [B, H, W, C] model space, 'mask': [B] bool (False = padding)}.
    rng: PRNG key (each input's global index is folded in here).
    networks: `build.Networks`; encode: the method's encoding (e.g.
      `categorical_encode`); spec: the dataset's `DatasetSpec`.
  Returns:
    ({'count', 'log_p', 'kl' (analytic q only), 'psnr', 'ssim', 'code_counts' [L, V]}
    summed over the batch and devices, reconstructions [B, H, W, C] in [0, 1]).
  """
  images, mask = batch['image'], batch['mask'].astype(jnp.float32)
  tokens, out, kl = encode(state, images, rng, networks=networks, axis_name=axis_name)
  log_p = networks.likelihood.log_prob(out, images)
  recon = jnp.clip(data.to_unit(networks.likelihood.mean(out), spec), 0.0, 1.0)
  originals = data.to_unit(images, spec)
  psnr = metrics_lib.psnr(recon, originals)
  ssim = metrics_lib.ssim(recon, originals)
  sums = {'count': mask.sum(), 'log_p': (log_p * mask).sum(), 'psnr': (psnr * mask).sum(),
          'ssim': (ssim * mask).sum(),
          'code_counts': metrics_lib.code_counts(tokens, networks.num_codes, mask)}
  if kl is not None:
    sums['kl'] = (kl * mask).sum()
  if axis_name is not None:
    sums = jax.lax.psum(sums, axis_name)
  return sums, recon


def evaluate(p_eval_step, state, batches: Iterable[dict], rng: jax.Array, *,
             beta_final: float | None, spec: data.DatasetSpec, num_grid_images: int = 0,
             fid: scorer.FidScorer | None = None):
  """Runs a pmapped `eval_step` over all batches.

  Args:
    p_eval_step: `parallel.pmap_step(eval_step, ...)`.
    state: device-replicated state.
    batches: host batches from `data.eval_batches` (same count on every process).
    rng: PRNG key.
    beta_final: the beta of the reported beta-ELBO (None: the method has none).
    spec: the dataset spec (for the [0, 1] originals of the grid).
    num_grid_images: originals/reconstructions returned from the first batch.
    fid: scores the reconstructions' FID when given ('eval/fid').
  Returns:
    (metrics dict, (originals, reconstructions) numpy in [0, 1] for the grid,
    code counts [L, V] numpy). ELBO and beta-ELBO are present only for methods
    with an analytic q(z|x).
  """
  totals, grid = None, None
  if fid is not None:
    fid.begin()
  for i, batch in enumerate(batches):
    sums, recon = p_eval_step(state, parallel.shard(batch), jax.random.fold_in(rng, i))
    if fid is not None:
      fid.add(recon, batch)
    sums = jax.tree.map(lambda x: np.asarray(x[0], np.float64), sums)
    totals = sums if totals is None else jax.tree.map(np.add, totals, sums)
    if grid is None and num_grid_images:
      keep = batch['mask'][:num_grid_images]
      originals = np.asarray(data.to_unit(batch['image'][:num_grid_images], spec))[keep]
      recon = np.asarray(recon).reshape(-1, *recon.shape[2:])[:num_grid_images][keep]
      grid = (np.clip(originals, 0, 1), recon)
  if totals is None or totals['count'] == 0:
    raise ValueError('The validation split is empty: nothing to evaluate.')
  n = totals['count']
  result = {'eval/log_p': totals['log_p'] / n, 'eval/psnr': totals['psnr'] / n,
            'eval/ssim': totals['ssim'] / n, 'eval/num_examples': n}
  if 'kl' in totals:
    result['eval/kl'] = totals['kl'] / n
    result['eval/elbo'] = (totals['log_p'] - totals['kl']) / n
    if beta_final is not None:
      result['eval/beta_elbo'] = (totals['log_p'] - beta_final * totals['kl']) / n
  if fid is not None:
    result['eval/fid'] = fid.result()
  usage = metrics_lib.codebook_usage(jnp.asarray(totals['code_counts']))
  result.update({k: float(v) for k, v in usage.items()})
  counts = totals['code_counts'].astype(np.int64)
  return {k: float(v) for k, v in result.items()}, grid, counts


def mean_image_psnr(name: str, data_dir: str | None, *, seed: int, eval_batch_size: int,
                    num_examples: int = 4096) -> float:
  """PSNR of predicting the mean train image for every eval image (a baseline).

  The mean is taken over the first `num_examples` of the shuffled train stream
  (the whole split when smaller); eval images are streamed, so any split size
  works. Images in [0, 1], per-image PSNR averaged as in `evaluate`.
  """
  spec = data.get_spec(name)
  loader = data.train_loader(name, data_dir=data_dir, batch_size=min(256, num_examples),
                             seed=seed)
  needed = min(num_examples, loader.num_examples)
  total, count = 0.0, 0
  while count < needed:  # The first epoch: `needed` distinct examples.
    batch = np.asarray(data.to_unit(next(loader)['image'], spec), np.float64)[:needed - count]
    total, count = total + batch.sum(0), count + len(batch)
  mean = np.clip(total / count, 0.0, 1.0)
  psnr_sum, n = 0.0, 0
  for batch in data.eval_batches(name, data_dir=data_dir, batch_size=eval_batch_size):
    images = np.asarray(data.to_unit(batch['image'], spec))
    psnr = np.asarray(metrics_lib.psnr(jnp.broadcast_to(mean, images.shape), images))
    psnr_sum, n = psnr_sum + psnr[batch['mask']].sum(), n + batch['mask'].sum()
  return float(psnr_sum / n)
