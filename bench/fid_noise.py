"""FID of a validation set against itself with Gaussian noise of growing strength.

  python -m bench.fid_noise --dataset=mnist_embedded --num_images=1000

A sanity check of the whole FID path (preprocessing, the Inception port,
feature statistics, the Fréchet distance): the FID of the originals against
themselves is ~0 and grows monotonically with the noise. Images in [0, 1]
(MNIST-family digits as grey levels, not binarised) get x + sigma * N(0, 1),
clipped. Prints a Markdown table and the device it ran on.
"""

import dataclasses
import tempfile
import time

from absl import app
from absl import flags
import jax
import numpy as np

from daps_jax import config_lib
from daps_jax import data
from daps_jax import parallel
from daps_jax.fid import scorer
from daps_jax.fid import weights

_DATASET = flags.DEFINE_string('dataset', 'mnist_embedded', 'A dataset of daps_jax.data.SPECS.')
_DATA_DIR = flags.DEFINE_string('data_dir', None, 'Its data directory.')
_NUM = flags.DEFINE_integer('num_images', 1000, 'Validation images used.')
_SIGMAS = flags.DEFINE_list('sigmas', ['0', '0.01', '0.02', '0.05', '0.1', '0.2', '0.4'],
                            'Noise standard deviations (images in [0, 1]).')
_RESOLUTION = flags.DEFINE_integer('resolution', 299, 'Inception input size.')
_BATCH = flags.DEFINE_integer('batch_size', 100, 'Images per call (divisible by devices).')


def _images(name: str, data_dir: str | None, num: int) -> np.ndarray:
  spec = data.get_spec(name)
  source = data.get_source(name, spec.eval_split, data_dir)
  num = min(num, len(source))
  images = np.stack([source[i]['image'] for i in range(num)]).astype(np.float32) / 255.0
  return images[:num - num % _BATCH.value]


def main(argv):
  del argv
  originals = _images(_DATASET.value, _DATA_DIR.value, _NUM.value)
  # Originals are passed in [0, 1]: a spec without standardisation leaves them as they are.
  spec = dataclasses.replace(data.get_spec(_DATASET.value), mean=None, std=None)
  fid = scorer.FidScorer(weights.load(), spec=spec, num_examples=len(originals), protocol='rfid',
                         resolution=_RESOLUTION.value,
                         chunk_size=config_lib.base_config().fid.chunk_size,
                         stats_dir=tempfile.mkdtemp())  # Keep these statistics out of the cache.
  noise = np.random.default_rng(0).normal(size=originals.shape).astype(np.float32)
  print(f'{_DATASET.value}: {len(originals)} images, Inception at {_RESOLUTION.value}, '
        f'{jax.device_count()} x {jax.devices()[0].device_kind}')
  print('| noise sigma | FID | seconds |\n| --: | --: | --: |')
  for sigma in map(float, _SIGMAS.value):
    start = time.time()
    noisy = np.clip(originals + sigma * noise, 0.0, 1.0)
    fid.begin()
    for i in range(0, len(originals), _BATCH.value):
      batch = {'inputs': originals[i:i + _BATCH.value], 'mask': np.ones(_BATCH.value, bool)}
      fid.add(parallel.shard(noisy[i:i + _BATCH.value]), batch)
    print(f'| {sigma:g} | {fid.result():.3f} | {time.time() - start:.1f} |')


if __name__ == '__main__':
  app.run(main)
