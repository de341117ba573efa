"""VIMCO: the multi-sample score-function estimator with leave-one-out baselines.

Shape legend: B batch (per device), K samples per input, L latent tokens, V
codebook size.

Mnih & Rezende 2016, "Variational inference for Monte Carlo objectives", on
DAPS's AR encoder, K samples and rollout; only the encoder update differs, so it
isolates what DAPS's closed-form target and trust region buy over a plain
score-function method. With r_k = log p(x|z_k) (constants for the encoder), the
uniform prior log p(z) = -L log V and DAPS's entropy weight beta:

  log w_k   = r_k - beta (log q(z_k|x) - log p(z_k))
  L_hat     = logsumexp_k log w_k - log K              (the K-sample bound)
  L_hat_-k  = L_hat with log w_k replaced by mean_{j != k} log w_j
  grad      = sum_k (L_hat - L_hat_-k) grad log q(z_k) + sum_k w~_k grad log w_k,

w~ = softmax_k log w, grad log w_k = -beta grad log q(z_k); the gradient reaches
the encoder through teacher-forced log q only (no gradient through sampling).
The decoder takes DAPS's Monte-Carlo likelihood step on the same samples (VIMCO
proper would weight it by w~; here only the encoder update differs from DAPS).
"""

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import ml_collections

from daps_jax import latents
from daps_jax import parallel
from daps_jax import state as state_lib
from daps_jax.methods import base
from daps_jax.methods import daps


@dataclasses.dataclass(frozen=True)
class VimcoHparams:
  num_samples: int  # K
  beta: base.Schedule  # step -> entropy weight


def config(name: str, dataset: str) -> ml_collections.ConfigDict:
  m = ml_collections.ConfigDict()
  m.name = name  # The method (daps_jax.methods.REGISTRY).
  base.add_samples(m)
  base.add_beta(m, daps.SETTINGS['daps'][dataset][1])  # beta as DAPS.
  return m


def validate(m: ml_collections.ConfigDict) -> None:
  base.validate_samples(m)
  base.validate_beta(m)


def latent(config: ml_collections.ConfigDict) -> base.Latent:
  del config
  return base.Latent(autoregressive=True)


def make(config: ml_collections.ConfigDict, networks) -> base.Method:
  beta = base.beta_schedule(config)
  hparams = VimcoHparams(num_samples=config.method.num_samples, beta=beta)
  return base.Method(
      name=config.method.name,
      train_step=functools.partial(train_step, networks=networks, hparams=hparams),
      encode=base.categorical_encode, init_aux=base.no_aux,
      beta_final=config.method.beta_final,
      schedules={**base.learning_rate_schedules(config), 'policy/beta': beta})


def leave_one_out_bounds(log_w: jax.Array) -> jax.Array:
  """L_hat_-k [B, K] of log weights [B, K] (K >= 2), log w_k replaced by the mean of
  the other K - 1 (the geometric mean of their weights).

  Computed relative to each row's maximum, over a [B, K, K] array.
  """
  if log_w.ndim != 2 or log_w.shape[-1] < 2:
    raise ValueError(f'VIMCO needs log weights [B, K] with K >= 2, got {log_w.shape}.')
  k = log_w.shape[-1]
  top = jax.lax.stop_gradient(log_w.max(-1, keepdims=True))
  centred = log_w - top
  others = (centred.sum(-1, keepdims=True) - centred) / (k - 1)  # [B, K]
  replaced = jnp.where(jnp.eye(k, dtype=bool), others[:, :, None], centred[:, None, :])
  return jax.nn.logsumexp(replaced, axis=-1) - math.log(k) + top


def surrogate_loss(log_q: jax.Array, log_p: jax.Array, beta: jax.Array, log_prior: float,
                   axis_name: str | None = None) -> tuple[jax.Array, dict]:
  """-mean_b of a surrogate whose value is L_hat and whose gradient is VIMCO's.

  Per input: L_hat + sum_k sg(s_k) (log q_k - sg log q_k) + sum_k sg(w~_k) (log w_k -
  sg log w_k), s_k = L_hat - L_hat_-k. Both corrections are zero in value.

  Args:
    log_q: [B, K] differentiable (teacher-forced) log q(z_k|x) of the samples.
    log_p: [B, K] decoder log-likelihoods (constants).
    beta: the entropy weight; log_prior: log p(z) of every sequence.
    axis_name: optional device axis; the std of the signals is taken over all of it.
  Returns:
    (loss, {'vimco/bound': mean L_hat, 'vimco/signal_std': std of s,
    'vimco/max_weight': mean_b max_k w~}).
  """
  log_w = jax.lax.stop_gradient(log_p) - beta * (log_q - log_prior)
  fixed = jax.lax.stop_gradient(log_w)
  k = fixed.shape[-1]
  top = fixed.max(-1, keepdims=True)
  bound = jax.nn.logsumexp(fixed - top, axis=-1, keepdims=True) - math.log(k)  # [B, 1]
  signals = bound - leave_one_out_bounds(fixed - top)  # [B, K]
  w = jax.nn.softmax(fixed, axis=-1)
  surrogate = (bound[:, 0] + top[:, 0]
               + jnp.sum(signals * (log_q - jax.lax.stop_gradient(log_q)), axis=-1)
               + jnp.sum(w * (log_w - fixed), axis=-1))
  # The std over the global batch, from device means of s and s^2.
  mean, square = parallel.pmean((signals.mean(), jnp.square(signals).mean()), axis_name)
  return -surrogate.mean(), {'vimco/bound': (bound + top).mean(),
                             'vimco/signal_std': jnp.sqrt(jnp.maximum(square - mean**2, 0.0)),
                             'vimco/max_weight': w.max(-1).mean()}


def train_step(state: state_lib.State, batch: dict, rng: jax.Array, *, networks,
               hparams: VimcoHparams, axis_name: str | None = None
               ) -> tuple[state_lib.State, dict]:
  """Sample K latents, update the decoder (as DAPS), then the encoder by VIMCO.

  Keys as in `daps.train_step`; `batch['inputs']` is [B, ...].
  """
  x = batch['inputs']
  encoder = networks.encoder
  beta = hparams.beta(state.step)
  rollout, decoder, log_p, metrics = base.sample_and_decoder_step(
      state, state.encoder.params, x, rng, num_samples=hparams.num_samples, networks=networks,
      axis_name=axis_name)
  log_prior = -encoder.num_tokens * math.log(encoder.vocab_size)

  def loss_fn(params):
    scores = latents.score_latents(encoder, {'params': params}, x, rollout.tokens)
    loss, diagnostics = surrogate_loss(scores.log_q, log_p, beta, log_prior, axis_name)
    return loss, (scores, diagnostics)

  (loss, (scores, diagnostics)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
      state.encoder.params)
  grads = parallel.pmean(grads, axis_name)
  new_encoder = state.encoder.apply_gradients(grads=grads)
  metrics.update({**diagnostics, 'loss/policy': loss,
                  **base.policy_metrics(beta, scores, log_p, grads, new_encoder)})
  new_state = state.replace(step=state.step + 1, encoder=new_encoder, decoder=decoder)
  return new_state, parallel.pmean(metrics, axis_name)
