"""The pure eval step: masked sums of a batch's metrics, summed over devices.

A method's `encode` gives the codes and the eval-mode decoder output: one
stochastic latent sample per input for the categorical encoders
(`methods.base.categorical_encode`), deterministic quantisation for VQ-VAE and
FSQ; the reconstruction is the decoder mean, mapped back to data units by the
dataset spec.

Shape legend: B batch per device, L latent tokens, V codebook size.
"""

from typing import Callable

import jax
import jax.numpy as jnp

from daps_jax import data
from daps_jax import metrics as metrics_lib
from daps_jax import models
from daps_jax import state as state_lib
from daps_jax.methods import base


def eval_step(state: state_lib.State, batch: dict, rng: jax.Array, *, networks: models.Networks,
              encode: Callable[..., base.Encoding], spec: data.DatasetSpec,
              axis_name: str | None = None) -> tuple[dict, jax.Array]:
  """Masked sums over a batch and the reconstructions in data units.

  Args:
    state: the train state.
    batch: {'inputs': [B, ...] model space, 'mask': [B] bool (False = padding)}.
    rng: PRNG key (each input's global index is folded in here).
    networks: the run's networks; encode: the method's `Method.encode`; spec: the
      dataset's `DatasetSpec`.
  Returns:
    ({'count', 'log_p', 'kl' (analytic q only), 'psnr', 'ssim' (images), 'batches' and
    'psnr_batch' (motion), 'code_counts' [L, V]} summed over the batch and devices,
    reconstructions [B, ...] in [0, 1]). 'psnr' is per input; 'psnr_batch' is the
    authors' motion PSNR, of the mean squared error over the whole (global) batch.
  """
  x, mask = batch['inputs'], batch['mask'].astype(jnp.float32)
  tokens, out, kl = encode(state, x, rng, networks=networks, axis_name=axis_name)
  log_p = networks.likelihood.log_prob(out, x)
  recon = jnp.clip(spec.to_unit(networks.likelihood.mean(out)), 0.0, 1.0)
  originals = jnp.clip(spec.to_unit(x), 0.0, 1.0)
  psnr = metrics_lib.psnr(recon, originals)
  sums = {'count': mask.sum(), 'log_p': (log_p * mask).sum(), 'psnr': (psnr * mask).sum(),
          'code_counts': metrics_lib.code_counts(tokens, networks.num_codes, mask)}
  if spec.modality == 'image':
    sums['ssim'] = (metrics_lib.ssim(recon, originals) * mask).sum()
  else:
    squared = jnp.square(recon - originals).reshape(x.shape[0], -1)
    sums['squared_error'] = (squared.sum(-1) * mask).sum()
    sums['values'] = mask.sum() * squared.shape[1]
  if kl is not None:
    sums['kl'] = (kl * mask).sum()
  if axis_name is not None:
    sums = jax.lax.psum(sums, axis_name)
  if 'values' in sums:  # The global batch's PSNR; one per batch, averaged over batches.
    mse = sums.pop('squared_error') / jnp.maximum(sums.pop('values'), 1.0)
    sums['psnr_batch'] = -10.0 * jnp.log10(jnp.maximum(mse, metrics_lib.MSE_FLOOR))
    sums['batches'] = jnp.ones(())
  return sums, recon
