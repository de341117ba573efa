"""Gumbel-softmax and Gumbel-Rao (GR-MCK): straight-through relaxed samples.

Shape legend: B batch, L latent tokens, V codebook size; `...` stands for any
leading batch shape (e.g. [B, L]).

  gumbel_softmax       ST Gumbel-softmax: one-hot argmax(logits + G), grad of softmax
  conditional_gumbels  draws of logits + G conditioned on their argmax
  gumbel_rao           ST Gumbel-Rao: same forward, grad averaged over G | argmax

One straight-through sample per input (`latents.relaxed_latents`): the forward
pass sees the hard one-hot code, the backward pass the relaxed one; for the AR
encoder (`gumbel`, `grmck`) the relaxed one-hot of each step is the next step's
input, so the gradient runs through the whole `lax.scan` rollout; `gumbel_na`
and `grmck_na` use the bidirectional encoder. Loss (the negative beta-ELBO with
the uniform prior): -mean_b(log p(x_b|z_b) - beta * KL(q(.|x_b) || U)), the KL
taken along the sampled path. Encoder and decoder take one joint step.
References: Jang et al. and Maddison et al. 2017 (Gumbel-softmax); Paulus,
Maddison & Krause 2021 (Gumbel-Rao).
"""

import dataclasses
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import ml_collections

from daps_jax import errors
from daps_jax import latents
from daps_jax import parallel
from daps_jax import state as state_lib
from daps_jax.methods import base

# Spec section 5 per method and dataset: beta and tau as (initial, final), and for
# GR-MCK the number k of conditional Gumbels.
SETTINGS = {
    'gumbel': {'mnist': dict(beta=(0.5, 0.01), tau=(1.0, 1.0)),
               'cifar10': dict(beta=(6.0, 0.01), tau=(1.0, 1.0)),
               'imagenet2012': dict(beta=(50.0, 1.0), tau=(1.0, 0.75)),
               'lafan1': dict(beta=(2.0, 0.01), tau=(1.0, 1.0))},
    'gumbel_na': {'mnist': dict(beta=(1.0, 1.0), tau=(1.0, 0.1)),
                  'cifar10': dict(beta=(6.0, 0.01), tau=(1.0, 0.1)),
                  'imagenet2012': dict(beta=(50.0, 1.0), tau=(1.0, 0.1)),
                  'lafan1': dict(beta=(3.0, 0.01), tau=(1.0, 0.75))},
    'grmck': {'mnist': dict(beta=(1.0, 1.0), tau=(1.0, 0.75), num_gumbels=100),
              'cifar10': dict(beta=(3.0, 0.01), tau=(1.0, 0.75), num_gumbels=100),
              'imagenet2012': dict(beta=(10.0, 1.0), tau=(1.0, 0.75), num_gumbels=10),
              'lafan1': dict(beta=(2.0, 0.01), tau=(1.0, 0.75), num_gumbels=10)},
    'grmck_na': {'mnist': dict(beta=(1.0, 1.0), tau=(1.0, 0.75), num_gumbels=100),
                 'cifar10': dict(beta=(3.0, 0.01), tau=(1.0, 0.1), num_gumbels=100),
                 'imagenet2012': dict(beta=(10.0, 1.0), tau=(1.0, 0.1), num_gumbels=10),
                 'lafan1': dict(beta=(2.0, 0.01), tau=(1.0, 0.75), num_gumbels=10)},
}
# AR Gumbel's learning rates (spec section 5; LAFAN's cosine ends at 0.1x, as the
# authors' config).
_COSINE = dict(schedule='cosine', learning_rate=1e-4, final_learning_rate=1e-5)
OPTIM = {('gumbel', 'cifar10'): _COSINE, ('gumbel', 'imagenet2012'): dict(learning_rate=1e-4),
         ('gumbel', 'lafan1'): _COSINE}


@dataclasses.dataclass(frozen=True)
class RelaxedHparams:
  estimator: str  # 'gumbel' (straight-through Gumbel-softmax) or 'grmck' (Gumbel-Rao)
  num_gumbels: int  # k conditional Gumbels per token (GR-MCK only)
  beta: base.Schedule  # step -> KL weight
  tau: base.Schedule  # step -> temperature


def config(name: str, dataset: str) -> ml_collections.ConfigDict:
  s = SETTINGS[name][dataset]
  m = ml_collections.ConfigDict()
  m.name = name  # The method (daps_jax.methods.REGISTRY).
  base.add_beta(m, s['beta'])
  m.tau_init = s['tau'][0]  # Gumbel-softmax temperature at step 0.
  m.tau_final = s['tau'][1]  # Final temperature (exponential schedule over beta's steps).
  if 'num_gumbels' in s:
    m.num_gumbels = s['num_gumbels']  # k conditional Gumbels per token (Gumbel-Rao).
  return m


def optim_overrides(name: str, dataset: str) -> dict:
  return dict(OPTIM.get((name, dataset), {}))


def validate(m: ml_collections.ConfigDict) -> None:
  base.validate_beta(m)
  errors.check(m.tau_init > 0 and m.tau_final > 0, 'method.tau_init',
               'tau_init and tau_final must be positive.')
  if 'num_gumbels' in m:
    errors.check(m.num_gumbels >= 1, 'method.num_gumbels', 'must be >= 1.')


def latent(config: ml_collections.ConfigDict) -> base.Latent:
  return base.Latent(autoregressive=not config.method.name.endswith('_na'))


def make(config: ml_collections.ConfigDict, networks) -> base.Method:
  me = config.method
  beta, tau = base.beta_schedule(config), base.decay(config, me.tau_init, me.tau_final)
  hparams = RelaxedHparams(estimator=me.name.split('_')[0], num_gumbels=me.get('num_gumbels', 1),
                           beta=beta, tau=tau)
  return base.Method(
      name=me.name, train_step=functools.partial(train_step, networks=networks, hparams=hparams),
      encode=base.categorical_encode, init_aux=base.no_aux, beta_final=me.beta_final,
      schedules={**base.learning_rate_schedules(config), 'policy/beta': beta, 'relax/tau': tau})


# ----------------------------------------------------------------------------- estimators

class Relaxed(NamedTuple):
  sample: jax.Array  # [..., V] one-hot of `index` forward, relaxed sample backward
  index: jax.Array  # [...] int32


def _one_hot_straight_through(index: jax.Array, soft: jax.Array) -> Relaxed:
  hard = jax.nn.one_hot(index, soft.shape[-1], dtype=soft.dtype)
  return Relaxed(base.straight_through(hard, soft), index)


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
  return base.straight_through(jnp.where(chosen, top, below), theta)


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


# ----------------------------------------------------------------------------- step

def relaxation(hparams: RelaxedHparams, tau: jax.Array) -> latents.Relax:
  """The per-input estimator (key, logits [..., V]) -> `Relaxed`."""
  if hparams.estimator == 'gumbel':
    return functools.partial(gumbel_softmax, tau=tau)
  if hparams.estimator == 'grmck':
    return functools.partial(gumbel_rao, tau=tau, num=hparams.num_gumbels)
  raise ValueError(f"Unknown estimator {hparams.estimator!r}; valid: 'gumbel', 'grmck'.")


def train_step(state: state_lib.State, batch: dict, rng: jax.Array, *, networks,
               hparams: RelaxedHparams, axis_name: str | None = None
               ) -> tuple[state_lib.State, dict]:
  """One joint step on the negative beta-ELBO of one relaxed sample per input.

  `rng` is the run's loop key (the step and each input's global index are folded
  in, as in DAPS); `batch['inputs']` is [B, ...].
  """
  x = batch['inputs']
  beta, tau = hparams.beta(state.step), hparams.tau(state.step)
  rng = jax.random.fold_in(rng, state.step)
  relax = relaxation(hparams, tau)

  def loss_fn(enc_params, dec_params):
    sample = latents.relaxed_latents(networks.encoder, {'params': enc_params}, x, rng,
                                     relax, axis_name)
    out, updates = base.decoder_apply(state.decoder, dec_params, sample.codes,
                                      decoder=networks.decoder, train=True)
    log_p = networks.likelihood.log_prob(out, x)
    return -jnp.mean(log_p - beta * sample.kl), ((sample, log_p), updates)

  new_state, (sample, log_p), metrics = base.joint_step(state, loss_fn, axis_name)
  metrics.update({
      'loss/decoder': -log_p.mean(),
      'decoder/log_p': log_p.mean(),
      'policy/log_q': sample.log_q.mean(),
      'policy/kl': sample.kl.mean(),
      'policy/beta': beta,
      'relax/tau': tau,
      'elbo/train': (log_p - sample.kl).mean(),
  })
  return new_state, parallel.pmean(metrics, axis_name)
