"""Training an autoregressive prior on a trained run's codes: `train_prior(workdir, config)`.

The run in `workdir` (any method and dataset `python -m daps_jax.main` trains)
is restored from its newest checkpoint; its step is recorded and a resumed
prior keeps using it. Its training split is encoded once per epoch (stochastic
encoders with `codes='sample'`: a fresh draw per input each epoch, from the
run's keys) or once (`'argmax'`, VQ-VAE, FSQ); the validation split once, with
the run's eval key. Everything goes to `workdir/prior/`: config.json,
metrics.jsonl, TensorBoard (`tb/`), checkpoints, and per evaluation
`eval_<step>.json` with

  prior/bits_per_token              held-out -log2 p(z) / L of the unconditional prior
  prior/conditional_bits_per_token  the same of p(z | class) (labelled datasets)
  prior/independent_bits_per_token  the per-position code histograms of the training
                                    codes (Krichevsky-Trofimov smoothed) on the held-out
                                    codes: the best prior that ignores dependencies
  prior/uniform_bits_per_token      log2 of the codes per token
  prior/nll, prior/bits_per_input   held-out -log p(z), in nats and in bits per input
  prior/elbo, prior/elbo_uniform    (stochastic encoders, sampled codes) one-sample ELBO
                                    with the learned prior and with the uniform one
  prior/gfid                        (images, final eval) FID of decoded prior samples
                                    against the validation originals (rfid protocol)
  prior/gfid_samples                how many samples it scored (sample.num_fid_samples)

and `samples_<step>.png` (class-conditional: one row per class).
"""

from collections.abc import Callable
import dataclasses
import functools
import itertools
import json
import math
import os

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from daps_jax import build
from daps_jax import checkpoint
from daps_jax import config_lib
from daps_jax import data
from daps_jax import errors
from daps_jax import figures
from daps_jax import files
from daps_jax import images
from daps_jax import methods
from daps_jax import optim
from daps_jax import parallel
from daps_jax import preemption
from daps_jax import state as state_lib
from daps_jax import writers
from daps_jax.evaluation import run as evaluation_run
from daps_jax.fid import scorer
from daps_jax.fid import weights
from daps_jax.models import prior as prior_model
from daps_jax.prior import config as prior_config
from daps_jax.prior import steps

PRIOR_DIR = 'prior'
_CODE_TAG = 0x9A1  # Folded into the run's keys for the codes the prior trains on.
# Fields a resumed prior must share with the one it resumes (they change what is trained).
_FROZEN = ('seed', 'codes', 'class_conditional', 'label_dropout', 'width', 'num_layers',
           'num_heads', 'mlp_ratio', 'batch_size')
KT_ALPHA = 0.5  # Krichevsky-Trofimov add-1/2 smoothing of the independent baseline.


class PriorError(errors.UserError):
  """A run that has no codes to model, or a prior that cannot resume; says why."""


@dataclasses.dataclass(frozen=True)
class Source:
  """A trained run restored at one checkpoint."""
  workdir: str
  run: build.Assembly
  state: state_lib.State  # host copy
  step: int

  @property
  def categorical(self) -> bool:
    """Whether q(z|x) is a categorical policy (else VQ-VAE / FSQ indices)."""
    return methods.module(self.run.config.method.name).latent(
        self.run.config).encoder_head is None

  @property
  def num_codes(self) -> int:
    return self.run.networks.num_codes

  @functools.cached_property
  def device_state(self) -> state_lib.State:
    """The state replicated onto the local devices, once for the encoder and the sampler."""
    return parallel.replicate(self.state)


def load_source(workdir: str, step: int | None = None) -> Source:
  """The run in `workdir` at checkpoint `step` (None: its newest)."""
  config = evaluation_run.load_config(workdir)
  config_lib.validate(config, num_devices=parallel.device_count())
  run = build.assemble(config, bn_axis_name=parallel.AXIS)
  ckpt = checkpoint.Checkpointer(workdir, config.keep_checkpoints)
  try:
    available = ckpt.all_steps()
    if not available:
      raise PriorError(f'{ckpt.directory} holds no checkpoint: train the run first '
                       f'(python -m daps_jax.main --workdir={workdir} ...).')
    step = available[-1] if step is None else step
    if step not in available:
      raise PriorError(f'The prior in {os.path.join(workdir, PRIOR_DIR)} was trained on '
                       f'checkpoint {step} of the run, which is gone (available: {available}); '
                       f'use a fresh prior directory (move {PRIOR_DIR}/ away).')
    state, _ = ckpt.restore(step, run.initial_state())
  finally:
    ckpt.close()
  return Source(workdir, run, state, step)


class CodeEncoder:
  """The run's compiled encoding pass over a split, in order."""

  def __init__(self, source: Source, greedy: bool):
    self._source = source
    self._state = source.device_state
    method = source.run.method
    self._p_encode = parallel.pmap_step(
        steps.encode_step, networks=source.run.networks, encode=method.encode,
        decode=method.decode, categorical=source.categorical, greedy=greedy)

  def __call__(self, split: str, rng: jax.Array) -> dict[str, np.ndarray]:
    """{'tokens' [N, L] int32, 'labels' [N] int32, 'log_q' [N], 'log_px' [N]} of the split."""
    config = self._source.run.config
    parts = []
    for i, batch in enumerate(data.eval_batches(
        config.data.name, data_dir=config.data.dir, split=split,
        batch_size=parallel.process_batch_size(config.eval_batch_size))):
      out = self._p_encode(self._state, parallel.shard({'inputs': batch['inputs']}),
                           jax.random.fold_in(rng, i))
      out = {k: parallel.unshard(v) for k, v in out.items()}
      out['labels'] = batch['label'].astype(np.int32)
      parts.append({k: v[batch['mask']] for k, v in out.items()})
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def independent_nll(train_tokens: np.ndarray, eval_tokens: np.ndarray, num_codes: int,
                    alpha: float = KT_ALPHA) -> float:
  """Held-out -log p(z) in nats per input under the product of per-position code
  histograms of `train_tokens` [N, L] (add-`alpha` smoothing), for `eval_tokens` [M, L]."""
  length = train_tokens.shape[1]
  counts = np.zeros((length, num_codes))
  np.add.at(counts, (np.broadcast_to(np.arange(length), train_tokens.shape), train_tokens), 1.0)
  log_probs = np.log(counts + alpha) - np.log(counts.sum(1, keepdims=True) + alpha * num_codes)
  return float(-log_probs[np.arange(length), eval_tokens].sum(1).mean())


def learning_rate(o: ml_collections.ConfigDict, total_steps: int) -> optax.Schedule:
  return optax.warmup_cosine_decay_schedule(0.0, o.learning_rate, o.warmup_steps, total_steps,
                                            end_value=o.final_learning_rate)


def _padded_batches(codes: dict[str, np.ndarray], batch_size: int):
  """Consecutive batches of `codes` with a mask; the last padded (label -1, code 0)."""
  n = len(codes['tokens'])
  for start in range(0, n, batch_size):
    rows = slice(start, min(start + batch_size, n))
    pad = batch_size - (rows.stop - rows.start)
    batch = {k: np.concatenate([v[rows], np.zeros((pad, *v.shape[1:]), v.dtype)])
             for k, v in codes.items()}
    batch['labels'][batch_size - pad:] = -1
    batch['mask'] = np.arange(batch_size) < batch_size - pad
    yield batch


def _write_config(config: ml_collections.ConfigDict, source: Source, directory: str) -> None:
  path = os.path.join(directory, 'config.json')
  record = {'config': config.to_dict(),
            'source': {'workdir': os.path.abspath(source.workdir), 'step': source.step,
                       'method': source.run.config.method.name,
                       'dataset': source.run.config.data.name}}
  with files.atomic_open(path) as f:
    json.dump(record, f, indent=2, sort_keys=True)


def _saved_source_step(config: ml_collections.ConfigDict, directory: str) -> int | None:
  """The run checkpoint a previous prior in `directory` used (None: a fresh prior);
  refuses a resume whose frozen fields differ."""
  path = os.path.join(directory, 'config.json')
  if not os.path.exists(path):
    return None
  saved = files.read_json(path, PriorError, 'move that directory away for a fresh prior.')
  for field in _FROZEN:
    if saved['config'].get(field) != config[field]:
      raise PriorError(f'config.{field} differs from the prior in {directory} ({path}): '
                       f'{saved["config"].get(field)} there vs {config[field]} now. Resume '
                       'with the same settings, or move that directory away for a fresh prior.')
  return saved['source']['step']


class _Sampler:
  """Compiled prior sampling and decoding of codes into data units on [0, 1]."""

  def __init__(self, source: Source, prior: prior_model.CodePrior, sample_config):
    run = source.run
    self._state = source.device_state
    self._p_sample = parallel.pmap_step(steps.sample, prior=prior,
                                        temperature=sample_config.temperature,
                                        top_k=sample_config.top_k)

    def decode(state, tokens, axis_name=None):
      del axis_name
      out = run.method.decode(state, tokens, networks=run.networks)
      return jnp.clip(run.spec.to_unit(run.networks.likelihood.mean(out)), 0.0, 1.0)

    self._p_decode = parallel.pmap_mapped(decode)

  def __call__(self, prior_state, labels: np.ndarray, rng: jax.Array):
    """labels [B] (-1: unconditional) -> decoded samples [devices, B / devices, ...] on
    the devices."""
    tokens, _ = self._p_sample(prior_state, parallel.shard(labels.astype(np.int32)), rng)
    return self._p_decode(self._state, tokens)


def _grid_labels(num_classes: int, per_class: int) -> np.ndarray:
  """One row of `per_class` labels per class (unconditional: 8 rows of -1)."""
  return (np.repeat(np.arange(num_classes), per_class) if num_classes
          else np.full(8 * per_class, -1)).astype(np.int32)


def _pad_to(x: np.ndarray, multiple: int, value) -> np.ndarray:
  return np.concatenate([x, np.full(-len(x) % multiple, value, x.dtype)])


def _sample_figure(samples: np.ndarray, spec: data.DatasetSpec, columns: int,
                   title: str) -> np.ndarray:
  if spec.modality == 'motion':
    return figures.motion_figure(samples, None, spec.feature_names, title=title)
  return images.image_grid(samples, columns)


def train_prior(workdir: str, config: ml_collections.ConfigDict) -> dict:
  """Trains (or resumes) the prior of the run in `workdir`; returns the last eval metrics."""
  prior_config.validate(config)
  if jax.process_count() > 1:
    raise PriorError('The code prior trains in one process (its codes are held in host '
                     'memory); run it without --distributed, on one host.')
  directory = os.path.join(workdir, PRIOR_DIR)
  source_step = _saved_source_step(config, directory)
  source = load_source(workdir, source_step)
  run_config = source.run.config
  errors.check(config.batch_size % parallel.device_count() == 0, 'batch_size',
               f'{config.batch_size} does not divide by the {parallel.device_count()} devices.')
  os.makedirs(directory, exist_ok=True)
  _write_config(config, source, directory)

  greedy = config.codes == 'argmax'
  resample = source.categorical and not greedy
  encoder = CodeEncoder(source, greedy)
  _, loop_key, eval_key = state_lib.run_keys(run_config.seed)
  code_key = jax.random.fold_in(loop_key, _CODE_TAG)
  split = source.run.spec.ordered_train_split
  train_codes = {0: encoder(split, jax.random.fold_in(code_key, 0))}
  held_out = encoder(source.run.spec.eval_split, jax.random.fold_in(eval_key, _CODE_TAG))
  if not resample:  # The one-sample ELBO needs codes drawn from q(z|x).
    held_out.pop('log_q'), held_out.pop('log_px')
  if len(train_codes[0]['tokens']) < config.batch_size:
    raise PriorError(f'The training split has {len(train_codes[0]["tokens"])} inputs, fewer '
                     f'than config.batch_size = {config.batch_size}; lower it.')
  labels = train_codes[0]['labels']
  num_classes = int(labels.max()) + 1 if config.class_conditional and labels.max() >= 0 else 0
  length, num_codes = train_codes[0]['tokens'].shape[1], source.num_codes
  baseline = independent_nll(train_codes[0]['tokens'], held_out['tokens'], num_codes)
  logging.info('Prior of %s (step %d): %d training and %d held-out code sequences of %d '
               'tokens over %d codes; %s.', workdir, source.step, len(labels),
               len(held_out['tokens']), length, num_codes,
               f'{num_classes} classes' if num_classes else 'unconditional')

  prior = prior_model.CodePrior(vocab_size=num_codes, num_tokens=length, width=config.width,
                                num_layers=config.num_layers, num_heads=config.num_heads,
                                mlp_ratio=config.mlp_ratio, num_classes=num_classes)
  o = config.optim
  tx = optim.adamw(learning_rate(o, config.total_steps), weight_decay=o.weight_decay,
                   clip=o.clip)
  init_key, order_seed, sample_key = jax.random.split(jax.random.key(config.seed), 3)
  order_seed = int(jax.random.randint(order_seed, (), 0, 2**31 - 1))

  @jax.jit
  def create(rng):
    variables = prior.init(rng, np.zeros((1, length), np.int32), np.zeros((1,), np.int32))
    return state_lib.model_state(variables, tx)

  p_train = parallel.pmap_step(steps.train_step, donate_state=True, prior=prior,
                               label_dropout=config.label_dropout)
  p_eval = parallel.pmap_step(steps.eval_step, prior=prior, num_codes=num_codes)
  sampler = _Sampler(source, prior, config.sample)
  steps_per_epoch = len(labels) // config.batch_size

  @functools.lru_cache(maxsize=1)  # Drawn once per epoch, not per step.
  def epoch_order(epoch: int) -> np.ndarray:
    """The batch order of the training codes in `epoch`."""
    return np.random.default_rng([order_seed, epoch]).permutation(len(labels))

  def epoch_codes(epoch: int) -> dict[str, np.ndarray]:
    if not resample:
      return train_codes[0]
    if epoch not in train_codes:
      train_codes.clear()
      train_codes[epoch] = encoder(split, jax.random.fold_in(code_key, epoch))
    return train_codes[epoch]

  def train_batch(step: int) -> dict[str, np.ndarray]:
    epoch, index = divmod(step - 1, steps_per_epoch)
    codes = epoch_codes(epoch)
    rows = epoch_order(epoch)[index * config.batch_size:(index + 1) * config.batch_size]
    return {'tokens': codes['tokens'][rows], 'labels': codes['labels'][rows]}

  def evaluate(state, step: int, with_samples: bool) -> dict[str, float]:
    totals = None
    for batch in _padded_batches(held_out, config.batch_size):
      sums = parallel.unreplicate(p_eval(state, parallel.shard(batch), sample_key))
      sums = {k: np.float64(v) for k, v in sums.items()}
      totals = sums if totals is None else {k: totals[k] + sums[k] for k in totals}
    n = totals['count']
    to_bits = lambda nats: nats / (length * math.log(2.0))
    metrics = {'prior/nll': totals['nll'] / n,
               'prior/bits_per_input': totals['nll'] / n / math.log(2.0),
               'prior/bits_per_token': to_bits(totals['nll'] / n),
               'prior/independent_bits_per_token': to_bits(baseline),
               'prior/uniform_bits_per_token': math.log2(num_codes),
               'prior/num_held_out': n}
    if 'nll_conditional' in totals:
      metrics['prior/conditional_bits_per_token'] = to_bits(totals['nll_conditional'] / n)
    if 'elbo' in totals:
      metrics['prior/elbo'] = totals['elbo'] / n
      metrics['prior/elbo_uniform'] = totals['elbo_uniform'] / n
    if with_samples:
      key = jax.random.fold_in(sample_key, step)
      grid = _grid_labels(num_classes, config.sample.grid_per_class)
      padded = _pad_to(grid, parallel.local_device_count(), -1)
      samples = parallel.unshard(sampler(state, padded, key))[:len(grid)]
      figure = _sample_figure(samples, source.run.spec, config.sample.grid_per_class,
                              f'prior samples, step {step}')
      images.save_png(os.path.join(directory, f'samples_{step:08d}.png'), figure)
      every = config.sample.fid_every_steps
      if every == 0 and step == config.total_steps or every > 0 and step % every == 0:
        fid_key = jax.random.fold_in(key, 1)
        sample = lambda labels, i: sampler(state, labels, jax.random.fold_in(fid_key, i))
        fid = _gfid(source, sample, config.sample.num_fid_samples)
        if fid is not None:
          metrics['prior/gfid'], metrics['prior/gfid_samples'] = fid
    return metrics

  ckpt = checkpoint.Checkpointer(directory, config.keep_checkpoints)
  writer = None
  metrics = {}
  with preemption.StopRequest() as stop:
    try:
      host_state = jax.device_get(create(init_key))
      start_step, host_state, _ = ckpt.restore_latest(host_state)
      if start_step:
        logging.info('Resumed the prior from step %d in %s.', start_step, ckpt.directory)
      state = parallel.replicate(host_state)
      writer = writers.MetricWriter(directory, resume_step=start_step)
      progress = writers.ProgressLogger(config.total_steps, start_step, config.log_every_steps)
      train_metrics = None
      for step in range(start_step + 1, config.total_steps + 1):
        previous, (state, train_metrics) = train_metrics, p_train(
            state, parallel.shard(train_batch(step)), sample_key)
        jax.block_until_ready(previous)
        final = step == config.total_steps
        rate = progress(step)
        if step % config.log_every_steps == 0 or final:
          scalars = {k: float(v) for k, v in parallel.unreplicate(train_metrics).items()}
          scalars['optim/learning_rate'] = float(learning_rate(o, config.total_steps)(step - 1))
          if rate is not None:
            scalars['perf/steps_per_sec'] = rate
          writer.write_scalars(step, scalars)
        stopping = stop.requested()
        if step % config.eval_every_steps == 0 or final:
          every = config.sample.fid_every_steps
          metrics = evaluate(state, step, with_samples=final or (every > 0 and step % every == 0))
          writer.write_scalars(step, metrics)
          with files.atomic_open(os.path.join(directory, f'eval_{step:08d}.json')) as f:
            json.dump({'step': step, 'metrics': metrics,
                       'source': {'workdir': os.path.abspath(workdir), 'step': source.step}},
                      f, indent=2, sort_keys=True)
          logging.info('prior eval step %d: %s', step, summary(metrics))
        if step % config.checkpoint_every_steps == 0 or final or stopping:
          ckpt.save(step, parallel.unreplicate(state), {'step': step})
        if stopping:
          raise preemption.Preempted(stop.signum, step)
      if start_step >= config.total_steps:
        logging.info('The prior in %s is already at step %d.', directory, start_step)
        metrics = last_eval(directory)
    finally:
      try:
        ckpt.close()
      finally:
        if writer is not None:
          writer.close()
  return metrics


def _gfid(source: Source, sample: Callable[[np.ndarray, int], jax.Array],
          num_samples: int) -> tuple[float, int] | None:
  """(FID, number of samples): `num_samples` unconditional prior samples (0: one per
  validation input) against the validation originals, with the run's rfid protocol
  and cached statistics; None without weights.

  `sample(labels [b], i)` decodes the i-th batch of samples onto the devices. The
  pass runs over the split only while the originals' statistics are not cached.
  """
  run, f = source.run, source.run.config.fid
  if run.spec.modality != 'image':
    return None
  try:
    params = weights.load(f.weights)
  except weights.WeightsError as e:
    logging.warning('No gFID: %s', e)
    return None
  fid_examples = data.num_eval_examples(run.spec.name, run.config.data.dir)
  fid = scorer.FidScorer(params, spec=run.spec, num_examples=fid_examples, protocol='rfid',
                         resolution=f.resolution, chunk_size=f.chunk_size, stats_dir=f.stats_dir)
  total = num_samples or fid_examples
  batch_size = run.config.eval_batch_size  # One process: train_prior refuses more.
  originals = data.eval_batches(run.config.data.name, data_dir=run.config.data.dir,
                                batch_size=batch_size)
  fid.begin()
  for i, batch in enumerate(itertools.chain(originals, itertools.repeat(None))):
    start = i * batch_size
    if start >= total and (batch is None or not fid.needs_originals):
      break
    samples = sample(np.full(batch_size, -1, np.int32), i) if start < total else None
    fid.add(samples, batch, fake_mask=start + np.arange(batch_size) < total)
  return fid.result(), total


def finished(directory: str, total_steps: int) -> bool:
  """A prior that evaluated at `total_steps`."""
  return os.path.exists(os.path.join(directory, f'eval_{total_steps:08d}.json'))


def last_eval(directory: str) -> dict[str, float]:
  """The metrics of the newest eval_<step>.json in a prior directory ({} if none)."""
  names = sorted(n for n in os.listdir(directory) if n.startswith('eval_') and n.endswith('.json'))
  if not names:
    return {}
  with open(os.path.join(directory, names[-1])) as f:
    return json.load(f)['metrics']


def summary(metrics: dict[str, float]) -> str:
  """One line: bits per token against the baselines, and gFID if measured."""
  text = (f'{metrics["prior/bits_per_token"]:.3f} bits per token (independent '
          f'{metrics["prior/independent_bits_per_token"]:.3f}, uniform '
          f'{metrics["prior/uniform_bits_per_token"]:.3f})')
  if 'prior/conditional_bits_per_token' in metrics:
    text += f', {metrics["prior/conditional_bits_per_token"]:.3f} given the class'
  if 'prior/elbo' in metrics:
    text += (f', ELBO {metrics["prior/elbo"]:.2f} with the prior vs '
             f'{metrics["prior/elbo_uniform"]:.2f} uniform')
  if 'prior/gfid' in metrics:
    text += f', gFID {metrics["prior/gfid"]:.2f}'
  return text
