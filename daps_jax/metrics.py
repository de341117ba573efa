"""Evaluation metrics: reconstruction PSNR and SSIM, and codebook usage.

Shape legend: B batch, N sequences, L latent positions, V codebook size,
H, W, C image height, width and channels.
Images are [B, ...] with values in [0, 1].

PSNR, SSIM and `code_counts` are pure JAX and run under `jit`/`pmap`. Codebook
usage is computed in two steps so it can be accumulated over a whole validation
set and across devices: `code_counts` per batch (integer counts, so a `psum` of
them is exact), then `codebook_usage` once, on the host, on the summed counts.
"""

import jax
import jax.numpy as jnp
import numpy as np

# A perfect reconstruction would give mse 0 and infinite PSNR; the floor caps it
# at 10 * log10(1 / 1e-10) = 100 dB so averages stay finite.
MSE_FLOOR = 1e-10


def psnr(x: jax.Array, y: jax.Array) -> jax.Array:
  """Per-image PSNR in dB with data range 1.

  Both inputs are clipped to [0, 1]; the mean squared error is floored at
  `MSE_FLOOR`, so identical images give 100 dB.

  Args:
    x: [B, ...] images.
    y: [B, ...] images, same shape as `x`.

  Returns:
    [B] float32 PSNR, reduced over all non-batch axes.
  """
  if x.shape != y.shape:
    raise ValueError(f'psnr needs equal shapes, got {x.shape} and {y.shape}.')
  x = jnp.clip(x.astype(jnp.float32), 0.0, 1.0)
  y = jnp.clip(y.astype(jnp.float32), 0.0, 1.0)
  mse = jnp.square(x - y).reshape(x.shape[0], -1).mean(-1)
  return -10.0 * jnp.log10(jnp.maximum(mse, MSE_FLOOR))


def code_counts(
    tokens: jax.Array, vocab_size: int, mask: jax.Array | None = None
) -> jax.Array:
  """Histogram of codes at each latent position.

  A scatter-add into [L, V], so memory is O(N*L + L*V), never N*L*V.

  Args:
    tokens: [N, L] integer codes in [0, vocab_size).
    vocab_size: V.
    mask: optional [N] bool; rows where it is False are not counted (e.g. the
      padding of a last, partial batch).

  Returns:
    [L, V] int32 counts; integer so that sums across batches and devices are exact.
  """
  if tokens.ndim != 2:
    raise ValueError(f'tokens must be [N, L], got shape {tokens.shape}.')
  num_rows, length = tokens.shape
  if mask is None:
    weights = jnp.ones((num_rows, length), jnp.int32)
  else:
    if mask.shape != (num_rows,):
      raise ValueError(f'mask must be [{num_rows}], got shape {mask.shape}.')
    weights = jnp.broadcast_to(mask.astype(jnp.int32)[:, None], (num_rows, length))
  positions = jnp.broadcast_to(jnp.arange(length)[None, :], (num_rows, length))
  counts = jnp.zeros((length, vocab_size), jnp.int32)
  return counts.at[positions, tokens].add(weights)


def _usage(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """[..., V] counts -> (used fraction [...], perplexity [...]) in float64.

  An all-zero histogram has used fraction 0 and perplexity 1 (entropy 0).
  """
  counts = np.asarray(counts, np.float64)
  used = np.mean(counts > 0, axis=-1)
  probs = counts / np.maximum(counts.sum(-1, keepdims=True), 1.0)
  entropy = -np.sum(probs * np.log(np.where(probs > 0, probs, 1.0)), axis=-1)  # 0 log 0 = 0.
  return used, np.exp(entropy)


def codebook_usage(counts) -> dict[str, float]:
  """Codebook usage from accumulated (and, across devices, summed) counts.

  Host-side numpy, the one implementation behind the eval metrics, the codebook
  figure and the comparison report.

  Args:
    counts: [L, V] per-position code counts, e.g. a sum of `code_counts`.

  Returns:
    'codebook/used_fraction' (share of the V codes used at least once anywhere),
    'codebook/perplexity' (exp of the entropy of the histogram pooled over
    positions), and their means over positions of the per-position values,
    'codebook/used_fraction_per_position' and 'codebook/perplexity_per_position'.

  Raises:
    ValueError: if `counts` is not 2-D.
  """
  counts = np.asarray(counts)
  if counts.ndim != 2:
    raise ValueError(f'counts must be [L, V], got shape {counts.shape}.')
  used, perplexity = _usage(counts.sum(0))
  used_per_position, perplexity_per_position = _usage(counts)
  return {
      'codebook/used_fraction': float(used),
      'codebook/perplexity': float(perplexity),
      'codebook/used_fraction_per_position': float(used_per_position.mean()),
      'codebook/perplexity_per_position': float(perplexity_per_position.mean()),
  }


# SSIM constants of Wang et al. (2004): an 11x11 Gaussian window of standard
# deviation 1.5, and the stabilisers C1 = (K1 * L)^2, C2 = (K2 * L)^2 for data
# range L = 1.
SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03


def _gaussian_window() -> jax.Array:
  """[SSIM_WINDOW] float32 Gaussian weights of std SSIM_SIGMA, summing to 1."""
  offsets = jnp.arange(SSIM_WINDOW, dtype=jnp.float32) - (SSIM_WINDOW - 1) / 2
  weights = jnp.exp(-0.5 * jnp.square(offsets / SSIM_SIGMA))
  return weights / weights.sum()


def _filter_valid(x: jax.Array, window: jax.Array, axis: int) -> jax.Array:
  """'valid' correlation of `x` with a 1-D `window` along `axis`.

  A weighted sum of shifted slices rather than a convolution, so it is exact
  float32 arithmetic on every backend (no TF32 convolutions on GPUs).
  """
  size = x.shape[axis] - window.shape[0] + 1
  return sum(window[k] * jax.lax.slice_in_dim(x, k, k + size, axis=axis)
             for k in range(window.shape[0]))


def ssim(x: jax.Array, y: jax.Array) -> jax.Array:
  """Per-image structural similarity (SSIM, Wang et al. 2004) with data range 1.

  Both inputs are clipped to [0, 1]. Local means, variances and the covariance
  come from an 11x11 Gaussian window (std 1.5) applied separably to each channel
  with 'valid' filtering (no padding), K1 = 0.01, K2 = 0.03; the SSIM map is
  averaged over pixels and channels. Follows Wang et al.'s reference code
  (without its automatic downsampling of large images); the same as skimage's
  `structural_similarity(gaussian_weights=True, use_sample_covariance=False,
  data_range=1)`.
  Second moments are taken about each image's channel mean, which keeps the
  float32 variances of flat regions exact.

  Args:
    x: [B, H, W, C] or [B, H, W] images, H and W at least 11.
    y: images of the same shape as `x`.

  Returns:
    [B] float32 SSIM, 1 for identical images.
  """
  if x.shape != y.shape:
    raise ValueError(f'ssim needs equal shapes, got {x.shape} and {y.shape}.')
  if x.ndim == 3:
    x, y = x[..., None], y[..., None]
  elif x.ndim != 4:
    raise ValueError(f'ssim needs [B, H, W, C] or [B, H, W] images, got shape {x.shape}.')
  height, width = x.shape[1:3]
  if min(height, width) < SSIM_WINDOW:
    raise ValueError(f'ssim needs images of at least {SSIM_WINDOW}x{SSIM_WINDOW} pixels (its '
                     f'Gaussian window), got {height}x{width}; upsample the images or use psnr.')
  x = jnp.clip(x.astype(jnp.float32), 0.0, 1.0)
  y = jnp.clip(y.astype(jnp.float32), 0.0, 1.0)
  x_centre = x.mean(axis=(1, 2), keepdims=True)
  y_centre = y.mean(axis=(1, 2), keepdims=True)
  xc, yc = x - x_centre, y - y_centre
  window = _gaussian_window()
  moments = jnp.stack([xc, yc, xc * xc, yc * yc, xc * yc])  # [5, B, H, W, C]
  moments = _filter_valid(_filter_valid(moments, window, axis=2), window, axis=3)
  mean_xc, mean_yc, second_x, second_y, second_xy = moments
  var_x = second_x - jnp.square(mean_xc)
  var_y = second_y - jnp.square(mean_yc)
  cov_xy = second_xy - mean_xc * mean_yc
  mean_x, mean_y = mean_xc + x_centre, mean_yc + y_centre
  c1, c2 = SSIM_K1**2, SSIM_K2**2
  ssim_map = ((2.0 * mean_x * mean_y + c1) * (2.0 * cov_xy + c2)
              / ((jnp.square(mean_x) + jnp.square(mean_y) + c1) * (var_x + var_y + c2)))
  return ssim_map.mean(axis=(1, 2, 3))
