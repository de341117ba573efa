"""Host-side logging: metrics as JSON lines and TensorBoard, and progress lines.

Only one process writes. The caller decides which (`is_writer`), so this module
knows nothing about processes or devices.
"""

from collections.abc import Callable, Mapping
import json
import math
import os
import pathlib
import time
from types import TracebackType

from absl import logging
import numpy as np
import tensorboardX

from daps_jax import files


class MetricWriter:
  """Writes scalars to `workdir/metrics.jsonl` and scalars and images to `workdir/tb`.

  Each `write_scalars` call appends one line `{"step": step, name: value, ...}`
  and flushes it. Values become Python floats; NaN and +-inf are written as JSON
  `null` so every line is strict JSON (TensorBoard still receives the raw value).
  The file is opened for appending, so a resumed run continues it; TensorBoard
  starts a new event file per writer, which TensorBoard merges by step. Names
  with '/' ('train/loss') are grouped by their prefix in TensorBoard.

  `resume_step` (a run restored from the checkpoint of that step): records of
  later steps, written by the run before it was killed, are dropped from
  metrics.jsonl (rewritten atomically) and purged from TensorBoard (its purge
  step), so every step appears once and the curves match the restored state.

  With `is_writer=False` (every process but one) nothing is created or written.
  """

  def __init__(self, workdir: str | os.PathLike[str], is_writer: bool = True,
               resume_step: int | None = None):
    self._jsonl = None
    self._tb = None
    if is_writer:
      workdir = pathlib.Path(workdir)
      workdir.mkdir(parents=True, exist_ok=True)
      if resume_step is not None:
        drop_records_after(workdir / 'metrics.jsonl', resume_step)
      self._jsonl = open(workdir / 'metrics.jsonl', 'a', encoding='utf-8')
      # tensorboardX names event files by the second; the suffix keeps a writer
      # reopened within the same second (a quick resume) from overwriting one.
      self._tb = tensorboardX.SummaryWriter(
          str(workdir / 'tb'), filename_suffix=f'.{os.getpid()}.{time.time_ns()}',
          purge_step=None if resume_step is None else resume_step + 1)

  def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
    """Appends `scalars` at `step`; values may be numpy or 0-d JAX arrays."""
    if self._jsonl is None:
      return
    values = {name: float(value) for name, value in scalars.items()}
    record = {'step': int(step)}
    record.update({n: v if math.isfinite(v) else None for n, v in values.items()})
    self._jsonl.write(json.dumps(record, allow_nan=False) + '\n')
    self._jsonl.flush()
    for name, value in values.items():
      self._tb.add_scalar(name, value, int(step))

  def write_images(self, step: int, images: Mapping[str, np.ndarray]) -> None:
    """Writes uint8 [H, W, C] images (C in {1, 3}) to TensorBoard."""
    if self._tb is None:
      return
    for name, image in images.items():
      image = np.asarray(image)
      if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] not in (1, 3):
        raise ValueError(
            f'image {name!r} must be uint8 [H, W, 1 or 3], got {image.dtype} {image.shape}.')
      self._tb.add_image(name, image, int(step), dataformats='HWC')

  def close(self) -> None:
    """Flushes and closes both files; safe to call twice."""
    if self._jsonl is not None:
      self._jsonl.close()
      self._tb.close()
      self._jsonl = None
      self._tb = None

  def __enter__(self) -> 'MetricWriter':
    return self

  def __exit__(
      self,
      exc_type: type[BaseException] | None,
      exc: BaseException | None,
      traceback: TracebackType | None,
  ) -> None:
    self.close()


def drop_records_after(path: pathlib.Path, step: int) -> int:
  """Rewrites the JSON-lines file `path` without records of steps after `step`.

  A torn last line (a process killed mid-write) is dropped too. Atomic: a
  temporary file replaces the old one. Returns the number of lines dropped.
  """
  if not path.exists():
    return 0
  kept, dropped = [], 0
  for line in path.read_text(encoding='utf-8').splitlines():
    try:
      record = json.loads(line)
    except json.JSONDecodeError:
      dropped += 1
      continue
    if record.get('step', 0) <= step:
      kept.append(line)
    else:
      dropped += 1
  if dropped:
    with files.atomic_open(path) as f:
      f.write(''.join(line + '\n' for line in kept))
  return dropped


def format_duration(seconds: float) -> str:
  """Formats a non-negative duration as '45s', '8m40s' or '3h05m12s'."""
  if not seconds >= 0 or math.isinf(seconds):
    raise ValueError(f'duration must be finite and non-negative, got {seconds}.')
  total = int(round(seconds))
  hours, rest = divmod(total, 3600)
  minutes, secs = divmod(rest, 60)
  if hours:
    return f'{hours}h{minutes:02d}m{secs:02d}s'
  if minutes:
    return f'{minutes}m{secs:02d}s'
  return f'{secs}s'


class ProgressLogger:
  """Logs 'step 1200/5000 (24.0%) | 7.31 steps/s | ETA 8m40s' every `every_steps`.

  The rate is measured over the window since the previous report. The first
  call for a step after `start_step` (where the run starts or resumes) only
  starts the clock: it comes after the first step, whose time is mostly
  compilation, so no report includes it. Calls for steps not past the last one
  seen are ignored.
  """

  def __init__(
      self,
      total_steps: int,
      start_step: int,
      every_steps: int,
      time_fn: Callable[[], float] = time.perf_counter,
  ):
    if total_steps <= 0 or every_steps <= 0:
      raise ValueError(
          f'total_steps and every_steps must be positive, got {total_steps}, {every_steps}.')
    if not 0 <= start_step <= total_steps:
      raise ValueError(f'start_step {start_step} is outside [0, {total_steps}].')
    self._total_steps = total_steps
    self._every_steps = every_steps
    self._time_fn = time_fn
    self._last_step = start_step
    self._last_time: float | None = None

  def __call__(self, step: int) -> float | None:
    """Call after each step; returns the steps/s it reported, else None."""
    if step <= self._last_step:
      return None
    if self._last_time is None:
      self._last_step, self._last_time = step, self._time_fn()
      return None
    if step % self._every_steps:
      return None
    now = self._time_fn()
    rate = (step - self._last_step) / max(now - self._last_time, 1e-9)
    eta = format_duration(max(self._total_steps - step, 0) / rate)
    logging.info(
        'step %d/%d (%.1f%%) | %.2f steps/s | ETA %s',
        step, self._total_steps, 100.0 * step / self._total_steps, rate, eta)
    self._last_step, self._last_time = step, now
    return rate
