"""Every dataset config and method loads, validates, overrides and counts right."""

import os
import subprocess
import sys

import pytest

from daps_jax import config_lib
from daps_jax import data
from daps_jax import param_count
from tests import helpers

DATASETS = ('mnist', 'fashion_mnist', 'cifar10', 'imagenet')


@pytest.mark.parametrize('dataset', DATASETS)
@pytest.mark.parametrize('method', config_lib.METHODS)
def test_configs_load_and_validate(dataset, method):
  config = helpers.load_config(dataset, f'method={method}')
  config_lib.validate(config)
  assert config.method.name == method and config.method.num_samples == 8
  for field in ('total_steps', 'batch_size', 'eval_every_steps', 'checkpoint_every_steps',
                'seed'):
    assert field in config
  assert config.data.name in data.SPECS


def test_spec_settings():
  mnist = helpers.load_config('mnist', 'method=daps_na')
  assert (mnist.model.num_tokens, mnist.model.vocab_size, mnist.model.width) == (8, 256, 64)
  assert mnist.method.ess_target == 0.5 and mnist.method.beta_final == 0.01
  cifar = helpers.load_config('cifar10', 'method=daps_na')
  assert (cifar.method.beta_init, cifar.method.beta_final) == (6.0, 1.0)
  imagenet = helpers.load_config('imagenet', 'method=daps')
  assert imagenet.batch_size == 64 and imagenet.total_steps == 300_000
  assert imagenet.method.ess_target == 0.25
  assert (imagenet.model.likelihood.variance_min, imagenet.model.likelihood.variance_max) == (
      0.01, 1.0)
  assert helpers.load_config('cifar10').model.likelihood.variance_min is None


@pytest.mark.parametrize('dataset,paper', [('mnist', 423_824), ('cifar10', 1_318_950),
                                           ('imagenet', 1_541_206)])
def test_parameter_counts_match_paper_up_to_start_token(dataset, paper):
  config = helpers.load_config(dataset, 'method=daps')
  assert param_count.count(config)['total'] == paper + config.model.width


@pytest.mark.parametrize('mutate,field', [
    (lambda c: setattr(c, 'batch_size', 0), 'config.batch_size'),
    (lambda c: setattr(c.method, 'ess_target', 1.5), 'config.method.ess_target'),
    (lambda c: setattr(c.method, 'num_samples', 1), 'config.method.num_samples'),
    (lambda c: setattr(c.data, 'name', 'svhn'), 'config.data.name'),
    (lambda c: setattr(c.model, 'width', 62), 'config.model.width'),
    (lambda c: setattr(c.model.likelihood, 'kind', 'gaussian'), 'config.model.likelihood.kind'),
])
def test_validate_names_the_field(mutate, field):
  config = helpers.load_config('mnist')
  mutate(config)
  with pytest.raises(ValueError, match=field.replace('.', r'\.')):
    config_lib.validate(config)


def test_batch_must_divide_over_devices():
  config = helpers.load_config('mnist')
  config.batch_size = 10
  with pytest.raises(ValueError, match=r'config\.batch_size.*4 devices'):
    config_lib.validate(config, num_devices=4)


def test_unknown_method_and_argument_are_errors():
  with pytest.raises(ValueError, match='daps_na'):
    helpers.load_config('cifar10', 'method=dapss')
  with pytest.raises(ValueError, match='Unknown config argument'):
    helpers.load_config('mnist', 'metod=daps')


def test_parse_arg_types():
  arg = config_lib.parse_arg('method=daps_na,quickstart,k=3', method='daps', quickstart=False,
                             k=8)
  assert (arg.method, arg.quickstart, arg.k) == ('daps_na', True, 3)


def test_dotted_overrides_and_bad_config_from_the_command_line(tmp_path):
  """main parses --config.x overrides and stops before training on invalid values."""
  cmd = [sys.executable, '-m', 'daps_jax.main', '--config=configs/mnist.py:quickstart',
         f'--workdir={tmp_path}', '--config.method.ess_target=2.0', '--compilation_cache_dir=']
  result = subprocess.run(cmd, cwd=helpers.REPO, capture_output=True, text=True, timeout=300)
  assert result.returncode != 0
  assert 'config.method.ess_target' in result.stderr
  assert not os.path.exists(tmp_path / 'checkpoints')
