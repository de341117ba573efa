"""Multi-process training on localhost: `jax.distributed` with a local coordinator.

2 processes x 1 CPU device, 1 process x 2 fake devices and 1 process x 1 device
train the same tiny config on the same global batch and must agree on every
parameter and metric; a run started on 2 processes resumes on 1.
"""

import json
import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from daps_jax import build
from daps_jax import checkpoint
from tests import helpers

# Several processes with gloo collectives: one such test at a time (`--dist loadgroup`), or
# on 2 cores their collectives' initialisation can time out.
pytestmark = pytest.mark.xdist_group('multiprocess')

_TINY = ['--config=configs/testing.py',
         # The suite's XLA cache: the 1-device runs compile the same programs.
         f'--compilation_cache_dir={helpers.XLA_CACHE}',
         # The beta schedule of a 4-step run also when a run stops at 2 and resumes.
         '--config.method.beta_decay_steps=4']


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def _train(workdir: str, steps: int, *, processes: int = 1, devices: int = 1) -> None:
  """Runs `python -m daps_jax.main` as `processes` processes of `devices` CPU devices."""
  env = helpers.cpu_env(devices)
  command = [sys.executable, '-m', 'daps_jax.main', f'--workdir={workdir}', *_TINY,
             f'--config.total_steps={steps}']
  if processes > 1:
    port = _free_port()
    commands = [[*command, f'--coordinator_address=localhost:{port}',
                 f'--num_processes={processes}', f'--process_id={i}'] for i in range(processes)]
  else:
    commands = [command]
  running = [subprocess.Popen(c, cwd=helpers.REPO, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for c in commands]
  outputs = [p.communicate(timeout=600) for p in running]
  # Every failed process's output: when one dies, the others fail later waiting for it.
  failed = [f'process {i} exited {p.returncode}: {out[-2000:]}{err[-5000:]}'
            for i, (p, (out, err)) in enumerate(zip(running, outputs)) if p.returncode]
  assert not failed, '\n'.join(failed)


def _final(workdir: str, step: int):
  """(restored host state at `step`, eval metrics logged at `step`)."""
  like = build.assemble(helpers.tiny_config()).initial_state()
  ckpt = checkpoint.Checkpointer(workdir, keep=3)
  state, data_state = ckpt.restore(step, like)
  ckpt.close()
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    records = [json.loads(line) for line in f]
  evals = [r for r in records if r['step'] == step and 'eval/psnr' in r]
  return state, evals[-1], data_state


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
  root = tmp_path_factory.mktemp('multiprocess')
  dirs = {name: str(root / name) for name in ('one', 'two_devices', 'two_processes', 'resumed')}
  _train(dirs['one'], 4)
  _train(dirs['two_devices'], 4, devices=2)
  _train(dirs['two_processes'], 4, processes=2)
  _train(dirs['resumed'], 2, processes=2)  # Then 2 more steps on 1 process.
  _train(dirs['resumed'], 4)
  return dirs


def _assert_same(a, b, what: str) -> None:
  (state_a, metrics_a, data_a), (state_b, metrics_b, data_b) = a, b
  assert data_a == data_b, what
  assert set(metrics_a) == set(metrics_b), what
  for key in metrics_a:
    if key != 'step' and metrics_a[key] is not None:
      np.testing.assert_allclose(metrics_b[key], metrics_a[key], rtol=2e-4, atol=1e-5,
                                 err_msg=f'{what}: {key}')
  # Parameters moved by ~4e-3 (4 Adam steps of 1e-3); float noise in a gradient near
  # zero can shift one Adam step by a few 1e-6, hence atol 1e-5.
  for (path, x), y in zip(jax.tree_util.tree_flatten_with_path(state_a)[0],
                          jax.tree.leaves(state_b)):
    np.testing.assert_allclose(y, x, rtol=2e-4, atol=1e-5,
                               err_msg=f'{what}: {jax.tree_util.keystr(path)}')


def test_two_processes_train_like_one_process_with_two_devices_and_with_one(runs):
  one = _final(runs['one'], 4)
  _assert_same(one, _final(runs['two_devices'], 4), '1 process x 2 devices')
  _assert_same(one, _final(runs['two_processes'], 4), '2 processes x 1 device')


def test_a_two_process_run_resumes_on_one_process(runs):
  _assert_same(_final(runs['one'], 4), _final(runs['resumed'], 4), '2 processes, then 1')
  _final(runs['resumed'], 2)  # The checkpoint the 2 processes wrote restores as well.


def test_only_process_zero_writes_logs(runs):
  with open(os.path.join(runs['two_processes'], 'metrics.jsonl')) as f:
    steps = [json.loads(line)['step'] for line in f if 'loss/policy' in line]
  assert steps == [1, 2, 3, 4]  # One line per step: not one per process.
  assert len(os.listdir(os.path.join(runs['two_processes'], 'tb'))) == 1
