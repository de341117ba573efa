"""bench/frontier_lib.py: the bias computation is exact where it can be, and the
fixed-budget reading picks the last evaluation inside each budget."""

import numpy as np
import pytest

from bench import frontier_lib


@pytest.fixture(scope='module')
def space():
  rng = np.random.default_rng(3)
  log_q = np.log(rng.dirichlet(np.ones(9)))
  return log_q, rng.normal(scale=3.0, size=9)


def test_one_sample_estimates_q_and_a_sweep_gives_the_density_ratio(space):
  log_q, rewards = space
  # K = 1: w = 1, so E[e_z] = q -- no information about q* at all.
  np.testing.assert_allclose(frontier_lib.exact_expectation(1, log_q, rewards, 1.0, 0.5),
                             np.exp(log_q), atol=1e-12)
  # Each outcome once: the self-normalised weights are q*/q, normalised.
  sweep = frontier_lib.weighted_estimate(np.arange(9)[None], log_q, rewards, 1.0, 0.5)[0]
  ratio = frontier_lib.target(log_q, rewards, 1.0, 0.5) / np.exp(log_q)
  np.testing.assert_allclose(sweep, ratio / ratio.sum(), rtol=1e-10)


def test_monte_carlo_bias_agrees_with_enumeration_and_falls_with_k():
  table = frontier_lib.bias_table(draws=40_000, seed=1)
  rows = {(r['eta'], r['k']): r for r in table['rows']}
  for (eta, k), row in rows.items():
    if 'relative_bias_exact' in row:
      assert abs(row['relative_bias_mc'] - row['relative_bias_exact']) < 4 * row['mc_stderr'] + 0.01
  for eta in frontier_lib.BIAS_ETAS[:2]:
    biases = [rows[eta, k]['relative_bias_mc'] for k in frontier_lib.BIAS_KS]
    assert biases[0] > biases[-1] + 5 * rows[eta, 64]['mc_stderr'], biases


def test_budget_reading():
  curves = {2: {'eval/psnr': {100: [10.0, 12.0], 200: [13.0, 13.0]}},
            8: {'eval/psnr': {100: [14.0], 200: [15.0]}}}
  table = frontier_lib.frontier(curves, {2: 0.1, 8: 0.5}, budgets=[20.0, 60.0, 100.0])
  assert table[2]['eval/psnr']['mean'] == [11.0, 13.0]
  assert table[2]['eval/psnr@budget'] == [13.0, 13.0, 13.0]  # Steps 100, 200 take 10, 20 s.
  assert table[8]['eval/psnr@budget'] == [None, 14.0, 15.0]  # Steps 100, 200 take 50, 100 s.
