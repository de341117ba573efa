"""Test set-up: a persistent XLA cache so repeated compiles are cheap, FID statistics
cached in a temporary directory, never in the user's cache, and a check that
`--dist loadgroup` can group tests with the installed pytest."""

import importlib.metadata
import os
import re
import tempfile

import jax
import pytest

from tests import helpers

jax.config.update('jax_compilation_cache_dir', helpers.XLA_CACHE)
jax.config.update('jax_persistent_cache_min_entry_size_bytes', -1)
jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.5)

# Inherited by the subprocesses tests start; a test may still pass its own fid.stats_dir.
os.environ['DAPS_JAX_FID_STATS'] = tempfile.mkdtemp(prefix='daps_jax_test_fid_stats_')


@pytest.fixture
def repo_dir() -> str:
  return helpers.REPO


def pytest_configure(config):
  """`--dist loadgroup` sends each xdist group to one worker by renaming its tests
  `<id>@<group>`; pytest 9.2 ignores that rename (pytest-xdist <= 3.8), which would split
  the multi-process tests silently and train their shared runs once per worker."""
  if config.getoption('dist', 'no') != 'loadgroup':
    return
  xdist = importlib.metadata.version('pytest-xdist')
  if _version(pytest.__version__) >= (9, 2) and _version(xdist) <= (3, 8):
    raise pytest.UsageError(
        f'pytest {pytest.__version__} with pytest-xdist {xdist} does not group tests under '
        "--dist loadgroup: pip install 'pytest<9.2' (as setup.py's test extra does).")


def _version(text: str) -> tuple[int, ...]:
  return tuple(int(part) for part in re.findall(r'\d+', text)[:2])
