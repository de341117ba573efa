"""The networks of a run, bundled for the pure steps."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from daps_jax.models import likelihoods


@dataclasses.dataclass(frozen=True)
class Networks:
  """Encoder, decoder and likelihood, plus what their inputs look like.

  Attributes:
    encoder: an `AREncoder` or `NAEncoder` (unbound).
    decoder: a `Decoder` (unbound).
    likelihood: `Bernoulli` or `Gaussian`.
    input_shape: the model-space shape of one input, e.g. (H, W, C).
    num_codes: codes per token (V, or prod(levels) for FSQ).
    code_dim: FSQ: dims of a code vector fed to the decoder (None: tokens).
  """
  encoder: nn.Module
  decoder: nn.Module
  likelihood: likelihoods.Likelihood
  input_shape: tuple[int, ...]
  num_codes: int
  code_dim: int | None = None

  def example_inputs(self, batch_size: int) -> jax.Array:
    """Zero inputs [B, *input_shape] for `init`."""
    return jnp.zeros((batch_size, *self.input_shape), jnp.float32)

  def example_codes(self, batch_size: int) -> jax.Array:
    """Decoder input of the right kind for `init`: tokens [B, L] or FSQ codes [B, L, d]."""
    length = self.encoder.num_tokens
    if self.code_dim is not None:
      return jnp.zeros((batch_size, length, self.code_dim), jnp.float32)
    return jnp.zeros((batch_size, length), jnp.int32)
