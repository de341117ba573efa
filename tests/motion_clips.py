"""Generated LAFAN1-like clips for the tests: smooth random motion in the two
formats `daps_jax.data.motion_formats` reads, named like the real clips."""

import pathlib

import numpy as np

# A few of the real clip names; the first two are validation clips.
CLIP_NAMES = ('walk2_subject4', 'dance2_subject2', 'walk1_subject1', 'run1_subject2',
              'jumps1_subject1', 'aiming1_subject1')
_JOINTS = (('Hips', -1), ('LeftUpLeg', 0), ('LeftLeg', 1), ('RightUpLeg', 0), ('RightLeg', 3),
           ('Spine', 0))


def _curves(rng: np.random.Generator, frames: int, channels: int, scale: float) -> np.ndarray:
  """[frames, channels] sums of two sinusoids of random frequency and phase."""
  t = np.arange(frames)[:, None] / 30.0
  out = np.zeros((frames, channels))
  for _ in range(2):
    freq = rng.uniform(0.2, 1.5, channels)
    phase = rng.uniform(0, 2 * np.pi, channels)
    out += rng.uniform(0.3, 1.0, channels) * np.sin(2 * np.pi * freq * t + phase)
  return scale * out


def bvh_text(frames: int, seed: int) -> str:
  rng = np.random.default_rng(seed)
  lines = ['HIERARCHY']
  depth = 0

  def close_to(level):
    nonlocal depth
    while depth > level:
      depth -= 1
      lines.append('  ' * depth + '}')

  for index, (name, parent) in enumerate(_JOINTS):
    level = 0 if parent < 0 else _level(parent) + 1
    close_to(level)
    pad = '  ' * level
    lines.append(pad + ('ROOT ' if parent < 0 else 'JOINT ') + name)
    lines.append(pad + '{')
    lines.append(pad + f'  OFFSET {0.0 if parent < 0 else 10.0 + index:.6f} 0.000000 0.000000')
    if parent < 0:
      lines.append(pad + '  CHANNELS 6 Xposition Yposition Zposition Zrotation Yrotation Xrotation')
    else:
      lines.append(pad + '  CHANNELS 3 Zrotation Yrotation Xrotation')
    depth = level + 1
    if name in ('LeftLeg', 'RightLeg', 'Spine'):
      lines += [pad + '  End Site', pad + '  {', pad + '    OFFSET 0.000000 -10.000000 0.000000',
                pad + '  }']
  close_to(0)
  positions = np.stack([np.cumsum(np.full(frames, 3.0)) + _curves(rng, frames, 1, 2.0)[:, 0],
                        90.0 + _curves(rng, frames, 1, 5.0)[:, 0],
                        _curves(rng, frames, 1, 20.0)[:, 0]], axis=1)
  angles = _curves(rng, frames, 3 * len(_JOINTS), 30.0)
  lines += ['MOTION', f'Frames: {frames}', 'Frame Time: 0.033333']
  for row in np.concatenate([positions, angles], axis=1):
    lines.append(' '.join(f'{v:.6f}' for v in row))
  return '\n'.join(lines) + '\n'


def _level(index: int) -> int:
  parent = _JOINTS[index][1]
  return 0 if parent < 0 else _level(parent) + 1


def h1_csv_text(frames: int, seed: int) -> str:
  rng = np.random.default_rng(seed)
  position = np.stack([np.cumsum(np.full(frames, 0.03)), _curves(rng, frames, 1, 0.2)[:, 0],
                       0.95 + _curves(rng, frames, 1, 0.03)[:, 0]], axis=1)
  yaw = _curves(rng, frames, 1, 0.5)[:, 0]
  roll, pitch = _curves(rng, frames, 2, 0.05).T
  # Quaternion (x, y, z, w) of yaw about z, then pitch about y, then roll about x.
  cy, sy, cp, sp, cr, sr = (f(a / 2) for a in (yaw, pitch, roll) for f in (np.cos, np.sin))
  quat = np.stack([sr * cp * cy - cr * sp * sy, cr * sp * cy + sr * cp * sy,
                   cr * cp * sy - sr * sp * cy, cr * cp * cy + sr * sp * sy], axis=1)
  joints = _curves(rng, frames, 19, 0.4)
  table = np.concatenate([position, quat, joints], axis=1)
  return '\n'.join(','.join(f'{v:.6f}' for v in row) for row in table) + '\n'


def write_clips(directory: pathlib.Path, kind: str, frames: int = 200,
                names: tuple[str, ...] = CLIP_NAMES) -> pathlib.Path:
  """Writes one clip per name as <name>.bvh or <name>.csv; returns `directory`."""
  directory.mkdir(parents=True, exist_ok=True)
  for seed, name in enumerate(names):
    text = bvh_text(frames, seed) if kind == 'bvh' else h1_csv_text(frames, seed)
    (directory / f'{name}.{kind}').write_text(text)
  return directory
