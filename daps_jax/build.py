"""Turns a validated config into networks, optimisers and step hyperparameters.

The only place that reads model and method fields of the config: models take
plain keyword arguments.
"""

import dataclasses

import flax.linen as nn
import ml_collections

from daps_jax import models
from daps_jax import optim
from daps_jax import steps


@dataclasses.dataclass(frozen=True)
class Networks:
  encoder: nn.Module
  decoder: nn.Module
  likelihood: models.Likelihood


def networks(config: ml_collections.ConfigDict, image_shape: tuple[int, int, int],
             bn_axis_name: str | None = None) -> Networks:
  """Encoder per `config.method.name`, decoder and likelihood per `config.model`."""
  m = config.model
  if config.method.name == 'daps':
    encoder = models.AREncoder(vocab_size=m.vocab_size, num_tokens=m.num_tokens, width=m.width,
                               encoder_layers=m.encoder_layers, decoder_layers=m.decoder_layers,
                               num_heads=m.num_heads, mlp_ratio=m.mlp_ratio)
  else:
    encoder = models.NAEncoder(vocab_size=m.vocab_size, num_tokens=m.num_tokens, width=m.width,
                               num_layers=m.na_layers, num_heads=m.num_heads,
                               mlp_ratio=m.na_mlp_ratio)
  d = m.decoder
  if d.kind == 'mlp':
    decoder = models.MLPDecoder(vocab_size=m.vocab_size, image_shape=tuple(image_shape),
                                embed_dim=d.embed_dim, hidden_dims=tuple(d.hidden_dims))
  else:
    decoder = models.ResNetDecoder(vocab_size=m.vocab_size, num_tokens=m.num_tokens,
                                   image_shape=tuple(image_shape), embed_dim=d.embed_dim,
                                   channels=d.channels, num_res_blocks=d.num_res_blocks,
                                   bn_axis_name=bn_axis_name)
  lik = m.likelihood
  if lik.kind == 'bernoulli':
    likelihood = models.Bernoulli()
  else:
    likelihood = models.Gaussian(variance_min=lik.variance_min, variance_max=lik.variance_max)
  return Networks(encoder, decoder, likelihood)


def optimizers(config: ml_collections.ConfigDict):
  """(encoder, decoder, dual) optax transformations."""
  o = config.optim
  kwargs = dict(weight_decay=o.weight_decay, b1=o.b1, b2=o.b2, eps=o.eps, clip=o.clip,
                max_consecutive_skips=o.max_consecutive_skips)
  # No decay or clipping of log(eta): decay would pull eta towards 1.
  dual = optim.adamw(config.method.eta_learning_rate, weight_decay=0.0, clip=None,
                     max_consecutive_skips=o.max_consecutive_skips)
  return optim.adamw(o.learning_rate, **kwargs), optim.adamw(o.learning_rate, **kwargs), dual


def hparams(config: ml_collections.ConfigDict) -> steps.DapsHparams:
  me = config.method
  return steps.DapsHparams(
      num_samples=me.num_samples, ess_target=me.ess_target,
      beta=optim.exp_decay(me.beta_init, me.beta_final, me.beta_decay_steps or config.total_steps))
