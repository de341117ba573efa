"""Tests of daps_jax.fid.statistics: sums, moments, Fréchet distance and the cache."""

import os

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg

from daps_jax.fid import statistics


def random_spd(rng: np.random.Generator, dim: int) -> np.ndarray:
  """A full-rank symmetric positive definite [dim, dim] matrix, well conditioned."""
  a = rng.normal(size=(dim, 2 * dim)) / np.sqrt(2 * dim)
  return a @ a.T + 0.1 * np.eye(dim)


def scipy_frechet(mu1, sigma1, mu2, sigma2) -> float:
  """The textbook float64 formula with a general matrix square root."""
  root = scipy.linalg.sqrtm(sigma1 @ sigma2)
  return float(np.sum((mu1 - mu2)**2) + np.trace(sigma1 + sigma2 - 2 * root).real)


def inception_like(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
  """[n, dim] non-negative correlated features of size O(0.1-5), like pool3's."""
  mixing = rng.normal(size=(dim // 2, dim)) / np.sqrt(dim // 2)
  return np.maximum(rng.normal(size=(n, dim // 2)) @ mixing + 0.5, 0.0) * 2.0


# --- frechet_distance ----------------------------------------------------------


@pytest.mark.parametrize('seed', [0, 1, 2])
def test_frechet_matches_scipy_sqrtm_on_full_rank(seed):
  rng = np.random.default_rng(seed)
  dim = 64
  mu1, mu2 = rng.normal(size=dim), rng.normal(size=dim)
  sigma1, sigma2 = random_spd(rng, dim), random_spd(rng, dim)
  got = statistics.frechet_distance(mu1, sigma1, mu2, sigma2)
  assert isinstance(got, float)
  np.testing.assert_allclose(got, scipy_frechet(mu1, sigma1, mu2, sigma2), rtol=1e-8)


def test_frechet_closed_form_for_diagonal_covariances():
  rng = np.random.default_rng(3)
  a, b = rng.uniform(0.1, 5, size=32), rng.uniform(0.1, 5, size=32)
  mu1, mu2 = rng.normal(size=32), rng.normal(size=32)
  expected = np.sum((np.sqrt(a) - np.sqrt(b))**2) + np.sum((mu1 - mu2)**2)
  got = statistics.frechet_distance(mu1, np.diag(a), mu2, np.diag(b))
  np.testing.assert_allclose(got, expected, rtol=1e-12)


def test_frechet_of_identical_gaussians_is_zero():
  rng = np.random.default_rng(4)
  mu, sigma = rng.normal(size=64), random_spd(rng, 64)
  got = statistics.frechet_distance(mu, sigma, mu, sigma)
  assert 0.0 <= got <= 1e-8 * np.trace(sigma)


def test_frechet_is_symmetric():
  rng = np.random.default_rng(5)
  mu1, mu2 = rng.normal(size=48), rng.normal(size=48)
  sigma1, sigma2 = random_spd(rng, 48), random_spd(rng, 48)
  np.testing.assert_allclose(statistics.frechet_distance(mu1, sigma1, mu2, sigma2),
                             statistics.frechet_distance(mu2, sigma2, mu1, sigma1), rtol=1e-10)


def test_frechet_rank_deficient_matches_nuclear_norm_form():
  # N = 20 < F = 64: both covariances have rank 19. With sigma = A^T A,
  # tr((sigma1 sigma2)^1/2) is the nuclear norm of A1 A2^T, an independent route.
  rng = np.random.default_rng(6)
  n, dim = 20, 64
  x1, x2 = inception_like(rng, n, dim), inception_like(rng, n, dim) + 0.1
  s1, s2 = statistics.FeatureStats.from_features(x1), statistics.FeatureStats.from_features(x2)
  a1 = (x1 - x1.mean(0)) / np.sqrt(n - 1)
  a2 = (x2 - x2.mean(0)) / np.sqrt(n - 1)
  expected = (np.sum((s1.mean() - s2.mean())**2) + np.sum(a1**2) + np.sum(a2**2)
              - 2 * np.linalg.svd(a1 @ a2.T, compute_uv=False).sum())
  got = statistics.frechet_distance(s1.mean(), s1.covariance(), s2.mean(), s2.covariance())
  assert np.isfinite(got) and got >= 0
  np.testing.assert_allclose(got, expected, rtol=1e-6)
  self_distance = statistics.frechet_distance(s1.mean(), s1.covariance(), s1.mean(),
                                              s1.covariance())
  assert 0.0 <= self_distance <= 1e-6 * np.trace(s1.covariance())


def test_frechet_rank_deficient_from_float32_sums_is_finite_and_non_negative():
  rng = np.random.default_rng(7)
  features = inception_like(rng, 20, 64).astype(np.float32)
  stats = statistics.FeatureStats()
  stats.add(jax.tree.map(np.asarray, statistics.feature_sums(jnp.asarray(features))))
  mu, sigma = stats.mean(), stats.covariance()
  assert np.linalg.eigvalsh(sigma).min() < 0  # Round-off below zero: must be tolerated.
  self_distance = statistics.frechet_distance(mu, sigma, mu, sigma)
  assert 0.0 <= self_distance <= 1e-6 * np.trace(sigma)


def test_frechet_is_monotone_in_the_separation_of_two_gaussians():
  rng = np.random.default_rng(8)
  dim = 16
  sigma = random_spd(rng, dim)
  base = rng.multivariate_normal(np.zeros(dim), sigma, size=500)
  other = rng.multivariate_normal(np.zeros(dim), sigma, size=500)
  direction = rng.normal(size=dim)
  reference = statistics.FeatureStats.from_features(base)
  distances = []
  for t in (0.0, 0.25, 0.5, 1.0, 2.0, 4.0):
    moved = statistics.FeatureStats.from_features(other + t * direction)
    distances.append(statistics.frechet_distance(reference.mean(), reference.covariance(),
                                                 moved.mean(), moved.covariance()))
  assert np.all(np.diff(distances) > 0), distances
  assert distances[0] < 0.2 * distances[2]  # Sampling noise is small against a shift.


def test_frechet_validates_shapes_naming_the_argument():
  mu, sigma = np.zeros(4), np.eye(4)
  with pytest.raises(statistics.StatsError, match=r'mu1 must be \[F\]'):
    statistics.frechet_distance(np.zeros((4, 1)), sigma, mu, sigma)
  with pytest.raises(statistics.StatsError, match=r'sigma1 must be \[F, F\] = \[4, 4\]'):
    statistics.frechet_distance(mu, np.eye(3), mu, sigma)
  with pytest.raises(statistics.StatsError, match='sigma2 must be'):
    statistics.frechet_distance(mu, sigma, mu, np.eye(4)[:, :3])
  with pytest.raises(statistics.StatsError, match='mu1 and mu2 .* 4 and 5'):
    statistics.frechet_distance(mu, sigma, np.zeros(5), np.eye(5))
  with pytest.raises(statistics.StatsError, match='sigma2 holds NaN'):
    statistics.frechet_distance(mu, sigma, mu, np.full((4, 4), np.nan))
  assert issubclass(statistics.StatsError, ValueError)


def test_frechet_rejects_matrices_that_are_not_covariances():
  with pytest.raises(statistics.StatsError, match='sigma2 is not positive semi-definite'):
    statistics.frechet_distance(np.zeros(3), np.eye(3), np.zeros(3), np.diag([1.0, 1.0, -0.5]))


# --- feature_sums and FeatureStats ---------------------------------------------


def test_feature_sums_values_and_dtypes():
  x = jnp.array([[1.0, 2.0], [3.0, 4.0], [np.nan, 5.0]])
  sums = statistics.feature_sums(x, jnp.array([True, True, False]))  # NaN row is padding.
  chex.assert_shape((sums['count'], sums['sum'], sums['outer']), ((), (2,), (2, 2)))
  assert all(v.dtype == jnp.float32 for v in sums.values())
  np.testing.assert_array_equal(sums['count'], 2.0)
  np.testing.assert_array_equal(sums['sum'], [4.0, 6.0])
  np.testing.assert_array_equal(sums['outer'], [[10.0, 14.0], [14.0, 20.0]])


def test_masked_batches_give_numpy_mean_and_cov():
  rng = np.random.default_rng(9)
  features = inception_like(rng, 300, 32).astype(np.float32)
  mask = rng.uniform(size=300) < 0.7
  batches = np.split(np.arange(300), 6)
  stats = statistics.FeatureStats()
  step = jax.jit(statistics.feature_sums)
  for rows in batches:
    padded = np.where(mask[rows, None], features[rows], 1e3)  # Garbage in the padding.
    stats.add(jax.tree.map(np.asarray, step(jnp.asarray(padded), jnp.asarray(mask[rows]))))
  kept = features[mask].astype(np.float64)
  assert stats.count == mask.sum()
  expected_cov = np.cov(kept, rowvar=False)
  np.testing.assert_allclose(stats.mean(), kept.mean(0), rtol=1e-6)
  np.testing.assert_allclose(stats.covariance(), expected_cov,
                             atol=1e-6 * np.abs(expected_cov).max())
  np.testing.assert_array_equal(stats.covariance(), stats.covariance().T)


def test_float64_sums_and_from_features_match_numpy_exactly():
  rng = np.random.default_rng(10)
  features = rng.normal(size=(50, 8))
  stats = statistics.FeatureStats()
  for rows in np.array_split(features, 4):
    stats.add({'count': len(rows), 'sum': rows.sum(0), 'outer': rows.T @ rows})
  direct = statistics.FeatureStats.from_features(features)
  for s in (stats, direct):
    assert s.count == 50
    np.testing.assert_allclose(s.mean(), features.mean(0), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(s.covariance(), np.cov(features, rowvar=False), rtol=1e-10,
                               atol=1e-13)


def test_feature_sums_sharded_with_psum_equal_one_call():
  rng = np.random.default_rng(11)
  features = jnp.asarray(rng.uniform(0, 3, size=(64, 16)), jnp.float32)
  mask = jnp.asarray(rng.uniform(size=64) < 0.8)
  whole = statistics.feature_sums(features, mask)
  jitted = jax.jit(statistics.feature_sums)(features, mask)
  sharded = jax.vmap(
      lambda f, m: jax.lax.psum(statistics.feature_sums(f, m), 'd'), axis_name='d')(
          features.reshape(2, 32, 16), mask.reshape(2, 32))
  for name in ('count', 'sum', 'outer'):
    np.testing.assert_allclose(jitted[name], whole[name], rtol=1e-6)
    np.testing.assert_allclose(sharded[name][0], whole[name], rtol=1e-6)
    np.testing.assert_array_equal(sharded[name][0], sharded[name][1])


def test_feature_sums_without_mask_counts_every_row():
  sums = statistics.feature_sums(jnp.ones((5, 3)))
  np.testing.assert_array_equal(sums['count'], 5.0)
  np.testing.assert_array_equal(sums['outer'], np.full((3, 3), 5.0))


def test_feature_sums_and_stats_errors():
  with pytest.raises(statistics.StatsError, match=r'features must be \[N, F\]'):
    statistics.feature_sums(jnp.zeros((2, 3, 4)))
  with pytest.raises(statistics.StatsError, match=r'mask must be \[2\]'):
    statistics.feature_sums(jnp.zeros((2, 3)), jnp.ones((3,), bool))
  stats = statistics.FeatureStats.from_features(np.ones((1, 3)))
  with pytest.raises(statistics.StatsError, match='at least 2 feature rows, has 1'):
    stats.covariance()
  with pytest.raises(statistics.StatsError, match='at least 2'):
    statistics.FeatureStats().mean()
  with pytest.raises(statistics.StatsError, match='holds 3 features but this batch has 4'):
    stats.add({'count': 1, 'sum': np.ones(4), 'outer': np.ones((4, 4))})
  with pytest.raises(statistics.StatsError, match='missing'):
    stats.add({'count': 1, 'sum': np.ones(3)})
  with pytest.raises(statistics.StatsError, match='must be a scalar'):
    stats.add({'count': np.ones(2), 'sum': np.ones(3), 'outer': np.ones((3, 3))})


# --- cache ---------------------------------------------------------------------

FIELDS = dict(dataset='imagenet2012', split='validation', resolution=299,
              preprocessing='bilinear', weights='abc123', num_examples=50000)


def test_cache_key_is_stable_and_changes_with_every_field():
  key = statistics.cache_key(**FIELDS)
  assert len(key) == statistics.KEY_LENGTH and int(key, 16) >= 0
  assert statistics.cache_key(**dict(reversed(list(FIELDS.items())))) == key
  changed = dict(dataset='cifar10', split='train', resolution=256, preprocessing='lanczos',
                 weights='def456', num_examples=49999)
  keys = {statistics.cache_key(**{**FIELDS, name: value}) for name, value in changed.items()}
  assert len(keys) == len(changed) and key not in keys
  assert statistics.cache_key(**FIELDS, extra=1) != key
  with pytest.raises(statistics.StatsError, match="field 'weights'"):
    statistics.cache_key(**{**FIELDS, 'weights': object()})


def test_cache_path_is_readable(tmp_path):
  path = statistics.cache_path(tmp_path, **FIELDS)
  assert os.path.dirname(path) == str(tmp_path)
  assert os.path.basename(path) == (
      f'imagenet2012_validation_299_{statistics.cache_key(**FIELDS)}.npz')
  odd = statistics.cache_path(tmp_path, **{**FIELDS, 'split': 'train[:10%]',
                                           'resolution': (64, 48)})
  assert os.path.basename(odd).startswith('imagenet2012_train--10--_64x48_')


def test_default_stats_dir(monkeypatch):
  monkeypatch.setenv(statistics.STATS_DIR_ENV, '/somewhere/stats')
  assert statistics.default_stats_dir() == '/somewhere/stats'
  assert statistics.cache_path(None, **FIELDS).startswith('/somewhere/stats/')
  monkeypatch.delenv(statistics.STATS_DIR_ENV)
  assert statistics.default_stats_dir() == os.path.expanduser('~/.cache/daps_jax/fid/stats')


def test_save_load_round_trip(tmp_path):
  rng = np.random.default_rng(12)
  mu, sigma = rng.normal(size=8), random_spd(rng, 8)
  path = statistics.cache_path(tmp_path / 'new' / 'dir', **FIELDS)
  assert statistics.load_stats(path, FIELDS) is None  # Missing file.
  statistics.save_stats(path, mu, sigma, 1234, FIELDS)
  assert os.listdir(os.path.dirname(path)) == [os.path.basename(path)]  # No temp file left.
  got_mu, got_sigma, count = statistics.load_stats(path, FIELDS)
  np.testing.assert_array_equal(got_mu, mu)
  np.testing.assert_array_equal(got_sigma, sigma)
  assert count == 1234 and isinstance(count, int)
  # A cache file is also a valid reference file.
  ref_mu, ref_sigma = statistics.load_reference(path)
  np.testing.assert_array_equal(ref_mu, mu)
  np.testing.assert_array_equal(ref_sigma, sigma)
  # Overwriting replaces it.
  statistics.save_stats(path, mu + 1, sigma, 5, FIELDS)
  assert statistics.load_stats(path, FIELDS)[2] == 5


def test_load_stats_tuples_and_lists_are_the_same_field(tmp_path):
  fields = {**FIELDS, 'resolution': (64, 48)}
  path = tmp_path / 'stats.npz'
  statistics.save_stats(path, np.zeros(2), np.eye(2), 3, fields)
  assert statistics.load_stats(path, {**FIELDS, 'resolution': [64, 48]}) is not None


def test_load_stats_with_other_fields_raises(tmp_path):
  path = tmp_path / 'stats.npz'
  statistics.save_stats(path, np.zeros(2), np.eye(2), 3, FIELDS)
  with pytest.raises(statistics.StatsError,
                     match=r"num_examples: stored 50000, expected 10.*Delete .*stats\.npz"):
    statistics.load_stats(path, {**FIELDS, 'num_examples': 10})


def test_load_stats_of_unreadable_file_raises(tmp_path):
  path = tmp_path / 'stats.npz'
  path.write_bytes(b'not an npz archive')
  with pytest.raises(statistics.StatsError, match='Cannot read .*Delete'):
    statistics.load_stats(path, FIELDS)
  np.savez(path, mu=np.zeros(2))  # Readable, but no sigma, count or fields.
  with pytest.raises(statistics.StatsError, match='Cannot read .*Delete'):
    statistics.load_stats(path, FIELDS)


# --- load_reference -------------------------------------------------------------


def test_load_reference_reads_mu_sigma_and_mean_cov(tmp_path):
  mu, sigma = np.arange(3.0), np.diag([1.0, 2.0, 3.0])
  np.savez(tmp_path / 'a.npz', mu=mu, sigma=sigma, other=np.zeros(1))
  np.savez(tmp_path / 'b.npz', mean=mu, cov=sigma)
  for name in ('a.npz', 'b.npz'):
    got_mu, got_sigma = statistics.load_reference(tmp_path / name, num_features=3)
    np.testing.assert_array_equal(got_mu, mu)
    np.testing.assert_array_equal(got_sigma, sigma)
    assert got_mu.dtype == got_sigma.dtype == np.float64


def test_load_reference_errors(tmp_path):
  with pytest.raises(statistics.StatsError, match='missing.npz does not exist.*mu'):
    statistics.load_reference(tmp_path / 'missing.npz')
  np.savez(tmp_path / 'no_sigma.npz', mu=np.zeros(3))
  with pytest.raises(statistics.StatsError, match=r"no_sigma.npz holds \['mu'\] but no 'mu' and"):
    statistics.load_reference(tmp_path / 'no_sigma.npz')
  np.savez(tmp_path / 'mixed.npz', mu=np.zeros(3), cov=np.eye(3))  # Pairs are not mixed.
  with pytest.raises(statistics.StatsError, match='but no'):
    statistics.load_reference(tmp_path / 'mixed.npz')
  np.savez(tmp_path / 'shape.npz', mu=np.zeros(3), sigma=np.eye(4))
  with pytest.raises(statistics.StatsError,
                     match=r"shape.npz\['sigma'\] must be \[F, F\] = \[3, 3\].*must be an .npz"):
    statistics.load_reference(tmp_path / 'shape.npz')
  np.savez(tmp_path / 'f.npz', mu=np.zeros(3), sigma=np.eye(3))
  with pytest.raises(statistics.StatsError, match='F = 3 features, expected 2048'):
    statistics.load_reference(tmp_path / 'f.npz', num_features=2048)
  np.save(tmp_path / 'single.npy', np.zeros(3))
  with pytest.raises(statistics.StatsError, match='single array'):
    statistics.load_reference(tmp_path / 'single.npy')
  (tmp_path / 'junk.npz').write_bytes(b'junk')
  with pytest.raises(statistics.StatsError, match='Cannot read .*junk.npz'):
    statistics.load_reference(tmp_path / 'junk.npz')
