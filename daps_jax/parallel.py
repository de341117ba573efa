"""Everything that knows about devices and processes.

The step functions take an `axis_name`; this module maps them over the local
devices with `jax.pmap` under `AXIS`, replicates state onto the devices and
splits host batches into per-device shards.
"""

import functools
from typing import Callable, Sequence

import chex
import jax
import numpy as np
from flax import jax_utils
from jax.experimental import multihost_utils

AXIS = 'devices'


def local_device_count() -> int:
  return jax.local_device_count()


def device_count() -> int:
  """Devices over all processes."""
  return jax.device_count()


def process_rows() -> dict[str, int]:
  """{'process_index', 'process_count'}: which rows of a global batch this process reads."""
  return {'process_index': jax.process_index(), 'process_count': jax.process_count()}


def topology(global_batch: int) -> str:
  """One log line: this process, its devices and its share of `global_batch`."""
  return (f'process {jax.process_index()} of {jax.process_count()}, {jax.local_device_count()} '
          f'local devices, {jax.device_count()} global devices; global batch {global_batch} = '
          f'{process_batch_size(global_batch)} per process = '
          f'{global_batch // jax.device_count()} per device')


def is_writer() -> bool:
  """Only process 0 writes logs, TensorBoard and images."""
  return jax.process_index() == 0


def barrier(name: str) -> None:
  """Waits until every process reaches this point (a no-op with one process)."""
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


def all_processes(flag: bool) -> bool:
  """True when `flag` is true on every process (so all take the same branch)."""
  if jax.process_count() == 1:
    return flag
  return bool(np.all(multihost_utils.process_allgather(np.asarray(flag))))


def any_process(flag: bool) -> bool:
  """True when `flag` is true on some process (a collective with several processes)."""
  return not all_processes(not flag)


def process_batch_size(global_batch: int) -> int:
  """The share of a global batch that this process loads."""
  return global_batch // jax.process_count()


def pmean(tree, axis_name: str | None):
  """Mean over the device axis inside a mapped step; the identity without one."""
  return tree if axis_name is None else jax.lax.pmean(tree, axis_name)


def psum(tree, axis_name: str | None):
  """Sum over the device axis inside a mapped step; the identity without one."""
  return tree if axis_name is None else jax.lax.psum(tree, axis_name)


def _device_axis(devices: Sequence[jax.Device]) -> jax.sharding.NamedSharding:
  """Arrays [devices, ...] split over `devices` along the leading axis, as `pmap_step`
  lays out its inputs and outputs."""
  return jax.sharding.NamedSharding(jax.sharding.Mesh(np.array(devices), (AXIS,)),
                                    jax.sharding.PartitionSpec(AXIS))


def replicate(tree, devices: Sequence[jax.Device] | None = None):
  """Host pytree -> one copy per device (leading device axis; default: local devices).

  The copies are laid out exactly as `pmap_step` returns its outputs, so the
  step is traced and compiled once, not again after its first call.
  """
  devices = devices or jax.local_devices()
  sharding = _device_axis(devices)
  return jax.tree.map(
      lambda x: jax.device_put(np.broadcast_to(np.asarray(x), (len(devices), *np.shape(x))),
                               sharding), tree)


def unreplicate(tree):
  """Device-replicated pytree -> host numpy copy of device 0's."""
  return jax.device_get(jax_utils.unreplicate(tree))


def unshard(x) -> np.ndarray:
  """Per-device results [devices, b, ...] -> one host array [devices * b, ...]."""
  x = np.asarray(x)
  return x.reshape(-1, *x.shape[2:])


def shard(batch, num_devices: int | None = None):
  """Host batch [b, ...] -> [devices, b / devices, ...] (default: local devices)."""
  n = num_devices or local_device_count()

  def split(x):
    if x.shape[0] % n:
      raise ValueError(f'Batch of {x.shape[0]} does not divide over {n} local devices.')
    return np.asarray(x).reshape(n, x.shape[0] // n, *x.shape[1:])

  return jax.tree.map(split, batch)


def device_batch(batch):
  """Host batch [b, ...] -> per-device shards placed as `pmap_step` reads them, so a
  step called on it again and again transfers nothing (benchmarks)."""
  devices = jax.local_devices()
  return jax.device_put(shard(batch, len(devices)), _device_axis(devices))


def pmap_step(fn: Callable, *, donate_state: bool = False, max_traces: int | None = None,
              devices: Sequence[jax.Device] | None = None, **static) -> Callable:
  """pmap(fn(state, batch, rng, axis_name=AXIS, **static)) over local devices.

  `rng` is broadcast (not split): the step derives per-input keys from it.
  `max_traces` guards against re-tracing (chex raises on one trace too many).
  """
  bound = functools.partial(fn, axis_name=AXIS, **static)

  def step(state, batch, rng):
    return bound(state, batch, rng)

  if max_traces is not None:
    step = chex.assert_max_traces(step, n=max_traces)
  return jax.pmap(step, axis_name=AXIS, in_axes=(0, 0, None), devices=devices,
                  donate_argnums=(0,) if donate_state else ())


def pmap_mapped(fn: Callable, **static) -> Callable:
  """pmap(fn(*args, axis_name=AXIS, **static)) with every argument split over the
  local devices (e.g. replicated parameters and sharded images)."""
  return jax.pmap(functools.partial(fn, axis_name=AXIS, **static), axis_name=AXIS)
