"""Image grids for inspecting reconstructions, and PNG output.

Shape legend: N images, H height, W width, C channels (1 or 3). Inputs are
float images in [0, 1]; outputs are uint8 RGB [H', W', 3].
"""

import math
import os
import pathlib

import numpy as np
from PIL import Image

GRID_COLUMNS = 8  # images per row of the grid.
GRID_MIN_WIDTH = 256  # small images are enlarged until the grid is this wide.
SEPARATOR = 2  # pixels between tiles.
SEPARATOR_VALUE = 128  # mid grey: visible on both black and white backgrounds.


def _to_rgb_uint8(images: np.ndarray) -> np.ndarray:
  """[N, H, W, C] floats in [0, 1] -> [N, H, W, 3] uint8."""
  images = np.round(np.clip(images, 0.0, 1.0) * 255.0).astype(np.uint8)
  return np.repeat(images, 3, axis=-1) if images.shape[-1] == 1 else images


def _tiles(rows: list[np.ndarray], cols: int) -> np.ndarray:
  """Rows of up to `cols` images [n, H, W, C] in [0, 1] -> one uint8 RGB grid.

  Tiles are separated by 2 grey pixels, enlarged by an integer nearest-neighbour
  factor when the grid would be narrower than 256 pixels; unused tiles stay grey.
  """
  height, width = rows[0].shape[1:3]
  scale = max(1, math.ceil(GRID_MIN_WIDTH / (cols * width)))
  tile_h, tile_w = height * scale + SEPARATOR, width * scale + SEPARATOR
  grid = np.full((len(rows) * tile_h - SEPARATOR, cols * tile_w - SEPARATOR, 3),
                 SEPARATOR_VALUE, np.uint8)
  for r, row in enumerate(rows):
    row = _to_rgb_uint8(row).repeat(scale, axis=1).repeat(scale, axis=2)
    for c, image in enumerate(row):
      grid[r * tile_h:r * tile_h + height * scale, c * tile_w:c * tile_w + width * scale] = image
  return grid


def _check_images(x: np.ndarray) -> None:
  if x.ndim != 4 or x.shape[-1] not in (1, 3):
    raise ValueError(f'images must be [N, H, W, 1 or 3], got {x.shape}.')
  if len(x) < 1:
    raise ValueError('an image grid needs at least one image.')


def reconstruction_grid(
    originals: np.ndarray, reconstructions: np.ndarray, max_images: int = 16
) -> np.ndarray:
  """Originals above their reconstructions, up to 8 pairs per row.

  The first min(N, max_images) pairs are laid out row by row: each row of
  originals is directly followed by the row of their reconstructions (tiles as
  in `image_grid`).

  Args:
    originals: [N, H, W, C] images in [0, 1], C in {1, 3}.
    reconstructions: [N, H, W, C], same shape.
    max_images: most pairs shown.

  Returns:
    uint8 [R * (2 * (s*H + 2)) - 2, cols * (s*W + 2) - 2, 3] with R pair-rows,
    cols = min(n, 8) columns and s the enlargement factor.
  """
  if originals.shape != reconstructions.shape:
    raise ValueError(
        f'shapes differ: originals {originals.shape}, reconstructions {reconstructions.shape}.')
  _check_images(originals)
  num = min(len(originals), max_images)
  if num < 1:
    raise ValueError(f'max_images must be >= 1, got {max_images}.')
  cols = min(num, GRID_COLUMNS)
  rows = []
  for start in range(0, num, cols):
    rows += [originals[start:min(start + cols, num)], reconstructions[start:min(start + cols, num)]]
  return _tiles(rows, cols)


def image_grid(images: np.ndarray, columns: int = GRID_COLUMNS) -> np.ndarray:
  """Images [N, H, W, C] in [0, 1] (C in {1, 3}), `columns` per row, as uint8 RGB
  [R * (s*H + 2) - 2, columns * (s*W + 2) - 2, 3] (R = ceil(N / columns) rows)."""
  _check_images(images)
  if columns < 1:
    raise ValueError(f'columns must be >= 1, got {columns}.')
  return _tiles([images[i:i + columns] for i in range(0, len(images), columns)], columns)


def save_png(path: str | os.PathLike[str], image: np.ndarray) -> None:
  """Saves a uint8 [H, W, C] image, C in {1, 3}, creating parent directories."""
  image = np.asarray(image)
  if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] not in (1, 3):
    raise ValueError(f'image must be uint8 [H, W, 1 or 3], got {image.dtype} {image.shape}.')
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(path)
