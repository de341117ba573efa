"""Gumbel-softmax and Gumbel-Rao (GR-MCK) baselines, AR and NA encoders.

Shape legend: B batch, L latent tokens, V codebook size.

One straight-through sample per input (`latents.relaxed_latents`): the forward
pass sees the hard one-hot code, the backward pass the relaxed one; for the AR
encoder the gradient runs through the whole rollout. Loss (the negative
beta-ELBO with the uniform prior): -mean_b(log p(x_b|z_b) - beta * KL(q(.|x_b) || U)),
the KL taken along the sampled path. Encoder and decoder take one joint step.
"""

import dataclasses
import functools
from typing import Callable

import jax
import jax.numpy as jnp

from daps_jax import estimators
from daps_jax import latents
from daps_jax import parallel
from daps_jax import state as state_lib
from daps_jax.baselines import common

ESTIMATORS = ('gumbel', 'grmck')


@dataclasses.dataclass(frozen=True)
class RelaxedHparams:
  estimator: str  # 'gumbel' (straight-through Gumbel-softmax) or 'grmck' (Gumbel-Rao)
  num_gumbels: int  # k conditional Gumbels per token (GR-MCK only)
  beta: Callable[[jax.Array], jax.Array]  # step -> KL weight
  tau: Callable[[jax.Array], jax.Array]  # step -> temperature


def relaxation(hparams: RelaxedHparams, tau: jax.Array) -> latents.Relax:
  """The per-input estimator (key, logits [..., V]) -> `estimators.Relaxed`."""
  if hparams.estimator == 'gumbel':
    return functools.partial(estimators.gumbel_softmax, tau=tau)
  if hparams.estimator == 'grmck':
    return functools.partial(estimators.gumbel_rao, tau=tau, num=hparams.num_gumbels)
  raise ValueError(f'Unknown estimator {hparams.estimator!r}; valid: {ESTIMATORS}.')


def train_step(state: state_lib.State, batch: dict, rng: jax.Array, *, networks,
               hparams: RelaxedHparams, axis_name: str | None = None
               ) -> tuple[state_lib.State, dict]:
  """One joint step on the negative beta-ELBO of one relaxed sample per input.

  `rng` is the run's loop key (the step and each input's global index are folded
  in, as in DAPS); `batch['image']` is [B, H, W, C].
  """
  images = batch['image']
  beta, tau = hparams.beta(state.step), hparams.tau(state.step)
  rng = jax.random.fold_in(rng, state.step)
  relax = relaxation(hparams, tau)

  def loss_fn(enc_params, dec_params):
    sample = latents.relaxed_latents(networks.encoder, {'params': enc_params}, images, rng,
                                     relax, axis_name)
    out, updates = common.decoder_apply(state.decoder, dec_params, sample.codes,
                                        decoder=networks.decoder, train=True)
    log_p = networks.likelihood.log_prob(out, images)
    return -jnp.mean(log_p - beta * sample.kl), ((sample, log_p), updates)

  new_state, (sample, log_p), metrics = common.joint_step(state, loss_fn, axis_name)
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
