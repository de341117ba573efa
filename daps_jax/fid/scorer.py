"""FID of reconstructions over an evaluation pass.

`feature_sums_step` is pure: Inception features of a device's images, reduced to
sums (count, sum, outer) and summed over devices. `FidScorer` owns the Inception
weights and the reference statistics of a protocol; `begin`, `add` per
batch and `result` accumulate one pass over the validation split in float64 on
the host.

Protocols (spec section 6), named in every result:
  rfid     reconstructions vs the same validation originals. The originals'
           statistics are cached on disk (`statistics.cache_path`), keyed by
           dataset, split, resolution, preprocessing, weights and size, and
           computed in the first pass that misses the cache.
  authors  reconstructions vs precomputed reference statistics (a user's .npz
           of mu and sigma), as the paper did.

Shape legend: B images per device, H, W, C image size, F = 2048 features.
"""

import dataclasses

import jax
import numpy as np

from daps_jax import data
from daps_jax import parallel
from daps_jax.fid import inception
from daps_jax.fid import statistics
from daps_jax.fid import weights

# How originals become Inception inputs; part of the statistics cache key.
PREPROCESSING = 'unit->uint8 round, grey->rgb, bilinear resize, (u-128)/128'


def _largest_divisor(n: int, at_most: int) -> int:
  return max(d for d in range(1, min(n, at_most) + 1) if n % d == 0)


def feature_sums_step(params, images: jax.Array, mask: jax.Array, *, resolution: int,
                      chunk_size: int, axis_name: str | None = None) -> dict[str, jax.Array]:
  """Inception feature sums of a batch, summed over the device axis.

  Args:
    params: the FID InceptionV3 parameters.
    images: [B, H, W, C] in [0, 1] (C in {1, 3}).
    mask: [B] bool; False rows (padding) are not counted.
    resolution: the Inception input size (299 is the standard FID).
    chunk_size: at most this many images go through the network at once
      (`lax.map` over chunks), which bounds activation memory.
  Returns:
    {'count': [], 'sum': [F], 'outer': [F, F]} float32 (`statistics.feature_sums`).
  """
  num = images.shape[0]
  chunk = _largest_divisor(num, chunk_size)
  chunks = images.reshape(num // chunk, chunk, *images.shape[1:])
  features = jax.lax.map(
      lambda x: inception.features(params, x, resolution=resolution), chunks)
  sums = statistics.feature_sums(features.reshape(num, -1), mask)
  return sums if axis_name is None else jax.lax.psum(sums, axis_name)


@dataclasses.dataclass(frozen=True)
class Protocol:
  """What an FID is measured against; written into every result."""
  name: str  # 'rfid' or 'authors'.
  resolution: int
  weights_sha256: str
  reference: str  # The originals' split and cache file, or the user's .npz.

  def describe(self) -> dict:
    return dataclasses.asdict(self)


class FidScorer:
  """The Inception network on the devices, and the reference of a protocol."""

  def __init__(self, params, *, spec: data.DatasetSpec, num_examples: int, protocol: str,
               resolution: int, chunk_size: int, reference: str | None = None,
               stats_dir: str | None = None):
    """Puts the Inception `params` (`weights.load()`) on the devices and loads the
    reference statistics.

    Args:
      params: the FID InceptionV3 parameters.
      spec: the evaluated dataset (its name, eval split and map to [0, 1]).
      num_examples: the size of its eval split (part of the cache key).
      protocol: 'rfid' or 'authors' (module docstring).
      resolution: the Inception input size (299: the standard FID).
      chunk_size: images per Inception call on a device.
      reference: 'authors': the .npz of mu [2048] and sigma [2048, 2048].
      stats_dir: 'rfid': where the originals' statistics are cached (None:
        `statistics.default_stats_dir()`).
    Raises:
      statistics.StatsError: the authors' reference file or the cached
        statistics are missing keys, malformed or made for other settings.
    """
    self._params = parallel.replicate(params)
    self._spec = spec
    self._step = parallel.pmap_mapped(feature_sums_step, resolution=resolution,
                                      chunk_size=chunk_size)
    if protocol == 'authors':
      self._reference = statistics.load_reference(reference, num_features=2048)
      self._cache, described = None, reference
    else:
      self._fields = dict(dataset=spec.name, split=spec.eval_split, resolution=resolution,
                          preprocessing=PREPROCESSING, weights=weights.CHECKSUM,
                          num_examples=num_examples)
      self._cache = statistics.cache_path(stats_dir or statistics.default_stats_dir(),
                                          **self._fields)
      cached = statistics.load_stats(self._cache, self._fields)
      # Processes with their own disks may differ; all must make the same device calls.
      self._reference = cached[:2] if parallel.all_processes(cached is not None) else None
      described = f'{spec.name} {spec.eval_split} originals ({num_examples}), {self._cache}'
    self.protocol = Protocol(protocol, resolution, weights.CHECKSUM, described)
    self._fake = self._real = None

  @property
  def needs_originals(self) -> bool:
    """Whether a pass must see every validation original (their statistics are not cached)."""
    return self._reference is None

  def begin(self) -> None:
    """Starts a pass over the validation split: then `add` per batch, then `result`."""
    self._fake = statistics.FeatureStats()
    self._real = statistics.FeatureStats() if self._reference is None else None

  def add(self, reconstructions: jax.Array | None, batch: dict | None,
          fake_mask: np.ndarray | None = None) -> None:
    """One batch of the pass.

    Args:
      reconstructions: [D, B, H, W, C] in [0, 1] as `eval_step` left them on the
        devices (None: no images to score in this batch).
      batch: the host batch of originals {'inputs' (model space), 'mask' [b]}
        (None: past the end of the split).
      fake_mask: [b] bool, which of the reconstructions count (None: batch['mask']).
    Every process must pass None for the same batches.
    """
    if reconstructions is not None:
      mask = parallel.shard(batch['mask'] if fake_mask is None else fake_mask)
      self._fake.add(_host(self._step(self._params, reconstructions, mask)))
    if self._real is not None and batch is not None:
      mask = parallel.shard(batch['mask'])
      originals = np.clip(self._spec.to_unit(batch['inputs']), 0.0, 1.0)
      self._real.add(_host(self._step(self._params, parallel.shard(originals), mask)))

  def result(self) -> float:
    """The pass's FID (float64 Fréchet distance); caches the originals' statistics."""
    if self._real is not None:
      mu, sigma = self._real.mean(), self._real.covariance()
      statistics.save_stats(self._cache, mu, sigma, self._real.count, self._fields)
      self._reference = (mu, sigma)
    mu, sigma = self._reference
    return statistics.frechet_distance(self._fake.mean(), self._fake.covariance(), mu, sigma)


def _host(sums: dict) -> dict:
  """Device 0's copy of device-summed sums, as float64 numpy."""
  return {k: np.asarray(v, np.float64) for k, v in parallel.unreplicate(sums).items()}
