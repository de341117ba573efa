"""Feature statistics for FID: device-side sums, host-side float64 moments, the
Fréchet distance, and an on-disk cache of reference statistics.

Shape legend: N feature rows (images), F features (2048 for Inception pool3).

Pipeline: `feature_sums` reduces a batch of features to (count, sum, outer) in
float32 on the device (pure JAX, jit/pmap friendly; the caller psums it over the
device axis); `FeatureStats.add` accumulates those per-batch sums in float64 on
the host; `FeatureStats.mean`/`covariance` turn them into a Gaussian, and
`frechet_distance` compares two Gaussians in float64 on the host.

Accuracy of the float32-then-float64 accumulation: each batch's Σxxᵀ is a
float32 dot product over its B rows (relative error about sqrt(B) * 6e-8
typically); the sums over batches and devices are float64 and add nothing
measurable. The covariance (Σxxᵀ - n μμᵀ) / (n - 1) then amplifies that error by
E[x_i x_j] / |cov_ij|, which stays small for Inception pool features
(non-negative, O(0.1-5), mean and standard deviation of the same order).
Measured on Inception-like synthetic features (F = 2048, batches of B = 500,
CPU): covariance entries within 3e-7 (N = 20000) and 1.3e-6 (N = 1000) of the
largest entry; the FID within 1.3e-8 relative (N = 20000) and 2.8e-5 relative
(N = 1000, rank-deficient, where the FID is least smooth: 0.011 on an FID of
407) of the same FID from float64 statistics; round-off eigenvalues of
rank-deficient covariances down to -2e-6 of the largest. `frechet_distance`
itself agrees with a float64 `scipy.linalg.sqrtm` evaluation to 1e-15 relative
(F = 64) and 3e-13 (F = 2048) on full-rank covariances.
`FeatureStats.from_features` computes everything in float64.
"""

import hashlib
import json
import os
import zipfile
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from daps_jax import errors
from daps_jax import files

PathLike = str | os.PathLike[str]

# Length of the sha256 hex prefix that `cache_key` returns.
KEY_LENGTH = 12
# Environment variable that overrides `default_stats_dir`.
STATS_DIR_ENV = 'DAPS_JAX_FID_STATS'
# Eigenvalues (of a covariance, or of sigma1^1/2 sigma2 sigma1^1/2) below
# -PSD_TOLERANCE * (largest |eigenvalue|) mean the input is not a covariance;
# smaller negative ones are round-off and are clipped to 0. Covariances from
# float32 sums of rank-deficient sets (N < F) show round-off eigenvalues down to
# about -2e-6 of the largest, so the tolerance leaves a factor of ~500.
PSD_TOLERANCE = 1e-3
# A Fréchet distance below -DISTANCE_TOLERANCE * (tr sigma1 + tr sigma2 +
# |mu1 - mu2|^2) raises; a smaller negative value is round-off and returns 0.
# The round-off is that of the square roots of the ~F near-zero eigenvalues of
# sigma1^1/2 sigma2 sigma1^1/2 (each about sqrt(eps64) = 1.5e-8 of the largest
# covariance eigenvalue), so at most ~3e-5 of the traces for F = 2048, and
# observed at 2e-7.
DISTANCE_TOLERANCE = 1e-4
# Alternative key pairs accepted by `load_reference`, in order of preference.
REFERENCE_KEYS = (('mu', 'sigma'), ('mean', 'cov'))


class StatsError(errors.UserError):
  """Feature statistics are malformed, or a statistics file is missing or stale."""


# --- device side ---------------------------------------------------------------


def feature_sums(features: jax.Array, mask: jax.Array | None = None) -> dict[str, jax.Array]:
  """Count, sum and sum of outer products of the unmasked feature rows.

  Pure JAX; works under `jit`, `pmap` and `vmap`. Sums are additive, so the
  caller psums them over devices and `FeatureStats.add` sums them over batches.
  Masked rows are replaced by zeros before any arithmetic, so padding holding
  NaN or inf does not leak into the sums.

  Args:
    features: [N, F] features (any float dtype; computed in float32).
    mask: optional [N] bool; rows where it is False are not counted.

  Returns:
    {'count': [] float32 number of unmasked rows, 'sum': [F] float32 Σ x,
    'outer': [F, F] float32 Σ x xᵀ (a full-precision float32 matmul, also on
    GPUs/TPUs whose default would be TF32/bfloat16)}.
  """
  if features.ndim != 2:
    raise StatsError(f'features must be [N, F], got shape {features.shape}.')
  features = features.astype(jnp.float32)
  if mask is None:
    count = jnp.asarray(features.shape[0], jnp.float32)
  else:
    if mask.shape != features.shape[:1]:
      raise StatsError(f'mask must be [{features.shape[0]}] (one flag per feature row), '
                       f'got shape {mask.shape}.')
    mask = mask.astype(bool)
    features = jnp.where(mask[:, None], features, 0.0)
    count = mask.sum(dtype=jnp.float32)
  outer = jnp.matmul(features.T, features, precision=jax.lax.Precision.HIGHEST)
  return {'count': count, 'sum': features.sum(0), 'outer': outer}


# --- host side -----------------------------------------------------------------


class FeatureStats:
  """Float64 host accumulator of `feature_sums` outputs.

  Usage: `stats = FeatureStats()`, then `stats.add(sums)` per batch (the
  device-summed dict, converted to numpy), then `stats.mean()` and
  `stats.covariance()`.
  """

  def __init__(self):
    self._count = 0.0
    self._sum: np.ndarray | None = None
    self._outer: np.ndarray | None = None

  @classmethod
  def from_features(cls, features: np.ndarray) -> 'FeatureStats':
    """Statistics of all rows of a host array, computed in float64.

    Args:
      features: [N, F] features.

    Returns:
      A FeatureStats holding the N rows.
    """
    features = np.asarray(features, np.float64)
    if features.ndim != 2:
      raise StatsError(f'features must be [N, F], got shape {features.shape}.')
    stats = cls()
    stats.add({'count': features.shape[0], 'sum': features.sum(0),
               'outer': features.T @ features})
    return stats

  def add(self, sums: Mapping[str, Any]) -> None:
    """Adds one batch's sums (or several batches' sums, already added together).

    Args:
      sums: {'count': [], 'sum': [F], 'outer': [F, F]}, as from `feature_sums`
        (numpy or JAX arrays; accumulated in float64).
    """
    missing = [k for k in ('count', 'sum', 'outer') if k not in sums]
    if missing:
      raise StatsError('FeatureStats.add needs the keys count, sum and outer of '
                       f'feature_sums; missing {missing}.')
    count = np.asarray(sums['count'], np.float64)
    total = np.asarray(sums['sum'], np.float64)
    outer = np.asarray(sums['outer'], np.float64)
    if count.shape != ():
      raise StatsError(f"sums['count'] must be a scalar, got shape {count.shape}; pass "
                       'one device\'s copy of psummed sums, not the per-device stack.')
    num_features = _check_shapes(total, outer, "sums['sum']", "sums['outer']")
    if self._sum is None:
      self._sum, self._outer = np.zeros_like(total), np.zeros_like(outer)
    elif self._sum.shape != total.shape:
      raise StatsError(f'FeatureStats holds {self._sum.shape[0]} features but this batch '
                       f'has {num_features}; use one FeatureStats per feature extractor.')
    self._count += float(count)
    self._sum += total
    self._outer += outer

  @property
  def count(self) -> int:
    """Number of feature rows added so far."""
    return int(round(self._count))

  def _need(self, at_least: int, what: str) -> None:
    if self._sum is None or self.count < at_least:
      raise StatsError(f'FeatureStats.{what} needs at least {at_least} feature rows, has '
                       f'{self.count}; add more batches (check the mask and the split size).')

  def mean(self) -> np.ndarray:
    """[F] float64 mean of the rows added; needs at least 2 rows."""
    self._need(2, 'mean')
    return self._sum / self._count

  def covariance(self) -> np.ndarray:
    """[F, F] float64 unbiased covariance (divides by n - 1, like
    np.cov(rowvar=False)), exactly symmetric; needs at least 2 rows."""
    self._need(2, 'covariance')
    mean = self._sum / self._count
    cov = (self._outer - self._count * np.outer(mean, mean)) / (self._count - 1.0)
    return 0.5 * (cov + cov.T)


def _check_shapes(vector: np.ndarray, matrix: np.ndarray, vector_name: str,
                  matrix_name: str) -> int:
  """Checks vector [F] and matrix [F, F]; returns F."""
  if vector.ndim != 1:
    raise StatsError(f'{vector_name} must be [F], got shape {vector.shape}.')
  num_features = vector.shape[0]
  if matrix.shape != (num_features, num_features):
    raise StatsError(f'{matrix_name} must be [F, F] = [{num_features}, {num_features}] to match '
                     f'{vector_name}, got shape {matrix.shape}.')
  return num_features


def _gaussian(mu, sigma, mu_name: str, sigma_name: str) -> tuple[np.ndarray, np.ndarray]:
  """Validates one (mean [F], covariance [F, F]) pair and returns it as float64."""
  mu = np.asarray(mu, np.float64)
  sigma = np.asarray(sigma, np.float64)
  _check_shapes(mu, sigma, mu_name, sigma_name)
  for name, value in ((mu_name, mu), (sigma_name, sigma)):
    if not np.all(np.isfinite(value)):
      raise StatsError(f'{name} holds NaN or inf; recompute the statistics (too few rows, '
                       'or non-finite features).')
  return mu, 0.5 * (sigma + sigma.T)


def _clip_psd(eigenvalues: np.ndarray, what: str) -> np.ndarray:
  """Clips round-off negative eigenvalues to 0; raises on clearly negative ones."""
  largest = max(float(np.max(np.abs(eigenvalues))), np.finfo(np.float64).tiny)
  smallest = float(np.min(eigenvalues))
  if smallest < -PSD_TOLERANCE * largest:
    raise StatsError(f'{what} is not positive semi-definite: eigenvalue {smallest:.3g} '
                     f'against a largest of {largest:.3g}. Pass covariance matrices (e.g. '
                     'FeatureStats.covariance()), not another [F, F] array.')
  return np.maximum(eigenvalues, 0.0)


def _psd_root(sigma: np.ndarray, name: str) -> tuple[np.ndarray, float]:
  """(sigma^1/2, tr sigma) of a symmetric covariance, after clipping its round-off
  negative eigenvalues to 0 (the nearest PSD matrix)."""
  eigenvalues, eigenvectors = np.linalg.eigh(sigma)
  eigenvalues = _clip_psd(eigenvalues, name)
  return (eigenvectors * np.sqrt(eigenvalues)) @ eigenvectors.T, float(eigenvalues.sum())


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
  """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2), in float64.

  d = |mu1 - mu2|^2 + tr(sigma1) + tr(sigma2) - 2 tr((sigma1 sigma2)^1/2), with
  tr((sigma1 sigma2)^1/2) = Σ sqrt(eig(S sigma2 S)) where S = sigma1^1/2. Both
  square roots come from symmetric eigendecompositions (`np.linalg.eigh` of
  sigma1, `eigvalsh` of the symmetrised S sigma2 S), so, unlike a general
  `sqrtm`, nothing is complex and rank-deficient covariances (fewer rows than
  features) are fine.

  Round-off: both covariances are first projected onto the PSD cone, i.e. their
  negative eigenvalues down to -PSD_TOLERANCE of the largest are clipped to 0
  (beyond that the input is not a covariance and StatsError is raised), and the
  traces are those of the projected matrices, so that identical inputs give 0
  up to the round-off of the square roots (observed: 1e-15 of tr sigma1 + tr
  sigma2 for full rank; 2e-7 for rank-deficient F = 2048 covariances of 30-1000
  rows). A negative result down to -DISTANCE_TOLERANCE * (tr sigma1 +
  tr sigma2 + |mu1 - mu2|^2) is round-off and returns 0; beyond that
  StatsError is raised. At F = 2048 a call takes 1-3 s of host CPU.

  Args:
    mu1: [F] mean of the first set.
    sigma1: [F, F] covariance of the first set (symmetrised before use).
    mu2: [F] mean of the second set.
    sigma2: [F, F] covariance of the second set (symmetrised before use).

  Returns:
    The distance, a Python float >= 0.
  """
  mu1, sigma1 = _gaussian(mu1, sigma1, 'mu1', 'sigma1')
  mu2, sigma2 = _gaussian(mu2, sigma2, 'mu2', 'sigma2')
  if mu1.shape != mu2.shape:
    raise StatsError(f'mu1 and mu2 must have the same number of features, got {mu1.shape[0]} '
                     f'and {mu2.shape[0]}; both sets need the same feature extractor.')
  root1, trace1 = _psd_root(sigma1, 'sigma1')
  root2, trace2 = _psd_root(sigma2, 'sigma2')
  middle = root1 @ (root2 @ root2) @ root1
  middle = _clip_psd(np.linalg.eigvalsh(0.5 * (middle + middle.T)),
                     'sigma1^1/2 sigma2 sigma1^1/2')
  diff = mu1 - mu2
  distance_sq_means = float(diff @ diff)
  value = distance_sq_means + trace1 + trace2 - 2.0 * float(np.sqrt(middle).sum())
  if value < -DISTANCE_TOLERANCE * (trace1 + trace2 + distance_sq_means):
    raise StatsError(f'The Fréchet distance came out clearly negative ({value:.6g}); the '
                     'covariances are not valid (check that sigma1 and sigma2 are covariance '
                     'matrices of the features).')
  return max(value, 0.0)


# --- cache of reference statistics ---------------------------------------------


def default_stats_dir() -> str:
  """$DAPS_JAX_FID_STATS, else ~/.cache/daps_jax/fid/stats."""
  directory = os.environ.get(STATS_DIR_ENV) or '~/.cache/daps_jax/fid/stats'
  return os.path.expanduser(directory)


def _canonical(fields: Mapping[str, Any]) -> str:
  """Sorted, compact JSON of `fields`; tuples become lists."""
  for name, value in fields.items():
    try:
      json.dumps(value)
    except (TypeError, ValueError) as e:
      raise StatsError(f'Statistics cache field {name!r} = {value!r} is not JSON serialisable '
                       f'({e}); pass str, int, float, bool, None or lists of them.') from e
  return json.dumps(dict(fields), sort_keys=True, separators=(',', ':'), ensure_ascii=True)


def cache_key(**fields) -> str:
  """Stable key of the fields: the first KEY_LENGTH hex digits of the sha256 of
  their sorted JSON. Any change of any field's value (or a new field) changes it."""
  return hashlib.sha256(_canonical(fields).encode('utf-8')).hexdigest()[:KEY_LENGTH]


def _file_part(value) -> str:
  """A readable file-name fragment: [A-Za-z0-9._-] kept, anything else '-'."""
  if isinstance(value, (tuple, list)):
    value = 'x'.join(str(v) for v in value)
  return ''.join(c if c.isascii() and (c.isalnum() or c in '._-') else '-' for c in str(value))


def cache_path(directory: PathLike | None, *, dataset: str, split: str, resolution,
               preprocessing: str, weights: str, num_examples: int) -> str:
  """Where the statistics of a reference set are cached.

  Args:
    directory: the cache directory; None means `default_stats_dir()`.
    dataset: dataset name, e.g. 'imagenet2012'.
    split: split name, e.g. 'validation'.
    resolution: the feature extractor's input size (int, or a tuple).
    preprocessing: a description of how images become network inputs.
    weights: the feature extractor's weights checksum.
    num_examples: how many images the statistics cover.

  Returns:
    `{directory}/{dataset}_{split}_{resolution}_{key}.npz`, where key is
    `cache_key` of all six fields. Pass the same six fields, as a dict, to
    `save_stats` and `load_stats`.
  """
  key = cache_key(dataset=dataset, split=split, resolution=resolution,
                  preprocessing=preprocessing, weights=weights, num_examples=num_examples)
  name = f'{_file_part(dataset)}_{_file_part(split)}_{_file_part(resolution)}_{key}.npz'
  return os.path.join(os.path.expanduser(os.fspath(directory or default_stats_dir())), name)


def save_stats(path: PathLike, mu, sigma, count: int, fields: Mapping[str, Any]) -> None:
  """Writes statistics atomically (a temporary file, then os.replace).

  Creates the parent directory. The file is an .npz of 'mu' [F] and 'sigma'
  [F, F] float64, 'count' int64 and 'fields' (their sorted JSON), so it is also
  a valid `load_reference` file.

  Args:
    path: the destination, e.g. from `cache_path`.
    mu: [F] mean.
    sigma: [F, F] covariance.
    count: number of images the statistics cover.
    fields: what the statistics were computed from (the `cache_path` fields).
  """
  mu, sigma = _gaussian(mu, sigma, 'mu', 'sigma')
  with files.atomic_open(os.path.expanduser(os.fspath(path)), 'wb') as f:
    np.savez(f, mu=mu, sigma=sigma, count=np.int64(int(count)), fields=np.array(_canonical(fields)))


def load_stats(path: PathLike, fields: Mapping[str, Any]
               ) -> tuple[np.ndarray, np.ndarray, int] | None:
  """Reads statistics written by `save_stats`, checking what they were computed from.

  Args:
    path: the cache file, e.g. from `cache_path`.
    fields: what the statistics must have been computed from.

  Returns:
    (mu [F] float64, sigma [F, F] float64, count), or None when the file does
    not exist.

  Raises:
    StatsError: the file exists but is unreadable, malformed, or was computed
      from other fields (the message says to delete it).
  """
  path = os.path.expanduser(os.fspath(path))
  if not os.path.exists(path):
    return None
  delete = f'Delete {path} and the statistics will be recomputed.'
  try:
    with np.load(path, allow_pickle=False) as archive:
      stored = {k: archive[k] for k in ('mu', 'sigma', 'count', 'fields')}
    stored_fields = json.loads(str(stored['fields']))
    mu, sigma = _gaussian(stored['mu'], stored['sigma'], 'mu', 'sigma')
    count = int(stored['count'])
  except (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile) as e:
    raise StatsError(f'Cannot read the FID statistics cache {path}: {e}. {delete}') from e
  expected = json.loads(_canonical(fields))
  if stored_fields != expected:
    names = sorted(set(stored_fields) | set(expected))
    differences = [f'{n}: stored {stored_fields.get(n)!r}, expected {expected.get(n)!r}'
                   for n in names if stored_fields.get(n) != expected.get(n)]
    raise StatsError(f'The FID statistics cache {path} was computed from other settings ('
                     + '; '.join(differences) + f'). {delete}')
  return mu, sigma, count


def load_reference(path: PathLike, num_features: int | None = None
                   ) -> tuple[np.ndarray, np.ndarray]:
  """Reads precomputed reference statistics (the 'authors' protocol).

  The file must be an .npz holding 'mu' [F] and 'sigma' [F, F] (the layout of
  pytorch-fid, TTUR and clean-fid statistics, and of `save_stats`); the pair
  'mean' [F] and 'cov' [F, F] is accepted when 'mu'/'sigma' are absent. The two
  pairs are never mixed. Other arrays in the file are ignored.

  Args:
    path: the .npz file.
    num_features: when given, F must equal it (2048 for Inception pool3).

  Returns:
    (mu [F] float64, sigma [F, F] float64, symmetrised).
  """
  path = os.path.expanduser(os.fspath(path))
  layout = ("an .npz with arrays 'mu' [F] and 'sigma' [F, F] (or 'mean' and 'cov'), e.g. "
            "np.savez(path, mu=mu, sigma=sigma)")
  if not os.path.isfile(path):
    raise StatsError(f'The FID reference statistics file {path} does not exist; it must be '
                     f'{layout}.')
  try:
    archive = np.load(path, allow_pickle=False)
    if not isinstance(archive, np.lib.npyio.NpzFile):
      raise StatsError(f'The FID reference statistics file {path} is a single array, not '
                       f'{layout}.')
    with archive:
      keys = next((pair for pair in REFERENCE_KEYS if all(k in archive for k in pair)), None)
      if keys is None:
        raise StatsError(f'The FID reference statistics file {path} holds {sorted(archive)} '
                         f"but no 'mu' and 'sigma' (nor 'mean' and 'cov'); it must be {layout}.")
      mu, sigma = archive[keys[0]], archive[keys[1]]
  except StatsError:
    raise
  except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
    raise StatsError(f'Cannot read the FID reference statistics file {path} ({e}); it must be '
                     f'{layout}.') from e
  try:
    mu, sigma = _gaussian(mu, sigma, f"{path}['{keys[0]}']", f"{path}['{keys[1]}']")
  except StatsError as e:
    raise StatsError(f'{e} The file must be {layout}.') from e
  if num_features is not None and mu.shape[0] != num_features:
    raise StatsError(f'The FID reference statistics in {path} have F = {mu.shape[0]} features, '
                     f'expected {num_features} (Inception pool3 features for FID).')
  return mu, sigma
