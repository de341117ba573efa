"""DAPS weights, ESS and dual gradient against exact enumeration in numpy.

L=2 tokens with V=3 codes: all 9 sequences are the K samples, so q* is known
exactly over the whole latent space.
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax.training import train_state

from daps_jax import latents
from daps_jax import losses
from daps_jax import state as state_lib
from daps_jax.methods import daps
from tests import helpers

ETA, BETA, ESS_TARGET = 2.0, 0.5, 0.4


@pytest.fixture(scope='module')
def problem():
  encoder = helpers.tiny_ar_encoder(vocab_size=3, num_tokens=2)
  images = helpers.random_images(2, seed=1)
  tokens = jnp.asarray(np.broadcast_to(helpers.all_sequences(3, 2), (2, 9, 2)))
  params = helpers.init(encoder, images, tokens[:, 0])
  log_q = latents.score_latents(encoder, params, images, tokens).log_q
  rewards = jnp.asarray(np.random.default_rng(0).normal(scale=3.0, size=(2, 9)), jnp.float32)
  return encoder, params, images, tokens, np.asarray(log_q, np.float64), rewards


def numpy_weights(log_q, rewards, eta, beta):
  """Exact q* over all sequences, then self-normalised weights q*/q."""
  q = np.exp(log_q)
  q_star = q ** (eta / (eta + beta)) * np.exp(np.asarray(rewards, np.float64) / (eta + beta))
  q_star /= q_star.sum(-1, keepdims=True)
  ratio = q_star / q
  return q_star, ratio / ratio.sum(-1, keepdims=True)


def numpy_ess(log_q, rewards, eta, beta):
  w = numpy_weights(log_q, rewards, eta, beta)[1]
  return np.mean(1.0 / np.sum(w ** 2, axis=-1))


def test_enumerated_distribution_is_normalised(problem):
  log_q = problem[4]
  np.testing.assert_allclose(np.exp(log_q).sum(-1), 1.0, atol=1e-5)


def test_weights_match_exact_target(problem):
  *_, log_q, rewards = problem
  adv = losses.soft_max_advantages(rewards)
  assert np.all(np.asarray(adv) <= 1e-6)
  log_w = losses.log_importance_weights(adv, jnp.asarray(log_q, jnp.float32), ETA, BETA)
  np.testing.assert_allclose(np.exp(log_w), numpy_weights(log_q, rewards, ETA, BETA)[1],
                             rtol=1e-4, atol=1e-7)


def test_target_is_stationary_point_of_regularised_objective(problem):
  """q* maximises sum p A + beta H(p) - eta KL(p || q): its gradient is constant."""
  *_, log_q, rewards = problem
  q_star, _ = numpy_weights(log_q, rewards, ETA, BETA)
  grad = (np.asarray(rewards, np.float64) - BETA * (np.log(q_star) + 1)
          - ETA * (np.log(q_star) - log_q + 1))
  np.testing.assert_allclose(grad - grad.mean(-1, keepdims=True), 0.0, atol=1e-9)


def test_ess_and_dual_gradient_match_numpy(problem):
  *_, log_q, rewards = problem
  adv = losses.soft_max_advantages(rewards)
  log_eta = jnp.log(ETA)
  ess, d_ess = losses.ess_and_grad(adv, jnp.asarray(log_q, jnp.float32), log_eta, BETA)
  np.testing.assert_allclose(ess, numpy_ess(log_q, rewards, ETA, BETA), rtol=1e-5)
  target = 9 * ESS_TARGET
  loss, grad = losses.dual_loss_and_grad(ess, d_ess, target)
  f = lambda le: (numpy_ess(log_q, rewards, np.exp(le), BETA) - target) ** 2
  h = 1e-5
  expected = (f(np.log(ETA) + h) - f(np.log(ETA) - h)) / (2 * h)
  np.testing.assert_allclose(loss, f(np.log(ETA)), rtol=1e-4)
  np.testing.assert_allclose(grad, expected, rtol=1e-3)
  assert abs(expected) > 1e-3  # The check is not vacuous.


def _states(params, encoder, lr=1.0):
  enc = state_lib.ModelState.create(apply_fn=encoder.apply, params=params['params'],
                                    tx=optax.sgd(lr), batch_stats={})
  dual = train_state.TrainState.create(apply_fn=None, params={'log_eta': jnp.log(ETA)},
                                       tx=optax.sgd(lr))
  return enc, dual


def test_policy_search_step_updates(problem):
  """With SGD(lr=1) the step reveals its gradients: dual and encoder both exact."""
  encoder, params, images, tokens, log_q, rewards = problem
  enc, dual = _states(params, encoder)
  rollout = latents.Rollout(tokens, jnp.asarray(log_q, jnp.float32))
  new_enc, new_dual, metrics = jax.jit(
      lambda e, d: daps.policy_search_step(e, d, images, rollout, rewards, BETA,
                                           encoder=encoder, ess_target=ESS_TARGET))(enc, dual)
  # Dual: log_eta moved by minus the finite-difference gradient.
  target = 9 * ESS_TARGET
  f = lambda le: (numpy_ess(log_q, rewards, np.exp(le), BETA) - target) ** 2
  h = 1e-5
  dual_grad = (f(np.log(ETA) + h) - f(np.log(ETA) - h)) / (2 * h)
  np.testing.assert_allclose(np.log(ETA) - new_dual.params['log_eta'], dual_grad, rtol=1e-3)
  np.testing.assert_allclose(metrics['dual/ess_fraction'],
                             numpy_ess(log_q, rewards, ETA, BETA) / 9, rtol=1e-5)
  # Encoder: gradient of -mean_b sum_k w log q with numpy weights held fixed.
  w = jnp.asarray(numpy_weights(log_q, rewards, ETA, BETA)[1], jnp.float32)
  loss = lambda p: -jnp.mean(jnp.sum(
      w * latents.score_latents(encoder, {'params': p}, images, tokens).log_q, -1))
  expected = jax.grad(loss)(params['params'])
  moved = jax.tree.map(lambda a, b: a - b, params['params'], new_enc.params)
  chex.assert_trees_all_close(moved, expected, atol=2e-5, rtol=1e-3)
  assert optax.tree.norm(expected) > 1e-3


def test_no_gradient_through_sampling(problem):
  encoder, params, images, *_ = problem
  grad_sampled = jax.grad(lambda p: latents.sample_latents(
      encoder, p, images, jax.random.key(0), 4).log_q.sum())(params)
  assert all(np.all(np.asarray(g) == 0) for g in jax.tree.leaves(grad_sampled))
  tokens = latents.sample_latents(encoder, params, images, jax.random.key(0), 4).tokens
  grad_forced = jax.grad(lambda p: latents.score_latents(
      encoder, p, images, tokens).log_q.sum())(params)
  assert optax.tree.norm(grad_forced) > 1e-3


def _random_problem(seed: int, b: int = 16, k: int = 8, scale: float = 5.0):
  rng = np.random.default_rng(seed)
  rewards = rng.normal(scale=scale, size=(b, k))
  log_q = np.log(rng.dirichlet(np.ones(k), size=b))
  adv = losses.soft_max_advantages(jnp.asarray(rewards, jnp.float32))
  return adv, jnp.asarray(log_q, jnp.float32), rewards, log_q


def _ess(adv, log_q, log_eta, beta):
  return losses.effective_sample_size(
      losses.log_importance_weights(adv, log_q, jnp.exp(log_eta), beta)).mean()


@pytest.mark.parametrize('seed,beta', [(0, 0.01), (1, 0.5), (2, 6.0), (3, 50.0)])
def test_ess_is_non_decreasing_in_eta(seed, beta):
  adv, log_q, *_ = _random_problem(seed, scale=[1.0, 5.0, 30.0, 300.0][seed])
  grid = jnp.linspace(np.log(1e-4), np.log(1e6), 400)
  ess = np.asarray(jax.vmap(lambda le: _ess(adv, log_q, le, beta))(grid))
  assert np.all(np.diff(ess) >= -1e-5 * ess[1:]), np.diff(ess).min()
  assert ess[-1] - ess[0] > 0.5  # The grid spans a real change.


BRACKET = dict(log_eta_min=np.log(1e-4), log_eta_max=np.log(1e6), iterations=30)


@pytest.mark.parametrize('seed,beta,fraction', [(0, 0.01, 0.33), (1, 0.5, 0.5), (2, 6.0, 0.25)])
def test_bisection_solves_the_ess_target(seed, beta, fraction):
  adv, log_q, rewards, log_q64 = _random_problem(seed, scale=[5.0, 20.0, 50.0][seed])
  target = 8 * fraction
  log_eta = jax.jit(lambda a, q: losses.solve_log_eta(a, q, beta, target, **BRACKET))(adv, log_q)
  assert BRACKET['log_eta_min'] + 0.1 < log_eta < BRACKET['log_eta_max'] - 0.1  # Interior root.
  np.testing.assert_allclose(numpy_ess(log_q64, rewards, np.exp(float(log_eta)), beta),
                             target, rtol=1e-4)


def test_bisection_clamps_an_unreachable_target_to_the_bracket():
  adv, log_q, *_ = _random_problem(0)
  solve = lambda target: float(losses.solve_log_eta(adv, log_q, 0.5, target, **BRACKET))
  # 1 <= ESS <= K = 8 for every eta: the bracket's ends are the closest one can get.
  np.testing.assert_allclose(solve(8.5), BRACKET['log_eta_max'], atol=1e-5)
  np.testing.assert_allclose(solve(0.5), BRACKET['log_eta_min'], atol=1e-5)


def test_policy_search_step_with_bisection_weights_at_the_solved_eta(problem):
  """The step solves eta for this batch, stores it, and weights the update with it."""
  encoder, params, images, tokens, log_q, rewards = problem
  enc, dual = _states(params, encoder)
  dual = train_state.TrainState.create(apply_fn=None, params={'log_eta': jnp.log(ETA)},
                                       tx=optax.set_to_zero())
  rollout = latents.Rollout(tokens, jnp.asarray(log_q, jnp.float32))
  bisection = daps.Bisection(**BRACKET)
  new_enc, new_dual, metrics = jax.jit(
      lambda e, d: daps.policy_search_step(e, d, images, rollout, rewards, BETA, encoder=encoder,
                                           ess_target=ESS_TARGET, bisection=bisection))(enc, dual)
  eta = float(np.exp(new_dual.params['log_eta']))
  assert abs(np.log(eta / ETA)) > 0.1  # Solved, not the stored eta.
  np.testing.assert_allclose(numpy_ess(log_q, rewards, eta, BETA), 9 * ESS_TARGET, rtol=1e-4)
  np.testing.assert_allclose(metrics['dual/ess_fraction'], ESS_TARGET, rtol=1e-4)
  np.testing.assert_allclose(metrics['dual/eta'], eta, rtol=1e-6)
  w = jnp.asarray(numpy_weights(log_q, rewards, eta, BETA)[1], jnp.float32)
  loss = lambda p: -jnp.mean(jnp.sum(
      w * latents.score_latents(encoder, {'params': p}, images, tokens).log_q, -1))
  moved = jax.tree.map(lambda a, b: a - b, params['params'], new_enc.params)
  chex.assert_trees_all_close(moved, jax.grad(loss)(params['params']), atol=2e-5, rtol=1e-3)
