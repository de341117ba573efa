"""`python -m bench.study`: the DAPS grid's cells get their settings, resume, and report."""

import csv
import json
import os
import subprocess
import sys

from tests import helpers


def _study(workdir, *args):
  return subprocess.run(
      [sys.executable, '-m', 'bench.study', '--config=configs/testing.py', f'--workdir={workdir}',
       '--config.total_steps=3', '--config.eval_every_steps=3', '--config.log_every_steps=1',
       '--config.checkpoint_every_steps=3', '--config.num_grid_images=2', *args],
      cwd=helpers.REPO, capture_output=True, text=True, timeout=600)


def _config(workdir, cell):
  with open(os.path.join(workdir, cell, 'daps', 'seed_0', 'config.json')) as f:
    return json.load(f)


def _records(workdir, cell):
  with open(os.path.join(workdir, cell, 'daps', 'seed_0', 'metrics.jsonl')) as f:
    return [json.loads(line) for line in f]


def test_study_grid_settings_resume_and_table(tmp_path):
  workdir = str(tmp_path)
  args = ['--methods=daps', '--seeds=1', '--solvers=adam100,bisection', '--horizons=1,10',
          '--learning_rates=3e-4']
  result = _study(workdir, *args)
  assert result.returncode == 0, result.stderr[-3000:]
  cells = ['adam100_beta1x_lr0.0003', 'adam100_beta10x_lr0.0003',
           'bisection_beta1x_lr0.0003', 'bisection_beta10x_lr0.0003']
  with open(os.path.join(workdir, 'results.csv')) as f:
    assert [row['method'] for row in csv.DictReader(f)] == [f'daps {c}' for c in cells]
  adam, bisect = _config(workdir, cells[0])['method'], _config(workdir, cells[3])['method']
  assert (adam['dual_solver'], adam['eta_init'], adam['eta_learning_rate']) == ('adam', 100, 1e-3)
  assert bisect['dual_solver'] == 'bisection' and bisect['beta_decay_steps'] == 30
  assert _config(workdir, cells[3])['optim']['learning_rate'] == 3e-4
  # The beta horizon: after 2 of 3 steps beta has decayed less over 30 steps than over 3.
  beta = {c: [r['policy/beta'] for r in _records(workdir, c) if 'policy/beta' in r][-1]
          for c in cells[2:]}
  assert beta[cells[3]] > 2 * beta[cells[2]], beta
  # The paper's dual moves eta by about lr per step; bisection solves it afresh.
  etas = [r['dual/eta'] for r in _records(workdir, cells[0]) if 'dual/eta' in r]
  assert all(abs(eta / 100 - 1) < 0.01 for eta in etas), etas
  table = open(os.path.join(workdir, 'results.md'), encoding='utf-8').read()
  assert 'Trust-region diagnostics' in table and 'β/(η+β) @100%' in table

  again = _study(workdir, *args)
  assert again.returncode == 0 and 'training in' not in again.stderr, again.stderr[-3000:]
  assert again.stderr.count('skipped') == 4
  refused = _study(workdir, '--methods=fsq', '--seeds=1', '--solvers=short', '--horizons=1',
                   '--learning_rates=1e-3')
  assert refused.returncode == 1 and 'Traceback' not in refused.stderr
  assert refused.stderr.strip().splitlines()[-1].startswith('error: --methods: fsq has no trust region')
