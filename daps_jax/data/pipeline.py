"""grain input pipelines: an endless, resumable train stream and eval batches.

Train: source -> shuffle (new order every epoch, from ``seed``) -> repeat ->
preprocess (augmentation seeded by the global stream position) -> shard by
process -> batch. Every process must pass the same ``seed``: the processes
then read disjoint strided slices of one global stream, and a resumed
iterator reproduces the batches of an uninterrupted run.

Eval: the full eval split in order, no augmentation, strided over processes,
the last batches padded so that every process yields the same number.
"""

import math
from collections.abc import Iterator
from typing import Any

import grain
import numpy as np
from absl import flags

from daps_jax.data import preprocess
from daps_jax.data.sources import PathLike, get_source

Batch = dict[str, np.ndarray]

# Threads and buffer count whole batches (batching precedes to_iter_dataset, so
# the stream does not depend on worker_count). grain's default buffer of 500
# would hold ~25 GB of ImageNet batches of 64.
_READ_OPTIONS = grain.ReadOptions(num_threads=4, prefetch_buffer_size=4)


class TrainLoader:
  """Endless iterator of ``{'image': float32 [batch_size, H, W, C]}``.

  ``get_state()`` is a JSON-serialisable dict; after ``set_state(state)`` the
  loader yields exactly what it yielded after ``state`` was taken.

  Attributes:
    num_examples: examples of the train split read by this process per epoch.
  """

  def __init__(self, dataset: grain.IterDataset, num_examples: int):
    self.num_examples = num_examples
    self._iterator = iter(dataset)

  def __iter__(self) -> 'TrainLoader':
    return self

  def __next__(self) -> Batch:
    return next(self._iterator)

  def get_state(self) -> dict[str, Any]:
    return self._iterator.get_state()

  def set_state(self, state: dict[str, Any]) -> None:
    self._iterator.set_state(state)

  def close(self) -> None:
    """Stops the worker processes, if any."""
    self._iterator.close()


def train_loader(name: str, *, data_dir: PathLike | None, batch_size: int,
                 seed: int, process_index: int = 0, process_count: int = 1,
                 worker_count: int = 0) -> TrainLoader:
  """The train stream of dataset ``name`` for this process.

  Args:
    name: a dataset of ``preprocess.SPECS``.
    data_dir: tfds data_dir or folder of IDX files (unused by mnist_embedded).
    batch_size: examples per batch on this process.
    seed: shuffle and augmentation seed, the same on every process.
    process_index: this process, in [0, process_count).
    process_count: number of processes sharing the stream.
    worker_count: grain worker processes (0: decode in this process).

  Returns:
    A TrainLoader of ``{'image': float32 [batch_size, *spec.image_shape]}``.
  """
  if not 0 <= process_index < process_count:
    raise ValueError(f'process_index {process_index} not in [0, {process_count}).')
  spec = preprocess.get_spec(name)
  source = get_source(name, spec.train_split, data_dir)
  ds = grain.MapDataset.source(source).seed(seed).shuffle().repeat()
  if spec.augment:
    ds = ds.random_map(lambda ex, rng: {'image': preprocess.train_image(ex, spec, rng)})
  else:
    ds = ds.map(lambda ex: {'image': preprocess.eval_image(ex, spec)})
  ds = ds.slice(slice(process_index, None, process_count))
  iter_ds = ds.batch(batch_size, drop_remainder=True).to_iter_dataset(_READ_OPTIONS)
  if worker_count > 0:
    # grain's workers read an absl flag; outside app.run nothing parsed them.
    if not flags.FLAGS.is_parsed():
      flags.FLAGS.mark_as_parsed()
    iter_ds = iter_ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=worker_count))
  num_examples = len(range(process_index, len(source), process_count))
  return TrainLoader(iter_ds, num_examples)


def num_eval_examples(name: str, data_dir: PathLike | None) -> int:
  """Size of the eval split of dataset ``name`` (all processes together)."""
  return len(get_source(name, preprocess.get_spec(name).eval_split, data_dir))


def eval_batches(name: str, *, data_dir: PathLike | None, batch_size: int,
                 process_index: int = 0,
                 process_count: int = 1) -> Iterator[Batch]:
  """The eval split of dataset ``name``, once, for this process.

  Process p reads examples p, p + P, p + 2P, ... (P = process_count). Every
  process yields ``ceil(N / (batch_size * P))`` batches, so they can join a
  collective per batch; pad slots hold zero images with mask False. Missing
  data raises here, not at the first batch.

  Returns:
    An iterator of ``{'image': float32 [batch_size, *spec.image_shape],
    'mask': bool [batch_size]}``.
  """
  if not 0 <= process_index < process_count:
    raise ValueError(f'process_index {process_index} not in [0, {process_count}).')
  spec = preprocess.get_spec(name)
  source = get_source(name, spec.eval_split, data_dir)
  num_batches = math.ceil(len(source) / (batch_size * process_count))
  ds = (grain.MapDataset.source(source)
        .slice(slice(process_index, None, process_count))
        .map(lambda ex: preprocess.eval_image(ex, spec))
        .batch(batch_size)
        .to_iter_dataset(_READ_OPTIONS))
  return _padded(iter(ds), num_batches, batch_size, spec.image_shape)


def _padded(images: Iterator[np.ndarray], num_batches: int, batch_size: int,
            image_shape: tuple[int, ...]) -> Iterator[Batch]:
  """Pads each batch of ``images`` to ``batch_size`` rows and the stream to
  ``num_batches`` batches, with zero images and mask False."""
  for _ in range(num_batches):
    batch = np.zeros((batch_size, *image_shape), np.float32)
    mask = np.zeros((batch_size,), bool)
    real = next(images, None)
    if real is not None:
      batch[:len(real)] = real
      mask[:len(real)] = True
    yield {'image': batch, 'mask': mask}
