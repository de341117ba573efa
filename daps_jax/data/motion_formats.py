"""LAFAN1 motion-capture clips as per-frame feature vectors.

Two file formats are read:

* ``.bvh`` (Ubisoft LAFAN1: Y-up, centimetres, 30 fps, 22 joints):
  ``HIERARCHY``, then one ``ROOT name { ... }`` block holding an ``OFFSET x y z``,
  a ``CHANNELS n name...`` line and nested ``JOINT`` or ``End Site`` blocks
  (End Sites are leaves, not joints); then ``MOTION``, ``Frames: N``,
  ``Frame Time: t`` and N lines of one value per declared channel, joints in
  hierarchy order. Position channels (``Xposition``...) replace the joint's
  offset; rotation channels (``Zrotation``...) are Euler angles in degrees,
  composed in the order listed: ``Zrotation Yrotation Xrotation`` is
  ``Rz @ Ry @ Rx`` (intrinsic). The frame rate is 1 / Frame Time.
* ``.csv`` (LAFAN1_Retargeting_Dataset, Unitree H1: Z-up, metres, 30 fps): no
  header, one frame per row of 26 comma-separated numbers: root x y z, root
  quaternion x y z w, then the 19 joint angles (radians) of `H1_JOINTS`.

Features, float32 [T, C] (T frames, C features, J joints), in this order:

1. ``root/height``: the root's vertical position (BVH Y, CSV z).
2. ``root/velocity_forward``, ``root/velocity_left``: the root's velocity in
   the ground plane, units per second, in the heading frame of that frame.
3. ``root/yaw_rate``: the rate of change of the heading, radians per second.
4. BVH: every joint's local rotation as 6-D, ``<joint>/rot6d_0`` to
   ``<joint>/rot6d_5``, in hierarchy order: C = 4 + 6 J (136 for LAFAN1).
   CSV: ``root/rot6d_0..5``, then the 19 joint angles under their names: C = 29.

Conventions. The heading is the yaw about the vertical axis of the root's
forward axis projected onto the ground plane. By definition the forward axis is
the root's local +Z for BVH (LAFAN1's Hips have local X along the spine, so
local Z is horizontal; that it faces forward rather than sideways is not
checked against data) and the pelvis's local +X for the H1. "Left" is up x
forward: +X at zero heading for BVH, +Y for the H1. The root's 6-D rotation has
the heading yaw removed (R_yaw^T @ R_root, leaving roll and pitch), so every
feature is invariant to a global yaw and a translation on the floor. Rates are
forward differences, (x[t+1] - x[t]) * fps, the heading difference wrapped to
(-pi, pi] first; the last frame repeats the value before it, and a one-frame
clip has zero rates. The 6-D form of a rotation matrix is its first two
columns; `matrix_from_6d` inverts it by Gram-Schmidt.
"""

import dataclasses
import os
import pathlib

import numpy as np

from daps_jax.errors import DataError

PathLike = str | os.PathLike[str]

CLIP_SUFFIXES = ('.bvh', '.csv')
H1_FPS = 30.0
H1_JOINTS = (
    'left_hip_yaw_joint', 'left_hip_roll_joint', 'left_hip_pitch_joint',
    'left_knee_joint', 'left_ankle_joint',
    'right_hip_yaw_joint', 'right_hip_roll_joint', 'right_hip_pitch_joint',
    'right_knee_joint', 'right_ankle_joint',
    'torso_joint',
    'left_shoulder_pitch_joint', 'left_shoulder_roll_joint', 'left_shoulder_yaw_joint',
    'left_elbow_joint',
    'right_shoulder_pitch_joint', 'right_shoulder_roll_joint', 'right_shoulder_yaw_joint',
    'right_elbow_joint',
)
H1_COLUMNS = 3 + 4 + len(H1_JOINTS)
ROOT_FEATURES = ('root/height', 'root/velocity_forward', 'root/velocity_left', 'root/yaw_rate')

# Lower-cased BVH channel name -> (is a rotation, axis index).
_CHANNELS = {f'{axis}{kind}': (kind == 'rotation', i)
             for kind in ('position', 'rotation') for i, axis in enumerate('xyz')}
_END_SITE = -1  # Marks an End Site block on the parser's stack.
_Rows = list[tuple[int, list[str]]]  # (1-based line number, tokens) per non-blank line.
_Channels = list[tuple[bool, int]]  # A joint's channels in order: (is a rotation, axis).


@dataclasses.dataclass(frozen=True)
class Clip:
  """One clip's features, float32 [T, C], named by `feature_names` (length C)."""
  name: str
  fps: float
  features: np.ndarray
  feature_names: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class BvhMotion:
  """A parsed BVH file.

  Attributes:
    joint_names: J names in hierarchy order (depth first, as in the file).
    parents: J parent indices, -1 for the root.
    offsets: float64 [J, 3], the OFFSET of each joint.
    frame_time: seconds per frame.
    local_translations: float64 [T, J, 3]: position channels where a joint
      has them, its offset otherwise.
    local_rotations: float64 [T, J, 3, 3], relative to the parent (the
      root's is global).
  """
  joint_names: tuple[str, ...]
  parents: tuple[int, ...]
  offsets: np.ndarray
  frame_time: float
  local_translations: np.ndarray
  local_rotations: np.ndarray

  @property
  def root_positions(self) -> np.ndarray:
    """float64 [T, 3], the root's global position."""
    return self.local_translations[:, 0]


@dataclasses.dataclass(frozen=True)
class H1Motion:
  """A parsed H1 CSV: root_positions [T, 3] (Z-up), root_quaternions_xyzw
  [T, 4] (unit norm) and joint_angles [T, 19] in `H1_JOINTS` order, float64."""
  root_positions: np.ndarray
  root_quaternions_xyzw: np.ndarray
  joint_angles: np.ndarray


def rotation_6d(rotations: np.ndarray) -> np.ndarray:
  """[..., 3, 3] -> [..., 6]: column 0 then column 1 of each matrix."""
  return np.concatenate([rotations[..., :, 0], rotations[..., :, 1]], axis=-1)


def matrix_from_6d(x: np.ndarray) -> np.ndarray:
  """[..., 6] -> [..., 3, 3] rotations, by Gram-Schmidt on the two 3-vectors.

  The halves must be non-zero and not parallel.
  """
  first = x[..., :3] / np.linalg.norm(x[..., :3], axis=-1, keepdims=True)
  second = x[..., 3:] - np.sum(first * x[..., 3:], axis=-1, keepdims=True) * first
  second /= np.linalg.norm(second, axis=-1, keepdims=True)
  return np.stack([first, second, np.cross(first, second)], axis=-1)


def _axis_rotation(axis: int, angle: np.ndarray) -> np.ndarray:
  """Right-handed rotations by `angle` [...] (radians) about axis 0, 1 or 2
  (x, y, z): [..., 3, 3]."""
  cos, sin = np.cos(angle), np.sin(angle)
  i, j = (axis + 1) % 3, (axis + 2) % 3
  m = np.zeros(np.shape(angle) + (3, 3))
  m[..., axis, axis] = 1.0
  m[..., i, i] = m[..., j, j] = cos
  m[..., i, j] = -sin
  m[..., j, i] = sin
  return m


def _read_text(path: PathLike) -> str:
  try:
    with open(path, encoding='utf-8') as f:
      return f.read()
  except (OSError, UnicodeDecodeError) as e:
    raise DataError(f'Cannot read motion clip {path}: {e}') from e


def _rows(text: str, separator: str | None = None) -> _Rows:
  """The non-blank lines of `text`, split; any line ending (CRLF, LF, CR)."""
  return [(n, line.split(separator)) for n, line in enumerate(text.splitlines(), 1)
          if line.strip()]


def _numbers(rows: _Rows, path: PathLike) -> np.ndarray:
  """float64 [len(rows), K] from rows of K tokens; the first non-number or
  non-finite value raises DataError naming its line."""
  values = []
  for n, tokens in rows:
    row = []
    for token in tokens:
      try:
        row.append(float(token))
      except ValueError:
        raise DataError(f'{path} line {n}: {token.strip()!r} is not a number.') from None
    values.append(row)
  table = np.array(values, dtype=np.float64).reshape(len(rows), -1)
  finite = np.isfinite(table).all(axis=1)
  if not finite.all():
    n = rows[int(np.argmin(finite))][0]
    raise DataError(f'{path} line {n}: NaN or infinite value; fix or drop that frame.')
  return table


def _parse_hierarchy(rows: _Rows, path: str) -> tuple[
    list[str], list[int], list[np.ndarray], list[_Channels], int]:
  """Parses rows[1:] up to MOTION: per joint its name, parent, offset [3] and
  channels, then the index in `rows` of the MOTION line."""
  names: list[str] = []
  parents: list[int] = []
  offsets: list = []  # Per joint: its offset [3], or None until its OFFSET line.
  channels: list[_Channels] = []
  stack: list[int] = []  # Open blocks: joint index, or _END_SITE.
  pending: int | None = None  # A ROOT, JOINT or End Site waiting for its '{'.
  for i, (n, tokens) in enumerate(rows[1:], 1):
    where = f'{path} line {n}'
    key = tokens[0].upper()
    top = stack[-1] if stack else None
    if pending is not None and key != '{':
      raise DataError(f"{where}: expected '{{' after the ROOT, JOINT or End Site line above.")
    if key in ('ROOT', 'JOINT'):
      if len(tokens) != 2:
        raise DataError(f'{where}: expected {key} and a name without spaces, got {len(tokens)} '
                        'words.')
      if key == 'ROOT' and (names or stack):
        raise DataError(f'{where}: a second ROOT; one skeleton per file is supported.')
      if key == 'JOINT' and (top is None or top == _END_SITE):
        raise DataError(f'{where}: JOINT outside a ROOT or JOINT block.')
      pending = len(names)
      names.append(tokens[1])
      parents.append(-1 if top is None else top)
      offsets.append(None)
      channels.append([])
    elif key == 'END' and len(tokens) == 2 and tokens[1].upper() == 'SITE':
      if top is None or top == _END_SITE:
        raise DataError(f'{where}: End Site outside a ROOT or JOINT block.')
      pending = _END_SITE
    elif key in ('{', '}') and len(tokens) > 1:
      raise DataError(f'{where}: expected {key!r} alone on its line.')
    elif key == '{':
      if pending is None:
        raise DataError(f"{where}: '{{' without a ROOT, JOINT or End Site line before it.")
      stack.append(pending)
      pending = None
    elif key == '}':
      if top is None:
        raise DataError(f"{where}: '}}' without a matching '{{'.")
      if top != _END_SITE and offsets[top] is None:
        raise DataError(f'{where}: joint {names[top]!r} has no OFFSET line.')
      stack.pop()
    elif key == 'OFFSET':
      if top is None:
        raise DataError(f'{where}: OFFSET outside a block.')
      if len(tokens) != 4:
        raise DataError(f'{where}: OFFSET needs 3 values, got {len(tokens) - 1}.')
      offset = _numbers([(n, tokens[1:])], path)[0]
      if top != _END_SITE:
        if offsets[top] is not None:
          raise DataError(f'{where}: a second OFFSET for joint {names[top]!r}.')
        offsets[top] = offset
    elif key == 'CHANNELS':
      if top is None or top == _END_SITE:
        raise DataError(f'{where}: CHANNELS outside a ROOT or JOINT block.')
      if channels[top]:
        raise DataError(f'{where}: a second CHANNELS line for joint {names[top]!r}.')
      declared = tokens[1] if len(tokens) > 1 else ''
      listed = tokens[2:]
      if not declared.isdigit() or int(declared) != len(listed):
        raise DataError(f'{where}: CHANNELS declares {declared or "no"} channels but lists '
                        f'{len(listed)}; make the count match the names.')
      for name in listed:
        if name.lower() not in _CHANNELS:
          raise DataError(f'{where}: unknown channel {name!r}; channels are X, Y or Z '
                          'followed by position or rotation, e.g. Zrotation.')
      if len({name.lower() for name in listed}) != len(listed):
        raise DataError(f'{where}: a channel is listed twice.')
      channels[top] = [_CHANNELS[name.lower()] for name in listed]
    elif key == 'MOTION':
      if stack:
        raise DataError(f"{where}: MOTION with {len(stack)} block(s) still open; a '}}' is "
                        'missing.')
      if not names:
        raise DataError(f'{where}: MOTION before any ROOT; the HIERARCHY is empty.')
      return names, parents, offsets, channels, i
    else:
      raise DataError(f"{where}: unknown keyword {tokens[0]!r}; expected ROOT, JOINT, End Site, "
                      "OFFSET, CHANNELS, '{', '}' or MOTION.")
  raise DataError(f'{path}: no MOTION line after the HIERARCHY; the file may be truncated.')


def parse_bvh(text: str, path: str) -> BvhMotion:
  """Parses the text of a BVH file; `path` names it in error messages.

  Raises:
    DataError naming the file and line: a missing HIERARCHY or MOTION, a
    malformed header line, a Frames count that does not match the frame lines,
    a frame line with the wrong number of values, a non-number, NaN or inf,
    or zero frames.
  """
  rows = _rows(text)
  if not rows or [token.upper() for token in rows[0][1]] != ['HIERARCHY']:
    where = f' line {rows[0][0]}' if rows else ' is empty'
    raise DataError(f'{path}{where}: expected HIERARCHY first; is this a BVH file?')
  names, parents, offsets, channels, motion = _parse_hierarchy(rows, path)
  header = rows[motion + 1:motion + 3]
  if (len(header) < 1 or len(header[0][1]) != 2 or header[0][1][0].upper() != 'FRAMES:'
      or not header[0][1][1].isdigit()):
    raise DataError(f"{path} line {rows[motion][0]}: expected 'Frames: N' on the line after "
                    'MOTION.')
  frames_line, frames = header[0][0], int(header[0][1][1])
  if (len(header) < 2 or len(header[1][1]) != 3
      or [token.upper() for token in header[1][1][:2]] != ['FRAME', 'TIME:']):
    raise DataError(f"{path} line {frames_line}: expected 'Frame Time: t' on the line after "
                    'Frames.')
  frame_time = float(_numbers([(header[1][0], header[1][1][2:])], path)[0, 0])
  if frame_time <= 0:
    raise DataError(f'{path} line {header[1][0]}: Frame Time must be positive, got {frame_time}.')
  data = rows[motion + 3:]
  if len(data) != frames:
    raise DataError(f"{path} line {frames_line}: 'Frames: {frames}' but {len(data)} frame lines "
                    'follow; fix the count or the truncated file.')
  if not frames:
    raise DataError(f'{path} line {frames_line}: the clip has zero frames.')
  width = sum(len(c) for c in channels)
  for n, tokens in data:
    if len(tokens) != width:
      raise DataError(f'{path} line {n}: expected {width} values (one per channel of the '
                      f'HIERARCHY), got {len(tokens)}.')
  values = _numbers(data, path)
  translations = np.tile(np.stack(offsets), (frames, 1, 1))
  rotations = []
  column = 0
  for joint, joint_channels in enumerate(channels):
    rotation = np.broadcast_to(np.eye(3), (frames, 3, 3))
    for is_rotation, axis in joint_channels:
      if is_rotation:
        rotation = rotation @ _axis_rotation(axis, np.deg2rad(values[:, column]))
      else:
        translations[:, joint, axis] = values[:, column]
      column += 1
    rotations.append(rotation)
  return BvhMotion(
      joint_names=tuple(names), parents=tuple(parents), offsets=np.stack(offsets),
      frame_time=frame_time, local_translations=translations,
      local_rotations=np.stack(rotations, axis=1))


def _root_features(height: np.ndarray, ground: np.ndarray, forward: np.ndarray,
                   fps: float) -> tuple[np.ndarray, np.ndarray]:
  """The four root features [T, 4] and the heading [T] (radians).

  Args:
    height: [T] the root's vertical position.
    ground: [T, 2] its position in ground coordinates (a, b), with a x b up.
    forward: [T, 2] its forward axis in the same coordinates; the heading is
      its angle from a towards b.
    fps: frames per second.
  """
  heading = np.arctan2(forward[:, 1], forward[:, 0])
  velocity = np.diff(ground, axis=0) * fps
  cos, sin = np.cos(heading[:-1]), np.sin(heading[:-1])
  turn = np.diff(heading)
  turn = np.pi - np.mod(np.pi - turn, 2 * np.pi)  # Wrapped to (-pi, pi].
  rates = np.stack([cos * velocity[:, 0] + sin * velocity[:, 1],
                    cos * velocity[:, 1] - sin * velocity[:, 0],
                    turn * fps], axis=-1)
  rates = np.concatenate([rates, rates[-1:]]) if len(rates) else np.zeros((1, 3))
  return np.concatenate([height[:, None], rates], axis=-1), heading


def bvh_features(motion: BvhMotion) -> tuple[np.ndarray, tuple[str, ...]]:
  """Features float32 [T, 4 + 6 J] and their names; see the module docstring.

  Ground coordinates are (Z, X), so the heading is atan2(f_x, f_z) of the
  root's local +Z axis f, and "left" is +X at zero heading.
  """
  root = motion.local_rotations[:, 0]
  positions = motion.root_positions
  root_features, heading = _root_features(
      positions[:, 1], positions[:, [2, 0]], root[:, [2, 0], 2], 1.0 / motion.frame_time)
  unyawed = np.swapaxes(_axis_rotation(1, heading), -1, -2) @ root
  rotations = np.concatenate([unyawed[:, None], motion.local_rotations[:, 1:]], axis=1)
  features = np.concatenate(
      [root_features, rotation_6d(rotations).reshape(len(root), -1)], axis=-1)
  names = ROOT_FEATURES + tuple(f'{joint}/rot6d_{k}' for joint in motion.joint_names
                                for k in range(6))
  return features.astype(np.float32), names


def read_h1_csv(path: PathLike) -> H1Motion:
  """Reads a LAFAN1_Retargeting_Dataset H1 CSV (26 columns, no header).

  Raises:
    DataError naming the file and 1-based line: unreadable or empty, a row
    without 26 columns, a non-number, NaN or inf, a zero-norm quaternion.
  """
  rows = _rows(_read_text(path), ',')
  if not rows:
    raise DataError(f'{path} is empty: expected one row of {H1_COLUMNS} comma-separated numbers '
                    'per frame.')
  for n, fields in rows:
    if len(fields) != H1_COLUMNS:
      raise DataError(f'{path} line {n}: {len(fields)} columns, expected {H1_COLUMNS} (root x y '
                      'z, root quaternion x y z w, 19 H1 joint angles).')
  values = _numbers(rows, path)
  norms = np.linalg.norm(values[:, 3:7], axis=-1, keepdims=True)
  if (norms < 1e-6).any():
    n = rows[int(np.argmax(norms[:, 0] < 1e-6))][0]
    raise DataError(f'{path} line {n}: the root quaternion (columns 4-7) has zero norm.')
  return H1Motion(root_positions=values[:, :3], root_quaternions_xyzw=values[:, 3:7] / norms,
                  joint_angles=values[:, 7:])


def _matrix_from_xyzw(q: np.ndarray) -> np.ndarray:
  """Unit quaternions [..., 4] (x, y, z, w) -> rotation matrices [..., 3, 3]."""
  x, y, z, w = np.moveaxis(q, -1, 0)
  return np.stack([
      np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)], -1),
      np.stack([2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)], -1),
      np.stack([2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)], -1),
  ], axis=-2)


def h1_features(motion: H1Motion) -> tuple[np.ndarray, tuple[str, ...]]:
  """Features float32 [T, 29] and their names; see the module docstring.

  Ground coordinates are (X, Y), so the heading is atan2(f_y, f_x) of the
  pelvis's local +X axis f, and "left" is +Y at zero heading.
  """
  root = _matrix_from_xyzw(motion.root_quaternions_xyzw)
  positions = motion.root_positions
  root_features, heading = _root_features(
      positions[:, 2], positions[:, :2], root[:, :2, 0], H1_FPS)
  unyawed = np.swapaxes(_axis_rotation(2, heading), -1, -2) @ root
  features = np.concatenate([root_features, rotation_6d(unyawed), motion.joint_angles], axis=-1)
  names = ROOT_FEATURES + tuple(f'root/rot6d_{k}' for k in range(6)) + H1_JOINTS
  return features.astype(np.float32), names


def read_clip(path: PathLike) -> Clip:
  """Reads a .bvh or .csv clip (suffix case-insensitive) into its features.

  Raises:
    DataError naming the file: another suffix, an unreadable file, or the
    format errors of `parse_bvh` and `read_h1_csv`.
  """
  suffix = pathlib.Path(path).suffix.lower()
  if suffix == '.bvh':
    motion = parse_bvh(_read_text(path), os.fspath(path))
    features, names = bvh_features(motion)
    fps = 1.0 / motion.frame_time
  elif suffix == '.csv':
    features, names = h1_features(read_h1_csv(path))
    fps = H1_FPS
  else:
    raise DataError(f'{path}: unknown clip format {suffix or "(no suffix)"!r}; expected one of '
                    f'{", ".join(CLIP_SUFFIXES)}.')
  return Clip(name=pathlib.Path(path).stem, fps=fps, features=features, feature_names=names)
