"""FSQ: finite scalar quantisation on a fixed per-dimension grid (Mentzer et al. 2023).

Shape legend: B batch, L latent tokens, d FSQ dimensions, E decoder embedding
width; `...` any leading batch shape.

The non-autoregressive encoder has a continuous head [B, L, d]; each dimension
is bounded with tanh (shifted by arctanh for even level counts) and rounded to
its grid with a straight-through gradient. A code vector indexes one of
prod(levels) codes and enters the decoder through a Dense(E). Loss = NLL / data
dims (spec section 5); no analytic q(z|x), so no ELBO.
"""

import functools
import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from daps_jax import errors
from daps_jax import parallel
from daps_jax import state as state_lib
from daps_jax.methods import base

EPS = 1e-3
# Spec section 5: levels per dimension for each dataset.
LEVELS = {'mnist': (8, 6, 5), 'cifar10': (8, 8, 8), 'imagenet2012': (8, 5, 5, 5),
          'lafan1': (10, 10, 10)}


def config(name: str, dataset: str) -> ml_collections.ConfigDict:
  m = ml_collections.ConfigDict()
  m.name = name  # The method (daps_jax.methods.REGISTRY).
  m.levels = LEVELS[dataset]  # Quantisation levels per dimension.
  return m


def validate(m: ml_collections.ConfigDict) -> None:
  errors.check(len(m.levels) >= 1 and all(level >= 3 for level in m.levels), 'method.levels',
               f'needs at least one dimension of >= 3 levels, got {m.levels}.')


def latent(config: ml_collections.ConfigDict) -> base.Latent:
  levels = tuple(config.method.levels)
  return base.Latent(autoregressive=False, encoder_head=len(levels), code_dim=len(levels),
                     num_codes=math.prod(levels))


def make(config: ml_collections.ConfigDict, networks) -> base.Method:
  levels = tuple(config.method.levels)
  return base.Method(
      name=config.method.name,
      train_step=functools.partial(train_step, networks=networks, levels=levels),
      encode=functools.partial(encode, levels=levels), init_aux=base.no_aux, beta_final=None,
      schedules=base.learning_rate_schedules(config),
      decode=functools.partial(decode, levels=levels))


# ----------------------------------------------------------------------------- estimator

def _levels(levels: tuple[int, ...]) -> np.ndarray:
  lv = np.asarray(levels, np.int64)
  if lv.ndim != 1 or np.any(lv < 3):
    raise ValueError(f'FSQ levels must be a tuple of ints >= 3, got {levels}.')
  return lv


def bound(z: jax.Array, levels: tuple[int, ...]) -> jax.Array:
  """tanh(z + shift) * half - offset per dim of z [..., d], before rounding.

  half = (L - 1)(1 - 1e-3) / 2, offset = 0.5 for even L else 0, shift =
  arctanh(offset / half): the rounded values are the L integers centred on 0
  (one more below 0 for even L).
  """
  lv = _levels(levels)
  half = (lv - 1) * (1.0 - EPS) / 2.0
  offset = np.where(lv % 2 == 0, 0.5, 0.0)
  shift = np.arctanh(offset / half)
  cast = lambda a: jnp.asarray(a, z.dtype)
  return jnp.tanh(z + cast(shift)) * cast(half) - cast(offset)


def quantize(z: jax.Array, levels: tuple[int, ...]) -> jax.Array:
  """z [..., d] -> codes on {(k - L//2) / (L//2) : k < L} per dim, straight-through round."""
  bounded = bound(z, levels)
  width = jnp.asarray(_levels(levels) // 2, z.dtype)
  return base.straight_through(jnp.round(bounded), bounded) / width


def _basis(lv: np.ndarray) -> jax.Array:
  return jnp.asarray(np.concatenate([[1], np.cumprod(lv[:-1])]), jnp.int32)


def codes_to_indices(codes: jax.Array, levels: tuple[int, ...]) -> jax.Array:
  """Grid codes [..., d] -> int32 indices [...] in [0, prod(levels)), dim 0 least significant."""
  lv = _levels(levels)
  width = jnp.asarray(lv // 2, codes.dtype)
  digits = jnp.round(codes * width + width).astype(jnp.int32)
  return jnp.sum(digits * _basis(lv), axis=-1, dtype=jnp.int32)


def indices_to_codes(indices: jax.Array, levels: tuple[int, ...]) -> jax.Array:
  """int indices [...] -> float32 grid codes [..., d]; inverse of `codes_to_indices`."""
  lv = _levels(levels)
  digits = (indices[..., None].astype(jnp.int32) // _basis(lv)) % jnp.asarray(lv, jnp.int32)
  width = lv // 2
  return (digits - jnp.asarray(width, jnp.int32)).astype(jnp.float32) / jnp.asarray(
      width, jnp.float32)


# ----------------------------------------------------------------------------- step

def train_step(state: state_lib.State, batch: dict, rng: jax.Array, *, networks,
               levels: tuple[int, ...], axis_name: str | None = None
               ) -> tuple[state_lib.State, dict]:
  """One joint FSQ step on NLL / dims."""
  del rng  # Deterministic.
  x = batch['inputs']

  def loss_fn(enc_params, dec_params):
    codes = quantize(networks.encoder.apply({'params': enc_params}, x), levels)
    out, updates = base.decoder_apply(state.decoder, dec_params, codes,
                                      decoder=networks.decoder, train=True)
    log_p = networks.likelihood.log_prob(out, x)
    return -log_p.mean() / x[0].size, (log_p, updates)

  new_state, log_p, metrics = base.joint_step(state, loss_fn, axis_name)
  metrics.update({'loss/decoder': -log_p.mean(), 'decoder/log_p': log_p.mean()})
  return new_state, parallel.pmean(metrics, axis_name)


def decode(state: state_lib.State, tokens: jax.Array, *, networks,
           levels: tuple[int, ...]) -> jax.Array:
  """The eval-mode decoder output of code indices [B, L] (their grid codes)."""
  return base.decoder_apply(state.decoder, state.decoder.params,
                            indices_to_codes(tokens, levels), decoder=networks.decoder,
                            train=False)


def encode(state: state_lib.State, x: jax.Array, rng: jax.Array, *, networks,
           levels: tuple[int, ...], axis_name: str | None = None) -> base.Encoding:
  """Rounded codes as indices in [0, prod(levels)) and the eval-mode decoder output."""
  del rng, axis_name  # Deterministic.
  codes = quantize(networks.encoder.apply({'params': state.encoder.params}, x), levels)
  out = base.decoder_apply(state.decoder, state.decoder.params, codes,
                           decoder=networks.decoder, train=False)
  return base.Encoding(tokens=codes_to_indices(codes, levels), out=out, kl=None)
