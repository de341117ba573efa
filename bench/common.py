"""What the benchmarks share (no flags here: each tool defines its own)."""

import ast
import os

import jax
import jax.numpy as jnp

from daps_jax import build
from daps_jax import config_lib
from daps_jax.data import motion

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_config(name: str, method: str):
  path = os.path.join(REPO, 'configs', f'{name}.py')
  if not os.path.exists(path):
    valid = sorted(f[:-3] for f in os.listdir(os.path.join(REPO, 'configs')) if f.endswith('.py'))
    raise ValueError(f'No config {path}; valid --configs: {", ".join(valid)}.')
  return config_lib.load(path, f'method={method}')


def parse_overrides(items: list[str]) -> dict:
  """['a.b=16', 'c=bisection'] -> {'a.b': 16, 'c': 'bisection'}."""
  overrides = {}
  for item in items:
    dotted, sep, text = item.partition('=')
    if not sep:
      raise ValueError(f'--override={item}: expected field=value.')
    try:
      overrides[dotted] = ast.literal_eval(text)
    except (ValueError, SyntaxError):
      overrides[dotted] = text
  return overrides


def memory_analysis(config) -> dict:
  """Memory analysis of `config`'s compiled train step at its `batch_size`."""
  spec = (motion.nominal_spec(motion.NOMINAL_FEATURES['bvh'])
          if config.data.name == motion.NAME else None)
  run = build.assemble(config, spec=spec)
  state = run.abstract_state()
  batch = {'inputs': jax.ShapeDtypeStruct((config.batch_size, *run.spec.shape), jnp.float32)}
  key = jax.eval_shape(lambda: jax.random.key(0))
  compiled = jax.jit(run.method.train_step, donate_argnums=0).lower(state, batch, key).compile()
  memory = compiled.memory_analysis()
  fields = ('temp_size_in_bytes', 'argument_size_in_bytes', 'output_size_in_bytes',
            'alias_size_in_bytes', 'generated_code_size_in_bytes')
  return {field.removesuffix('_in_bytes'): int(getattr(memory, field)) for field in fields}
