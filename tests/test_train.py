"""End to end: a two-step run into a temp workdir, a resume, and bad inputs."""

import json
import os
import pathlib

import jax
import numpy as np
import pytest

from daps_jax import build
from daps_jax import checkpoint
from daps_jax import errors
from daps_jax import parallel
from daps_jax import train
from tests import helpers


def _final_state(workdir: str, step: int, like):
  ckpt = checkpoint.Checkpointer(workdir, keep=3)
  state, data_state = ckpt.restore(step, like)
  ckpt.close()
  return state, data_state


def _assert_same_run_state(workdir_a: str, workdir_b: str, step: int, like, **tolerance):
  """The checkpoints of `step` in two workdirs: equal data position and state leaves."""
  a, data_a = _final_state(workdir_a, step, like)
  b, data_b = _final_state(workdir_b, step, like)
  assert data_a == data_b
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(x, y, **tolerance)
  return a


def _steps_logged(workdir: str, key: str = 'loss/policy') -> list[int]:
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [json.loads(line)['step'] for line in f if key in line]


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
  """(resumed workdir: 2 steps then 2 more, uninterrupted workdir: 4 steps)."""
  resumed = str(tmp_path_factory.mktemp('resumed'))
  straight = str(tmp_path_factory.mktemp('straight'))
  config = helpers.tiny_config()
  config.method.beta_decay_steps = 4  # The same beta schedule for 2 + 2 and 4 steps.
  first = train.train_and_evaluate(config, resumed)
  config.total_steps = 4
  second = train.train_and_evaluate(config, resumed)
  train.train_and_evaluate(config, straight)
  return resumed, straight, first, second


def test_two_step_run_writes_everything(runs):
  resumed, _, first, _ = runs
  for name in ('config.json', 'metrics.jsonl', 'images/recon_00000002.png',
               'images/codebook_00000002.png', 'codes/counts_00000002.npy', 'eval_00000002.json'):
    assert os.path.exists(os.path.join(resumed, name)), name
  tags = {tag for _, tag, _ in helpers.read_summaries(pathlib.Path(resumed, 'tb'))}
  assert {'reconstructions', 'codebook', 'eval/psnr', 'eval/ssim'} <= tags
  for key in ('eval/elbo', 'eval/beta_elbo', 'eval/psnr', 'eval/psnr_mean_image',
              'codebook/used_fraction', 'codebook/perplexity', 'dual/eta', 'policy/beta'):
    assert np.isfinite(first[key]), key
  assert first['eval/num_examples'] == 1000  # The whole held-out split, once.


def test_resume_continues_from_saved_step(runs):
  resumed, straight, _, _ = runs
  assert _steps_logged(resumed) == [1, 2, 3, 4]
  assert sorted(int(s) for s in os.listdir(os.path.join(resumed, 'checkpoints'))) == [2, 4]


def test_resumed_run_equals_uninterrupted_run(runs):
  resumed, straight, _, second = runs
  config = helpers.tiny_config()
  like = build.assemble(config).initial_state()
  a = _assert_same_run_state(resumed, straight, 4, like, rtol=1e-6, atol=1e-7)
  assert int(a.step) == 4


def test_resume_with_different_model_is_refused(runs):
  resumed = runs[0]
  config = helpers.tiny_config()
  config.model.vocab_size = 32
  with pytest.raises(ValueError, match=r'config\.model differs.*fresh --workdir'):
    train.train_and_evaluate(config, resumed)
  config = helpers.tiny_config()
  config.method.num_samples = 8  # The run was trained with K = 4.
  with pytest.raises(ValueError, match=r'config\.method\.num_samples differs'):
    train.train_and_evaluate(config, resumed)


def test_every_process_checks_the_saved_config_and_process_zero_writes_it(tmp_path, monkeypatch):
  workdir, path = str(tmp_path), tmp_path / 'config.json'
  config = helpers.tiny_config()
  with monkeypatch.context() as m:
    m.setattr(parallel, 'is_writer', lambda: False)
    train.write_config(config, workdir)
    assert not path.exists()  # Only process 0 writes.
  train.write_config(config, workdir)
  saved = path.read_text()
  other = helpers.tiny_config()
  other.model.vocab_size = 32
  with monkeypatch.context() as m:
    m.setattr(parallel, 'is_writer', lambda: False)
    with pytest.raises(errors.ConfigError, match=r'config\.model differs'):
      train.write_config(other, workdir)  # Process 1 refuses too, so no process waits alone.
  assert path.read_text() == saved
  path.write_text(saved[:len(saved) // 2])  # As a plain write killed midway leaves it.
  with pytest.raises(errors.ConfigError, match=r'config\.json is not valid JSON.*fresh --workdir'):
    train.write_config(config, workdir)


def test_mismatched_checkpoint_names_the_arrays(tmp_path):
  ckpt = checkpoint.Checkpointer(str(tmp_path), keep=1)
  ckpt.save(1, {'w': np.ones((3,), np.float32)}, {'pos': 1})
  ckpt.close()
  ckpt = checkpoint.Checkpointer(str(tmp_path), keep=1)
  with pytest.raises(errors.CheckpointError, match=r"\['w'\].*\(3,\).*\(5,\)"):
    ckpt.restore(1, {'w': np.zeros((5,), np.float32)})
  ckpt.close()


def test_missing_data_is_reported_before_training(tmp_path):
  config = helpers.tiny_config()
  config.data.name = 'fashion_mnist'
  config.data.dir = str(tmp_path / 'nowhere')
  with pytest.raises(ValueError, match='daps_jax.data.prepare'):
    train.train_and_evaluate(config, str(tmp_path / 'work'))


def test_cifar_path_with_mock_tfds_data(tmp_path):
  """Gaussian likelihood, ResNet decoder with BatchNorm, standardised tfds data."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  config = helpers.load_config('cifar10', 'method=daps')
  config.total_steps = 2
  config.batch_size = 4
  config.eval_batch_size = 8
  config.eval_every_steps = config.checkpoint_every_steps = config.log_every_steps = 2
  config.num_grid_images = 2
  config.method.num_samples = 4
  config.model.num_tokens = 16
  config.model.vocab_size = 8
  config.model.width = 16
  config.model.encoder_layers = config.model.decoder_layers = 1
  config.model.decoder.embed_dim = 8
  config.model.decoder.channels = 8
  config.fid.resolution = 75  # FID of RGB, standardised data too (75 px: quick on a CPU).
  with tfds.testing.mock_data(num_examples=20):
    result = train.train_and_evaluate(config, str(tmp_path))
  assert result['eval/num_examples'] == 20 and result['eval/fid'] > 0
  assert 0 < result['eval/psnr'] < 60 and 0 < result['eval/psnr_mean_image'] < 60
  assert all(np.isfinite(v) for v in result.values())
  assert os.path.exists(tmp_path / 'images' / 'recon_00000002.png')


def test_baseline_with_aux_state_resumes(tmp_path):
  """PPO's aux (value network, behaviour policy, KL coefficient) is checkpointed and
  restored; the run continues from its step with the baseline's metrics."""
  config = helpers.tiny_config('ppo')
  workdir = str(tmp_path)
  train.train_and_evaluate(config, workdir)
  config.total_steps = 3
  result = train.train_and_evaluate(config, workdir)
  assert _steps_logged(workdir, 'loss/value') == [1, 2, 3]
  assert 'ppo/kl_coef' in result and np.isfinite(result['eval/elbo'])
  assert os.path.exists(os.path.join(workdir, 'codes', 'counts_00000003.npy'))


def test_steps_per_dispatch_equals_one_step_per_call(runs, tmp_path):
  """steps_per_dispatch = 2 (two steps per device call in one lax.scan) gives the state,
  data position and logged metrics of one step per call; off the grid (a resume at an odd
  step, the tail) a call is one step."""
  _, straight, _, _ = runs
  config = helpers.tiny_config()
  config.method.beta_decay_steps = 4
  config.total_steps, config.log_every_steps = 4, 2
  config.eval_every_steps = config.checkpoint_every_steps = 2
  config.steps_per_dispatch = 2
  scanned = str(tmp_path / 'scanned')
  train.train_and_evaluate(config, scanned)
  _assert_same_run_state(scanned, straight, 4, build.assemble(config).initial_state(),
                         rtol=1e-5, atol=1e-6)

  def records(workdir):
    with open(os.path.join(workdir, 'metrics.jsonl')) as f:
      return {(r['step'], k): v for r in map(json.loads, f) for k, v in r.items()
              if k.startswith('loss/')}

  logged, reference = records(scanned), records(straight)
  assert {s for s, _ in logged} == {2, 4}
  for key, value in logged.items():
    np.testing.assert_allclose(value, reference[key], rtol=1e-5, err_msg=str(key))
  assert train.dispatch_size(4, 5, 2) == 1 and train.dispatch_size(3, 9, 2) == 1
  assert train.dispatch_size(2, 4, 2) == 2
  config.log_every_steps = 3
  with pytest.raises(errors.ConfigError, match='log_every_steps'):
    train.train_and_evaluate(config, str(tmp_path / 'bad'))
