"""What every method provides, and the pieces several methods share.

Shape legend: B batch (per device), K samples per input, L latent tokens, V
codebook size; `x` is a batch of inputs [B, ...] in model space.

A method module of this package (e.g. `daps`, `relaxed`, `fsq`) defines
  config(name, dataset) -> ConfigDict   the method block, with its settings for a
                                        dataset ('mnist', 'cifar10', 'imagenet2012', 'lafan1')
  validate(method) -> None              raises errors.ConfigError naming the field
  latent(config) -> Latent              what it needs of the encoder and decoder
  make(config, networks) -> Method      its pure train step, eval encoding, state
and optionally optim_overrides(name, dataset) -> dict (optimiser fields that
differ from the dataset's). `methods.REGISTRY` maps a method name to its module.

Shared here: `decoder_step` (the Monte-Carlo likelihood step of the sampling
methods) and `sample_and_decoder_step` (their rollout and decoder step), `joint_step` (one step of both networks on one loss, for the
straight-through methods), `categorical_encode` (eval encoding of a categorical
q(z|x)), `straight_through`, and the beta schedule's config fields.
"""

import dataclasses
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import optax

from daps_jax import errors
from daps_jax import latents
from daps_jax import optim
from daps_jax import parallel
from daps_jax import state as state_lib

Schedule = Callable[[jax.Array], jax.Array]  # step -> value


@dataclasses.dataclass(frozen=True)
class Latent:
  """What a method needs of the networks (`build.networks` reads it)."""
  autoregressive: bool  # the AR policy encoder, else the bidirectional (NA) one
  encoder_head: int | None = None  # NA head width instead of V logits (VQ: E, FSQ: d)
  code_dim: int | None = None  # the decoder reads d-dim code vectors (FSQ), not tokens
  num_codes: int | None = None  # codes per token when not V (FSQ: prod(levels))


class Encoding(NamedTuple):
  """A method's eval-time encoding of a batch."""
  tokens: jax.Array  # [B, L] int32 code indices
  out: jax.Array  # decoder output (likelihood parameters), eval mode
  kl: jax.Array | None  # [B] KL(q || uniform) along the path; None without analytic q


def decode_tokens(state: state_lib.State, tokens: jax.Array, *, networks) -> jax.Array:
  """The eval-mode decoder output of code indices [B, L] (a `Method.decode`)."""
  return networks.decoder.apply(state_lib.variables(state.decoder), tokens, train=False)


@dataclasses.dataclass(frozen=True)
class Method:
  """A method's pure functions, bound to its networks and hyperparameters."""
  name: str
  train_step: Callable  # (state, batch, rng, axis_name=None) -> (state, metrics)
  encode: Callable  # (state, x, rng, *, networks, axis_name=None) -> Encoding
  init_aux: Callable  # (rng, encoder variables, decoder variables) -> state.aux
  beta_final: float | None  # the beta of the reported beta-ELBO (None: no analytic q)
  schedules: dict[str, Schedule]  # logged name -> (step -> value)
  # (state, code indices [B, L], *, networks) -> decoder output: generation from codes.
  decode: Callable = decode_tokens


def no_aux(rng: jax.Array, encoder_vars: dict, decoder_vars: dict) -> dict:
  """`Method.init_aux` of a method without extra state."""
  del rng, encoder_vars, decoder_vars
  return {}


def straight_through(hard: jax.Array, soft: jax.Array) -> jax.Array:
  """Value `hard`, gradient that of `soft` (as soft + sg(hard - soft), no gradient to hard).

  Written as sg(hard) + (soft - sg(soft)) so that the forward value is bit-exact
  `hard` for finite `soft`; shapes broadcast.
  """
  return jax.lax.stop_gradient(hard) + (soft - jax.lax.stop_gradient(soft))


# ----------------------------------------------------------------------------- config

def add_samples(m: ml_collections.ConfigDict, num_samples: int = 8) -> None:
  """The K field of the sampling methods."""
  m.num_samples = num_samples  # K latent samples per input.


def add_beta(m: ml_collections.ConfigDict, beta: tuple[float, float]) -> None:
  """The (initial, final) entropy weight and its exponential schedule."""
  m.beta_init = beta[0]  # Entropy (KL) weight at step 0.
  m.beta_final = beta[1]  # Its final value; also the beta of the reported beta-ELBO.
  m.beta_decay_steps = 0  # Steps of the exponential beta schedule (0: beta_horizon x total_steps).
  m.beta_horizon = 1.0  # If beta_decay_steps is 0: schedule steps / total_steps (1: the spec).


def validate_samples(m: ml_collections.ConfigDict) -> None:
  errors.check(m.num_samples >= 2, 'method.num_samples',
               f'{m.name} needs K >= 2 samples per input, got {m.num_samples}.')


def validate_beta(m: ml_collections.ConfigDict) -> None:
  errors.check(m.beta_init > 0 and m.beta_final > 0, 'method.beta_init',
               'beta_init and beta_final must be positive.')
  errors.check(m.beta_decay_steps >= 0, 'method.beta_decay_steps',
               'must be >= 0 (0: beta_horizon x total_steps).')
  errors.check(m.beta_horizon > 0, 'method.beta_horizon',
               'must be > 0 (1: the schedule ends with the run).')


def anneal_steps(method: ml_collections.ConfigDict | dict, total_steps: int) -> int:
  """Steps of the beta (and a relaxed method's tau) schedule: `method`'s beta_decay_steps,
  else beta_horizon x total_steps (a config saved before beta_horizon existed had 1)."""
  return method['beta_decay_steps'] or max(1, round(method.get('beta_horizon', 1.0) * total_steps))


def decay(config: ml_collections.ConfigDict, init: float, final: float) -> Schedule:
  """Exponential schedule from `init` to `final` over the beta schedule's steps."""
  return optim.exp_decay(init, final, anneal_steps(config.method, config.total_steps))


def beta_schedule(config: ml_collections.ConfigDict) -> Schedule:
  return decay(config, config.method.beta_init, config.method.beta_final)


def learning_rate_schedules(config: ml_collections.ConfigDict) -> dict[str, Schedule]:
  """{'optim/learning_rate': step -> rate}, logged by every method."""
  lr = optim.learning_rate(config.optim, config.total_steps)
  return {'optim/learning_rate': lr if callable(lr) else (lambda step: lr)}


# ----------------------------------------------------------------------------- steps

def decoder_step(decoder_state: state_lib.ModelState, x: jax.Array, tokens: jax.Array, *,
                 decoder, likelihood, axis_name: str | None = None
                 ) -> tuple[state_lib.ModelState, jax.Array, dict]:
  """One step on L_phi = -mean_{b,k} log p_phi(x_b | z_bk).

  Args:
    decoder_state: the decoder's `ModelState`.
    x: [B, ...] inputs in model space.
    tokens: [B, K, L] latent samples (constants here).
    decoder: the decoder module; likelihood: `Bernoulli` or `Gaussian`.
    axis_name: optional axis to average gradients over.
  Returns:
    (new state, log p [B, K] from the pre-update decoder with no gradient, metrics).
  """
  b, k, length = tokens.shape
  targets = latents.fold_samples(x, k)
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


def sample_and_decoder_step(state: state_lib.State, policy_params, x: jax.Array,
                            rng: jax.Array, *, num_samples: int, networks,
                            axis_name: str | None = None):
  """The sampling methods' first half: K latents per input from `policy_params`, then
  `decoder_step` on them.

  `rng` is the run's loop key: the step is folded in here and each input's global
  index in `latents.sample_latents`, so the samples do not depend on the sharding.
  Returns (rollout [B, K, L] and log q [B, K], new decoder state, log p [B, K],
  the decoder's metrics).
  """
  rollout = latents.sample_latents(networks.encoder, {'params': policy_params}, x,
                                   jax.random.fold_in(rng, state.step), num_samples, axis_name)
  decoder, log_p, metrics = decoder_step(state.decoder, x, rollout.tokens,
                                         decoder=networks.decoder,
                                         likelihood=networks.likelihood, axis_name=axis_name)
  return rollout, decoder, log_p, metrics


def policy_metrics(beta: jax.Array, scores: latents.Scores, log_p: jax.Array, grads,
                   encoder_state: state_lib.ModelState) -> dict:
  """The metrics every sampling method logs of its encoder update: beta, log q and the
  path KL of the samples, log p, the train ELBO, the gradient norm and skipped updates."""
  return {'policy/beta': beta,
          'policy/log_q': scores.log_q.mean(),
          'policy/kl': scores.kl.mean(),
          'decoder/log_p': log_p.mean(),
          'elbo/train': log_p.mean() - scores.kl.mean(),
          'grad_norm/encoder': optax.tree.norm(grads),
          'optim/encoder_skipped': optim.skipped_updates(encoder_state.opt_state)}


def joint_step(state: state_lib.State, loss_fn: Callable, axis_name: str | None = None):
  """One gradient step of both networks on `loss_fn` (the straight-through methods).

  Args:
    state: the train state.
    loss_fn: (encoder params, decoder params) -> (loss, (extras, mutated decoder
      collections, e.g. {'batch_stats': ...})).
    axis_name: optional device axis to average gradients over.
  Returns:
    (state with both networks updated and the step advanced, extras, metrics).
  """
  (loss, (extras, updates)), (g_enc, g_dec) = jax.value_and_grad(
      loss_fn, argnums=(0, 1), has_aux=True)(state.encoder.params, state.decoder.params)
  g_enc, g_dec = parallel.pmean((g_enc, g_dec), axis_name)
  encoder = state.encoder.apply_gradients(grads=g_enc)
  decoder = state.decoder.apply_gradients(grads=g_dec,
                                          batch_stats=updates.get('batch_stats', {}))
  metrics = {'loss/total': loss,
             'grad_norm/encoder': optax.tree.norm(g_enc),
             'grad_norm/decoder': optax.tree.norm(g_dec),
             'optim/encoder_skipped': optim.skipped_updates(encoder.opt_state),
             'optim/decoder_skipped': optim.skipped_updates(decoder.opt_state)}
  new_state = state.replace(step=state.step + 1, encoder=encoder, decoder=decoder)
  return new_state, extras, metrics


def decoder_apply(decoder_state: state_lib.ModelState, params, inputs: jax.Array, *,
                  decoder, train: bool, method: str | None = None):
  """The decoder with `params` in place of the state's; train mode returns the mutated
  collections too (BatchNorm statistics)."""
  model_vars = state_lib.variables(decoder_state.replace(params=params))
  if train:
    return decoder.apply(model_vars, inputs, train=True, method=method,
                         mutable=['batch_stats'])
  return decoder.apply(model_vars, inputs, train=False, method=method)


def categorical_encode(state: state_lib.State, x: jax.Array, rng: jax.Array, *, networks,
                       axis_name: str | None = None) -> Encoding:
  """One latent sample per input from q(z|x), its path KL and the decoder output."""
  enc_vars = {'params': state.encoder.params}
  rollout = latents.sample_latents(networks.encoder, enc_vars, x, rng, 1, axis_name)
  kl = latents.score_latents(networks.encoder, enc_vars, x, rollout.tokens).kl[:, 0]
  tokens = rollout.tokens[:, 0]
  return Encoding(tokens, decode_tokens(state, tokens, networks=networks), kl)
