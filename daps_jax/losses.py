"""DAPS policy-search losses in closed form.

Shape legend: B batch, K samples per input. Inputs per input b and sample k:
r [B, K] returns (decoder log-likelihoods, stop-gradient), log_q [B, K] the
encoder's log-probability of the sample, eta > 0 the trust-region temperature,
beta >= 0 the entropy weight.

  A    = r - logsumexp_k r                          (soft-max baseline, A <= 0)
  q*  ~= exp((A + eta log q) / (eta + beta))        (closed-form target)
  l    = log q*/q = (A - beta sg(log q)) / (eta + beta)
  w    = softmax_k(l)                               (self-normalised weights)
  ESS  = mean_b 1 / sum_k w_bk^2
  L_theta = -mean_b sum_k sg(w_bk) log q_theta(z_bk | x_b)
  L_eta   = (ESS(eta) - K * ess_target)^2

ESS is non-decreasing in eta: with c = A - beta log q and t = 1/(eta + beta),
d log ESS / dt = 2 (E_w[c] - E_{w^2}[c]) <= 0, because w^2 (normalised) tilts w
further towards large c. So ESS(eta) = target can be solved exactly per batch by
bisection on log eta (`solve_log_eta`) instead of gradient steps on L_eta.

Weights are normalised with logsumexp over K: raw returns are never exponentiated.
Reference: Drolet et al., "Discrete Variational Autoencoding via Policy Search",
ICLR 2026, and the MPO / V-MPO dual of Abdolmaleki et al. and Song et al.
"""

from typing import Callable

import jax
import jax.numpy as jnp


def soft_max_advantages(rewards: jax.Array) -> jax.Array:
  """A = r - logsumexp_k r: [B, K] -> [B, K], all <= log 1 = 0."""
  return rewards - jax.nn.logsumexp(rewards, axis=-1, keepdims=True)


def log_importance_weights(advantages: jax.Array, log_q: jax.Array, eta: jax.Array,
                           beta: jax.Array) -> jax.Array:
  """Normalised log weights log w [B, K] = log_softmax_k((A - beta log q)/(eta + beta))."""
  return jax.nn.log_softmax((advantages - beta * log_q) / (eta + beta), axis=-1)


def effective_sample_size(log_weights: jax.Array) -> jax.Array:
  """1 / sum_k w_k^2 per input, from normalised log weights [B, K] -> [B]."""
  return jnp.exp(-jax.nn.logsumexp(2.0 * log_weights, axis=-1))


def weighted_nll(weights: jax.Array, log_q: jax.Array) -> jax.Array:
  """Weighted maximum-likelihood loss -mean_b sum_k sg(w) log q (scalar)."""
  return -jnp.mean(jnp.sum(jax.lax.stop_gradient(weights) * log_q, axis=-1))


def ess_and_grad(advantages: jax.Array, log_q: jax.Array, log_eta: jax.Array,
                 beta: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Batch-mean ESS and d ESS / d log_eta; A, log q and beta carry no gradient."""
  advantages, log_q, beta = jax.lax.stop_gradient((advantages, log_q, beta))

  def ess(le):
    return effective_sample_size(log_importance_weights(advantages, log_q, jnp.exp(le),
                                                        beta)).mean()

  return jax.value_and_grad(ess)(log_eta)


def dual_loss_and_grad(ess: jax.Array, d_ess: jax.Array, target: float
                       ) -> tuple[jax.Array, jax.Array]:
  """L_eta = (ESS - target)^2 and its gradient in log_eta by the chain rule.

  ESS and its derivative are (cross-device) batch means, so the gradient is that
  of the global loss whatever the sharding.
  """
  gap = ess - target
  return jnp.square(gap), 2.0 * gap * d_ess


def solve_log_eta(advantages: jax.Array, log_q: jax.Array, beta: jax.Array, target: float, *,
                  log_eta_min: float, log_eta_max: float, iterations: int,
                  mean: Callable[[jax.Array], jax.Array] = lambda x: x) -> jax.Array:
  """log eta in [log_eta_min, log_eta_max] with ESS(eta) = target, by bisection.

  ESS is the batch mean of `effective_sample_size`, passed through `mean` at every
  iteration (a cross-device mean under `pmap`, so every device takes the same
  branch). ESS is non-decreasing in eta, so a target below ESS(eta_min) returns
  log_eta_min and one above ESS(eta_max) returns log_eta_max. The result is
  within (log_eta_max - log_eta_min) / 2**(iterations + 1) of the root.
  """
  advantages, log_q, beta = jax.lax.stop_gradient((advantages, log_q, beta))

  def ess(log_eta):
    log_w = log_importance_weights(advantages, log_q, jnp.exp(log_eta), beta)
    return mean(effective_sample_size(log_w).mean())

  def halve(_, bracket):
    lo, hi = bracket
    mid = 0.5 * (lo + hi)
    short = ess(mid) < target  # The root lies above mid.
    return jnp.where(short, mid, lo), jnp.where(short, hi, mid)

  bracket = (jnp.asarray(log_eta_min, jnp.float32), jnp.asarray(log_eta_max, jnp.float32))
  lo, hi = jax.lax.fori_loop(0, iterations, halve, bracket)
  return 0.5 * (lo + hi)
