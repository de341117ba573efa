"""Encoders q_theta(z|x) over L discrete tokens with V codes.

Shape legend: B batch, L latent tokens, V codebook size, D width, H heads,
Dh = D / H, N layers of the token decoder; inputs `x` are [B, ...] in model space.

Every encoder reads its inputs through a `frontend` (`models.frontends`: image
patches today), which gives one feature vector per token [B, L, P]; nothing
below it knows the modality.

`AREncoder`: a bidirectional transformer over the front end's tokens plus a
causal transformer over latent tokens with cross-attention to the encoded ones. The token input at
position t is the code sampled at t-1; position 0 gets a dedicated start token
(id V) that no code can equal, and nothing is masked but the future.
`NAEncoder`: a bidirectional transformer over the front end's tokens with independent per-token
logits (or, for VQ-VAE and FSQ, per-token continuous outputs).
`ValueNetwork`: a small per-token MLP that predicts a scalar return per input (PPO).

The AR encoder's token inputs may be integer codes or (straight-through) one-hot
vectors [.., V + 1] that multiply the embedding table, so a relaxed rollout can
carry gradients from one step to the next.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from daps_jax.models import layers


class AREncoder(nn.Module):
  """Autoregressive encoder; see the module docstring."""
  frontend: nn.Module
  vocab_size: int
  num_tokens: int
  width: int
  encoder_layers: int
  decoder_layers: int
  num_heads: int = 4
  mlp_ratio: int = 4
  remat: bool = False  # Recompute each block's activations in the backward pass.
  attention_chunk: int | None = None  # Queries per chunk of attention (None: all at once).
  dtype: jnp.dtype = jnp.float32  # Matmuls, LayerNorms and KV cache (parameters: float32).

  autoregressive = True

  def setup(self):
    self.patches = layers.PatchTransformer(self.width, self.encoder_layers, self.num_heads,
                                           self.mlp_ratio, self.remat, self.attention_chunk,
                                           self.dtype)
    self.token_embed = nn.Embed(self.vocab_size + 1, self.width,
                                embedding_init=nn.initializers.normal(stddev=1.0))
    block = layers.rematted(layers.DecoderBlock, self.remat)
    self.blocks = [block(self.width, self.num_heads, self.mlp_ratio, self.attention_chunk,
                         dtype=self.dtype) for _ in range(self.decoder_layers)]
    self.norm = nn.LayerNorm(dtype=self.dtype)
    self.head = layers.dense(self.vocab_size, dtype=self.dtype)

  @property
  def start_token(self) -> int:
    return self.vocab_size

  def encode(self, x: jax.Array) -> tuple[layers.KV, ...]:
    """x [B, ...] -> per-layer cross-attention KV, each [B, heads, L, Dh]."""
    memory = self.patches(self.frontend(x, self.num_tokens))
    return tuple(block.cross_kv(memory) for block in self.blocks)

  def _embed(self, tokens: jax.Array, positions: jax.Array) -> jax.Array:
    """tokens: int ids [..] or one-hot vectors [.., V + 1] (id V is the start token)."""
    table = layers.sincos_positions(self.num_tokens, self.width)
    if jnp.issubdtype(tokens.dtype, jnp.integer):
      embedded = self.token_embed(tokens)
    else:
      embedded = tokens @ self.token_embed.embedding
    return embedded + jnp.asarray(table)[positions]

  def _logits(self, x: jax.Array) -> jax.Array:
    return self.head(self.norm(x)).astype(jnp.float32)  # log q is float32 whatever dtype.

  def __call__(self, x: jax.Array, tokens: jax.Array) -> jax.Array:
    """Teacher forcing: x [B, ...], tokens [B, L] -> logits [B, L, V]."""
    return self.decode(self.encode(x), tokens)

  def decode(self, cross: tuple[layers.KV, ...], tokens: jax.Array) -> jax.Array:
    """Teacher forcing from precomputed cross KV of B inputs.

    tokens [G*B, L] (G consecutive sequences per input) -> logits [G*B, L, V].
    """
    start = jnp.full((tokens.shape[0], 1), self.start_token, tokens.dtype)
    inputs = jnp.concatenate([start, tokens[:, :-1]], axis=1)
    x = self._embed(inputs, jnp.arange(self.num_tokens))
    for block, kv in zip(self.blocks, cross):
      x = block(x, kv)
    return self._logits(x)

  def decode_step(self, token: jax.Array, position: jax.Array, cache: tuple[layers.KV, ...],
                  cross: tuple[layers.KV, ...]) -> tuple[jax.Array, tuple[layers.KV, ...]]:
    """One step: previous tokens [G*B] (or one-hot [G*B, V + 1]) at `position` -> logits
    [G*B, V] and the new cache.

    `cross` holds the KV of the B inputs; each has G consecutive sequences.
    """
    x = self._embed(token[:, None], position[None])
    new_cache = []
    for block, kv, layer_cache in zip(self.blocks, cross, cache):
      x, layer_cache = block.step(x, position, layer_cache, kv)
      new_cache.append(layer_cache)
    return self._logits(x)[:, 0], tuple(new_cache)

  @nn.nowrap
  def init_cache(self, batch_size: int) -> tuple[layers.KV, ...]:
    """Zero self-attention cache: N layers of k, v [B, H, L, Dh] in the model's dtype."""
    shape = (batch_size, self.num_heads, self.num_tokens, self.width // self.num_heads)
    return tuple(layers.KV(jnp.zeros(shape, self.dtype), jnp.zeros(shape, self.dtype))
                 for _ in range(self.decoder_layers))


class NAEncoder(nn.Module):
  """Non-autoregressive encoder: x [B, ...] -> logits [B, L, V].

  With `outputs` set the head gives [B, L, outputs] instead (VQ-VAE: E, FSQ: d).
  """
  frontend: nn.Module
  vocab_size: int
  num_tokens: int
  width: int
  num_layers: int
  num_heads: int = 4
  mlp_ratio: int = 4
  outputs: int | None = None
  remat: bool = False  # Recompute each block's activations in the backward pass.
  attention_chunk: int | None = None  # Queries per chunk of attention (None: all at once).
  dtype: jnp.dtype = jnp.float32  # Matmuls and LayerNorms (parameters: float32).

  autoregressive = False

  @nn.compact
  def __call__(self, x: jax.Array, tokens: jax.Array | None = None) -> jax.Array:
    """`tokens` is accepted for interface parity with AREncoder and ignored."""
    del tokens
    memory = layers.PatchTransformer(self.width, self.num_layers, self.num_heads,
                                     self.mlp_ratio, self.remat, self.attention_chunk,
                                     self.dtype)(self.frontend(x, self.num_tokens))
    return layers.dense(self.outputs or self.vocab_size, dtype=self.dtype)(memory).astype(
        jnp.float32)


class ValueNetwork(nn.Module):
  """x [B, ...] -> [B]: Dense(D) per front-end token, ReLU, mean over tokens, MLP."""
  frontend: nn.Module
  num_tokens: int
  width: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = nn.relu(layers.dense(self.width)(self.frontend(x, self.num_tokens)))
    x = nn.relu(layers.dense(self.width)(x.mean(axis=1)))
    return layers.dense(1)(x)[:, 0]
