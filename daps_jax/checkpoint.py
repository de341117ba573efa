"""Orbax checkpoints of the train state and the data iterator, in `workdir/checkpoints`.

Orbax writes a step into a temporary directory and renames it when the write is
complete, so a process killed during a save leaves no step that `all_steps` lists
(`tests/test_faults.py` kills runs during saves). A step that cannot be restored
(truncated or missing arrays, wrong shapes) is renamed to `<step>.corrupt` by
`restore_latest`, which then falls back to the previous one.
"""

import contextlib
import logging as std_logging
import os
import shutil
import sys

from absl import logging
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


def _cause(e: Exception) -> str:
  """The root cause of an orbax or tensorstore error as one short line.

  Their messages nest causes as `outer: inner: root`, may span lines (an error per
  array) and end with the whole tensorstore spec; the root is the last clause.
  """
  text = ' '.join(str(e).split()).split(' [tensorstore_spec')[0]
  root = text.split(': ')[-1] or type(e).__name__
  return root if len(root) <= 300 else root[:299] + '…'


def _size_gb(directory: str) -> float:
  """Size of the newest complete step directory under `directory`, in GB."""
  steps = [d for d in os.listdir(directory) if d.isdigit()] if os.path.isdir(directory) else []
  if not steps:
    return 0.0
  newest = os.path.join(directory, max(steps, key=int))
  return sum(os.path.getsize(os.path.join(root, f)) for root, _, files in os.walk(newest)
             for f in files) / 1e9


class _AbortedReads(std_logging.Filter):
  """Drops asyncio's 'Task exception was never retrieved' of reads left behind."""

  def filter(self, record: std_logging.LogRecord) -> bool:
    return not record.getMessage().startswith('Task exception was never retrieved')


def _drop_aborted_read_callbacks() -> None:
  """Keeps a failed restore to its one error message.

  When one read of a corrupt checkpoint fails, orbax's event loop closes while
  tensorstore still completes the other reads; each completion's callback then
  raises RuntimeError('Event loop is closed'), which Python prints as an
  unraisable exception, and the read tasks that failed too are logged by asyncio
  as never retrieved (dozens of tracebacks after the real error). This drops
  exactly those; every other unraisable exception goes to the previous hook.
  """
  asyncio_logger = std_logging.getLogger('asyncio')
  if not any(isinstance(f, _AbortedReads) for f in asyncio_logger.filters):
    asyncio_logger.addFilter(_AbortedReads())
  previous = sys.unraisablehook
  if getattr(previous, 'drops_aborted_reads', False):
    return

  def hook(unraisable):
    value = unraisable.exc_value
    if not (isinstance(value, RuntimeError) and str(value) == 'Event loop is closed'):
      previous(unraisable)

  hook.drops_aborted_reads = True
  sys.unraisablehook = hook


def _free_name(path: str) -> str:
  """`path`, or `path.1`, `path.2`, ... whichever does not exist yet."""
  candidate, i = path, 0
  while os.path.exists(candidate):
    i += 1
    candidate = f'{path}.{i}'
  return candidate


class Checkpointer:
  """Saves {state, data} every call of `save`; keeps the newest `keep`."""

  def __init__(self, workdir: str, keep: int):
    _drop_aborted_read_callbacks()
    self._writing = None  # The step of the save in flight, if any.
    self.directory = os.path.join(os.path.abspath(workdir), 'checkpoints')
    self._manager = ocp.CheckpointManager(
        self.directory, options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True))

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def save(self, step: int, state, data_state: dict) -> None:
    """`state` is a host pytree (numpy); saving is asynchronous (an error of the
    previous save surfaces here or in `close`, as a CheckpointError naming it)."""
    with self._write_errors():
      self._manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                       data=ocp.args.JsonSave(data_state)))
    self._writing = step

  @contextlib.contextmanager
  def _write_errors(self):
    """Turns a failed write (a full disk, an unwritable workdir) into one clear error."""
    try:
      yield
    except CheckpointError:
      raise
    except Exception as e:  # Orbax and tensorstore raise many types for failed writes.
      free = shutil.disk_usage(self.directory).free if os.path.isdir(self.directory) else 0
      raise CheckpointError(
          f'Writing checkpoint {self._writing} to {self.directory} failed ({_cause(e)}). '
          f'{free / 1e6:.1f} MB are free there; a checkpoint needs about '
          f'{_size_gb(self.directory) * 1e3:.1f} MB (the last complete one). Free space or use '
          f'another --workdir; the older checkpoints {self.all_steps()} are intact.') from e

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
          f'Cannot read checkpoint {step} in {self.directory} ({_cause(e)})') from e
    problems = _shape_mismatches(restored.state, target)
    if problems:
      raise CheckpointError(
          f'Checkpoint {step} in {self.directory} does not match the config: '
          + '; '.join(problems[:5]) + '. Resume with the config saved in the workdir '
          '(config.json) or use a fresh --workdir.')
    return restored.state, restored.data

  def restore_latest(self, target, *, fallback: bool = True):
    """(step, state, data state) of the newest checkpoint that restores, or (0, target,
    None) when there is none.

    With `fallback`, a step that fails to restore is renamed to `<step>.corrupt` (kept,
    never deleted) with a warning, and the previous one is tried; if none restores,
    CheckpointError names them all. Without it, the first failure is raised.
    """
    renamed = []
    for step in reversed(self.all_steps()):
      try:
        return (step, *self.restore(step, target))
      except CheckpointError as e:
        if not fallback:
          raise CheckpointError(f'{e}. Rerun without --noresume_fallback to fall back to an '
                                'older checkpoint, or use a fresh --workdir.') from e
        bad = os.path.join(self.directory, str(step))
        quarantined = _free_name(bad + '.corrupt')
        os.rename(bad, quarantined)
        self._manager.reload()
        renamed.append(quarantined)
        logging.warning('%s; renamed it to %s and falling back to the previous checkpoint.',
                        e, quarantined)
    if renamed:
      raise CheckpointError(
          f'No checkpoint in {self.directory} could be restored; renamed {", ".join(renamed)}. '
          'Rename one back to retry it, or start a fresh run with another --workdir.')
    return 0, target, None

  def close(self) -> None:
    try:
      with self._write_errors():
        self._manager.wait_until_finished()
        self._manager.check_for_errors()
    finally:
      self._manager.close()
