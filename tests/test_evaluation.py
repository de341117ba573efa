"""Evaluation over a padded validation split, and the mean-image baseline."""

import numpy as np

from daps_jax import build
from daps_jax import data
from daps_jax import parallel
from daps_jax.evaluation import loop
from tests import helpers


def test_mean_image_baseline_matches_direct_numpy():
  train_images = data.get_source('mnist_embedded', 'train', None)
  test_images = data.get_source('mnist_embedded', 'test', None)
  binary = lambda source: np.stack([source[i]['image'] > 127 for i in range(len(source))])
  mean = binary(train_images).mean(0)
  mse = np.square(binary(test_images) - mean).reshape(len(test_images), -1).mean(-1)
  expected = np.mean(-10 * np.log10(mse))
  got = loop.mean_image_psnr('mnist_embedded', None, seed=3, eval_batch_size=300)
  np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_evaluate_counts_every_example_once_despite_padding():
  """1,000 examples in batches of 300: the last batch is padded and masked."""
  config = helpers.tiny_config()
  config.eval_batch_size, config.num_grid_images = 300, 5
  run = build.assemble(config, bn_axis_name=parallel.AXIS)
  result, grid, counts, _ = loop.Evaluator(run, fid='off')(
      parallel.replicate(run.initial_state()), 0)
  assert counts.shape == (config.model.num_tokens, config.model.vocab_size)
  assert (counts.sum(1) == 1000).all()
  assert result['eval/num_examples'] == 1000
  assert grid[0].shape == grid[1].shape == (5, 28, 28, 1)
  assert 0 < result['codebook/used_fraction'] <= 1
  assert 1 <= result['codebook/perplexity'] <= config.model.vocab_size
  np.testing.assert_allclose(result['eval/elbo'], result['eval/log_p'] - result['eval/kl'],
                             rtol=1e-6)
  assert result['eval/kl'] >= 0 and np.isfinite(result['eval/psnr'])
