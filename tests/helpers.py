"""Tiny configs and networks shared by the tests."""

import os
import pathlib
import struct

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from tensorboardX.proto import event_pb2

from daps_jax import config_lib
from daps_jax import models

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The suite's persistent XLA cache, for the tests and the trainers they start.
XLA_CACHE = os.environ.get('DAPS_TEST_CACHE', '/tmp/daps_jax_test_xla_cache')


def cpu_env(devices: int = 1) -> dict[str, str]:
  """The environment of a subprocess on `devices` fake CPU devices."""
  return dict(os.environ, JAX_PLATFORMS='cpu',
              XLA_FLAGS=f'--xla_force_host_platform_device_count={devices}')


def load_config(name: str, arg: str | None = None) -> ml_collections.ConfigDict:
  return config_lib.load(os.path.join(REPO, 'configs', f'{name}.py'), arg)


def tiny_config(method: str = 'daps') -> ml_collections.ConfigDict:
  """configs/testing.py: MNIST-family networks shrunk to seconds, on the embedded digits."""
  return load_config('testing', f'method={method}')


def tiny_ar_encoder(vocab_size=3, num_tokens=2, width=8) -> models.AREncoder:
  return models.AREncoder(frontend=models.ImagePatches(), vocab_size=vocab_size,
                          num_tokens=num_tokens, width=width, encoder_layers=1,
                          decoder_layers=2, num_heads=2, mlp_ratio=2)


def tiny_na_encoder(vocab_size=3, num_tokens=2, width=8) -> models.NAEncoder:
  return models.NAEncoder(frontend=models.ImagePatches(), vocab_size=vocab_size,
                          num_tokens=num_tokens, width=width, num_layers=1, num_heads=2,
                          mlp_ratio=2)


def encoder_setup(kind: str, *, vocab_size: int, num_tokens: int, batch: int, seed: int):
  """(tiny 'ar' or 'na' encoder, its variables, binary images [batch, 8, 8, 1])."""
  make = tiny_ar_encoder if kind == 'ar' else tiny_na_encoder
  encoder = make(vocab_size=vocab_size, num_tokens=num_tokens)
  images = random_images(batch, seed=seed)
  return encoder, init(encoder, images, jnp.zeros((batch, num_tokens), jnp.int32)), images


def init(module, *args, seed=0, **kwargs):
  return jax.jit(lambda r: module.init(r, *args, **kwargs))(jax.random.key(seed))


def random_images(n: int, shape=(8, 8, 1), seed=0) -> jnp.ndarray:
  return jnp.asarray(np.random.default_rng(seed).random((n, *shape)) > 0.5, jnp.float32)


def all_sequences(vocab_size: int, length: int) -> np.ndarray:
  """Every sequence of `length` codes: [V**L, L] in lexicographic order."""
  grids = np.meshgrid(*[np.arange(vocab_size)] * length, indexing='ij')
  return np.stack([g.reshape(-1) for g in grids], axis=-1).astype(np.int32)


def read_events(tb_dir: pathlib.Path) -> list[event_pb2.Event]:
  """Every event of the TFRecord event files in `tb_dir`, file by file.

  Records are [u64 length][u32 crc][data][u32 crc]; `tensorboard` is not installed.
  """
  events = []
  for path in sorted(tb_dir.glob('events.out.tfevents.*')):
    data = path.read_bytes()
    offset = 0
    while offset < len(data):
      (length,) = struct.unpack('<Q', data[offset:offset + 8])
      events.append(event_pb2.Event.FromString(data[offset + 12:offset + 12 + length]))
      offset += 12 + length + 4
  return events


def read_summaries(tb_dir: pathlib.Path) -> list[tuple[int, str, float | None]]:
  """(step, tag, scalar or None for an image) from TFRecord event files."""
  return [(event.step, v.tag, v.simple_value if v.HasField('simple_value') else None)
          for event in read_events(tb_dir) for v in event.summary.value]
