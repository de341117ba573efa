"""The launch scripts: shellcheck-clean, the commands their dry runs print, and a real run of
launch/local_multiprocess.sh with a stand-in for Python (no trainer, no cluster, no gcloud)."""

import json
import os
import shlex
import shutil
import subprocess
import sys
import time

import pytest

from tests import helpers

LAUNCH = os.path.join(helpers.REPO, 'launch')
SCRIPTS = ('single_host.sh', 'local_multiprocess.sh', 'tpu_pod.sh', 'slurm.sbatch')
# Variables the scripts read: the tests set them explicitly, never inherit them.
_VARIABLES = ('PYTHON', 'PORT', 'PLATFORM', 'DEVICES_PER_PROCESS', 'LOG_DIR', 'DRY_RUN', 'VENV',
              'ACCELERATOR', 'TPU_NAME', 'ZONE', 'ACCELERATOR_TYPE', 'TPU_VERSION', 'PROJECT',
              'CREATE_FLAGS', 'REPO_URL', 'GIT_REF', 'REMOTE_DIR', 'STOP_AFTER', 'DELETE_AFTER',
              'ASSUME_EXISTS', 'INSTALL', 'PROCESS_PER', 'GPUS_PER_NODE', 'JAX_LOCAL_DEVICE_IDS',
              'XLA_FLAGS', 'JAX_PLATFORMS', 'CUDA_VISIBLE_DEVICES')
# Trainer arguments, one with spaces and both kinds of quotes.
_ARGS = ['--config=configs/mnist.py:quickstart', '--config.total_steps=2',
         '--config.data.dir=/data/with space/"quoted" it\'s']


def _launch(script, *args, timeout=60, **variables):
  env = {k: v for k, v in os.environ.items()
         if k not in _VARIABLES and not k.startswith('SLURM_')}
  env.update(variables)
  path = os.path.join(LAUNCH, script)
  command = ['bash', path] if script.endswith('.sbatch') else [path]
  return subprocess.run(command + list(args), env=env, capture_output=True, text=True,
                        timeout=timeout)


def _commands(stdout):
  """The commands a script printed (`+ ...` lines), split into words."""
  return [shlex.split(line[2:]) for line in stdout.splitlines() if line.startswith('+ ')]


def _after(words, *prefix):
  """The words after the first occurrence of the sequence prefix."""
  for i in range(len(words) - len(prefix) + 1):
    if tuple(words[i:i + len(prefix)]) == prefix:
      return words[i + len(prefix):]
  raise AssertionError(f'{prefix} not in {words}')


@pytest.mark.parametrize('script', (*SCRIPTS, 'common.sh'))
def test_shellcheck(script):
  if shutil.which('shellcheck') is None:
    pytest.fail('shellcheck is not installed: apt-get install shellcheck')
  result = subprocess.run(['shellcheck', '-x', os.path.join(LAUNCH, script)],
                          capture_output=True, text=True, cwd=helpers.REPO)
  assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize('script', ('device.sh', 'long_runs.sh'))
def test_benchmark_script_shellcheck(script):
  """bench/device.sh (the one command for a lent GPU) and bench/long_runs.sh are clean."""
  if shutil.which('shellcheck') is None:
    pytest.fail('shellcheck is not installed: apt-get install shellcheck')
  result = subprocess.run(['shellcheck', os.path.join(helpers.REPO, 'bench', script)],
                          capture_output=True, text=True)
  assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize('script', SCRIPTS)
def test_scripts_document_variables_and_example(script):
  with open(os.path.join(LAUNCH, script)) as f:
    text = f.read()
  assert text.startswith('#!/usr/bin/env bash\n')
  assert 'set -euo pipefail' in text
  assert '# Variables (environment):' in text and '# Example:' in text
  assert '  DRY_RUN ' in text
  if script.endswith('.sh'):
    assert os.access(os.path.join(LAUNCH, script), os.X_OK), f'chmod +x launch/{script}'


# launch/local_multiprocess.sh


def test_local_multiprocess_dry_run(tmp_path):
  workdir = str(tmp_path / 'run')
  args = [*_ARGS, f'--workdir={workdir}']
  result = _launch('local_multiprocess.sh', '2', '--dry-run', *args, PYTHON='/opt/py/bin/python')
  assert result.returncode == 0, result.stderr
  trainers = [c for c in _commands(result.stdout) if 'daps_jax.main' in c]
  assert len(trainers) == 2, result.stdout
  for i, words in enumerate(trainers):
    assert words[:3] == ['env', 'JAX_PLATFORMS=cpu',
                         'XLA_FLAGS=--xla_force_host_platform_device_count=1']
    assert _after(words, '/opt/py/bin/python', '-m', 'daps_jax.main') == [
        *args, '--coordinator_address=localhost:12355', '--num_processes=2',
        f'--process_id={i}', '>', f'{workdir}/logs/process_{i}.log', '2>&1', '&']
  assert not os.path.exists(workdir)  # A dry run creates nothing.
  # DRY_RUN=1 does the same; `--` before the arguments is dropped; XLA_FLAGS already set are kept.
  result = _launch('local_multiprocess.sh', '3', '--', *args, DRY_RUN='1', PYTHON='python3',
                   DEVICES_PER_PROCESS='4', XLA_FLAGS='--xla_dump_to=/tmp/dump')
  assert result.returncode == 0, result.stderr
  trainers = [c for c in _commands(result.stdout) if 'daps_jax.main' in c]
  assert [c[-5] for c in trainers] == ['--process_id=0', '--process_id=1', '--process_id=2']
  assert all('--num_processes=3' in c and '--' not in c for c in trainers)
  assert trainers[2][2] == ('XLA_FLAGS=--xla_dump_to=/tmp/dump '
                            '--xla_force_host_platform_device_count=4')


def test_local_multiprocess_dry_run_gpu_and_log_dir(tmp_path):
  result = _launch('local_multiprocess.sh', '--dry-run', '2', '--config=configs/cifar10.py',
                   PLATFORM='gpu', DEVICES_PER_PROCESS='2', PORT='4321', PYTHON='python3',
                   LOG_DIR=str(tmp_path))
  assert result.returncode == 0, result.stderr
  trainers = [c for c in _commands(result.stdout) if 'daps_jax.main' in c]
  assert [c[:3] for c in trainers] == [['env', 'CUDA_VISIBLE_DEVICES=0,1', 'python3'],
                                       ['env', 'CUDA_VISIBLE_DEVICES=2,3', 'python3']]
  assert all('--coordinator_address=localhost:4321' in c for c in trainers)
  assert trainers[1][-3] == str(tmp_path / 'process_1.log')


@pytest.mark.parametrize('args, message', [
    ([], 'usage:'),
    (['two', '--config=configs/mnist.py'], 'positive integer'),
    (['0', '--config=configs/mnist.py'], 'positive integer'),
    (['-1', '--config=configs/mnist.py'], 'positive integer'),
    (['2'], 'usage:'),
    (['2', '--dry-run'], 'usage:'),
    (['2', '--config=configs/mnist.py', '--process_id=1'], 'Leave out'),
    (['2', '--config=configs/mnist.py', '--distributed'], 'Leave out'),
])
def test_local_multiprocess_usage_errors(args, message):
  result = _launch('local_multiprocess.sh', *args)
  assert result.returncode == 2
  assert message in result.stderr
  assert 'daps_jax.main' not in result.stdout


_FAKE_PYTHON = '''\
#!{python}
"""Stands in for Python: records how it was started; FAKE_FAIL_ID makes one process fail."""
import json, os, sys, time
process_id = int(next(a for a in sys.argv if a.startswith('--process_id=')).split('=')[1])
out = os.environ['FAKE_OUT']
record = {{'argv': sys.argv[1:], 'pid': os.getpid(), 'cwd': os.getcwd(),
          'env': {{k: os.environ.get(k) for k in ('JAX_PLATFORMS', 'XLA_FLAGS')}}}}
with open(os.path.join(out, f'tmp_{{process_id}}'), 'w') as f:
  json.dump(record, f)
os.rename(os.path.join(out, f'tmp_{{process_id}}'), os.path.join(out, f'process_{{process_id}}.json'))
print(f'hello from process {{process_id}}', flush=True)
fail = os.environ.get('FAKE_FAIL_ID')
if fail is not None:
  if int(fail) == process_id:
    while not os.path.exists(os.path.join(out, 'process_0.json')):
      time.sleep(0.05)
    print(f'boom in process {{process_id}}', file=sys.stderr, flush=True)
    sys.exit(3)
  time.sleep(120)  # Until the script stops it.
'''


def _fake_python(tmp_path):
  path = tmp_path / 'fake_python'
  path.write_text(_FAKE_PYTHON.format(python=sys.executable))
  path.chmod(0o755)
  out = tmp_path / 'out'
  out.mkdir()
  return str(path), str(out)


def _records(out):
  records = {}
  for name in os.listdir(out):
    if name.startswith('process_'):
      with open(os.path.join(out, name)) as f:
        records[int(name[len('process_'):-len('.json')])] = json.load(f)
  return records


def test_local_multiprocess_starts_every_process(tmp_path):
  python, out = _fake_python(tmp_path)
  workdir = str(tmp_path / 'run')
  args = [*_ARGS, f'--workdir={workdir}']
  result = _launch('local_multiprocess.sh', '2', '--', *args, PYTHON=python, FAKE_OUT=out,
                   DEVICES_PER_PROCESS='2')
  assert result.returncode == 0, result.stdout + result.stderr
  records = _records(out)
  assert sorted(records) == [0, 1]
  addresses = set()
  for i, record in records.items():
    argv = record['argv']
    assert argv[:2 + len(args)] == ['-m', 'daps_jax.main', *args]
    assert argv[-2:] == ['--num_processes=2', f'--process_id={i}']
    addresses.add(argv[-3])
    assert record['cwd'] == helpers.REPO
    assert record['env'] == {'JAX_PLATFORMS': 'cpu',
                             'XLA_FLAGS': '--xla_force_host_platform_device_count=2'}
  (address,) = addresses  # The same coordinator for both, on a free port.
  host, port = address.split('=')[1].split(':')
  assert host == 'localhost' and 0 < int(port) < 65536
  for i in range(2):
    with open(os.path.join(workdir, 'logs', f'process_{i}.log')) as f:
      assert f.read().strip() == f'hello from process {i}'
  assert 'hello from process 0' in result.stdout  # Process 0's log is shown...
  assert 'hello from process 1' not in result.stdout  # ...the others are only in their logs.
  assert 'All 2 processes finished' in result.stdout


def test_local_multiprocess_failure_stops_the_others(tmp_path):
  python, out = _fake_python(tmp_path)
  start = time.monotonic()
  result = _launch('local_multiprocess.sh', '2', '--config=configs/mnist.py', PYTHON=python,
                   FAKE_OUT=out, FAKE_FAIL_ID='1', LOG_DIR=str(tmp_path / 'logs'))
  assert result.returncode == 3, result.stdout + result.stderr
  assert time.monotonic() - start < 60  # Process 0 would sleep 120 s: it was stopped.
  assert 'Process 1 of 2 failed (exit status 3)' in result.stderr
  assert 'boom in process 1' in result.stderr  # The end of its log.
  records = _records(out)
  assert sorted(records) == [0, 1]
  with pytest.raises(ProcessLookupError):
    os.kill(records[0]['pid'], 0)


# launch/tpu_pod.sh

_TPU = dict(TPU_NAME='daps-pod', ZONE='us-central2-b', ACCELERATOR_TYPE='v4-32')
_GCLOUD = ['gcloud', 'compute', 'tpus', 'tpu-vm']


def _gcloud(commands, verb):
  return [c for c in commands if c[:5] == [*_GCLOUD, verb]]


def _remote(command):
  """The words of the shell command a `tpu-vm ssh --command=...` runs on the workers."""
  (value,) = [w[len('--command='):] for w in command if w.startswith('--command=')]
  lexer = shlex.shlex(value, posix=True, punctuation_chars=True)  # `;`, `&&`: words of their own.
  lexer.whitespace_split = True
  return list(lexer)


def test_tpu_pod_dry_run_creates_copies_installs_and_trains():
  args = [*_ARGS, '--workdir=gs://bucket/daps']
  result = _launch('tpu_pod.sh', '--dry-run', *args, **_TPU)
  assert result.returncode == 0, result.stderr
  commands = _commands(result.stdout)
  verbs = [c[4] for c in commands if c[:4] == _GCLOUD]
  assert verbs == ['describe', 'create', 'scp', 'ssh', 'ssh', 'ssh']
  (create,) = _gcloud(commands, 'create')
  assert create[5:] == ['daps-pod', '--zone=us-central2-b', '--accelerator-type=v4-32',
                        '--version=tpu-ubuntu2204-base']
  (tar,) = [c for c in commands if c[0] == 'tar']
  assert tar[-1] == '.' and '--exclude=.venv' in tar and '--exclude=workdirs' in tar
  (scp,) = _gcloud(commands, 'scp')
  assert scp[5] == tar[2] and '--worker=all' in scp
  unpack, install, train = _gcloud(commands, 'ssh')
  for ssh in (unpack, install, train):
    assert ssh[5:8] == ['daps-pod', '--zone=us-central2-b', '--worker=all']
  assert 'tar' in _remote(unpack)
  install = _remote(install)
  assert _after(install, 'venv')[0] == '.venv'
  assert _after(install, '.venv/bin/pip', 'install', '--quiet', '-e')[0] == '.[tpu]'
  assert _after(_remote(train), 'cd', 'daps_jax', '&&', 'exec', '.venv/bin/python', '-m',
                'daps_jax.main', '--distributed') == args
  assert not _gcloud(commands, 'stop') and not _gcloud(commands, 'delete')


def test_tpu_pod_dry_run_variants():
  # An existing TPU, code from git, another project, stopped at the end.
  result = _launch('tpu_pod.sh', '--config=configs/cifar10.py', DRY_RUN='1', ASSUME_EXISTS='1',
                   TPU_NAME='pod', ZONE='europe-west4-a', PROJECT='my-project',
                   REPO_URL='https://example.com/daps.git', GIT_REF='v1', REMOTE_DIR='~/code',
                   STOP_AFTER='1')
  assert result.returncode == 0, result.stderr
  commands = _commands(result.stdout)
  assert [c[4] for c in commands] == ['ssh', 'ssh', 'ssh', 'stop']
  assert all('--project=my-project' in c for c in commands)
  clone = _remote(commands[0])
  assert _after(clone, 'git', 'clone', '--quiet')[:2] == ['https://example.com/daps.git', 'code']
  assert _after(clone, 'fetch', '--quiet', 'origin')[0] == 'v1'
  assert _after(_remote(commands[2]), 'cd', 'code', '&&', 'exec', '.venv/bin/python', '-m',
                'daps_jax.main', '--distributed') == ['--config=configs/cifar10.py']
  assert commands[-1] == [*_GCLOUD, 'stop', 'pod', '--zone=europe-west4-a',
                          '--project=my-project']
  # Deleted at the end: with --quiet (no prompt), and not stopped first.
  result = _launch('tpu_pod.sh', '--dry-run', '--config=configs/cifar10.py', DELETE_AFTER='1',
                   STOP_AFTER='1', CREATE_FLAGS='--spot --network=n', **_TPU)
  assert result.returncode == 0, result.stderr
  commands = _commands(result.stdout)
  assert _gcloud(commands, 'create')[0][-2:] == ['--spot', '--network=n']
  assert commands[-1] == [*_GCLOUD, 'delete', 'daps-pod', '--zone=us-central2-b', '--quiet']
  assert not _gcloud(commands, 'stop')


_FAKE_GCLOUD = '''\
#!{python}
"""Stands in for gcloud: one TPU worker whose home directory is FAKE_HOME."""
import json, os, shutil, subprocess, sys
args = sys.argv[1:]
home = os.environ['FAKE_HOME']
with open(os.environ['FAKE_GCLOUD_LOG'], 'a') as f:
  f.write(json.dumps(args) + '\\n')
verb = args[3]
if verb == 'describe':
  sys.exit(1)  # No such TPU.
if verb == 'scp':
  shutil.copy(args[4], os.path.join(home, args[5].split(':', 1)[1]))
if verb == 'ssh':
  command = next(a for a in args if a.startswith('--command='))[len('--command='):]
  if 'pip install' in command:  # Installing: a venv whose python records how it was started.
    venv_bin = os.path.join(home, 'daps_jax', '.venv', 'bin')
    os.makedirs(venv_bin)
    with open(os.path.join(venv_bin, 'python'), 'w') as f:
      f.write('#!{python}\\nimport json, os, sys\\n'
              'json.dump({{"argv": sys.argv[1:], "cwd": os.getcwd()}}, '
              'open(os.environ["FAKE_TRAINED"], "w"))\\n'
              'sys.exit(int(os.environ.get("FAKE_STATUS", "0")))\\n')
    os.chmod(os.path.join(venv_bin, 'python'), 0o755)
  else:
    sys.exit(subprocess.run(['bash', '-c', command], cwd=home).returncode)
'''


def test_tpu_pod_runs_with_a_fake_gcloud(tmp_path):
  bin_dir, home, tmp = tmp_path / 'bin', tmp_path / 'home', tmp_path / 'tmp'
  for directory in (bin_dir, home, tmp):
    directory.mkdir()
  (bin_dir / 'gcloud').write_text(_FAKE_GCLOUD.format(python=sys.executable))
  (bin_dir / 'gcloud').chmod(0o755)
  log, trained = tmp_path / 'gcloud.jsonl', tmp_path / 'trained.json'
  args = [*_ARGS, '--workdir=gs://bucket/daps']
  result = _launch('tpu_pod.sh', *args, PATH=f'{bin_dir}:{os.environ["PATH"]}',
                   TMPDIR=str(tmp), FAKE_HOME=str(home), FAKE_GCLOUD_LOG=str(log),
                   FAKE_TRAINED=str(trained), FAKE_STATUS='5', STOP_AFTER='1', **_TPU)
  assert result.returncode == 5, result.stdout + result.stderr  # Training's status...
  calls = [json.loads(line) for line in log.read_text().splitlines()]
  assert [c[3] for c in calls] == ['describe', 'create', 'scp', 'ssh', 'ssh', 'ssh', 'stop']
  # ...after stopping the TPU all the same.
  code = home / 'daps_jax'
  assert (code / 'daps_jax' / 'main.py').is_file() and (code / 'launch' / 'tpu_pod.sh').is_file()
  assert not (code / '.git').exists() and not (code / 'workdirs').exists()
  assert os.listdir(home) == ['daps_jax'] and os.listdir(tmp) == []  # Tarballs removed.
  record = json.loads(trained.read_text())
  assert record == {'argv': ['-m', 'daps_jax.main', '--distributed', *args], 'cwd': str(code)}


@pytest.mark.parametrize('variables, args, message', [
    (dict(ZONE='z', ACCELERATOR_TYPE='v4-8'), ['--config=c.py'], 'TPU_NAME is required'),
    (dict(TPU_NAME='pod', ACCELERATOR_TYPE='v4-8'), ['--config=c.py'], 'ZONE is required'),
    (dict(TPU_NAME='pod', ZONE='z'), ['--config=c.py'], 'set ACCELERATOR_TYPE'),
    (_TPU, [], 'usage:'),
    (_TPU, ['--config=c.py', '--distributed'], 'Leave out'),
])
def test_tpu_pod_usage_errors(variables, args, message):
  result = _launch('tpu_pod.sh', '--dry-run', *args, **variables)
  assert result.returncode == 2
  assert message in result.stderr
  assert not any(c[:5] == [*_GCLOUD, 'create'] for c in _commands(result.stdout))


# launch/slurm.sbatch


def test_slurm_directives():
  with open(os.path.join(LAUNCH, 'slurm.sbatch')) as f:
    lines = f.read().splitlines()
  directives = dict((*line.split()[1].lstrip('-').split('=', 1), '')[:2] for line in lines
                    if line.startswith('#SBATCH'))
  assert directives['nodes'] == '2'
  assert directives['ntasks-per-node'] == '8' and directives['gpus-per-task'] == '1'
  assert {'job-name', 'time', 'output'} <= set(directives)
  # The trainer checkpoints on SIGUSR1 before the time limit; the job may be requeued.
  assert directives['signal'] == 'USR1@300' and 'requeue' in directives
  # sbatch reads directives only up to the first command.
  first_command = next(i for i, line in enumerate(lines[1:], 1)
                       if line.strip() and not line.startswith('#'))
  assert max(i for i, line in enumerate(lines) if line.startswith('#SBATCH')) < first_command


def test_slurm_dry_run(tmp_path):
  venv = str(tmp_path / 'venv')
  args = [*_ARGS, '--workdir=runs/slurm']
  result = _launch('slurm.sbatch', '--dry-run', *args, VENV=venv)
  assert result.returncode == 0, result.stderr
  create, install, train = _commands(result.stdout)
  assert create == ['srun', '--nodes=1', '--ntasks=1', '--ntasks-per-node=1', 'python3', '-m',
                    'venv', venv]
  assert install == ['srun', '--nodes=1', '--ntasks=1', '--ntasks-per-node=1',
                     f'{venv}/bin/pip', 'install', '--quiet', '-e', '.[cuda]']
  assert train[0] == 'srun'
  assert {'--nodes=2', '--ntasks-per-node=8', '--gpus-per-task=1', '--gpu-bind=per_task:1',
          '--cpus-per-task=8', '--kill-on-bad-exit=1'} <= set(train)
  assert _after(train, 'env', 'JAX_LOCAL_DEVICE_IDS=0', f'{venv}/bin/python', '-m',
                'daps_jax.main', '--distributed') == args


def test_slurm_dry_run_process_per_node(tmp_path):
  venv = tmp_path / 'venv'
  (venv / 'bin').mkdir(parents=True)
  (venv / 'bin' / 'python').write_text('#!/bin/sh\n')
  (venv / 'bin' / 'python').chmod(0o755)
  result = _launch('slurm.sbatch', '--dry-run', '--config=configs/imagenet.py', VENV=str(venv),
                   PROCESS_PER='node', SLURM_JOB_NUM_NODES='3', SLURM_CPUS_ON_NODE='96')
  assert result.returncode == 0, result.stderr
  install, train = _commands(result.stdout)  # The venv exists: no `python3 -m venv`.
  assert install[-2:] == ['-e', '.[cuda]']
  assert {'--nodes=3', '--ntasks-per-node=1', '--gpus-per-task=8', '--gpu-bind=per_task:8',
          '--cpus-per-task=96'} <= set(train)
  assert _after(train, 'env', 'JAX_LOCAL_DEVICE_IDS=0,1,2,3,4,5,6,7', f'{venv}/bin/python', '-m',
                'daps_jax.main', '--distributed') == ['--config=configs/imagenet.py']
  result = _launch('slurm.sbatch', '--dry-run', '--config=configs/imagenet.py', INSTALL='0',
                   VENV='relative_venv')
  (train,) = _commands(result.stdout)
  assert f'{helpers.REPO}/relative_venv/bin/python' in train


@pytest.mark.parametrize('args, variables, message', [
    (['--config=c.py'], {}, 'Not in a SLURM job'),
    (['--dry-run'], {}, 'usage:'),
    (['--dry-run', '--config=c.py'], dict(PROCESS_PER='socket'), 'PROCESS_PER must be'),
    (['--dry-run', '--config=c.py', '--distributed'], {}, 'Leave out'),
])
def test_slurm_usage_errors(args, variables, message):
  result = _launch('slurm.sbatch', *args, **variables)
  assert result.returncode == 2
  assert message in result.stderr
  assert 'srun' not in result.stdout


def test_single_host_dry_run_still_works():
  result = _launch('single_host.sh', '--dry-run', '--config=configs/mnist.py',
                   ACCELERATOR='tpu', VENV='/nonexistent/venv')
  assert result.returncode == 0, result.stderr
  assert "+ /nonexistent/venv/bin/pip install --quiet -e '.[tpu]'" in result.stdout



@pytest.mark.parametrize('status, requeued', [(143, True), (138, True), (1, False), (0, False)])
def test_slurm_requeues_a_run_stopped_by_a_signal(tmp_path, status, requeued):
  """The trainer exits 128 + SIGTERM/SIGUSR1 after checkpointing: the job requeues itself
  and keeps that status; any other outcome is passed on and not requeued."""
  bin_dir = tmp_path / 'bin'
  bin_dir.mkdir()
  log = tmp_path / 'calls.log'
  for name, body in (('srun', f'echo "srun $*" >> {log}\nexit {status}\n'),
                     ('scontrol', f'echo "scontrol $*" >> {log}\n')):
    (bin_dir / name).write_text(f'#!/bin/sh\n{body}')
    (bin_dir / name).chmod(0o755)
  result = _launch('slurm.sbatch', '--config=c.py', PATH=f'{bin_dir}:{os.environ["PATH"]}',
                   SLURM_JOB_ID='4242', INSTALL='0', VENV=str(tmp_path / 'venv'))
  assert result.returncode == status, result.stdout + result.stderr
  calls = log.read_text().splitlines()
  assert calls[0].startswith('srun ') and calls[0].endswith('--distributed --config=c.py')
  assert calls[1:] == (['scontrol requeue 4242'] if requeued else [])
