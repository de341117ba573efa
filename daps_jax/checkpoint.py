"""Orbax checkpoints of the train state and the data iterator, in `workdir/checkpoints`."""

import os

import jax
import numpy as np
import orbax.checkpoint as ocp

from daps_jax.errors import CheckpointError


def _shape_mismatches(restored, target) -> list[str]:
  problems = []
  flat_target = dict(jax.tree_util.tree_flatten_with_path(target)[0])
  flat_restored = dict(jax.tree_util.tree_flatten_with_path(restored)[0])
  for path, leaf in flat_target.items():
    got = flat_restored.get(path)
    if got is None or np.shape(got) != np.shape(leaf):
      problems.append(f'{jax.tree_util.keystr(path)}: checkpoint {np.shape(got)}, '
                      f'config {np.shape(leaf)}')
  return problems


class Checkpointer:
  """Saves {state, data} every call of `save`; keeps the newest `keep`."""

  def __init__(self, workdir: str, keep: int):
    self.directory = os.path.join(os.path.abspath(workdir), 'checkpoints')
    self._manager = ocp.CheckpointManager(
        self.directory, options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True))

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def save(self, step: int, state, data_state: dict) -> None:
    """`state` is a host pytree (numpy); saving is asynchronous."""
    self._manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                     data=ocp.args.JsonSave(data_state)))

  def restore(self, step: int, target):
    """Restores (state shaped like `target`, data iterator state).

    Raises CheckpointError naming the mismatched arrays when the checkpoint was
    written with different model or optimiser settings.
    """
    try:
      restored = self._manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(target), data=ocp.args.JsonRestore()))
    except Exception as e:  # Orbax raises many types for unreadable checkpoints.
      raise CheckpointError(
          f'Cannot read checkpoint {step} in {self.directory}: {e}. Start a fresh run with '
          'another --workdir, or delete that step directory to fall back to an older one.') from e
    problems = _shape_mismatches(restored.state, target)
    if problems:
      raise CheckpointError(
          f'Checkpoint {step} in {self.directory} does not match the config: '
          + '; '.join(problems[:5]) + '. Resume with the config saved in the workdir '
          '(config.json) or use a fresh --workdir.')
    return restored.state, restored.data

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()
