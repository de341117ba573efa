"""Per-dataset specifications and transforms from uint8 images to model space.

Model space (float32 [H, W, C]):
* mnist, mnist_embedded, fashion_mnist: fixed binarisation ``x > 127`` to
  {0., 1.}; Bernoulli likelihood.
* cifar10, imagenet2012: per-channel standardisation ``(x - mean) / std`` on
  the 0..255 scale; Gaussian likelihood.
* lafan1 (motion, `data.motion`): 32-frame windows of per-feature standardised
  motion features [32, C], stored standardised by `prepare`; Gaussian likelihood.
  Its spec is read from the prepared dataset (C depends on the clips' format).

ImageNet is trained on RandomResizedCrop to 256x256 (Szegedy et al. 2015, as
in torchvision: scale 0.08-1, log-uniform aspect ratio 3/4-4/3, 10 attempts,
then a centre crop) plus a horizontal flip with probability 0.5, and evaluated
on a bilinear resize to 256x256. The random draws come only from the ``rng``
argument, which grain seeds from the pipeline seed and the stream position.
"""

import dataclasses
import math
from typing import Any, TypeVar

import jax
import numpy as np
from PIL import Image

from daps_jax.errors import DataError

Array = TypeVar('Array', np.ndarray, jax.Array)


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
  """What the trainer needs to know about a dataset.

  Attributes:
    name: the dataset name (a key of ``SPECS``).
    shape: the shape of one model-space input; images: (H, W, C).
    likelihood: 'bernoulli' or 'gaussian'.
    mean: per-channel mean on the 0..255 scale, or None (binarised data).
    std: per-channel standard deviation on the 0..255 scale, or None.
    train_split: tfds split name used for training.
    eval_split: tfds split name used for validation.
    augment: whether training uses RandomResizedCrop + horizontal flip.
    modality: what an input is, and so the model front end that reads it
      (``models.frontends.FRONTENDS``): 'image' or 'motion'.
    data_range: per-channel (low, high) of the data units that `to_unit` maps to
      [0, 1]; None: (0, 255), pixels.
    feature_names: the name of each channel (motion features), or None.
  """
  name: str
  shape: tuple[int, ...]
  likelihood: str
  mean: tuple[float, ...] | None
  std: tuple[float, ...] | None
  train_split: str
  eval_split: str
  augment: bool = False
  modality: str = 'image'
  data_range: tuple[tuple[float, ...], tuple[float, ...]] | None = None
  feature_names: tuple[str, ...] | None = None

  @property
  def ordered_train_split(self) -> str:
    """The training split as fixed examples (motion: the tiling of the training clips)."""
    return 'train_windows' if self.modality == 'motion' else self.train_split

  @property
  def random_train(self) -> bool:
    """Whether a training example is drawn with an rng (augmentation, motion windows)."""
    return self.augment or self.modality == 'motion'

  def to_unit(self, x: Array) -> Array:
    """Maps model-space inputs [..., C] to data units scaled to [0, 1] by `data_range`.

    ``(x * std + mean - low) / (high - low)`` per channel for standardised data
    (images: ``(x * std + mean) / 255``; motion: min-max normalised features),
    identity for binarised data. No clipping (a decoder mean may leave [0, 1]).
    Plain arithmetic, so it works on numpy arrays and inside jitted JAX code alike.
    """
    if self.mean is None or self.std is None:
      return x
    mean = np.asarray(self.mean, np.float32)
    std = np.asarray(self.std, np.float32)
    if self.data_range is None:
      return (x * std + mean) / np.float32(255.0)
    low, high = (np.asarray(v, np.float32) for v in self.data_range)
    return (x * std + mean - low) / (high - low)


def _binary(name: str) -> DatasetSpec:
  return DatasetSpec(name, (28, 28, 1), 'bernoulli', None, None, 'train', 'test')


SPECS: dict[str, DatasetSpec] = {
    'mnist': _binary('mnist'),
    'mnist_embedded': _binary('mnist_embedded'),
    'fashion_mnist': _binary('fashion_mnist'),
    'cifar10': DatasetSpec(
        'cifar10', (32, 32, 3), 'gaussian', mean=(125.307, 122.950, 113.865),
        std=(62.993, 62.089, 66.705), train_split='train', eval_split='test'),
    'imagenet2012': DatasetSpec(
        'imagenet2012', (256, 256, 3), 'gaussian',
        mean=(123.095, 115.324, 102.224), std=(68.819, 66.551, 69.687),
        train_split='train', eval_split='validation', augment=True),
}


# Datasets whose spec is read from their prepared files (in the data dir), and
# their likelihoods, known before the files are.
PREPARED = {'lafan1': 'gaussian'}
NAMES = (*SPECS, *PREPARED)


def likelihood(name: str) -> str:
  """The likelihood of dataset ``name`` (without reading any data)."""
  return PREPARED[name] if name in PREPARED else get_spec(name).likelihood


def get_spec(name: str, data_dir: str | None = None) -> DatasetSpec:
  """The spec of dataset ``name``; DataError listing the valid names if unknown.

  ``data_dir`` is read only for the datasets of ``PREPARED`` (lafan1).
  """
  if name in PREPARED:
    from daps_jax.data import motion  # pylint: disable=g-import-not-at-top  # Imports this.
    return motion.spec(data_dir)
  if name not in SPECS:
    raise DataError(f'Unknown dataset {name!r}; valid names: {", ".join(NAMES)}.')
  return SPECS[name]


def _standardize(image: np.ndarray, spec: DatasetSpec) -> np.ndarray:
  """uint8 [H, W, C] -> float32 model space (binarised or standardised)."""
  if spec.mean is None or spec.std is None:
    return (image > 127).astype(np.float32)
  mean = np.asarray(spec.mean, np.float32)
  std = np.asarray(spec.std, np.float32)
  return (image.astype(np.float32) - mean) / std


def _resize(image: np.ndarray, size: int,
            box: tuple[int, int, int, int] | None = None) -> np.ndarray:
  """Bilinear (PIL) resize of uint8 [H, W, 3], or of its (left, top, right,
  bottom) ``box``, to [size, size, 3]."""
  resized = Image.fromarray(image).resize((size, size), Image.BILINEAR, box=box)
  return np.asarray(resized)


def random_resized_crop_box(height: int, width: int, rng: np.random.Generator,
                            scale: tuple[float, float] = (0.08, 1.0),
                            ratio: tuple[float, float] = (3 / 4, 4 / 3),
                            attempts: int = 10) -> tuple[int, int, int, int]:
  """The (left, top, right, bottom) crop of RandomResizedCrop.

  Tries ``attempts`` random crops with area fraction in ``scale`` and
  log-uniform aspect ratio (width / height) in ``ratio``; the first that fits
  wins. Otherwise a centre crop of the whole image, clamped to ``ratio``.
  """
  area = height * width
  log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
  for _ in range(attempts):
    target_area = area * rng.uniform(*scale)
    aspect = math.exp(rng.uniform(*log_ratio))
    w = round(math.sqrt(target_area * aspect))
    h = round(math.sqrt(target_area / aspect))
    if 0 < w <= width and 0 < h <= height:
      top = int(rng.integers(0, height - h + 1))
      left = int(rng.integers(0, width - w + 1))
      return left, top, left + w, top + h
  aspect = width / height
  if aspect < ratio[0]:
    w, h = width, round(width / ratio[0])
  elif aspect > ratio[1]:
    w, h = round(height * ratio[1]), height
  else:
    w, h = width, height
  top, left = (height - h) // 2, (width - w) // 2
  return left, top, left + w, top + h


def eval_input(example: dict[str, Any], spec: DatasetSpec) -> np.ndarray:
  """One eval example (uint8 'image' [H, W, C], or a float32 'motion' window) ->
  float32 spec.shape."""
  if spec.modality == 'motion':
    return np.asarray(example['motion'], np.float32)
  image = example['image']
  if spec.augment:
    image = _resize(image, spec.shape[0])
  return _standardize(image, spec)


def train_input(example: dict[str, Any], spec: DatasetSpec,
                rng: np.random.Generator) -> np.ndarray:
  """One train example -> float32 spec.shape: augmented if spec.augment; for
  motion, a random window of the example's clip.

  The crop, flip and window depend only on ``rng`` (and the input's size).
  """
  if spec.modality == 'motion':
    from daps_jax.data import motion  # pylint: disable=g-import-not-at-top  # Imports this.
    return np.asarray(motion.random_window(example['motion'], rng), np.float32)
  if not spec.augment:
    return eval_input(example, spec)
  image = example['image']
  box = random_resized_crop_box(image.shape[0], image.shape[1], rng)
  image = _resize(image, spec.shape[0], box)
  if rng.random() < 0.5:
    image = image[:, ::-1]
  return _standardize(image, spec)
