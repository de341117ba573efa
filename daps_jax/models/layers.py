"""Transformer building blocks shared by the encoders.

Shape legend: B batch, T query length, S key/value length, D width, H heads, Dh = D / H.

All blocks are pre-LayerNorm. Attention projections carry no bias; kernels are
xavier-uniform and biases ~N(0, 1e-6), as in the paper's networks.

`dtype` is the computation dtype of a block's matmuls, LayerNorms and KV
(`model.dtype`, e.g. bfloat16); parameters stay float32 and attention's softmax
runs in float32.
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


def dense(features: int, use_bias: bool = True, dtype=jnp.float32) -> nn.Dense:
  return nn.Dense(features, use_bias=use_bias, kernel_init=KERNEL_INIT, bias_init=BIAS_INIT,
                  dtype=dtype)


def dot_product_attention(q: jax.Array, k: jax.Array, v: jax.Array,
                          mask: jax.Array | None = None,
                          query_chunk: int | None = None) -> jax.Array:
  """softmax(q k^T / sqrt(Dh)) v: q [B, H, T, Dh], k, v [B, H, S, Dh] -> [B, T, H, Dh].

  `mask` (True: attend) broadcasts to [B, H, T, S]. With `query_chunk` < T (it must
  divide T) the queries go `query_chunk` rows at a time through `lax.map`, each
  chunk rematerialised in the backward pass: only [B, H, query_chunk, S] maps are
  ever alive, forward or backward, instead of [B, H, T, S]; the same numbers (each
  row's softmax is its own).
  """
  def rows(q, mask):
    logits = jnp.einsum('bhtd,bhsd->bhts', q, k, preferred_element_type=jnp.float32)
    logits = logits / np.sqrt(q.shape[-1]).astype(np.float32)
    if mask is not None:
      logits = jnp.where(mask, logits, jnp.finfo(logits.dtype).min)
    return jnp.einsum('bhts,bhsd->bthd', jax.nn.softmax(logits, axis=-1).astype(v.dtype), v)

  b, h, t, dh = q.shape
  if not query_chunk or query_chunk >= t:
    return rows(q, mask)
  if t % query_chunk:
    raise ValueError(f'attention_chunk {query_chunk} does not divide the {t} queries.')
  n = t // query_chunk
  chunks = jnp.moveaxis(q.reshape(b, h, n, query_chunk, dh), 2, 0)  # [n, B, H, c, Dh]
  if mask is not None and mask.ndim >= 2 and mask.shape[-2] == t:  # Per-query rows.
    masks = jnp.moveaxis(mask.reshape(*mask.shape[:-2], n, query_chunk, mask.shape[-1]), -3, 0)
    out = jax.lax.map(jax.checkpoint(lambda a: rows(*a)), (chunks, masks))
  else:
    out = jax.lax.map(jax.checkpoint(lambda c: rows(c, mask)), chunks)
  return jnp.moveaxis(out, 0, 1).reshape(b, t, h, dh)  # [n, B, c, H, Dh] -> [B, T, H, Dh]


class Attention(nn.Module):
  """Multi-head dot-product attention with separable key/value projection.

  `project_kv` and `attend` let callers compute keys/values once (cross-attention
  memory) or keep them in a fixed-length cache (autoregressive decoding).
  `query_chunk` bounds the attention maps' memory (`dot_product_attention`).
  """
  width: int
  num_heads: int
  query_chunk: int | None = None
  dtype: jnp.dtype = jnp.float32

  def setup(self):
    if self.width % self.num_heads:
      raise ValueError(f'width {self.width} is not divisible by num_heads {self.num_heads}.')
    self.query = dense(self.width, use_bias=False, dtype=self.dtype)
    self.key = dense(self.width, use_bias=False, dtype=self.dtype)
    self.value = dense(self.width, use_bias=False, dtype=self.dtype)
    self.out = dense(self.width, use_bias=False, dtype=self.dtype)

  def _split(self, x: jax.Array) -> jax.Array:
    """[B, T, D] -> [B, H, T, Dh]."""
    x = x.reshape(*x.shape[:-1], self.num_heads, self.width // self.num_heads)
    return jnp.swapaxes(x, -2, -3)

  def project_kv(self, x: jax.Array) -> KV:
    """x [B, S, D] -> KV with k, v [B, H, S, Dh]."""
    return KV(self._split(self.key(x)), self._split(self.value(x)))

  def attend(self, x: jax.Array, kv: KV, mask: jax.Array | None = None) -> jax.Array:
    """Queries from x [B, T, D] over kv; mask broadcastable to [B, H, T, S]."""
    y = dot_product_attention(self._split(self.query(x)), kv.k, kv.v, mask, self.query_chunk)
    return self.out(y.reshape(*x.shape[:-1], self.width))

  def __call__(self, x: jax.Array, context: jax.Array, mask: jax.Array | None = None):
    return self.attend(x, self.project_kv(context), mask)


class MLP(nn.Module):
  """Dense(hidden) -> ReLU -> Dense(width)."""
  width: int
  hidden: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    return dense(self.width, dtype=self.dtype)(nn.relu(dense(self.hidden, dtype=self.dtype)(x)))


class EncoderBlock(nn.Module):
  """Bidirectional pre-LN block: x + SelfAttn(LN x); x + MLP(LN x)."""
  width: int
  num_heads: int
  mlp_ratio: int
  attention_chunk: int | None = None
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    h = nn.LayerNorm(dtype=self.dtype)(x)
    x = x + Attention(self.width, self.num_heads, self.attention_chunk, self.dtype)(h, h)
    return x + MLP(self.width, self.mlp_ratio * self.width, self.dtype)(
        nn.LayerNorm(dtype=self.dtype)(x))


class DecoderBlock(nn.Module):
  """Causal pre-LN block with cross-attention to encoded patches (or, with
  `cross_attention=False`, none: the code prior's block, which takes cross=None).

  Two entry points with identical numbers: `__call__` (teacher forcing over the
  whole sequence) and `step` (one position against a fixed-length KV cache).
  """
  width: int
  num_heads: int
  mlp_ratio: int
  attention_chunk: int | None = None
  cross_attention: bool = True
  dtype: jnp.dtype = jnp.float32

  def setup(self):
    self.self_norm = nn.LayerNorm(dtype=self.dtype)
    self.self_attn = Attention(self.width, self.num_heads, self.attention_chunk, self.dtype)
    if self.cross_attention:
      self.cross_norm = nn.LayerNorm(dtype=self.dtype)
      self.cross_attn = Attention(self.width, self.num_heads, self.attention_chunk, self.dtype)
    self.mlp_norm = nn.LayerNorm(dtype=self.dtype)
    self.mlp = MLP(self.width, self.mlp_ratio * self.width, self.dtype)

  def cross_kv(self, memory: jax.Array) -> KV:
    """Cross-attention keys/values [B, H, S, Dh] of the memory [B, S, D], computed once."""
    return self.cross_attn.project_kv(memory)

  def _finish(self, x: jax.Array, cross: KV | None) -> jax.Array:
    if not self.cross_attention:
      return x + self.mlp(self.mlp_norm(x))
    # x holds G >= 1 consecutive rows per memory row (the K samples of one input):
    # [G*B, T, D] -> [B, G*T, D] makes them extra queries against one copy of the
    # memory's keys/values, which are then read once per input, not once per sample.
    groups = x.shape[0] // cross.k.shape[0]
    h = self.cross_norm(x).reshape(cross.k.shape[0], groups * x.shape[1], self.width)
    x = x + self.cross_attn.attend(h, cross).reshape(x.shape)
    return x + self.mlp(self.mlp_norm(x))

  def __call__(self, x: jax.Array, cross: KV | None) -> jax.Array:
    """x [G*B, T, D] -> [G*B, T, D], causal over T; cross k, v [B, H, S, Dh]."""
    length = x.shape[1]
    causal = jnp.tril(jnp.ones((length, length), dtype=bool))
    h = self.self_norm(x)
    x = x + self.self_attn.attend(h, self.self_attn.project_kv(h), causal)
    return self._finish(x, cross)

  def step(self, x: jax.Array, position: jax.Array, cache: KV,
           cross: KV | None) -> tuple[jax.Array, KV]:
    """One position x [G*B, 1, D] at `position`; cache k, v [G*B, H, T, Dh] of fixed T."""
    h = self.self_norm(x)
    new = self.self_attn.project_kv(h)
    index = (0, 0, position, 0)
    cache = KV(jax.lax.dynamic_update_slice(cache.k, new.k, index),
               jax.lax.dynamic_update_slice(cache.v, new.v, index))
    visible = jnp.arange(cache.k.shape[2]) <= position
    x = x + self.self_attn.attend(h, cache, visible)
    return self._finish(x, cross), cache


def rematted(block: type[nn.Module], remat: bool) -> type[nn.Module]:
  """`block`, or `nn.remat(block)`: its `__call__` keeps only its inputs for the
  backward pass and recomputes the rest (attention maps included) there. The same
  numbers either way; parameter names are unchanged when callers name the blocks."""
  return nn.remat(block) if remat else block


class PatchTransformer(nn.Module):
  """Patch embedding + sin/cos positions + bidirectional blocks + final LN.

  patches [B, L, P] -> [B, L, D].
  """
  width: int
  num_layers: int
  num_heads: int
  mlp_ratio: int
  remat: bool = False
  attention_chunk: int | None = None
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, patches: jax.Array) -> jax.Array:
    x = dense(self.width, dtype=self.dtype)(patches)
    x = x + sincos_positions(x.shape[1], self.width).astype(x.dtype)
    block = rematted(EncoderBlock, self.remat)
    for i in range(self.num_layers):
      x = block(self.width, self.num_heads, self.mlp_ratio, self.attention_chunk, self.dtype,
                name=f'EncoderBlock_{i}')(x)
    return nn.LayerNorm(dtype=self.dtype)(x)
