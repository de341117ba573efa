"""Sampling and scoring of latent sequences under an encoder q_theta(z|x).

Shape legend: B batch, K samples per input, L latent tokens, V codebook size.

`sample_latents` folds K into the batch once ([B*K, ...]), runs the whole
autoregressive rollout as one `lax.scan` over L with a fixed-length KV cache, and
returns tokens [B, K, L] with their log q [B, K]. Sampling is never
differentiated: gradients reach the encoder only through `score_latents`
(teacher forcing), which gives the same log q to float tolerance.
"""

from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

PROB_EPS = float(jnp.finfo(jnp.float32).eps)


class Rollout(NamedTuple):
  tokens: jax.Array  # [B, K, L] int32
  log_q: jax.Array  # [B, K]


class Scores(NamedTuple):
  log_q: jax.Array  # [B, K] summed over L
  kl: jax.Array  # [B, K] KL(q || uniform) along the sampled path


def fold_samples(x: jax.Array, num_samples: int) -> jax.Array:
  """[B, ...] -> [B*K, ...], each input repeated K times consecutively."""
  return jnp.repeat(x, num_samples, axis=0)


def unfold_samples(x: jax.Array, num_samples: int) -> jax.Array:
  """[B*K, ...] -> [B, K, ...]."""
  return x.reshape(-1, num_samples, *x.shape[1:])


def clamped_log_probs(logits: jax.Array) -> jax.Array:
  """log of softmax probabilities clipped to [eps, 1 - eps] (float32 eps)."""
  return jnp.log(jnp.clip(jax.nn.softmax(logits, axis=-1), PROB_EPS, 1.0 - PROB_EPS))


def _token_log_prob(logits: jax.Array, tokens: jax.Array) -> jax.Array:
  log_probs = clamped_log_probs(logits)
  return jnp.take_along_axis(log_probs, tokens[..., None], axis=-1)[..., 0]


def example_keys(rng: jax.Array, batch_size: int, axis_name: str | None = None) -> jax.Array:
  """One key per input [B], from the input's global index in the batch.

  Under `pmap` the index counts across devices, so the samples an input gets do
  not depend on how the batch is sharded.
  """
  offset = 0 if axis_name is None else jax.lax.axis_index(axis_name) * batch_size
  return jax.vmap(lambda i: jax.random.fold_in(rng, i))(offset + jnp.arange(batch_size))


def sample_latents(encoder: nn.Module, params, images: jax.Array, rng: jax.Array,
                   num_samples: int, axis_name: str | None = None) -> Rollout:
  """Draws K latent sequences per input from q_theta(z|x), without gradient.

  Args:
    encoder: an `AREncoder` or `NAEncoder` module (unbound).
    params: its variables (`{'params': ...}`).
    images: [B, H, W, C].
    rng: one PRNG key (each input's key is derived from its global index, see
      `example_keys`), or per-input keys [B].
    num_samples: K.
    axis_name: optional device axis the batch is sharded over.
  Returns:
    Rollout with tokens [B, K, L] int32 and log q [B, K].
  """
  params = jax.lax.stop_gradient(params)
  b = images.shape[0]
  if not jnp.issubdtype(rng.dtype, jax.dtypes.prng_key):  # Raw uint32 keys (PRNGKey).
    rng = jax.random.wrap_key_data(rng)
  keys = example_keys(rng, b, axis_name) if rng.ndim == 0 else rng
  if not encoder.autoregressive:
    logits = encoder.apply(params, images)[:, None]  # [B, 1, L, V]
    draw = lambda key, lg: jax.random.categorical(key, lg, axis=-1,
                                                  shape=(num_samples, lg.shape[1]))
    tokens = jax.vmap(draw)(keys, logits).astype(jnp.int32)
    return Rollout(tokens, _token_log_prob(logits, tokens).sum(-1))

  cross = encoder.apply(params, images, method='encode')  # Once per input, not per sample.
  start = jnp.full((b * num_samples,), encoder.start_token, jnp.int32)

  def step(carry, position):
    token, cache, log_q = carry
    logits, cache = encoder.apply(params, token, position, cache, cross, method='decode_step')
    step_keys = jax.vmap(lambda key: jax.random.fold_in(key, position))(keys)
    token = jax.vmap(lambda key, lg: jax.random.categorical(key, lg, axis=-1))(
        step_keys, unfold_samples(logits, num_samples)).reshape(-1).astype(jnp.int32)
    return (token, cache, log_q + _token_log_prob(logits, token)), token

  init = (start, encoder.init_cache(b * num_samples), jnp.zeros((b * num_samples,), jnp.float32))
  (_, _, log_q), tokens = jax.lax.scan(step, init, jnp.arange(encoder.num_tokens))
  return Rollout(unfold_samples(tokens.T, num_samples), unfold_samples(log_q, num_samples))


def score_latents(encoder: nn.Module, params, images: jax.Array, tokens: jax.Array) -> Scores:
  """Teacher-forced log q_theta(z|x) [B, K] and path KL to the uniform prior.

  Differentiable in `params`. The KL is sum_t sum_v q_tv (log q_tv + log V) with
  q_t the conditional at step t given the sampled prefix.
  """
  b, k, length = tokens.shape
  if encoder.autoregressive:
    cross = encoder.apply(params, images, method='encode')
    logits = encoder.apply(params, cross, tokens.reshape(b * k, length), method='decode')
    logits = unfold_samples(logits, k)  # [B, K, L, V]
  else:
    logits = encoder.apply(params, images)[:, None]  # [B, 1, L, V]
  log_probs = clamped_log_probs(logits)
  log_q = jnp.take_along_axis(log_probs, tokens[..., None], axis=-1)[..., 0].sum(-1)
  vocab = logits.shape[-1]
  kl = (jnp.exp(log_probs) * (log_probs + jnp.log(vocab))).sum(-1)  # [B, K or 1, L]
  kl = jnp.broadcast_to(kl.sum(-1), log_q.shape)
  return Scores(log_q, kl)
