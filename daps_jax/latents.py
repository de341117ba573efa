"""Sampling and scoring of latent sequences under an encoder q_theta(z|x).

Shape legend: B batch, K samples per input, L latent tokens, V codebook size.

`sample_latents` folds K into the batch once ([B*K, ...]), runs the whole
autoregressive rollout as one `lax.scan` over L with a fixed-length KV cache, and
returns tokens [B, K, L] with their log q [B, K]. Sampling is never
differentiated: gradients reach the encoder only through `score_latents`
(teacher forcing), which gives the same log q to float tolerance.

`relaxed_latents` is the differentiable counterpart for the Gumbel-softmax and
Gumbel-Rao baselines: one straight-through sample per input, and in the AR case
the relaxed one-hot of each step is the next step's input, so gradients flow
through the whole `lax.scan` rollout.
"""

from typing import Callable, NamedTuple

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


class Relaxation(NamedTuple):
  codes: jax.Array  # [B, L, V] straight-through one-hot: one-hot values, relaxed gradients
  tokens: jax.Array  # [B, L] int32, the hard sample
  log_q: jax.Array  # [B] log q of the hard sample
  kl: jax.Array  # [B] KL(q || uniform) along the sampled path


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


def _path_scores(logits: jax.Array, tokens: jax.Array) -> tuple[jax.Array, jax.Array]:
  """logits [..., L, V], tokens [..., L] -> (log q, KL(q || uniform)), each [...]."""
  log_probs = clamped_log_probs(logits)
  log_q = jnp.take_along_axis(log_probs, tokens[..., None], axis=-1)[..., 0].sum(-1)
  kl = (jnp.exp(log_probs) * (log_probs + jnp.log(logits.shape[-1]))).sum((-1, -2))
  return log_q, kl


def _input_keys(rng: jax.Array, batch_size: int, axis_name: str | None) -> jax.Array:
  """One key per input [B] from one key (typed or raw) or per-input keys."""
  if not jnp.issubdtype(rng.dtype, jax.dtypes.prng_key):  # Raw uint32 keys (PRNGKey).
    rng = jax.random.wrap_key_data(rng)
  return example_keys(rng, batch_size, axis_name) if rng.ndim == 0 else rng


def example_keys(rng: jax.Array, batch_size: int, axis_name: str | None = None) -> jax.Array:
  """One key per input [B], from the input's global index in the batch.

  Under `pmap` the index counts across devices, so the samples an input gets do
  not depend on how the batch is sharded.
  """
  offset = 0 if axis_name is None else jax.lax.axis_index(axis_name) * batch_size
  return jax.vmap(lambda i: jax.random.fold_in(rng, i))(offset + jnp.arange(batch_size))


def sample_latents(encoder: nn.Module, params, x: jax.Array, rng: jax.Array,
                   num_samples: int, axis_name: str | None = None, *,
                   greedy: bool = False) -> Rollout:
  """Draws K latent sequences per input from q_theta(z|x), without gradient.

  With `greedy` each token is the most likely one given the tokens before it (K
  copies of one sequence), not a draw.

  Args:
    encoder: an `AREncoder` or `NAEncoder` module (unbound).
    params: its variables (`{'params': ...}`).
    x: [B, ...] inputs in model space.
    rng: one PRNG key (each input's key is derived from its global index, see
      `example_keys`), or per-input keys [B].
    num_samples: K.
    axis_name: optional device axis the batch is sharded over.
  Returns:
    Rollout with tokens [B, K, L] int32 and log q [B, K].
  """
  params = jax.lax.stop_gradient(params)
  b = x.shape[0]
  keys = _input_keys(rng, b, axis_name)
  if not encoder.autoregressive:
    logits = encoder.apply(params, x)[:, None]  # [B, 1, L, V]
    if greedy:
      tokens = jnp.broadcast_to(logits.argmax(-1), (b, num_samples, logits.shape[2]))
    else:
      draw = lambda key, lg: jax.random.categorical(key, lg, axis=-1,
                                                    shape=(num_samples, lg.shape[1]))
      tokens = jax.vmap(draw)(keys, logits)
    tokens = tokens.astype(jnp.int32)
    return Rollout(tokens, _token_log_prob(logits, tokens).sum(-1))

  cross = encoder.apply(params, x, method='encode')  # Once per input, not per sample.
  start = jnp.full((b * num_samples,), encoder.start_token, jnp.int32)

  def step(carry, position):
    token, cache, log_q = carry
    logits, cache = encoder.apply(params, token, position, cache, cross, method='decode_step')
    if greedy:
      token = logits.argmax(-1).astype(jnp.int32)
    else:
      step_keys = jax.vmap(lambda key: jax.random.fold_in(key, position))(keys)
      token = jax.vmap(lambda key, lg: jax.random.categorical(key, lg, axis=-1))(
          step_keys, unfold_samples(logits, num_samples)).reshape(-1).astype(jnp.int32)
    return (token, cache, log_q + _token_log_prob(logits, token)), token

  init = (start, encoder.init_cache(b * num_samples), jnp.zeros((b * num_samples,), jnp.float32))
  (_, _, log_q), tokens = jax.lax.scan(step, init, jnp.arange(encoder.num_tokens))
  return Rollout(unfold_samples(tokens.T, num_samples), unfold_samples(log_q, num_samples))


def score_latents(encoder: nn.Module, params, x: jax.Array, tokens: jax.Array) -> Scores:
  """Teacher-forced log q_theta(z|x) [B, K] and path KL to the uniform prior.

  Differentiable in `params`. The KL is sum_t sum_v q_tv (log q_tv + log V) with
  q_t the conditional at step t given the sampled prefix.
  """
  b, k, length = tokens.shape
  if encoder.autoregressive:
    cross = encoder.apply(params, x, method='encode')
    logits = encoder.apply(params, cross, tokens.reshape(b * k, length), method='decode')
    logits = unfold_samples(logits, k)  # [B, K, L, V]
  else:
    logits = encoder.apply(params, x)[:, None]  # [B, 1, L, V]
  log_q, kl = _path_scores(logits, tokens)
  return Scores(log_q, jnp.broadcast_to(kl, log_q.shape))


Relax = Callable  # (key, logits [..., V]) -> methods.relaxed.Relaxed(sample [..., V], index [...])


def relaxed_latents(encoder: nn.Module, params, x: jax.Array, rng: jax.Array, relax: Relax,
                    axis_name: str | None = None) -> Relaxation:
  """One straight-through relaxed sample per input, differentiable in `params`.

  Args:
    encoder: an `AREncoder` or `NAEncoder` module (unbound).
    params: its variables (`{'params': ...}`).
    x: [B, ...] inputs in model space.
    rng: one PRNG key (per-input keys as in `sample_latents`) or keys [B].
    relax: the estimator, e.g. `functools.partial(relaxed.gumbel_softmax, tau=tau)`;
      called per input with that input's key (folded with the position in the AR case).
    axis_name: optional device axis the batch is sharded over.
  Returns:
    `Relaxation`: codes [B, L, V], tokens [B, L], log q [B], KL [B].
  """
  b = x.shape[0]
  keys = _input_keys(rng, b, axis_name)
  if not encoder.autoregressive:
    logits = encoder.apply(params, x)  # [B, L, V]
    codes, tokens = jax.vmap(relax)(keys, logits)
  else:
    cross = encoder.apply(params, x, method='encode')
    vocab = encoder.vocab_size
    start = jax.nn.one_hot(jnp.full((b,), encoder.start_token), vocab + 1)

    def step(carry, position):
      inputs, cache = carry
      logits, cache = encoder.apply(params, inputs, position, cache, cross, method='decode_step')
      step_keys = jax.vmap(lambda key: jax.random.fold_in(key, position))(keys)
      sample, token = jax.vmap(relax)(step_keys, logits)
      # The start-token column stays 0: a code never feeds the start embedding.
      return (jnp.pad(sample, ((0, 0), (0, 1))), cache), (sample, token, logits)

    _, outputs = jax.lax.scan(step, (start, encoder.init_cache(b)),
                              jnp.arange(encoder.num_tokens))
    codes, tokens, logits = (jnp.swapaxes(x, 0, 1) for x in outputs)
  log_q, kl = _path_scores(logits, tokens)
  return Relaxation(codes, tokens.astype(jnp.int32), log_q, kl)
