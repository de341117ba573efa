"""Decoders p_phi(x|z): codes [B, L, ...] -> likelihood parameters.

A `Decoder` is a `CodeEmbedding` (codes -> vectors [B, L, E]) followed by a
body. Codes are integer tokens [B, L], (relaxed or straight-through) one-hot
vectors [B, L, V] that multiply the embedding table, or, for FSQ, code vectors
[B, L, d] that a dense layer projects. VQ-VAE quantises against the embedding
table and enters at `trunk` with vectors [B, L, E].

Bodies: `MLPBody` (MNIST-size, any input shape): flatten, MLP -> logits [B, *shape].
`ResNetBody` (CIFAR, ImageNet; Gaussian): vectors on their (m, n) patch grid ->
Conv3x3 -> residual blocks -> log2(H/m) stride-2 transposed convolutions ->
[B, H, W, 2C] (mean and log-variance channels).
`MotionBody` (LAFAN1): token vectors [B, L, E] + sin/cos positions ->
bidirectional transformer -> Conv1D (kernel 4, stride L / T) -> ReLU ->
Dense -> [B, T, outputs] (the Gaussian mean, or mean and log-variance).
"""

import math
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from daps_jax.models import layers
from daps_jax.models import patching

EMBED_INIT = nn.initializers.variance_scaling(1.0, 'fan_in', 'normal', out_axis=0)


class CodeEmbedding(nn.Module):
  """Codes -> [B, L, E]: a [V, E] table, or Dense(E) of d-dim code vectors."""
  vocab_size: int
  features: int
  code_dim: int | None = None  # None: table lookup / one-hot product; d: FSQ projection.

  @nn.compact
  def __call__(self, codes: jax.Array) -> jax.Array:
    if self.code_dim is not None:
      return layers.dense(self.features)(codes)
    table = self.param('embedding', EMBED_INIT, (self.vocab_size, self.features))
    if jnp.issubdtype(codes.dtype, jnp.integer):
      return jnp.take(table, codes, axis=0)
    return codes @ table


class Decoder(nn.Module):
  """embed -> body; `trunk` skips the embedding (VQ-VAE feeds quantised vectors)."""
  embed: CodeEmbedding
  body: nn.Module

  def __call__(self, codes: jax.Array, train: bool = False) -> jax.Array:
    return self.body(self.embed(codes), train)

  def trunk(self, vectors: jax.Array, train: bool = False) -> jax.Array:
    return self.body(vectors, train)


class MLPBody(nn.Module):
  """[B, L, E] -> flatten -> [Dense, ReLU]* -> Dense(prod(shape)) logits [B, *shape]."""
  shape: tuple[int, ...]
  hidden_dims: Sequence[int] = (64, 256)

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    del train  # No train-time behaviour; kept for a common body interface.
    x = x.reshape(x.shape[0], -1)
    for hidden in self.hidden_dims:
      x = nn.relu(layers.dense(hidden)(x))
    return layers.dense(math.prod(self.shape))(x).reshape(-1, *self.shape)


class ResidualBlock(nn.Module):
  """x + BN(Conv1x1(ReLU(BN(Conv3x3(ReLU x)))))."""
  channels: int
  norm: type

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    h = nn.Conv(self.channels, (3, 3))(nn.relu(x))
    h = nn.Conv(self.channels, (1, 1))(nn.relu(self.norm()(h)))
    return x + self.norm()(h)


class ResNetBody(nn.Module):
  """[B, L, E] on the token grid -> [B, H, W, 2C] mean and log-variance."""
  num_tokens: int
  image_shape: tuple[int, int, int]
  channels: int = 64
  num_res_blocks: int = 2
  bn_axis_name: str | None = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    m, n = patching.grid_shape(self.num_tokens)
    height, width, out_channels = self.image_shape
    upsamples = (height // m).bit_length() - 1
    if m << upsamples != height or n << upsamples != width:
      raise ValueError(f'image {height}x{width} is not the {m}x{n} token grid times a power of 2.')
    norm = lambda: nn.BatchNorm(use_running_average=not train, momentum=0.99, epsilon=1e-5,
                                axis_name=self.bn_axis_name)
    x = nn.Conv(self.channels, (3, 3))(x.reshape(-1, m, n, x.shape[-1]))
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


class MotionBody(nn.Module):
  """[B, L, E] token vectors -> [B, T, outputs] per frame."""
  num_frames: int
  outputs: int
  num_layers: int = 2
  num_heads: int = 4
  mlp_ratio: int = 4

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    del train  # No train-time behaviour.
    stride, rest = divmod(x.shape[1], self.num_frames)
    if rest or not stride:
      raise ValueError(f'{x.shape[1]} tokens are not a multiple of {self.num_frames} frames.')
    width = x.shape[-1]
    x = x + layers.sincos_positions(x.shape[1], width)
    for _ in range(self.num_layers):
      x = layers.EncoderBlock(width, self.num_heads, self.mlp_ratio)(x)
    x = nn.Conv(width, (4,), strides=(stride,))(nn.LayerNorm()(x))
    return layers.dense(self.outputs)(nn.relu(x))


def motion_decoder(*, vocab_size: int, num_frames: int, outputs: int, embed_dim: int = 128,
                   num_layers: int = 2, code_dim: int | None = None) -> Decoder:
  """LAFAN1 decoder: Embed(V, E) -> transformer over tokens -> per-frame outputs."""
  return Decoder(CodeEmbedding(vocab_size, embed_dim, code_dim),
                 MotionBody(num_frames, outputs, num_layers))


def mlp_decoder(*, vocab_size: int, shape: tuple[int, ...], embed_dim: int = 64,
                hidden_dims: Sequence[int] = (64, 256), code_dim: int | None = None) -> Decoder:
  """MNIST-size decoder of inputs of any `shape`: Embed(V, E) -> flatten -> MLP -> logits."""
  return Decoder(CodeEmbedding(vocab_size, embed_dim, code_dim),
                 MLPBody(tuple(shape), tuple(hidden_dims)))


def resnet_decoder(*, vocab_size: int, num_tokens: int, image_shape: tuple[int, int, int],
                   embed_dim: int = 128, channels: int = 64, num_res_blocks: int = 2,
                   bn_axis_name: str | None = None, code_dim: int | None = None) -> Decoder:
  """CIFAR / ImageNet decoder: Embed(V, E) -> ResNet -> Gaussian mean, log-variance."""
  return Decoder(CodeEmbedding(vocab_size, embed_dim, code_dim),
                 ResNetBody(num_tokens, tuple(image_shape), channels, num_res_blocks,
                            bn_axis_name))
