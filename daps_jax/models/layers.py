"""Transformer building blocks shared by the encoders.

Shape legend: B batch, T query length, S key/value length, D width, H heads, Dh = D / H.

All blocks are pre-LayerNorm. Attention projections carry no bias; kernels are
xavier-uniform and biases ~N(0, 1e-6), as in the paper's networks.
"""

from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

KERNEL_INIT = nn.initializers.xavier_uniform()
BIAS_INIT = nn.initializers.normal(stddev=1e-6)


def sincos_positions(length: int, width: int) -> np.ndarray:
  """Fixed sinusoidal encodings [length, width]: sin half then cos half."""
  if width % 2:
    raise ValueError(f'width must be even for sin/cos encodings, got {width}.')
  freqs = 1.0 / (10_000.0 ** (np.arange(width // 2) / (width // 2)))
  angles = np.arange(length)[:, None] * freqs[None, :]
  return np.concatenate([np.sin(angles), np.cos(angles)], axis=-1).astype(np.float32)


class KV(NamedTuple):
  """Keys and values, each [B, H, S, Dh] (heads before positions: the layout the
  attention matmuls read, so a cache is never transposed)."""
  k: jax.Array
  v: jax.Array


def dense(features: int, use_bias: bool = True) -> nn.Dense:
  return nn.Dense(features, use_bias=use_bias, kernel_init=KERNEL_INIT, bias_init=BIAS_INIT)


class Attention(nn.Module):
  """Multi-head dot-product attention with separable key/value projection.

  `project_kv` and `attend` let callers compute keys/values once (cross-attention
  memory) or keep them in a fixed-length cache (autoregressive decoding).
  """
  width: int
  num_heads: int

  def setup(self):
    if self.width % self.num_heads:
      raise ValueError(f'width {self.width} is not divisible by num_heads {self.num_heads}.')
    self.query = dense(self.width, use_bias=False)
    self.key = dense(self.width, use_bias=False)
    self.value = dense(self.width, use_bias=False)
    self.out = dense(self.width, use_bias=False)

  def _split(self, x: jax.Array) -> jax.Array:
    """[B, T, D] -> [B, H, T, Dh]."""
    x = x.reshape(*x.shape[:-1], self.num_heads, self.width // self.num_heads)
    return jnp.swapaxes(x, -2, -3)

  def project_kv(self, x: jax.Array) -> KV:
    """x [B, S, D] -> KV with k, v [B, H, S, Dh]."""
    return KV(self._split(self.key(x)), self._split(self.value(x)))

  def attend(self, x: jax.Array, kv: KV, mask: jax.Array | None = None) -> jax.Array:
    """Queries from x [B, T, D] over kv; mask broadcastable to [B, H, T, S]."""
    q = self._split(self.query(x))
    logits = jnp.einsum('bhtd,bhsd->bhts', q, kv.k) / np.sqrt(q.shape[-1]).astype(q.dtype)
    if mask is not None:
      logits = jnp.where(mask, logits, jnp.finfo(logits.dtype).min)
    probs = jax.nn.softmax(logits, axis=-1)
    y = jnp.einsum('bhts,bhsd->bthd', probs, kv.v)
    return self.out(y.reshape(*x.shape[:-1], self.width))

  def __call__(self, x: jax.Array, context: jax.Array, mask: jax.Array | None = None):
    return self.attend(x, self.project_kv(context), mask)


class MLP(nn.Module):
  """Dense(hidden) -> ReLU -> Dense(width)."""
  width: int
  hidden: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    return dense(self.width)(nn.relu(dense(self.hidden)(x)))


class EncoderBlock(nn.Module):
  """Bidirectional pre-LN block: x + SelfAttn(LN x); x + MLP(LN x)."""
  width: int
  num_heads: int
  mlp_ratio: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    h = nn.LayerNorm()(x)
    x = x + Attention(self.width, self.num_heads)(h, h)
    return x + MLP(self.width, self.mlp_ratio * self.width)(nn.LayerNorm()(x))


class DecoderBlock(nn.Module):
  """Causal pre-LN block with cross-attention to encoded patches.

  Two entry points with identical numbers: `__call__` (teacher forcing over the
  whole sequence) and `step` (one position against a fixed-length KV cache).
  """
  width: int
  num_heads: int
  mlp_ratio: int

  def setup(self):
    self.self_norm = nn.LayerNorm()
    self.self_attn = Attention(self.width, self.num_heads)
    self.cross_norm = nn.LayerNorm()
    self.cross_attn = Attention(self.width, self.num_heads)
    self.mlp_norm = nn.LayerNorm()
    self.mlp = MLP(self.width, self.mlp_ratio * self.width)

  def cross_kv(self, memory: jax.Array) -> KV:
    """Cross-attention keys/values [B, H, S, Dh] of the memory [B, S, D], computed once."""
    return self.cross_attn.project_kv(memory)

  def _finish(self, x: jax.Array, cross: KV) -> jax.Array:
    # x holds G >= 1 consecutive rows per memory row (the K samples of one input):
    # [G*B, T, D] -> [B, G*T, D] makes them extra queries against one copy of the
    # memory's keys/values, which are then read once per input, not once per sample.
    groups = x.shape[0] // cross.k.shape[0]
    h = self.cross_norm(x).reshape(cross.k.shape[0], groups * x.shape[1], self.width)
    x = x + self.cross_attn.attend(h, cross).reshape(x.shape)
    return x + self.mlp(self.mlp_norm(x))

  def __call__(self, x: jax.Array, cross: KV) -> jax.Array:
    """x [G*B, T, D] -> [G*B, T, D], causal over T; cross k, v [B, H, S, Dh]."""
    length = x.shape[1]
    causal = jnp.tril(jnp.ones((length, length), dtype=bool))
    h = self.self_norm(x)
    x = x + self.self_attn.attend(h, self.self_attn.project_kv(h), causal)
    return self._finish(x, cross)

  def step(self, x: jax.Array, position: jax.Array, cache: KV, cross: KV) -> tuple[jax.Array, KV]:
    """One position x [G*B, 1, D] at `position`; cache k, v [G*B, H, T, Dh] of fixed T."""
    h = self.self_norm(x)
    new = self.self_attn.project_kv(h)
    index = (0, 0, position, 0)
    cache = KV(jax.lax.dynamic_update_slice(cache.k, new.k, index),
               jax.lax.dynamic_update_slice(cache.v, new.v, index))
    visible = jnp.arange(cache.k.shape[2]) <= position
    x = x + self.self_attn.attend(h, cache, visible)
    return self._finish(x, cross), cache


class PatchTransformer(nn.Module):
  """Patch embedding + sin/cos positions + bidirectional blocks + final LN.

  patches [B, L, P] -> [B, L, D].
  """
  width: int
  num_layers: int
  num_heads: int
  mlp_ratio: int

  @nn.compact
  def __call__(self, patches: jax.Array) -> jax.Array:
    x = dense(self.width)(patches)
    x = x + sincos_positions(x.shape[1], self.width)
    for _ in range(self.num_layers):
      x = EncoderBlock(self.width, self.num_heads, self.mlp_ratio)(x)
    return nn.LayerNorm()(x)
