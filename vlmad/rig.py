"""The sensor rig: defined once; every intrinsic and extrinsic in the project is derived from it.

The agent's `sensors()`, the offline world's renderer, the trajectory overlay of the teacher, the dataset
writer and the model's `img_from_ego` matrices all call this module. There are no hand-copied matrices
anywhere else (the upstream VAD CARLA agent hard-coded lidar2img apart from its sensor list and got the
back cameras wrong for a while; this is the cure).

Positions and angles are stored in our ego frame (x forward, y left, z up; yaw counter-clockwise, pitch
positive nose-down as in any right-handed frame with y left). `carla_sensor()` converts to CARLA's
left-handed convention (y right, yaw clockwise, pitch positive nose-up).

A driving checkpoint records the rig its training data was seen through (`describe_calibration` of the
training records, or `describe_rig`, in meta.json "training_rig"); the agent compares it with the rig it
drives with (`rig_differences`) and warns once at setup when they differ: a model trained on one camera
geometry sees another one's images at the wrong places.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from vlmad.frames import (
    CAM_FROM_BODY,
    carla_mount_to_ego,
    ego_mount_to_carla,
    euler_to_rotmat,
    invert_transform,
    make_transform,
)

# Camera order used everywhere (VAD / nuScenes infos order).
CAMERA_NAMES = (
    "CAM_FRONT", "CAM_FRONT_RIGHT", "CAM_FRONT_LEFT", "CAM_BACK", "CAM_BACK_LEFT", "CAM_BACK_RIGHT",
)


@dataclass(frozen=True)
class CameraSpec:
    """One pinhole camera of the rig."""

    name: str  # nuScenes channel name, e.g. CAM_FRONT
    x: float  # mount position in the ego frame, metres forward of the ego origin
    y: float  # metres to the left of the ego origin
    z: float  # metres above the ground
    yaw_deg: float  # heading of the optical axis, degrees counter-clockwise from ego +x
    fov_deg: float  # horizontal field of view, degrees
    width: int = 1600  # image width, pixels
    height: int = 900  # image height, pixels
    pitch_deg: float = 0.0  # right-handed pitch, positive tilts the optical axis down
    roll_deg: float = 0.0  # roll about the optical axis, degrees

    @property
    def focal(self) -> float:
        """Focal length in pixels from the horizontal FOV (square pixels)."""
        return self.width / (2.0 * math.tan(math.radians(self.fov_deg) / 2.0))

    def intrinsics(self, scale: float = 1.0) -> np.ndarray:
        """3x3 K for the image resized by `scale` (principal point at the image centre)."""
        f = self.focal * scale
        cx, cy = self.width * scale / 2.0, self.height * scale / 2.0
        return np.array([[f, 0.0, cx], [0.0, f, cy], [0.0, 0.0, 1.0]])

    def ego_from_body(self) -> np.ndarray:
        """4x4 pose of the camera body (x along the optical axis, y left, z up) in the ego frame."""
        rot = euler_to_rotmat(*(math.radians(a) for a in (self.roll_deg, self.pitch_deg, self.yaw_deg)))
        return make_transform(rot, [self.x, self.y, self.z])

    def ego_from_cam(self) -> np.ndarray:
        """4x4 `ego_from_cam` with the camera in OpenCV optical axes (x right, y down, z forward)."""
        body = self.ego_from_body()
        return make_transform(body[:3, :3] @ CAM_FROM_BODY.T, body[:3, 3])

    def cam_from_ego(self) -> np.ndarray:
        return invert_transform(self.ego_from_cam())

    def img_from_ego(self, scale: float = 1.0) -> np.ndarray:
        """4x4 projection ego -> pixels (homogeneous) for the image resized by `scale`."""
        k = np.eye(4)
        k[:3, :3] = self.intrinsics(scale)
        return k @ self.cam_from_ego()

    def carla_sensor(self) -> dict:
        """Leaderboard `sensors()` entry in CARLA's left-handed convention."""
        x, y, z, roll, pitch, yaw = ego_mount_to_carla(self.x, self.y, self.z, self.roll_deg, self.pitch_deg,
                                                       self.yaw_deg)
        return {
            "type": "sensor.camera.rgb", "id": self.name, "x": x, "y": y, "z": z,
            "roll": roll, "pitch": pitch, "yaw": yaw,
            "width": self.width, "height": self.height, "fov": self.fov_deg,
        }

    @classmethod
    def from_carla_sensor(cls, d: dict) -> CameraSpec:
        """Inverse of `carla_sensor`: a leaderboard camera entry (CARLA convention) as a CameraSpec.

        Missing optional keys take CARLA's defaults (fov 90, 800x600, zero angles)."""
        x, y, z, roll, pitch, yaw = carla_mount_to_ego(d["x"], d["y"], d["z"], d.get("roll", 0.0),
                                                       d.get("pitch", 0.0), d.get("yaw", 0.0))
        return cls(
            name=str(d["id"]), x=x, y=y, z=z, yaw_deg=yaw, fov_deg=float(d.get("fov", 90.0)),
            width=int(d.get("width", 800)), height=int(d.get("height", 600)), pitch_deg=pitch, roll_deg=roll,
        )

    def resized(self, width: int, height: int) -> CameraSpec:
        """Same camera with another image size and the same FOV (the renderer uses this)."""
        return replace(self, width=width, height=height)


@dataclass(frozen=True)
class Rig:
    """A vehicle sensor rig: 6 cameras plus the positions of the non-image sensors."""

    name: str  # rig name, recorded in datasets and (with its geometry, `describe_rig`) in checkpoints
    cameras: tuple[CameraSpec, ...]  # in CAMERA_NAMES order
    lidar_xyz: tuple[float, float, float] = (0.94, 0.0, 1.84)  # LIDAR_TOP position (nuScenes layout)
    lidar_yaw_deg: float = -90.0  # LIDAR_TOP x axis points to the ego's right
    imu_x: float = -1.4  # IMU / GNSS mount, metres forward of the ego origin (CARLA agent convention)

    @property
    def camera_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.cameras)

    def camera(self, name: str) -> CameraSpec:
        for c in self.cameras:
            if c.name == name:
                return c
        raise KeyError(f"rig {self.name!r} has no camera {name!r}; cameras: {self.camera_names}")

    def img_from_ego(self, scale: float = 1.0) -> np.ndarray:
        """(N_cam, 4, 4) projection matrices for images resized by `scale`."""
        return np.stack([c.img_from_ego(scale) for c in self.cameras])

    def ego_from_lidar(self) -> np.ndarray:
        return make_transform(euler_to_rotmat(0.0, 0.0, math.radians(self.lidar_yaw_deg)), self.lidar_xyz)

    def with_image_size(self, width: int, height: int) -> Rig:
        """The same rig rendering at another resolution (same FOVs)."""
        return replace(self, cameras=tuple(c.resized(width, height) for c in self.cameras))

    def carla_sensors(self) -> list[dict]:
        """The full leaderboard `sensors()` list: cameras, GNSS, IMU, speedometer."""
        out = [c.carla_sensor() for c in self.cameras]
        common = {"x": self.imu_x, "y": 0.0, "z": 0.0, "roll": 0.0, "pitch": 0.0, "yaw": 0.0}
        out.append({"type": "sensor.other.gnss", "id": "GPS", **common})
        out.append({"type": "sensor.other.imu", "id": "IMU", **common, "sensor_tick": 0.05})
        out.append({"type": "sensor.speedometer", "id": "SPEED", "reading_frequency": 20})
        return out


def _carla_cam(name: str, x: float, y_right: float, yaw_cw: float, fov: float) -> CameraSpec:
    """A camera given in CARLA's convention (y right, yaw clockwise), stored in ours."""
    x, y, z, _, _, yaw = carla_mount_to_ego(x, y_right, 1.60, 0.0, 0.0, yaw_cw)
    return CameraSpec(name=name, x=x, y=y, z=z, yaw_deg=yaw, fov_deg=fov)


# The CARLA rig of the public VAD CARLA agent (Bench2DriveZoo), docs/facts.md section 8.
CARLA_RIG = Rig(
    name="carla_vad",
    cameras=(
        _carla_cam("CAM_FRONT", 0.80, 0.00, 0.0, 70.0),
        _carla_cam("CAM_FRONT_RIGHT", 0.27, 0.55, 55.0, 70.0),
        _carla_cam("CAM_FRONT_LEFT", 0.27, -0.55, -55.0, 70.0),
        _carla_cam("CAM_BACK", -2.00, 0.00, 180.0, 110.0),
        _carla_cam("CAM_BACK_LEFT", -0.32, -0.55, -110.0, 70.0),
        _carla_cam("CAM_BACK_RIGHT", -0.32, 0.55, 110.0, 70.0),
    ),
)

# Nominal nuScenes rig (typical calibration of the Renault Zoe; real samples carry their own
# calibrated_sensor records, which the data layer always prefers). FOV from fx = 1266 px (front/side)
# and 809 px (back) at 1600 px width.
NUSCENES_RIG = Rig(
    name="nuscenes_nominal",
    cameras=(
        CameraSpec("CAM_FRONT", 1.70, 0.02, 1.51, 0.0, 64.6),
        CameraSpec("CAM_FRONT_RIGHT", 1.55, -0.49, 1.50, -55.0, 64.6),
        CameraSpec("CAM_FRONT_LEFT", 1.52, 0.49, 1.51, 55.0, 64.6),
        CameraSpec("CAM_BACK", 0.03, 0.00, 1.57, 180.0, 89.4),
        CameraSpec("CAM_BACK_LEFT", 1.04, 0.48, 1.56, 110.0, 64.6),
        CameraSpec("CAM_BACK_RIGHT", 1.04, -0.48, 1.57, -110.0, 64.6),
    ),
)

RIGS = {CARLA_RIG.name: CARLA_RIG, NUSCENES_RIG.name: NUSCENES_RIG}


# ----------------------------------------------------------------------------------------------------
# Rig geometry as recorded in checkpoints, and its comparison
# ----------------------------------------------------------------------------------------------------
RIG_POS_TOL_M = 0.05  # camera mounts closer than this are the same (calibrations of one rig vary by ~cm)
RIG_ANGLE_TOL_DEG = 1.0  # optical-axis yaw / pitch and horizontal FOV closer than this are the same


def camera_geometry(intrinsics: np.ndarray, ego_from_cam: np.ndarray, width: int) -> dict:
    """What a camera contributes to the rig's identity, from its calibration (K 3x3, `ego_from_cam` 4x4
    in optical axes, image width in pixels): {"xyz": [x, y, z] m in the ego frame, "yaw_deg", "pitch_deg"
    of the optical axis (our convention, pitch positive nose-down), "fov_deg": horizontal FOV}, rounded
    to mm / 0.001 deg so that it stores as plain JSON. The image size is left out: the model's input size
    comes from its config, whatever the camera's resolution."""
    e = np.asarray(ego_from_cam, dtype=np.float64)
    axis = e[:3, :3] @ np.array([0.0, 0.0, 1.0])  # optical axis (camera z) in the ego frame
    fx = float(np.asarray(intrinsics, dtype=np.float64)[0, 0])
    yaw = round(math.degrees(math.atan2(axis[1], axis[0])), 3) + 0.0  # + 0.0: no "-0.0" in the file
    return {
        "xyz": [round(float(v), 3) + 0.0 for v in e[:3, 3]],
        "yaw_deg": 180.0 if yaw == -180.0 else yaw,  # in (-180, 180]: a backward axis reads the same
        "pitch_deg": round(math.degrees(math.asin(max(-1.0, min(1.0, -axis[2])))), 3) + 0.0,
        "fov_deg": round(math.degrees(2.0 * math.atan(width / (2.0 * fx))), 3),
    }


def describe_rig(rig: Rig) -> dict:
    """{"name": rig.name, "cameras": {camera name: camera_geometry}} of a `Rig`."""
    return {"name": rig.name, "cameras": {
        c.name: camera_geometry(c.intrinsics(), c.ego_from_cam(), c.width) for c in rig.cameras}}


def describe_calibration(cams: dict) -> dict:
    """The rig description of a record's calibrated cameras (`cams`: name -> {"intrinsics", "ego_from_cam",
    "width", ...}, as nusc.records writes them). "name" is the `RIGS` rig it matches within the tolerances,
    else "custom"."""
    desc = {"name": "custom", "cameras": {
        n: camera_geometry(c["intrinsics"], c["ego_from_cam"], int(c["width"])) for n, c in cams.items()}}
    for rig in RIGS.values():
        if not rig_differences(describe_rig(rig), desc):
            desc["name"] = rig.name
            break
    return desc


def rig_differences(trained: dict, driving: dict) -> list[str]:
    """Human-readable differences between two rig descriptions (`describe_rig` / `describe_calibration`)
    beyond RIG_POS_TOL_M / RIG_ANGLE_TOL_DEG, cameras of `driving` only (the agent passes the cameras the
    model uses); [] when the geometry agrees. Names are not compared: geometry is what the model learned."""
    out: list[str] = []
    have = trained.get("cameras", {})
    for name, d in driving.get("cameras", {}).items():
        t = have.get(name)
        if t is None:
            out.append(f"{name}: not in the training rig")
            continue
        if max(abs(a - b) for a, b in zip(t["xyz"], d["xyz"])) > RIG_POS_TOL_M:
            out.append(f"{name}: mount {t['xyz']} vs {d['xyz']} m")
        for key, what in (("yaw_deg", "yaw"), ("pitch_deg", "pitch"), ("fov_deg", "fov")):
            delta = (d[key] - t[key] + 180.0) % 360.0 - 180.0
            if abs(delta) > RIG_ANGLE_TOL_DEG:
                out.append(f"{name}: {what} {t[key]:g} vs {d[key]:g} deg")
    return out


def rig_mismatch(training_rig: dict | None, rig: Rig, max_items: int = 6) -> str | None:
    """One log line naming how `rig` (the cameras a model drives with) differs from the `training_rig`
    description its checkpoint records, or None when they agree or the checkpoint records none."""
    if not isinstance(training_rig, dict):
        return None
    diffs = rig_differences(training_rig, describe_rig(rig))
    if not diffs:
        return None
    more = f"; and {len(diffs) - max_items} more" if len(diffs) > max_items else ""
    return (f"rig mismatch: the checkpoint was trained on rig {training_rig.get('name')!r}, the agent drives "
            f"rig {rig.name!r}; {len(diffs)} difference(s): " + "; ".join(diffs[:max_items]) + more
            + " (the model sees its cameras where it never learned them: expect worse driving)")
