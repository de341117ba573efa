"""LAFAN1 motion: the prepared dataset, its statistics, and 32-frame windows.

  python -m daps_jax.data.prepare --dataset=lafan1 --source_dir=CLIPS --data_dir=OUT

`prepare` reads every clip of CLIPS (Ubisoft `.bvh` or Unitree-H1 retargeted
`.csv` files, one format per directory; features in `motion_formats`), splits
them by name (validation: `VALIDATION_CLIPS`; training: all others), drops the
features whose training variance is below `MIN_VARIANCE`, standardises the rest
with the training mean and standard deviation, and writes OUT/lafan1/:

  metadata.json             format, fps, window, feature names, kept indices,
                            per-feature mean, std, min and max (data units, all
                            features), clips and frames per split
  train.array_record        one record per clip: float32 [T, C] standardised,
  validation.array_record   the kept features only (`np.save` bytes)

TF-free: array_record and numpy only. The directory appears only when complete:
it is written under a temporary name and renamed; a failed prepare leaves OUT as
it was. Model space is the standardised window [WINDOW, C]; `DatasetSpec.to_unit`
maps it to min-max normalised data units (the training range is [0, 1]).

Windows: training draws, per example, a random 32-frame window of a clip; a clip
of T frames owns ceil(T / WINDOW) of an epoch's examples, so clips are sampled in
proportion to their length, and the start frame comes from the example's rng,
which grain seeds from the stream position (resume is exact). Validation is the
fixed tiling of each clip into consecutive windows (the remainder dropped).

LAFAN1 (Ubisoft La Forge) is CC BY-NC-ND 4.0: nothing of it ships with this library.
"""

import functools
import io
import json
import math
import os
import pathlib
import shutil
import tempfile
from collections.abc import Sequence
from typing import Any

import numpy as np

from daps_jax.data import motion_formats
from daps_jax.data.preprocess import DatasetSpec
from daps_jax.errors import DataError

NAME = 'lafan1'
WINDOW = 32
MIN_VARIANCE = 1e-5
VALIDATION_CLIPS = ('dance2_subject2', 'fight1_subject2', 'run2_subject1', 'walk2_subject4')
SPLITS = ('train', 'validation')
_METADATA = 'metadata.json'

PathLike = str | os.PathLike[str]


def dataset_dir(data_dir: PathLike | None) -> pathlib.Path:
  if not data_dir:
    raise DataError(f'Dataset {NAME} needs its directory: pass --config.data.dir=OUT, where '
                    f'python -m daps_jax.data.prepare --dataset={NAME} --source_dir=CLIPS '
                    '--data_dir=OUT wrote it.')
  return pathlib.Path(os.path.expanduser(data_dir)) / NAME


def _clip_paths(source_dir: pathlib.Path) -> list[pathlib.Path]:
  if not source_dir.is_dir():
    raise DataError(f'--source_dir={source_dir} is not a directory of LAFAN1 clips.')
  paths = sorted(p for p in source_dir.iterdir()
                 if p.is_file() and p.suffix.lower() in motion_formats.CLIP_SUFFIXES)
  if not paths:
    raise DataError(f'{source_dir} holds no clips (*.bvh or *.csv files).')
  kinds = {p.suffix.lower() for p in paths}
  if len(kinds) > 1:
    raise DataError(f'{source_dir} mixes {" and ".join(sorted(kinds))} clips; their features '
                    'differ: prepare one format per directory.')
  return paths


def _statistics(train: list[np.ndarray]) -> dict[str, np.ndarray]:
  frames = np.concatenate(train).astype(np.float64)
  return {'mean': frames.mean(0), 'std': frames.std(0), 'min': frames.min(0),
          'max': frames.max(0)}


def _record(features: np.ndarray) -> bytes:
  buffer = io.BytesIO()
  np.save(buffer, np.ascontiguousarray(features, np.float32), allow_pickle=False)
  return buffer.getvalue()


def _write_split(path: pathlib.Path, clips: list[np.ndarray]) -> None:
  from array_record.python import array_record_module  # pylint: disable=g-import-not-at-top
  writer = array_record_module.ArrayRecordWriter(str(path), 'group_size:1')
  try:
    for clip in clips:
      writer.write(_record(clip))
  finally:
    writer.close()


def prepare(source_dir: PathLike, data_dir: PathLike) -> pathlib.Path:
  """Reads the clips of `source_dir` and writes `data_dir`/lafan1 (see the module doc).

  Every clip is read and checked before anything is written.

  Returns:
    The dataset directory.
  Raises:
    DataError naming the file (and line) of a bad clip, or what the directory lacks.
  """
  source_dir = pathlib.Path(os.path.expanduser(source_dir))
  paths = _clip_paths(source_dir)
  clips = [motion_formats.read_clip(p) for p in paths]
  names = {clip.feature_names for clip in clips}
  if len(names) > 1:
    raise DataError(f'The clips of {source_dir} disagree on their features (different '
                    'skeletons?): prepare clips of one skeleton together.')
  for path, clip in zip(paths, clips):
    if len(clip.features) < WINDOW:
      raise DataError(f'{path}: {len(clip.features)} frames, shorter than one window of '
                      f'{WINDOW}; remove the clip.')
  split = {'train': [c for c in clips if c.name not in VALIDATION_CLIPS],
           'validation': [c for c in clips if c.name in VALIDATION_CLIPS]}
  if not split['train']:
    raise DataError(f'{source_dir} holds only validation clips ({", ".join(VALIDATION_CLIPS)}); '
                    'training needs the others.')
  if not split['validation']:
    raise DataError(f'{source_dir} holds none of the validation clips '
                    f'({", ".join(VALIDATION_CLIPS)}); add them.')
  stats = _statistics([c.features for c in split['train']])
  keep = np.flatnonzero(np.square(stats['std']) >= MIN_VARIANCE)
  if not len(keep):
    raise DataError(f'Every feature of the training clips of {source_dir} is constant.')
  mean, std = stats['mean'][keep], stats['std'][keep]
  first = clips[0]
  metadata = {
      'name': NAME, 'version': 1, 'format': paths[0].suffix.lower()[1:], 'fps': first.fps,
      'window': WINDOW, 'min_variance': MIN_VARIANCE,
      'feature_names': list(first.feature_names), 'kept': keep.tolist(),
      **{key: stats[key].tolist() for key in ('mean', 'std', 'min', 'max')},
      'splits': {s: {'clips': [c.name for c in split[s]],
                     'frames': [len(c.features) for c in split[s]]} for s in SPLITS},
      'source_dir': str(source_dir),
  }
  target = dataset_dir(data_dir)
  target.parent.mkdir(parents=True, exist_ok=True)
  tmp = pathlib.Path(tempfile.mkdtemp(prefix=f'.{NAME}.', dir=target.parent))
  try:
    for s in SPLITS:
      _write_split(tmp / f'{s}.array_record',
                   [(c.features[:, keep] - mean) / std for c in split[s]])
    (tmp / _METADATA).write_text(json.dumps(metadata, indent=1))
    if target.exists():  # Replace a previous preparation only once the new one is whole.
      old = pathlib.Path(tempfile.mkdtemp(prefix=f'.{NAME}.old.', dir=target.parent))
      target.rename(old / NAME)
      tmp.rename(target)
      shutil.rmtree(old)
    else:
      tmp.rename(target)
  finally:
    if tmp.exists():
      shutil.rmtree(tmp)
  _load.cache_clear()
  return target


@functools.lru_cache(maxsize=2)
def _load(directory: str) -> tuple[dict, dict[str, list[np.ndarray]]]:
  """metadata and the standardised clips of both splits, read once per process."""
  from array_record.python import array_record_module  # pylint: disable=g-import-not-at-top
  path = pathlib.Path(directory)
  meta_path = path / _METADATA
  if not meta_path.is_file():
    raise DataError(f'Dataset {NAME} is not prepared in {path.parent}: no {meta_path}. '
                    f'Prepare it with: python -m daps_jax.data.prepare --dataset={NAME} '
                    f'--source_dir=CLIPS --data_dir={path.parent}')
  try:
    metadata = json.loads(meta_path.read_text())
    clips = {}
    for s in SPLITS:
      reader = array_record_module.ArrayRecordReader(str(path / f'{s}.array_record'))
      try:
        clips[s] = [np.load(io.BytesIO(r), allow_pickle=False) for r in reader.read_all()]
      finally:
        reader.close()
  except (OSError, ValueError, RuntimeError) as e:
    raise DataError(f'{path} is damaged ({e}); prepare it again.') from e
  width = len(metadata['kept'])
  for s in SPLITS:
    if not clips[s] or any(c.ndim != 2 or c.shape[1] != width for c in clips[s]):
      raise DataError(f'{path}/{s}.array_record does not match {meta_path}; prepare it again.')
  return metadata, clips


def load(data_dir: PathLike | None) -> tuple[dict, dict[str, list[np.ndarray]]]:
  return _load(str(dataset_dir(data_dir)))


def spec(data_dir: PathLike | None) -> DatasetSpec:
  """The spec of the prepared dataset in `data_dir`: shape (WINDOW, kept features)."""
  metadata, _ = load(data_dir)
  kept = metadata['kept']
  pick = lambda key: tuple(float(metadata[key][i]) for i in kept)
  return _spec(pick('mean'), pick('std'), (pick('min'), pick('max')),
               tuple(metadata['feature_names'][i] for i in kept))


def _spec(mean: tuple[float, ...], std: tuple[float, ...],
          data_range: tuple[tuple[float, ...], tuple[float, ...]],
          feature_names: tuple[str, ...] | None = None) -> DatasetSpec:
  return DatasetSpec(NAME, (WINDOW, len(mean)), 'gaussian', mean=mean, std=std,
                     train_split='train', eval_split='validation', modality='motion',
                     data_range=data_range, feature_names=feature_names)


# Features per frame before any is dropped: LAFAN1's 22-joint BVH skeleton and the
# H1 CSV (`motion_formats`).
NOMINAL_FEATURES = {'bvh': 136, 'csv': 29}


def nominal_spec(channels: int) -> DatasetSpec:
  """A spec of `channels` features with unit statistics, for shapes before data exists
  (parameter counts); never for training."""
  zeros, ones = (0.0,) * channels, (1.0,) * channels
  return _spec(zeros, ones, (zeros, ones))


class TrainClips(Sequence[dict]):
  """An epoch of training examples {'motion': float32 [T, C]}, the clip of each slot;
  a clip of T frames fills ceil(T / WINDOW) slots. `preprocess.train_input` cuts the
  window."""

  def __init__(self, clips: list[np.ndarray]):
    self._clips = clips
    self._slots = np.repeat(np.arange(len(clips)),
                            [math.ceil(len(c) / WINDOW) for c in clips])

  def __len__(self) -> int:
    return len(self._slots)

  def __getitem__(self, index: int) -> dict[str, Any]:  # type: ignore[override]
    return {'motion': self._clips[self._slots[index]]}


class ValidationWindows(Sequence[dict]):
  """The fixed tiling {'motion': float32 [WINDOW, C]} of the validation clips."""

  def __init__(self, clips: list[np.ndarray]):
    self._clips = clips
    self._starts = [(i, s) for i, c in enumerate(clips)
                    for s in range(0, len(c) - WINDOW + 1, WINDOW)]

  def __len__(self) -> int:
    return len(self._starts)

  def __getitem__(self, index: int) -> dict[str, Any]:  # type: ignore[override]
    clip, start = self._starts[index]
    return {'motion': self._clips[clip][start:start + WINDOW]}


def source(split: str, data_dir: PathLike | None) -> Sequence[dict]:
  """'train' (clips, cut into random windows by the train pipeline), 'validation' (its
  tiling) or 'train_windows' (the tiling of the training clips, e.g. to encode them)."""
  _, clips = load(data_dir)
  if split == 'train_windows':
    return ValidationWindows(clips['train'])
  if split not in SPLITS:
    raise DataError(f"{NAME} has splits 'train' and 'validation', not {split!r}.")
  return TrainClips(clips['train']) if split == 'train' else ValidationWindows(
      clips['validation'])


def random_window(clip: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """A uniformly random [WINDOW, C] window of clip [T, C] (T >= WINDOW)."""
  start = int(rng.integers(0, len(clip) - WINDOW + 1))
  return clip[start:start + WINDOW]
