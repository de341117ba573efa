"""Observation models log p(x|z) from decoder outputs.

Shape legend: B batch; inputs [B, ..., C] (images [B, H, W, C], motion
[B, T, C]); decoder output `out` [B, ..., C] (Bernoulli logits; Gaussian mean
with a fixed variance) or [B, ..., 2C] (Gaussian mean, log-variance).
log-likelihoods are summed over all data dimensions: [B].
"""

import dataclasses
import math

import jax
import jax.numpy as jnp

BERNOULLI_LOGIT_BOUND = 15.9  # float32 sigmoid saturates beyond this.


@dataclasses.dataclass(frozen=True)
class Bernoulli:
  """Binary pixels; logits clipped to +-15.9."""

  outputs_per_channel = 1

  def log_prob(self, out: jax.Array, x: jax.Array) -> jax.Array:
    logits = jnp.clip(out, -BERNOULLI_LOGIT_BOUND, BERNOULLI_LOGIT_BOUND)
    ll = x * jax.nn.log_sigmoid(logits) + (1.0 - x) * jax.nn.log_sigmoid(-logits)
    return ll.reshape(ll.shape[0], -1).sum(-1)

  def mean(self, out: jax.Array) -> jax.Array:
    return jax.nn.sigmoid(jnp.clip(out, -BERNOULLI_LOGIT_BOUND, BERNOULLI_LOGIT_BOUND))


@dataclasses.dataclass(frozen=True)
class Gaussian:
  """Diagonal Gaussian. With `variance`, a fixed variance and `out` is the mean
  [..., C]; else `out` is [..., 2C] mean and log-variance, the variance clipped to
  [variance_min, variance_max] when given."""
  variance_min: float | None = None
  variance_max: float | None = None
  variance: float | None = None

  @property
  def outputs_per_channel(self) -> int:
    return 1 if self.variance is not None else 2

  def _split(self, out: jax.Array) -> tuple[jax.Array, jax.Array]:
    if self.variance is not None:
      return out, jnp.full_like(out, math.log(self.variance))
    mean, log_var = jnp.split(out, 2, axis=-1)
    lo = -jnp.inf if self.variance_min is None else math.log(self.variance_min)
    hi = jnp.inf if self.variance_max is None else math.log(self.variance_max)
    return mean, jnp.clip(log_var, lo, hi)

  def log_prob(self, out: jax.Array, x: jax.Array) -> jax.Array:
    mean, log_var = self._split(out)
    ll = -0.5 * (math.log(2 * math.pi) + log_var + jnp.square(x - mean) * jnp.exp(-log_var))
    return ll.reshape(ll.shape[0], -1).sum(-1)

  def mean(self, out: jax.Array) -> jax.Array:
    return self._split(out)[0]


Likelihood = Bernoulli | Gaussian
