"""Networks of daps_jax: encoders q(z|x), decoders p(x|z) and likelihoods."""

from daps_jax.models.decoders import MLPDecoder, ResNetDecoder
from daps_jax.models.encoders import AREncoder, NAEncoder
from daps_jax.models.likelihoods import Bernoulli, Gaussian, Likelihood
