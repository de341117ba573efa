"""Networks of daps_jax: front ends, encoders q(z|x), decoders p(x|z), likelihoods, the code prior p(z)."""

from daps_jax.models.decoders import (CodeEmbedding, Decoder, mlp_decoder, motion_decoder,
                                      resnet_decoder)
from daps_jax.models.encoders import AREncoder, NAEncoder, ValueNetwork
from daps_jax.models.frontends import ImagePatches, MotionFrames
from daps_jax.models.likelihoods import Bernoulli, Gaussian, Likelihood
from daps_jax.models.networks import Networks
from daps_jax.models.prior import CodePrior
