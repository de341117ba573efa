"""Property-based: any config override, any corruption of a data file or a checkpoint
ends in the project's one-line error (a `UserError` naming the field or file), or works;
never another exception, never a traceback for the user.
"""

import gzip
import os
import pathlib
import shutil
import tempfile

import hypothesis
from hypothesis import strategies as st
import jax
import ml_collections
import numpy as np
import pytest

from daps_jax import build
from daps_jax import checkpoint
from daps_jax import config_lib
from daps_jax import errors
from daps_jax.data import sources
from tests import helpers

_SETTINGS = hypothesis.settings(
    max_examples=60, deadline=None, derandomize=True,
    suppress_health_check=[hypothesis.HealthCheck.function_scoped_fixture])


def _fields(config: ml_collections.ConfigDict, prefix: str = '') -> list[str]:
  out = []
  for key, value in config.items():
    if isinstance(value, ml_collections.ConfigDict):
      out += _fields(value, f'{prefix}{key}.')
    else:
      out.append(f'{prefix}{key}')
  return out


_CONFIG = helpers.tiny_config()
_FIELDS = _fields(_CONFIG)
_VALUES = st.one_of(st.integers(-3, 10**6), st.floats(allow_nan=True, allow_infinity=True),
                    st.booleans(), st.none(), st.text(max_size=8),
                    st.tuples(st.integers(-2, 9)))


@_SETTINGS
@hypothesis.given(overrides=st.lists(st.tuples(st.one_of(st.sampled_from(_FIELDS),
                                                         st.text(min_size=1, max_size=12)),
                                               _VALUES), min_size=1, max_size=4))
def test_any_config_override_is_valid_or_one_user_error(overrides):
  """Set fields (or misspelt ones) to values of any type, then validate: either it is a
  config that builds, or a ConfigError / DataError whose message names a config field."""
  config = helpers.tiny_config()
  try:
    for dotted, value in overrides:
      try:
        config_lib.set_field(config, dotted, value)
      except (TypeError, ValueError) as e:  # ml_collections refuses a value of another type.
        raise errors.ConfigError(f'config.{dotted}: {e}') from e
    config_lib.validate(config)
    build.assemble(config)
  except errors.UserError as e:
    assert 'config.' in str(e) or 'dataset' in str(e).lower(), str(e)


def _write_idx(directory: pathlib.Path, images: np.ndarray, labels: np.ndarray) -> None:
  for split in ('train', 't10k'):
    header = (0x0803).to_bytes(4, 'big') + b''.join(d.to_bytes(4, 'big') for d in images.shape)
    (directory / f'{split}-images-idx3-ubyte.gz').write_bytes(
        gzip.compress(header + images.tobytes()))
    header = (0x0801).to_bytes(4, 'big') + len(labels).to_bytes(4, 'big')
    (directory / f'{split}-labels-idx1-ubyte.gz').write_bytes(
        gzip.compress(header + labels.tobytes()))


@_SETTINGS
@hypothesis.given(data=st.data())
def test_any_corrupted_idx_file_loads_or_names_the_file(tmp_path, data):
  directory = pathlib.Path(tempfile.mkdtemp(dir=tmp_path))
  rng = np.random.default_rng(0)
  _write_idx(directory, rng.integers(0, 256, (6, 28, 28), dtype=np.uint8),
             rng.integers(0, 10, 6, dtype=np.uint8))
  name = data.draw(st.sampled_from(sorted(os.listdir(directory))))
  path = directory / name
  raw = gzip.decompress(path.read_bytes()) if data.draw(st.booleans()) else path.read_bytes()
  cut = data.draw(st.integers(0, len(raw)))
  flips = data.draw(st.lists(st.integers(0, max(len(raw) - 1, 0)), max_size=4))
  corrupted = bytearray(raw[:cut] if data.draw(st.booleans()) else raw)
  for i in flips:
    if i < len(corrupted):
      corrupted[i] ^= 0xFF
  path.write_bytes(bytes(corrupted))
  sources.idx_source.cache_clear()
  try:
    for split in ('train', 'test'):
      source = sources.idx_source(str(directory), split)
      assert source is not None and source[0]['image'].shape == (28, 28, 1)
  except errors.DataError as e:
    assert str(directory) in str(e), str(e)


@pytest.fixture(scope='module')
def saved_run(tmp_path_factory):
  """A 2-step tiny run with a checkpoint at step 2, and its restore target."""
  from daps_jax import train  # pylint: disable=g-import-not-at-top
  workdir = tmp_path_factory.mktemp('run')
  config = helpers.tiny_config()
  config.eval_every_steps = 100
  train.train_and_evaluate(config, str(workdir))
  return workdir, jax.device_get(build.assemble(config).initial_state())


@_SETTINGS
@hypothesis.given(data=st.data())
def test_any_corrupted_checkpoint_restores_or_is_one_checkpoint_error(saved_run, tmp_path, data):
  workdir, target = saved_run
  copy = pathlib.Path(tempfile.mkdtemp(dir=tmp_path))
  shutil.copytree(workdir / 'checkpoints', copy / 'checkpoints')
  files = sorted(str(p.relative_to(copy)) for p in (copy / 'checkpoints' / '2').rglob('*')
                 if p.is_file())
  path = copy / data.draw(st.sampled_from(files))
  raw = path.read_bytes()
  action = data.draw(st.sampled_from(['truncate', 'flip', 'delete']))
  if action == 'delete':
    path.unlink()
  elif action == 'truncate':
    path.write_bytes(raw[:data.draw(st.integers(0, max(len(raw) - 1, 0)))])
  else:
    corrupted = bytearray(raw)
    for i in data.draw(st.lists(st.integers(0, max(len(raw) - 1, 0)), min_size=1, max_size=8)):
      if corrupted:
        corrupted[i] ^= 0xFF
    path.write_bytes(bytes(corrupted))
  ckpt = checkpoint.Checkpointer(str(copy), keep=3)
  try:
    step, state, _ = ckpt.restore_latest(target, fallback=False)
    # A corruption that orbax did not notice: the state has the target's structure.
    assert jax.tree.structure(state) == jax.tree.structure(target) and step in (0, 2)
  except errors.CheckpointError as e:
    message = str(e)  # Printed as the run's last line: one short line.
    assert 'checkpoint' in message.lower() and str(copy / 'checkpoints') in message, message
    assert '\n' not in message and len(message) < 800, message
  finally:
    ckpt.close()
