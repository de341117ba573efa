"""The code prior's config block (`configs/prior.py`) and its validation."""

import ml_collections

from daps_jax import errors

CODES = ('sample', 'argmax')


def default() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0  # Prior parameters, batch order, label dropout and sampling.
  c.codes = 'sample'  # Stochastic encoders: 'sample' (a fresh draw per input per epoch) or
  #                     'argmax' (the most likely code at each step); VQ/FSQ: their indices.
  c.class_conditional = True  # Condition on class labels where the dataset has them.
  c.label_dropout = 0.5  # Share of training inputs shown without their label (trains p(z)).
  c.width = 128  # Transformer width D.
  c.num_layers = 3  # Causal blocks.
  c.num_heads = 4
  c.mlp_ratio = 4
  c.total_steps = 2_000
  c.batch_size = 128  # Global batch of code sequences.
  c.eval_every_steps = 1_000  # Held-out NLL every N steps (and at the end).
  c.checkpoint_every_steps = 1_000
  c.keep_checkpoints = 2
  c.log_every_steps = 100
  c.optim = ml_collections.ConfigDict()
  c.optim.learning_rate = 1e-3  # Peak AdamW rate, after a linear warm-up.
  c.optim.warmup_steps = 200
  c.optim.final_learning_rate = 1e-4  # End of the cosine decay (at total_steps).
  c.optim.weight_decay = 1e-2
  c.optim.clip = 1.0  # Adaptive gradient clipping ratio.
  c.sample = ml_collections.ConfigDict()
  c.sample.temperature = 1.0  # Softmax temperature of prior samples.
  c.sample.top_k = 0  # Sample among the k most likely codes (0: all).
  c.sample.grid_per_class = 8  # Samples per class row of the grid (unconditional: 8 x 8).
  c.sample.fid_every_steps = 0  # gFID every N steps (0: the final eval only; -1: never).
  c.sample.num_fid_samples = 0  # Samples for gFID (0: as many as validation inputs).
  return c


def validate(c: ml_collections.ConfigDict) -> None:
  """Raises ConfigError naming the field."""
  for field in ('total_steps', 'batch_size', 'eval_every_steps', 'checkpoint_every_steps',
                'keep_checkpoints', 'log_every_steps', 'width', 'num_layers', 'num_heads',
                'mlp_ratio'):
    errors.check(c[field] > 0, field, f'must be positive, got {c[field]}.')
  errors.check(c.codes in CODES, 'codes', f"{c.codes!r}: use 'sample' or 'argmax'.")
  errors.check(0.0 <= c.label_dropout <= 1.0, 'label_dropout', 'must be in [0, 1].')
  errors.check(c.width % (2 * c.num_heads) == 0, 'width',
               f'{c.width} must be divisible by 2 * num_heads = {2 * c.num_heads}.')
  errors.check(c.optim.learning_rate > 0, 'optim.learning_rate', 'must be positive.')
  errors.check(0 <= c.optim.final_learning_rate <= c.optim.learning_rate,
               'optim.final_learning_rate', 'must be in [0, optim.learning_rate].')
  errors.check(0 <= c.optim.warmup_steps < c.total_steps, 'optim.warmup_steps',
               'must be in [0, total_steps).')
  errors.check(c.sample.temperature > 0, 'sample.temperature', 'must be positive.')
  errors.check(c.sample.top_k >= 0, 'sample.top_k', 'must be >= 0 (0: all codes).')
  errors.check(c.sample.grid_per_class >= 1, 'sample.grid_per_class', 'must be >= 1.')
  errors.check(c.sample.fid_every_steps >= -1, 'sample.fid_every_steps',
               'must be >= -1 (N: every N steps, 0: the final eval only, -1: never).')
  errors.check(c.sample.num_fid_samples >= 0, 'sample.num_fid_samples',
               'must be >= 0 (0: as many as validation inputs).')
