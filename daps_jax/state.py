"""Training state: one Flax `TrainState` per optimised part plus the step."""

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
from flax.training import train_state


class ModelState(train_state.TrainState):
  """A `TrainState` that also carries BatchNorm statistics (empty if none)."""
  batch_stats: Any = None


@flax.struct.dataclass
class DapsState:
  step: jax.Array  # int32 scalar: updates applied so far
  encoder: ModelState
  decoder: ModelState
  dual: train_state.TrainState  # params {'log_eta': scalar}


def variables(state: ModelState) -> dict:
  """Flax variables of a model state for `apply`."""
  if state.batch_stats:
    return {'params': state.params, 'batch_stats': state.batch_stats}
  return {'params': state.params}


def create_state(rng: jax.Array, networks, txs, *, image_shape: tuple[int, int, int],
                 eta_init: float) -> DapsState:
  """Initialises all parameters (call under `jax.jit`: eager init is slow).

  Args:
    rng: PRNG key.
    networks: `build.Networks`.
    txs: (encoder, decoder, dual) optax transformations.
    image_shape: (H, W, C).
    eta_init: initial trust-region temperature eta (> 0).
  """
  rng_enc, rng_dec = jax.random.split(rng)
  images = jnp.zeros((1, *image_shape), jnp.float32)
  tokens = jnp.zeros((1, networks.encoder.num_tokens), jnp.int32)
  enc_vars = networks.encoder.init(rng_enc, images, tokens)
  dec_vars = networks.decoder.init(rng_dec, tokens, train=False)
  tx_enc, tx_dec, tx_dual = txs

  def model_state(module, model_vars, tx):
    return ModelState.create(apply_fn=module.apply, params=model_vars['params'], tx=tx,
                             batch_stats=model_vars.get('batch_stats', {}))

  dual = train_state.TrainState.create(
      apply_fn=None, params={'log_eta': jnp.log(jnp.asarray(eta_init, jnp.float32))}, tx=tx_dual)
  return DapsState(step=jnp.zeros((), jnp.int32),
                   encoder=model_state(networks.encoder, enc_vars, tx_enc),
                   decoder=model_state(networks.decoder, dec_vars, tx_dec),
                   dual=dual)
