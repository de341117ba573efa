"""Evaluation metrics: reconstruction PSNR and codebook usage.

Shape legend: B batch, N sequences, L latent positions, V codebook size.
Images are [B, ...] with values in [0, 1].

Everything is pure JAX and runs under `jit`/`pmap`.
Codebook usage is computed in two steps so it can be accumulated over a whole
validation set and across devices: `code_counts` per batch (integer counts, so a
`psum` of them is exact), then `codebook_usage` once on the summed counts.
"""

import jax
import jax.numpy as jnp

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


def _usage(counts: jax.Array) -> tuple[jax.Array, jax.Array]:
  """[..., V] counts -> (used fraction [...], perplexity [...]).

  An all-zero histogram has used fraction 0 and perplexity 1 (entropy 0).
  """
  counts = counts.astype(jnp.float32)
  used = jnp.mean(counts > 0, axis=-1)
  total = counts.sum(-1, keepdims=True)
  probs = counts / jnp.maximum(total, 1.0)
  entropy = jax.scipy.special.entr(probs).sum(-1)  # entr(0) = 0: 0 log 0 = 0.
  return used, jnp.exp(entropy)


def codebook_usage(counts: jax.Array) -> dict[str, jax.Array]:
  """Codebook usage from accumulated (and, across devices, summed) counts.

  Args:
    counts: [L, V] per-position code counts, e.g. a sum of `code_counts`.

  Returns:
    Scalars: 'codebook/used_fraction' (share of the V codes used at least once
    anywhere), 'codebook/perplexity' (exp of the entropy of the histogram pooled
    over positions), and their means over positions of the per-position values,
    'codebook/used_fraction_per_position' and 'codebook/perplexity_per_position'.
  """
  if counts.ndim != 2:
    raise ValueError(f'counts must be [L, V], got shape {counts.shape}.')
  used, perplexity = _usage(counts.sum(0))
  used_per_position, perplexity_per_position = _usage(counts)
  return {
      'codebook/used_fraction': used,
      'codebook/perplexity': perplexity,
      'codebook/used_fraction_per_position': used_per_position.mean(),
      'codebook/perplexity_per_position': perplexity_per_position.mean(),
  }
