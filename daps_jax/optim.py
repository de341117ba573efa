"""Optimisers and schedules.

Encoder and decoder: adaptive (unit-wise) gradient clipping before AdamW, and
non-finite updates skipped (up to `max_consecutive_skips` in a row). The dual
temperature has its own AdamW.
"""

import jax
import jax.numpy as jnp
import optax


def adamw(learning_rate: float | optax.Schedule, *, weight_decay: float, b1: float = 0.9,
          b2: float = 0.999, eps: float = 1e-8, clip: float | None = 1.0,
          max_consecutive_skips: int = 100) -> optax.GradientTransformation:
  """AGC(clip) -> AdamW, wrapped in `optax.apply_if_finite`."""
  tx = optax.adamw(learning_rate, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay)
  if clip is not None:
    tx = optax.chain(optax.adaptive_grad_clip(clip), tx)
  return optax.apply_if_finite(tx, max_consecutive_errors=max_consecutive_skips)


def exp_decay(init: float, final: float, steps: int):
  """beta(t) = max(init * (final/init)^(t/steps), final) (the paper's auto_exp_decay).

  For init < final the schedule grows and is capped at `final` instead.
  """
  if init <= 0 or final <= 0 or steps <= 0:
    raise ValueError(f'exp_decay needs positive init, final and steps; got {init}, {final}, {steps}.')

  def schedule(step: jax.Array) -> jax.Array:
    value = init * (final / init) ** (jnp.asarray(step, jnp.float32) / steps)
    return jnp.maximum(value, final) if final <= init else jnp.minimum(value, final)

  return schedule


def cosine(init: float, final: float, steps: int) -> optax.Schedule:
  """Cosine decay from `init` to `final` over `steps`, then constant."""
  if init <= 0 or final < 0 or steps <= 0:
    raise ValueError(f'cosine needs init > 0, final >= 0, steps > 0; '
                     f'got {init}, {final}, {steps}.')
  return optax.cosine_decay_schedule(init, steps, alpha=final / init)


def skipped_updates(opt_state) -> jax.Array:
  """Total non-finite updates skipped so far (0 for optimisers that never skip)."""
  return jnp.asarray(getattr(opt_state, 'total_notfinite', 0), jnp.int32)


def learning_rate(o, total_steps: int) -> float | optax.Schedule:
  """The encoder and decoder learning rate of an `optim` config block: a float, or
  a cosine schedule over `total_steps`."""
  if o.schedule == 'cosine':
    return cosine(o.learning_rate, o.final_learning_rate, total_steps)
  return o.learning_rate
