"""A small procedural nuScenes-format dataset for the tests and the benchmarks (scripts/bench_*.py).

Each scene is an ego car following a two-lane road (scene index mod 3: 0 gently curving, 1 turning left,
2 turning right) with a lead car, an oncoming car, a parked truck and a pedestrian on a crossing. Camera
images are flat-shaded renders (sky, ground, road, edges, divider, crossing and boxes) projected with the
rig's own matrices. Quality is secondary: every value in the written tables is known exactly, so
round-trip tests can check the data layer against the drive it was written from. The richer offline
world lives elsewhere.
"""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np

from nusc.writer import AgentBox, DriveFrame, RecordedDrive, write_nuscenes
from vlmad.frames import project_points, rot_z, se2_pose, world_to_ego
from vlmad.rig import NUSCENES_RIG, Rig

LANE_W = 3.5  # metres; the road has one lane per direction, the divider is the centreline
KEY_DT_US = 500_000  # keyframes at 2 Hz, as in nuScenes
SUBSTEPS = 5  # CAN bus / non-keyframe steps per keyframe (10 Hz)
CAR_SIZE = np.array([4.5, 1.9, 1.6])  # l, w, h
PED_SIZE = np.array([0.6, 0.6, 1.75])


class Road:
    """A centreline parametrised by arc length s (1 m samples): heading from a curvature profile."""

    def __init__(self, x0: float, y0: float, heading0: float, length: float, curvature_fn):
        self.s = np.arange(0.0, length + 1.0, 1.0)
        k = np.array([curvature_fn(s) for s in self.s])
        self.heading = heading0 + np.concatenate([[0.0], np.cumsum(0.5 * (k[1:] + k[:-1]))])
        dx, dy = np.cos(self.heading), np.sin(self.heading)
        self.xy = np.stack(
            [
                x0 + np.concatenate([[0.0], np.cumsum(0.5 * (dx[1:] + dx[:-1]))]),
                y0 + np.concatenate([[0.0], np.cumsum(0.5 * (dy[1:] + dy[:-1]))]),
            ],
            axis=1,
        )

    def pose(self, s: float, offset: float = 0.0) -> tuple[float, float, float]:
        """(x, y, heading) at arc length s, shifted `offset` metres to the left of the centreline."""
        s = float(np.clip(s, self.s[0], self.s[-1]))
        x = np.interp(s, self.s, self.xy[:, 0])
        y = np.interp(s, self.s, self.xy[:, 1])
        h = np.interp(s, self.s, self.heading)
        return x - offset * math.sin(h), y + offset * math.cos(h), h

    def edge(self, offset: float) -> np.ndarray:
        """(N, 2) polyline `offset` metres left of the centreline."""
        n = np.stack([-np.sin(self.heading), np.cos(self.heading)], axis=1)
        return self.xy + offset * n


def _box_corners(b: AgentBox) -> np.ndarray:
    """(8, 3) world corners of a box."""
    lx, wy, hz = (float(v) / 2 for v in b.size)
    c = np.array([[sx * lx, sy * wy, sz * hz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)])
    return c @ rot_z(b.yaw).T + np.asarray(b.center)


BOX_COLOURS = {
    "vehicle.car": (200, 40, 40),
    "human.pedestrian.adult": (240, 200, 40),
    "vehicle.truck": (40, 80, 200),
}


def render_cameras(
    rig: Rig, world_from_ego: np.ndarray, road: Road, crossing: np.ndarray, boxes: list[AgentBox]
) -> dict[str, np.ndarray]:
    """Flat-shaded RGB images (H, W, 3) uint8 for every camera of `rig` (sized by the rig)."""
    left = world_to_ego(world_from_ego, road.edge(LANE_W))
    right = world_to_ego(world_from_ego, road.edge(-LANE_W))
    centre = world_to_ego(world_from_ego, road.xy)
    cross = world_to_ego(world_from_ego, crossing)
    corners = [(world_to_ego(world_from_ego, _box_corners(b)), b) for b in boxes]
    images = {}
    for cam in rig.cameras:
        w, h = cam.width, cam.height
        p = cam.img_from_ego()
        img = np.empty((h, w, 3), np.uint8)
        horizon = int(np.clip(round(cam.intrinsics()[1, 2]), 0, h))
        img[:horizon] = (150, 190, 235)
        img[horizon:] = (95, 110, 85)

        def poly(pts2d: np.ndarray, z: float = 0.0, p: np.ndarray = p) -> np.ndarray | None:
            pts = np.concatenate([pts2d, np.full((len(pts2d), 1), z)], axis=1)
            uv, _, ok = project_points(p, pts, min_depth=0.5)
            return uv[ok] if ok.sum() >= 2 else None

        # road surface: quads between the two edges, drawn where both ends are in front of the camera
        road_pts = np.concatenate([left, right[::-1]])
        uv, _, ok = project_points(
            p, np.concatenate([road_pts, np.zeros((len(road_pts), 1))], 1), min_depth=0.5
        )
        n = len(left)
        for i in range(n - 1):
            idx = [i, i + 1, 2 * n - 2 - i, 2 * n - 1 - i]
            if ok[idx].all():
                cv2.fillConvexPoly(img, np.round(uv[idx]).astype(np.int32), (70, 70, 75), cv2.LINE_AA)
        for line, colour in ((left, (235, 235, 235)), (right, (235, 235, 235)), (centre, (240, 210, 60))):
            uv = poly(line)
            if uv is not None:
                cv2.polylines(img, [np.round(uv).astype(np.int32)], False, colour, 2, cv2.LINE_AA)
        uv, _, ok = project_points(p, np.concatenate([cross, np.zeros((len(cross), 1))], 1), min_depth=0.5)
        if ok.all():
            cv2.fillPoly(img, [np.round(uv).astype(np.int32)], (220, 220, 220), cv2.LINE_AA)
        # boxes, far to near (painter's algorithm)
        drawn = []
        for c_ego, b in corners:
            uv, depth, ok = project_points(p, c_ego, min_depth=0.5)
            if ok.all():
                drawn.append((float(depth.mean()), uv, b))
        for _, uv, b in sorted(drawn, key=lambda x: -x[0]):
            hull = cv2.convexHull(np.round(uv).astype(np.int32))
            cv2.fillConvexPoly(img, hull, BOX_COLOURS.get(b.category, (180, 60, 180)), cv2.LINE_AA)
            cv2.polylines(img, [hull], True, (20, 20, 20), 1, cv2.LINE_AA)
        images[cam.name] = img
    return images


def make_drive(
    scene_idx: int,
    keyframes: int,
    image_size: tuple[int, int],
    rng: np.random.Generator,
    rig: Rig = NUSCENES_RIG,
    scene_name: str | None = None,
) -> RecordedDrive:
    """One procedural drive: scene_idx % 3 == 0 curves gently, 1 turns left, 2 turns right.

    `scene_name` defaults to scene-<scene_idx + 1:04d>.
    """
    turning = scene_idx % 3 != 0
    sign = -1.0 if scene_idx % 3 == 2 else 1.0
    speed = float(rng.uniform(6.0, 9.0))
    duration = (keyframes - 1) * 0.5
    bend_start = 30.0 + speed * duration * 0.3
    k_turn = sign * (1 / 40.0 if turning else float(rng.uniform(0.0, 1 / 800)))

    def curvature(s: float) -> float:
        if not turning:
            return k_turn
        return k_turn if bend_start <= s <= bend_start + 0.5 * math.pi / abs(k_turn) else 0.0

    # scenes share one map: 2 km apart so that one scene's roads never appear in another's patch
    origin = rng.uniform(-100, 100, size=2) + np.array([1000.0 + 2000.0 * scene_idx, 1000.0])
    road = Road(
        origin[0],
        origin[1],
        float(rng.uniform(-math.pi, math.pi)),
        60.0 + speed * duration + 120.0,
        curvature,
    )
    s0 = 40.0
    lead_gap, lead_speed = float(rng.uniform(12, 20)), speed * float(rng.uniform(0.85, 1.0))
    oncoming_s, oncoming_speed = s0 + float(rng.uniform(40, 80)), float(rng.uniform(6, 9))
    parked_s = s0 + float(rng.uniform(10, 40))
    cross_s = s0 + float(rng.uniform(25, 45))
    cross_pts = np.array(
        [
            road.pose(cross_s + ds, off)[:2]
            for ds, off in ((-2, -LANE_W), (2, -LANE_W), (2, LANE_W), (-2, LANE_W), (-2, -LANE_W))
        ]
    )

    def box(
        inst: str, cat: str, s: float, off: float, v: float, size: np.ndarray, reverse: bool = False
    ) -> AgentBox:
        x, y, h = road.pose(s, off)
        yaw = h + (math.pi if reverse else 0.0)
        return AgentBox(
            inst,
            cat,
            np.array([x, y, size[2] / 2]),
            size.copy(),
            math.remainder(yaw, 2 * math.pi),
            np.array([v * math.cos(yaw), v * math.sin(yaw)]),
        )

    frames = []
    t0 = 1_533_000_000_000_000 + scene_idx * 100_000_000
    n_steps = (keyframes - 1) * SUBSTEPS + 1
    for k in range(n_steps):
        t = k * 0.5 / SUBSTEPS
        key = k % SUBSTEPS == 0
        x, y, h = road.pose(s0 + speed * t, -LANE_W / 2)
        world_from_ego = se2_pose(x, y, h)
        boxes = [
            box("car-lead", "vehicle.car", s0 + lead_gap + lead_speed * t, -LANE_W / 2, lead_speed, CAR_SIZE),
            box(
                "car-oncoming",
                "vehicle.car",
                oncoming_s - oncoming_speed * t,
                LANE_W / 2,
                oncoming_speed,
                CAR_SIZE,
                reverse=True,
            ),
            box("car-parked", "vehicle.truck", parked_s, -LANE_W - 1.5, 0.0, np.array([6.5, 2.4, 2.8])),
        ]
        # the pedestrian walks across the crossing, right to left, at 1.2 m/s
        ped_off = -LANE_W - 1.0 + 1.2 * t
        px, py, ph = road.pose(cross_s, ped_off)
        boxes.append(
            AgentBox(
                "ped-0",
                "human.pedestrian.adult",
                np.array([px, py, PED_SIZE[2] / 2]),
                PED_SIZE.copy(),
                math.remainder(ph + math.pi / 2, 2 * math.pi),
                np.array([-1.2 * math.sin(ph), 1.2 * math.cos(ph)]),
            )
        )
        images = {}
        if key:
            images = render_cameras(rig.with_image_size(*image_size), world_from_ego, road, cross_pts, boxes)
        lead_dist = lead_gap + (lead_speed - speed) * t - CAR_SIZE[0]
        frames.append(
            DriveFrame(
                timestamp_us=t0 + k * KEY_DT_US // SUBSTEPS,
                world_from_ego=world_from_ego,
                images=images,
                boxes=boxes if key else [],
                is_keyframe=key,
                privileged={
                    "source": "synthetic",
                    "traffic_light": None,
                    "lead_distance": float(lead_dist),
                    "speed_limit": 13.9,
                }
                if key
                else None,
            )
        )
    polylines = [
        ("divider", road.xy.copy()),
        ("boundary", np.concatenate([road.edge(LANE_W), road.edge(-LANE_W)[::-1], road.edge(LANE_W)[:1]])),
        ("ped_crossing", cross_pts),
    ]
    return RecordedDrive(
        scene_name=scene_name or f"scene-{scene_idx + 1:04d}",
        location="singapore-onenorth",
        rig=rig,
        frames=frames,
        map_polylines=polylines,
        description="synthetic: " + ("turning" if turning else "gentle curve"),
    )


def make_synthetic_dataset(
    dataroot: str | Path,
    version: str = "v1.0-mini",
    num_scenes: int = 2,
    keyframes_per_scene: int = 12,
    image_size: tuple[int, int] = (400, 225),
    seed: int = 0,
    overwrite: bool = False,
    scene_names: list[str] | None = None,
) -> Path:
    """Write `num_scenes` procedural drives (image_size = (width, height)) as nuScenes `version`.

    Deterministic by `seed`. Scenes 1, 4, 7... (0-based) turn left, 2, 5, 8... right; the others follow a
    gentle curve (so the default 2 scenes give straight and left commands, 3 scenes all three).
    Scenes are named scene-0001, scene-0002, ... unless `scene_names` is given (e.g. the official
    mini split names ["scene-0061", "scene-0103"] so that nuscenes.utils.splits selects them).
    """
    if scene_names is not None and len(scene_names) != num_scenes:
        raise ValueError(f"scene_names has {len(scene_names)} names for {num_scenes} scenes")
    rng = np.random.default_rng(seed)
    names = scene_names or [None] * num_scenes
    drives = [make_drive(i, keyframes_per_scene, image_size, rng, scene_name=names[i])
              for i in range(num_scenes)]
    return write_nuscenes(dataroot, version, drives, overwrite=overwrite)
