"""Tests of daps_jax.metrics, daps_jax.writers and daps_jax.images."""

import json

from absl import logging
import chex
import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image
import pytest

from daps_jax import images
from daps_jax import metrics
from daps_jax import writers
from tests import helpers


# --- metrics -------------------------------------------------------------------


def test_psnr_matches_numpy_formula():
  rng = np.random.default_rng(0)
  x = rng.uniform(size=(5, 4, 6, 3)).astype(np.float32)
  y = rng.uniform(size=(5, 4, 6, 3)).astype(np.float32)
  expected = -10.0 * np.log10(np.mean((x - y) ** 2, axis=(1, 2, 3)))
  got = metrics.psnr(jnp.asarray(x), jnp.asarray(y))
  chex.assert_shape(got, (5,))
  np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_psnr_known_values_and_floor():
  x = jnp.full((2, 3, 3, 1), 0.5)
  y = x.at[0].add(0.1)  # constant error 0.1 -> mse 1e-2 -> 20 dB; image 1 exact.
  np.testing.assert_allclose(metrics.psnr(x, y), [20.0, 100.0], rtol=1e-5)


def test_psnr_clips_to_unit_range():
  x = jnp.array([[1.7, -0.3]])  # clipped to [1, 0]
  y = jnp.array([[0.9, 0.1]])  # errors 0.1, 0.1 -> 20 dB
  np.testing.assert_allclose(metrics.psnr(x, y), [20.0], rtol=1e-5)


def test_psnr_rejects_mismatched_shapes():
  with pytest.raises(ValueError, match='equal shapes'):
    metrics.psnr(jnp.zeros((2, 3)), jnp.zeros((2, 4)))


def test_code_counts_matches_bincount_with_mask():
  rng = np.random.default_rng(1)
  n, length, vocab = 37, 5, 11
  tokens = rng.integers(0, vocab, size=(n, length))
  mask = rng.uniform(size=n) < 0.6
  got = jax.jit(metrics.code_counts, static_argnums=1)(
      jnp.asarray(tokens), vocab, jnp.asarray(mask))
  expected = np.stack(
      [np.bincount(tokens[mask, l], minlength=vocab) for l in range(length)])
  chex.assert_shape(got, (length, vocab))
  np.testing.assert_array_equal(got, expected)
  unmasked = metrics.code_counts(jnp.asarray(tokens), vocab)
  np.testing.assert_array_equal(unmasked.sum(-1), np.full(length, n))


def test_codebook_usage_uniform_and_single_code():
  vocab = 8
  uniform = metrics.codebook_usage(jnp.full((3, vocab), 5, jnp.int32))
  np.testing.assert_allclose(uniform['codebook/used_fraction'], 1.0)
  np.testing.assert_allclose(uniform['codebook/perplexity'], vocab, rtol=1e-5)
  np.testing.assert_allclose(uniform['codebook/used_fraction_per_position'], 1.0)
  np.testing.assert_allclose(uniform['codebook/perplexity_per_position'], vocab, rtol=1e-5)
  single = metrics.codebook_usage(jnp.zeros((3, vocab), jnp.int32).at[:, 2].set(7))
  np.testing.assert_allclose(single['codebook/used_fraction'], 1 / vocab)
  np.testing.assert_allclose(single['codebook/perplexity'], 1.0)
  np.testing.assert_allclose(single['codebook/used_fraction_per_position'], 1 / vocab)
  np.testing.assert_allclose(single['codebook/perplexity_per_position'], 1.0)


def test_codebook_usage_per_position_differs_from_overall():
  # Position 0 always uses code 0, position 1 always code 1: each position has
  # perplexity 1 and uses 1/4 of the codes; pooled, two codes are equally likely.
  counts = jnp.array([[6, 0, 0, 0], [0, 6, 0, 0]])
  usage = metrics.codebook_usage(counts)
  np.testing.assert_allclose(usage['codebook/used_fraction'], 0.5)
  np.testing.assert_allclose(usage['codebook/perplexity'], 2.0, rtol=1e-6)
  np.testing.assert_allclose(usage['codebook/used_fraction_per_position'], 0.25)
  np.testing.assert_allclose(usage['codebook/perplexity_per_position'], 1.0, rtol=1e-6)


def test_codebook_usage_on_summed_counts_is_exact():
  # Counts from two "devices" are summed before usage, as psum would do.
  tokens = jnp.array([[0, 1], [2, 1], [3, 3], [0, 1]])
  part_a = metrics.code_counts(tokens[:2], 4)
  part_b = metrics.code_counts(tokens[2:], 4)
  usage = metrics.codebook_usage(part_a + part_b)
  # Pooled histogram over both positions: code 0: 2, 1: 3, 2: 1, 3: 2 (total 8).
  p = np.array([2, 3, 1, 2]) / 8
  np.testing.assert_allclose(usage['codebook/perplexity'], np.exp(-np.sum(p * np.log(p))),
                             rtol=1e-6)
  np.testing.assert_allclose(usage['codebook/used_fraction'], 1.0)
  # Position 0: codes {0: 2, 2: 1, 3: 1}; position 1: codes {1: 3, 3: 1}.
  p0, p1 = np.array([2, 1, 1]) / 4, np.array([3, 1]) / 4
  per_position = (np.exp(-np.sum(p0 * np.log(p0))) + np.exp(-np.sum(p1 * np.log(p1)))) / 2
  np.testing.assert_allclose(usage['codebook/perplexity_per_position'], per_position,
                             rtol=1e-6)
  np.testing.assert_allclose(usage['codebook/used_fraction_per_position'], (3 / 4 + 2 / 4) / 2)


def test_metric_writer_appends_jsonl_and_writes_tensorboard(tmp_path):
  with writers.MetricWriter(tmp_path) as writer:
    writer.write_scalars(1, {'train/loss': np.float32(0.5), 'eval/psnr': jnp.array(20.0)})
    writer.write_images(1, {'recon': np.zeros((4, 6, 3), np.uint8)})
  with writers.MetricWriter(tmp_path) as writer:  # a resumed run
    writer.write_scalars(2, {'train/loss': 0.25, 'bad': float('nan'), 'big': float('inf')})
  lines = (tmp_path / 'metrics.jsonl').read_text().splitlines()
  assert [json.loads(line) for line in lines] == [
      {'step': 1, 'train/loss': 0.5, 'eval/psnr': 20.0},
      {'step': 2, 'train/loss': 0.25, 'bad': None, 'big': None},
  ]
  summaries = helpers.read_summaries(tmp_path / 'tb')
  assert (1, 'train/loss', 0.5) in summaries
  assert (2, 'train/loss', 0.25) in summaries
  assert (1, 'eval/psnr', 20.0) in summaries
  assert (1, 'recon', None) in summaries


def test_metric_writer_rejects_float_images(tmp_path):
  with writers.MetricWriter(tmp_path) as writer:
    with pytest.raises(ValueError, match='uint8'):
      writer.write_images(0, {'x': np.zeros((4, 4, 3), np.float32)})


def test_non_writer_writes_nothing(tmp_path):
  workdir = tmp_path / 'run'
  with writers.MetricWriter(workdir, is_writer=False) as writer:
    writer.write_scalars(1, {'loss': 1.0})
    writer.write_images(1, {'recon': np.zeros((4, 4, 3), np.uint8)})
  assert not workdir.exists()


def test_format_duration():
  assert writers.format_duration(45.2) == '45s'
  assert writers.format_duration(520) == '8m40s'
  assert writers.format_duration(3 * 3600 + 5 * 60 + 12) == '3h05m12s'
  with pytest.raises(ValueError):
    writers.format_duration(-1.0)


def test_progress_logger_measures_window_since_last_report(monkeypatch):
  clock = iter([100.0, 110.0, 120.0])  # the first call waits out compilation
  logged = []
  monkeypatch.setattr(logging, 'info', lambda fmt, *args: logged.append(fmt % args))
  progress = writers.ProgressLogger(
      total_steps=5000, start_step=1000, every_steps=100, time_fn=lambda: next(clock))
  assert progress(1000) is None  # not past start_step: ignored, no clock read
  assert progress(1001) is None  # starts the clock at t=100
  assert progress(1100) == pytest.approx(9.9)  # 99 steps in 10 s
  assert progress(1150) is None  # not a reporting step: clock not read
  assert progress(1200) == pytest.approx(10.0)  # 100 steps in the last 10 s
  assert logged[-1] == 'step 1200/5000 (24.0%) | 10.00 steps/s | ETA 6m20s'


# --- images --------------------------------------------------------------------


def test_reconstruction_grid_layout():
  rng = np.random.default_rng(2)
  n, size = 10, 28
  originals = rng.uniform(size=(n, size, size, 1))
  recons = rng.uniform(size=(n, size, size, 1))
  grid = images.reconstruction_grid(originals, recons)
  scale, sep = 2, images.SEPARATOR  # 8 * 28 = 224 < 256 -> factor 2
  tile = size * scale + sep
  assert grid.dtype == np.uint8
  chex.assert_shape(grid, (4 * tile - sep, 8 * tile - sep, 3))
  assert grid.shape[1] >= 256

  # Image 9 is in pair-row 1, column 1: original at tile row 2, recon at tile row 3;
  # grid offset (5, 7) in its tile is pixel (2, 3) before the 2x enlargement.
  y0, x0 = 2 * tile, tile
  np.testing.assert_array_equal(grid[y0 + 5, x0 + 7], [np.round(originals[9, 2, 3, 0] * 255)] * 3)
  assert grid[y0 + tile + 5, x0 + 7, 0] == np.round(recons[9, 2, 3, 0] * 255)
  assert grid[0, 0, 0] == np.round(originals[0, 0, 0, 0] * 255)
  assert grid[tile - 1, 0, 0] == images.SEPARATOR_VALUE  # separator below a tile
  assert grid[y0, 3 * tile, 0] == images.SEPARATOR_VALUE  # unused tile


def test_reconstruction_grid_rgb_keeps_size_and_limits_count():
  x = np.full((20, 32, 32, 3), 0.25)
  grid = images.reconstruction_grid(x, 1.0 - x, max_images=16)
  chex.assert_shape(grid, (4 * 34 - 2, 8 * 34 - 2, 3))
  np.testing.assert_array_equal(grid[0, 0], [64, 64, 64])
  np.testing.assert_array_equal(grid[34, 0], [191, 191, 191])


def test_save_png_creates_directories(tmp_path):
  image = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
  path = tmp_path / 'a' / 'b' / 'grid.png'
  images.save_png(path, image)
  np.testing.assert_array_equal(np.asarray(Image.open(path)), image)
