"""Atomic file writes: a reader sees the old file or the new one, never a part.

Readers include the other processes of a multi-process run (they check a run's
config.json while process 0 writes it) and a resume after the writer was killed.
"""

import contextlib
import json
import os
import uuid
from collections.abc import Iterator
from typing import IO, Any

from daps_jax import errors


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = 'w') -> Iterator[IO]:
  """Opens a new file beside `path` that replaces `path` when the block ends.

  The parent folder is created. On a clean exit the file is flushed, synced and
  renamed onto `path` (`os.replace`, atomic on POSIX); on an exception it is
  removed and `path` is left as it was.

  Args:
    path: the destination.
    mode: 'w' (text, UTF-8) or 'wb'.
  """
  if mode not in ('w', 'wb'):
    raise ValueError(f"mode must be 'w' or 'wb', not {mode!r}.")
  path = os.fspath(path)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  temporary = f'{path}.{uuid.uuid4().hex}.tmp'
  try:
    with open(temporary, mode.replace('w', 'x'), encoding=None if 'b' in mode else 'utf-8') as f:
      yield f
      f.flush()
      os.fsync(f.fileno())
    os.replace(temporary, path)
  except BaseException:
    with contextlib.suppress(FileNotFoundError):
      os.remove(temporary)
    raise


def read_json(path: str, error: type[errors.UserError], fix: str) -> Any:
  """The JSON in `path`; one that does not parse raises `error` naming the file and `fix`."""
  with open(path, encoding='utf-8') as f:
    try:
      return json.load(f)
    except json.JSONDecodeError as e:
      raise error(f'{path} is not valid JSON ({e}): {fix}') from None
