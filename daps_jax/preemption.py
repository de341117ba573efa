"""Stopping a run cleanly on SIGTERM, SIGINT or SIGUSR1.

TPU preemptions and `scancel` send SIGTERM, SLURM's `--signal=USR1@T` sends SIGUSR1
T seconds before the time limit, Ctrl-C sends SIGINT. While `StopRequest` is
active (the whole of a training run, restore and final checkpoint write included)
its handlers only record the first signal; the training loop asks
`requested()` after each step, finishes that step, checkpoints it (data iterator
included), flushes its logs and raises `Preempted`, which `main` turns into the
exit status 128 + the signal number (143 for SIGTERM, 130 for SIGINT, 138 for
SIGUSR1). Running the same command again resumes from that step. Later signals
are logged and ignored, so a second Ctrl-C during the save does not cut it short.

On several processes `requested()` is a collective (every process learns whether
any process was signalled), so all processes stop and save at the same step.
"""

import signal
import threading

from absl import logging

from daps_jax import parallel

SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)


class Preempted(Exception):
  """The run stopped on a signal after saving a checkpoint at `step`."""

  def __init__(self, signum: int, step: int):
    self.signum, self.step = signum, step
    super().__init__(f'Stopped by {signal.Signals(signum).name} after saving a checkpoint at '
                     f'step {step}; run the same command again to resume from it.')

  @property
  def exit_code(self) -> int:
    return 128 + self.signum


class StopRequest:
  """Context manager: records the first of `SIGNALS` while active (main thread only)."""

  def __init__(self):
    self.signum = None
    self._previous = {}

  def __enter__(self) -> 'StopRequest':
    if threading.current_thread() is threading.main_thread():
      self._previous = {s: signal.signal(s, self._record) for s in SIGNALS}
    return self

  def __exit__(self, *exc) -> None:
    for s, handler in self._previous.items():
      signal.signal(s, handler)
    self._previous = {}

  def _record(self, signum: int, frame) -> None:
    del frame
    if self.signum is None:
      self.signum = signum
      logging.warning('%s received: stopping after this step with a checkpoint.',
                      signal.Signals(signum).name)
    else:
      logging.warning('%s received again: ignored while the run saves and stops.',
                      signal.Signals(signum).name)

  def requested(self) -> bool:
    """Whether any process was signalled (the same answer on every process)."""
    stop = parallel.any_process(self.signum is not None)
    if stop and self.signum is None:  # Signalled elsewhere: stop as that process does.
      self.signum = signal.SIGTERM
    return stop
