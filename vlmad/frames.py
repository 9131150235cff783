"""Coordinate frames and transforms: the one module that owns them (see docs/coordinate_systems.md).

Internal frame ("ego"): x forward, y left, z up, metres, right-handed, origin at the ego reference point
(nuScenes ego_pose convention: rear-axle centre projected on the ground). Yaw is counter-clockwise seen
from above, radians.

Other frames met at ingestion:
- nuScenes LIDAR_TOP / VAD planning frame: x right, y forward, z up. VAD plans are displacements of
  the lidar sensor in this frame; `lidar_xy_to_ego` rotates them into our axes.
- Camera (OpenCV optical): x right, y down, z forward. `CAM_FROM_BODY` maps body axes to optical axes.
- CARLA: left-handed, x forward, y right, z up; yaw/pitch/roll in degrees, yaw clockwise seen from
  above. Points convert by flipping y; rotations by conjugation with diag(1, -1, 1).

All matrices are 4x4 homogeneous `float64` numpy arrays named `<to>_from_<from>` or `<from>2<to>`.
"""

from __future__ import annotations

import math

import numpy as np

# Rotation taking a vector in body axes (x fwd, y left, z up) to camera optical axes (x right, y down,
# z forward). Its transpose takes optical axes to body axes.
CAM_FROM_BODY = np.array([[0.0, -1.0, 0.0], [0.0, 0.0, -1.0], [1.0, 0.0, 0.0]])

# Nominal nuScenes LIDAR_TOP orientation: lidar x points to the ego's right, lidar y forward.
# ego_from_lidar rotation (3x3). Real samples carry their own calibration; this is for VAD-format I/O.
EGO_FROM_LIDAR_ROT = np.array([[0.0, 1.0, 0.0], [-1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])

_FLIP_Y = np.diag([1.0, -1.0, 1.0])


# ----------------------------------------------------------------------------------------------------
# Basic rotations and rigid transforms
# ----------------------------------------------------------------------------------------------------
def rot_z(yaw: float) -> np.ndarray:
    """3x3 rotation about +z by `yaw` radians (counter-clockwise seen from above)."""
    c, s = math.cos(yaw), math.sin(yaw)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def rot_y(pitch: float) -> np.ndarray:
    c, s = math.cos(pitch), math.sin(pitch)
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


def rot_x(roll: float) -> np.ndarray:
    c, s = math.cos(roll), math.sin(roll)
    return np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])


def euler_to_rotmat(roll: float, pitch: float, yaw: float) -> np.ndarray:
    """Right-handed intrinsic z-y'-x'' rotation (yaw, then pitch, then roll), radians.

    Positive pitch here rotates +x toward -z (nose down) as in any right-handed frame with y left.
    """
    return rot_z(yaw) @ rot_y(pitch) @ rot_x(roll)


def yaw_of(rot: np.ndarray) -> float:
    """Yaw (radians, CCW) of a 3x3 rotation or 4x4 transform: heading of its x axis in the xy plane."""
    return math.atan2(rot[1, 0], rot[0, 0])


def wrap_angle(a: float | np.ndarray) -> float | np.ndarray:
    """Wrap radians to [-pi, pi)."""
    return (np.asarray(a) + np.pi) % (2 * np.pi) - np.pi


def quat_to_rotmat(q: tuple[float, float, float, float] | np.ndarray) -> np.ndarray:
    """Unit quaternion (w, x, y, z), the nuScenes order, to a 3x3 rotation."""
    w, x, y, z = (float(v) for v in q)
    n = math.sqrt(w * w + x * x + y * y + z * z)
    if n == 0:
        raise ValueError("zero quaternion")
    w, x, y, z = w / n, x / n, y / n, z / n
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
    ])


def rotmat_to_quat(r: np.ndarray) -> list[float]:
    """3x3 rotation to a unit quaternion [w, x, y, z] with w >= 0."""
    r = np.asarray(r, dtype=np.float64)[:3, :3]
    tr = np.trace(r)
    if tr > 0:
        s = math.sqrt(tr + 1.0) * 2
        q = [0.25 * s, (r[2, 1] - r[1, 2]) / s, (r[0, 2] - r[2, 0]) / s, (r[1, 0] - r[0, 1]) / s]
    elif r[0, 0] > r[1, 1] and r[0, 0] > r[2, 2]:
        s = math.sqrt(1.0 + r[0, 0] - r[1, 1] - r[2, 2]) * 2
        q = [(r[2, 1] - r[1, 2]) / s, 0.25 * s, (r[0, 1] + r[1, 0]) / s, (r[0, 2] + r[2, 0]) / s]
    elif r[1, 1] > r[2, 2]:
        s = math.sqrt(1.0 + r[1, 1] - r[0, 0] - r[2, 2]) * 2
        q = [(r[0, 2] - r[2, 0]) / s, (r[0, 1] + r[1, 0]) / s, 0.25 * s, (r[1, 2] + r[2, 1]) / s]
    else:
        s = math.sqrt(1.0 + r[2, 2] - r[0, 0] - r[1, 1]) * 2
        q = [(r[1, 0] - r[0, 1]) / s, (r[0, 2] + r[2, 0]) / s, (r[1, 2] + r[2, 1]) / s, 0.25 * s]
    q = np.array(q)
    q /= np.linalg.norm(q)
    if q[0] < 0:
        q = -q
    return [float(v) for v in q]


def make_transform(rot: np.ndarray, trans: np.ndarray | list[float] | tuple[float, ...]) -> np.ndarray:
    """4x4 homogeneous transform from a 3x3 rotation and a 3-vector translation."""
    t = np.eye(4)
    t[:3, :3] = np.asarray(rot, dtype=np.float64)[:3, :3]
    t[:3, 3] = np.asarray(trans, dtype=np.float64)[:3]
    return t


def pose_to_matrix(translation: list[float] | np.ndarray,
                   rotation_wxyz: list[float] | np.ndarray) -> np.ndarray:
    """nuScenes-style pose (translation xyz, quaternion wxyz) to a 4x4 `parent_from_child` transform."""
    return make_transform(quat_to_rotmat(rotation_wxyz), translation)


def invert_transform(t: np.ndarray) -> np.ndarray:
    """Inverse of a rigid 4x4 transform (uses R^T rather than a general inverse)."""
    inv = np.eye(4)
    r = t[:3, :3]
    inv[:3, :3] = r.T
    inv[:3, 3] = -r.T @ t[:3, 3]
    return inv


def transform_points(t: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """Apply a 4x4 transform to points (..., 3) or (..., 2) (z = 0 assumed for 2-D, 2-D returned)."""
    pts = np.asarray(pts, dtype=np.float64)
    two_d = pts.shape[-1] == 2
    if two_d:
        pts = np.concatenate([pts, np.zeros(pts.shape[:-1] + (1,))], axis=-1)
    out = pts @ t[:3, :3].T + t[:3, 3]
    return out[..., :2] if two_d else out


# ----------------------------------------------------------------------------------------------------
# Ego <-> world, temporal alignment
# ----------------------------------------------------------------------------------------------------
def se2_pose(x: float, y: float, yaw: float, z: float = 0.0) -> np.ndarray:
    """4x4 `world_from_ego` for a planar pose (x, y, yaw in radians)."""
    return make_transform(rot_z(yaw), [x, y, z])


def world_to_ego(world_from_ego: np.ndarray, pts_world: np.ndarray) -> np.ndarray:
    """Points in world coordinates (..., 2|3) into the ego frame of pose `world_from_ego`."""
    return transform_points(invert_transform(world_from_ego), pts_world)


def relative_motion(world_from_prev: np.ndarray, world_from_cur: np.ndarray) -> np.ndarray:
    """`cur_from_prev`: maps points in the previous ego frame into the current ego frame.

    Used for temporal BEV alignment: a BEV cell at position p in the previous frame is at
    `cur_from_prev @ p` now.
    """
    return invert_transform(world_from_cur) @ world_from_prev


# ----------------------------------------------------------------------------------------------------
# VAD / nuScenes LIDAR_TOP planning frame
# ----------------------------------------------------------------------------------------------------
def lidar_xy_to_ego(xy: np.ndarray, ego_from_lidar_rot: np.ndarray = EGO_FROM_LIDAR_ROT) -> np.ndarray:
    """Displacements (..., 2) in VAD's LIDAR_TOP frame (x right, y forward) to ego (x fwd, y left).

    Only the rotation applies (vectors, not points). Note that VAD's planning targets are displacements
    of the LIDAR_TOP *sensor* (not of the ego origin) since the current keyframe; `openloop.gt` scores
    such plans against the lidar's ground-truth path (see docs/metrics.md). Pass the sample's calibrated
    rotation for exactness.
    """
    xy = np.asarray(xy, dtype=np.float64)
    return xy @ np.asarray(ego_from_lidar_rot)[:2, :2].T


def ego_xy_to_lidar(xy: np.ndarray, ego_from_lidar_rot: np.ndarray = EGO_FROM_LIDAR_ROT) -> np.ndarray:
    """Inverse of `lidar_xy_to_ego`."""
    xy = np.asarray(xy, dtype=np.float64)
    return xy @ np.asarray(ego_from_lidar_rot)[:2, :2]


# ----------------------------------------------------------------------------------------------------
# Cameras
# ----------------------------------------------------------------------------------------------------
def project_points(img_from_ego: np.ndarray, pts_ego: np.ndarray, min_depth: float = 0.1
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Project ego-frame points (N, 3) with a 4x4 `img_from_ego` (intrinsics @ cam_from_ego).

    Returns (uv (N, 2) pixels, depth (N,) metres along the optical axis, in_front (N,) bool).
    Points with depth < `min_depth` are behind the camera: their uv is NaN.
    """
    pts = np.asarray(pts_ego, dtype=np.float64).reshape(-1, 3)
    hom = np.concatenate([pts, np.ones((len(pts), 1))], axis=1) @ np.asarray(img_from_ego).T
    depth = hom[:, 2]
    in_front = depth >= min_depth
    uv = np.full((len(pts), 2), np.nan)
    uv[in_front] = hom[in_front, :2] / depth[in_front, None]
    return uv, depth, in_front


# ----------------------------------------------------------------------------------------------------
# CARLA (left-handed, degrees)
# ----------------------------------------------------------------------------------------------------
def carla_to_ego_xyz(x: float | np.ndarray, y: float | np.ndarray,
                     z: float | np.ndarray = 0.0) -> np.ndarray:
    """A CARLA location (x fwd/east, y right/south, z up) to our right-handed convention (flip y)."""
    xs, ys, zs = np.broadcast_arrays(np.asarray(x, float), -np.asarray(y, float), np.asarray(z, float))
    return np.stack([xs, ys, zs], -1)


def ego_to_carla_xyz(pts: np.ndarray) -> np.ndarray:
    """Inverse of `carla_to_ego_xyz`: (..., 3) right-handed -> CARLA left-handed."""
    pts = np.array(pts, dtype=np.float64)
    pts[..., 1] = -pts[..., 1]
    return pts


def carla_yaw_to_ego(yaw_deg: float | np.ndarray) -> float | np.ndarray:
    """CARLA yaw (degrees, clockwise seen from above) to ours (radians, counter-clockwise), wrapped."""
    return wrap_angle(-np.radians(yaw_deg))


def ego_yaw_to_carla(yaw_rad: float | np.ndarray) -> float | np.ndarray:
    """Our yaw (radians, CCW) to CARLA yaw (degrees, clockwise), in [-180, 180)."""
    return np.degrees(wrap_angle(-np.asarray(yaw_rad, dtype=np.float64)))


def carla_mount_to_ego(x: float, y: float, z: float, roll_deg: float, pitch_deg: float,
                       yaw_deg: float) -> tuple[float, float, float, float, float, float]:
    """A sensor mount (position in m, angles in degrees) given in CARLA's convention (y right, left-handed)
    in ours (y left, right-handed): y, pitch and yaw change sign, x, z and roll do not."""
    return float(x), -float(y), float(z), float(roll_deg), -float(pitch_deg), -float(yaw_deg)


def ego_mount_to_carla(x: float, y: float, z: float, roll_deg: float, pitch_deg: float,
                       yaw_deg: float) -> tuple[float, float, float, float, float, float]:
    """Inverse of `carla_mount_to_ego` (the same sign flips: the conversion is its own inverse)."""
    return carla_mount_to_ego(x, y, z, roll_deg, pitch_deg, yaw_deg)


def carla_rotation_matrix(roll_deg: float, pitch_deg: float, yaw_deg: float) -> np.ndarray:
    """3x3 rotation of a CARLA `Rotation(pitch, yaw, roll)`, in CARLA's own left-handed axes.

    Matches `carla.Transform(Location(), Rotation(...)).get_matrix()` (Unreal's convention).
    """
    cy, sy = math.cos(math.radians(yaw_deg)), math.sin(math.radians(yaw_deg))
    cp, sp = math.cos(math.radians(pitch_deg)), math.sin(math.radians(pitch_deg))
    cr, sr = math.cos(math.radians(roll_deg)), math.sin(math.radians(roll_deg))
    return np.array([
        [cp * cy, cy * sp * sr - sy * cr, -cy * sp * cr - sy * sr],
        [cp * sy, sy * sp * sr + cy * cr, -sy * sp * cr + cy * sr],
        [sp, -cp * sr, cp * cr],
    ])


def carla_transform_to_ego(x: float, y: float, z: float, roll_deg: float, pitch_deg: float,
                           yaw_deg: float) -> np.ndarray:
    """A CARLA transform (location + rotation) as a 4x4 transform in our right-handed convention."""
    r = _FLIP_Y @ carla_rotation_matrix(roll_deg, pitch_deg, yaw_deg) @ _FLIP_Y
    return make_transform(r, carla_to_ego_xyz(x, y, z))


def img_from_ego_calibrated(intrinsics: np.ndarray, ego_from_cam: np.ndarray, sx: float = 1.0,
                            sy: float = 1.0) -> np.ndarray:
    """4x4 `img_from_ego` for a calibrated camera (K 3x3, `ego_from_cam` 4x4 in optical axes) whose image
    was resized by (sx, sy). Padding at the bottom/right does not change it."""
    k = np.eye(4)
    k[:3, :3] = np.asarray(intrinsics, dtype=np.float64)
    k[0] *= sx
    k[1] *= sy
    return k @ invert_transform(np.asarray(ego_from_cam, dtype=np.float64))


# ----------------------------------------------------------------------------------------------------
# carla objects (Location / Transform) <-> our frame: the only place the y-flip is written for them.
# Readers duck-type (anything with .x/.y/.z, .location/.rotation works, also CARLA 0.9.10's objects under
# the leaderboard); writers import carla on first use so that training code importing this module does
# not load the CARLA client.
# ----------------------------------------------------------------------------------------------------
def carla_location_to_ego(loc) -> np.ndarray:
    """A carla.Location -> (3,) float64 (x, y, z) in our right-handed frame."""
    return np.array([float(loc.x), -float(loc.y), float(loc.z)])


def carla_locations_to_ego_xy(locs) -> np.ndarray:
    """An iterable of carla.Location -> (N, 2) float64 (x, y) in our right-handed frame ((0, 2) if empty)."""
    return np.array([[float(loc.x), -float(loc.y)] for loc in locs], dtype=np.float64).reshape(-1, 2)


def carla_pose_to_ego(transform) -> tuple[np.ndarray, float]:
    """A carla.Transform (or Waypoint.transform) -> ((3,) float64 position, yaw radians CCW) in our frame;
    pitch and roll are dropped (road poses)."""
    return carla_location_to_ego(transform.location), float(carla_yaw_to_ego(transform.rotation.yaw))


def ego_to_carla_location(p: np.ndarray | tuple | list):
    """(x, y[, z]) in our frame -> carla.Location (z = 0 when absent)."""
    import carla

    return carla.Location(float(p[0]), float(-p[1]), float(p[2]) if len(p) > 2 else 0.0)


def ego_pose_to_carla_transform(x: float, y: float, z: float, yaw: float):
    """A planar pose in our frame (yaw radians CCW) -> carla.Transform (pitch = roll = 0)."""
    import carla

    return carla.Transform(
        carla.Location(float(x), float(-y), float(z)),
        carla.Rotation(pitch=0.0, yaw=float(ego_yaw_to_carla(yaw)), roll=0.0),
    )


def carla_imu_to_ego(accel: np.ndarray, gyro: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A CARLA IMU reading in its sensor's left-handed axes (x forward, y right, z up) -> ours.

    accel: (3,) m/s^2, a polar vector: its y flips. gyro: (3,) rad/s, an axial vector: under the y mirror
    its x and z flip (a left turn, +z for us, reads negative z in CARLA). Returns (accel, gyro), (3,) each.
    The mirror is its own inverse, so `ego_imu_to_carla` is the same map.
    """
    a = np.asarray(accel, dtype=np.float64).reshape(3)
    w = np.asarray(gyro, dtype=np.float64).reshape(3)
    return np.array([a[0], -a[1], a[2]]), np.array([-w[0], w[1], -w[2]])


def ego_imu_to_carla(accel: np.ndarray, gyro: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of `carla_imu_to_ego`: our (accel, gyro) (3,) each -> CARLA's IMU axes."""
    return carla_imu_to_ego(accel, gyro)
