"""VQ-VAE: nearest-codeword quantisation with straight-through gradients.

Shape legend: B batch, L latent tokens, V codebook size, E decoder embedding
width; N a flattened batch of vectors.

  vector_quantize    nearest codeword with ST identity gradient, VQ-VAE losses
  vq_ema_*           EMA codebook (VQ-VAE-2), statistics summed over devices
  restart_dead_codes codes with a small EMA count restarted from encoder outputs

The non-autoregressive encoder has a continuous head [B, L, E]; the codebook is
the decoder's embedding table [V, E], so the parameter budget matches DAPS's
decoder. Loss = NLL / dims + codebook + c * commitment (spec section 5). Off by
default (the paper's baseline is the plain loss): an EMA codebook (`ema_decay`)
and restarts of codes whose EMA count falls below `restart_threshold`. There is
no analytic q(z|x), so no ELBO. References: van den Oord et al. 2017 and Razavi
et al. 2019.
"""

import dataclasses
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import ml_collections

from daps_jax import errors
from daps_jax import parallel
from daps_jax import state as state_lib
from daps_jax.methods import base


@dataclasses.dataclass(frozen=True)
class VQHparams:
  commitment_cost: float  # weight of |z - sg(e)|^2
  ema_decay: float | None = None  # None: the codebook learns from its loss (the paper)
  restart_threshold: float = 0.0  # EMA count below which a code restarts (0: never)


# Spec section 5: the commitment weight (0.25 elsewhere).
COMMITMENT = {'lafan1': 0.5}


def config(name: str, dataset: str) -> ml_collections.ConfigDict:
  m = ml_collections.ConfigDict()
  m.name = name  # The method (daps_jax.methods.REGISTRY).
  m.commitment_cost = COMMITMENT.get(dataset, 0.25)  # Weight of |z - sg(e)|^2.
  m.ema_decay = ml_collections.config_dict.placeholder(float)  # Set: EMA codebook (not in paper).
  m.restart_threshold = 0.0  # With EMA: restart codes whose EMA count is below this.
  return m


def validate(m: ml_collections.ConfigDict) -> None:
  errors.check(m.commitment_cost >= 0, 'method.commitment_cost', 'must be >= 0.')
  errors.check(m.ema_decay is None or 0 <= m.ema_decay < 1, 'method.ema_decay',
               'must be in [0, 1) (or None for the paper\'s codebook loss).')
  errors.check(m.restart_threshold == 0 or m.ema_decay is not None, 'method.restart_threshold',
               'dead-code restarts need the EMA codebook; set method.ema_decay (e.g. 0.99).')


def latent(config: ml_collections.ConfigDict) -> base.Latent:
  return base.Latent(autoregressive=False, encoder_head=config.model.decoder.embed_dim)


def make(config: ml_collections.ConfigDict, networks) -> base.Method:
  me = config.method
  hparams = VQHparams(commitment_cost=me.commitment_cost, ema_decay=me.ema_decay,
                      restart_threshold=me.restart_threshold)
  return base.Method(
      name=me.name, train_step=functools.partial(train_step, networks=networks, hparams=hparams),
      encode=encode, init_aux=lambda rng, enc_vars, dec_vars: init_aux(hparams, dec_vars),
      beta_final=None, schedules=base.learning_rate_schedules(config))


# ----------------------------------------------------------------------------- estimator

class Quantized(NamedTuple):
  z_q: jax.Array  # [..., E] nearest codeword forward, identity gradient to z
  index: jax.Array  # [...] int32
  codebook_loss: jax.Array  # scalar mean (sg(z) - e)^2, gradient to the codebook only
  commitment_loss: jax.Array  # scalar mean (z - sg(e))^2, gradient to z only


def vector_quantize(z: jax.Array, codebook: jax.Array) -> Quantized:
  """Nearest-codeword quantisation of z [..., E] with codebook [V, E].

  Squared distances |z|^2 - 2 z.e + |e|^2 use a full-precision matmul, never an
  [N, V, E] difference.
  """
  flat = jax.lax.stop_gradient(z.reshape(-1, z.shape[-1]))
  codes = jax.lax.stop_gradient(codebook)
  dist = (jnp.sum(jnp.square(flat), axis=-1, keepdims=True)
          - 2.0 * jnp.dot(flat, codes.T, precision=jax.lax.Precision.HIGHEST)
          + jnp.sum(jnp.square(codes), axis=-1))
  index = jnp.argmin(dist, axis=-1).astype(jnp.int32).reshape(z.shape[:-1])
  e = jnp.take(codebook, index, axis=0)
  return Quantized(
      z_q=base.straight_through(e, z),
      index=index,
      codebook_loss=jnp.mean(jnp.square(jax.lax.stop_gradient(z) - e)),
      commitment_loss=jnp.mean(jnp.square(z - jax.lax.stop_gradient(e))))


class VQEma(NamedTuple):
  counts: jax.Array  # [V] float32 EMA of assignment counts
  sums: jax.Array  # [V, E] float32 EMA of summed assigned z


def vq_ema_init(codebook: jax.Array) -> VQEma:
  """EMA state whose codebook (sums / smoothed counts) is `codebook` [V, E]."""
  return VQEma(jnp.ones(codebook.shape[:1], jnp.float32), jnp.asarray(codebook, jnp.float32))


def vq_ema_update(ema: VQEma, z: jax.Array, index: jax.Array, *, decay: float,
                  mask: jax.Array | None = None, axis_name: str | None = None,
                  eps: float = 1e-5) -> tuple[VQEma, jax.Array]:
  """One EMA step from z [N, E] (constant) assigned to codes index [N].

  Rows with mask [N] false/0 are left out; batch statistics are summed over
  `axis_name`. Returns the new state and the codebook [V, E] = sums / counts, with
  counts Laplace-smoothed as (c + eps) / (n + V eps) * n, n = sum of counts.
  """
  num_codes = ema.counts.shape[0]
  assign = jax.nn.one_hot(index, num_codes, dtype=jnp.float32)  # [N, V]
  if mask is not None:
    assign = assign * mask.astype(jnp.float32)[:, None]
  z = jax.lax.stop_gradient(z).astype(jnp.float32)
  counts = assign.sum(axis=0)
  sums = jnp.dot(assign.T, z, precision=jax.lax.Precision.HIGHEST)
  if axis_name is not None:
    counts, sums = jax.lax.psum((counts, sums), axis_name)
  ema = VQEma(decay * ema.counts + (1.0 - decay) * counts, decay * ema.sums + (1.0 - decay) * sums)
  n = ema.counts.sum()
  smoothed = (ema.counts + eps) / (n + num_codes * eps) * n
  return ema, ema.sums / smoothed[:, None]


def restart_dead_codes(rng: jax.Array, codebook: jax.Array, ema: VQEma, z: jax.Array, *,
                       threshold: float, axis_name: str | None = None
                       ) -> tuple[jax.Array, VQEma, jax.Array]:
  """Replaces codes with EMA count < threshold by encoder outputs z [N, E].

  Candidates are drawn uniformly from z gathered over `axis_name` (without
  replacement when there are at least V rows), so with the same `rng` every device
  makes the same choice. Restarted codes get counts = threshold and sums = row *
  threshold. Returns (codebook [V, E], EMA state, number restarted int32).
  """
  rows = jax.lax.stop_gradient(z)
  if axis_name is not None:
    rows = jax.lax.all_gather(rows, axis_name, tiled=True)
  num_codes, num_rows = codebook.shape[0], rows.shape[0]
  pick = jax.random.choice(rng, num_rows, (num_codes,), replace=num_rows < num_codes)
  new = rows[pick].astype(jnp.float32)  # [V, E]
  dead = ema.counts < threshold
  ema = VQEma(jnp.where(dead, jnp.asarray(threshold, jnp.float32), ema.counts),
              jnp.where(dead[:, None], new * threshold, ema.sums))
  codebook = jnp.where(dead[:, None], new.astype(codebook.dtype), codebook)
  return codebook, ema, dead.sum().astype(jnp.int32)


# ----------------------------------------------------------------------------- step

def codebook(decoder_params: dict) -> jax.Array:
  """The VQ codebook [V, E]: the decoder's embedding table."""
  return decoder_params['embed']['embedding']


def _with_codebook(decoder_params: dict, table: jax.Array) -> dict:
  return {**decoder_params, 'embed': {**decoder_params['embed'], 'embedding': table}}


def init_aux(hparams: VQHparams, decoder_vars: dict) -> dict:
  """{'ema': VQEma} when the EMA codebook is on, else {}."""
  if hparams.ema_decay is None:
    return {}
  return {'ema': vq_ema_init(codebook(decoder_vars['params']))}


def train_step(state: state_lib.State, batch: dict, rng: jax.Array, *, networks,
               hparams: VQHparams, axis_name: str | None = None
               ) -> tuple[state_lib.State, dict]:
  """One joint VQ-VAE step (plus the EMA codebook update and restarts when on)."""
  x = batch['inputs']
  use_ema = hparams.ema_decay is not None

  def loss_fn(enc_params, dec_params):
    z = networks.encoder.apply({'params': enc_params}, x)
    q = vector_quantize(z, codebook(dec_params))
    out, updates = base.decoder_apply(state.decoder, dec_params, q.z_q,
                                      decoder=networks.decoder, train=True, method='trunk')
    log_p = networks.likelihood.log_prob(out, x)
    loss = -log_p.mean() / x[0].size + hparams.commitment_cost * q.commitment_loss
    if not use_ema:
      loss += q.codebook_loss
    return loss, ((z, q, log_p), updates)

  new_state, (z, q, log_p), metrics = base.joint_step(state, loss_fn, axis_name)
  metrics.update({
      'loss/decoder': -log_p.mean(),
      'decoder/log_p': log_p.mean(),
      'vq/codebook_loss': q.codebook_loss,
      'vq/commitment_loss': q.commitment_loss,
  })
  if use_ema:
    flat_z = z.reshape(-1, z.shape[-1])
    ema, table = vq_ema_update(state.aux['ema'], flat_z, q.index.reshape(-1),
                               decay=hparams.ema_decay, axis_name=axis_name)
    if hparams.restart_threshold > 0:
      table, ema, restarted = restart_dead_codes(
          jax.random.fold_in(rng, state.step), table, ema, flat_z,
          threshold=hparams.restart_threshold, axis_name=axis_name)
      metrics['vq/restarted'] = restarted.astype(jnp.float32)
    decoder = new_state.decoder.replace(params=_with_codebook(new_state.decoder.params, table))
    new_state = new_state.replace(decoder=decoder, aux={'ema': ema})
  return new_state, parallel.pmean(metrics, axis_name)


def encode(state: state_lib.State, x: jax.Array, rng: jax.Array, *, networks,
           axis_name: str | None = None) -> base.Encoding:
  """Nearest-codeword codes and the eval-mode decoder output (no analytic q: no KL)."""
  del rng, axis_name  # Deterministic.
  z = networks.encoder.apply({'params': state.encoder.params}, x)
  q = vector_quantize(z, codebook(state.decoder.params))
  out = base.decoder_apply(state.decoder, state.decoder.params, q.z_q,
                           decoder=networks.decoder, train=False, method='trunk')
  return base.Encoding(tokens=q.index, out=out, kl=None)
