"""DAPS and DAPS-NA: the encoder as a policy, trained by policy search.

Shape legend: B batch (per device), K samples per input, L latent tokens.

`policy_search_step` advantages, closed-form importance weights, ESS, eta update,
                     weighted maximum-likelihood update of q_theta(z|x) (the
                     equations are in `daps_jax.losses`).
`train_step`         sample K latents -> `base.decoder_step` -> policy_search_step,
                     one dispatch.
`init_aux`           the trust-region dual state (`state.aux['dual']`).

`daps` uses the autoregressive encoder, `daps_na` the bidirectional one with
independent per-token logits; the losses are the same. Each step takes an
optional `axis_name`: gradients and statistics are averaged over it, so the same
code runs on one device or under `pmap`.
"""

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax.training import train_state

from daps_jax import errors
from daps_jax import latents
from daps_jax import losses
from daps_jax import optim
from daps_jax import parallel
from daps_jax import state as state_lib
from daps_jax.methods import base

# Spec section 5: (ess_target, beta (initial, final)) per dataset.
SETTINGS = {
    'daps': {'mnist': (0.33, (0.5, 0.01)), 'cifar10': (0.33, (6.0, 0.01)),
             'imagenet2012': (0.25, (50.0, 1.0)), 'lafan1': (0.33, (3.0, 0.01))},
    'daps_na': {'mnist': (0.5, (0.5, 0.01)), 'cifar10': (0.33, (6.0, 1.0)),
                'imagenet2012': (0.25, (50.0, 1.0)), 'lafan1': (0.33, (1.0, 0.01))},
}


DUAL_SOLVERS = ('adam', 'bisection')


@dataclasses.dataclass(frozen=True)
class Bisection:
  """Solve ESS(eta) = target per batch for log eta in [log_eta_min, log_eta_max]."""
  log_eta_min: float
  log_eta_max: float
  iterations: int


@dataclasses.dataclass(frozen=True)
class DapsHparams:
  num_samples: int  # K
  ess_target: float  # target ESS / K in (0, 1]
  beta: base.Schedule  # step -> entropy weight
  bisection: Bisection | None = None  # None: the paper's AdamW steps on L_eta
  sample_chunks: int = 1  # the encoder's teacher-forced pass over K / sample_chunks at a time
  top_k: int = 0  # teacher-force only the top_k largest-weight samples per input (0: all K)


def config(name: str, dataset: str) -> ml_collections.ConfigDict:
  ess_target, beta = SETTINGS[name][dataset]
  m = ml_collections.ConfigDict()
  m.name = name  # The method (daps_jax.methods.REGISTRY).
  base.add_samples(m)
  base.add_beta(m, beta)
  m.ess_target = ess_target  # Target effective sample size as a fraction of K.
  # 'adam': the paper's AdamW steps on (ESS - K ess_target)^2, from eta_init;
  # 'bisection': eta solved per batch so that ESS = K ess_target exactly.
  m.dual_solver = 'adam'
  m.eta_init = 100.0  # adam: initial trust-region temperature eta (learned in log space).
  m.eta_learning_rate = 1e-3  # adam: AdamW learning rate of log(eta).
  m.eta_min = 1e-4  # bisection: the bracket of eta; a target out of reach clamps to it.
  m.eta_max = 1e6
  m.bisection_iterations = 30  # bisection: halvings of the log-eta bracket per step.
  # The encoder's gradient over K / sample_chunks samples at a time, summed in a scan:
  # the same update, a fraction of the activation memory (must divide K).
  m.sample_chunks = 1
  # Teacher-force only the top_k samples of largest weight per input (0: all K), the
  # MPO trick: the encoder's pass and gradient cost top_k / K; the weight of the dropped
  # samples is left out of the update (policy/kept_weight is the share kept).
  m.top_k = 0
  return m


def validate(m: ml_collections.ConfigDict) -> None:
  base.validate_samples(m)
  base.validate_beta(m)
  errors.check(0 < m.ess_target <= 1, 'method.ess_target',
               f'is a fraction of K in (0, 1], got {m.ess_target}.')
  errors.check(m.ess_target * m.num_samples >= 1, 'method.ess_target',
               f'ess_target * K = {m.ess_target * m.num_samples} < 1 can never be reached '
               '(ESS >= 1); raise ess_target or num_samples.')
  errors.check(m.dual_solver in DUAL_SOLVERS, 'method.dual_solver',
               f'is one of {", ".join(DUAL_SOLVERS)}, got {m.dual_solver!r}.')
  errors.check(m.eta_init > 0, 'method.eta_init', 'must be positive.')
  errors.check(0 < m.eta_min < m.eta_max, 'method.eta_min',
               f'needs 0 < eta_min < eta_max, got {m.eta_min} and {m.eta_max}.')
  errors.check(m.bisection_iterations >= 1, 'method.bisection_iterations',
               f'must be at least 1, got {m.bisection_iterations}.')
  errors.check(m.sample_chunks >= 1 and m.num_samples % m.sample_chunks == 0,
               'method.sample_chunks', f'{m.sample_chunks} must divide K = {m.num_samples}.')
  errors.check(0 <= m.top_k <= m.num_samples, 'method.top_k',
               f'must be in [0, K = {m.num_samples}] (0: all samples), got {m.top_k}.')
  errors.check(m.top_k % m.sample_chunks == 0, 'method.top_k',
               f'{m.top_k} samples do not split into sample_chunks = {m.sample_chunks}.')


def latent(config: ml_collections.ConfigDict) -> base.Latent:
  return base.Latent(autoregressive=config.method.name == 'daps')


def make(config: ml_collections.ConfigDict, networks) -> base.Method:
  me = config.method
  beta = base.beta_schedule(config)
  if me.dual_solver == 'bisection':
    bisection = Bisection(log_eta_min=math.log(me.eta_min), log_eta_max=math.log(me.eta_max),
                          iterations=me.bisection_iterations)
    dual_tx = optax.set_to_zero()  # log(eta) is solved, not stepped: no optimiser state.
  else:
    bisection = None
    # No decay or clipping of log(eta): decay would pull eta towards 1.
    dual_tx = optim.adamw(me.eta_learning_rate, weight_decay=0.0, clip=None,
                          max_consecutive_skips=config.optim.max_consecutive_skips)
  hparams = DapsHparams(num_samples=me.num_samples, ess_target=me.ess_target, beta=beta,
                        bisection=bisection, sample_chunks=me.sample_chunks,
                        top_k=me.top_k)
  return base.Method(
      name=me.name, train_step=functools.partial(train_step, networks=networks, hparams=hparams),
      encode=base.categorical_encode,
      init_aux=lambda rng, enc_vars, dec_vars: init_aux(me.eta_init, dual_tx),
      beta_final=me.beta_final,
      schedules={**base.learning_rate_schedules(config), 'policy/beta': beta})


def policy_search_step(encoder_state: state_lib.ModelState, dual_state: train_state.TrainState,
                       x: jax.Array, rollout: latents.Rollout, rewards: jax.Array,
                       beta: jax.Array, *, encoder, ess_target: float,
                       bisection: Bisection | None = None, sample_chunks: int = 1,
                       top_k: int = 0, axis_name: str | None = None
                       ) -> tuple[state_lib.ModelState, train_state.TrainState, dict]:
  """One DAPS encoder and trust-region update (see `losses` for the equations).

  Args:
    encoder_state: the encoder's `ModelState` (the policy that drew `rollout`).
    dual_state: `TrainState` with params {'log_eta': scalar}.
    x: [B, ...] inputs.
    rollout: tokens [B, K, L] and their log q [B, K] under the encoder.
    rewards: [B, K] returns log p(x|z); treated as constants.
    beta: scalar entropy weight.
    encoder: the encoder module; ess_target: target ESS / K.
    bisection: None to take an AdamW step on L_eta from the state's eta (the
      paper); else eta is solved for this batch first and used for its weights.
    sample_chunks: the teacher-forced pass and its gradient run over K /
      sample_chunks samples at a time (`weighted_nll_and_grad`).
    top_k: teacher-force only the top_k largest-weight samples of each input
      (`top_k_samples`; 0: all K); the scores in the metrics are theirs.
    axis_name: optional axis to average gradients and ESS statistics over.
  Returns:
    (new encoder state, new dual state, metrics).
  """
  k = rollout.tokens.shape[1]
  behaviour_log_q = jax.lax.stop_gradient(rollout.log_q)
  advantages = losses.soft_max_advantages(jax.lax.stop_gradient(rewards))
  if bisection is None:
    log_eta = dual_state.params['log_eta']
  else:
    log_eta = losses.solve_log_eta(
        advantages, behaviour_log_q, beta, k * ess_target, log_eta_min=bisection.log_eta_min,
        log_eta_max=bisection.log_eta_max, iterations=bisection.iterations,
        mean=functools.partial(parallel.pmean, axis_name=axis_name))
  log_w = losses.log_importance_weights(advantages, behaviour_log_q, jnp.exp(log_eta), beta)
  weights = jnp.exp(log_w)

  tokens, kept = rollout.tokens, weights
  if 0 < top_k < k:
    tokens, kept = top_k_samples(tokens, weights, top_k)
  policy_loss, scores, grads = weighted_nll_and_grad(
      encoder, encoder_state.params, x, tokens, kept, sample_chunks)
  grads = parallel.pmean(grads, axis_name)
  new_encoder = encoder_state.apply_gradients(grads=grads)

  ess, d_ess = parallel.pmean(losses.ess_and_grad(advantages, behaviour_log_q, log_eta, beta),
                              axis_name)
  dual_loss, dual_grad = losses.dual_loss_and_grad(ess, d_ess, k * ess_target)
  if bisection is None:
    new_dual = dual_state.apply_gradients(grads={'log_eta': dual_grad})
  else:
    new_dual = dual_state.replace(step=dual_state.step + 1, params={'log_eta': log_eta})

  metrics = {
      'loss/policy': policy_loss,
      'loss/dual': dual_loss,
      'dual/eta': jnp.exp(log_eta),
      'dual/ess_fraction': ess / k,
      'policy/advantage': advantages.mean(),
      'policy/max_weight': weights.max(-1).mean(),
      'policy/kept_weight': (kept.sum(-1) / weights.sum(-1)).mean(),
      **base.policy_metrics(beta, scores, rewards, grads, new_encoder),
  }
  return new_encoder, new_dual, metrics


def top_k_samples(tokens: jax.Array, weights: jax.Array, k: int) -> tuple[jax.Array, jax.Array]:
  """The k samples of largest weight per input: tokens [B, K, L], weights [B, K] ->
  tokens [B, k, L], weights [B, k] (ties to the earlier sample). The weighted NLL over
  them is the full one with the other samples' weights set to 0."""
  kept, index = jax.lax.top_k(weights, k)
  return jnp.take_along_axis(tokens, index[..., None], axis=1), kept


def weighted_nll_and_grad(encoder, params, x: jax.Array, tokens: jax.Array, weights: jax.Array,
                          chunks: int = 1) -> tuple[jax.Array, latents.Scores, dict]:
  """L_theta = -mean_b sum_k w_bk log q(z_bk|x_b), its teacher-forced scores and gradient.

  With `chunks` > 1 the K samples are processed K / chunks at a time in a
  `lax.scan`, summing the loss and gradient (L_theta is a sum over k): the same
  numbers up to float rounding, with the activations of one chunk alive at a time.

  Args:
    tokens: [B, K, L] samples; weights: [B, K] (constants).
  Returns:
    (loss, scores with log_q and kl [B, K], gradient in `params`).
  """
  def loss_fn(p, tokens, weights):
    scores = latents.score_latents(encoder, {'params': p}, x, tokens)
    return losses.weighted_nll(weights, scores.log_q), scores

  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
  if chunks == 1:
    (loss, scores), grads = grad_fn(params, tokens, weights)
    return loss, scores, grads
  b, k, length = tokens.shape
  split = lambda a: jnp.moveaxis(a.reshape(b, chunks, k // chunks, *a.shape[2:]), 1, 0)

  def chunk(total, inputs):
    (loss, scores), grads = grad_fn(params, *inputs)
    return jax.tree.map(jnp.add, total, (loss, grads)), scores

  zero = (jnp.zeros((), jnp.float32), jax.tree.map(jnp.zeros_like, params))
  (loss, grads), scores = jax.lax.scan(chunk, zero, (split(tokens), split(weights)))
  join = lambda a: jnp.moveaxis(a, 0, 1).reshape(b, k)  # [C, B, K/C] -> [B, K]
  return loss, jax.tree.map(join, scores), grads


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
  the result does not depend on the number of devices. `batch['inputs']` is
  [B, ...].
  """
  x = batch['inputs']
  beta = hparams.beta(state.step)
  rollout, decoder, log_p, dec_metrics = base.sample_and_decoder_step(
      state, state.encoder.params, x, rng, num_samples=hparams.num_samples, networks=networks,
      axis_name=axis_name)
  encoder, dual, pol_metrics = policy_search_step(state.encoder, state.aux['dual'], x, rollout,
                                                  log_p, beta, encoder=networks.encoder,
                                                  ess_target=hparams.ess_target,
                                                  bisection=hparams.bisection,
                                                  sample_chunks=hparams.sample_chunks,
                                                  top_k=hparams.top_k, axis_name=axis_name)
  metrics = {**dec_metrics, **pol_metrics}
  new_state = state_lib.State(step=state.step + 1, encoder=encoder, decoder=decoder,
                              aux={'dual': dual})
  return new_state, parallel.pmean(metrics, axis_name)
