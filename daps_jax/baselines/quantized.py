"""VQ-VAE and FSQ baselines: deterministic quantisation with straight-through gradients.

Shape legend: B batch, L latent tokens, V codebook size, E decoder embedding
width, d FSQ dimensions.

Both use the non-autoregressive encoder with a continuous head ([B, L, E] for
VQ, [B, L, d] for FSQ) and the same decoders as DAPS. Reconstruction loss is the
negative log-likelihood divided by the number of data dimensions (spec §5).

VQ-VAE: the codebook is the decoder's embedding table [V, E], so the parameter
budget matches DAPS's decoder. Loss = NLL / dims + codebook + c * commitment.
Off by default (the paper's baseline is the plain loss): an EMA codebook
(`ema_decay`) and restarts of codes whose EMA count falls below
`restart_threshold`, statistics summed over devices.

FSQ: each of the d dims is bounded and rounded to its level grid; a code vector
indexes one of prod(levels) codes and enters the decoder through a Dense(E).
"""

import dataclasses

import jax
import jax.numpy as jnp

from daps_jax import estimators
from daps_jax import evaluation
from daps_jax import parallel
from daps_jax import state as state_lib
from daps_jax.baselines import common


@dataclasses.dataclass(frozen=True)
class VQHparams:
  commitment_cost: float  # weight of |z - sg(e)|^2
  ema_decay: float | None = None  # None: the codebook learns from its loss (the paper)
  restart_threshold: float = 0.0  # EMA count below which a code restarts (0: never)


@dataclasses.dataclass(frozen=True)
class FSQHparams:
  levels: tuple[int, ...]  # quantisation levels per dimension


def codebook(decoder_params: dict) -> jax.Array:
  """The VQ codebook [V, E]: the decoder's embedding table."""
  return decoder_params['embed']['embedding']


def _with_codebook(decoder_params: dict, table: jax.Array) -> dict:
  return {**decoder_params, 'embed': {**decoder_params['embed'], 'embedding': table}}


def init_vq_aux(hparams: VQHparams, decoder_vars: dict) -> dict:
  """{'ema': VQEma} when the EMA codebook is on, else {}."""
  if hparams.ema_decay is None:
    return {}
  return {'ema': estimators.vq_ema_init(codebook(decoder_vars['params']))}


def _num_dims(images: jax.Array) -> int:
  return images[0].size


def vq_train_step(state: state_lib.State, batch: dict, rng: jax.Array, *, networks,
                  hparams: VQHparams, axis_name: str | None = None
                  ) -> tuple[state_lib.State, dict]:
  """One joint VQ-VAE step (plus the EMA codebook update and restarts when on)."""
  images = batch['image']
  use_ema = hparams.ema_decay is not None

  def loss_fn(enc_params, dec_params):
    z = networks.encoder.apply({'params': enc_params}, images)
    q = estimators.vector_quantize(z, codebook(dec_params))
    out, updates = common.decoder_apply(state.decoder, dec_params, q.z_q,
                                        decoder=networks.decoder, train=True, method='trunk')
    log_p = networks.likelihood.log_prob(out, images)
    loss = -log_p.mean() / _num_dims(images) + hparams.commitment_cost * q.commitment_loss
    if not use_ema:
      loss += q.codebook_loss
    return loss, ((z, q, log_p), updates)

  new_state, (z, q, log_p), metrics = common.joint_step(state, loss_fn, axis_name)
  metrics.update({
      'loss/decoder': -log_p.mean(),
      'decoder/log_p': log_p.mean(),
      'vq/codebook_loss': q.codebook_loss,
      'vq/commitment_loss': q.commitment_loss,
  })
  if use_ema:
    flat_z = z.reshape(-1, z.shape[-1])
    ema, table = estimators.vq_ema_update(state.aux['ema'], flat_z, q.index.reshape(-1),
                                          decay=hparams.ema_decay, axis_name=axis_name)
    if hparams.restart_threshold > 0:
      table, ema, restarted = estimators.restart_dead_codes(
          jax.random.fold_in(rng, state.step), table, ema, flat_z,
          threshold=hparams.restart_threshold, axis_name=axis_name)
      metrics['vq/restarted'] = restarted.astype(jnp.float32)
    decoder = new_state.decoder.replace(params=_with_codebook(new_state.decoder.params, table))
    new_state = new_state.replace(decoder=decoder, aux={'ema': ema})
  return new_state, parallel.pmean(metrics, axis_name)


def vq_encode(state: state_lib.State, images: jax.Array, rng: jax.Array, *, networks,
              axis_name: str | None = None) -> evaluation.Encoding:
  """Nearest-codeword codes and the eval-mode decoder output (no analytic q: no KL)."""
  del rng, axis_name  # Deterministic.
  z = networks.encoder.apply({'params': state.encoder.params}, images)
  q = estimators.vector_quantize(z, codebook(state.decoder.params))
  out = common.decoder_apply(state.decoder, state.decoder.params, q.z_q,
                             decoder=networks.decoder, train=False, method='trunk')
  return evaluation.Encoding(tokens=q.index, out=out, kl=None)


def fsq_train_step(state: state_lib.State, batch: dict, rng: jax.Array, *, networks,
                   hparams: FSQHparams, axis_name: str | None = None
                   ) -> tuple[state_lib.State, dict]:
  """One joint FSQ step on NLL / dims."""
  del rng  # Deterministic.
  images = batch['image']

  def loss_fn(enc_params, dec_params):
    z = networks.encoder.apply({'params': enc_params}, images)
    codes = estimators.fsq_quantize(z, hparams.levels)
    out, updates = common.decoder_apply(state.decoder, dec_params, codes,
                                        decoder=networks.decoder, train=True)
    log_p = networks.likelihood.log_prob(out, images)
    return -log_p.mean() / _num_dims(images), (log_p, updates)

  new_state, log_p, metrics = common.joint_step(state, loss_fn, axis_name)
  metrics.update({'loss/decoder': -log_p.mean(), 'decoder/log_p': log_p.mean()})
  return new_state, parallel.pmean(metrics, axis_name)


def fsq_encode(state: state_lib.State, images: jax.Array, rng: jax.Array, *, networks,
               levels: tuple[int, ...], axis_name: str | None = None) -> evaluation.Encoding:
  """Rounded codes as indices in [0, prod(levels)) and the eval-mode decoder output."""
  del rng, axis_name  # Deterministic.
  z = networks.encoder.apply({'params': state.encoder.params}, images)
  codes = estimators.fsq_quantize(z, levels)
  out = common.decoder_apply(state.decoder, state.decoder.params, codes,
                             decoder=networks.decoder, train=False)
  return evaluation.Encoding(tokens=estimators.fsq_codes_to_indices(codes, levels), out=out,
                             kl=None)
