"""LAFAN1 end to end on generated clips: prepare, windows, every method's step,
training and evaluation with the motion metrics and figure, compare, bad input."""

import csv
import json
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

from daps_jax import build
from daps_jax import config_lib
from daps_jax import data
from daps_jax import methods
from daps_jax.data import motion
from daps_jax.errors import DataError
from daps_jax.evaluation import run as evaluate_lib
from daps_jax.prior import config as prior_config
from daps_jax.prior import loop as prior_loop
from tests import helpers
from tests import motion_clips

FRAMES = 120  # Per generated clip: 3 validation windows each.
# A LAFAN1 config shrunk for a CPU test: L = 32 tokens (one per frame), V = 16, D = 16.
_TINY = {'total_steps': 2, 'batch_size': 8, 'eval_batch_size': 8, 'eval_every_steps': 2,
         'checkpoint_every_steps': 2, 'log_every_steps': 1, 'num_grid_images': 3,
         'model.num_tokens': 32, 'model.vocab_size': 16, 'model.width': 16,
         'model.decoder.embed_dim': 16, 'model.na_layers': 1, 'model.encoder_layers': 1,
         'model.decoder_layers': 1, 'model.decoder.num_layers': 1}


@pytest.fixture(scope='module')
def prepared(tmp_path_factory):
  """{'bvh': data_dir, 'csv': data_dir} of generated clips."""
  root = tmp_path_factory.mktemp('lafan1')
  out = {}
  for kind in ('bvh', 'csv'):
    clips = motion_clips.write_clips(root / f'clips_{kind}', kind, FRAMES)
    motion.prepare(clips, root / f'out_{kind}')
    out[kind] = str(root / f'out_{kind}')
  return out


def tiny(method: str, data_dir: str, **extra):
  config = helpers.load_config('lafan1', f'method={method}')
  for dotted, value in {**_TINY, 'data.dir': data_dir, **extra}.items():
    config_lib.set_field(config, dotted, value)
  if 'num_samples' in config.method:
    config.method.num_samples = 4
  if 'num_gumbels' in config.method:
    config.method.num_gumbels = 3
  return config


def test_prepare_standardises_with_training_statistics(prepared):
  metadata, clips = motion.load(prepared['csv'])
  assert metadata['splits']['validation']['clips'] == ['dance2_subject2', 'walk2_subject4']
  assert len(metadata['splits']['train']['clips']) == 4
  assert metadata['feature_names'][:4] == ['root/height', 'root/velocity_forward',
                                           'root/velocity_left', 'root/yaw_rate']
  frames = np.concatenate(clips['train'])
  np.testing.assert_allclose(frames.mean(0), 0.0, atol=1e-4)
  np.testing.assert_allclose(frames.std(0), 1.0, atol=1e-4)
  # Dropped: the features of near-constant training variance (here root roll/pitch 6-D
  # entries that stay ~1 or ~0); kept: the rest, in order.
  variance = np.asarray(metadata['std']) ** 2
  assert metadata['kept'] == [i for i, v in enumerate(variance) if v >= motion.MIN_VARIANCE]
  assert len(metadata['kept']) < len(metadata['feature_names'])
  spec = data.get_spec('lafan1', prepared['csv'])
  assert spec.shape == (32, len(metadata['kept'])) and spec.modality == 'motion'
  unit = spec.to_unit(frames)  # The training range maps onto [0, 1], per feature.
  np.testing.assert_allclose(unit.min(0), 0.0, atol=1e-5)
  np.testing.assert_allclose(unit.max(0), 1.0, atol=1e-5)


def test_windows_are_random_per_clip_exact_on_resume_and_tiled_for_validation(prepared):
  loader = data.train_loader('lafan1', data_dir=prepared['bvh'], batch_size=4, seed=3)
  first = [next(loader)['inputs'] for _ in range(2)]
  state = loader.get_state()
  after = [next(loader)['inputs'] for _ in range(3)]
  resumed = data.train_loader('lafan1', data_dir=prepared['bvh'], batch_size=4, seed=3)
  resumed.set_state(state)
  for a, b in zip(after, [next(resumed)['inputs'] for _ in range(3)]):
    np.testing.assert_array_equal(a, b)
  assert first[0].shape == (4, 32, data.get_spec('lafan1', prepared['bvh']).shape[1])
  # Each epoch slot of a clip cuts its own random window: not always the same start.
  _, clips = motion.load(prepared['bvh'])
  starts = set()
  for batch in first + after:
    for window in batch:
      for clip in clips['train']:
        hits = [s for s in range(len(clip) - 31) if np.array_equal(clip[s:s + 32], window)]
        starts.update(hits)
  assert len(starts) > 5, starts
  assert len(motion.source('train', prepared['bvh'])) == 4 * -(-FRAMES // 32)
  windows = motion.source('validation', prepared['bvh'])
  assert len(windows) == 2 * (FRAMES // 32)
  _, val = motion.load(prepared['bvh'])
  np.testing.assert_array_equal(windows[1]['motion'], val['validation'][0][32:64])


@pytest.mark.parametrize('method', [m for m in methods.NAMES if m not in ('daps', 'daps_na',
                                                                           'fsq')])
def test_every_other_method_takes_a_finite_step_on_motion(prepared, method):
  """daps, daps_na and fsq train end to end below; the others take one jitted step."""
  config = tiny(method, prepared['csv'])
  config_lib.validate(config)
  run = build.assemble(config)
  batch = next(data.train_loader('lafan1', data_dir=prepared['csv'], batch_size=8, seed=0))
  state, metrics = jax.jit(run.method.train_step)(run.initial_state(), batch, jax.random.key(0))
  assert all(np.isfinite(float(v)) for v in metrics.values()), metrics
  assert int(state.step) == 1


def test_compare_trains_evaluates_and_tabulates_motion(prepared, tmp_path):
  """The issue's check: daps, daps_na and fsq train on generated BVH motion, evaluate
  (finite beta-ELBO and PSNR, the per-batch PSNR, no SSIM or FID), draw the motion
  figure, and compare writes the table; evaluate re-scores a run."""
  overrides = [f'--config.{k}={v}' for k, v in {**_TINY, 'data.dir': prepared['bvh']}.items()]
  result = subprocess.run(
      [sys.executable, '-m', 'daps_jax.compare', '--config=configs/lafan1.py',
       '--methods=daps,daps_na,fsq', '--seeds=1', f'--workdir={tmp_path}', *overrides],
      cwd=helpers.REPO, capture_output=True, text=True, timeout=900)
  assert result.returncode == 0, result.stderr[-3000:]
  with open(tmp_path / 'results.csv') as f:
    rows = {row['method']: row for row in csv.DictReader(f)}
  assert set(rows) == {'daps', 'daps_na', 'fsq'}
  for name, row in rows.items():
    assert np.isfinite(float(row['eval/psnr_mean'])), row
    assert (row['eval/beta_elbo_mean'] == '') == (name == 'fsq'), row
    assert np.isfinite(float(row['eval/psnr_batch_mean'])), row
  table = (tmp_path / 'results.md').read_text()
  assert 'lafan1 (32x' in table and '36.81' in table  # The paper's LAFAN row for reference.
  for name in rows:
    run_dir = tmp_path / name / 'seed_0'
    final = json.loads((run_dir / 'eval_00000002.json').read_text())['metrics']
    assert 'eval/ssim' not in final and 'eval/fid' not in final
    assert (run_dir / 'images' / 'motion_00000002.png').stat().st_size > 0
    assert not (run_dir / 'images' / 'recon_00000002.png').exists()
  metrics, path = evaluate_lib.evaluate_run(str(tmp_path / 'daps' / 'seed_0'))
  assert np.isfinite(metrics['eval/beta_elbo']) and 'eval/fid' not in metrics
  assert os.path.exists(path)
  # A code prior on motion codes: the training clips' tiling, no labels, no gFID, the
  # samples drawn as the motion figure.
  c = prior_config.default()
  c.update(width=16, num_layers=1, num_heads=2, total_steps=2, batch_size=8, eval_every_steps=2,
           checkpoint_every_steps=2, log_every_steps=1)
  c.optim.warmup_steps = 0
  for name in ('daps', 'fsq'):
    prior = prior_loop.train_prior(str(tmp_path / name / 'seed_0'), c)
    assert np.isfinite(prior['prior/bits_per_token']) and 'prior/gfid' not in prior, prior
    assert 'prior/conditional_bits_per_token' not in prior  # Motion has no classes.
    assert (tmp_path / name / 'seed_0' / 'prior' / 'samples_00000002.png').stat().st_size > 0


def _prepare_cli(source, out):
  return subprocess.run([sys.executable, '-m', 'daps_jax.data.prepare', '--dataset=lafan1',
                         f'--source_dir={source}', f'--data_dir={out}'], cwd=helpers.REPO,
                        capture_output=True, text=True, timeout=300)


def test_bad_clips_get_one_line_and_leave_the_output_as_it_was(tmp_path, prepared):
  good = motion_clips.write_clips(tmp_path / 'good', 'bvh', 40)
  out = tmp_path / 'out'
  assert _prepare_cli(good, out).returncode == 0
  before = (out / 'lafan1' / 'metadata.json').read_text()

  bad = motion_clips.write_clips(tmp_path / 'bad', 'bvh', 40)
  clip = bad / 'run1_subject2.bvh'
  lines = clip.read_text().splitlines()
  lines[-3] += ' 1.0'  # One value too many in a frame.
  clip.write_text('\n'.join(lines) + '\n')
  result = _prepare_cli(bad, out)
  assert result.returncode == 1 and 'Traceback' not in result.stderr
  message = result.stderr.strip().splitlines()[-1]
  assert 'run1_subject2.bvh' in message and f'line {len(lines) - 2}' in message, message
  assert (out / 'lafan1' / 'metadata.json').read_text() == before  # The old data stays,
  assert sorted(os.listdir(out)) == ['lafan1']  # and nothing half-written is left.

  cases = {
      'no clips': (lambda d: None, 'holds no clips'),
      'validation only': (lambda d: motion_clips.write_clips(d, 'csv', 40, names=(
          'walk2_subject4', 'dance2_subject2')), 'only validation clips'),
      'short clip': (lambda d: motion_clips.write_clips(d, 'csv', 20), 'shorter than one window'),
      'mixed formats': (lambda d: (motion_clips.write_clips(d, 'csv', 40),
                                   motion_clips.write_clips(d, 'bvh', 40, names=('x',))),
                        'mixes .bvh and .csv'),
  }
  for name, (make, expected) in cases.items():
    source = tmp_path / name.replace(' ', '_')
    source.mkdir()
    make(source)
    with pytest.raises(DataError, match=expected):
      motion.prepare(source, tmp_path / 'nowhere')
    assert not (tmp_path / 'nowhere').exists() or not os.listdir(tmp_path / 'nowhere'), name


def test_unprepared_or_damaged_data_names_the_fix(tmp_path, prepared):
  with pytest.raises(DataError, match='daps_jax.data.prepare --dataset=lafan1'):
    data.get_spec('lafan1', str(tmp_path))
  with pytest.raises(DataError, match='--config.data.dir'):
    data.get_spec('lafan1', None)
  broken = tmp_path / 'broken'
  (broken / 'lafan1').mkdir(parents=True)
  (broken / 'lafan1' / 'metadata.json').write_text(
      pathlib.Path(prepared['csv'], 'lafan1', 'metadata.json').read_text())
  (broken / 'lafan1' / 'train.array_record').write_bytes(b'not a record file')
  with pytest.raises(DataError, match='prepare it again'):
    data.get_spec('lafan1', str(broken))
