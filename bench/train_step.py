"""Times the trainer's compiled DAPS step: init, compile and steady-state speed.

  python -m bench.train_step              # mnist, cifar10, imagenet x daps, daps_na
  python bench/train_step.py --configs=mnist --methods=daps --steps=5
  python -m bench.train_step --configs=cifar10 --paper_batch  # the config's batch

For each config x method this builds the state and the step exactly as
`daps_jax.train` does (`parallel.pmap_step(method.train_step, donate_state=True)`)
and feeds it synthetic model-space inputs from a fixed numpy generator: binary
pixels for Bernoulli datasets, standard normal ones for Gaussian datasets. It
times (1) init: `create_state` under `jax.jit` (compile included) plus
replication onto the devices, (2) compile: the first call of the step, traced,
lowered, compiled and run to `block_until_ready`, (3) seconds per step over
`--steps` calls after `--warmup` untimed ones, blocking only after the last.

Each case runs in a fresh Python process by default (`--isolate`), so its
compile is cold and its peak host memory (ru_maxrss) is its own. The persistent
XLA compilation cache is switched off: compile times are real.

On CPU the default batch is `CPU_BATCH`, a small one per dataset that a 2-core
CPU times in seconds to minutes; elsewhere, or with `--paper_batch`, it is the
config's batch. Results go to one JSON file (`bench/results/<platform>.json` by
default) and a table on stdout; see bench/README.md for the columns.
"""

import datetime
import json
import os
import platform
import re
import resource
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:  # Run as a file (python bench/train_step.py), not with -m.
  sys.path.insert(0, REPO)

# pylint: disable=g-import-not-at-top,wrong-import-position
from absl import app
from absl import flags
import jax
import jax.monitoring
import numpy as np

from bench import common
from daps_jax import build
from daps_jax import config_lib
from daps_jax import data
from daps_jax import methods
from daps_jax import parallel
from daps_jax import state as state_lib
# pylint: enable=g-import-not-at-top,wrong-import-position

_CONFIGS = flags.DEFINE_list('configs', ['mnist', 'cifar10', 'imagenet'],
                             'Config files in configs/, without .py.')
_METHODS = flags.DEFINE_list('methods', ['daps', 'daps_na'],
                             f'Methods to time, of {", ".join(methods.NAMES)}.')
_BATCH_SIZE = flags.DEFINE_integer(
    'batch_size', None, "Global batch for every case (default: CPU_BATCH on CPU, else the "
    "config's).")
_PAPER_BATCH = flags.DEFINE_bool('paper_batch', False,
                                 "Use the config's batch on CPU too, not CPU_BATCH.")
_STEPS = flags.DEFINE_integer('steps', 10, 'Timed steps.')
_WARMUP = flags.DEFINE_integer('warmup', 1, 'Untimed steps after the first (compiling) call.')
_OVERRIDE = flags.DEFINE_multi_string(
    'override', [], 'field=value set in every config, e.g. --override=method.num_samples=16 '
    '(values as Python literals, else strings).')
_SEED = flags.DEFINE_integer('seed', 0, 'Seed of the parameters, latents and synthetic images.')
_OUTPUT = flags.DEFINE_string(
    'output', None, 'JSON file (default: bench/results/<platform>.json in the repository).')
_MERGE = flags.DEFINE_bool(
    'merge', True, 'Keep records of other cases already in --output (same config, method, batch '
    'and device count are replaced); --nomerge overwrites the file.')
_ISOLATE = flags.DEFINE_bool(
    'isolate', True, 'Run each case in a fresh process (cold compile, per-case peak memory).')
_RECORD_OUT = flags.DEFINE_string('record_out', None,
                                  'Internal: where an isolated child writes its records.')

# Default global batch on CPU per dataset (config.data.name): small enough that a 2-core CPU
# runs a few steps in seconds (MNIST) to minutes (ImageNet). Other datasets keep their config's.
CPU_BATCH = {'mnist': 256, 'cifar10': 32, 'imagenet2012': 2}

_GB = 1e9
_COMPILE_EVENTS = {  # jax.monitoring duration events -> record fields.
    '/jax/core/compile/jaxpr_trace_duration': 'trace_s',
    '/jax/core/compile/jaxpr_to_mlir_module_duration': 'lower_s',
    '/jax/core/compile/backend_compile_duration': 'xla_compile_s',
}


class _CompileTimer:
  """Sums jax's tracing / lowering / XLA-compile durations and counts XLA compiles."""

  def __init__(self):
    self.reset()
    jax.monitoring.register_event_duration_secs_listener(self._listen)

  def reset(self):
    self.totals = {field: 0.0 for field in _COMPILE_EVENTS.values()}
    self.xla_compiles = 0

  def _listen(self, event: str, duration: float, **unused_kwargs):
    field = _COMPILE_EVENTS.get(event)
    if field:
      self.totals[field] += duration
      self.xla_compiles += field == 'xla_compile_s'


def disable_compilation_cache() -> None:
  """No persistent cache: every compile in this process is a real one."""
  jax.config.update('jax_enable_compilation_cache', False)
  jax.config.update('jax_compilation_cache_dir', None)


def peak_host_gb() -> float:
  """Peak resident memory of this process so far (ru_maxrss: KiB on Linux, bytes on macOS)."""
  peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  return peak * (1 if sys.platform == 'darwin' else 1024) / _GB


def device_memory() -> dict:
  """Peak / current / limit bytes of device 0 in GB, where the backend reports them (not CPU)."""
  stats = jax.local_devices()[0].memory_stats() or {}
  names = {'peak_bytes_in_use': 'device_peak_gb', 'bytes_in_use': 'device_in_use_gb',
           'bytes_limit': 'device_limit_gb'}
  return {field: stats[key] / _GB for key, field in names.items() if key in stats}


def choose_batch(config, platform_name: str, batch_size: int | None, paper_batch: bool) -> int:
  """--batch_size, else CPU_BATCH on CPU (unless --paper_batch), else the config's."""
  if batch_size:
    return batch_size
  if platform_name == 'cpu' and not paper_batch:
    return CPU_BATCH.get(config.data.name, config.batch_size)
  return config.batch_size


def synthetic_batch(spec: data.DatasetSpec, batch_size: int, seed: int) -> dict:
  """{'inputs': [B, *spec.shape] float32} in model space, from a fixed numpy generator."""
  rng = np.random.default_rng(seed)
  shape = (batch_size, *spec.shape)
  if spec.likelihood == 'bernoulli':
    x = (rng.random(shape) < 0.5).astype(np.float32)
  elif spec.likelihood == 'gaussian':
    x = rng.standard_normal(shape, dtype=np.float32)
  else:
    raise ValueError(f'No synthetic inputs for likelihood {spec.likelihood!r}.')
  return {'inputs': x}


def num_params(tree) -> int:
  return int(sum(x.size for x in jax.tree.leaves(tree)))


def time_case(config_name: str, method: str, *, batch_size: int | None, paper_batch: bool,
              num_steps: int, warmup: int, seed: int, timer: _CompileTimer) -> dict:
  """Builds, compiles and times one config x method; returns its record."""
  config = common.load_config(config_name, method)
  overrides = common.parse_overrides(_OVERRIDE.value)
  for dotted, value in overrides.items():
    config_lib.set_field(config, dotted, value)
  platform_name = jax.default_backend()
  num_devices = jax.local_device_count()
  config_batch_size = config.batch_size
  config.batch_size = choose_batch(config, platform_name, batch_size, paper_batch)
  config.seed = seed
  config_lib.validate(config, num_devices=num_devices)
  rss_start = peak_host_gb()

  # (1) Init, as in train.py: jit(create_state), then one copy per device.
  timer.reset()
  start = time.perf_counter()
  run = build.assemble(config, bn_axis_name=parallel.AXIS)
  spec = run.spec
  _, rng_loop, _ = state_lib.run_keys(seed)
  host_state = run.initial_state()
  state = jax.block_until_ready(parallel.replicate(host_state))
  init_s = time.perf_counter() - start

  p_step = parallel.pmap_step(run.method.train_step, donate_state=True)
  batch = jax.block_until_ready(
      parallel.device_batch(synthetic_batch(spec, config.batch_size, seed)))

  # (2) Compile: the first call, cold, through the same entry point the trainer uses.
  timer.reset()
  start = time.perf_counter()
  state, metrics = jax.block_until_ready(p_step(state, batch, rng_loop))
  compile_s = time.perf_counter() - start
  compile_parts = dict(timer.totals)

  # (3) Steady state: dispatch back to back, block once at the end.
  for _ in range(warmup):
    state, metrics = p_step(state, batch, rng_loop)
  jax.block_until_ready((state, metrics))
  timer.reset()
  start = time.perf_counter()
  for _ in range(num_steps):
    state, metrics = p_step(state, batch, rng_loop)
  jax.block_until_ready((state, metrics))
  elapsed = time.perf_counter() - start
  recompiles = timer.xla_compiles

  host_metrics = {k: float(v) for k, v in parallel.unreplicate(metrics).items()}
  device = jax.local_devices()[0]
  m = config.model
  record = {
      'config': config_name, 'method': method, 'dataset': config.data.name,
      'overrides': {k: str(v) for k, v in overrides.items()},
      'platform': platform_name, 'device_kind': device.device_kind, 'num_devices': num_devices,
      'jax_version': jax.__version__,
      'batch_size': config.batch_size, 'per_device_batch': config.batch_size // num_devices,
      'config_batch_size': config_batch_size,
      'image_shape': list(spec.shape), 'likelihood': spec.likelihood,
      'num_samples': config_lib.get(config, 'method.num_samples'), 'num_tokens': m.num_tokens,
      'vocab_size': m.vocab_size, 'width': m.width, 'decoder': m.decoder.kind,
      'encoder_params': num_params(host_state.encoder.params),
      'decoder_params': num_params(host_state.decoder.params),
      'init_s': init_s, 'compile_s': compile_s, **compile_parts,
      'steps': num_steps, 'warmup': warmup,
      'sec_per_step': elapsed / num_steps, 'steps_per_s': num_steps / elapsed,
      'images_per_s': num_steps * config.batch_size / elapsed,
      'recompiles_while_timed': recompiles,
      'peak_host_gb': peak_host_gb(), 'host_gb_before_init': rss_start,
      **device_memory(),
      'metrics_finite': bool(np.all(np.isfinite(list(host_metrics.values())))),
      'elbo_train': host_metrics.get('elbo/train'),
      'date': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
  }
  return record


def run_isolated(config_name: str, method: str) -> list[dict]:
  """The same command for one case in a fresh Python process; its records."""
  with tempfile.TemporaryDirectory() as tmp:
    out = os.path.join(tmp, 'records.json')
    command = [sys.executable, os.path.abspath(__file__), f'--configs={config_name}',
               f'--methods={method}', '--noisolate', f'--record_out={out}',
               f'--steps={_STEPS.value}', f'--warmup={_WARMUP.value}', f'--seed={_SEED.value}',
               f'--paper_batch={_PAPER_BATCH.value}',
               *(f'--override={item}' for item in _OVERRIDE.value)]
    if _BATCH_SIZE.value:
      command.append(f'--batch_size={_BATCH_SIZE.value}')
    code = subprocess.run(command, check=False).returncode
    if code == 0 and os.path.exists(out):
      with open(out) as f:
        return json.load(f)
  reason = f'exit code {code}' + (' (killed: out of memory?)' if code in (-9, 137) else '')
  return [{'config': config_name, 'method': method, 'error': reason}]


def machine_header(records: list[dict]) -> dict:
  """Date, host, CPU, library versions and how the run was made."""
  cpu = platform.processor()
  try:
    with open('/proc/cpuinfo') as f:
      cpu = re.search(r'model name\s*:\s*(.*)', f.read()).group(1)
  except (OSError, AttributeError):
    pass
  versions = {}
  for name in ('jax', 'jaxlib', 'flax', 'optax', 'numpy'):
    try:
      versions[name] = __import__(name).__version__
    except ImportError:
      pass
  done = [r for r in records if 'error' not in r]
  return {
      'date': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
      'host': platform.node(), 'os': platform.platform(), 'python': platform.python_version(),
      'cpu': cpu, 'cpu_count': os.cpu_count(),
      'host_memory_gb': os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / _GB,
      'platform': done[0]['platform'] if done else None,
      'device_kind': done[0]['device_kind'] if done else None,
      'num_devices': done[0]['num_devices'] if done else None,
      'versions': versions, 'xla_flags': os.environ.get('XLA_FLAGS', ''),
      'compilation_cache': {'enabled': jax.config.jax_enable_compilation_cache,
                            'dir': jax.config.jax_compilation_cache_dir},
      'isolated_processes': _ISOLATE.value,
      'command': ' '.join([os.path.basename(sys.executable), *sys.argv]),
  }


def default_output(records: list[dict]) -> str:
  """bench/results/<platform>.json; GPU/TPU names add the device kind."""
  done = [r for r in records if 'error' not in r]
  name = done[0]['platform'] if done else 'unknown'
  if done and name != 'cpu':
    name += '-' + re.sub(r'[^a-z0-9]+', '-', done[0]['device_kind'].lower()).strip('-')
  return os.path.join(REPO, 'bench', 'results', f'{name}.json')


def write_results(path: str, header: dict, records: list[dict], merge: bool) -> None:
  """{'header', 'records'}; with `merge`, older records of cases not rerun are kept."""
  key = lambda r: (r['config'], r['method'], r.get('batch_size'), r.get('num_devices'))
  rerun = {key(r) for r in records}
  rerun_cases = {(r['config'], r['method']) for r in records}
  old = []
  if merge and os.path.exists(path):
    with open(path) as f:
      old = [r for r in json.load(f).get('records', []) if key(r) not in rerun
             and not ('error' in r and (r['config'], r['method']) in rerun_cases)]
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, 'w') as f:
    json.dump({'header': header, 'records': old + records}, f, indent=1)
    f.write('\n')


def format_table(records: list[dict]) -> str:
  columns = [  # (title, field, format)
      ('config', 'config', '{}'), ('method', 'method', '{}'), ('B', 'batch_size', '{}'),
      ('K', 'num_samples', '{}'), ('L', 'num_tokens', '{}'), ('V', 'vocab_size', '{}'),
      ('init s', 'init_s', '{:.1f}'), ('compile s', 'compile_s', '{:.1f}'),
      ('xla s', 'xla_compile_s', '{:.1f}'), ('s/step', 'sec_per_step', '{:.3f}'),
      ('steps/s', 'steps_per_s', '{:.2f}'), ('img/s', 'images_per_s', '{:.0f}'),
      ('host GB', 'peak_host_gb', '{:.2f}'), ('dev GB', 'device_peak_gb', '{:.2f}')]
  rows = [[title for title, _, _ in columns]]
  for r in records:
    if 'error' in r:
      rows.append([r['config'], r['method'], f'failed: {r["error"]}'])
      continue
    rows.append([fmt.format(r[field]) if r.get(field) is not None else '-'
                 for _, field, fmt in columns])
  widths = [max(len(row[i]) for row in rows if len(row) == len(columns))
            for i in range(len(columns))]
  lines = []
  for row in rows:
    if len(row) != len(columns):
      lines.append('  '.join(row))
    else:
      lines.append('  '.join(cell.rjust(w) if i > 1 else cell.ljust(w)
                             for i, (cell, w) in enumerate(zip(row, widths))))
  return '\n'.join(lines)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  if _STEPS.value < 1 or _WARMUP.value < 0:
    raise app.UsageError('--steps must be >= 1 and --warmup >= 0.')
  for name in _METHODS.value:
    if name not in methods.NAMES:
      raise app.UsageError(f'Unknown method {name!r}; valid: {", ".join(methods.NAMES)}.')
  cases = [(c, m) for c in _CONFIGS.value for m in _METHODS.value]
  for config_name, method in cases:
    try:
      common.load_config(config_name, method)  # Fail on a bad name before any compile.
    except ValueError as e:
      raise app.UsageError(str(e)) from e
  disable_compilation_cache()

  records = []
  if _ISOLATE.value:  # The parent never touches a device: a GPU child gets all its memory.
    for config_name, method in cases:
      print(f'--- {config_name} / {method}', flush=True)
      records += run_isolated(config_name, method)
  else:
    timer = _CompileTimer()
    for config_name, method in cases:
      if not _RECORD_OUT.value:  # An isolated child's parent has announced it already.
        print(f'--- {config_name} / {method}', flush=True)
      r = time_case(config_name, method, batch_size=_BATCH_SIZE.value,
                    paper_batch=_PAPER_BATCH.value, num_steps=_STEPS.value,
                    warmup=_WARMUP.value, seed=_SEED.value, timer=timer)
      print(f'    B={r["batch_size"]}: init {r["init_s"]:.1f} s, compile {r["compile_s"]:.1f} s, '
            f'{r["sec_per_step"]:.3f} s/step, peak host {r["peak_host_gb"]:.2f} GB', flush=True)
      records.append(r)
      if len(cases) > 1:
        records[-1]['peak_host_note'] = 'process-wide peak over the cases run before this one too'

  if _RECORD_OUT.value:  # An isolated child: hand the records to the parent.
    with open(_RECORD_OUT.value, 'w') as f:
      json.dump(records, f)
    return
  output = _OUTPUT.value or default_output(records)
  write_results(output, machine_header(records), records, _MERGE.value)
  print(format_table(records))
  print(f'Wrote {output}')


if __name__ == '__main__':
  app.run(main)
