"""Gradient estimators for discrete latents: relaxations, VQ and FSQ.

Shape legend: B batch, L tokens, V codebook size, E code width, d FSQ dims; `...`
stands for any leading batch shape (e.g. [B, L]) and N for a flattened one.

  straight_through   value of `hard`, gradient of `soft`
  gumbel_softmax     ST Gumbel-softmax: one-hot argmax(logits + G), grad of softmax
  gumbel_rao         ST Gumbel-Rao: same forward, grad averaged over G | argmax
  vector_quantize    nearest codeword with ST identity gradient, VQ-VAE losses
  vq_ema_*           EMA codebook (VQ-VAE-2) with dead-code restarts, device-summed
  fsq_*              finite scalar quantisation on a fixed per-dimension grid

Straight-through outputs carry exactly the hard value forward. All functions are
pure and jit-able; `levels` (FSQ) and `num` (Gumbel-Rao) are static.
References: Jang et al. and Maddison et al. 2017 (Gumbel-softmax); Paulus,
Maddison & Krause 2021 (Gumbel-Rao); van den Oord et al. 2017 and Razavi et al.
2019 (VQ-VAE, EMA codebook); Mentzer et al. 2023 (FSQ).
"""

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

FSQ_EPS = 1e-3


def straight_through(hard: jax.Array, soft: jax.Array) -> jax.Array:
  """Value `hard`, gradient that of `soft` (as soft + sg(hard - soft), no gradient to hard).

  Written as sg(hard) + (soft - sg(soft)) so that the forward value is bit-exact
  `hard` for finite `soft`; shapes broadcast.
  """
  return jax.lax.stop_gradient(hard) + (soft - jax.lax.stop_gradient(soft))


class Relaxed(NamedTuple):
  sample: jax.Array  # [..., V] one-hot of `index` forward, relaxed sample backward
  index: jax.Array  # [...] int32


def _one_hot_straight_through(index: jax.Array, soft: jax.Array) -> Relaxed:
  hard = jax.nn.one_hot(index, soft.shape[-1], dtype=soft.dtype)
  return Relaxed(straight_through(hard, soft), index)


def _gumbel_max(rng: jax.Array, logits: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(logits + G, argmax int32) with G = jax.random.gumbel(rng, logits.shape, logits.dtype)."""
  perturbed = logits + jax.random.gumbel(rng, logits.shape, logits.dtype)
  return perturbed, jnp.argmax(perturbed, axis=-1).astype(jnp.int32)


def gumbel_softmax(rng: jax.Array, logits: jax.Array, tau: jax.Array | float) -> Relaxed:
  """Straight-through Gumbel-softmax sample from logits [..., V].

  The noise is G = jax.random.gumbel(rng, logits.shape, logits.dtype); index =
  argmax(logits + G) and the backward pass is that of softmax((logits + G) / tau).
  `tau` may be a traced scalar.
  """
  perturbed, index = _gumbel_max(rng, logits)
  return _one_hot_straight_through(index, jax.nn.softmax(perturbed / tau, axis=-1))


def conditional_gumbels(rng: jax.Array, logits: jax.Array, index: jax.Array,
                        num: int) -> jax.Array:
  """`num` draws x [num, ..., V] of theta + G conditioned on argmax x = index [...].

  theta = log_softmax(logits). With g = jax.random.gumbel(rng, (num, *logits.shape))
  and E = exp(-g) ~ Exp(1): the top value x_D = g_D ~ Gumbel(logsumexp theta = 0),
  and x_i = -log(exp(-x_D) + exp(-theta_i) E_i) for i != D (a Gumbel(theta_i)
  truncated below x_D), evaluated as x_D - softplus(x_D - theta_i - g_i). Values
  that round onto x_D are moved one ulp below it, so argmax x == index exactly.

  The conditional noise x - theta is a constant: the gradient in `logits` is that
  of theta (as in ST-GS, so that Gumbel-Rao is its Rao-Blackwellisation). Logits
  must be finite.
  """
  theta = jax.nn.log_softmax(logits, axis=-1)
  fixed = jax.lax.stop_gradient(theta)
  g = jax.random.gumbel(rng, (num, *logits.shape), logits.dtype)
  top_index = jnp.broadcast_to(index[..., None], (num, *index.shape, 1))
  top = jnp.take_along_axis(g, top_index, axis=-1)  # [num, ..., 1]
  below = top - jax.nn.softplus(top - fixed - g)
  below = jnp.minimum(below, jnp.nextafter(top, jnp.array(-jnp.inf, top.dtype)))
  chosen = jax.nn.one_hot(index, logits.shape[-1], dtype=jnp.bool_)
  return straight_through(jnp.where(chosen, top, below), theta)


def gumbel_rao(rng: jax.Array, logits: jax.Array, tau: jax.Array | float,
               num: int) -> Relaxed:
  """Straight-through Gumbel-Rao sample from logits [..., V] with `num` conditional draws.

  With k_hard, k_cond = jax.random.split(rng): index is the Gumbel-max draw of
  `gumbel_softmax(k_hard, ...)`, and the backward pass is that of the mean over
  `conditional_gumbels(k_cond, logits, index, num)` of softmax(x / tau).
  """
  k_hard, k_cond = jax.random.split(rng)
  _, index = _gumbel_max(k_hard, jax.lax.stop_gradient(logits))
  x = conditional_gumbels(k_cond, logits, index, num)
  return _one_hot_straight_through(index, jax.nn.softmax(x / tau, axis=-1).mean(axis=0))


class Quantized(NamedTuple):
  z_q: jax.Array  # [..., E] nearest codeword forward, identity gradient to z
  index: jax.Array  # [...] int32
  codebook_loss: jax.Array  # scalar mean (sg(z) - e)^2, gradient to the codebook only
  commitment_loss: jax.Array  # scalar mean (z - sg(e))^2, gradient to z only


def vector_quantize(z: jax.Array, codebook: jax.Array) -> Quantized:
  """Nearest-codeword quantisation of z [..., E] with codebook [V, E].

  Squared distances |z|^2 - 2 z.e + |e|^2 use a full-precision matmul, never an
  [N, V, E] difference.
  """
  flat = jax.lax.stop_gradient(z.reshape(-1, z.shape[-1]))
  codes = jax.lax.stop_gradient(codebook)
  dist = (jnp.sum(jnp.square(flat), axis=-1, keepdims=True)
          - 2.0 * jnp.dot(flat, codes.T, precision=jax.lax.Precision.HIGHEST)
          + jnp.sum(jnp.square(codes), axis=-1))
  index = jnp.argmin(dist, axis=-1).astype(jnp.int32).reshape(z.shape[:-1])
  e = jnp.take(codebook, index, axis=0)
  return Quantized(
      z_q=straight_through(e, z),
      index=index,
      codebook_loss=jnp.mean(jnp.square(jax.lax.stop_gradient(z) - e)),
      commitment_loss=jnp.mean(jnp.square(z - jax.lax.stop_gradient(e))))


class VQEma(NamedTuple):
  counts: jax.Array  # [V] float32 EMA of assignment counts
  sums: jax.Array  # [V, E] float32 EMA of summed assigned z


def vq_ema_init(codebook: jax.Array) -> VQEma:
  """EMA state whose codebook (sums / smoothed counts) is `codebook` [V, E]."""
  return VQEma(jnp.ones(codebook.shape[:1], jnp.float32), jnp.asarray(codebook, jnp.float32))


def vq_ema_update(ema: VQEma, z: jax.Array, index: jax.Array, *, decay: float,
                  mask: jax.Array | None = None, axis_name: str | None = None,
                  eps: float = 1e-5) -> tuple[VQEma, jax.Array]:
  """One EMA step from z [N, E] (constant) assigned to codes index [N].

  Rows with mask [N] false/0 are left out; batch statistics are summed over
  `axis_name`. Returns the new state and the codebook [V, E] = sums / counts, with
  counts Laplace-smoothed as (c + eps) / (n + V eps) * n, n = sum of counts.
  """
  num_codes = ema.counts.shape[0]
  assign = jax.nn.one_hot(index, num_codes, dtype=jnp.float32)  # [N, V]
  if mask is not None:
    assign = assign * mask.astype(jnp.float32)[:, None]
  z = jax.lax.stop_gradient(z).astype(jnp.float32)
  counts = assign.sum(axis=0)
  sums = jnp.dot(assign.T, z, precision=jax.lax.Precision.HIGHEST)
  if axis_name is not None:
    counts, sums = jax.lax.psum((counts, sums), axis_name)
  ema = VQEma(decay * ema.counts + (1.0 - decay) * counts, decay * ema.sums + (1.0 - decay) * sums)
  n = ema.counts.sum()
  smoothed = (ema.counts + eps) / (n + num_codes * eps) * n
  return ema, ema.sums / smoothed[:, None]


def restart_dead_codes(rng: jax.Array, codebook: jax.Array, ema: VQEma, z: jax.Array, *,
                       threshold: float, axis_name: str | None = None
                       ) -> tuple[jax.Array, VQEma, jax.Array]:
  """Replaces codes with EMA count < threshold by encoder outputs z [N, E].

  Candidates are drawn uniformly from z gathered over `axis_name` (without
  replacement when there are at least V rows), so with the same `rng` every device
  makes the same choice. Restarted codes get counts = threshold and sums = row *
  threshold. Returns (codebook [V, E], EMA state, number restarted int32).
  """
  rows = jax.lax.stop_gradient(z)
  if axis_name is not None:
    rows = jax.lax.all_gather(rows, axis_name, tiled=True)
  num_codes, num_rows = codebook.shape[0], rows.shape[0]
  pick = jax.random.choice(rng, num_rows, (num_codes,), replace=num_rows < num_codes)
  new = rows[pick].astype(jnp.float32)  # [V, E]
  dead = ema.counts < threshold
  ema = VQEma(jnp.where(dead, jnp.asarray(threshold, jnp.float32), ema.counts),
              jnp.where(dead[:, None], new * threshold, ema.sums))
  codebook = jnp.where(dead[:, None], new.astype(codebook.dtype), codebook)
  return codebook, ema, dead.sum().astype(jnp.int32)


def fsq_codebook_size(levels: tuple[int, ...]) -> int:
  """Number of FSQ codes, prod(levels)."""
  return math.prod(levels)


def _fsq_levels(levels: tuple[int, ...]) -> np.ndarray:
  lv = np.asarray(levels, np.int64)
  if lv.ndim != 1 or np.any(lv < 3):
    raise ValueError(f'FSQ levels must be a tuple of ints >= 3, got {levels}.')
  return lv


def fsq_bound(z: jax.Array, levels: tuple[int, ...]) -> jax.Array:
  """tanh(z + shift) * half - offset per dim of z [..., d], before rounding.

  half = (L - 1)(1 - 1e-3) / 2, offset = 0.5 for even L else 0, shift =
  arctanh(offset / half): the rounded values are the L integers centred on 0
  (one more below 0 for even L).
  """
  lv = _fsq_levels(levels)
  half = (lv - 1) * (1.0 - FSQ_EPS) / 2.0
  offset = np.where(lv % 2 == 0, 0.5, 0.0)
  shift = np.arctanh(offset / half)
  cast = lambda a: jnp.asarray(a, z.dtype)
  return jnp.tanh(z + cast(shift)) * cast(half) - cast(offset)


def fsq_quantize(z: jax.Array, levels: tuple[int, ...]) -> jax.Array:
  """z [..., d] -> codes on {(k - L//2) / (L//2) : k < L} per dim, straight-through round."""
  bounded = fsq_bound(z, levels)
  width = jnp.asarray(_fsq_levels(levels) // 2, z.dtype)
  return straight_through(jnp.round(bounded), bounded) / width


def _fsq_basis(lv: np.ndarray) -> jax.Array:
  return jnp.asarray(np.concatenate([[1], np.cumprod(lv[:-1])]), jnp.int32)


def fsq_codes_to_indices(codes: jax.Array, levels: tuple[int, ...]) -> jax.Array:
  """Grid codes [..., d] -> int32 indices [...] in [0, prod(levels)), dim 0 least significant."""
  lv = _fsq_levels(levels)
  width = jnp.asarray(lv // 2, codes.dtype)
  digits = jnp.round(codes * width + width).astype(jnp.int32)
  return jnp.sum(digits * _fsq_basis(lv), axis=-1, dtype=jnp.int32)


def fsq_indices_to_codes(indices: jax.Array, levels: tuple[int, ...]) -> jax.Array:
  """int indices [...] -> float32 grid codes [..., d]; inverse of `fsq_codes_to_indices`."""
  lv = _fsq_levels(levels)
  digits = (indices[..., None].astype(jnp.int32) // _fsq_basis(lv)) % jnp.asarray(lv, jnp.int32)
  width = lv // 2
  return (digits - jnp.asarray(width, jnp.int32)).astype(jnp.float32) / jnp.asarray(
      width, jnp.float32)
