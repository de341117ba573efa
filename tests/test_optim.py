"""Optimiser chain and beta schedule."""

import jax.numpy as jnp
import numpy as np
import optax
import pytest

from daps_jax import optim


def test_non_finite_updates_are_skipped_and_counted():
  tx = optim.adamw(1e-2, weight_decay=1e-4, max_consecutive_skips=3)
  params = {'w': jnp.ones((3,))}
  opt_state = tx.init(params)
  bad = {'w': jnp.array([1.0, jnp.nan, 0.0])}
  updates, opt_state = tx.update(bad, opt_state, params)
  np.testing.assert_array_equal(optax.apply_updates(params, updates)['w'], params['w'])
  assert int(optim.skipped_updates(opt_state)) == 1
  updates, opt_state = tx.update({'w': jnp.ones((3,))}, opt_state, params)
  assert np.all(np.asarray(optax.apply_updates(params, updates)['w']) < 1.0)
  assert int(optim.skipped_updates(opt_state)) == 1
  assert int(optim.skipped_updates(optax.sgd(1.0).init(params))) == 0  # Never skips.


@pytest.mark.parametrize('step,expected', [(0, 0.5), (500, 0.5 * 0.02 ** 0.5), (1000, 0.01),
                                           (5000, 0.01)])
def test_beta_schedule(step, expected):
  beta = optim.exp_decay(0.5, 0.01, 1000)
  np.testing.assert_allclose(beta(step), expected, rtol=1e-5)


def test_beta_schedule_rejects_non_positive_values():
  with pytest.raises(ValueError, match='positive'):
    optim.exp_decay(0.0, 0.01, 10)
