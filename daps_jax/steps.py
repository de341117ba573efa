"""The pure update functions of DAPS and the fused training step.

Shape legend: B batch (per device), K samples per input, L latent tokens,
H, W, C image dims.

`decoder_step`      Monte-Carlo likelihood update of p_phi(x|z) on the K samples.
`policy_search_step` advantages, closed-form importance weights, ESS, eta update,
                    weighted maximum-likelihood update of q_theta(z|x).
`train_step`        sample -> decoder_step -> policy_search_step, one dispatch.
`init_aux`          the trust-region dual state (`state.aux['dual']`).

Each takes an optional `axis_name`: gradients and statistics are averaged over it,
so the same code runs on one device or under `pmap`. Returns are a new state and
a dict of scalar metrics with namespaced names.
"""

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
import optax
from flax.training import train_state

from daps_jax import latents
from daps_jax import losses
from daps_jax import optim
from daps_jax import parallel
from daps_jax import state as state_lib


@dataclasses.dataclass(frozen=True)
class DapsHparams:
  num_samples: int  # K
  ess_target: float  # target ESS / K in (0, 1]
  beta: Callable[[jax.Array], jax.Array]  # step -> entropy weight


def decoder_step(decoder_state: state_lib.ModelState, images: jax.Array, tokens: jax.Array, *,
                 decoder, likelihood, axis_name: str | None = None
                 ) -> tuple[state_lib.ModelState, jax.Array, dict]:
  """One step on L_phi = -mean_{b,k} log p_phi(x_b | z_bk).

  Args:
    decoder_state: the decoder's `ModelState`.
    images: [B, H, W, C] in model space.
    tokens: [B, K, L] latent samples (constants here).
    decoder: the decoder module; likelihood: `Bernoulli` or `Gaussian`.
    axis_name: optional axis to average gradients over.
  Returns:
    (new state, log p [B, K] from the pre-update decoder with no gradient, metrics).
  """
  b, k, length = tokens.shape
  targets = latents.fold_samples(images, k)
  flat_tokens = tokens.reshape(b * k, length)

  def loss_fn(params):
    model_vars = state_lib.variables(decoder_state.replace(params=params))
    out, updates = decoder.apply(model_vars, flat_tokens, train=True, mutable=['batch_stats'])
    log_p = likelihood.log_prob(out, targets)
    return -jnp.mean(log_p), (log_p, updates)

  (loss, (log_p, updates)), grads = jax.value_and_grad(loss_fn, has_aux=True)(decoder_state.params)
  grads = parallel.pmean(grads, axis_name)
  new_state = decoder_state.apply_gradients(grads=grads,
                                            batch_stats=updates.get('batch_stats', {}))
  metrics = {'loss/decoder': loss, 'grad_norm/decoder': optax.tree.norm(grads),
             'optim/decoder_skipped': optim.skipped_updates(new_state.opt_state)}
  return new_state, jax.lax.stop_gradient(log_p.reshape(b, k)), metrics


def policy_search_step(encoder_state: state_lib.ModelState, dual_state: train_state.TrainState,
                       images: jax.Array, rollout: latents.Rollout, rewards: jax.Array,
                       beta: jax.Array, *, encoder, ess_target: float,
                       axis_name: str | None = None
                       ) -> tuple[state_lib.ModelState, train_state.TrainState, dict]:
  """One DAPS encoder and trust-region update (see `losses` for the equations).

  Args:
    encoder_state: the encoder's `ModelState` (the policy that drew `rollout`).
    dual_state: `TrainState` with params {'log_eta': scalar}.
    images: [B, H, W, C].
    rollout: tokens [B, K, L] and their log q [B, K] under the encoder.
    rewards: [B, K] returns log p(x|z); treated as constants.
    beta: scalar entropy weight.
    encoder: the encoder module; ess_target: target ESS / K.
    axis_name: optional axis to average gradients and ESS statistics over.
  Returns:
    (new encoder state, new dual state, metrics).
  """
  k = rollout.tokens.shape[1]
  log_eta = dual_state.params['log_eta']
  behaviour_log_q = jax.lax.stop_gradient(rollout.log_q)
  advantages = losses.soft_max_advantages(jax.lax.stop_gradient(rewards))
  log_w = losses.log_importance_weights(advantages, behaviour_log_q, jnp.exp(log_eta), beta)
  weights = jnp.exp(log_w)

  def loss_fn(params):
    scores = latents.score_latents(encoder, {'params': params}, images, rollout.tokens)
    return losses.weighted_nll(weights, scores.log_q), scores

  (policy_loss, scores), grads = jax.value_and_grad(loss_fn, has_aux=True)(encoder_state.params)
  grads = parallel.pmean(grads, axis_name)
  new_encoder = encoder_state.apply_gradients(grads=grads)

  ess, d_ess = parallel.pmean(losses.ess_and_grad(advantages, behaviour_log_q, log_eta, beta),
                              axis_name)
  dual_loss, dual_grad = losses.dual_loss_and_grad(ess, d_ess, k * ess_target)
  new_dual = dual_state.apply_gradients(grads={'log_eta': dual_grad})

  metrics = {
      'loss/policy': policy_loss,
      'loss/dual': dual_loss,
      'dual/eta': jnp.exp(log_eta),
      'dual/ess_fraction': ess / k,
      'policy/beta': beta,
      'policy/advantage': advantages.mean(),
      'policy/max_weight': weights.max(-1).mean(),
      'policy/log_q': scores.log_q.mean(),
      'policy/kl': scores.kl.mean(),
      'grad_norm/encoder': optax.tree.norm(grads),
      'optim/encoder_skipped': optim.skipped_updates(new_encoder.opt_state),
  }
  return new_encoder, new_dual, metrics


def init_aux(eta_init: float, tx) -> dict:
  """{'dual': TrainState of {'log_eta'}} with eta = eta_init and optimiser `tx`."""
  log_eta = jnp.log(jnp.asarray(eta_init, jnp.float32))
  return {'dual': train_state.TrainState.create(apply_fn=None, params={'log_eta': log_eta},
                                                tx=tx)}


def train_step(state: state_lib.State, batch: dict, rng: jax.Array, *, networks,
               hparams: DapsHparams, axis_name: str | None = None
               ) -> tuple[state_lib.State, dict]:
  """Sample K latents, update the decoder, then the encoder and eta.

  `rng` is the run's loop key: the step and each input's global index in the
  batch are folded in here, so every step and input draws different latents and
  the result does not depend on the number of devices. `batch['image']` is
  [B, H, W, C].
  """
  images = batch['image']
  beta = hparams.beta(state.step)
  rollout = latents.sample_latents(networks.encoder, {'params': state.encoder.params}, images,
                                   jax.random.fold_in(rng, state.step), hparams.num_samples,
                                   axis_name)
  decoder, log_p, dec_metrics = decoder_step(state.decoder, images, rollout.tokens,
                                             decoder=networks.decoder,
                                             likelihood=networks.likelihood, axis_name=axis_name)
  encoder, dual, pol_metrics = policy_search_step(state.encoder, state.aux['dual'], images,
                                                  rollout,
                                                  log_p, beta, encoder=networks.encoder,
                                                  ess_target=hparams.ess_target,
                                                  axis_name=axis_name)
  metrics = {**dec_metrics, **pol_metrics, 'decoder/log_p': log_p.mean(),
             'elbo/train': log_p.mean() - pol_metrics['policy/kl']}
  new_state = state_lib.State(step=state.step + 1, encoder=encoder, decoder=decoder,
                              aux={'dual': dual})
  return new_state, parallel.pmean(metrics, axis_name)
