"""The FID InceptionV3 port: TorchScript reader, network, weights, preprocessing.

The port test compares with features that the TorchScript original computed in
torch (tests/fixtures/make_inception_reference.py) and needs the converted
weights on disk: without them it fails, naming `python -m daps_jax.fid.weights`.
"""

import functools
import json
import os
import struct
import zipfile

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from daps_jax.fid import inception
from daps_jax.fid import torchscript
from daps_jax.fid import weights
from tests.fixtures import make_inception_reference

FIXTURE = os.path.join(os.path.dirname(__file__), 'fixtures', 'inception_reference.npz')
TOLERANCE = 1e-4


@pytest.fixture(scope='module')
def reference() -> dict:
  with np.load(FIXTURE, allow_pickle=False) as data:
    return {key: data[key] for key in data.files}


@functools.cache
def _load_real_params() -> dict:
  return weights.load()


def real_params() -> dict:
  """The converted weights; a missing file fails the calling test (not skip, not
  error), with the message that names `python -m daps_jax.fid.weights`."""
  try:
    return _load_real_params()
  except weights.WeightsError as e:
    message = str(e)
  pytest.fail(message, pytrace=False)


# --- A hand-written TorchScript archive (pickle opcodes of protocol 2). ---

def _str(text: str) -> bytes:
  raw = text.encode()
  return b'X' + struct.pack('<I', len(raw)) + raw  # BINUNICODE


def _int(value: int) -> bytes:
  return b'J' + struct.pack('<i', value)  # BININT


def _tuple(*items: bytes) -> bytes:
  return b'(' + b''.join(items) + b't'  # MARK ... TUPLE


def _global(module: str, name: str) -> bytes:
  return b'c' + f'{module}\n{name}\n'.encode()  # GLOBAL


def _tensor(key: str, numel: int, offset: int, size, stride, storage='FloatStorage') -> bytes:
  """_rebuild_tensor_v2(<persistent storage>, offset, size, stride, False, OrderedDict())."""
  pid = _tuple(_str('storage'), _global('torch', storage), _str(key), _str('cpu'), _int(numel))
  args = _tuple(pid + b'Q', _int(offset), _tuple(*map(_int, size)), _tuple(*map(_int, stride)),
                b'\x89', _global('collections', 'OrderedDict') + b')R')
  return _global('torch._utils', '_rebuild_tensor_v2') + args + b'R'


def _int_list(*values: int) -> bytes:
  items = b'](' + b''.join(map(_int, values)) + b'e'  # EMPTY_LIST MARK ... APPENDS
  return _global('torch.jit._pickle', 'build_intlist') + _tuple(items) + b'R'


def _module(qualified: str, **state: bytes) -> bytes:
  """cls() via NEWOBJ, then BUILD with the dict state."""
  module, name = qualified.rsplit('.', 1)
  items = b''.join(_str(key) + value for key, value in state.items())
  return _global(module, name) + b')\x81}(' + items + b'ub'


def _archive(path, root: bytes, storages: dict[str, bytes]) -> str:
  with zipfile.ZipFile(path, 'w') as archive:
    archive.writestr('tiny/data.pkl', b'\x80\x02' + root + b'.')
    for key, raw in storages.items():
      archive.writestr(f'tiny/data/{key}', raw)
    archive.writestr('tiny/version', '3\n')
  return str(path)


def test_reader_round_trips_a_hand_built_archive(tmp_path):
  floats = np.arange(12, dtype='<f4') * 1.5
  longs = np.array([7, -3, 2**40], dtype='<i8')
  root = _module(
      '__torch__.tiny.Net', training=b'\x89', stride=_int(2), padding=_int_list(0, 3),
      # A transposed view into storage '0' from element 2: t[i, j] = floats[2 + i + 2j].
      weight=_tensor('0', 12, 2, (2, 3), (1, 2)),
      sub=_module('__torch__.tiny.Sub', training=b'\x88', bias=_tensor('0', 12, 0, (4,), (1,)),
                  count=_tensor('1', 3, 0, (3,), (1,), storage='LongStorage')))
  path = _archive(tmp_path / 'tiny.pt', root, {'0': floats.tobytes(), '1': longs.tobytes()})

  tensors = torchscript.read_torchscript(path)
  assert sorted(tensors) == ['sub.bias', 'sub.count', 'weight']
  expected = np.array([[floats[2 + i + 2 * j] for j in range(3)] for i in range(2)])
  np.testing.assert_array_equal(tensors['weight'], expected)
  assert tensors['weight'].flags.c_contiguous and tensors['weight'].dtype == np.float32
  np.testing.assert_array_equal(tensors['sub.bias'], floats[:4])
  np.testing.assert_array_equal(tensors['sub.count'], longs)
  assert tensors['sub.count'].dtype == np.int64
  assert torchscript.read_attributes(path) == {'stride': 2, 'padding': [0, 3]}
  assert torchscript.load_tree(path).qualified_name == '__torch__.tiny.Net'


def test_reader_errors(tmp_path):
  not_zip = tmp_path / 'model.pt'
  not_zip.write_bytes(b'not a zip file')
  with pytest.raises(ValueError, match='not a TorchScript archive'):
    torchscript.read_torchscript(str(not_zip))
  with pytest.raises(FileNotFoundError):
    torchscript.read_torchscript(str(tmp_path / 'absent.pt'))
  complex_storage = _archive(tmp_path / 'complex.pt', _module(
      '__torch__.tiny.Net', weight=_tensor('0', 1, 0, (1,), (1,), 'ComplexFloatStorage')),
      {'0': bytes(8)})
  with pytest.raises(ValueError, match='Unsupported storage type torch.ComplexFloatStorage'):
    torchscript.read_torchscript(complex_storage)
  past_end = _archive(tmp_path / 'short.pt', _module(
      '__torch__.tiny.Net', weight=_tensor('0', 4, 2, (3,), (1,))), {'0': bytes(16)})
  with pytest.raises(ValueError, match='reads past its storage'):
    torchscript.read_torchscript(past_end)
  foreign = _archive(tmp_path / 'foreign.pt', _global('os', 'system'), {})
  with pytest.raises(ValueError, match='os.system'):
    torchscript.read_torchscript(foreign)


# --- The network. ---

def test_shapes_and_final_pool():
  """Random weights at 75x75 (the smallest input) run; 299 gives an 8x8 last map.

  At 299 the last block's map is 8x8, so the reference's 8x8 stride-8 average
  pool is a single window over the whole map: exactly the global mean here.
  """
  model = inception.InceptionV3()
  x = jax.ShapeDtypeStruct((2, 299, 299, 3), jnp.float32)
  shapes = inception.param_shapes()

  def last_map(params, x):
    return model.apply({'params': params}, x, mutable=['intermediates'],
                       capture_intermediates=lambda mdl, _: mdl.name == 'mixed_10')

  out, state = jax.eval_shape(last_map, shapes, x)
  assert out.shape == (2, 2048) and out.dtype == jnp.float32
  assert state['intermediates']['mixed_10']['__call__'][0].shape == (2, 8, 8, 2048)
  grid = jax.random.normal(jax.random.key(0), (2, 8, 8, 16))
  np.testing.assert_allclose(nn.avg_pool(grid, (8, 8), (8, 8)).reshape(2, 16),
                             grid.mean(axis=(1, 2)), rtol=1e-6, atol=1e-6)
  assert len(inception.conv_geometry()) == 94

  params = jax.jit(model.init)(jax.random.key(1), jnp.zeros((1, 75, 75, 3)))['params']
  grey = jax.random.uniform(jax.random.key(2), (2, 40, 40, 1))
  feats = jax.jit(inception.features, static_argnames='resolution')(params, grey, resolution=75)
  assert feats.shape == (2, 2048) and bool(jnp.all(jnp.isfinite(feats)))
  with pytest.raises(ValueError, match='H, W >= 75'):
    model.init(jax.random.key(0), jnp.zeros((1, 74, 74, 3)))


def test_params_from_torchscript_uses_every_tensor_once(reference):
  """With torch's own names, shapes, strides and paddings of default_1.pt."""
  layout = json.loads(str(reference['layout']))
  geometry = json.loads(str(reference['geometry']))
  arrays = {name: np.zeros(shape, np.float32) for name, shape in layout.items()}
  attributes = {}
  for name, (stride, padding) in geometry.items():
    attributes[f'{name}.stride'], attributes[f'{name}.padding'] = stride, padding
  params = inception.params_from_torchscript(arrays, attributes)
  flat = inception.flatten(params)
  expected = inception.flatten(inception.param_shapes())
  assert len(arrays) == len(flat) == len(expected) == 376
  assert {k: v.shape for k, v in flat.items()} == {k: v.shape for k, v in expected.items()}

  with pytest.raises(ValueError, match='unused tensors'):
    inception.params_from_torchscript({**arrays, 'net.layers.extra.weight': np.zeros((1,) * 4)})
  del arrays['net.layers.mixed_9.tower_conv.beta']
  with pytest.raises(ValueError, match=r"missing parameters \['mixed_9/tower_conv/bias'\]"):
    inception.params_from_torchscript(arrays)
  arrays['net.layers.mixed_9.tower_conv.beta'] = np.zeros((384,), np.float32)
  attributes['net.layers.mixed_10.tower_mixed_conv.padding'] = [1, 0]
  with pytest.raises(ValueError, match='mixed_10/tower_mixed_conv: the file has stride 1'):
    inception.params_from_torchscript(arrays, attributes)


def test_port_matches_torchscript_features(reference):
  """Flax features of the fixture images vs the TorchScript model's, in torch."""
  images = make_inception_reference.reference_inputs()
  assert make_inception_reference.inputs_sha256(images) == str(reference['inputs_sha256'])
  ours = np.asarray(jax.jit(inception.features)(real_params(), images.astype(np.float32) / 255))
  theirs = reference['features']
  rel_l2 = np.max(np.linalg.norm(ours - theirs, axis=1) / np.linalg.norm(theirs, axis=1))
  rel_max = np.max(np.abs(ours - theirs)) / np.max(np.abs(theirs))
  print(f'port vs TorchScript: max relative L2 {rel_l2:.2e}, max|diff|/max|ref| {rel_max:.2e}')
  assert rel_l2 <= TOLERANCE and rel_max <= TOLERANCE, (rel_l2, rel_max)


# --- Weights file. ---

def test_load_errors_name_the_fix(tmp_path):
  missing = str(tmp_path / 'absent.npz')
  with pytest.raises(weights.MissingWeightsError, match='python -m daps_jax.fid.weights'):
    weights.load(missing)
  assert issubclass(weights.MissingWeightsError, FileNotFoundError)

  flat = inception.flatten(real_params())
  assert weights.checksum(dict(reversed(flat.items()))) == weights.CHECKSUM == weights.weights_id()
  tampered = dict(flat)
  tampered['conv/bias'] = tampered['conv/bias'].copy()
  tampered['conv/bias'][0] += 1e-3
  path = str(tmp_path / 'tampered.npz')
  weights.save(tampered, path)
  with pytest.raises(weights.CorruptWeightsError, match='checksum .* expected') as error:
    weights.load(path)
  assert 'python -m daps_jax.fid.weights' in str(error.value)
  assert isinstance(error.value, ValueError)

  garbage = tmp_path / 'garbage.npz'
  garbage.write_bytes(b'\x00' * 100)
  with pytest.raises(weights.CorruptWeightsError, match='unreadable'):
    weights.load(str(garbage))


def test_default_path_follows_the_environment(monkeypatch, tmp_path):
  monkeypatch.setenv(weights.ENV_VAR, str(tmp_path / 'w.npz'))
  assert weights.default_path() == str(tmp_path / 'w.npz')
  with pytest.raises(weights.WeightsError, match='python -m daps_jax.fid.weights`'):
    weights.load()
  monkeypatch.delenv(weights.ENV_VAR)
  assert weights.default_path().endswith(os.path.join('.cache', 'daps_jax', 'fid',
                                                      'inception_fid.npz'))


# --- Preprocessing. ---

def test_preprocess():
  levels = np.random.default_rng(0).integers(0, 256, (2, 299, 299, 3)).astype(np.float32)
  out = np.asarray(inception.preprocess(jnp.asarray(levels / 255)))
  np.testing.assert_array_equal(out, (levels - 128) / 128)  # 299 in: no resampling.

  grey = jax.random.uniform(jax.random.key(0), (2, 28, 28, 1), minval=-0.5, maxval=1.5)
  out = inception.preprocess(grey, size=80)
  assert out.shape == (2, 80, 80, 3)
  np.testing.assert_array_equal(out[..., 0], out[..., 1])
  np.testing.assert_array_equal(out[..., 0], out[..., 2])
  rgb = inception.preprocess(jnp.repeat(grey, 3, axis=-1), size=80)
  np.testing.assert_allclose(out, rgb, atol=1e-6)  # Grey is its three-channel copy.
  assert float(out.min()) >= -1.0 and float(out.max()) <= 127 / 128

  flat = inception.preprocess(jnp.full((1, 600, 500, 3), 0.5), size=299)
  np.testing.assert_allclose(flat, (128 - 128) / 128, atol=1e-6)  # round(127.5) = 128.
  with pytest.raises(ValueError, match='C in'):
    inception.preprocess(jnp.zeros((1, 8, 8, 2)))
