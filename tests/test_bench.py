"""bench/train_step.py end to end on a method without samples (a quantiser), and the
long runs' keep/restore of finished runs (bench/long_runs.sh)."""

import fcntl
import json
import os
import pathlib
import subprocess
import sys

import numpy as np

from daps_jax import runs
from daps_jax.prior import loop as prior_loop
from tests import helpers


def test_train_step_times_a_method_without_num_samples(tmp_path):
  output = tmp_path / 'times.json'
  result = subprocess.run(
      [sys.executable, '-m', 'bench.train_step', '--configs=mnist', '--methods=fsq',
       '--batch_size=8', '--steps=2', '--warmup=0', f'--output={output}'],
      cwd=helpers.REPO, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stdout + result.stderr[-3000:]
  (record,) = json.loads(output.read_text())['records']
  assert 'error' not in record, record
  assert record['method'] == 'fsq' and record['batch_size'] == 8
  assert record['num_samples'] is None  # FSQ draws no samples: '-' in the table.
  assert record['sec_per_step'] > 0


def _fake_run(run: pathlib.Path, last_step: int, prior_steps: int | None = None) -> None:
  """The files a training run (and its prior) leave, up to `last_step`, checkpoints too."""
  (run / 'codes').mkdir(parents=True)
  (run / 'checkpoints' / str(last_step)).mkdir(parents=True)
  (run / 'checkpoints' / str(last_step) / 'state').write_bytes(b'x' * 1000)
  (run / 'config.json').write_text('{}')
  records = [{'step': s, 'eval/psnr': 14.0} for s in range(2000, last_step + 1, 2000)]
  (run / 'metrics.jsonl').write_text(''.join(json.dumps(r) + '\n' for r in records))
  for s in range(2000, last_step + 1, 2000):
    (run / f'eval_{s:08d}.json').write_text('{"metrics": {}}')
    np.save(run / 'codes' / f'counts_{s:08d}.npy', np.zeros((8, 256)))
  if prior_steps is not None:
    prior = run / 'prior'
    (prior / 'checkpoints').mkdir(parents=True)
    for name in ('config.json', 'metrics.jsonl', f'samples_{prior_steps:08d}.png'):
      (prior / name).write_text('{}')
    (prior / f'eval_{prior_steps:08d}.json').write_text('{"metrics": {"prior/gfid": 1.0}}')


def test_long_runs_keep_finished_runs_and_restore_them_as_finished(tmp_path):
  """`keep` keeps a run only when it is finished and, where the substrate table wants one, its
  prior is too (no checkpoints are kept, so neither could resume); study runs want no prior;
  `restore` gives back workdirs in which `compare` and the study see those runs (and priors)
  as finished, and leaves what a workdir already holds."""
  runs_dir, keep = tmp_path / 'runs', tmp_path / 'keep'
  compare, study = runs_dir / 'compare_fashion_mnist_20k', runs_dir / 'study_mnist'
  _fake_run(compare / 'fsq' / 'seed_0', 20000, prior_steps=2000)  # Kept, with its prior.
  _fake_run(compare / 'gumbel' / 'seed_0', 20000)  # No prior wanted: kept.
  _fake_run(compare / 'fsq' / 'seed_2', 20000)  # Seed 2 wants no prior: kept.
  _fake_run(compare / 'daps' / 'seed_0', 20000)  # Its wanted prior is missing: not kept.
  _fake_run(compare / 'vqvae' / 'seed_1', 8000)  # Unfinished: not kept.
  _fake_run(study / 'bisection_beta1x_lr0.001' / 'daps' / 'seed_0', 8000)  # Kept.
  _fake_run(study / 'short_beta10x_lr0.001' / 'daps' / 'seed_1', 4000)  # Unfinished.
  script = os.path.join(helpers.REPO, 'bench', 'long_runs.sh')
  env = dict(os.environ, RUNS=str(runs_dir), KEEP=str(keep), PYTHON=sys.executable)
  subprocess.run([script, 'keep'], env=env, check=True, timeout=120)
  kept = keep / 'compare_fashion_mnist_20k' / 'runs'
  assert sorted(str(p.relative_to(keep)) for p in keep.rglob('seed_*')) == [
      'compare_fashion_mnist_20k/runs/fsq/seed_0', 'compare_fashion_mnist_20k/runs/fsq/seed_2',
      'compare_fashion_mnist_20k/runs/gumbel/seed_0',
      'study_mnist/runs/bisection_beta1x_lr0.001/daps/seed_0']
  assert not list(keep.rglob('checkpoints'))
  assert sorted(p.name for p in (kept / 'fsq' / 'seed_0' / 'codes').iterdir()) == [
      'counts_00020000.npy']  # Only the final histogram: the tables read no other.

  fresh = tmp_path / 'fresh'  # A new machine: nothing but the kept files.
  env = dict(env, RUNS=str(fresh))
  subprocess.run([script, 'restore'], env=env, check=True, timeout=60)
  compare, study = fresh / 'compare_fashion_mnist_20k', fresh / 'study_mnist'
  for run in ('fsq/seed_0', 'fsq/seed_2', 'gumbel/seed_0'):
    assert runs.finished(str(compare / run), 20000), run
  assert prior_loop.finished(str(compare / 'fsq' / 'seed_0' / 'prior'), 2000)
  assert runs.finished(str(study / 'bisection_beta1x_lr0.001' / 'daps' / 'seed_0'), 8000)
  assert not (compare / 'daps').exists() and not (compare / 'vqvae').exists()
  (compare / 'gumbel' / 'seed_0' / 'metrics.jsonl').write_text('newer\n')
  subprocess.run([script, 'restore'], env=env, check=True, timeout=60)
  assert (compare / 'gumbel' / 'seed_0' / 'metrics.jsonl').read_text() == 'newer\n'


def test_long_runs_lane_skips_done_pieces_and_methods_another_lane_holds(tmp_path):
  """A lane runs the pieces in order (with a pattern, only those it matches), skips those
  already done and those of a method whose lock another lane holds, keeps after each piece,
  and stops when nothing is left for it."""
  runs_dir, log = tmp_path / 'runs', tmp_path / 'commands.txt'
  python = tmp_path / 'python'  # Records the tools' commands; the keep step runs for real.
  python.write_text(f'#!/bin/bash\nif [[ $1 == -m ]]; then echo "$*" >> {log}; exit 0; fi\n'
                    f'exec {sys.executable} "$@"\n')
  python.chmod(0o755)
  script = os.path.join(helpers.REPO, 'bench', 'long_runs.sh')
  env = dict(os.environ, RUNS=str(runs_dir), KEEP=str(tmp_path / 'keep'), PYTHON=str(python))
  lanes = runs_dir / '.lanes'
  lanes.mkdir(parents=True)
  left = {'compare_daps_prior_2', 'compare_fsq_prior_2', 'study_daps_1e-3_1'}
  pieces = [f'compare_{m}_prior_{n}' for n in (1, 2)
            for m in ('daps', 'fsq', 'vqvae', 'gumbel_na', 'daps_na')]
  pieces += [f'compare_gumbel_-_{n}' for n in (1, 2, 3)]
  pieces += [f'compare_{m}_-_3' for m in ('daps', 'fsq', 'vqvae', 'gumbel_na', 'daps_na')]
  pieces += [f'compare_{m}_-_{n}' for n in (1, 2) for m in ('vimco', 'grmck_na')]
  pieces += [f'study_{m}_{r}_{n}' for r in ('1e-3', '3e-4') for n in (1, 2)
             for m in ('daps_na', 'daps')]
  assert left <= set(pieces)
  for piece in set(pieces) - left:
    (lanes / f'{piece}.done').touch()
  with open(lanes / 'compare_daps.lock', 'w') as held:  # Another lane trains daps.
    fcntl.flock(held, fcntl.LOCK_EX)
    only_study = subprocess.run([script, 'lane', '^study:'], env=env, capture_output=True,
                                text=True, timeout=300)
    result = subprocess.run([script, 'lane'], env=env, capture_output=True, text=True,
                            timeout=300)
  for lane in (only_study, result):
    assert lane.returncode == 0, lane.stdout + lane.stderr
    assert 'nothing left for this lane' in lane.stdout
  commands = log.read_text().splitlines()
  assert len(commands) == 2, commands
  assert commands[0].startswith('-m bench.study --config=configs/mnist.py:quickstart')
  assert commands[0].endswith('--methods=daps --seeds=1 --learning_rates=1e-3')
  assert commands[1].startswith('-m daps_jax.compare --config=configs/fashion_mnist.py:short')
  assert ('--methods=fsq --seeds=2 --priors --prior_config.sample.num_fid_samples=2000'
          in commands[1])
  assert not (lanes / 'compare_daps_prior_2.done').exists()
  assert (lanes / 'compare_fsq_prior_2.done').exists()
