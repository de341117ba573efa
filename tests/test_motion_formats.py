"""Tests of daps_jax.data.motion_formats on BVH and H1 CSV clips generated here.

Expected rotations are built by hand (explicit single-axis matrices), not with
the module's own helpers; nothing is downloaded.
"""

import dataclasses
import re

import numpy as np
import pytest

from daps_jax.data import motion_formats as mf
from daps_jax.errors import DataError

FPS = 30.0
LAFAN_ROOT = 'Xposition Yposition Zposition Zrotation Yrotation Xrotation'
YAW_FIRST_ROOT = 'Xposition Yposition Zposition Yrotation Xrotation Zrotation'
ZYX = 'Zrotation Yrotation Xrotation'
XYZ = 'Xrotation Yrotation Zrotation'
# The template's line numbers, which the error cases edit.
MOTION_LINE, FRAMES_LINE, FIRST_FRAME_LINE = 31, 32, 34


def _rx(degrees: float) -> np.ndarray:
  c, s = np.cos(np.deg2rad(degrees)), np.sin(np.deg2rad(degrees))
  return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])


def _ry(degrees: float) -> np.ndarray:
  c, s = np.cos(np.deg2rad(degrees)), np.sin(np.deg2rad(degrees))
  return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])


def _rz(degrees: float) -> np.ndarray:
  c, s = np.cos(np.deg2rad(degrees)), np.sin(np.deg2rad(degrees))
  return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])


AXIS_MATRIX = {'X': _rx, 'Y': _ry, 'Z': _rz}


def _euler(order: str, angles) -> np.ndarray:
  """The product of single-axis rotations in the listed order, e.g. 'Zrotation ...'."""
  matrix = np.eye(3)
  for name, angle in zip(order.split(), angles):
    matrix = matrix @ AXIS_MATRIX[name[0]](angle)
  return matrix


def _random_rotations(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
  q, r = np.linalg.qr(rng.normal(size=shape + (3, 3)))
  q = q * np.sign(np.diagonal(r, axis1=-2, axis2=-1))[..., None, :]
  return q * np.sign(np.linalg.det(q))[..., None, None]


def _bvh_lines(frames: np.ndarray, root: str = LAFAN_ROOT, joints: str = ZYX) -> list[str]:
  """A BVH file: Hips -> Spine -> Head -> End Site, Hips -> LeftLeg -> End Site.

  `frames` [T, 15]: the root's 6 channels then 3 per joint, in declared order.
  """
  header = f"""HIERARCHY
ROOT Hips
{{
  OFFSET 0 90 0
  CHANNELS 6 {root}
  JOINT Spine
  {{
    OFFSET 0 10 0
    CHANNELS 3 {joints}
    JOINT Head
    {{
      OFFSET 0 20 0
      CHANNELS 3 {joints}
      End Site
      {{
        OFFSET 0 5 0
      }}
    }}
  }}
  JOINT LeftLeg
  {{
    OFFSET 10 -5 0
    CHANNELS 3 {joints}
    End Site
    {{
      OFFSET 0 -40 0
    }}
  }}
}}

MOTION
Frames: {len(frames)}
Frame Time: 0.0333333333333"""
  return header.split('\n') + [' '.join(f'{v:.12g}' for v in row) for row in frames]


def _bvh(frames: np.ndarray, **kwargs) -> mf.BvhMotion:
  return mf.parse_bvh('\n'.join(_bvh_lines(frames, **kwargs)) + '\n', 'clip.bvh')


def _walk(yaw_degrees: np.ndarray, positions: np.ndarray) -> mf.BvhMotion:
  """The root at `positions` [T, 3] with yaw [T], pitch 10 and roll -5 degrees
  (root channels YAW_FIRST_ROOT); the other joints at fixed angles."""
  t = len(positions)
  root = np.stack([yaw_degrees, np.full(t, 10.0), np.full(t, -5.0)], axis=-1)
  joints = np.tile([5.0, -10.0, 20.0] * 3, (t, 1))
  return _bvh(np.concatenate([positions, root, joints], axis=-1), root=YAW_FIRST_ROOT)


# BVH parsing.

@pytest.mark.parametrize('order, expected_leg', [
    # Z = 90 then X = 90: Rz(90) @ Rx(90), and Rx(90) @ Rz(90), written out.
    (ZYX, [[0, 0, 1], [1, 0, 0], [0, 1, 0]]),
    (XYZ, [[0, -1, 0], [0, 0, -1], [1, 0, 0]]),
])
def test_bvh_rotations_compose_in_listed_order(order, expected_leg):
  angles = {'Z': 90.0, 'Y': 0.0, 'X': 90.0}
  leg = [angles[name[0]] for name in order.split()]
  spine = [90.0 if name[0] == 'Z' else 0.0 for name in order.split()]
  head = [90.0 if name[0] == 'X' else 0.0 for name in order.split()]
  frames = np.array([[1.0, 2.0, 3.0, 0, 0, 0] + spine + head + leg])
  motion = _bvh(frames, joints=order)
  assert motion.joint_names == ('Hips', 'Spine', 'Head', 'LeftLeg')
  assert motion.parents == (-1, 0, 1, 0)
  np.testing.assert_allclose(motion.offsets[3], [10, -5, 0])
  np.testing.assert_allclose(motion.root_positions, [[1, 2, 3]])
  np.testing.assert_allclose(motion.local_translations[0, 1], [0, 10, 0])
  np.testing.assert_allclose(motion.frame_time, 1 / FPS)
  rotations = motion.local_rotations[0]
  np.testing.assert_allclose(rotations[0], np.eye(3), atol=1e-12)
  np.testing.assert_allclose(rotations[1], [[0, -1, 0], [1, 0, 0], [0, 0, 1]], atol=1e-12)
  np.testing.assert_allclose(rotations[2], [[1, 0, 0], [0, 0, -1], [0, 1, 0]], atol=1e-12)
  np.testing.assert_allclose(rotations[3], expected_leg, atol=1e-12)


@pytest.mark.parametrize('root, joints', [(LAFAN_ROOT, ZYX), (YAW_FIRST_ROOT, XYZ)])
def test_bvh_random_angles_match_hand_built_matrices(root, joints):
  rng = np.random.default_rng(0)
  frames = np.concatenate([rng.normal(size=(4, 3)) * 100,
                           rng.uniform(-180, 180, size=(4, 12))], axis=-1)
  motion = _bvh(frames, root=root, joints=joints)
  for t in range(4):
    np.testing.assert_allclose(motion.root_positions[t], frames[t, :3])
    orders = [' '.join(root.split()[3:])] + [joints] * 3
    for j, order in enumerate(orders):
      expected = _euler(order, frames[t, 3 + 3 * j:6 + 3 * j])
      np.testing.assert_allclose(motion.local_rotations[t, j], expected, atol=1e-9)


def test_bvh_rotations_match_scipy_intrinsic_euler():
  transform = pytest.importorskip('scipy.spatial.transform')
  angles = np.array([[30.0, -50.0, 120.0], [170.0, 80.0, -20.0]])
  frames = np.concatenate([np.zeros((2, 6)), angles, angles, angles], axis=-1)
  motion = _bvh(frames, joints=ZYX)
  expected = transform.Rotation.from_euler('ZYX', angles, degrees=True).as_matrix()
  np.testing.assert_allclose(motion.local_rotations[:, 1], expected, atol=1e-9)


def test_bvh_line_endings_and_whitespace_do_not_matter():
  frames = np.random.default_rng(1).uniform(-90, 90, size=(3, 15))
  lines = _bvh_lines(frames)
  lf = mf.parse_bvh('\n'.join(lines), 'lf.bvh')
  crlf = mf.parse_bvh('\r\n'.join(lines) + '\r\n', 'crlf.bvh')
  messy = mf.parse_bvh(
      '\n\n'.join('\t' + line.replace(' ', ' \t ') + '  \t' for line in lines), 'messy.bvh')
  for other in (crlf, messy):
    assert other.joint_names == lf.joint_names
    np.testing.assert_array_equal(other.local_rotations, lf.local_rotations)
    np.testing.assert_array_equal(other.local_translations, lf.local_translations)


# BVH features.

@pytest.mark.parametrize('yaw', [30.0, -135.0])
def test_bvh_straight_walk_gives_speed_in_heading_frame(yaw):
  forward_speed, left_speed, t = 150.0, 40.0, 10
  a = np.deg2rad(yaw)
  forward = np.array([np.sin(a), 0, np.cos(a)])  # Ry(yaw) applied to +Z.
  left = np.array([np.cos(a), 0, -np.sin(a)])  # Up x forward.
  seconds = np.arange(t)[:, None] / FPS
  positions = np.array([7.0, 90.0, -3.0]) + seconds * (forward_speed * forward
                                                       + left_speed * left)
  features, names = mf.bvh_features(_walk(np.full(t, yaw), positions))
  columns = dict(zip(names, features.T))
  np.testing.assert_allclose(columns['root/height'], 90.0, rtol=1e-6)
  np.testing.assert_allclose(columns['root/velocity_forward'], forward_speed, rtol=1e-4)
  np.testing.assert_allclose(columns['root/velocity_left'], left_speed, rtol=1e-4)
  np.testing.assert_allclose(columns['root/yaw_rate'], 0.0, atol=1e-4)
  # With the yaw removed the root's 6-D rotation is that of the unturned clip.
  unturned, _ = mf.bvh_features(_walk(np.zeros(t), positions))
  root = _rx(10.0) @ _rz(-5.0)  # Ry(yaw) @ Rx(pitch) @ Rz(roll) without Ry(yaw).
  expected_root = np.concatenate([root[:, 0], root[:, 1]])
  np.testing.assert_allclose(features[:, 4:10], unturned[:, 4:10], atol=1e-6)
  np.testing.assert_allclose(features[0, 4:10], expected_root, atol=1e-6)


def test_bvh_turning_gives_yaw_rate_across_the_wrap():
  rate, t = 2.0, 30  # Radians per second; the yaw goes from 175 to past 180 degrees.
  yaw = 175.0 + np.rad2deg(rate * np.arange(t) / FPS)
  features, names = mf.bvh_features(_walk(yaw, np.tile([0, 90.0, 0], (t, 1))))
  columns = dict(zip(names, features.T))
  np.testing.assert_allclose(columns['root/yaw_rate'], rate, rtol=1e-4)
  np.testing.assert_allclose(columns['root/velocity_forward'], 0.0, atol=1e-4)
  np.testing.assert_allclose(columns['root/velocity_left'], 0.0, atol=1e-4)
  clockwise, _ = mf.bvh_features(_walk(-yaw, np.tile([0, 90.0, 0], (t, 1))))
  np.testing.assert_allclose(clockwise[:, 3], -rate, rtol=1e-4)


def test_bvh_features_are_invariant_to_global_yaw_and_floor_translation():
  rng = np.random.default_rng(2)
  t, j = 12, 4
  motion = mf.BvhMotion(
      joint_names=('Hips', 'Spine', 'Head', 'LeftLeg'), parents=(-1, 0, 1, 0),
      offsets=rng.normal(size=(j, 3)), frame_time=1 / FPS,
      local_translations=rng.normal(size=(t, j, 3)) * 50,
      local_rotations=_random_rotations(rng, (t, j)))
  features, names = mf.bvh_features(motion)
  assert features.shape == (t, 4 + 6 * j) and features.dtype == np.float32
  assert names[:5] == mf.ROOT_FEATURES + ('Hips/rot6d_0',) and names[-1] == 'LeftLeg/rot6d_5'
  turn = _ry(-70.0)
  translations = motion.local_translations.copy()
  translations[:, 0] = translations[:, 0] @ turn.T + [300.0, 0.0, -120.0]
  rotations = motion.local_rotations.copy()
  rotations[:, 0] = turn @ rotations[:, 0]
  moved, _ = mf.bvh_features(dataclasses.replace(
      motion, local_translations=translations, local_rotations=rotations))
  np.testing.assert_allclose(moved, features, atol=1e-4)


def test_lafan_sized_skeleton_has_136_features():
  lines = ['HIERARCHY', 'ROOT Hips', '{', 'OFFSET 0 0 0', f'CHANNELS 6 {LAFAN_ROOT}']
  for k in range(21):
    lines += [f'JOINT J{k}', '{', 'OFFSET 0 1 0', f'CHANNELS 3 {ZYX}']
  lines += ['End Site', '{', 'OFFSET 0 1 0', '}'] + ['}'] * 22
  lines += ['MOTION', 'Frames: 2', 'Frame Time: 0.033333'] + [' '.join(['1'] * 69)] * 2
  features, names = mf.bvh_features(mf.parse_bvh('\n'.join(lines), 'lafan.bvh'))
  assert features.shape == (2, 136) and len(names) == 136


def test_rotation_6d_round_trip():
  rotations = _random_rotations(np.random.default_rng(3), (50,))
  x = mf.rotation_6d(rotations)
  assert x.shape == (50, 6)
  np.testing.assert_array_equal(x[:, :3], rotations[:, :, 0])
  np.testing.assert_array_equal(x[:, 3:], rotations[:, :, 1])
  np.testing.assert_allclose(mf.matrix_from_6d(x), rotations, atol=1e-12)
  noisy = mf.matrix_from_6d(x * 3.0 + np.random.default_rng(4).normal(size=x.shape) * 0.1)
  np.testing.assert_allclose(noisy @ np.swapaxes(noisy, -1, -2), np.tile(np.eye(3), (50, 1, 1)),
                             atol=1e-12)
  np.testing.assert_allclose(np.linalg.det(noisy), 1.0)


# H1 CSV.

def _yaw_pitch_quaternion(yaw: np.ndarray, pitch: float) -> np.ndarray:
  """x y z w of Rz(yaw) @ Ry(pitch), radians: the product q_z * q_y by hand."""
  sz, cz = np.sin(yaw / 2), np.cos(yaw / 2)
  sy, cy = np.sin(pitch / 2), np.cos(pitch / 2)
  return np.stack([-sz * sy, cz * sy, sz * cy, cz * cy], axis=-1)


def _write_h1(path, positions: np.ndarray, quaternions: np.ndarray, angles=None) -> None:
  if angles is None:
    angles = np.tile(np.linspace(-1, 1, 19), (len(positions), 1))
  np.savetxt(path, np.concatenate([positions, quaternions, angles], axis=-1), delimiter=',',
             fmt='%.12g')


@pytest.mark.parametrize('yaw', [0.6, -2.5])
def test_h1_straight_walk_gives_speed_in_heading_frame(tmp_path, yaw):
  forward_speed, left_speed, pitch, t = 1.2, -0.3, 0.2, 8
  forward = np.array([np.cos(yaw), np.sin(yaw), 0])  # Rz(yaw) applied to +X.
  left = np.array([-np.sin(yaw), np.cos(yaw), 0])  # Up x forward.
  seconds = np.arange(t)[:, None] / FPS
  positions = np.array([2.0, -1.0, 0.95]) + seconds * (forward_speed * forward
                                                       + left_speed * left)
  angles = np.random.default_rng(5).uniform(-1, 1, size=(t, 19))
  path = tmp_path / 'walk1_subject1.csv'
  _write_h1(path, positions, _yaw_pitch_quaternion(np.full(t, yaw), pitch), angles)
  clip = mf.read_clip(path)
  assert clip.name == 'walk1_subject1' and clip.fps == 30.0
  assert clip.features.shape == (t, 29) and clip.features.dtype == np.float32
  assert clip.feature_names == (mf.ROOT_FEATURES + tuple(f'root/rot6d_{k}' for k in range(6))
                                + mf.H1_JOINTS)
  columns = dict(zip(clip.feature_names, clip.features.T))
  np.testing.assert_allclose(columns['root/height'], 0.95, rtol=1e-6)
  np.testing.assert_allclose(columns['root/velocity_forward'], forward_speed, rtol=1e-4)
  np.testing.assert_allclose(columns['root/velocity_left'], left_speed, rtol=1e-4)
  np.testing.assert_allclose(columns['root/yaw_rate'], 0.0, atol=1e-4)
  # Yaw removed: the 6-D of Ry(pitch), whose columns are (cos, 0, -sin) and (0, 1, 0).
  np.testing.assert_allclose(clip.features[:, 4:10],
                             np.tile([np.cos(pitch), 0, -np.sin(pitch), 0, 1, 0], (t, 1)),
                             atol=1e-6)
  np.testing.assert_allclose(clip.features[:, 10:], angles, atol=1e-6)


def test_h1_turning_gives_yaw_rate_across_the_wrap(tmp_path):
  rate, t = -3.0, 20
  yaw = -3.0 + rate * np.arange(t) / FPS  # From -172 degrees clockwise past -180.
  path = tmp_path / 'turn.csv'
  _write_h1(path, np.tile([0.0, 0.0, 1.0], (t, 1)), _yaw_pitch_quaternion(yaw, 0.0))
  features, _ = mf.h1_features(mf.read_h1_csv(path))
  np.testing.assert_allclose(features[:, 3], rate, rtol=1e-4)
  np.testing.assert_allclose(features[:, 1:3], 0.0, atol=1e-4)


def test_h1_quaternion_is_xyzw_and_need_not_be_unit(tmp_path):
  # A 90 degree yaw, scaled by 3: the robot faces +Y, its left is -X.
  quaternion = np.tile([0.0, 0.0, 3 * np.sin(np.pi / 4), 3 * np.cos(np.pi / 4)], (3, 1))
  speed = 0.5
  for step, expected in (([0, 1, 0], [speed, 0]), ([1, 0, 0], [0, -speed])):
    path = tmp_path / 'yaw90.csv'
    _write_h1(path, np.arange(3)[:, None] / FPS * speed * np.array([step]), quaternion)
    motion = mf.read_h1_csv(path)
    np.testing.assert_allclose(np.linalg.norm(motion.root_quaternions_xyzw, axis=-1), 1.0)
    features, _ = mf.h1_features(motion)
    np.testing.assert_allclose(features[:, 1:3], np.tile(expected, (3, 1)), atol=1e-6)


def test_one_frame_clip_has_zero_rates(tmp_path):
  path = tmp_path / 'still.csv'
  _write_h1(path, np.array([[1.0, 2.0, 0.9]]), np.array([[0.0, 0.0, 0.0, 1.0]]))
  features, _ = mf.h1_features(mf.read_h1_csv(path))
  np.testing.assert_allclose(features[0, :4], [0.9, 0, 0, 0], atol=1e-7)


# read_clip and errors.

def test_read_clip_dispatches_on_suffix_case_insensitively(tmp_path):
  path = tmp_path / 'run2_subject4.BVH'
  path.write_text('\n'.join(_bvh_lines(np.zeros((3, 15)))))
  clip = mf.read_clip(path)
  assert clip.name == 'run2_subject4' and clip.features.shape == (3, 28)
  np.testing.assert_allclose(clip.fps, 30.0, rtol=1e-9)
  assert mf.CLIP_SUFFIXES == ('.bvh', '.csv')


def test_read_clip_errors_name_the_file(tmp_path):
  with pytest.raises(DataError, match=r"unknown clip format '\.txt'.*\.bvh, \.csv"):
    mf.read_clip(tmp_path / 'clip.txt')
  missing = tmp_path / 'missing.bvh'
  with pytest.raises(DataError, match=f'Cannot read motion clip {re.escape(str(missing))}'):
    mf.read_clip(missing)
  folder = tmp_path / 'folder.csv'
  folder.mkdir()
  with pytest.raises(DataError, match=re.escape(str(folder))):
    mf.read_clip(folder)
  binary = tmp_path / 'binary.bvh'
  binary.write_bytes(b'\xff\xfe\x00')
  with pytest.raises(DataError, match=re.escape(str(binary))):
    mf.read_clip(binary)


_FRAME = ' '.join(['1'] * 15)
BVH_ERRORS = {
    # name: (edits {1-based line: replacement}, expected message after '<path> ').
    'no_hierarchy': ({1: ''}, r'line 2: expected HIERARCHY'),
    'no_motion': ({n: '' for n in range(MOTION_LINE, FIRST_FRAME_LINE + 3)},
                  r': no MOTION line'),
    'unknown_keyword': ({8: 'OFSET 0 10 0'}, r"line 8: unknown keyword 'OFSET'"),
    'bad_offset': ({8: 'OFFSET 0 x 0'}, r"line 8: 'x' is not a number"),
    'channel_count': ({9: 'CHANNELS 3 Zrotation Yrotation'},
                      r'line 9: CHANNELS declares 3 channels but lists 2'),
    'unknown_channel': ({9: 'CHANNELS 3 Zrotation Yrotation Wrotation'},
                        r"line 9: unknown channel 'Wrotation'"),
    'missing_open_brace': ({7: ''}, r"line 8: expected '\{' after"),
    'missing_close_brace': ({29: ''}, r'line 31: MOTION with 1 block\(s\) still open'),
    'extra_close_brace': ({30: '}'}, r"line 30: '\}' without a matching '\{'"),
    'no_frames_line': ({FRAMES_LINE: ''}, r"line 31: expected 'Frames: N'"),
    'no_frame_time': ({FRAMES_LINE + 1: ''}, r"line 32: expected 'Frame Time: t'"),
    'frames_count': ({FRAMES_LINE: 'Frames: 4'}, r"line 32: 'Frames: 4' but 3 frame lines"),
    'short_frame': ({35: ' '.join(['1'] * 14)}, r'line 35: expected 15 values .* got 14'),
    'not_a_number': ({35: _FRAME[:-1] + 'abc'}, r"line 35: 'abc' is not a number"),
    'nan': ({36: _FRAME[:-1] + 'nan'}, r'line 36: NaN or infinite'),
    'inf': ({34: '-inf ' + _FRAME[2:]}, r'line 34: NaN or infinite'),
    'zero_frames': ({FRAMES_LINE: 'Frames: 0', 34: '', 35: '', 36: ''},
                    r'line 32: the clip has zero frames'),
}


@pytest.mark.parametrize('case', BVH_ERRORS)
def test_bvh_errors_name_file_and_line(tmp_path, case):
  edits, message = BVH_ERRORS[case]
  lines = _bvh_lines(np.ones((3, 15)))
  assert lines[MOTION_LINE - 1] == 'MOTION' and lines[FIRST_FRAME_LINE - 1] == _FRAME
  for n, replacement in edits.items():
    lines[n - 1] = replacement
  path = tmp_path / f'{case}.bvh'
  path.write_text('\n'.join(lines))
  with pytest.raises(DataError, match=re.escape(str(path)) + ' ?' + message) as error:
    mf.read_clip(path)
  assert '\n' not in str(error.value)


_ROW = ','.join(['0', '0', '1', '0', '0', '0', '1'] + ['0.5'] * 19)
H1_ERRORS = {
    'columns': ({2: ','.join(_ROW.split(',')[:25])}, r'line 2: 25 columns, expected 26'),
    'not_a_number': ({3: _ROW[:-3] + 'abc'}, r"line 3: 'abc' is not a number"),
    'empty_field': ({1: _ROW[:-3]}, r"line 1: '' is not a number"),
    'nan': ({2: 'nan' + _ROW[1:]}, r'line 2: NaN or infinite'),
    'inf': ({3: _ROW[:-3] + 'inf'}, r'line 3: NaN or infinite'),
    'zero_quaternion': ({2: _ROW.replace('0,0,1,0,0,0,1', '0,0,1,0,0,0,0')},
                        r'line 2: the root quaternion .* zero norm'),
    'empty': ({1: '', 2: ' ', 3: ''}, r' is empty'),
}


@pytest.mark.parametrize('case', H1_ERRORS)
def test_h1_errors_name_file_and_line(tmp_path, case):
  edits, message = H1_ERRORS[case]
  lines = [_ROW] * 3
  for n, replacement in edits.items():
    lines[n - 1] = replacement
  path = tmp_path / f'{case}.csv'
  path.write_text('\r\n'.join(lines) + '\r\n')
  with pytest.raises(DataError, match=re.escape(str(path)) + ' ?' + message) as error:
    mf.read_clip(path)
  assert '\n' not in str(error.value)
