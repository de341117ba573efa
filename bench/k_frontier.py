"""The K frontier of DAPS: quality per step and per second, and the self-normalisation bias.

  python -m bench.k_frontier --part=bias --output=bench/results/k_frontier
  python -m bench.k_frontier --part=runs --workdir=$HOME/runs/k_frontier
  python -m bench.k_frontier --part=time --output=bench/results/k_frontier   # on an idle machine
  python -m bench.k_frontier --part=report --workdir=$HOME/runs/k_frontier \\
      --output=bench/results/k_frontier

bias    Exact enumeration on a latent space of V^L = 3^2 = 9 sequences, q a
        full-table categorical with logits theta. The weighted-MLE gradient of K
        samples z_k ~ q is g_K = q - sum_k w_k e_{z_k} (w the self-normalised
        weights); the exact gradient of KL(q* || q) is g = q - q*. The relative
        bias |E g_K - g| / |g| is computed exactly for K <= 4 (all 9^K tuples)
        and by Monte Carlo for every K (the squared distance less the Monte-Carlo
        variance; its standard error reported), for three trust-region
        temperatures eta. Writes bias.json and bias.png.
runs    DAPS on the embedded MNIST (`configs/mnist.py:quickstart`, the flags'
        --config.* overrides on top; the committed frontier has the spec's beta
        schedule, --config.method.beta_horizon=1) for each K, resumable, in
        WORKDIR/K<k>/seed_<i>. Quality does not depend on machine load.
time    Seconds per compiled train step for each K at the runs' batch, on
        synthetic inputs, in rounds that alternate the K values; records the
        load average. Run it on an idle machine. Writes time.json.
report  PSNR and beta-ELBO against steps and against seconds (eval step x the
        idle seconds per step of `time`), and the values at fixed steps and at
        fixed budgets of seconds: frontier.json, frontier.md and frontier.png.
"""

import datetime
import itertools
import json
import math
import os
import platform
import shlex
import subprocess
import sys

from absl import app
from absl import flags
import numpy as np
from ml_collections import config_flags

from bench import frontier_lib

_PART = flags.DEFINE_enum('part', None, ['bias', 'runs', 'time', 'report'], 'What to do.')
_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory of the runs (parts runs, report).')
_OUTPUT = flags.DEFINE_string('output', 'bench/results/k_frontier', 'Directory of the results.')
_KS = flags.DEFINE_list('ks', ['2', '4', '8', '16', '32'], 'Samples per input K (runs, time).')
_SEEDS = flags.DEFINE_integer('seeds', 1, 'Seeds per K (runs).')
_CONFIG = config_flags.DEFINE_config_file('config', 'configs/mnist.py:quickstart',
                                          'Config of the runs (runs, report).', lock_config=False)
_BATCH = flags.DEFINE_integer('batch_size', 64, 'Batch of the timed steps (time).')
_STEPS = flags.DEFINE_integer('steps', 30, 'Timed steps per K and round (time).')
_ROUNDS = flags.DEFINE_integer('rounds', 3, 'Rounds over the K values (time).')
_DRAWS = flags.DEFINE_integer('draws', 1_000_000, 'Monte-Carlo draws of K samples (bias).')



# ----------------------------------------------------------------------------- bias

def plot_bias(table: dict, path: str) -> None:
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, ax = plt.subplots(figsize=(5, 3.6))
  for eta in frontier_lib.BIAS_ETAS:
    rows = [r for r in table['rows'] if r['eta'] == eta]
    ks = [r['k'] for r in rows]
    ax.errorbar(ks, [r['relative_bias_mc'] for r in rows],
                yerr=[2 * r['mc_stderr'] for r in rows], marker='o', label=f'η = {eta:g}')
    exact = [(r['k'], r['relative_bias_exact']) for r in rows if 'relative_bias_exact' in r]
    ax.scatter(*zip(*exact), marker='x', color='k', zorder=3)
  first = [r for r in table['rows'] if r['eta'] == frontier_lib.BIAS_ETAS[1]][0]
  ks = np.array(frontier_lib.BIAS_KS, float)
  ax.plot(ks, first['relative_bias_mc'] * ks[0] / ks, 'k:', label='∝ 1/K')
  ax.set(xscale='log', yscale='log', xlabel='samples per input K',
         ylabel='|E g_K − g| / |g|', title=f'self-normalisation bias (β = {frontier_lib.BIAS_BETA})')
  ax.minorticks_off()
  ax.set_xticks(frontier_lib.BIAS_KS, [str(k) for k in frontier_lib.BIAS_KS])
  ax.legend(fontsize=8, title='× exact enumeration', title_fontsize=7)
  ax.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(path, dpi=120)


# ----------------------------------------------------------------------------- runs

def run_configs():
  """{(K, seed): config} of the runs: --config with its overrides, then K."""
  import jax  # pylint: disable=g-import-not-at-top
  from daps_jax import config_lib  # pylint: disable=g-import-not-at-top
  from daps_jax import runs as runs_lib  # pylint: disable=g-import-not-at-top
  filename = config_flags.get_config_filename(flags.FLAGS['config'])
  overrides = config_flags.get_override_values(flags.FLAGS['config'])
  configs = {}
  for k, i in itertools.product(map(int, _KS.value), range(_SEEDS.value)):
    config = runs_lib.method_config(filename, overrides, 'daps', i)
    for dotted, value in k_overrides(k, config.method.ess_target).items():
      config_lib.set_field(config, dotted, value)
    config_lib.validate(config, num_devices=jax.device_count())
    configs[k, i] = config
  return configs


def k_overrides(k: int, ess_target: float) -> dict:
  """K samples, and the ESS target raised to 1 / K where K * ess_target < 1 (an ESS
  below 1 cannot be reached: K = 2 needs ess_target >= 0.5)."""
  return {'method.num_samples': k, 'method.ess_target': max(ess_target, 1.0 / k)}


def run_dir(k: int, seed: int) -> str:
  return os.path.join(_WORKDIR.value, f'K{k}', f'seed_{seed}')


def train_runs() -> None:
  from daps_jax import runs as runs_lib  # pylint: disable=g-import-not-at-top
  for (k, i), config in run_configs().items():
    runs_lib.train_unless_finished(config, run_dir(k, i), f'K = {k} seed {i}')


# ----------------------------------------------------------------------------- time

def time_steps() -> dict:
  """Seconds per step of each K, from `bench.train_step` in alternating rounds."""
  from bench import common  # pylint: disable=g-import-not-at-top
  ess_target = common.load_config('mnist', 'daps').method.ess_target
  records = {int(k): [] for k in _KS.value}
  loads = [os.getloadavg()[0]]
  for _ in range(_ROUNDS.value):
    for k in records:
      out = os.path.join(_OUTPUT.value, f'.time_K{k}.json')
      subprocess.run([sys.executable, '-m', 'bench.train_step', '--configs=mnist',
                      '--methods=daps', f'--batch_size={_BATCH.value}', f'--steps={_STEPS.value}',
                      *(f'--override={f}={v}' for f, v in k_overrides(k, ess_target).items()),
                      f'--output={out}', '--nomerge'], check=True, capture_output=True)
      with open(out) as f:
        record = json.load(f)['records'][0]
      os.remove(out)
      if 'error' in record:
        raise RuntimeError(f'bench.train_step failed for K = {k}: {record["error"]}')
      records[k].append(record)
      loads.append(os.getloadavg()[0])
  return {'batch_size': _BATCH.value, 'steps': _STEPS.value, 'rounds': _ROUNDS.value,
          'load_average_1min': loads, 'jax': records[int(_KS.value[0])][0]['jax_version'],
          'machine': f'{platform.node()}, {os.cpu_count()} CPUs',
          'date': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
          'sec_per_step': {str(k): [r['sec_per_step'] for r in rs] for k, rs in records.items()}}


# ----------------------------------------------------------------------------- report

METRICS = (('eval/psnr', 'PSNR (dB)'), ('eval/beta_elbo', 'β-ELBO'))


def eval_curves(configs: dict) -> dict:
  """{K: {metric: {step: [value per seed]}}} from the runs' evaluation records."""
  curves = {}
  for (k, i), _ in configs.items():
    with open(os.path.join(run_dir(k, i), 'metrics.jsonl')) as f:
      records = [json.loads(line) for line in f]
    for key, _ in METRICS:
      for r in records:
        if key in r:
          curves.setdefault(k, {}).setdefault(key, {}).setdefault(r['step'], []).append(r[key])
  return curves


def plot_frontier(table: dict, budgets: list[float], path: str) -> None:
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, axes = plt.subplots(2, 2, figsize=(9, 6.4))
  for row, (key, title) in zip(axes, METRICS):
    for k, entry in table.items():
      steps = np.array(entry[key]['steps'])
      row[0].plot(steps, entry[key]['mean'], marker='.', label=f'K = {k}')
      row[1].plot(steps * entry['sec_per_step'], entry[key]['mean'], marker='.', label=f'K = {k}')
    row[0].set(xlabel='training steps', ylabel=title, title=f'{title} at fixed steps')
    row[1].set(xlabel='seconds (idle step time × steps)', ylabel=title, xscale='log',
               title=f'{title} at fixed wall-clock')
    for b in budgets:
      row[1].axvline(b, color='grey', lw=0.5, ls=':')
    for ax in row:
      ax.grid(alpha=0.3)
      ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=110)


def report_frontier() -> str:
  from daps_jax import errors  # pylint: disable=g-import-not-at-top
  configs = run_configs()
  with open(os.path.join(_OUTPUT.value, 'time.json')) as f:
    timing = json.load(f)
  sec_per_step = {int(k): float(np.median(v)) for k, v in timing['sec_per_step'].items()}
  first = next(iter(configs.values()))
  if timing['batch_size'] != first.batch_size:
    raise errors.ConfigError(f'time.json timed batch {timing["batch_size"]}, the runs use '
                             f'{first.batch_size}: rerun --part=time --batch_size='
                             f'{first.batch_size}.')
  curves = eval_curves(configs)
  total = {k: c.total_steps for (k, _), c in configs.items()}
  # Each budget is one K's whole run, rounded up so that run's last evaluation is inside it.
  budgets = sorted({math.ceil(total[k] * sec_per_step[k]) for k in total})
  table = frontier_lib.frontier(curves, sec_per_step, budgets)
  with open(os.path.join(_OUTPUT.value, 'frontier.json'), 'w') as f:
    json.dump({'budgets_s': budgets, 'runs': {str(k): v for k, v in table.items()},
               'command': shlex.join(sys.argv)}, f, indent=1)
  plot_frontier(table, budgets, os.path.join(_OUTPUT.value, 'frontier.png'))
  lines = ['# The K frontier', '',
           f'- runs: DAPS, {first.data.name}, batch {first.batch_size}, {first.total_steps:,} '
           f'steps, {_SEEDS.value} seed(s) per K, dual solver {first.method.dual_solver}',
           f'- seconds: median seconds per compiled step at batch {timing["batch_size"]} '
           f'(time.json, {timing["date"]}, load average {min(timing["load_average_1min"]):.2f}–'
           f'{max(timing["load_average_1min"]):.2f}; quote only from an idle machine) × steps',
           f'- command: `python -m bench.k_frontier {shlex.join(sys.argv[1:])}`', '']
  header = ['K', 's/step'] + [f'{t} @{s:,} steps' for _, t in METRICS
                              for s in [first.total_steps]]
  header += [f'{t} @{b:,} s' for _, t in METRICS for b in budgets]
  body = []
  for k, entry in table.items():
    cells = [str(k), f'{entry["sec_per_step"]:.3f}']
    cells += [f'{entry[key]["mean"][-1]:.2f}' for key, _ in METRICS]
    cells += ['–' if v is None else f'{v:.2f}' for key, _ in METRICS
              for v in entry[f'{key}@budget']]
    body.append(cells)
  from daps_jax import report  # pylint: disable=g-import-not-at-top
  lines += report.markdown_table(header, body)
  text = '\n'.join(lines) + '\n'
  with open(os.path.join(_OUTPUT.value, 'frontier.md'), 'w', encoding='utf-8') as f:
    f.write(text)
  return text


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}', exitcode=2)
  if _PART.value is None:
    sys.exit('error: --part: one of bias, runs, time, report.')
  if _PART.value in ('runs', 'report') and not _WORKDIR.value:
    sys.exit(f'error: --workdir: the directory of the runs is needed for --part={_PART.value}.')
  os.makedirs(_OUTPUT.value, exist_ok=True)
  from daps_jax import errors  # pylint: disable=g-import-not-at-top
  try:
    run_part()
  except errors.UserError as e:
    sys.exit(f'error: {e}')


def run_part() -> None:
  if _PART.value == 'bias':
    table = frontier_lib.bias_table(_DRAWS.value)
    table['command'] = f'python -m bench.k_frontier {shlex.join(sys.argv[1:])}'
    with open(os.path.join(_OUTPUT.value, 'bias.json'), 'w') as f:
      json.dump(table, f, indent=1)
    plot_bias(table, os.path.join(_OUTPUT.value, 'bias.png'))
    for row in table['rows']:
      print(row)
  elif _PART.value == 'runs':
    train_runs()
  elif _PART.value == 'time':
    timing = time_steps()
    with open(os.path.join(_OUTPUT.value, 'time.json'), 'w') as f:
      json.dump(timing, f, indent=1)
    print(json.dumps(timing['sec_per_step']))
  else:
    print(report_frontier())


if __name__ == '__main__':
  from daps_jax import config_lib as _config_lib  # pylint: disable=g-import-not-at-top
  app.run(main, flags_parser=_config_lib.parse_flags)
