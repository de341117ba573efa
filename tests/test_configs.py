"""Every dataset config and method loads, validates, overrides and counts right."""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

from daps_jax import build
from daps_jax import config_lib
from daps_jax import data
from daps_jax import methods
from daps_jax.data import motion
from daps_jax.methods import base
from tests import helpers

DATASETS = ('mnist', 'fashion_mnist', 'cifar10', 'imagenet', 'lafan1')


@pytest.mark.parametrize('dataset', DATASETS)
@pytest.mark.parametrize('method', methods.NAMES)
def test_configs_load_and_validate(dataset, method):
  config = helpers.load_config(dataset, f'method={method}')
  config_lib.validate(config)
  assert config.method.name == method
  if method in ('daps', 'daps_na', 'ppo', 'vimco'):
    assert config.method.num_samples == 8
  for field in ('total_steps', 'batch_size', 'eval_every_steps', 'checkpoint_every_steps',
                'seed'):
    assert field in config
  assert config.data.name in data.NAMES


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
  # Baselines (spec section 5).
  assert helpers.load_config('mnist', 'method=fsq').method.levels == (8, 6, 5)
  assert helpers.load_config('imagenet', 'method=fsq').method.levels == (8, 5, 5, 5)
  grmck = helpers.load_config('cifar10', 'method=grmck_na').method
  assert (grmck.num_gumbels, grmck.tau_final, grmck.beta_init) == (100, 0.1, 3.0)
  assert helpers.load_config('imagenet', 'method=grmck').method.num_gumbels == 10
  gumbel = helpers.load_config('cifar10', 'method=gumbel')
  assert (gumbel.optim.schedule, gumbel.optim.learning_rate,
          gumbel.optim.final_learning_rate) == ('cosine', 1e-4, 1e-5)
  assert helpers.load_config('mnist', 'method=gumbel_na').method.beta_init == 1.0
  assert helpers.load_config('mnist', 'method=vqvae').method.commitment_cost == 0.25
  assert helpers.load_config('mnist', 'method=vqvae').method.ema_decay is None  # Paper's VQ.
  # Gumbel-NA on CIFAR-10: beta as DAPS (6 -> 0.01), not DAPS-NA's 6 -> 1.
  gumbel_na = helpers.load_config('cifar10', 'method=gumbel_na').method
  assert (gumbel_na.beta_init, gumbel_na.beta_final) == (6.0, 0.01)


def test_quickstart_anneals_daps_beta_over_ten_runs():
  """The quickstart's DAPS schedule lasts 10x its steps (its codebook study); the other
  methods' and every other config's end with the run."""
  for method, horizon in (('daps', 10.0), ('daps_na', 1.0), ('gumbel', 1.0), ('vimco', 1.0)):
    assert helpers.load_config('mnist', f'quickstart,method={method}').method.beta_horizon == (
        horizon), method
  assert helpers.load_config('mnist', 'short').method.beta_horizon == 1.0
  config = helpers.load_config('mnist', 'quickstart')
  config.total_steps = 30
  steps = helpers.load_config('mnist', 'quickstart')
  steps.total_steps, steps.method.beta_horizon, steps.method.beta_decay_steps = 30, 1.0, 300
  spec = helpers.load_config('mnist', 'short')
  spec.total_steps = 30
  for step in (0, 10, 30):
    assert base.beta_schedule(config)(step) == pytest.approx(base.beta_schedule(steps)(step))
  assert base.beta_schedule(spec)(30) == pytest.approx(spec.method.beta_final)
  assert base.beta_schedule(config)(30) > 2 * spec.method.beta_final


def test_lafan1_settings():
  """Spec section 5's LAFAN1 rows: L 64, V 1024 (640 bits), Gaussian of variance 0.25."""
  load = lambda method: helpers.load_config('lafan1', f'method={method}')
  config = load('daps')
  assert (config.model.num_tokens, config.model.vocab_size, config.model.width) == (64, 1024, 128)
  assert config_lib.bits_per_input(config) == 640 and config.model.likelihood.variance == 0.25
  assert (config.method.ess_target, config.method.beta_init, config.method.beta_final) == (
      0.33, 3.0, 0.01)
  assert (load('daps_na').method.beta_init, load('daps_na').model.na_layers) == (1.0, 6)
  gumbel = load('gumbel')
  assert (gumbel.method.beta_init, gumbel.method.tau_final, gumbel.optim.schedule,
          gumbel.optim.learning_rate) == (2.0, 1.0, 'cosine', 1e-4)
  assert (load('gumbel_na').method.beta_init, load('gumbel_na').method.tau_final) == (3.0, 0.75)
  for name in ('grmck', 'grmck_na'):
    m = load(name).method
    assert (m.num_gumbels, m.beta_init, m.tau_final) == (10, 2.0, 0.75)
  assert load('vqvae').method.commitment_cost == 0.5
  assert load('fsq').method.levels == (10, 10, 10)


@pytest.mark.parametrize('dataset', DATASETS)
@pytest.mark.parametrize('method', ['ppo', 'vimco'])
def test_score_function_methods_take_daps_beta_and_k(dataset, method):
  config = helpers.load_config(dataset, f'method={method}').method
  daps = helpers.load_config(dataset, 'method=daps').method
  assert (config.beta_init, config.beta_final, config.num_samples) == (
      daps.beta_init, daps.beta_final, 8)


def test_every_registered_method_is_one_complete_module():
  for name in methods.NAMES:
    module = methods.module(name)
    for function in ('config', 'validate', 'latent', 'make'):
      assert callable(getattr(module, function, None)), (name, function)
    assert module.config(name, 'mnist').name == name


_IMPORTS_SCRIPT = r'''
import sys
sys.path.insert(0, sys.argv[1])
from daps_jax import methods
for name in methods.NAMES:
  methods.module(name)
banned = [m for m in sys.modules if m.startswith(('daps_jax.fid', 'daps_jax.evaluation',
                                                  'daps_jax.data'))]
assert not banned, banned
from daps_jax import config_lib
for dataset in ('mnist', 'fashion_mnist', 'cifar10', 'imagenet', 'lafan1', 'testing'):
  config_lib.validate(config_lib.load(f'{sys.argv[1]}/configs/{dataset}.py', 'method=daps'))
assert 'tensorflow_datasets' not in sys.modules, 'a config imported tensorflow_datasets'
print('IMPORTS_OK')
'''


def test_configs_and_methods_import_no_data_fid_or_evaluation_stack():
  """No method module imports FID, the evaluation package or the data package (nor
  anything that does); loading and validating a config does not import tfds."""
  result = subprocess.run([sys.executable, '-c', _IMPORTS_SCRIPT, helpers.REPO],
                          capture_output=True, text=True, timeout=300)
  assert 'IMPORTS_OK' in result.stdout, result.stdout + result.stderr[-3000:]


@pytest.mark.parametrize('dataset,paper', [('mnist', 423_824), ('cifar10', 1_318_950),
                                           ('imagenet', 1_541_206)])
def test_parameter_counts_match_paper_up_to_start_token(dataset, paper):
  config = helpers.load_config(dataset, 'method=daps')
  assert build.param_counts(config)['total'] == paper + config.model.width


@pytest.mark.parametrize('mutate,field', [
    (lambda c: setattr(c, 'batch_size', 0), 'config.batch_size'),
    (lambda c: setattr(c.method, 'ess_target', 1.5), 'config.method.ess_target'),
    (lambda c: setattr(c.method, 'num_samples', 1), 'config.method.num_samples'),
    (lambda c: setattr(c.data, 'name', 'svhn'), 'config.data.name'),
    (lambda c: setattr(c.model, 'width', 62), 'config.model.width'),
    (lambda c: setattr(c.model.likelihood, 'kind', 'gaussian'), 'config.model.likelihood.kind'),
    (lambda c: setattr(c.optim, 'schedule', 'linear'), 'config.optim.schedule'),
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


@pytest.mark.parametrize('method,mutate,field', [
    ('vqvae', lambda m: setattr(m, 'restart_threshold', 1.0), 'config.method.restart_threshold'),
    ('vqvae', lambda m: setattr(m, 'ema_decay', 1.0), 'config.method.ema_decay'),
    ('fsq', lambda m: setattr(m, 'levels', (8, 2)), 'config.method.levels'),
    ('gumbel', lambda m: setattr(m, 'tau_final', 0.0), 'config.method.tau_init'),
    ('grmck_na', lambda m: setattr(m, 'num_gumbels', 0), 'config.method.num_gumbels'),
    ('ppo', lambda m: setattr(m, 'clip_ratio', 1.5), 'config.method.clip_ratio'),
    ('daps', lambda m: setattr(m, 'dual_solver', 'newton'), 'config.method.dual_solver'),
    ('daps_na', lambda m: setattr(m, 'eta_max', 1e-5), 'config.method.eta_min'),
    ('daps', lambda m: setattr(m, 'bisection_iterations', 0), 'config.method.bisection_iterations'),
    ('gumbel', lambda m: setattr(m, 'beta_horizon', 0.0), 'config.method.beta_horizon'),
])
def test_baseline_fields_are_validated(method, mutate, field):
  config = helpers.load_config('mnist', f'method={method}')
  mutate(config.method)
  with pytest.raises(ValueError, match=field.replace('.', r'\.')):
    config_lib.validate(config)


@pytest.mark.parametrize('dataset', DATASETS)
def test_bisection_dual_solver_builds_on_every_dataset_config(dataset):
  """The whole train step with `dual_solver=bisection`, traced on each config's real
  networks (shapes only: nothing is allocated or compiled)."""
  config = helpers.load_config(dataset, 'method=daps')
  config.method.dual_solver = 'bisection'
  config_lib.validate(config)
  # LAFAN1's shapes come from its prepared data; the H1 CSV's 29 features stand in.
  run = build.assemble(config, spec=motion.nominal_spec(29) if dataset == 'lafan1' else None)
  batch = {'inputs': jax.ShapeDtypeStruct((2, *run.spec.shape), jnp.float32)}
  new_state, metrics = jax.eval_shape(run.method.train_step, run.abstract_state(), batch,
                                      jax.random.key(1))
  assert metrics['dual/eta'].shape == () and new_state.aux['dual'].params['log_eta'].shape == ()
