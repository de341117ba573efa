"""Times the authors' whole VAE trainer (mdrolet01/jadex, daps-iclr2026) on real data.

  JADEX_DIR=path/to/jadex python -m bench.jadex_trainer --model=daps --batch=256 --steps=300 \
      --output=FILE.jsonl

What runs: their entry point, unchanged. The config is composed with Hydra as train_vae.py
composes it (vae_config.yaml with model=<model> dataset=mnist), then handed to
`VaeVisionTrainer.submit`, the trainer train_vae.main picks for an in-memory dataset (MNIST
is `in_memory: true`; the python-loop `VaePmapTrainer` is only for in_memory=false). submit
-> _run_training builds the dataset, the model, the state and wandb, and `BaseTrainer.train`
runs all the steps in one `jax.lax.scan` (each step: draw a batch from the in-memory train set,
binarise it, K AR samples, the gradient update), with a `jax.debug.callback` every
`job.print_frequency_nsteps` steps.

Data: Fashion-MNIST IDX files (28x28, the same shape as MNIST, so their MNIST network is what
runs), decompressed into a temporary HOME where their MNIST loader looks
($HOME/.cache/jadex/mnist/MNISTDataset/raw: CACHE_DIR/mnist, then torchvision's
<class name>/raw), so it finds them and downloads nothing.

Config overrides, besides model, batch and steps: wandb.mode=disabled; the wandb, validation
and checkpoint frequencies 0 (off: no metrics, plots, test set or files; a user's defaults do
these every 5000 / 50000 steps, a negligible share of a long run); print_frequency_nsteps =
--print_every, which sets how often the callback fires. Their checkpoint directory is pointed
into the temporary directory too (nothing is written there with checkpoints off). On CPU their
`BaseState.print_opt_params` (a setup-time print of the parameter trees and of the device's
memory_stats()['bytes_limit']) fails, as a CPU device has no memory stats, so it is skipped there.

How it is timed: the scan is one device call, so compile and run cannot be split by timing
calls. Instead the trainer is subclassed only to record `time.perf_counter()` at each of its
own step callbacks (before their printing), and after `train` returns `jax.effects_barrier()`
waits for the scan to finish (the computation has host callbacks, so its runtime token is
tracked). With P = --print_every and N = --steps, callbacks fire at steps P, 2P, ..., N:
  steps_per_s    = (N - P) / (t_N - t_P), the steady state (the first window holds the compile);
  window rates   = P / (t_kP - t_(k-1)P) for each later window (their median is also recorded);
  first_window_s = t_P - t_train, from the call of `train` (tracing, XLA compile, P steps);
  compile_s      = first_window_s - P / steps_per_s, the compile estimated by taking out the
                   first window's steps at the steady rate;
  setup_s        = from `submit` to `train` (datasets, model init, wandb, their config print).
The steady windows hold everything their loop does, their callbacks' host work included (the
loss mean and print; the first callback's jnp.mean compiles, a fraction of a second). The default
--print_every=50 matches the log_every_steps=50 of our trainer in bench/side_by_side.sh, whose
steps/s is likewise read past its first window. Timing two runs of N1 < N2 steps and taking
(N2 - N1) / (t2 - t1) would do too, but each run's compile (tens of seconds, noisy on a loaded
CPU) enters that difference; these marks keep it out. The persistent compilation cache is off,
so the compile is real. Their beta schedule spans job.total_nsteps, so losses depend on --steps;
the cost of a step does not.
"""

import argparse
import gzip
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import jax
import numpy as np
from omegaconf import DictConfig

IDX_FILES = ('train-images-idx3-ubyte', 'train-labels-idx1-ubyte',
             't10k-images-idx3-ubyte', 't10k-labels-idx1-ubyte')


def place_data(fashion_dir: Path, home: Path) -> None:
  """Decompresses the IDX files to where jadex's MNIST loader checks ($HOME/.cache/jadex)."""
  raw = home / '.cache' / 'jadex' / 'mnist' / 'MNISTDataset' / 'raw'
  raw.mkdir(parents=True)
  for name in IDX_FILES:
    with gzip.open(fashion_dir / f'{name}.gz', 'rb') as src, open(raw / name, 'wb') as dst:
      shutil.copyfileobj(src, dst)


def compose_cfg(jadex_dir: str, model: str, batch: int, steps: int,
                print_every: int) -> DictConfig:
  from hydra import compose, initialize_config_dir
  config_dir = os.path.join(jadex_dir, 'jadex', 'algorithms', 'vae', 'configs')
  overrides = [f'model={model}', 'dataset=mnist', f'train.batch_size={batch}',
               f'job.total_nsteps={steps}', f'job.print_frequency_nsteps={print_every}',
               'job.wandb_inexpensive_frequency_nsteps=0', 'job.wandb_expensive_frequency_nsteps=0',
               'job.validation_frequency_nsteps=0', 'job.checkpoint_frequency_nsteps=0',
               'wandb.mode=disabled']
  with initialize_config_dir(config_dir=config_dir, version_base=None):
    return compose('vae_config', overrides=overrides)


def run_trainer(cfg: DictConfig) -> dict:
  """Runs their trainer on `cfg`; returns the wall-clock marks and the last loss."""
  from jadex.algorithms.vae.train_vae import VaeVisionTrainer
  marks = {'callbacks': [], 'loss': None}

  class TimedTrainer(VaeVisionTrainer):

    def train(self, state):
      marks['train'] = time.perf_counter()
      super().train(state)
      jax.effects_barrier()
      marks['end'] = time.perf_counter()

    def step_callback(self, state, train_metrics, **kwargs):
      marks['callbacks'].append((int(self.get_step(state)), time.perf_counter()))
      marks['loss'] = float(np.mean(train_metrics['loss']))
      super().step_callback(state=state, train_metrics=train_metrics, **kwargs)

  assert cfg.dataset.in_memory  # So train_vae.main would run VaeVisionTrainer too.
  marks['submit'] = time.perf_counter()
  TimedTrainer.submit(cfg)
  return marks


def main() -> None:
  p = argparse.ArgumentParser()
  p.add_argument('--model', default='daps', choices=['daps', 'dapsna'])
  p.add_argument('--batch', type=int, default=256)
  p.add_argument('--steps', type=int, default=300)
  p.add_argument('--print_every', type=int, default=50,
                 help='job.print_frequency_nsteps: the timing windows; must divide --steps.')
  p.add_argument('--fashion_dir', type=Path, default=Path('/usr/share/datasets/fashion-mnist'))
  p.add_argument('--output', default=None, help='Append a JSON record to this file.')
  args = p.parse_args()
  if args.steps % args.print_every or args.steps < 2 * args.print_every:
    p.error('--steps must be a multiple of --print_every, at least twice it.')
  jadex_dir = os.environ.get('JADEX_DIR')
  if not jadex_dir:
    p.error('set JADEX_DIR to a checkout of the authors\' repository (daps-iclr2026).')

  jax.config.update('jax_enable_compilation_cache', False)
  load_before = os.getloadavg()
  with tempfile.TemporaryDirectory(prefix='jadex_trainer_') as tmp:
    home = Path(tmp)
    place_data(args.fashion_dir, home)
    os.environ['HOME'] = tmp  # Before jadex is imported: constants.CACHE_DIR reads it.
    os.environ['WANDB_DIR'] = tmp
    from jadex.base import base_state, base_trainer
    base_trainer.JADEX_CHECKPOINT_DIR = home / 'checkpoints'
    if jax.local_devices()[0].memory_stats() is None:  # CPU: see the docstring.
      base_state.BaseState.print_opt_params = lambda self: None
    cfg = compose_cfg(jadex_dir, args.model, args.batch, args.steps, args.print_every)
    marks = run_trainer(cfg)
  load_after = os.getloadavg()

  steps, times = zip(*marks['callbacks'])
  assert steps == tuple(range(args.print_every, args.steps + 1, args.print_every)), steps
  steps_per_s = (steps[-1] - steps[0]) / (times[-1] - times[0])
  windows = [args.print_every / (b - a) for a, b in zip(times, times[1:])]
  first_window_s = times[0] - marks['train']
  rec = {
      'impl': 'jadex', 'trainer': 'VaeVisionTrainer (BaseTrainer.train, one lax.scan)',
      'model': args.model, 'dataset': 'mnist', 'data': f'fashion-mnist IDX ({args.fashion_dir})',
      'batch': args.batch, 'steps': args.steps, 'print_every': args.print_every,
      'K': int(cfg.model.num_value_samples), 'L': int(cfg.model.block_size),
      'V': int(cfg.model.vocab_size), 'D': int(cfg.model.embed_dim),
      'steps_per_s': steps_per_s, 'window_steps_per_s': windows,
      'window_median_steps_per_s': float(np.median(windows)),
      'setup_s': marks['train'] - marks['submit'], 'first_window_s': first_window_s,
      'compile_s': first_window_s - args.print_every / steps_per_s,
      'train_s': marks['end'] - marks['train'], 'final_loss': marks['loss'],
      'finite': bool(np.isfinite(marks['loss'])), 'load_before': load_before,
      'load_after': load_after, 'jax': jax.__version__, 'backend': jax.default_backend(),
      'xla_flags': os.environ.get('XLA_FLAGS', ''), 'argv': sys.argv,
      'date': time.strftime('%Y-%m-%dT%H:%M:%S'),
  }
  print(f'[jadex trainer] {args.model} B={args.batch} N={args.steps}: {steps_per_s:.3f} steps/s '
        f'(windows {", ".join(f"{w:.3f}" for w in windows)}); compile ~{rec["compile_s"]:.1f}s '
        f'(first window {first_window_s:.1f}s), setup {rec["setup_s"]:.1f}s; '
        f'loss {marks["loss"]:.2f}; load {load_before[0]:.2f} -> {load_after[0]:.2f}', flush=True)
  if args.output:
    with open(args.output, 'a') as f:
      f.write(json.dumps(rec) + '\n')


if __name__ == '__main__':
  main()
