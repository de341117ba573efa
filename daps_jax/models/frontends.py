"""Model front ends: the only modality-specific part of the encoders.

Shape legend: B batch, L latent tokens, P features per token.

A front end maps a batch of model-space inputs to one feature vector per latent
token, [B, L, P]; the transformers over tokens, the rollout and the losses never
see the modality. `FRONTENDS` maps a `DatasetSpec.modality` to its front end.
Today: 'image', images [B, H, W, C] cut into a grid of L patches. A front end
may hold parameters of its own (a motion front end might convolve frames);
the image one has none.
"""

import flax.linen as nn
import jax

from daps_jax.models import patching


class ImagePatches(nn.Module):
  """images [B, H, W, C] -> patches [B, L, P] in raster order (see `patching`)."""

  def __call__(self, x: jax.Array, num_tokens: int) -> jax.Array:
    return patching.patchify(x, num_tokens)


FRONTENDS = {'image': ImagePatches}


def make(modality: str) -> nn.Module:
  """The front end of a modality."""
  if modality not in FRONTENDS:
    raise ValueError(f'No model front end for modality {modality!r}; known: '
                     f'{", ".join(FRONTENDS)}.')
  return FRONTENDS[modality]()
