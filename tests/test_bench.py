"""bench/train_step.py end to end on a method without samples (a quantiser)."""

import json
import subprocess
import sys

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
