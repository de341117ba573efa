"""Training state: one Flax `TrainState` per optimised network, the step, and
whatever else a method carries (`aux`: DAPS's trust-region dual, PPO's value
network and behaviour policy, VQ-VAE's EMA codebook statistics)."""

from typing import Any, Callable

import flax.struct
import jax
import jax.numpy as jnp
from flax.training import train_state


class ModelState(train_state.TrainState):
  """A `TrainState` that also carries BatchNorm statistics (empty if none)."""
  batch_stats: Any = None


@flax.struct.dataclass
class State:
  step: jax.Array  # int32 scalar: updates applied so far
  encoder: ModelState
  decoder: ModelState
  aux: dict  # method-specific pytree, e.g. {'dual': TrainState of {'log_eta'}} for DAPS


def run_keys(seed: int) -> tuple[jax.Array, jax.Array, jax.Array]:
  """(init, loop, eval) keys of a run: one seed, split by purpose."""
  return tuple(jax.random.split(jax.random.key(seed), 3))


def variables(state: ModelState) -> dict:
  """Flax variables of a model state for `apply`."""
  if state.batch_stats:
    return {'params': state.params, 'batch_stats': state.batch_stats}
  return {'params': state.params}


def model_state(model_vars: dict, tx, apply_fn=None) -> ModelState:
  """A `ModelState` of freshly initialised Flax variables."""
  return ModelState.create(apply_fn=apply_fn, params=model_vars['params'], tx=tx,
                           batch_stats=model_vars.get('batch_stats', {}))


def create_state(rng: jax.Array, networks, txs, *,
                 init_aux: Callable[[jax.Array, dict, dict], dict] | None = None) -> State:
  """Initialises all parameters (call under `jax.jit`: eager init is slow).

  Args:
    rng: PRNG key.
    networks: `models.Networks`.
    txs: (encoder, decoder) optax transformations.
    init_aux: (rng, encoder variables, decoder variables) -> the method's `aux`.
  """
  rng_enc, rng_dec, rng_aux = jax.random.split(rng, 3)
  tokens = jnp.zeros((1, networks.encoder.num_tokens), jnp.int32)
  enc_vars = networks.encoder.init(rng_enc, networks.example_inputs(1), tokens)
  dec_vars = networks.decoder.init(rng_dec, networks.example_codes(1), train=False)
  tx_enc, tx_dec = txs
  aux = init_aux(rng_aux, enc_vars, dec_vars) if init_aux is not None else {}
  return State(step=jnp.zeros((), jnp.int32),
               encoder=model_state(enc_vars, tx_enc, networks.encoder.apply),
               decoder=model_state(dec_vars, tx_dec, networks.decoder.apply),
               aux=aux)
