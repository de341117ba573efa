"""DAPS schedule and codebook study: dual solver x beta horizon x learning rate.

  python -m bench.study --config=configs/mnist.py:quickstart --workdir=$HOME/runs/study \\
      --methods=daps,daps_na --seeds=2 --solvers=adam100,short,bisection \\
      --horizons=1,10 --learning_rates=1e-3,3e-4 --output=bench/results/study_mnist

Every cell of the grid is an ordinary training run in
WORKDIR/<solver>_beta<horizon>x_lr<lr>/<method>/seed_<i>, so an interrupted study
resumes and finished runs are skipped; a later call with a larger grid trains
only the new cells. The cells:

  solver    adam100    the paper's dual: AdamW on L_eta from eta 100, lr 1e-3
            short      AdamW from eta 1, lr 1e-2 (the `:short` / quickstart setting)
            bisection  eta solved per batch (method.dual_solver=bisection)
  horizon   h          method.beta_decay_steps = h * total_steps (1: the spec's)
  lr        the encoder and decoder learning rate (optim.learning_rate)

OUTPUT/results.{md,csv,png} hold the table of final validation metrics (one
row per method x cell, mean and std over seeds) and the learning curves; the
Markdown adds the trust-region diagnostics of training: eta, beta / (eta + beta)
(the weight of the entropy term in log q* = (A + eta log q) / (eta + beta) + c),
the largest importance weight and ESS / K, averaged over seeds at 10%, 50% and
100% of training. `--config.*` overrides apply to every run.
"""

import dataclasses
import datetime
import itertools
import os
import platform
import shlex
import sys

from absl import app
from absl import flags
import jax
import numpy as np
from ml_collections import config_flags

from daps_jax import runs as runs_lib
from daps_jax import config_lib
from daps_jax import errors
from daps_jax import preemption
from daps_jax import report

SOLVERS = {
    'adam100': {'method.dual_solver': 'adam', 'method.eta_init': 100.0,
                'method.eta_learning_rate': 1e-3},
    'short': {'method.dual_solver': 'adam', 'method.eta_init': 1.0,
              'method.eta_learning_rate': 1e-2},
    'bisection': {'method.dual_solver': 'bisection'},
}
DIAGNOSTICS = (('dual/eta', 'η', '.3g'), ('policy/entropy_share', 'β/(η+β)', '.3f'),
               ('policy/max_weight', 'max w', '.3f'), ('dual/ess_fraction', 'ESS/K', '.3f'))
FRACTIONS = (0.1, 0.5, 1.0)

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Dataset config (DAPS methods).',
                                          lock_config=False)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory of the runs (outside the repository).')
_OUTPUT = flags.DEFINE_string('output', None, 'Directory of the table; default WORKDIR.')
_METHODS = flags.DEFINE_list('methods', ['daps', 'daps_na'], 'DAPS methods.')
_SEEDS = flags.DEFINE_integer('seeds', 2, 'Seeds per cell: config.seed + 0 .. seeds - 1.')
_SOLVERS = flags.DEFINE_list('solvers', list(SOLVERS), f'Of {", ".join(SOLVERS)}.')
_HORIZONS = flags.DEFINE_list('horizons', ['1', '10'], 'beta_decay_steps / total_steps.')
_LRS = flags.DEFINE_list('learning_rates', ['1e-3', '3e-4'], 'Learning rates.')
flags.mark_flags_as_required(['config', 'workdir'])


@dataclasses.dataclass(frozen=True)
class Cell:
  solver: str
  horizon: int
  learning_rate: float

  @property
  def name(self) -> str:
    return f'{self.solver}_beta{self.horizon}x_lr{self.learning_rate:g}'

  def overrides(self, total_steps: int) -> dict:
    return {**SOLVERS[self.solver], 'method.beta_decay_steps': self.horizon * total_steps,
            'optim.learning_rate': self.learning_rate}


def grid(solvers, horizons, learning_rates) -> list[Cell]:
  unknown = [s for s in solvers if s not in SOLVERS]
  if unknown:
    raise errors.ConfigError(f'--solvers: unknown {unknown}; valid: {", ".join(SOLVERS)}.')
  return [Cell(s, int(h), float(lr)) for s, h, lr in
          itertools.product(solvers, horizons, learning_rates)]


def entropy_share(record: dict) -> float | None:
  """beta / (eta + beta) of one training record, or None without both."""
  if 'dual/eta' not in record or 'policy/beta' not in record:
    return None
  return record['policy/beta'] / (record['dual/eta'] + record['policy/beta'])


def _at(curve: list[dict], key: str, step: int) -> float:
  """The value of `key` in the last training record at or before `step`."""
  values = [(r['step'], r[key]) for r in curve if key in r and r['step'] <= step]
  return values[-1][1] if values else float('nan')


def diagnostics(runs: list[report.Run], total_steps: int) -> list[str]:
  """Markdown table: per label, each diagnostic at FRACTIONS of training (seed mean)."""
  header = ['run'] + [f'{title} @{int(f * 100)}%' for _, title, _ in DIAGNOSTICS
                      for f in FRACTIONS]
  labels = list(dict.fromkeys(run.method for run in runs))
  body = []
  for label in labels:
    group = [run for run in runs if run.method == label]
    cells = [label]
    for key, _, fmt in DIAGNOSTICS:
      for f in FRACTIONS:
        step = int(f * total_steps)
        cells.append(f'{np.mean([_at(run.curve, key, step) for run in group]):{fmt}}')
    body.append(cells)
  return report.markdown_table(header, body)


def study(filename: str, overrides: dict) -> None:
  cells = grid(_SOLVERS.value, _HORIZONS.value, _LRS.value)
  jobs = []
  for cell, method, i in itertools.product(cells, _METHODS.value, range(_SEEDS.value)):
    config = runs_lib.method_config(filename, overrides, method, i)
    if 'dual_solver' not in config.method:
      raise errors.ConfigError(f'--methods: {method} has no trust region; the study is of '
                               'daps and daps_na.')
    for dotted, value in cell.overrides(config.total_steps).items():
      config_lib.set_field(config, dotted, value)
    config_lib.validate(config, num_devices=jax.device_count())
    jobs.append((cell, method, i, config))

  runs = []
  for cell, method, i, config in jobs:
    workdir = os.path.join(_WORKDIR.value, cell.name, method, f'seed_{i}')
    runs_lib.train_unless_finished(config, workdir, f'{cell.name} {method} seed {i}')
    run = runs_lib.load_run(workdir, config, i)
    curve = [{**r, 'policy/entropy_share': entropy_share(r)} if entropy_share(r) is not None
             else r for r in run.curve]
    runs.append(dataclasses.replace(run, method=f'{method} {cell.name}', curve=curve))

  first = jobs[0][3]
  meta = {
      'data': f'{first.data.name}, batch {first.batch_size}, {first.total_steps:,} steps, '
              f'K = {first.method.num_samples}',
      'grid': f'solvers {", ".join(_SOLVERS.value)}; beta horizon x {", ".join(_HORIZONS.value)}'
              f' of total_steps; learning rates {", ".join(_LRS.value)}',
      'seeds': f'{_SEEDS.value} per cell (config.seed {first.seed} + i)',
      'machine': f'{platform.node()}, {os.cpu_count()} CPUs, jax {jax.__version__}',
      'date': datetime.date.today().isoformat(),
      'command': f'`python -m bench.study {shlex.join(sys.argv[1:])}`',
  }
  output = _OUTPUT.value or _WORKDIR.value
  paths = report.write(output, runs, meta)
  with open(paths['md'], 'a', encoding='utf-8') as f:
    f.write('\n## Trust-region diagnostics (training records, mean over seeds)\n\n')
    f.write('\n'.join(diagnostics(runs, first.total_steps)) + '\n')
  print(open(paths['md'], encoding='utf-8').read())


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}', exitcode=2)
  filename = config_flags.get_config_filename(flags.FLAGS['config'])
  overrides = config_flags.get_override_values(flags.FLAGS['config'])
  try:
    study(filename, overrides)
  except errors.UserError as e:
    sys.exit(f'error: {e}')
  except preemption.Preempted as e:  # Rerunning the command resumes the study.
    sys.exit(e.exit_code)


if __name__ == '__main__':
  app.run(main, flags_parser=config_lib.parse_flags)
