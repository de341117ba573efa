"""Shared pieces of the dataset configs: argument parsing, defaults, validation.

A config file is `configs/<dataset>.py` with `get_config(arg)`; the colon argument
(`configs/cifar10.py:method=daps_na,quickstart`) is parsed by `parse_arg`.
"""

import difflib
import math
import sys

from absl import flags
import ml_collections

from daps_jax import data
from daps_jax import errors
from daps_jax import methods


def parse_arg(arg: str | None, **defaults) -> ml_collections.ConfigDict:
  """'a=1,b=x,flag' -> ConfigDict(a=1, b='x', flag=True), typed like `defaults`.

  Unknown keys are an error naming the valid ones.
  """
  result = ml_collections.ConfigDict(defaults)
  for item in filter(None, (arg or '').split(',')):
    key, sep, value = item.partition('=')
    if key not in defaults:
      raise errors.ConfigError(f'Unknown config argument {key!r}; valid: {sorted(defaults)}.')
    default = defaults[key]
    if not sep:
      value = True
    elif isinstance(default, bool):
      value = value.lower() in ('1', 'true', 'yes')
    elif default is not None:
      value = type(default)(value)
    result[key] = value
  return result


def base_config() -> ml_collections.ConfigDict:
  """Trainer, optimiser and dual defaults shared by every dataset (spec section 4)."""
  c = ml_collections.ConfigDict()
  c.seed = 0  # One seed: parameters, data order and latent sampling derive from it.
  c.total_steps = 250_000  # Training steps (updates).
  c.batch_size = 256  # Global batch over all devices and processes.
  c.eval_batch_size = 256  # Global eval batch; the last batch is padded and masked.
  c.eval_every_steps = 5_000  # Full validation pass every N steps (and at the end).
  c.checkpoint_every_steps = 5_000  # Save every N steps (and at the end).
  c.keep_checkpoints = 3  # Checkpoints kept on disk (the newest N).
  c.log_every_steps = 100  # Training metrics to metrics.jsonl / TensorBoard every N steps.
  c.num_grid_images = 16  # Originals/reconstructions shown in the eval PNG grid.
  # Train steps per device call, one lax.scan (small models whose step is dispatch-bound on an
  # accelerator); logging, eval and checkpoint intervals must be multiples of it.
  c.steps_per_dispatch = 1

  c.fid = ml_collections.ConfigDict()
  c.fid.every_steps = 0  # FID in training evals every N steps (0: final eval only; -1: never).
  c.fid.protocol = 'rfid'  # 'rfid': vs the same validation originals; 'authors': vs fid.reference.
  c.fid.reference = ml_collections.config_dict.placeholder(str)  # authors: .npz of mu, sigma.
  c.fid.weights = ml_collections.config_dict.placeholder(str)  # Inception .npz (None: default).
  c.fid.stats_dir = ml_collections.config_dict.placeholder(str)  # Originals' stats (None: default).
  c.fid.resolution = 299  # Inception input size; 299 is the standard (others: not comparable).
  c.fid.chunk_size = 64  # Images per Inception call on a device (bounds activation memory).

  c.data = ml_collections.ConfigDict()
  c.data.name = ''  # A dataset of daps_jax.data.NAMES.
  c.data.dir = ml_collections.config_dict.placeholder(str)  # tfds data_dir or IDX folder.
  c.data.worker_count = 0  # grain worker processes for the train stream (0: in-process).

  c.optim = ml_collections.ConfigDict()
  c.optim.learning_rate = 3e-4  # Encoder and decoder AdamW learning rate (initial).
  c.optim.schedule = 'constant'  # 'constant' or 'cosine' (to final_learning_rate at total_steps).
  c.optim.final_learning_rate = 0.0  # End of the cosine schedule.
  c.optim.weight_decay = 1e-4  # AdamW decoupled weight decay.
  c.optim.b1 = 0.9  # Adam beta1.
  c.optim.b2 = 0.999  # Adam beta2.
  c.optim.eps = 1e-8  # Adam epsilon.
  c.optim.clip = 1.0  # Adaptive (unit-wise) gradient clipping ratio before Adam.
  c.optim.max_consecutive_skips = 100  # Non-finite updates skipped in a row before giving up.

  c.debug = ml_collections.ConfigDict()
  c.debug.nan_steps = ()  # Fault injection (tests): steps whose training inputs are all NaN.
  return c


def bits_per_input(config: ml_collections.ConfigDict) -> float:
  """Bits of the latent code: L * log2(number of codes)."""
  return config.model.num_tokens * math.log2(num_codes(config))


def num_codes(config: ml_collections.ConfigDict) -> int:
  """Codes per token: V, or the method's own count (FSQ: prod(levels))."""
  return methods.module(config.method.name).latent(config).num_codes or config.model.vocab_size


def get(config: ml_collections.ConfigDict, dotted: str):
  """The field `dotted` ('method.num_samples'); None where a level is missing. A
  ConfigDict comes back as a plain dict."""
  for key in dotted.split('.'):
    config = config.get(key) if isinstance(config, ml_collections.ConfigDict) else None
  return config.to_dict() if isinstance(config, ml_collections.ConfigDict) else config


def set_field(config: ml_collections.ConfigDict, dotted: str, value) -> None:
  """Sets an existing field `dotted`; ConfigError naming it when it does not exist."""
  *parents, leaf = dotted.split('.')
  node = config
  for key in parents:
    node = node.get(key) if isinstance(node, ml_collections.ConfigDict) else None
  if not isinstance(node, ml_collections.ConfigDict) or leaf not in node:
    raise errors.ConfigError(
        f'config.{dotted}: method {config.method.name!r} has no field {dotted!r}; drop the '
        'override, check its spelling, or use a method that has it.')
  node[leaf] = value




def _unset_fields(config: ml_collections.ConfigDict, prefix: str = '') -> list[str]:
  """Fields set to None that are not optional (optional ones are typed placeholders)."""
  unset = []
  for key in config.keys():
    value = config[key]
    if isinstance(value, ml_collections.ConfigDict):
      unset += _unset_fields(value, f'{prefix}{key}.')
    elif value is None and config.get_type(key) is type(None):
      unset.append(f'{prefix}{key}')
  return unset


def validate(config: ml_collections.ConfigDict, num_devices: int = 1) -> None:
  """Raises ConfigError naming the field and the fix for bad values or combinations."""
  unset = _unset_fields(config)
  errors.check(not unset, unset[0] if unset else '',
               'needs a value, got None (only optional fields, such as data.dir, may be None).')
  for field in ('total_steps', 'batch_size', 'eval_batch_size', 'eval_every_steps',
                'checkpoint_every_steps', 'keep_checkpoints', 'log_every_steps'):
    errors.check(config[field] > 0, field, f'must be positive, got {config[field]}.')
  errors.check(config.num_grid_images >= 0, 'num_grid_images', 'must be >= 0.')
  n = config.steps_per_dispatch
  errors.check(n >= 1, 'steps_per_dispatch', f'must be >= 1, got {n}.')
  for field in ('log_every_steps', 'eval_every_steps', 'checkpoint_every_steps'):
    errors.check(config[field] % n == 0, field,
                 f'{config[field]} is not a multiple of steps_per_dispatch = {n}; use one.')
  errors.check(all(isinstance(s, int) and s > 0 for s in config.debug.nan_steps),
               'debug.nan_steps', f'must be positive steps, got {config.debug.nan_steps}.')
  _validate_fid(config.fid)
  for field in ('batch_size', 'eval_batch_size'):
    errors.check(config[field] % num_devices == 0, field,
                 f'{config[field]} does not divide by the {num_devices} devices; '
                 f'use a multiple of {num_devices}.')
  errors.check(config.data.name in data.NAMES, 'data.name',
               f'{config.data.name!r} is not one of {", ".join(data.NAMES)}.')
  m = config.model
  errors.check(m.vocab_size >= 2, 'model.vocab_size', 'needs at least 2 codes.')
  errors.check(m.attention_chunk >= 0 and (not m.attention_chunk
                                           or m.num_tokens % m.attention_chunk == 0),
               'model.attention_chunk', f'{m.attention_chunk} must divide num_tokens = '
               f'{m.num_tokens} (0: off).')
  errors.check(m.num_tokens >= 1, 'model.num_tokens', 'must be positive.')
  errors.check(m.dtype in DTYPES, 'model.dtype', f'{m.dtype!r}: use one of {", ".join(DTYPES)}.')
  errors.check(m.width % (2 * m.num_heads) == 0, 'model.width',
               f'{m.width} must be divisible by 2 * num_heads = {2 * m.num_heads}.')
  errors.check(m.decoder.kind in DECODERS, 'model.decoder.kind',
               f'{m.decoder.kind!r}: use one of {", ".join(DECODERS)}.')
  expected = data.likelihood(config.data.name)
  errors.check(m.likelihood.kind == expected, 'model.likelihood.kind',
               f'{m.likelihood.kind!r} does not fit dataset {config.data.name!r}; '
               f'use {expected!r}.')
  if m.likelihood.kind == 'gaussian':
    lo, hi = m.likelihood.variance_min, m.likelihood.variance_max
    errors.check(m.likelihood.variance is None or m.likelihood.variance > 0,
                 'model.likelihood.variance', 'must be positive or None (learned).')
    errors.check(m.likelihood.variance is None or m.decoder.kind == 'motion',
                 'model.likelihood.variance', f'a fixed variance needs a decoder that outputs '
                 f'the mean only (motion), not {m.decoder.kind!r}.')
    errors.check(lo is None or lo > 0, 'model.likelihood.variance_min', 'must be positive or None.')
    errors.check(lo is None or hi is None or lo < hi, 'model.likelihood.variance_max',
                 'must exceed variance_min.')
  errors.check(config.optim.learning_rate > 0, 'optim.learning_rate', 'must be positive.')
  errors.check(config.optim.schedule in ('constant', 'cosine'), 'optim.schedule',
               f"{config.optim.schedule!r}: use 'constant' or 'cosine'.")
  methods.validate(config)


DECODERS = ('mlp', 'resnet', 'motion')
DTYPES = ('float32', 'bfloat16')
FID_PROTOCOLS = ('rfid', 'authors')


def _validate_fid(fid: ml_collections.ConfigDict) -> None:
  errors.check(fid.every_steps >= -1, 'fid.every_steps',
               'must be >= -1 (N: every N steps, 0: only the final eval, -1: never in training).')
  errors.check(fid.resolution >= 75, 'fid.resolution',
               f'{fid.resolution} is below 75, the smallest input InceptionV3 accepts '
               '(299: standard).')
  errors.check(fid.protocol in FID_PROTOCOLS, 'fid.protocol',
               f"{fid.protocol!r}: use 'rfid' (reconstructions vs the same validation "
               "originals) or 'authors' (vs the statistics in fid.reference).")
  errors.check(fid.protocol != 'authors' or bool(fid.reference), 'fid.reference',
               "the 'authors' protocol needs a .npz with mu [2048] and sigma [2048, 2048]; "
               'set --config.fid.reference=PATH.')
  errors.check(fid.chunk_size >= 1, 'fid.chunk_size', 'must be >= 1.')


def model(*, num_tokens: int, vocab_size: int, width: int, encoder_layers: int,
          decoder_layers: int, na_layers: int, na_mlp_ratio: int,
          decoder: ml_collections.ConfigDict,
          likelihood: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Model block (spec section 2); bits per input = L * log2(V)."""
  m = ml_collections.ConfigDict()
  m.num_tokens = num_tokens  # L latent tokens (images: one per patch).
  m.vocab_size = vocab_size  # V codes per token.
  m.width = width  # D transformer width.
  m.num_heads = 4  # Attention heads.
  m.mlp_ratio = 4  # MLP hidden = mlp_ratio * D in the AR encoder.
  m.encoder_layers = encoder_layers  # AR encoder: bidirectional layers over patches.
  m.decoder_layers = decoder_layers  # AR encoder: causal layers over tokens.
  m.na_layers = na_layers  # NA encoder: bidirectional layers.
  m.na_mlp_ratio = na_mlp_ratio  # NA encoder: MLP hidden = na_mlp_ratio * D.
  m.update(optional_model_fields())
  m.decoder = decoder
  m.likelihood = likelihood
  return m


def optional_model_fields() -> ml_collections.ConfigDict:
  """Model fields with a default for every dataset (a run saved before they existed
  reads them with these values)."""
  m = ml_collections.ConfigDict()
  m.remat = False  # Encoders: recompute each transformer block in the backward pass (memory).
  m.attention_chunk = 0  # Encoders: attention over this many queries at a time (0: all).
  # Encoders' matmuls, LayerNorms and KV cache: 'float32' or 'bfloat16' (parameters, softmax,
  # log q and the losses stay float32).
  m.dtype = 'float32'
  return m


def mlp_decoder(*, embed_dim: int, hidden_dims: tuple[int, ...]) -> ml_collections.ConfigDict:
  d = ml_collections.ConfigDict()
  d.kind = 'mlp'  # Embed -> flatten -> MLP (MNIST-size).
  d.embed_dim = embed_dim  # Token embedding size.
  d.hidden_dims = hidden_dims  # Hidden layer sizes (ReLU).
  return d


def motion_decoder(*, embed_dim: int, num_layers: int = 2) -> ml_collections.ConfigDict:
  d = ml_collections.ConfigDict()
  d.kind = 'motion'  # Embed -> bidirectional transformer -> Conv1D k4 s2 -> Dense(C).
  d.embed_dim = embed_dim  # Token embedding size (= transformer width).
  d.num_layers = num_layers  # Bidirectional transformer layers over the tokens.
  return d


def resnet_decoder(*, embed_dim: int, channels: int = 64,
                   num_res_blocks: int = 2) -> ml_collections.ConfigDict:
  d = ml_collections.ConfigDict()
  d.kind = 'resnet'  # Token grid -> conv -> residual blocks -> transposed convs.
  d.embed_dim = embed_dim  # Token embedding size (channels of the token grid).
  d.channels = channels  # Channels of the conv trunk; halved at each upsampling.
  d.num_res_blocks = num_res_blocks  # Residual blocks before upsampling.
  return d


def bernoulli() -> ml_collections.ConfigDict:
  lik = ml_collections.ConfigDict()
  lik.kind = 'bernoulli'  # Binarised pixels; logits clipped to +-15.9.
  return lik


def gaussian(variance_range: tuple[float, float] | None = None,
             variance: float | None = None) -> ml_collections.ConfigDict:
  lik = ml_collections.ConfigDict()
  lik.kind = 'gaussian'  # Diagonal Gaussian over standardised inputs.
  lo, hi = variance_range or (None, None)
  unset = lambda v: ml_collections.config_dict.placeholder(float) if v is None else v
  lik.variance = unset(variance)  # A fixed variance (the decoder outputs the mean only), or
  lik.variance_min = unset(lo)  # None: decoded log-variance, floored here (None: unbounded)
  lik.variance_max = unset(hi)  # and capped here (None: unbounded).
  return lik


def load(path, arg: str | None = None) -> ml_collections.ConfigDict:
  """get_config(arg) of another config file, e.g. a dataset that extends MNIST's."""
  import importlib.util  # pylint: disable=g-import-not-at-top
  spec = importlib.util.spec_from_file_location(f'daps_config_{abs(hash(str(path)))}', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


def parse_flags(argv: list[str]) -> list[str]:
  """absl flags parser of the entry points (`app.run(main, flags_parser=parse_flags)`).

  A bad flag, an unknown `--config.` field or a value of the wrong type ends the
  program with one line naming it (and, for a misspelt field, the nearest valid
  name) and exit status 2, before anything runs or is written.
  """
  try:
    return flags.FLAGS(argv)
  except Exception as e:  # pylint: disable=broad-except  # absl and ml_collections raise many.
    print(f'error: {_explain_flags_error(argv, e)}', file=sys.stderr)
    sys.exit(2)


def _explain_flags_error(argv: list[str], error: Exception) -> str:
  """The first `--config.` override of `argv` that names no field, else `error`'s text."""
  path = next((a.split('=', 1)[1] for a in argv if a.startswith('--config=')), None)
  overrides = [a[len('--config.'):].split('=', 1)[0] for a in argv if a.startswith('--config.')]
  if path and overrides:
    try:
      config = load(path.partition(':')[0], path.partition(':')[2] or None)
    except Exception:  # pylint: disable=broad-except  # The file itself is the problem.
      return f'--config={path}: {error}'
    for dotted in overrides:
      node = config
      for depth, key in enumerate(dotted.split('.')):
        if not isinstance(node, ml_collections.ConfigDict) or key not in node:
          siblings = list(node.keys()) if isinstance(node, ml_collections.ConfigDict) else []
          near = difflib.get_close_matches(key, siblings, n=1)
          parent = '.'.join(['config', *dotted.split('.')[:depth]])
          hint = f'; did you mean --{parent}.{near[0]}?' if near else (
              f'; {parent} has {", ".join(sorted(siblings))}.' if siblings else '.')
          return f'--config.{dotted}: {parent} has no field {key!r}{hint}'
        node = node[key]
  message = str(error).strip().splitlines()
  return message[-1] if message else type(error).__name__
