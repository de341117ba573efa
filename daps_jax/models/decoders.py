"""Decoders p_phi(x|z): tokens [B, L] -> likelihood parameters.

`MLPDecoder` (MNIST-size, Bernoulli): embed each token, flatten, MLP -> logits
[B, H, W, C]. `ResNetDecoder` (CIFAR, ImageNet; Gaussian): tokens on their (m, n)
patch grid -> Conv3x3 -> residual blocks -> log2(H/m) stride-2 transposed
convolutions -> [B, H, W, 2C] (mean and log-variance channels).
"""

from typing import Sequence

import flax.linen as nn
import jax

from daps_jax.models import layers
from daps_jax.models import patching


class MLPDecoder(nn.Module):
  """Embed(V, E) -> flatten -> [Dense, ReLU]* -> Dense(H*W*C) Bernoulli logits."""
  vocab_size: int
  image_shape: tuple[int, int, int]
  embed_dim: int = 64
  hidden_dims: Sequence[int] = (64, 256)

  @nn.compact
  def __call__(self, tokens: jax.Array, train: bool = False) -> jax.Array:
    del train  # No train-time behaviour; kept for a common decoder interface.
    x = nn.Embed(self.vocab_size, self.embed_dim)(tokens)
    x = x.reshape(x.shape[0], -1)
    for hidden in self.hidden_dims:
      x = nn.relu(layers.dense(hidden)(x))
    size = self.image_shape[0] * self.image_shape[1] * self.image_shape[2]
    return layers.dense(size)(x).reshape(-1, *self.image_shape)


class ResidualBlock(nn.Module):
  """x + BN(Conv1x1(ReLU(BN(Conv3x3(ReLU x)))))."""
  channels: int
  norm: type

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    h = nn.Conv(self.channels, (3, 3))(nn.relu(x))
    h = nn.Conv(self.channels, (1, 1))(nn.relu(self.norm()(h)))
    return x + self.norm()(h)


class ResNetDecoder(nn.Module):
  """Convolutional decoder; output [B, H, W, 2C] = mean and log-variance."""
  vocab_size: int
  num_tokens: int
  image_shape: tuple[int, int, int]
  embed_dim: int = 128
  channels: int = 64
  num_res_blocks: int = 2
  bn_axis_name: str | None = None

  @nn.compact
  def __call__(self, tokens: jax.Array, train: bool = False) -> jax.Array:
    m, n = patching.grid_shape(self.num_tokens)
    height, width, out_channels = self.image_shape
    upsamples = (height // m).bit_length() - 1
    if m << upsamples != height or n << upsamples != width:
      raise ValueError(f'image {height}x{width} is not the {m}x{n} token grid times a power of 2.')
    norm = lambda: nn.BatchNorm(use_running_average=not train, momentum=0.99, epsilon=1e-5,
                                axis_name=self.bn_axis_name)
    x = nn.Embed(self.vocab_size, self.embed_dim)(tokens).reshape(-1, m, n, self.embed_dim)
    x = nn.Conv(self.channels, (3, 3))(x)
    for _ in range(self.num_res_blocks):
      x = ResidualBlock(self.channels, norm)(x)
    x = nn.relu(x)
    channels = self.channels
    for i in range(upsamples):
      last = i == upsamples - 1
      channels //= 2
      x = nn.ConvTranspose(2 * out_channels if last else channels, (4, 4), strides=(2, 2))(x)
      if not last:
        x = nn.relu(norm()(x))
    return x
