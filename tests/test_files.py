"""Atomic writes: readers see the old file or the new one, never a part."""

import json
import os
import threading

import pytest

from daps_jax import errors
from daps_jax import files


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
  path = tmp_path / 'sub' / 'config.json'
  with files.atomic_open(path) as f:
    f.write('{"a": 1}')
  with pytest.raises(RuntimeError, match='killed'):
    with files.atomic_open(path) as f:
      f.write('{"a": ')
      raise RuntimeError('killed mid-write')
  assert path.read_text() == '{"a": 1}'
  assert os.listdir(path.parent) == ['config.json']


def test_a_reader_never_sees_a_partial_file(tmp_path):
  """One thread rewrites a 600 kB JSON file while another parses it: every read parses.
  (Written with a plain open(path, 'w'), most reads see an empty or cut file.)"""
  path = tmp_path / 'config.json'
  record = {'values': list(range(100_000))}
  with files.atomic_open(path) as f:
    json.dump(record, f)
  done, failures, reads = threading.Event(), [], [0]

  def read():
    while not done.is_set():
      try:
        json.loads(path.read_text())
      except json.JSONDecodeError as e:
        failures.append(str(e))
      reads[0] += 1

  reader = threading.Thread(target=read)
  reader.start()
  try:
    for _ in range(20):
      with files.atomic_open(path) as f:
        json.dump(record, f)
  finally:
    done.set()
    reader.join()
  assert reads[0] > 0 and not failures, f'{len(failures)} of {reads[0]} reads: {failures[:2]}'


def test_binary_mode_and_bad_modes(tmp_path):
  with files.atomic_open(tmp_path / 'x.bin', 'wb') as f:
    f.write(b'\x00\x01')
  assert (tmp_path / 'x.bin').read_bytes() == b'\x00\x01'
  with pytest.raises(ValueError, match="'a'"):
    with files.atomic_open(tmp_path / 'y', 'a'):
      pass


def test_json_that_does_not_parse_is_one_user_error_naming_the_file(tmp_path):
  path = tmp_path / 'config.json'
  path.write_text('{"model": {"vocab')
  with pytest.raises(errors.ConfigError, match=r'config\.json is not valid JSON .*: fix it'):
    files.read_json(str(path), errors.ConfigError, 'fix it')
