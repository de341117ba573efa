"""The training loop: `train_and_evaluate(config, workdir)`.

Resumes from the newest checkpoint in `workdir` if there is one. Writes
`config.json`, `metrics.jsonl`, TensorBoard events (`tb/`), orbax checkpoints
(`checkpoints/`) and, per evaluation, what `evaluation.outputs.write` writes
(`eval_<step>.json`, reconstruction and codebook figures, code histograms).
"""

import json
import os

from absl import logging
import jax
import ml_collections
import numpy as np

from daps_jax import build
from daps_jax import checkpoint
from daps_jax import config_lib
from daps_jax import data
from daps_jax import errors
from daps_jax import files
from daps_jax import parallel
from daps_jax import preemption
from daps_jax import state as state_lib
from daps_jax import writers
from daps_jax.evaluation import loop
from daps_jax.evaluation import outputs

# Fields that must not change when a run resumes: they change what is trained.
# A field a method does not have (e.g. K for VQ-VAE) reads as None.
_FROZEN_FIELDS = ('data.name', 'model', 'method.name', 'method.num_samples', 'seed')
# Train metrics repeated in each eval record (the state of the schedules and duals).
_EVAL_CONTEXT = ('dual/eta', 'dual/ess_fraction', 'ppo/kl_coef')


def write_config(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Writes workdir/config.json; refuses a resume with different frozen fields.

  Every process checks; process 0 writes, atomically, so that the others (and a
  resume after a kill) read the old file or the new one, never a part.
  """
  path = os.path.join(workdir, 'config.json')
  if os.path.exists(path):
    saved = ml_collections.ConfigDict(files.read_json(
        path, errors.ConfigError, 'restore it, delete it to resume with this config '
        'unchecked, or use a fresh --workdir.'))
    for field in _FROZEN_FIELDS:
      then, now = config_lib.get(saved, field), config_lib.get(config, field)
      if field == 'model':  # A run saved before an optional field existed had its default.
        then = {**config_lib.optional_model_fields().to_dict(), **then}
      if json.dumps(then, sort_keys=True) != json.dumps(now, sort_keys=True):
        raise errors.ConfigError(
            f'config.{field} differs from the run in {workdir} ({path}): '
            f'{then} there vs {now} now. '
            'Resume with the same settings or use a fresh --workdir.')
  if parallel.is_writer():
    with files.atomic_open(path) as f:
      f.write(config.to_json_best_effort(indent=2, sort_keys=True))


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *,
                       resume_fallback: bool = True) -> dict:
  """Trains to `config.total_steps`, evaluating and checkpointing on the way.

  Resumes from the newest checkpoint that restores (`resume_fallback`: a newer one
  that does not is renamed `<step>.corrupt` with a warning). On SIGTERM, SIGINT or
  SIGUSR1 it finishes the step in flight, checkpoints it, flushes the logs and
  raises `preemption.Preempted`. Returns the metrics of the last evaluation.
  """
  config_lib.validate(config, num_devices=parallel.device_count())
  os.makedirs(workdir, exist_ok=True)
  write_config(config, workdir)
  logging.info('Topology: %s.', parallel.topology(config.batch_size))

  run = build.assemble(config, bn_axis_name=parallel.AXIS)
  method = run.method
  logging.info('Method %s', build.describe(config, build.param_counts(config)))
  _, rng_loop, _ = state_lib.run_keys(config.seed)

  loader = data.train_loader(config.data.name, data_dir=config.data.dir,
                             batch_size=parallel.process_batch_size(config.batch_size),
                             seed=config.seed, worker_count=config.data.worker_count,
                             **parallel.process_rows())
  ckpt = checkpoint.Checkpointer(workdir, config.keep_checkpoints)
  writer = None
  with preemption.StopRequest() as stop:
    try:
      start_step, state, data_state = ckpt.restore_latest(run.initial_state(),
                                                          fallback=resume_fallback)
      if start_step:
        loader.set_state(data_state)
        logging.info('Resumed from step %d in %s.', start_step, ckpt.directory)
      state = parallel.replicate(state)
      p_train_step = parallel.pmap_step(method.train_step, donate_state=True)
      p_train_steps = parallel.pmap_step(scanned(method.train_step), donate_state=True)
      evaluator = loop.Evaluator(run, fid='off' if config.fid.every_steps < 0 else 'auto')
      writer = writers.MetricWriter(workdir, is_writer=parallel.is_writer(),
                                    resume_step=start_step)
      progress = writers.ProgressLogger(config.total_steps, start_step, config.log_every_steps)
      eval_metrics = {}
      nan_steps = frozenset(config.debug.nan_steps)

      def run_eval(step: int, train_metrics: dict, final: bool) -> dict:
        every = config.fid.every_steps
        with_fid = final or (every > 0 and step % every == 0)
        result = evaluator(state, step, with_fid=with_fid)
        result.metrics.update(
            {k: float(train_metrics[k]) for k in _EVAL_CONTEXT if k in train_metrics})
        result.metrics.update({k: float(schedule(step))
                               for k, schedule in method.schedules.items()})
        if parallel.is_writer():
          outputs.write(workdir, step, result, writer, config=config, spec=run.spec)
        logging.info('eval step %d: %s', step, outputs.summary(result.metrics))
        return result.metrics

      def save(step: int) -> None:
        host_state = parallel.unreplicate(state)
        check_finite(host_state, step, config.optim.max_consecutive_skips)
        ckpt.save(step, host_state, loader.get_state())

      metrics = None
      step = start_step
      while step < config.total_steps:
        n = dispatch_size(step, config.total_steps, config.steps_per_dispatch)
        batches = []
        for s in range(step + 1, step + n + 1):
          batch = next(loader)
          if s in nan_steps:  # Fault injection (config.debug.nan_steps).
            batch = {**batch, 'inputs': np.full_like(batch['inputs'], np.nan)}
          batches.append(parallel.shard(batch))
        if n == 1:
          previous, (state, metrics) = metrics, p_train_step(state, batches[0], rng_loop)
        else:  # [devices, n, B / devices, ...]; the metrics of the group's last step.
          stacked = jax.tree.map(lambda *b: np.stack(b, axis=1), *batches)
          previous, (state, metrics) = metrics, p_train_steps(state, stacked, rng_loop)
          metrics = jax.tree.map(lambda m: m[:, -1], metrics)
        step += n
        # At most two dispatches in flight: an unbounded queue of dispatched steps can starve
        # the collectives of XLA's CPU devices (a rendezvous timeout), and buys nothing.
        jax.block_until_ready(previous)
        final = step == config.total_steps
        steps_per_sec = progress(step)
        host_metrics = None
        if step % config.log_every_steps == 0 or final:
          host_metrics = parallel.unreplicate(metrics)
          scalars = {k: float(v) for k, v in host_metrics.items()}
          scalars.update({k: float(schedule(step - 1))
                          for k, schedule in method.schedules.items() if k not in scalars})
          if steps_per_sec is not None:
            scalars['perf/steps_per_sec'] = steps_per_sec
          writer.write_scalars(step, scalars)
        stopping = stop.requested()
        if step % config.eval_every_steps == 0 or final:
          eval_metrics = run_eval(step, host_metrics or parallel.unreplicate(metrics), final)
        if step % config.checkpoint_every_steps == 0 or final or stopping:
          save(step)
        if stopping:
          raise preemption.Preempted(stop.signum, step)
      if start_step >= config.total_steps:
        logging.info('Run in %s is already at step %d >= total_steps.', workdir, start_step)
    finally:
      # Also on errors and signals: finish the checkpoint being written and flush the logs.
      try:
        ckpt.close()
      finally:
        try:
          if writer is not None:
            writer.close()
        except OSError as e:  # E.g. the disk that stopped the checkpoint is full.
          logging.error('Could not flush the logs in %s: %s', workdir, e)
        loader.close()
  parallel.barrier('train_and_evaluate')  # No process exits while others still save.
  return eval_metrics


def scanned(train_step):
  """`train_step` over n batches in one `lax.scan`: (state, batches [n, B, ...], rng) ->
  (the state after n steps, metrics [n]); the same steps as n calls (the step folds
  state.step into rng)."""
  def steps(state, batches, rng, axis_name=None):
    return jax.lax.scan(lambda s, batch: train_step(s, batch, rng, axis_name=axis_name),
                        state, batches)
  return steps


def dispatch_size(step: int, total_steps: int, steps_per_dispatch: int) -> int:
  """Steps of the next device call after `step`: `steps_per_dispatch` from a multiple of
  it while they fit before `total_steps`, else 1 (a resume off the grid, the tail)."""
  n = steps_per_dispatch
  return n if step % n == 0 and step + n <= total_steps else 1


def check_finite(state: state_lib.State, step: int, max_skips: int) -> None:
  """Raises errors.DivergedError when a host `state` is not fit to checkpoint: a
  non-finite parameter, or an optimiser that skipped `max_skips` non-finite updates
  in a row (after which optax applies them anyway)."""
  for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]:
    name = jax.tree_util.keystr(path)
    if name.endswith('.notfinite_count') and int(leaf) >= max_skips:
      raise errors.DivergedError(
          f'Training diverged by step {step}: {int(leaf)} non-finite updates in a row at '
          f'{name} (config.optim.max_consecutive_skips = {max_skips}). The last good '
          'checkpoint is kept; resume from it with a lower learning rate, or look for the '
          'first non-finite metric in metrics.jsonl.')
    if np.issubdtype(np.asarray(leaf).dtype, np.floating) and not np.all(np.isfinite(leaf)):
      raise errors.DivergedError(
          f'Training diverged by step {step}: {name} is not finite. The last good '
          'checkpoint is kept; resume from it with a lower learning rate.')
