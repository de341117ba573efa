"""What an evaluation produces, and its files.

`write` puts, in the workdir: `eval_<step>.json` (metrics, FID protocol, data),
`images/recon_<step>.png` (images) or `images/motion_<step>.png` (motion feature
curves), `images/codebook_<step>.png` (sorted code frequencies
and per-position usage), `codes/counts_<step>.npy` ([L, V] histogram), and the
scalars and both figures in TensorBoard.
"""

import datetime
import json
import os
from typing import NamedTuple

import ml_collections
import numpy as np

from daps_jax import data
from daps_jax import figures
from daps_jax import files
from daps_jax import images as images_lib
from daps_jax import writers

# What `--metrics` may name, and the result keys each selects.
METRICS = ('psnr', 'ssim', 'elbo', 'codebook', 'fid')
IMAGE_METRICS = ('ssim', 'fid')  # Not computed for other modalities (motion).
_KEY_PREFIXES = {
    'psnr': ('eval/psnr',), 'ssim': ('eval/ssim',), 'fid': ('eval/fid',),
    'elbo': ('eval/log_p', 'eval/kl', 'eval/elbo', 'eval/beta_elbo'),
    'codebook': ('codebook/',),
}


class Result(NamedTuple):
  metrics: dict[str, float]  # 'eval/psnr', 'eval/fid', 'codebook/perplexity', ...
  grid: tuple[np.ndarray, np.ndarray] | None  # (originals, reconstructions) in [0, 1]
  counts: np.ndarray | None  # [L, V] int64 code histogram over the split
  fid_protocol: dict | None  # `scorer.Protocol.describe()` when FID was computed


def select(metrics: dict[str, float], names: tuple[str, ...]) -> dict[str, float]:
  """The entries of `metrics` that the metric `names` (from METRICS) ask for."""
  prefixes = tuple(p for name in names for p in _KEY_PREFIXES[name])
  return {k: v for k, v in metrics.items() if k.startswith(prefixes) or k == 'eval/num_examples'}


def json_path(workdir: str, step: int) -> str:
  return os.path.join(workdir, f'eval_{step:08d}.json')


def counts_path(workdir: str, step: int) -> str:
  return os.path.join(workdir, 'codes', f'counts_{step:08d}.npy')


def write(workdir: str, step: int, result: Result, writer: writers.MetricWriter, *,
          config: ml_collections.ConfigDict, spec: data.DatasetSpec,
          extra: dict | None = None) -> str:
  """Writes an evaluation's files, scalars and figures; returns the JSON's path.

  Call it on the writer process only. `spec` is the dataset's (its eval split was
  evaluated); `extra` (e.g. the checkpoint evaluated) is added to eval_<step>.json.
  """
  path = json_path(workdir, step)
  writer.write_scalars(step, result.metrics)
  pictures = {}
  if result.counts is not None:
    pictures['codebook'] = figures.codebook_figure(result.counts, title=f'step {step}')
  if result.grid is not None and spec.modality == 'motion':
    pictures['motion'] = figures.motion_figure(*result.grid, spec.feature_names,
                                               title=f'step {step}')
  elif result.grid is not None:
    pictures['reconstructions'] = images_lib.reconstruction_grid(*result.grid)
  writer.write_images(step, pictures)
  for name, picture in pictures.items():
    short = 'recon' if name == 'reconstructions' else name
    images_lib.save_png(os.path.join(workdir, 'images', f'{short}_{step:08d}.png'), picture)
  if result.counts is not None:
    counts_file = counts_path(workdir, step)
    os.makedirs(os.path.dirname(counts_file), exist_ok=True)
    np.save(counts_file, result.counts)
  record = {
      'step': step, 'method': config.method.name, 'dataset': config.data.name,
      'split': spec.eval_split,
      'num_examples': int(result.metrics.get('eval/num_examples', 0)),
      'fid_protocol': result.fid_protocol,
      'metrics': result.metrics,
      'date': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
      **(extra or {}),
  }
  with files.atomic_open(path) as f:
    json.dump(record, f, indent=2, sort_keys=True)
  return path


def summary(metrics: dict[str, float]) -> str:
  """One log line: ELBO (when defined), PSNR, SSIM, FID (when computed), codebook."""
  parts = []
  if 'eval/elbo' in metrics:
    parts.append(f'ELBO {metrics["eval/elbo"]:.2f}, beta-ELBO {metrics.get("eval/beta_elbo", 0):.2f}')
  if 'eval/psnr' in metrics:
    parts.append(f'PSNR {metrics["eval/psnr"]:.2f} dB'
                 + (f' (mean image {metrics["eval/psnr_mean_image"]:.2f} dB)'
                    if 'eval/psnr_mean_image' in metrics else ''))
  if 'eval/psnr_batch' in metrics:
    parts.append(f'per-batch PSNR {metrics["eval/psnr_batch"]:.2f} dB')
  if 'eval/ssim' in metrics:
    parts.append(f'SSIM {metrics["eval/ssim"]:.4f}')
  if 'eval/fid' in metrics:
    parts.append(f'FID {metrics["eval/fid"]:.2f}')
  if 'codebook/used_fraction' in metrics:
    parts.append(f'codebook used {metrics["codebook/used_fraction"]:.3f}, '
                 f'perplexity {metrics["codebook/perplexity"]:.1f}')
  return '; '.join(parts)
