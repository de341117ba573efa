"""Pure steps of the code prior: encoding a run's inputs, training, scoring, sampling.

Shape legend: B batch (per device), L latent tokens, V codes per token.

A batch of codes is {'tokens': int32 [B, L], 'labels': int32 [B] (-1: no label),
'mask': bool [B] (False: padding)}, and for held-out codes of a stochastic
encoder also 'log_q' [B] (log q(z|x) of the code) and 'log_px' [B] (log p(x|z)).
"""

import math
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from daps_jax import latents
from daps_jax import optim
from daps_jax import parallel
from daps_jax import state as state_lib


def encode_step(state: state_lib.State, batch: dict, rng: jax.Array, *, networks,
                encode: Callable, decode: Callable, categorical: bool, greedy: bool,
                axis_name: str | None = None) -> dict:
  """A trained run's codes of a batch of inputs, with log q(z|x) and log p(x|z).

  Categorical encoders: one draw per input from q(z|x) (each input's key from its
  global index, as in training), or with `greedy` the most likely code at each
  step. Otherwise (VQ-VAE, FSQ) the method's deterministic `encode`, and log q = 0.
  Returns {'tokens' [B, L] int32, 'log_q' [B], 'log_px' [B]}.
  """
  x = batch['inputs']
  if categorical:
    rollout = latents.sample_latents(networks.encoder, {'params': state.encoder.params}, x,
                                     rng, 1, axis_name, greedy=greedy)
    tokens, log_q = rollout.tokens[:, 0], rollout.log_q[:, 0]
    out = decode(state, tokens, networks=networks)
  else:
    tokens, out, _ = encode(state, x, rng, networks=networks, axis_name=axis_name)
    log_q = jnp.zeros(x.shape[:1], jnp.float32)
  return {'tokens': tokens.astype(jnp.int32), 'log_q': log_q,
          'log_px': networks.likelihood.log_prob(out, x)}


def _labels(prior: nn.Module, labels: jax.Array) -> jax.Array | None:
  """Dataset labels [B] (-1: none) -> the prior's class ids (None: unconditional)."""
  if not prior.num_classes:
    return None
  return jnp.where(labels >= 0, labels, prior.no_class).astype(jnp.int32)


def log_prob(prior: nn.Module, params, tokens: jax.Array,
             labels: jax.Array | None) -> jax.Array:
  """Teacher-forced log p(z [| c]) [B] of codes [B, L] (labels: class ids or None)."""
  logits = prior.apply({'params': params}, tokens, labels)
  log_probs = jax.nn.log_softmax(logits, axis=-1)
  return jnp.take_along_axis(log_probs, tokens[..., None], axis=-1)[..., 0].sum(-1)


def train_step(state: state_lib.ModelState, batch: dict, rng: jax.Array, *, prior: nn.Module,
               label_dropout: float, axis_name: str | None = None
               ) -> tuple[state_lib.ModelState, dict]:
  """One AdamW step on the mean negative log-likelihood per token.

  A share `label_dropout` of the inputs (drawn per input from its global index)
  is shown without its label, which trains the unconditional p(z) too.
  """
  tokens, labels = batch['tokens'], _labels(prior, batch['labels'])
  if labels is not None and label_dropout > 0:
    keys = latents.example_keys(jax.random.fold_in(rng, state.step), tokens.shape[0], axis_name)
    drop = jax.vmap(lambda key: jax.random.bernoulli(key, label_dropout))(keys)
    labels = jnp.where(drop, prior.no_class, labels)

  def loss_fn(params):
    return -log_prob(prior, params, tokens, labels).mean() / tokens.shape[1]

  loss, grads = jax.value_and_grad(loss_fn)(state.params)
  grads = parallel.pmean(grads, axis_name)
  state = state.apply_gradients(grads=grads)
  metrics = {'loss/prior': loss, 'prior/train_bits_per_token': loss / math.log(2.0),
             'grad_norm/prior': optax.tree.norm(grads),
             'optim/prior_skipped': optim.skipped_updates(state.opt_state)}
  return state, parallel.pmean(metrics, axis_name)


def eval_step(state: state_lib.ModelState, batch: dict, rng: jax.Array, *, prior: nn.Module,
              num_codes: int, axis_name: str | None = None) -> dict:
  """Masked sums over held-out codes, summed over devices: 'count', 'nll' (of p(z)),
  'nll_conditional' (of p(z | c), conditional priors), and with 'log_q' and
  'log_px' in the batch 'elbo' (log p(x|z) + log p(z) - log q(z|x)) and
  'elbo_uniform' (the same with the uniform prior, L log V nats per code)."""
  del rng
  tokens, mask = batch['tokens'], batch['mask'].astype(jnp.float32)
  log_p = log_prob(prior, state.params, tokens, _labels(prior, jnp.full_like(batch['labels'], -1)))
  sums = {'count': mask.sum(), 'nll': -(log_p * mask).sum()}
  if prior.num_classes:
    conditional = log_prob(prior, state.params, tokens, _labels(prior, batch['labels']))
    sums['nll_conditional'] = -(conditional * mask).sum()
  if 'log_q' in batch:
    evidence = batch['log_px'] - batch['log_q']
    sums['elbo'] = ((evidence + log_p) * mask).sum()
    sums['elbo_uniform'] = ((evidence - tokens.shape[1] * math.log(num_codes)) * mask).sum()
  return parallel.psum(sums, axis_name)


def sample(state: state_lib.ModelState, labels: jax.Array, rng: jax.Array, *,
           prior: nn.Module, temperature: float = 1.0, top_k: int = 0,
           axis_name: str | None = None) -> tuple[jax.Array, jax.Array]:
  """Codes [B, L] drawn from the prior in one `lax.scan` with a fixed-length KV cache.

  Args:
    state: the prior's state.
    labels: [B] dataset labels to condition on (-1: none, the unconditional p(z)).
    rng: one key; each row's key comes from its global index.
    temperature: divides the logits before each draw.
    top_k: draw among the k most likely codes (0: all).
  Returns:
    (codes [B, L] int32, their log p(z [| c]) [B] under the model itself, i.e. at
    temperature 1 without top-k: what `log_prob` gives for the same codes).
  """
  b = labels.shape[0]
  labels = _labels(prior, labels)
  keys = latents.example_keys(rng, b, axis_name)

  def step(carry, position):
    token, cache, total = carry
    logits, cache = prior.apply({'params': state.params}, token, position, cache, labels,
                                method='decode_step')
    scaled = logits / temperature
    if top_k:
      kth = jax.lax.top_k(scaled, top_k)[0][:, -1:]
      scaled = jnp.where(scaled >= kth, scaled, -jnp.inf)
    step_keys = jax.vmap(lambda key: jax.random.fold_in(key, position))(keys)
    token = jax.vmap(jax.random.categorical)(step_keys, scaled).astype(jnp.int32)
    log_p = jnp.take_along_axis(jax.nn.log_softmax(logits, -1), token[:, None], -1)[:, 0]
    return (token, cache, total + log_p), token

  start = jnp.full((b,), prior.start_token, jnp.int32)
  init = (start, prior.init_cache(b), jnp.zeros((b,), jnp.float32))
  (_, _, total), tokens = jax.lax.scan(step, init, jnp.arange(prior.num_tokens))
  return tokens.T, total
