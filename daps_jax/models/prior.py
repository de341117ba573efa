"""An autoregressive prior p(z) over a trained run's discrete codes.

Shape legend: B batch, L latent tokens, V codes per token, D width, H heads,
Dh = D / H, N layers.

`CodePrior` is the AR encoder's token decoder without cross-attention: a start
token (id V) and the codes z_1..z_{L-1} in, causal pre-LN blocks
(`layers.DecoderBlock(cross_attention=False)`), logits of z_1..z_L out. With
`num_classes` > 0 a class embedding is added to every position's input; class
id `num_classes` is "no class", so one network is both p(z | c) and p(z).
Teacher forcing (`__call__`) and one step against a fixed-length KV cache
(`decode_step`) give the same logits.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from daps_jax.models import layers


class CodePrior(nn.Module):
  """p(z) or p(z | c) over L tokens of V codes; see the module docstring."""
  vocab_size: int
  num_tokens: int
  width: int
  num_layers: int
  num_heads: int = 4
  mlp_ratio: int = 4
  num_classes: int = 0  # 0: unconditional (labels are ignored).

  def setup(self):
    self.token_embed = nn.Embed(self.vocab_size + 1, self.width,
                                embedding_init=nn.initializers.normal(stddev=1.0))
    if self.num_classes:
      self.class_embed = nn.Embed(self.num_classes + 1, self.width,
                                  embedding_init=nn.initializers.normal(stddev=1.0))
    self.blocks = [layers.DecoderBlock(self.width, self.num_heads, self.mlp_ratio,
                                       cross_attention=False) for _ in range(self.num_layers)]
    self.norm = nn.LayerNorm()
    self.head = layers.dense(self.vocab_size)

  @property
  def start_token(self) -> int:
    return self.vocab_size

  @property
  def no_class(self) -> int:
    """The class id of the unconditional prior p(z)."""
    return self.num_classes

  def _embed(self, tokens: jax.Array, positions: jax.Array,
             labels: jax.Array | None) -> jax.Array:
    """tokens [B, T] at positions [T], labels [B] (or None: no class) -> [B, T, D]."""
    x = self.token_embed(tokens) + jnp.asarray(
        layers.sincos_positions(self.num_tokens, self.width))[positions]
    if self.num_classes:
      if labels is None:
        labels = jnp.full(tokens.shape[:1], self.no_class, jnp.int32)
      x = x + self.class_embed(labels)[:, None]
    return x

  def __call__(self, tokens: jax.Array, labels: jax.Array | None = None) -> jax.Array:
    """Teacher forcing: codes [B, L] (labels [B]) -> logits [B, L, V] of each code
    given the codes before it."""
    start = jnp.full((tokens.shape[0], 1), self.start_token, tokens.dtype)
    x = self._embed(jnp.concatenate([start, tokens[:, :-1]], axis=1),
                    jnp.arange(self.num_tokens), labels)
    for block in self.blocks:
      x = block(x, None)
    return self.head(self.norm(x))

  def decode_step(self, token: jax.Array, position: jax.Array, cache: tuple[layers.KV, ...],
                  labels: jax.Array | None = None
                  ) -> tuple[jax.Array, tuple[layers.KV, ...]]:
    """The previous code [B] (the start token at position 0) -> logits [B, V] of the
    code at `position`, and the updated cache."""
    x = self._embed(token[:, None], position[None], labels)
    new_cache = []
    for block, layer_cache in zip(self.blocks, cache):
      x, layer_cache = block.step(x, position, layer_cache, None)
      new_cache.append(layer_cache)
    return self.head(self.norm(x))[:, 0], tuple(new_cache)

  @nn.nowrap
  def init_cache(self, batch_size: int) -> tuple[layers.KV, ...]:
    """Zero self-attention cache: N layers of k, v [B, H, L, Dh]."""
    shape = (batch_size, self.num_heads, self.num_tokens, self.width // self.num_heads)
    return tuple(layers.KV(jnp.zeros(shape), jnp.zeros(shape)) for _ in range(self.num_layers))
