"""Turns a validated config into networks, optimisers, a method and its state.

The only place that reads the model fields of the config (models take plain
keyword arguments); the method's own fields are read by its module in
`daps_jax.methods`. `assemble` is the one sequence config -> dataset spec ->
networks -> method that the trainer, the evaluator and the benchmarks share.
"""

import dataclasses

import jax
import jax.numpy as jnp
import ml_collections

from daps_jax import config_lib
from daps_jax import data
from daps_jax import methods
from daps_jax import models
from daps_jax import optim
from daps_jax import state as state_lib
from daps_jax.methods import base
from daps_jax.models import frontends


def networks(config: ml_collections.ConfigDict, spec: data.DatasetSpec,
             bn_axis_name: str | None = None) -> models.Networks:
  """Encoder per the method's `Latent`, decoder and likelihood per `config.model`."""
  m = config.model
  latent = methods.module(config.method.name).latent(config)
  common = dict(frontend=frontends.make(spec.modality), vocab_size=m.vocab_size,
                num_tokens=m.num_tokens, width=m.width, num_heads=m.num_heads, remat=m.remat,
                attention_chunk=m.attention_chunk or None, dtype=jnp.dtype(m.dtype))
  if latent.autoregressive:
    encoder = models.AREncoder(encoder_layers=m.encoder_layers, decoder_layers=m.decoder_layers,
                               mlp_ratio=m.mlp_ratio, **common)
  else:
    encoder = models.NAEncoder(num_layers=m.na_layers, mlp_ratio=m.na_mlp_ratio,
                               outputs=latent.encoder_head, **common)
  lik = m.likelihood
  if lik.kind == 'bernoulli':
    likelihood = models.Bernoulli()
  else:
    likelihood = models.Gaussian(variance_min=lik.variance_min, variance_max=lik.variance_max,
                                 variance=lik.variance)
  d = m.decoder
  if d.kind == 'mlp':
    decoder = models.mlp_decoder(vocab_size=m.vocab_size, shape=spec.shape,
                                 embed_dim=d.embed_dim, hidden_dims=tuple(d.hidden_dims),
                                 code_dim=latent.code_dim)
  elif d.kind == 'motion':
    frames, channels = spec.shape
    decoder = models.motion_decoder(vocab_size=m.vocab_size, num_frames=frames,
                                    outputs=channels * likelihood.outputs_per_channel,
                                    embed_dim=d.embed_dim, num_layers=d.num_layers,
                                    code_dim=latent.code_dim)
  else:
    decoder = models.resnet_decoder(vocab_size=m.vocab_size, num_tokens=m.num_tokens,
                                    image_shape=spec.shape, embed_dim=d.embed_dim,
                                    channels=d.channels, num_res_blocks=d.num_res_blocks,
                                    bn_axis_name=bn_axis_name, code_dim=latent.code_dim)
  return models.Networks(encoder, decoder, likelihood, input_shape=tuple(spec.shape),
                         num_codes=latent.num_codes or m.vocab_size, code_dim=latent.code_dim)


def optimizers(config: ml_collections.ConfigDict):
  """(encoder, decoder) optax transformations."""
  o = config.optim
  kwargs = dict(weight_decay=o.weight_decay, b1=o.b1, b2=o.b2, eps=o.eps, clip=o.clip,
                max_consecutive_skips=o.max_consecutive_skips)
  lr = optim.learning_rate(o, config.total_steps)
  return optim.adamw(lr, **kwargs), optim.adamw(lr, **kwargs)


@dataclasses.dataclass(frozen=True)
class Assembly:
  """What a config turns into: its dataset spec, networks and method."""
  config: ml_collections.ConfigDict
  spec: data.DatasetSpec
  networks: models.Networks
  method: base.Method

  def _create(self, rng: jax.Array) -> state_lib.State:
    return state_lib.create_state(rng, self.networks, optimizers(self.config),
                                  init_aux=self.method.init_aux)

  def initial_state(self) -> state_lib.State:
    """Freshly initialised host state (also the target of a restore)."""
    rng_init, _, _ = state_lib.run_keys(self.config.seed)
    return jax.device_get(jax.jit(self._create)(rng_init))

  def abstract_state(self) -> state_lib.State:
    """The state's shapes and dtypes (`jax.ShapeDtypeStruct` leaves); nothing allocated."""
    return jax.eval_shape(self._create, jax.random.key(0))


def assemble(config: ml_collections.ConfigDict, bn_axis_name: str | None = None,
             spec: data.DatasetSpec | None = None) -> Assembly:
  """config -> spec -> networks -> method (the config must be valid). `spec`
  replaces the dataset's (e.g. a nominal motion spec before any data exists)."""
  spec = spec or data.get_spec(config.data.name, config.data.dir)
  nets = networks(config, spec, bn_axis_name)
  return Assembly(config, spec, nets, methods.module(config.method.name).make(config, nets))


def param_counts(config: ml_collections.ConfigDict,
                 spec: data.DatasetSpec | None = None) -> dict[str, int]:
  """{'encoder', 'decoder', [an aux network such as PPO's 'value',] 'total'} trainable
  parameter counts of a config, from shapes only (nothing is allocated)."""
  state = assemble(config, spec=spec).abstract_state()
  size = lambda params: sum(x.size for x in jax.tree.leaves(params))
  counts = {'encoder': size(state.encoder.params), 'decoder': size(state.decoder.params)}
  # Networks a method adds (PPO's value network) are the ModelStates in its aux.
  counts.update({name: size(aux.params) for name, aux in state.aux.items()
                 if isinstance(aux, state_lib.ModelState)})
  counts['total'] = sum(counts.values())
  return counts


def describe(config: ml_collections.ConfigDict, counts: dict[str, int]) -> str:
  """One line: method, parameter counts and bits per input."""
  return (f'{config.method.name}: {counts["total"]:,} trainable parameters '
          f'({", ".join(f"{k} {v:,}" for k, v in counts.items() if k != "total")}); latent '
          f'{config.model.num_tokens} tokens x log2({config_lib.num_codes(config)}) = '
          f'{config_lib.bits_per_input(config):.1f} bits per input')
