"""The evaluate command and FID inside evaluations (rfid and authors protocols).

FID tests use the real Inception weights (`python -m daps_jax.fid.weights`, run
by the README's test command) at a 75 x 75 input, the smallest InceptionV3
takes, to keep a CPU pass over 1,000 digits to seconds; the port itself is
tested at 299 in test_inception.py.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from daps_jax import data
from daps_jax import parallel
from daps_jax import train
from daps_jax.evaluation import run as evaluation_run
from daps_jax.fid import scorer
from daps_jax.fid import weights
from tests import helpers

_NO_FID = ('psnr', 'ssim', 'elbo', 'codebook')


def _fid_overrides(tmp_path) -> dict:
  return {'fid.resolution': 75, 'fid.stats_dir': str(tmp_path / 'stats')}


@pytest.fixture(scope='module')
def run(tmp_path_factory):
  """(workdir of a 2-step tiny DAPS run, its final training eval metrics)."""
  workdir = str(tmp_path_factory.mktemp('run'))
  return workdir, train.train_and_evaluate(helpers.tiny_config(), workdir)


def test_evaluate_reproduces_the_training_eval(run):
  workdir, logged = run
  metrics, path = evaluation_run.evaluate_run(workdir, metrics=_NO_FID)
  assert path == os.path.join(workdir, 'eval_00000002.json')
  for key in ('eval/psnr', 'eval/ssim', 'eval/elbo', 'eval/beta_elbo', 'codebook/perplexity'):
    np.testing.assert_allclose(metrics[key], logged[key], rtol=1e-6, err_msg=key)
  assert 0 < metrics['eval/ssim'] <= 1
  with open(path) as f:
    record = json.load(f)
  assert record['fid_protocol'] is None and record['num_examples'] == 1000
  assert record['checkpoint'].endswith(os.path.join('checkpoints', '2'))
  for name in ('images/recon_00000002.png', 'images/codebook_00000002.png',
               'codes/counts_00000002.npy'):
    assert os.path.exists(os.path.join(workdir, name)), name


def test_evaluate_selects_metrics(run):
  metrics, _ = evaluation_run.evaluate_run(run[0], metrics=('psnr',))
  assert set(metrics) == {'eval/psnr', 'eval/psnr_mean_image', 'eval/num_examples'}


@pytest.mark.parametrize('kwargs, message', [
    (dict(step=7), 'available steps: [2]'),
    (dict(metrics=('psnr', 'is')), "unknown ['is']"),
    (dict(overrides={'fid.weights': '/nonexistent/w.npz'}), 'python -m daps_jax.fid.weights'),
    (dict(overrides={'fid.protocol': 'authors'}), 'fid.reference'),
])
def test_evaluate_bad_input_names_the_fix(run, kwargs, message):
  with pytest.raises((ValueError, OSError)) as error:
    evaluation_run.evaluate_run(run[0], **kwargs)
  assert message in str(error.value)


def test_evaluate_without_a_run_names_the_problem(tmp_path):
  with pytest.raises(evaluation_run.EvaluateError, match='config.json does not exist'):
    evaluation_run.evaluate_run(str(tmp_path))
  (tmp_path / 'config.json').write_text('{"method": {"na')
  with pytest.raises(evaluation_run.EvaluateError, match='config.json is not valid JSON'):
    evaluation_run.evaluate_run(str(tmp_path))


def test_rfid_caches_the_originals_and_authors_protocol_agrees(run, tmp_path):
  workdir, _ = run
  overrides = _fid_overrides(tmp_path)
  first, path = evaluation_run.evaluate_run(workdir, metrics=('fid',), overrides=overrides)
  cached = os.listdir(tmp_path / 'stats')
  assert len(cached) == 1 and cached[0].startswith('mnist_embedded_test_75_')
  with open(path) as f:
    protocol = json.load(f)['fid_protocol']
  assert protocol['name'] == 'rfid' and protocol['resolution'] == 75
  assert protocol['weights_sha256'] == weights.CHECKSUM
  assert first['eval/fid'] > 0
  # Second pass: the originals come from the cache, the FID is the same.
  again, _ = evaluation_run.evaluate_run(workdir, metrics=('fid',), overrides=overrides)
  np.testing.assert_allclose(again['eval/fid'], first['eval/fid'], rtol=1e-9)
  # The authors' protocol against a user file holding those same statistics (a
  # cache file has the arrays mu and sigma a reference needs).
  reference = str(tmp_path / 'stats' / cached[0])
  authors, path = evaluation_run.evaluate_run(
      workdir, metrics=('fid',),
      overrides={**overrides, 'fid.protocol': 'authors', 'fid.reference': reference})
  np.testing.assert_allclose(authors['eval/fid'], first['eval/fid'], rtol=1e-9)
  with open(path) as f:
    assert json.load(f)['fid_protocol']['reference'] == reference


def _digits(n: int) -> np.ndarray:
  source = data.get_source('mnist_embedded', 'test', None)
  return np.stack([source[i]['image'] for i in range(n)]).astype(np.float32) / 255.0


def _fid_of(fid: scorer.FidScorer, reconstructions: np.ndarray, originals: np.ndarray) -> float:
  fid.begin()
  for i in range(0, len(originals), 100):
    batch = {'inputs': originals[i:i + 100], 'mask': np.ones(100, bool)}
    fid.add(parallel.shard(reconstructions[i:i + 100]), batch)
  return fid.result()


def test_fid_is_zero_on_itself_and_grows_with_noise(tmp_path):
  spec = data.get_spec('mnist_embedded')  # to_unit is the identity: grey digits pass as they are.
  fid = scorer.FidScorer(weights.load(), spec=spec, num_examples=200, protocol='rfid',
                         resolution=75, chunk_size=64, stats_dir=str(tmp_path))
  originals = _digits(200)
  assert abs(_fid_of(fid, originals, originals)) < 1e-3
  noise = np.random.default_rng(0).normal(size=originals.shape).astype(np.float32)
  scores = [_fid_of(fid, np.clip(originals + s * noise, 0, 1), originals)
            for s in (0.02, 0.1, 0.4)]
  assert all(a < b for a, b in zip(scores, scores[1:])), scores
  assert scores[0] > 1e-3


def test_training_logs_fid_at_the_final_eval(tmp_path):
  config = helpers.tiny_config('fsq')
  config.fid.every_steps, config.fid.resolution = 0, 75
  config.fid.stats_dir = str(tmp_path / 'stats')
  result = train.train_and_evaluate(config, str(tmp_path / 'run'))
  assert result['eval/fid'] > 0 and 'eval/elbo' not in result
  with open(tmp_path / 'run' / 'metrics.jsonl') as f:
    assert any('eval/fid' in json.loads(line) for line in f)


_SHARDED_SCRIPT = r'''
import json, sys
sys.path.insert(0, sys.argv[1])
import jax
from daps_jax.evaluation import run
from daps_jax import parallel
assert jax.local_device_count() == int(sys.argv[3]), jax.devices()
metrics, _ = run.evaluate_run(sys.argv[2], overrides={
    'fid.resolution': 75, 'fid.stats_dir': sys.argv[4]})
print('METRICS', json.dumps(metrics))
'''


def test_two_devices_evaluate_like_one(run, tmp_path):
  """Every metric, FID included, on 2 fake CPU devices equals 1 device."""
  results = []
  for devices in (1, 2):
    env = helpers.cpu_env(devices)
    out = subprocess.run([sys.executable, '-c', _SHARDED_SCRIPT, helpers.REPO, run[0],
                          str(devices), str(tmp_path / f'stats{devices}')],
                         env=env, capture_output=True, text=True, timeout=600)
    line = [l for l in out.stdout.splitlines() if l.startswith('METRICS ')]
    assert line, out.stdout + out.stderr[-5000:]
    results.append(json.loads(line[0][len('METRICS '):]))
  one, two = results
  assert set(one) == set(two) and 'eval/fid' in one
  for key in one:
    np.testing.assert_allclose(two[key], one[key], rtol=1e-4, err_msg=key)


def test_command_prints_a_summary_and_reports_bad_input_without_traceback(run, tmp_path):
  command = [sys.executable, '-m', 'daps_jax.evaluate', '--metrics=psnr,codebook']
  ok = subprocess.run([*command, f'--workdir={run[0]}'], cwd=helpers.REPO, capture_output=True,
                      text=True, timeout=300)
  assert ok.returncode == 0, ok.stderr[-3000:]
  assert 'PSNR' in ok.stdout and 'eval_00000002.json' in ok.stdout
  bad = subprocess.run([*command, f'--workdir={tmp_path}'], cwd=helpers.REPO,
                       capture_output=True, text=True, timeout=300)
  assert bad.returncode != 0 and 'Traceback' not in bad.stderr
  assert 'config.json does not exist' in bad.stderr
