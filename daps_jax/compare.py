"""Trains several methods x seeds on one dataset and writes a Table-1-style comparison.

  python -m daps_jax.compare --config=configs/fashion_mnist.py:short \\
      --methods=daps,daps_na,gumbel,gumbel_na,grmck,grmck_na,vqvae,fsq,ppo --seeds=2 \\
      --workdir=workdirs/compare_fashion --config.total_steps=3000

Runs go to WORKDIR/<method>/seed_<i> one after another (seed = config.seed + i);
each is an ordinary training run, so an interrupted comparison resumes where it
stopped and finished runs are skipped (one trained with other training settings is
refused, see `runs.config_differences`). `--config.*` overrides apply to every
method (a field a method does not have is an error). Every run is evaluated on
the full validation split; WORKDIR/results.md, results.csv and results.png hold
the table (mean ± std over seeds, best per column in bold), the learning curves
and the codebook-usage histograms.

With --priors, each finished run then gets the autoregressive code prior of
`python -m daps_jax.prior` (settings from --prior_config, the same for every run;
a finished prior is skipped), and WORKDIR/priors/ holds the substrate table:
reconstruction PSNR and codebook usage beside the prior's held-out bits per
input and per token, the independent baseline, and the gFID of its samples,
with every run's sample grid as samples_<method>_seed<i>.png.
"""

import dataclasses
import datetime
import os
import pathlib
import shutil
import platform
import shlex
import sys
import time

from absl import app
from absl import flags
from absl import logging
import jax
import ml_collections
import numpy as np
from ml_collections import config_flags

from daps_jax import config_lib
from daps_jax import data
from daps_jax import errors
from daps_jax import methods
from daps_jax import preemption
from daps_jax import report
from daps_jax import runs as runs_lib
from daps_jax.prior import loop as prior_loop

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Dataset config file (any method).',
                                          lock_config=False)
_METHODS = flags.DEFINE_list('methods', list(methods.NAMES), 'Methods to compare.')
_SEEDS = flags.DEFINE_integer('seeds', 3, 'Seeds per method: config.seed + 0 .. seeds - 1.')
_METHOD_SEEDS = flags.DEFINE_list('method_seeds', [],
                                  'Per-method exceptions to --seeds, e.g. vimco=2,grmck_na=2.')
_METHOD_OVERRIDES = flags.DEFINE_list(
    'method_overrides', [], 'Config fields for one method only, as METHOD:field=value, e.g. '
    'daps:method.dual_solver=bisection (applied after the --config.* overrides).')
_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory of the runs and the results.')
_STEP_TIMES = flags.DEFINE_string(
    'step_times', None, 'A `python -m bench.train_step` JSON file of the methods\' seconds per '
    'step at the runs\' batch, timed on an idle machine: adds PSNR against seconds (equal '
    'compute) to the figure.')
_PRIORS = flags.DEFINE_bool('priors', False, 'Also train a code prior on every run and write '
                            'the substrate table to WORKDIR/priors/.')
_PRIOR_CONFIG = config_flags.DEFINE_config_file(
    'prior_config', os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                 'configs', 'prior.py'), 'The prior config (with --priors).',
    lock_config=True)
flags.mark_flags_as_required(['config', 'workdir'])

# The paper's Table 1 (spec section 7), shown next to our numbers where it applies.
PAPER_TABLE1 = {
    'mnist': {
        'fsq': {'eval/psnr': 18.42}, 'vqvae': {'eval/psnr': 18.45},
        'grmck': {'eval/beta_elbo': -62.25, 'eval/psnr': 16.78},
        'gumbel': {'eval/beta_elbo': -68.07, 'eval/psnr': 16.30},
        'gumbel_na': {'eval/beta_elbo': -47.09, 'eval/psnr': 18.21},
        'daps': {'eval/beta_elbo': -46.54, 'eval/psnr': 18.23},
        'daps_na': {'eval/beta_elbo': -46.96, 'eval/psnr': 18.36},
    },
    'lafan1': {  # The authors' features (H1 sites, 100 Hz), not ours: see the README.
        'fsq': {'eval/psnr': 36.19}, 'vqvae': {'eval/psnr': 31.04},
        'grmck': {'eval/beta_elbo': -1008.12, 'eval/psnr': 34.11},
        'gumbel': {'eval/beta_elbo': -998.49, 'eval/psnr': 34.51},
        'gumbel_na': {'eval/beta_elbo': -1400.05, 'eval/psnr': 27.89},
        'daps': {'eval/beta_elbo': -949.78, 'eval/psnr': 36.81},
        'daps_na': {'eval/beta_elbo': -1050.25, 'eval/psnr': 32.90},
    },
}


def _median_rate(run: report.Run) -> float:
  rates = [r['perf/steps_per_sec'] for r in run.curve if r.get('perf/steps_per_sec')]
  return float(np.median(rates)) if rates else float('nan')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}', exitcode=2)
  filename = config_flags.get_config_filename(flags.FLAGS['config'])
  overrides = config_flags.get_override_values(flags.FLAGS['config'])
  unknown = [m for m in _METHODS.value if m not in methods.NAMES]
  if unknown:
    sys.exit(f'--methods: unknown {unknown}; valid: {", ".join(methods.NAMES)}.')
  try:
    seeds = runs_lib.seeds_per_method(_METHODS.value, _SEEDS.value, _METHOD_SEEDS.value)
    per_method = runs_lib.method_overrides(_METHOD_OVERRIDES.value, _METHODS.value)
  except ValueError as e:
    sys.exit(f'error: {e}')
  try:
    compare(filename, overrides, seeds, per_method)
  except errors.UserError as e:
    sys.exit(f'error: {e}')  # Bad input: the message says what to fix; no traceback.
  except preemption.Preempted as e:  # Rerunning the command resumes the comparison.
    logging.warning('%s', e)
    sys.exit(e.exit_code)


def compare(filename: str, overrides: dict, seeds: dict[str, int],
            per_method: dict[str, dict]) -> None:
  """Checks every config, trains what is not finished, writes the report."""
  configs = {}
  for method in _METHODS.value:  # Every config is checked before the first run starts.
    for i in range(seeds[method]):
      config = runs_lib.method_config(filename, {**overrides, **per_method.get(method, {})},
                                      method, i)
      config_lib.validate(config, num_devices=jax.device_count())
      configs[method, i] = config
  first = next(iter(configs.values()))
  sec_per_step = None  # Read before any training, so a bad file costs nothing.
  if _STEP_TIMES.value:
    sec_per_step = report.step_times(_STEP_TIMES.value, pathlib.Path(filename).stem,
                                     first.batch_size, _METHODS.value)

  runs, wall = [], {}
  for (method, i), config in configs.items():
    workdir = os.path.join(_WORKDIR.value, method, f'seed_{i}')
    start = time.time()
    if runs_lib.train_unless_finished(config, workdir, f'{method} seed {i}'):
      wall[method] = wall.get(method, 0.0) + time.time() - start
    runs.append(runs_lib.load_run(workdir, config, i))
  output = _WORKDIR.value
  if _PRIORS.value:
    output = os.path.join(_WORKDIR.value, 'priors')
    runs = [_with_prior(run, os.path.join(_WORKDIR.value, run.method, f'seed_{run.seed}'), output)
            for run in runs]

  spec = data.get_spec(first.data.name, first.data.dir)
  rates = {r.method: _median_rate(r) for r in runs}
  meta = {
      'data': (f'{first.data.name} ({"x".join(map(str, spec.shape))}), full validation split of '
               f'{int(runs[0].final["eval/num_examples"]):,} examples'),
      'steps': f'{first.total_steps:,} per run, global batch {first.batch_size}',
      'seeds': (', '.join(f'{m} {n}' for m, n in seeds.items()) if len(set(seeds.values())) > 1
                else f'{_SEEDS.value} per method') + f' (config.seed {first.seed} + i)',
      'bits per input': ', '.join(f'{m} {configs[m, 0].model.num_tokens} x '
                                  f'log2({config_lib.num_codes(configs[m, 0])}) = '
                                  f'{config_lib.bits_per_input(configs[m, 0]):.1f}'
                                  for m in _METHODS.value),
      'mean-image PSNR': f'{runs[0].final.get("eval/psnr_mean_image", float("nan")):.2f} dB',
      'median steps/s': ', '.join(f'{m} {rates[m]:.1f}' for m in _METHODS.value),
      'machine': (f'{platform.node()}: {platform.processor() or platform.machine()}, '
                  f'{os.cpu_count()} CPUs, jax {jax.__version__} on '
                  f'{jax.device_count()} {jax.devices()[0].platform} device(s)'),
      'date': datetime.date.today().isoformat(),
      'command': f'`python -m daps_jax.compare {shlex.join(sys.argv[1:])}`',
  }
  if any('eval/fid' in run.final for run in runs):
    fid = first.fid
    against = (f'the {spec.eval_split} originals (rfid)' if fid.protocol == 'rfid'
               else f'the statistics in {fid.reference} (authors)')
    meta['FID'] = (f'final eval, reconstructions vs {against}, Inception input '
                   f'{fid.resolution}x{fid.resolution}')
  if wall:
    meta['training wall time (this invocation)'] = ', '.join(
        f'{m} {wall[m] / 60:.1f} min' for m in _METHODS.value if m in wall)
  if sec_per_step is not None:
    meta['seconds (figure panel d)'] = (
        f'steps x idle seconds per step at batch {first.batch_size} from {_STEP_TIMES.value}: '
        + ', '.join(f'{m} {sec_per_step[m]:.3f}' for m in _METHODS.value if m in sec_per_step))
  reference = PAPER_TABLE1.get(first.data.name)
  if _PRIORS.value:
    meta['prior'] = prior_summary(_PRIOR_CONFIG.value, runs)
    reference = None
  paths = report.write(output, runs, meta, methods=_METHODS.value, reference=reference,
                       sec_per_step=sec_per_step)
  print(open(paths['md']).read())


def prior_summary(config: ml_collections.ConfigDict, runs: list[report.Run]) -> str:
  """The substrate table's line on the priors: their settings and the gFID sample count
  the runs' final evals recorded."""
  scored = sorted({int(r.final['prior/gfid_samples']) for r in runs
                   if 'prior/gfid_samples' in r.final})
  gfid = (f'gFID of {" or ".join(f"{n:,}" for n in scored)} unconditional samples vs the '
          'validation originals' if scored else 'no gFID')
  return (f'`python -m daps_jax.prior` on each run ({config.codes} codes, width {config.width}, '
          f'{config.num_layers} layers, {config.total_steps:,} steps of {config.batch_size}); '
          f'{gfid}')


def _with_prior(run: report.Run, workdir: str, output: str) -> report.Run:
  """`run` with its code prior's final metrics (trained here unless finished), and its
  sample grid copied to `output`."""
  config = _PRIOR_CONFIG.value
  directory = os.path.join(workdir, prior_loop.PRIOR_DIR)
  metrics = (prior_loop.last_eval(directory) if prior_loop.finished(directory, config.total_steps)
             else prior_loop.train_prior(workdir, config))
  grid = os.path.join(directory, f'samples_{config.total_steps:08d}.png')
  os.makedirs(output, exist_ok=True)
  if os.path.exists(grid):
    shutil.copyfile(grid, os.path.join(output, f'samples_{run.method}_seed{run.seed}.png'))
  return dataclasses.replace(run, final={**run.final, **metrics})


if __name__ == '__main__':
  app.run(main, flags_parser=config_lib.parse_flags)
