"""`python -m daps_jax.compare`: trains methods x seeds, skips finished runs, writes the table."""

import copy
import csv
import json
import math
import os
import subprocess
import sys

import pytest

from daps_jax import errors
from daps_jax import runs
from tests import helpers

_TINY = ['--config=configs/testing.py', '--config.eval_batch_size=500',
         '--config.num_grid_images=2']  # FID in compare: test_report (column), test_evaluate.


def _compare(workdir, *args):
  return subprocess.run([sys.executable, '-m', 'daps_jax.compare', f'--workdir={workdir}',
                         *_TINY, *args], cwd=helpers.REPO, capture_output=True, text=True,
                        timeout=600)


def test_compare_writes_table_and_skips_finished_runs(tmp_path):
  workdir = str(tmp_path)
  result = _compare(workdir, '--methods=vimco,fsq', '--seeds=2')
  assert result.returncode == 0, result.stderr[-3000:]
  for name in ('results.md', 'results.csv', 'results.png'):
    assert os.path.getsize(os.path.join(workdir, name)) > 0, name
  with open(os.path.join(workdir, 'results.csv')) as f:
    rows = {row['method']: row for row in csv.DictReader(f)}
  assert set(rows) == {'vimco', 'fsq'}
  assert rows['vimco']['num_seeds'] == rows['fsq']['num_seeds'] == '2'
  assert float(rows['vimco']['eval/beta_elbo_mean']) < 0
  assert rows['fsq']['eval/beta_elbo_mean'] == ''  # No analytic q(z|x): not applicable.
  assert float(rows['vimco']['bits']) == 8 * 4  # L log2 V with V = 16.
  assert math.isclose(float(rows['fsq']['bits']), 8 * math.log2(240))  # Levels (8, 6, 5).
  seeds = []
  for i in range(2):
    with open(os.path.join(workdir, 'vimco', f'seed_{i}', 'config.json')) as f:
      seeds.append(json.load(f)['seed'])
  assert seeds == [0, 1]
  table = open(os.path.join(workdir, 'results.md')).read()
  assert 'mnist_embedded' in table and '2 per run' in table

  metrics = os.path.join(workdir, 'fsq', 'seed_1', 'metrics.jsonl')
  size = os.path.getsize(metrics)
  # A later `evaluate` of a final checkpoint (here faked) adds FID to the table.
  for i, fid in enumerate((12.0, 14.0)):
    with open(os.path.join(workdir, 'fsq', f'seed_{i}', 'eval_00000002.json'), 'w') as f:
      json.dump({'metrics': {'eval/fid': fid}}, f)
  # Fewer seeds for one method: its first seed is reused, nothing is retrained. With idle step
  # times (a bench.train_step file; fsq is not in it) the figure gains PSNR against seconds.
  with open(os.path.join(workdir, 'vimco', 'seed_0', 'config.json')) as f:
    batch = json.load(f)['batch_size']
  step_times = os.path.join(workdir, 'times.json')
  with open(step_times, 'w') as f:
    json.dump({'records': [{'config': 'testing', 'method': 'vimco', 'batch_size': batch,
                            'sec_per_step': 0.25}]}, f)
  again = _compare(workdir, '--methods=vimco,fsq', '--seeds=2', '--method_seeds=vimco=1',
                   f'--step_times={step_times}')
  assert again.returncode == 0, again.stderr[-3000:]
  assert again.stderr.count('skipped') == 3
  assert os.path.getsize(metrics) == size  # Nothing retrained.
  with open(os.path.join(workdir, 'results.csv')) as f:
    rows = {row['method']: row for row in csv.DictReader(f)}
  assert (rows['vimco']['num_seeds'], rows['fsq']['num_seeds']) == ('1', '2')
  assert 'vimco 1, fsq 2 (config.seed 0 + i)' in open(os.path.join(workdir, 'results.md')).read()
  assert float(rows['fsq']['eval/fid_mean']) == 13.0 and rows['vimco']['eval/fid_mean'] == ''
  assert 'reconstructions vs the test originals (rfid)' in open(
      os.path.join(workdir, 'results.md')).read()
  assert f'at batch {batch} from {step_times}: vimco 0.250' in open(
      os.path.join(workdir, 'results.md')).read()

  # --priors: a code prior on each finished run (none retrained), the substrate table.
  tiny_prior = ['--prior_config.width=16', '--prior_config.num_layers=1',
                '--prior_config.num_heads=2', '--prior_config.total_steps=2',
                '--prior_config.batch_size=256', '--prior_config.eval_every_steps=2',
                '--prior_config.checkpoint_every_steps=2', '--prior_config.optim.warmup_steps=0',
                '--prior_config.sample.fid_every_steps=-1',
                '--prior_config.sample.grid_per_class=1']
  priors = _compare(workdir, '--methods=vimco,fsq', '--seeds=1', '--priors', *tiny_prior)
  assert priors.returncode == 0, priors.stderr[-3000:]
  assert os.path.getsize(metrics) == size
  with open(os.path.join(workdir, 'priors', 'results.csv')) as f:
    rows = {row['method']: row for row in csv.DictReader(f)}
  for method, codes in (('vimco', 16), ('fsq', 240)):
    bits = float(rows[method]['prior/bits_per_token_mean'])
    assert 0 < bits < 1.2 * math.log2(codes), (method, bits)
    assert float(rows[method]['prior/bits_per_input_mean']) == pytest.approx(8 * bits)
    assert float(rows[method]['eval/psnr_mean']) > 0  # The reconstruction columns stay.
    assert os.path.getsize(os.path.join(workdir, 'priors', f'samples_{method}_seed0.png')) > 0
  table = open(os.path.join(workdir, 'priors', 'results.md')).read()
  assert 'python -m daps_jax.prior' in table and 'no gFID' in table  # fid_every_steps=-1

  # A finished run trained with other settings is refused in one line, and nothing retrains.
  other = _compare(workdir, '--methods=fsq', '--seeds=1', '--config.optim.learning_rate=0.5',
                   '--config.log_every_steps=7')
  assert other.returncode == 1 and 'Traceback' not in other.stderr, other.stderr[-3000:]
  last = other.stderr.strip().splitlines()[-1]
  assert 'fsq seed 0' in last and 'optim.learning_rate: 0.001 there vs 0.5 now' in last, last
  assert 'log_every_steps' not in last and 'delete that directory' in last, last
  assert os.path.getsize(metrics) == size


def test_a_finished_run_counts_only_under_the_settings_it_trained_with(tmp_path):
  config = helpers.tiny_config('daps')
  with open(tmp_path / 'config.json', 'w') as f:
    f.write(config.to_json_best_effort())
  asked = copy.deepcopy(config)
  asked.log_every_steps += 1  # Bookkeeping: how the run logs, evaluates, lays out memory.
  asked.data.dir, asked.fid.every_steps, asked.method.sample_chunks = '/elsewhere', -1, 2
  assert runs.config_differences(asked, str(tmp_path)) == []
  asked.method.dual_solver = 'bisection' if config.method.dual_solver == 'adam' else 'adam'
  asked.model.width += 8
  assert runs.config_differences(asked, str(tmp_path)) == [
      f'method.dual_solver: {config.method.dual_solver!r} there vs '
      f'{asked.method.dual_solver!r} now',
      f'model.width: {config.model.width} there vs {asked.model.width} now']
  saved = json.loads(config.to_json_best_effort())
  del saved['method']['top_k']  # A run from before a field existed: that field is not compared.
  with open(tmp_path / 'config.json', 'w') as f:
    json.dump(saved, f)
  asked = copy.deepcopy(config)
  asked.method.top_k = 3
  assert runs.config_differences(asked, str(tmp_path)) == []
  # The beta schedule counts by its length, however it is set (saved: none of beta_horizon,
  # so 1, with beta_decay_steps 0).
  del saved['method']['beta_horizon']
  with open(tmp_path / 'config.json', 'w') as f:
    json.dump(saved, f)
  asked = copy.deepcopy(config)
  asked.method.beta_decay_steps = config.total_steps
  assert runs.config_differences(asked, str(tmp_path)) == []
  asked.method.beta_decay_steps, asked.method.beta_horizon = 0, 10.0
  assert runs.config_differences(asked, str(tmp_path)) == [
      f'method.beta_decay_steps: {config.total_steps} there vs {10 * config.total_steps} now']
  os.remove(tmp_path / 'config.json')
  with pytest.raises(errors.ConfigError, match='config.json is missing'):
    runs.config_differences(asked, str(tmp_path))


def test_override_missing_for_a_method_is_an_error_before_any_run(tmp_path):
  result = _compare(str(tmp_path), '--methods=daps,vqvae', '--seeds=1',
                    '--config.method.eta_init=2.0')
  assert result.returncode != 0
  assert "config.method.eta_init: method 'vqvae' has no field" in result.stderr
  assert not os.path.exists(os.path.join(str(tmp_path), 'daps'))


def test_bad_step_times_is_one_line_before_any_run(tmp_path):
  result = _compare(str(tmp_path), '--methods=fsq', '--seeds=1',
                    f'--step_times={tmp_path}/none.json')
  assert result.returncode != 0
  assert result.stderr.strip().splitlines()[-1].startswith(f'error: --step_times {tmp_path}')
  assert 'Traceback' not in result.stderr
  assert not os.path.exists(os.path.join(str(tmp_path), 'fsq'))


def test_method_seeds_are_checked():
  assert runs.seeds_per_method(['daps', 'vimco'], 3, ['vimco=2']) == {'daps': 3, 'vimco': 2}
  for bad in ('fsq=2', 'vimco=0', 'vimco'):
    with pytest.raises(ValueError, match='--method_seeds'):
      runs.seeds_per_method(['daps', 'vimco'], 3, [bad])


def test_method_overrides_are_parsed_and_checked():
  """--method_overrides: a field for one method only (e.g. DAPS's dual solver beside
  baselines that have no such field), values as literals where they are ones."""
  assert runs.method_overrides(
      ['daps:method.dual_solver=bisection', 'daps:method.top_k=2', 'fsq:optim.clip=None'],
      ['daps', 'fsq']) == {'daps': {'method.dual_solver': 'bisection', 'method.top_k': 2},
                           'fsq': {'optim.clip': None}}
  for bad in ('vimco:method.top_k=2', 'daps:method.top_k', 'method.top_k=2', 'daps:=2'):
    with pytest.raises(ValueError, match='--method_overrides'):
      runs.method_overrides([bad], ['daps', 'fsq'])
  config = runs.method_config(os.path.join(helpers.REPO, 'configs', 'testing.py'),
                              {'method.dual_solver': 'bisection'},
                              'daps', 0)
  assert config.method.dual_solver == 'bisection'


def test_prior_summary_states_the_gfid_samples_the_runs_scored():
  """The substrate table says how many samples its gFID scored (read from the runs' final
  evals, not assumed), and 'no gFID' when none was measured."""
  from daps_jax import compare
  from daps_jax import report
  from daps_jax.prior import config as prior_config

  def run(final):
    return report.Run(method='fsq', seed=0, final=final, curve=[], code_counts=None, bits=64.0)

  config = prior_config.default()
  line = compare.prior_summary(config, [run({'prior/gfid_samples': 2000.0}),
                                        run({'prior/gfid_samples': 2000.0})])
  assert line.endswith('gFID of 2,000 unconditional samples vs the validation originals')
  assert 'width 128, 3 layers, 2,000 steps of 128' in line
  mixed = compare.prior_summary(config, [run({'prior/gfid_samples': 10000.0}),
                                         run({'prior/gfid_samples': 2000.0})])
  assert 'gFID of 2,000 or 10,000 unconditional' in mixed
  assert compare.prior_summary(config, [run({})]).endswith('; no gFID')
