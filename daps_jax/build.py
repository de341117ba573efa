"""Turns a validated config into networks, optimisers and the method's pure functions.

The only place that reads model and method fields of the config: models and
steps take plain keyword arguments.
"""

import dataclasses
import functools
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from daps_jax import config_lib
from daps_jax import data
from daps_jax import evaluation
from daps_jax import models
from daps_jax import optim
from daps_jax import state as state_lib
from daps_jax import steps
from daps_jax.baselines import ppo
from daps_jax.baselines import quantized
from daps_jax.baselines import relaxed


@dataclasses.dataclass(frozen=True)
class Networks:
  encoder: nn.Module
  decoder: nn.Module
  likelihood: models.Likelihood
  num_codes: int  # codes per token (V, or prod(levels) for FSQ)
  code_dim: int | None = None  # FSQ: dims of a code vector fed to the decoder
  value: nn.Module | None = None  # PPO's value network

  def example_codes(self, batch_size: int) -> jax.Array:
    """Decoder input of the right kind for `init`: tokens [B, L] or FSQ codes [B, L, d]."""
    length = self.encoder.num_tokens
    if self.code_dim is not None:
      return jnp.zeros((batch_size, length, self.code_dim), jnp.float32)
    return jnp.zeros((batch_size, length), jnp.int32)


@dataclasses.dataclass(frozen=True)
class Method:
  """A method's pure functions, bound to its networks and hyperparameters."""
  name: str
  train_step: Callable  # (state, batch, rng, axis_name=None) -> (state, metrics)
  encode: Callable  # (state, images, rng, *, networks, axis_name=None) -> evaluation.Encoding
  init_aux: Callable  # (rng, encoder variables, decoder variables) -> state.aux
  beta_final: float | None  # the beta of the reported beta-ELBO (None: no analytic q)
  schedules: dict[str, Callable]  # logged name -> (step -> value)


def networks(config: ml_collections.ConfigDict, image_shape: tuple[int, int, int],
             bn_axis_name: str | None = None) -> Networks:
  """Encoder per `config.method.name`, decoder and likelihood per `config.model`."""
  m, name = config.model, config.method.name
  common = dict(vocab_size=m.vocab_size, num_tokens=m.num_tokens, width=m.width,
                num_heads=m.num_heads)
  code_dim = len(config.method.levels) if name == 'fsq' else None
  if name in config_lib.AUTOREGRESSIVE:
    encoder = models.AREncoder(encoder_layers=m.encoder_layers, decoder_layers=m.decoder_layers,
                               mlp_ratio=m.mlp_ratio, **common)
  else:
    outputs = {'vqvae': m.decoder.embed_dim, 'fsq': code_dim}.get(name)
    encoder = models.NAEncoder(num_layers=m.na_layers, mlp_ratio=m.na_mlp_ratio,
                               outputs=outputs, **common)
  d = m.decoder
  if d.kind == 'mlp':
    decoder = models.mlp_decoder(vocab_size=m.vocab_size, image_shape=tuple(image_shape),
                                 embed_dim=d.embed_dim, hidden_dims=tuple(d.hidden_dims),
                                 code_dim=code_dim)
  else:
    decoder = models.resnet_decoder(vocab_size=m.vocab_size, num_tokens=m.num_tokens,
                                    image_shape=tuple(image_shape), embed_dim=d.embed_dim,
                                    channels=d.channels, num_res_blocks=d.num_res_blocks,
                                    bn_axis_name=bn_axis_name, code_dim=code_dim)
  lik = m.likelihood
  if lik.kind == 'bernoulli':
    likelihood = models.Bernoulli()
  else:
    likelihood = models.Gaussian(variance_min=lik.variance_min, variance_max=lik.variance_max)
  value = models.ValueNetwork(m.num_tokens, m.width) if name == 'ppo' else None
  return Networks(encoder, decoder, likelihood, num_codes=config_lib.num_codes(config),
                  code_dim=code_dim, value=value)


def learning_rate(config: ml_collections.ConfigDict):
  """Encoder and decoder learning rate: a float or a cosine schedule."""
  o = config.optim
  if o.schedule == 'cosine':
    return optim.cosine(o.learning_rate, o.final_learning_rate, config.total_steps)
  return o.learning_rate


def optimizers(config: ml_collections.ConfigDict):
  """(encoder, decoder) optax transformations."""
  o = config.optim
  kwargs = dict(weight_decay=o.weight_decay, b1=o.b1, b2=o.b2, eps=o.eps, clip=o.clip,
                max_consecutive_skips=o.max_consecutive_skips)
  lr = learning_rate(config)
  return optim.adamw(lr, **kwargs), optim.adamw(lr, **kwargs)


def _decay(config, init: float, final: float):
  return optim.exp_decay(init, final, config.method.beta_decay_steps or config.total_steps)


def method(config: ml_collections.ConfigDict, nets: Networks,
           image_shape: tuple[int, int, int]) -> Method:
  """The train step, eval encoding, aux init and schedules of `config.method`."""
  me = config.method
  family = config_lib.FAMILIES[me.name]
  lr = learning_rate(config)
  schedules = {'optim/learning_rate': lr if callable(lr) else (lambda step: lr)}
  encode = evaluation.categorical_encode
  init_aux = lambda rng, enc_vars, dec_vars: {}
  beta_final = None
  o = config.optim
  if family in ('daps', 'relaxed', 'ppo'):
    beta = _decay(config, me.beta_init, me.beta_final)
    schedules['policy/beta'] = beta
    beta_final = me.beta_final
  if family == 'daps':
    hparams = steps.DapsHparams(num_samples=me.num_samples, ess_target=me.ess_target, beta=beta)
    step = functools.partial(steps.train_step, networks=nets, hparams=hparams)
    # No decay or clipping of log(eta): decay would pull eta towards 1.
    dual_tx = optim.adamw(me.eta_learning_rate, weight_decay=0.0, clip=None,
                          max_consecutive_skips=o.max_consecutive_skips)
    init_aux = lambda rng, enc_vars, dec_vars: steps.init_aux(me.eta_init, dual_tx)
  elif family == 'relaxed':
    tau = _decay(config, me.tau_init, me.tau_final)
    schedules['relax/tau'] = tau
    hparams = relaxed.RelaxedHparams(estimator=me.name.split('_')[0],
                                     num_gumbels=me.get('num_gumbels', 1), beta=beta, tau=tau)
    step = functools.partial(relaxed.train_step, networks=nets, hparams=hparams)
  elif family == 'vqvae':
    hparams = quantized.VQHparams(commitment_cost=me.commitment_cost, ema_decay=me.ema_decay,
                                  restart_threshold=me.restart_threshold)
    step = functools.partial(quantized.vq_train_step, networks=nets, hparams=hparams)
    encode = quantized.vq_encode
    init_aux = lambda rng, enc_vars, dec_vars: quantized.init_vq_aux(hparams, dec_vars)
  elif family == 'fsq':
    hparams = quantized.FSQHparams(levels=tuple(me.levels))
    step = functools.partial(quantized.fsq_train_step, networks=nets, hparams=hparams)
    encode = functools.partial(quantized.fsq_encode, levels=hparams.levels)
  else:
    hparams = ppo.PPOHparams(num_samples=me.num_samples, beta=beta, clip_ratio=me.clip_ratio,
                             kl_target=me.kl_target)
    step = functools.partial(ppo.train_step, networks=nets, hparams=hparams)
    value_tx = optim.adamw(me.value_learning_rate, weight_decay=o.weight_decay, clip=o.clip,
                           max_consecutive_skips=o.max_consecutive_skips)
    init_aux = lambda rng, enc_vars, dec_vars: ppo.init_aux(
        rng, enc_vars, value_network=nets.value, value_tx=value_tx, image_shape=image_shape,
        kl_coef_init=me.kl_coef_init)
  return Method(name=me.name, train_step=step, encode=encode, init_aux=init_aux,
                beta_final=beta_final, schedules=schedules)


def initial_state(config: ml_collections.ConfigDict, networks: Networks,
                  method: Method, spec: data.DatasetSpec) -> state_lib.State:
  """Freshly initialised host state of a config (also the target of a restore)."""
  rng_init, _, _ = state_lib.run_keys(config.seed)
  txs = optimizers(config)
  create = lambda r: state_lib.create_state(r, networks, txs, image_shape=spec.image_shape,
                                            init_aux=method.init_aux)
  return jax.device_get(jax.jit(create)(rng_init))


def param_counts(config: ml_collections.ConfigDict) -> dict[str, int]:
  """{'encoder', 'decoder', ['value',] 'total'} trainable parameter counts of a config."""
  spec = data.get_spec(config.data.name)
  nets = networks(config, spec.image_shape)
  images = jnp.zeros((1, *spec.image_shape), jnp.float32)
  tokens = jnp.zeros((1, config.model.num_tokens), jnp.int32)
  size = lambda tree: sum(x.size for x in jax.tree.leaves(tree['params']))
  key = jax.random.key(0)
  counts = {'encoder': size(jax.eval_shape(nets.encoder.init, key, images, tokens)),
            'decoder': size(jax.eval_shape(
                lambda k: nets.decoder.init(k, nets.example_codes(1)), key))}
  if nets.value is not None:
    counts['value'] = size(jax.eval_shape(nets.value.init, key, images))
  counts['total'] = sum(counts.values())
  return counts


def describe(config: ml_collections.ConfigDict, counts: dict[str, int]) -> str:
  """One line: method, parameter counts and bits per input."""
  return (f'{config.method.name}: {counts["total"]:,} trainable parameters '
          f'({", ".join(f"{k} {v:,}" for k, v in counts.items() if k != "total")}); latent '
          f'{config.model.num_tokens} tokens x log2({config_lib.num_codes(config)}) = '
          f'{config_lib.bits_per_input(config):.1f} bits per input')
