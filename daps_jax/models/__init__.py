"""Networks of daps_jax: encoders q(z|x), decoders p(x|z), likelihoods, a value network."""

from daps_jax.models.decoders import CodeEmbedding, Decoder, mlp_decoder, resnet_decoder
from daps_jax.models.encoders import AREncoder, NAEncoder, ValueNetwork
from daps_jax.models.likelihoods import Bernoulli, Gaussian, Likelihood
