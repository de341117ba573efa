"""Training runs on disk, as `compare` and the benchmark studies keep them.

A run is a directory holding an ordinary training run (`daps_jax.train`):
metrics.jsonl, checkpoints, and the code histogram of each evaluation. A run is
finished when it evaluated at its config's last step; a finished run loads as a
`report.Run`.
"""

import ast
import json
import os

from absl import logging
import ml_collections
import numpy as np

from daps_jax import config_lib
from daps_jax import errors
from daps_jax import files
from daps_jax import report
from daps_jax import train
from daps_jax.evaluation import outputs
from daps_jax.methods import base


def method_config(filename: str, overrides: dict, method: str,
                  seed_offset: int) -> ml_collections.ConfigDict:
  """The config file's config for `method` with the command line's overrides."""
  path, _, arg = filename.partition(':')
  items = [item for item in arg.split(',') if item and not item.startswith('method=')]
  config = config_lib.load(path, ','.join(items + [f'method={method}']))
  for dotted, value in overrides.items():
    config_lib.set_field(config, dotted, value)
  config.seed += seed_offset
  return config


def _records(workdir: str) -> list[dict]:
  path = os.path.join(workdir, 'metrics.jsonl')
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def _final_eval(records: list[dict], step: int) -> dict | None:
  evals = [r for r in records if r.get('step') == step and 'eval/psnr' in r]
  return evals[-1] if evals else None


def finished(workdir: str, total_steps: int) -> bool:
  """A run that evaluated at its last step (and saved its code histogram)."""
  return (_final_eval(_records(workdir), total_steps) is not None
          and os.path.exists(outputs.counts_path(workdir, total_steps)))


# Fields that change how a run is logged, checkpointed, evaluated or laid out in
# memory, not what it trains: a finished run may differ from the asked config in these.
_BOOKKEEPING = ('checkpoint_every_steps', 'data.dir', 'data.worker_count', 'eval_batch_size',
                'eval_every_steps', 'fid', 'keep_checkpoints', 'log_every_steps',
                'num_grid_images', 'steps_per_dispatch', 'method.sample_chunks',
                'model.attention_chunk', 'model.remat')


def _leaves(tree: dict, prefix: str = '') -> dict:
  out = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      out.update(_leaves(value, f'{prefix}{key}.'))
    else:
      out[f'{prefix}{key}'] = value
  return out


def _as_trained(tree: dict) -> dict:
  """`tree` (a config as JSON) with its beta schedule's length in steps as beta_decay_steps,
  however the config spelled it (steps, or beta_horizon x total_steps)."""
  method = tree.get('method', {})
  if 'beta_decay_steps' not in method:
    return tree
  steps = base.anneal_steps(method, tree['total_steps'])
  trained = {k: v for k, v in method.items() if k != 'beta_horizon'}
  return {**tree, 'method': {**trained, 'beta_decay_steps': steps}}


def config_differences(config: ml_collections.ConfigDict, workdir: str) -> list[str]:
  """'field: X there vs Y now' for each training field where the run in `workdir`
  (its config.json) differs from `config`. A field the saved config lacks (the run
  predates it) is not compared; the beta schedule is compared by its length in steps."""
  path = os.path.join(workdir, 'config.json')
  if not os.path.exists(path):
    raise errors.ConfigError(f'{path} is missing, so the finished run there cannot be checked '
                             'against the asked config: restore it, or delete the run to train '
                             'it again.')
  saved = _leaves(_as_trained(files.read_json(path, errors.ConfigError,
                                              'restore it, or delete the run to train it again.')))
  asked = _leaves(_as_trained(json.loads(config.to_json_best_effort())))
  return [f'{field}: {saved[field]!r} there vs {value!r} now'
          for field, value in sorted(asked.items())
          if field in saved and saved[field] != value
          and not any(field == b or field.startswith(b + '.') for b in _BOOKKEEPING)]


def train_unless_finished(config: ml_collections.ConfigDict, workdir: str, label: str) -> bool:
  """Trains (or resumes) the run in `workdir` unless it is finished; True if it trained.

  A finished run trained with other settings than `config` is refused (a table
  would otherwise report it under settings it did not have).
  """
  if finished(workdir, config.total_steps):
    differences = config_differences(config, workdir)
    if differences:
      raise errors.ConfigError(
          f'{label}: the finished run in {workdir} was trained with other settings '
          f'({"; ".join(differences)}); delete that directory to train it with these, '
          'or ask for its settings.')
    logging.info('%s: finished in %s, skipped.', label, workdir)
    return False
  logging.info('%s: training in %s.', label, workdir)
  train.train_and_evaluate(config, workdir)
  return True


def load_run(workdir: str, config: ml_collections.ConfigDict, seed_offset: int) -> report.Run:
  records = _records(workdir)
  final = {k: v for k, v in _final_eval(records, config.total_steps).items() if k != 'step'}
  # A later `python -m daps_jax.evaluate` of the final checkpoint (e.g. adding FID).
  evaluated = outputs.json_path(workdir, config.total_steps)
  if os.path.exists(evaluated):
    with open(evaluated) as f:
      final.update(json.load(f)['metrics'])
  return report.Run(method=config.method.name, seed=seed_offset,
                    final=final, curve=records,
                    code_counts=np.load(outputs.counts_path(workdir, config.total_steps)),
                    bits=config_lib.bits_per_input(config))


def method_overrides(items: list[str], names: list[str]) -> dict[str, dict]:
  """{method: {dotted field: value}} from 'method:field=value' items (values parsed as
  Python literals where they are ones, e.g. 8, 1e-3, True; else kept as text)."""
  result = {}
  for item in items:
    name, colon, assignment = item.partition(':')
    dotted, equals, text = assignment.partition('=')
    if not colon or not equals or not dotted or name not in names:
      raise ValueError(f'--method_overrides={item}: expected METHOD:field=value with METHOD one '
                       f'of --methods ({", ".join(names)}).')
    try:
      value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
      value = text
    result.setdefault(name, {})[dotted] = value
  return result


def seeds_per_method(names: list[str], default: int, exceptions: list[str]) -> dict[str, int]:
  """{method: number of seeds}: `default`, except 'method=n' items of `exceptions`."""
  seeds = dict.fromkeys(names, default)
  for item in exceptions:
    name, _, count = item.partition('=')
    if name not in seeds or not count.isdigit() or int(count) < 1:
      raise ValueError(f'--method_seeds={item}: expected METHOD=N with N >= 1 and METHOD one of '
                       f'--methods ({", ".join(names)}).')
    seeds[name] = int(count)
  return seeds
