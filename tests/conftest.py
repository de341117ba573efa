"""Test set-up: a persistent XLA cache so repeated compiles are cheap, and FID
statistics cached in a temporary directory, never in the user's cache."""

import os
import tempfile

import jax
import pytest

jax.config.update('jax_compilation_cache_dir',
                  os.environ.get('DAPS_TEST_CACHE', '/tmp/daps_jax_test_xla_cache'))
jax.config.update('jax_persistent_cache_min_entry_size_bytes', -1)
jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.5)

# Inherited by the subprocesses tests start; a test may still pass its own fid.stats_dir.
os.environ['DAPS_JAX_FID_STATS'] = tempfile.mkdtemp(prefix='daps_jax_test_fid_stats_')

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def repo_dir() -> str:
  return REPO
