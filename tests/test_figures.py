"""Tests of daps_jax.figures."""

import re
import time

from matplotlib import figure
import numpy as np
from PIL import Image
import pytest

from daps_jax import figures
from daps_jax import images
from daps_jax import metrics

HEIGHT, WIDTH = 400, 1000


def skewed_counts(num_positions: int, vocab: int, num_inputs: int, num_used: int,
                  seed: int = 0) -> np.ndarray:
  """[L, V] int32 counts of `num_inputs` codes per position, Zipf-like over `num_used` codes."""
  rng = np.random.default_rng(seed)
  probs = 1.0 / np.arange(1, num_used + 1)
  probs /= probs.sum()
  codes = rng.permutation(vocab)[:num_used]
  counts = np.zeros((num_positions, vocab), np.int32)
  for position in range(num_positions):
    counts[position, codes] = rng.multinomial(num_inputs, rng.permutation(probs))
  return counts


def pooled_usage(counts: np.ndarray) -> tuple[float, float]:
  """The pooled (used fraction, perplexity) of metrics.codebook_usage, which the figure shows."""
  usage = metrics.codebook_usage(counts)
  return usage['codebook/used_fraction'], usage['codebook/perplexity']


def one_code(shape):
  counts = np.zeros(shape, np.int32)
  counts[:, 7] = 100
  return counts


# --- the usage numbers the figure prints ----------------------------------------------


def test_pooled_usage_known_values():
  counts = np.zeros((4, 256), np.int64)
  counts[:, :64] = 5  # 64 codes, equally often: perplexity 64.
  assert pooled_usage(counts) == pytest.approx((0.25, 64.0))
  assert pooled_usage(np.zeros((2, 10))) == (0.0, 1.0)  # No codes: entropy 0.
  assert pooled_usage(one_code((8, 256))) == pytest.approx((1 / 256, 1.0))


@pytest.mark.parametrize('shape, seed', [((8, 256), 0), ((64, 512), 1), ((1, 1024), 3)])
def test_pooled_usage_matches_a_direct_float64_computation(shape, seed):
  rng = np.random.default_rng(seed)
  counts = rng.poisson(0.5, size=shape) * (rng.uniform(size=shape) < 0.3)
  pooled = counts.sum(0).astype(np.float64)
  p = pooled[pooled > 0] / pooled.sum()
  assert pooled_usage(counts) == pytest.approx((np.mean(pooled > 0),
                                                np.exp(-np.sum(p * np.log(p)))), rel=1e-12)


def test_pooled_usage_pools_large_counts_exactly():
  counts = np.full((1024, 4), 2**30, np.int32)  # the pooled sums overflow int32.
  assert pooled_usage(counts) == pytest.approx((1.0, 4.0))


# --- the figure ------------------------------------------------------------------


def test_figure_is_uint8_rgb_of_fixed_size():
  for shape in ((8, 256), (64, 512), (3, 240)):
    image = figures.codebook_figure(skewed_counts(*shape, num_inputs=500, num_used=100))
    assert image.dtype == np.uint8
    assert image.shape == (HEIGHT, WIDTH, 3)
    assert image.flags.c_contiguous
    assert len(np.unique(image.reshape(-1, 3), axis=0)) > 20  # not blank.


def test_figure_is_deterministic():
  counts = skewed_counts(8, 256, 1000, 180)
  first = figures.codebook_figure(counts, title='step 10')
  np.testing.assert_array_equal(figures.codebook_figure(counts, title='step 10'), first)
  np.testing.assert_array_equal(
      figures.codebook_figure(counts.astype(np.int64), title='step 10'), first)
  assert not np.array_equal(figures.codebook_figure(counts), first)  # the title is drawn.


def test_figure_can_be_saved_as_png(tmp_path):
  image = figures.codebook_figure(skewed_counts(8, 256, 1000, 180), title='step 0')
  path = tmp_path / 'codes' / 'codebook.png'
  images.save_png(path, image)
  np.testing.assert_array_equal(np.asarray(Image.open(path).convert('RGB')), image)


@pytest.mark.parametrize('name, counts', [
    ('one code', one_code((8, 256))),
    ('uniform', np.full((8, 240), 3, np.int32)),
    ('every code used', skewed_counts(16, 256, 2000, 256)),
    ('a position without counts', np.vstack([skewed_counts(3, 256, 100, 50),
                                            np.zeros((1, 256), np.int32)])),
    ('one position, one code', np.ones((1, 1), np.int32)),
])
def test_figure_renders_degenerate_histograms(name, counts):
  image = figures.codebook_figure(counts, title=name)
  assert image.shape == (HEIGHT, WIDTH, 3)


def test_figure_leaves_pyplot_alone():
  from matplotlib import pyplot  # pylint: disable=g-import-not-at-top
  before = pyplot.get_fignums()
  figures.codebook_figure(skewed_counts(8, 256, 100, 50))
  assert pyplot.get_fignums() == before


def test_large_histogram_renders(record_property):
  rng = np.random.default_rng(0)
  counts = rng.poisson(3.0, size=(1024, 1024)).astype(np.int32)  # ImageNet: 32x32 positions.
  start = time.perf_counter()
  image = figures.codebook_figure(counts, title='1024 x 1024')
  seconds = time.perf_counter() - start
  record_property('render_seconds', seconds)
  print(f'1024 x 1024 histogram rendered in {seconds:.2f} s')
  assert image.shape == (HEIGHT, WIDTH, 3)


def test_legend_shows_the_usage_of_metrics():
  counts = skewed_counts(8, 256, 1000, 180, seed=3)
  fig = figure.Figure()
  ax = fig.subplots()
  pooled = counts.sum(0).astype(np.float64)
  figures._plot_rank_frequency(ax, pooled, figures._rank_order(pooled), counts.shape[0])
  text = ' | '.join(t.get_text() for t in ax.get_legend().get_texts())
  used = re.search(r'used (\d+)/(\d+) = ([\d.]+)', text)
  perplexity = re.search(r'perplexity ([\d.]+)', text)
  assert used and perplexity, text
  expected_used, expected_perplexity = pooled_usage(counts)
  assert int(used[1]) == np.count_nonzero(pooled) and int(used[2]) == 256
  assert float(used[3]) == pytest.approx(expected_used, abs=5e-4)
  assert float(perplexity[1]) == pytest.approx(expected_perplexity, abs=0.05)
  assert f'unused: {256 - np.count_nonzero(pooled)} codes' in text


def test_rank_order_is_decreasing_with_ties_by_code():
  pooled = np.array([3.0, 0.0, 5.0, 3.0, 0.0, 9.0])
  np.testing.assert_array_equal(figures._rank_order(pooled), [5, 2, 0, 3, 1, 4])


# --- errors ----------------------------------------------------------------------


@pytest.mark.parametrize('counts, message', [
    (np.ones(256, np.int32), r'\[L, V\] histogram, got shape \(256,\)'),
    (np.ones((2, 8, 256), np.int32), r'\[L, V\] histogram, got shape \(2, 8, 256\)'),
    (np.ones((0, 256), np.int32), 'at least one position and one code'),
    (np.array([[1, -2], [3, 4]]), 'non-negative'),
    (np.array([[1.0, np.nan]]), 'finite'),
    (np.array([['a', 'b']]), 'integer counts'),
    (np.zeros((8, 256), np.int32), 'all zero: no codes were counted'),
])
def test_figure_errors(counts, message):
  with pytest.raises(ValueError, match=message):
    figures.codebook_figure(counts)


def test_usage_errors():
  with pytest.raises(ValueError, match='non-negative'):
    figures.codebook_figure(np.array([[1, -1]]))
  with pytest.raises(ValueError, match=r'\[L, V\]'):
    metrics.codebook_usage(np.ones(4))
