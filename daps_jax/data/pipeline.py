"""grain input pipelines: an endless, resumable train stream and eval batches.

Train: source -> shuffle (new order every epoch, from ``seed``) -> repeat ->
preprocess (augmentation and motion windows seeded by the global stream position) -> this
process's rows of every global batch -> batch. Every process must pass the same
``seed``: global batch k is examples [k B, (k + 1) B) of one global stream, and
process p of P reads its contiguous block [k B + p b, k B + (p + 1) b) (b = B /
P). So the global batch, row for row, does not depend on the number of
processes, and the iterator state (batches read) is the same on every process:
a run can resume on another process count with the same global batch.

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


class _ProcessRows(grain.MapDataset):
  """Process p's rows of each global batch of ``parent``.

  Local example m is global example (m // b) * B + p * b + m % b, with b the
  per-process batch and B = b * process_count. With ``num_batches``, the
  dataset has num_batches * b examples and those past the parent's end are
  ``padding``.
  """

  def __init__(self, parent: grain.MapDataset, *, batch_size: int, process_index: int,
               process_count: int, num_batches: int | None = None, padding: Any = None):
    super().__init__(parent)
    self._batch, self._index, self._count = batch_size, process_index, process_count
    self._num_batches, self._padding = num_batches, padding

  def __len__(self) -> int:
    if self._num_batches is not None:
      return self._num_batches * self._batch
    return len(self._parent) // self._count

  def __getitem__(self, index):
    if isinstance(index, slice):
      return self.slice(index)
    block, row = divmod(index, self._batch)
    position = (block * self._count + self._index) * self._batch + row
    return self._parent[position] if position < len(self._parent) else self._padding


class TrainLoader:
  """Endless iterator of ``{'inputs': float32 [batch_size, *spec.shape]}``.

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
    batch_size: examples per batch on this process (the global batch over
      ``process_count``).
    seed: shuffle and augmentation seed, the same on every process.
    process_index: this process, in [0, process_count).
    process_count: number of processes sharing the stream.
    worker_count: grain worker processes (0: decode in this process).

  Returns:
    A TrainLoader of ``{'inputs': float32 [batch_size, *spec.shape]}`` (model space).
  """
  if not 0 <= process_index < process_count:
    raise ValueError(f'process_index {process_index} not in [0, {process_count}).')
  spec = preprocess.get_spec(name, data_dir)
  source = get_source(name, spec.train_split, data_dir)
  ds = grain.MapDataset.source(source).seed(seed).shuffle().repeat()
  if spec.random_train:
    ds = ds.random_map(lambda ex, rng: {'inputs': preprocess.train_input(ex, spec, rng)})
  else:
    ds = ds.map(lambda ex: {'inputs': preprocess.eval_input(ex, spec)})
  ds = _ProcessRows(ds, batch_size=batch_size, process_index=process_index,
                    process_count=process_count)
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
  return len(get_source(name, preprocess.get_spec(name, data_dir).eval_split, data_dir))


def eval_batches(name: str, *, data_dir: PathLike | None, batch_size: int,
                 process_index: int = 0, process_count: int = 1,
                 split: str | None = None) -> Iterator[Batch]:
  """The eval split (or ``split``) of dataset ``name``, once, in order, for this process.

  Global batch k is examples [k B, (k + 1) B) (B = batch_size * P, P =
  process_count), and process p reads rows [p b, (p + 1) b) of it, as in
  training: the global batch does not depend on P. Every process yields
  ``ceil(N / B)`` batches, so they can join a collective per batch; slots past
  the end hold zero images with mask False. Missing data raises here, not at
  the first batch.

  Returns:
    An iterator of ``{'inputs': float32 [batch_size, *spec.shape],
    'mask': bool [batch_size], 'label': int64 [batch_size]}`` (label -1: none or padding).
  """
  if not 0 <= process_index < process_count:
    raise ValueError(f'process_index {process_index} not in [0, {process_count}).')
  spec = preprocess.get_spec(name, data_dir)
  source = get_source(name, split or spec.eval_split, data_dir)
  num_batches = math.ceil(len(source) / (batch_size * process_count))
  padding = {'inputs': np.zeros(spec.shape, np.float32), 'mask': False, 'label': np.int64(-1)}
  ds = (grain.MapDataset.source(source)
        .map(lambda ex: {'inputs': preprocess.eval_input(ex, spec), 'mask': True,
                         'label': np.int64(ex.get('label', -1))}))
  ds = _ProcessRows(ds, batch_size=batch_size, process_index=process_index,
                    process_count=process_count, num_batches=num_batches, padding=padding)
  return iter(ds.batch(batch_size).to_iter_dataset(_READ_OPTIONS))
