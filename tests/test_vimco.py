"""VIMCO's estimator: leave-one-out bounds, exact unbiasedness and variance by enumeration.

The toy encoder is a categorical q = softmax(theta) over N = V^L = 9 outcomes (L = 2,
V = 3) with fixed returns r per outcome; all N^K tuples of K samples are enumerated,
so expectations over the samples are exact sums. Shape legend: B batch, K samples,
T = N^K tuples.
"""

import functools
import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from daps_jax.methods import vimco

NUM_OUTCOMES = 9
LOG_PRIOR = -math.log(NUM_OUTCOMES)  # Uniform over V^L = 3^2.
sg = jax.lax.stop_gradient


@pytest.fixture(autouse=True)
def float64():
  """Exact comparisons in float64, for this module's tests only."""
  with jax.enable_x64(True):
    yield


def _np_logsumexp(values: np.ndarray) -> float:
  top = np.max(values)
  return float(top + np.log(np.sum(np.exp(values - top))))


def _np_leave_one_out(log_w: np.ndarray) -> np.ndarray:
  """Loop over b, k: log((sum_{j != k} w_j + geometric mean of the others) / K)."""
  b, k = log_w.shape
  out = np.zeros((b, k))
  for i in range(b):
    for j in range(k):
      others = np.delete(log_w[i], j)
      out[i, j] = _np_logsumexp(np.append(others, others.mean())) - np.log(k)
  return out


@pytest.mark.parametrize('num_samples', [2, 3, 8])
def test_leave_one_out_bounds_match_a_float64_loop_at_any_magnitude(num_samples):
  rng = np.random.default_rng(num_samples)
  centre = np.repeat([0.0, -5.0, -1e4, -1e4, 1e4], 4)[:, None]
  spread = np.repeat([1.0, 10.0, 1.0, 300.0, 50.0], 4)[:, None]
  log_w = centre + spread * rng.standard_normal((len(centre), num_samples))
  expected = _np_leave_one_out(log_w)
  np.testing.assert_allclose(jax.jit(vimco.leave_one_out_bounds)(jnp.asarray(log_w)),
                             expected, rtol=0, atol=1e-9)
  got32 = np.asarray(jax.jit(vimco.leave_one_out_bounds)(jnp.asarray(log_w, jnp.float32)))
  assert got32.dtype == np.float32
  assert np.all(np.abs(got32 - expected) <= 1e-5 + 4e-7 * (np.abs(centre) + 4 * spread))
  with pytest.raises(ValueError, match='K >= 2'):
    vimco.leave_one_out_bounds(jnp.zeros((3, 1)))


def _problem(seed: int):
  """Logits theta [N] and returns r [N] around a realistic log-likelihood of -20."""
  rng = np.random.default_rng(seed)
  return (jnp.asarray(rng.standard_normal(NUM_OUTCOMES)),
          jnp.asarray(-20.0 + 3.0 * rng.standard_normal(NUM_OUTCOMES)))


def _tuples(num_samples: int) -> jax.Array:
  return jnp.asarray(list(itertools.product(range(NUM_OUTCOMES), repeat=num_samples)))


def _probs(theta, tuples):
  """prod_k q(z_k) of every tuple [T]."""
  return jnp.exp(jax.nn.log_softmax(theta)[tuples].sum(-1))


def _exact_objective(theta, returns, tuples, beta):
  """E[L_hat] = sum_tuples prod_k q(z_k) L_hat(tuple; theta)."""
  log_q = jax.nn.log_softmax(theta)[tuples]
  log_w = returns[tuples] - beta * (log_q - LOG_PRIOR)
  bound = jax.nn.logsumexp(log_w, axis=-1) - math.log(tuples.shape[-1])
  return jnp.sum(jnp.exp(log_q.sum(-1)) * bound)


@functools.partial(jax.jit, static_argnums=0)
def _estimates(surrogate, theta, returns, tuples, beta):
  """The estimator's gradient in theta for every tuple [T, N]; `surrogate(log_q [1, K],
  log_p [1, K], beta)` is a scalar whose gradient is the estimate."""
  def one(tup):
    return jax.grad(lambda th: surrogate(jax.nn.log_softmax(th)[tup][None],
                                         returns[tup][None], beta))(theta)
  return jax.vmap(one)(tuples)


def _vimco(log_q, log_p, beta):
  return -vimco.surrogate_loss(log_q, log_p, beta, LOG_PRIOR)[0]


def _baseline_depends_on_sample(log_q, log_p, beta):
  """Wrong: the baseline of sample k is its own log w_k."""
  log_w = log_p - beta * (log_q - LOG_PRIOR)
  bound = jax.nn.logsumexp(log_w, axis=-1, keepdims=True) - math.log(log_w.shape[-1])
  return jnp.sum(sg(bound - log_w) * log_q + sg(jax.nn.softmax(log_w)) * log_w)


def _no_weight_term(log_q, log_p, beta):
  """Wrong: the sum_k w~_k grad log w_k term is forgotten."""
  log_w = sg(log_p - beta * (log_q - LOG_PRIOR))
  bound = jax.nn.logsumexp(log_w, axis=-1, keepdims=True) - math.log(log_w.shape[-1])
  return jnp.sum(sg(bound - vimco.leave_one_out_bounds(log_w)) * log_q)


def _no_baseline(log_q, log_p, beta):
  """Unbiased but without baselines: every sample's learning signal is L_hat."""
  log_w = log_p - beta * (log_q - LOG_PRIOR)
  bound = jax.nn.logsumexp(log_w, axis=-1) - math.log(log_w.shape[-1])
  return jnp.sum(sg(bound)[:, None] * log_q + sg(jax.nn.softmax(log_w)) * log_w)


@pytest.mark.parametrize('beta', [0.5, 1.0])
@pytest.mark.parametrize('num_samples', [2, 3])
def test_estimator_is_unbiased_and_beats_no_baseline_by_exact_enumeration(beta, num_samples):
  theta, returns = _problem(seed=7)
  beta = jnp.asarray(beta)
  tuples = _tuples(num_samples)
  probs = _probs(theta, tuples)
  exact = jax.jit(jax.grad(_exact_objective))(theta, returns, tuples, beta)
  scale = float(jnp.linalg.norm(exact))
  assert scale > 1e-2
  mean = lambda surrogate: probs @ _estimates(surrogate, theta, returns, tuples, beta)
  np.testing.assert_allclose(mean(_vimco), exact, rtol=1e-9, atol=1e-11)
  # The same comparison catches a baseline that depends on its sample, or a lost term.
  for wrong in (_baseline_depends_on_sample, _no_weight_term):
    assert float(jnp.linalg.norm(mean(wrong) - exact)) > 1e-2 * scale, wrong.__name__

  def variance(surrogate):
    estimates = _estimates(surrogate, theta, returns, tuples, beta)
    np.testing.assert_allclose(probs @ estimates, exact, rtol=1e-9, atol=1e-11)  # Unbiased.
    return float(probs @ jnp.sum(jnp.square(estimates - probs @ estimates), axis=-1))

  # With returns around -20 the baseline-free signal carries all of L_hat's magnitude.
  assert variance(_vimco) < 0.1 * variance(_no_baseline)


def test_surrogate_value_gradient_and_diagnostics_in_closed_form():
  """d loss / d log q_bk = -(s_bk - beta w~_bk) / B; the loss is -mean_b L_hat."""
  rng = np.random.default_rng(3)
  b, k, beta = 4, 5, 0.7
  log_q = jnp.asarray(rng.standard_normal((b, k)) - 3.0)
  log_p = jnp.asarray(20.0 * rng.standard_normal((b, k)))
  (loss, diagnostics), grad = jax.jit(jax.value_and_grad(vimco.surrogate_loss, has_aux=True))(
      log_q, log_p, beta, LOG_PRIOR)
  log_w = np.asarray(log_p - beta * (log_q - LOG_PRIOR))
  bound = np.array([_np_logsumexp(row) for row in log_w]) - np.log(k)
  signals = bound[:, None] - _np_leave_one_out(log_w)
  w = np.exp(log_w - bound[:, None] - np.log(k))
  np.testing.assert_allclose(grad, -(signals - beta * w) / b, atol=1e-12)
  np.testing.assert_allclose(loss, -bound.mean(), atol=1e-10)
  np.testing.assert_allclose(diagnostics['vimco/bound'], bound.mean(), atol=1e-10)
  np.testing.assert_allclose(diagnostics['vimco/signal_std'], signals.std(), atol=1e-10)
  np.testing.assert_allclose(diagnostics['vimco/max_weight'], w.max(-1).mean(), atol=1e-12)
  grad_log_p = jax.grad(lambda lp: vimco.surrogate_loss(log_q, lp, beta, LOG_PRIOR)[0])(log_p)
  assert np.all(np.asarray(grad_log_p) == 0)  # Returns are constants for the encoder.


def test_float32_surrogate_is_finite_at_large_log_likelihoods():
  key_q, key_p = jax.random.split(jax.random.key(0))
  log_q = -30.0 + 5.0 * jax.random.normal(key_q, (6, 4), jnp.float32)
  log_p = -1e4 + 100.0 * jax.random.normal(key_p, (6, 4), jnp.float32)
  (loss, diagnostics), grad = jax.jit(jax.value_and_grad(vimco.surrogate_loss, has_aux=True))(
      log_q, log_p, 0.5, LOG_PRIOR)
  assert loss.dtype == jnp.float32 and grad.shape == (6, 4)
  assert np.isfinite(float(loss)) and np.all(np.isfinite(np.asarray(grad)))
  assert all(np.isfinite(float(v)) for v in diagnostics.values())
  assert 0.25 - 1e-6 <= float(diagnostics['vimco/max_weight']) <= 1.0
