"""The methods: one module per family, found by name.

A method is one module of this package (its estimator, per-dataset settings,
validation and `make`; see `base` for what it defines) plus one line of
`REGISTRY`. Nothing here imports the evaluation stack, `fid` or `data`.
"""

import importlib
import types

import ml_collections

from daps_jax import errors

# Method name -> the module of this package that implements it.
REGISTRY = {
    'daps': 'daps',
    'daps_na': 'daps',
    'gumbel': 'relaxed',
    'gumbel_na': 'relaxed',
    'grmck': 'relaxed',
    'grmck_na': 'relaxed',
    'vqvae': 'vqvae',
    'fsq': 'fsq',
    'ppo': 'ppo',
    'vimco': 'vimco',
}
NAMES = tuple(REGISTRY)


def module(name: str) -> types.ModuleType:
  """The module implementing method `name`; ConfigError listing the valid names."""
  if name not in REGISTRY:
    raise errors.ConfigError(
        f'config.method.name: {name!r} is not one of {", ".join(NAMES)}; select it with '
        '--config=configs/<dataset>.py:method=NAME.')
  return importlib.import_module(f'{__name__}.{REGISTRY[name]}')


def configure(config: ml_collections.ConfigDict, name: str, settings: str) -> None:
  """Sets `config.method` to method `name` with its settings for dataset `settings`
  ('mnist', 'cifar10', 'imagenet2012', 'lafan1'), and its optimiser overrides."""
  family = module(name)
  config.method = family.config(name, settings)
  if hasattr(family, 'optim_overrides'):
    config.optim.update(family.optim_overrides(name, settings))


def validate(config: ml_collections.ConfigDict) -> None:
  """The method block's checks (ConfigError naming the field)."""
  module(config.method.name).validate(config.method)
