"""The joint encoder + decoder update shared by the single-loss baselines.

Gumbel, GR-MCK, VQ-VAE and FSQ minimise one loss of both networks' parameters
(gradients reach the encoder through a straight-through path); DAPS and PPO
update them with separate losses instead.
"""

from typing import Callable

import jax
import optax

from daps_jax import optim
from daps_jax import parallel
from daps_jax import state as state_lib


def joint_step(state: state_lib.State, loss_fn: Callable, axis_name: str | None = None):
  """One gradient step of both networks on `loss_fn`.

  Args:
    state: the train state.
    loss_fn: (encoder params, decoder params) -> (loss, (extras, mutated decoder
      collections, e.g. {'batch_stats': ...})).
    axis_name: optional device axis to average gradients over.
  Returns:
    (state with both networks updated and the step advanced, extras, metrics).
  """
  (loss, (extras, updates)), (g_enc, g_dec) = jax.value_and_grad(
      loss_fn, argnums=(0, 1), has_aux=True)(state.encoder.params, state.decoder.params)
  g_enc, g_dec = parallel.pmean((g_enc, g_dec), axis_name)
  encoder = state.encoder.apply_gradients(grads=g_enc)
  decoder = state.decoder.apply_gradients(grads=g_dec,
                                          batch_stats=updates.get('batch_stats', {}))
  metrics = {'loss/total': loss,
             'grad_norm/encoder': optax.tree.norm(g_enc),
             'grad_norm/decoder': optax.tree.norm(g_dec),
             'optim/encoder_skipped': optim.skipped_updates(encoder.opt_state),
             'optim/decoder_skipped': optim.skipped_updates(decoder.opt_state)}
  new_state = state.replace(step=state.step + 1, encoder=encoder, decoder=decoder)
  return new_state, extras, metrics


def decoder_apply(decoder_state: state_lib.ModelState, params, inputs: jax.Array, *,
                  decoder, train: bool, method: str | None = None):
  """The decoder with `params` in place of the state's; train mode returns the mutated
  collections too (BatchNorm statistics)."""
  model_vars = state_lib.variables(decoder_state.replace(params=params))
  if train:
    return decoder.apply(model_vars, inputs, train=True, method=method,
                         mutable=['batch_stats'])
  return decoder.apply(model_vars, inputs, train=False, method=method)
