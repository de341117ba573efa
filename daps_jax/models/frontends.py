"""Model front ends: the only modality-specific part of the encoders.

Shape legend: B batch, L latent tokens, P features per token.

A front end maps a batch of model-space inputs to one feature vector per latent
token, [B, L, P]; the transformers over tokens, the rollout and the losses never
see the modality. `FRONTENDS` maps a `DatasetSpec.modality` to its front end.
'image': images [B, H, W, C] cut into a grid of L patches (no parameters).
'motion': frames [B, T, C] -> a transposed Conv1D (kernel 4, stride L / T)
to L tokens of width `MOTION_WIDTH` (spec section 2: (32, C) -> (64, 128)).
"""

import flax.linen as nn
import jax

from daps_jax.models import patching


class ImagePatches(nn.Module):
  """images [B, H, W, C] -> patches [B, L, P] in raster order (see `patching`)."""

  def __call__(self, x: jax.Array, num_tokens: int) -> jax.Array:
    return patching.patchify(x, num_tokens)


MOTION_WIDTH = 128


class MotionFrames(nn.Module):
  """frames [B, T, C] -> tokens [B, L, MOTION_WIDTH]; L must be a multiple of T."""
  features: int = MOTION_WIDTH

  @nn.compact
  def __call__(self, x: jax.Array, num_tokens: int) -> jax.Array:
    stride, rest = divmod(num_tokens, x.shape[1])
    if rest or not stride:
      raise ValueError(f'{num_tokens} latent tokens are not a multiple of {x.shape[1]} frames.')
    return nn.ConvTranspose(self.features, (4,), strides=(stride,))(x)


FRONTENDS = {'image': ImagePatches, 'motion': MotionFrames}


def make(modality: str) -> nn.Module:
  """The front end of a modality."""
  if modality not in FRONTENDS:
    raise ValueError(f'No model front end for modality {modality!r}; known: '
                     f'{", ".join(FRONTENDS)}.')
  return FRONTENDS[modality]()
