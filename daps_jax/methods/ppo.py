"""PPO: a clipped-ratio policy-gradient encoder (a further policy-search reference).

Shape legend: B batch, K samples per input, L latent tokens, V codebook size.

The behaviour policy lags one step: the K samples of step t come from the
encoder parameters of step t-1 (kept in `aux['behaviour']`), so the ratio
q_theta(z|x) / q_behaviour(z|x) is a real importance ratio. Return per sample:
r = log p(x|z) - beta * (log q_behaviour(z|x) + L log V) (the per-sample
beta-ELBO with the uniform prior). A value network V_psi(x) is regressed on the
returns; advantages r - V(x) are normalised over the global batch. Encoder loss:
-mean(min(rho A, clip(rho, 1 - eps, 1 + eps) A)) + c * KL, KL(behaviour || theta)
estimated per sample as (rho - 1) - log rho; c doubles when the KL exceeds
1.5 * kl_target and halves below kl_target / 1.5 (Schulman et al. 2017), kept in
[KL_COEF_MIN, KL_COEF_MAX] (unbounded halving reaches exactly 0, after which
doubling cannot revive it). The decoder takes DAPS's Monte-Carlo likelihood step
on the same samples. Not in the paper.
"""

import dataclasses
import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax

from daps_jax import errors
from daps_jax import latents
from daps_jax import optim
from daps_jax import parallel
from daps_jax import state as state_lib
from daps_jax.methods import base
from daps_jax.methods import daps
from daps_jax.models import encoders

# The authors' bounds of the adaptive KL coefficient.
KL_COEF_MIN, KL_COEF_MAX = 1e-3, 1e3


@dataclasses.dataclass(frozen=True)
class PPOHparams:
  num_samples: int  # K samples per input
  beta: base.Schedule  # step -> entropy weight
  clip_ratio: float  # eps of the clipped surrogate
  kl_target: float  # target KL(behaviour || current) per sequence, in nats


def config(name: str, dataset: str) -> ml_collections.ConfigDict:
  m = ml_collections.ConfigDict()
  m.name = name  # The method (daps_jax.methods.REGISTRY).
  base.add_samples(m)
  base.add_beta(m, daps.SETTINGS['daps'][dataset][1])  # beta as DAPS.
  m.clip_ratio = 0.2  # eps of the clipped surrogate.
  m.kl_target = 0.01  # Target KL(behaviour || current) per sequence (nats).
  m.kl_coef_init = 0.2  # Initial KL penalty coefficient (adapted x2 / /2 within [1e-3, 1e3]).
  m.value_learning_rate = 1e-3  # AdamW learning rate of the value network.
  return m


def validate(m: ml_collections.ConfigDict) -> None:
  base.validate_samples(m)
  base.validate_beta(m)
  errors.check(0 < m.clip_ratio < 1, 'method.clip_ratio', 'must be in (0, 1).')
  errors.check(m.kl_target > 0, 'method.kl_target', 'must be positive.')
  errors.check(KL_COEF_MIN <= m.kl_coef_init <= KL_COEF_MAX, 'method.kl_coef_init',
               f'must be in [{KL_COEF_MIN:g}, {KL_COEF_MAX:g}], the range it adapts in.')


def latent(config: ml_collections.ConfigDict) -> base.Latent:
  del config
  return base.Latent(autoregressive=True)


def make(config: ml_collections.ConfigDict, networks) -> base.Method:
  me, o = config.method, config.optim
  beta = base.beta_schedule(config)
  hparams = PPOHparams(num_samples=me.num_samples, beta=beta, clip_ratio=me.clip_ratio,
                       kl_target=me.kl_target)
  value = encoders.ValueNetwork(frontend=networks.encoder.frontend,
                                num_tokens=config.model.num_tokens, width=config.model.width)
  value_tx = optim.adamw(me.value_learning_rate, weight_decay=o.weight_decay, clip=o.clip,
                         max_consecutive_skips=o.max_consecutive_skips)
  return base.Method(
      name=me.name,
      train_step=functools.partial(train_step, networks=networks, value_network=value,
                                   hparams=hparams),
      encode=base.categorical_encode,
      init_aux=lambda rng, enc_vars, dec_vars: init_aux(
          rng, enc_vars, value_network=value, value_tx=value_tx,
          shape=networks.input_shape, kl_coef_init=me.kl_coef_init),
      beta_final=me.beta_final,
      schedules={**base.learning_rate_schedules(config), 'policy/beta': beta})


def init_aux(rng: jax.Array, encoder_vars: dict, *, value_network: nn.Module, value_tx,
             shape: tuple[int, ...], kl_coef_init: float) -> dict:
  """Behaviour policy = the initial encoder, a fresh value network, the KL coefficient."""
  value_vars = value_network.init(rng, jnp.zeros((1, *shape), jnp.float32))
  return {'behaviour': encoder_vars['params'],
          'value': state_lib.model_state(value_vars, value_tx, value_network.apply),
          'kl_coef': jnp.asarray(kl_coef_init, jnp.float32)}


def adapt_kl_coef(kl_coef: jax.Array, kl: jax.Array, kl_target: float) -> jax.Array:
  """x2 above 1.5 * target, /2 below target / 1.5, else unchanged; kept in
  [KL_COEF_MIN, KL_COEF_MAX]."""
  adapted = jnp.where(kl > 1.5 * kl_target, kl_coef * 2.0,
                      jnp.where(kl < kl_target / 1.5, kl_coef / 2.0, kl_coef))
  return jnp.clip(adapted, KL_COEF_MIN, KL_COEF_MAX)


def train_step(state: state_lib.State, batch: dict, rng: jax.Array, *, networks,
               value_network: nn.Module, hparams: PPOHparams, axis_name: str | None = None
               ) -> tuple[state_lib.State, dict]:
  """Sample K latents from the lagged policy, update decoder, value network and encoder."""
  x = batch['inputs']
  encoder = networks.encoder
  beta = hparams.beta(state.step)
  rollout, decoder, log_p, metrics = base.sample_and_decoder_step(
      state, state.aux['behaviour'], x, rng, num_samples=hparams.num_samples, networks=networks,
      axis_name=axis_name)
  log_prior = encoder.num_tokens * math.log(encoder.vocab_size)
  returns = log_p - beta * (rollout.log_q + log_prior)  # [B, K], constants

  value_state = state.aux['value']

  def value_loss_fn(params):
    values = value_network.apply({'params': params}, x)  # [B]
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
    scores = latents.score_latents(encoder, {'params': params}, x, rollout.tokens)
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
      'grad_norm/value': optax.tree.norm(value_grads),
      **base.policy_metrics(beta, scores, log_p, grads, new_encoder),
  })
  new_state = state_lib.State(step=state.step + 1, encoder=new_encoder, decoder=decoder, aux=aux)
  return new_state, parallel.pmean(metrics, axis_name)
