"""PPO: a clipped-ratio policy-gradient encoder baseline (a further policy-search reference).

Shape legend: B batch, K samples per input, L latent tokens, V codebook size.

The behaviour policy lags one step: the K samples of step t come from the
encoder parameters of step t-1 (kept in `aux['behaviour']`), so the ratio
q_theta(z|x) / q_behaviour(z|x) is a real importance ratio. Return per sample:
r = log p(x|z) - beta * (log q_behaviour(z|x) + L log V) (the per-sample
beta-ELBO with the uniform prior). A value network V_psi(x) is regressed on the
returns; advantages r - V(x) are normalised over the global batch. Encoder loss:
-mean(min(rho A, clip(rho, 1 - eps, 1 + eps) A)) + c * KL, KL(behaviour || theta)
estimated per sample as (rho - 1) - log rho; c doubles when the KL exceeds
1.5 * kl_target and halves below kl_target / 1.5 (Schulman et al. 2017). The
decoder takes DAPS's Monte-Carlo likelihood step on the same samples.
"""

import dataclasses
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
from daps_jax import steps


@dataclasses.dataclass(frozen=True)
class PPOHparams:
  num_samples: int  # K samples per input
  beta: Callable[[jax.Array], jax.Array]  # step -> entropy weight
  clip_ratio: float  # eps of the clipped surrogate
  kl_target: float  # target KL(behaviour || current) per sequence, in nats


def init_aux(rng: jax.Array, encoder_vars: dict, *, value_network: nn.Module, value_tx,
             image_shape: tuple[int, int, int], kl_coef_init: float) -> dict:
  """Behaviour policy = the initial encoder, a fresh value network, the KL coefficient."""
  value_vars = value_network.init(rng, jnp.zeros((1, *image_shape), jnp.float32))
  return {'behaviour': encoder_vars['params'],
          'value': state_lib.model_state(value_vars, value_tx, value_network.apply),
          'kl_coef': jnp.asarray(kl_coef_init, jnp.float32)}


def adapt_kl_coef(kl_coef: jax.Array, kl: jax.Array, kl_target: float) -> jax.Array:
  """x2 above 1.5 * target, /2 below target / 1.5, else unchanged."""
  return jnp.where(kl > 1.5 * kl_target, kl_coef * 2.0,
                   jnp.where(kl < kl_target / 1.5, kl_coef / 2.0, kl_coef))


def train_step(state: state_lib.State, batch: dict, rng: jax.Array, *, networks,
               hparams: PPOHparams, axis_name: str | None = None
               ) -> tuple[state_lib.State, dict]:
  """Sample K latents from the lagged policy, update decoder, value network and encoder."""
  images = batch['image']
  encoder = networks.encoder
  beta = hparams.beta(state.step)
  rollout = latents.sample_latents(encoder, {'params': state.aux['behaviour']}, images,
                                   jax.random.fold_in(rng, state.step), hparams.num_samples,
                                   axis_name)
  decoder, log_p, metrics = steps.decoder_step(state.decoder, images, rollout.tokens,
                                               decoder=networks.decoder,
                                               likelihood=networks.likelihood,
                                               axis_name=axis_name)
  log_prior = encoder.num_tokens * math.log(encoder.vocab_size)
  returns = log_p - beta * (rollout.log_q + log_prior)  # [B, K], constants

  value_state = state.aux['value']

  def value_loss_fn(params):
    values = networks.value.apply({'params': params}, images)  # [B]
    return jnp.mean(jnp.square(values[:, None] - returns)), values

  (value_loss, values), value_grads = jax.value_and_grad(value_loss_fn, has_aux=True)(
      value_state.params)
  value_grads = parallel.pmean(value_grads, axis_name)
  value_state = value_state.apply_gradients(grads=value_grads)

  advantages = returns - values[:, None]
  mean = parallel.pmean(advantages.mean(), axis_name)
  var = parallel.pmean(jnp.square(advantages - mean).mean(), axis_name)
  advantages = (advantages - mean) / jnp.sqrt(var + 1e-8)
  kl_coef = state.aux['kl_coef']
  eps = hparams.clip_ratio

  def policy_loss_fn(params):
    scores = latents.score_latents(encoder, {'params': params}, images, rollout.tokens)
    log_ratio = scores.log_q - rollout.log_q
    ratio = jnp.exp(log_ratio)
    surrogate = jnp.minimum(ratio * advantages, jnp.clip(ratio, 1 - eps, 1 + eps) * advantages)
    kl = jnp.mean(ratio - 1.0 - log_ratio)
    return -surrogate.mean() + kl_coef * kl, (scores, ratio, kl)

  (policy_loss, (scores, ratio, kl)), grads = jax.value_and_grad(
      policy_loss_fn, has_aux=True)(state.encoder.params)
  grads = parallel.pmean(grads, axis_name)
  new_encoder = state.encoder.apply_gradients(grads=grads)
  kl = parallel.pmean(kl, axis_name)
  aux = {'behaviour': state.encoder.params, 'value': value_state,
         'kl_coef': adapt_kl_coef(kl_coef, kl, hparams.kl_target)}
  metrics.update({
      'loss/policy': policy_loss,
      'loss/value': value_loss,
      'ppo/kl': kl,
      'ppo/kl_coef': kl_coef,
      'ppo/ratio': ratio.mean(),
      'ppo/clip_fraction': (jnp.abs(ratio - 1.0) > eps).mean(),
      'policy/beta': beta,
      'policy/log_q': scores.log_q.mean(),
      'policy/kl': scores.kl.mean(),
      'decoder/log_p': log_p.mean(),
      'elbo/train': log_p.mean() - scores.kl.mean(),
      'grad_norm/encoder': optax.tree.norm(grads),
      'grad_norm/value': optax.tree.norm(value_grads),
      'optim/encoder_skipped': optim.skipped_updates(new_encoder.opt_state),
  })
  new_state = state_lib.State(step=state.step + 1, encoder=new_encoder, decoder=decoder, aux=aux)
  return new_state, parallel.pmean(metrics, axis_name)
