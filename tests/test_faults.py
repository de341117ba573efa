"""Faults a run must survive: kill -9 (also during a save), SIGTERM on one or two
processes, a corrupt newest checkpoint, non-finite updates, bad config flags.

Each run is `python -m daps_jax.main` on configs/testing.py in a fresh process,
so signals and kills are real. The beta schedule is fixed at 30 steps, so runs
of different lengths train the same way step for step.
"""

import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from daps_jax import build
from daps_jax import checkpoint
from daps_jax import errors
from daps_jax import train
from tests import helpers

TOTAL = 30
_ARGS = ['--config=configs/testing.py', f'--config.total_steps={TOTAL}',
         '--config.method.beta_decay_steps=30', '--config.eval_every_steps=10',
         '--config.checkpoint_every_steps=2', f'--compilation_cache_dir={helpers.XLA_CACHE}']


def _command(workdir, *extra):
  return [sys.executable, '-m', 'daps_jax.main', f'--workdir={workdir}', *_ARGS, *extra]


def _run(workdir, *extra, devices: int = 1) -> subprocess.CompletedProcess:
  return subprocess.run(_command(workdir, *extra), cwd=helpers.REPO,
                        env=helpers.cpu_env(devices), capture_output=True, text=True, timeout=600)


def _records(workdir) -> list[dict]:
  path = pathlib.Path(workdir) / 'metrics.jsonl'
  if not path.exists():
    return []
  records = []
  for line in path.read_text().splitlines():
    try:
      records.append(json.loads(line))
    except json.JSONDecodeError:  # A line being written.
      pass
  return records


def _last_step(workdir) -> int:
  return max((r['step'] for r in _records(workdir)), default=0)


def _saving(workdir) -> bool:
  """An orbax save in progress: a checkpoint entry that is not a finished step."""
  directory = pathlib.Path(workdir) / 'checkpoints'
  try:
    return any(not name.isdigit() and 'corrupt' not in name for name in os.listdir(directory))
  except FileNotFoundError:
    return False


def _final(workdir, step: int = TOTAL):
  """(state restored at `step`, eval record at `step`)."""
  config = helpers.tiny_config()
  ckpt = checkpoint.Checkpointer(str(workdir), keep=3)
  try:
    state, _ = ckpt.restore(step, build.assemble(config).initial_state())
  finally:
    ckpt.close()
  evals = [r for r in _records(workdir) if r['step'] == step and 'eval/psnr' in r]
  return state, evals[-1]


def _assert_equal_runs(workdir, reference):
  state, metrics = _final(workdir)
  ref_state, ref_metrics = reference
  for (path, a), b in zip(jax.tree_util.tree_flatten_with_path(state)[0],
                          jax.tree.leaves(ref_state)):
    np.testing.assert_array_equal(a, b, err_msg=jax.tree_util.keystr(path))
  assert {k: v for k, v in metrics.items() if not k.startswith('perf/')} == {
      k: v for k, v in ref_metrics.items() if not k.startswith('perf/')}


def _assert_each_step_once(workdir):
  train_steps = [r['step'] for r in _records(workdir) if 'loss/policy' in r]
  eval_steps = [r['step'] for r in _records(workdir) if 'eval/psnr' in r]
  assert train_steps == list(range(1, TOTAL + 1)), train_steps
  assert eval_steps == [10, 20, 30], eval_steps


@pytest.fixture(scope='module')
def reference(tmp_path_factory):
  """An uninterrupted run's final state and eval metrics."""
  workdir = tmp_path_factory.mktemp('reference')
  result = _run(workdir)
  assert result.returncode == 0, result.stderr[-3000:]
  return _final(workdir)


def _kill_when(command, workdir, ready, rng, env) -> tuple[bool, bool]:
  """Starts `command`, SIGKILLs it once `ready()` holds; (killed, killed during a save)."""
  process = subprocess.Popen(command, cwd=helpers.REPO, env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
  try:
    while process.poll() is None:
      if ready():
        during_save = _saving(workdir)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=60)
        return True, during_save
      time.sleep(rng.uniform(0.0, 0.002))
    return False, False
  finally:
    if process.poll() is None:
      process.kill()


def test_kill_9_at_random_times_and_during_saves_loses_nothing(reference, tmp_path):
  """Kill -9 during a save, then at random steps; every restart resumes and the final
  parameters and metrics equal the uninterrupted run's bit for bit, each step logged once."""
  rng = np.random.default_rng(0)
  workdir = tmp_path / 'run'
  kill_steps = sorted(rng.choice(np.arange(3, TOTAL - 2), size=3, replace=False))
  conditions = [lambda: _last_step(workdir) >= 1 and _saving(workdir)]
  conditions += [lambda s=s: _last_step(workdir) >= s for s in kill_steps]
  during_saves = 0
  for ready in conditions:
    killed, during_save = _kill_when(_command(workdir), workdir, ready, rng, helpers.cpu_env())
    during_saves += during_save
  assert during_saves >= 1  # At least one kill cut a checkpoint write short.
  result = _run(workdir)
  assert result.returncode == 0, result.stderr[-3000:]
  assert not _saving(workdir)
  _assert_equal_runs(workdir, reference)
  _assert_each_step_once(workdir)


def _wait_for_step(process, workdir, step: int) -> None:
  deadline = time.time() + 300
  while _last_step(workdir) < step:
    assert process.poll() is None, process.communicate()[1][-3000:]
    assert time.time() < deadline
    time.sleep(0.005)


def test_sigterm_between_checkpoints_saves_that_step_and_resumes(reference, tmp_path):
  """SIGTERM (then SIGINT) mid-run: the run checkpoints the step it was on, exits 143,
  and the rerun resumes there and ends as the uninterrupted run did."""
  workdir = tmp_path / 'run'
  command = _command(workdir, '--config.checkpoint_every_steps=1000')
  process = subprocess.Popen(command, cwd=helpers.REPO, env=helpers.cpu_env(),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  _wait_for_step(process, workdir, 7)
  process.send_signal(signal.SIGTERM)
  process.send_signal(signal.SIGINT)  # A second signal while it stops: ignored, not fatal.
  _, stderr = process.communicate(timeout=300)
  # Pending signals are delivered lowest number first: the first one handled decides.
  first = signal.SIGINT if 'SIGINT received: stopping' in stderr else signal.SIGTERM
  assert process.returncode == 128 + first, stderr[-3000:]
  assert 'Traceback' not in stderr and 'received again: ignored' in stderr
  ckpt = checkpoint.Checkpointer(str(workdir), keep=3)
  steps = ckpt.all_steps()
  ckpt.close()
  assert len(steps) == 1 and 7 <= steps[0] < TOTAL, steps  # Saved at the step it stopped.
  assert _last_step(workdir) == steps[0]  # Logs flushed up to it, nothing after.
  result = _run(workdir, '--config.checkpoint_every_steps=1000')
  assert result.returncode == 0, result.stderr[-3000:]
  assert f'Resumed from step {steps[0]}' in result.stderr
  _assert_equal_runs(workdir, reference)
  _assert_each_step_once(workdir)
  # TensorBoard is told to drop anything the stopped run logged after its checkpoint.
  purges = [e.step for e in helpers.read_events(workdir / 'tb')
            if e.session_log.status == e.session_log.START]
  assert purges == [1, steps[0] + 1], purges  # Each run purges from its first step.


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def _start_processes(workdir, processes: int = 2):
  port = _free_port()
  return [subprocess.Popen(
      _command(workdir, '--config.checkpoint_every_steps=1000',
               f'--coordinator_address=localhost:{port}', f'--num_processes={processes}',
               f'--process_id={i}'),
      cwd=helpers.REPO, env=helpers.cpu_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
      text=True)
      for i in range(processes)]


@pytest.mark.xdist_group('multiprocess')  # With test_multiprocess.py: one gloo job at a time.
def test_sigterm_to_one_of_two_processes_stops_both_at_one_step(tmp_path):
  """Only process 1 is signalled; both agree on the step, save it together and exit;
  two processes resume and end bit-identical to 1 process x 2 devices uninterrupted."""
  reference_dir = tmp_path / 'reference'
  result = _run(reference_dir, '--config.checkpoint_every_steps=1000', devices=2)
  assert result.returncode == 0, result.stderr[-3000:]
  workdir = tmp_path / 'run'
  running = _start_processes(workdir)
  _wait_for_step(running[0], workdir, 7)
  running[1].send_signal(signal.SIGTERM)
  outputs = [p.communicate(timeout=300) for p in running]
  for p, (_, err) in zip(running, outputs):
    assert p.returncode == 128 + signal.SIGTERM, err[-3000:]
    assert 'Traceback' not in err
  ckpt = checkpoint.Checkpointer(str(workdir), keep=3)
  steps = ckpt.all_steps()
  ckpt.close()
  assert len(steps) == 1 and 7 <= steps[0] < TOTAL, steps
  running = _start_processes(workdir)
  outputs = [p.communicate(timeout=600) for p in running]
  for p, (_, err) in zip(running, outputs):
    assert p.returncode == 0, err[-3000:]
  _assert_equal_runs(workdir, _final(reference_dir))
  _assert_each_step_once(workdir)


def _corrupt_newest(workdir) -> int:
  """Halves every array file of the newest checkpoint; returns its step."""
  ckpt = checkpoint.Checkpointer(str(workdir), keep=3)
  step = ckpt.latest_step()
  ckpt.close()
  for path in (pathlib.Path(workdir) / 'checkpoints' / str(step) / 'state').rglob('d/*'):
    os.truncate(path, path.stat().st_size // 2)
  return step


def test_corrupt_newest_checkpoint_warns_renames_and_falls_back(reference, tmp_path):
  workdir = tmp_path / 'run'
  result = _run(workdir, '--config.total_steps=12')
  assert result.returncode == 0, result.stderr[-3000:]
  bad = _corrupt_newest(workdir)
  refused = _run(workdir, '--noresume_fallback')
  assert refused.returncode == 1 and 'Traceback' not in refused.stderr, refused.stderr[-3000:]
  assert f'Cannot read checkpoint {bad}' in refused.stderr.splitlines()[-1]
  assert (workdir / 'checkpoints' / str(bad)).exists()  # Nothing renamed without fallback.
  result = _run(workdir)
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'Traceback' not in result.stderr
  assert f'renamed it to {workdir / "checkpoints" / f"{bad}.corrupt"}' in result.stderr
  assert f'Resumed from step {bad - 2}' in result.stderr
  _assert_equal_runs(workdir, reference)
  _assert_each_step_once(workdir)


def test_nan_steps_are_skipped_and_divergence_keeps_the_last_good_checkpoint(tmp_path):
  config = helpers.tiny_config()
  config.total_steps, config.debug.nan_steps = 4, (3,)
  result = train.train_and_evaluate(config, str(tmp_path / 'skipped'))
  assert np.isfinite(result['eval/elbo'])
  skipped = [r for r in _records(tmp_path / 'skipped') if r['step'] == 4 and 'loss/policy' in r]
  assert skipped[0]['optim/encoder_skipped'] == 1 and skipped[0]['optim/decoder_skipped'] == 1

  config.total_steps, config.debug.nan_steps = 8, (3, 4, 5, 6)
  config.optim.max_consecutive_skips = 2
  with pytest.raises(errors.DivergedError, match='non-finite updates in a row'):
    train.train_and_evaluate(config, str(tmp_path / 'diverged'))
  ckpt = checkpoint.Checkpointer(str(tmp_path / 'diverged'), keep=3)
  assert ckpt.all_steps() == [2]  # The last good one; nothing after it was written.
  ckpt.close()


@pytest.mark.parametrize('flag,expected', [
    ('--config.method.num_sampls=3', 'did you mean --config.method.num_samples?'),
    ('--config.nonexistent=1', "config has no field 'nonexistent'"),
    ('--config.batch_size=abc', 'invalid literal'),
])
def test_bad_config_flags_end_in_one_line_with_status_2(tmp_path, flag, expected):
  result = subprocess.run(_command(tmp_path / 'run', flag), cwd=helpers.REPO,
                          env=helpers.cpu_env(), capture_output=True, text=True, timeout=300)
  assert result.returncode == 2
  assert result.stderr.strip().splitlines() == [result.stderr.strip()]  # One line.
  assert expected in result.stderr and result.stderr.startswith('error: ')
  assert not (tmp_path / 'run').exists()


@pytest.fixture
def small_disk(tmp_path):
  """A 2 MB tmpfs: room for a few of the tiny run's checkpoints (root can mount one)."""
  mount_point = tmp_path / 'disk'
  mount_point.mkdir()
  mounted = subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=2M', 'tmpfs', str(mount_point)],
                           capture_output=True, text=True)
  if mounted.returncode != 0:
    pytest.skip(f'cannot mount a tmpfs here: {mounted.stderr.strip()}')
  try:
    yield mount_point
  finally:
    subprocess.run(['umount', str(mount_point)], check=True)


def test_full_disk_stops_with_one_line_and_keeps_older_checkpoints(tmp_path, small_disk):
  """The checkpoints' volume fills up (a quota, a small scratch disk mounted there)."""
  workdir = tmp_path / 'run'
  workdir.mkdir()
  (workdir / 'checkpoints').symlink_to(small_disk)
  result = _run(workdir, '--config.checkpoint_every_steps=1', '--config.num_grid_images=0',
                '--config.eval_every_steps=1000')
  assert result.returncode == 1, result.stderr[-3000:]
  assert 'Traceback' not in result.stderr
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith('error: Writing checkpoint') and 'No space left' in last, last
  assert 'MB are free there' in last and str(workdir / 'checkpoints') in last
  ckpt = checkpoint.Checkpointer(str(workdir), keep=3)
  try:
    steps = ckpt.all_steps()
    assert steps and steps[-1] < TOTAL
    step, _, data_state = ckpt.restore_latest(build.assemble(helpers.tiny_config()).initial_state(),
                                              fallback=False)
    assert step == steps[-1] and data_state is not None  # The newest complete one restores.
  finally:
    ckpt.close()
