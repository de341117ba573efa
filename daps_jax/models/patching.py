"""One latent token per image patch.

The patch grid (m, n) is the factor pair of L closest to a square (m <= n). Patch
sizes are rounded up to even numbers; the image is zero-padded, centred, on the
resulting canvas and cut into patches in raster order.
MNIST (L=8): canvas 28x32, 2x4 patches of 14x8; CIFAR (L=64): 8x8 of 4x4x3;
ImageNet-256 (L=1024): 32x32 of 8x8x3.
"""

import math

import jax
import jax.numpy as jnp


def grid_shape(num_tokens: int) -> tuple[int, int]:
  """Factor pair (m, n) of L with m <= n and m as large as possible."""
  if num_tokens < 1:
    raise ValueError(f'num_tokens must be positive, got {num_tokens}.')
  m = max(d for d in range(1, math.isqrt(num_tokens) + 1) if num_tokens % d == 0)
  return m, num_tokens // m


def _even_ceil(size: int, parts: int) -> int:
  p = -(-size // parts)
  return p + (p % 2)


def patch_shape(image_shape: tuple[int, int, int], num_tokens: int) -> tuple[int, int]:
  """(patch height, patch width) for an image [H, W, C] and L tokens."""
  m, n = grid_shape(num_tokens)
  return _even_ceil(image_shape[0], m), _even_ceil(image_shape[1], n)


def patch_dim(image_shape: tuple[int, int, int], num_tokens: int) -> int:
  ph, pw = patch_shape(image_shape, num_tokens)
  return ph * pw * image_shape[2]


def patchify(images: jax.Array, num_tokens: int) -> jax.Array:
  """images [B, H, W, C] -> patches [B, L, P] in raster order."""
  b, h, w, c = images.shape
  m, n = grid_shape(num_tokens)
  ph, pw = patch_shape((h, w, c), num_tokens)
  pad_h, pad_w = m * ph - h, n * pw - w
  images = jnp.pad(images, ((0, 0), (pad_h // 2, pad_h - pad_h // 2),
                            (pad_w // 2, pad_w - pad_w // 2), (0, 0)))
  patches = images.reshape(b, m, ph, n, pw, c).transpose(0, 1, 3, 2, 4, 5)
  return patches.reshape(b, m * n, ph * pw * c)
