"""The CARLA backend of the expert's world interface (world.expert_core.ExpertWorld).

Thin by design: each tick `CarlaExpertWorld.tick()` takes one snapshot of the server's state through the
`carla` client objects the leaderboard's CarlaDataProvider hands out (world, map, hero vehicle), converts
it once to the project's frame through vlmad.frames, and the shared decision logic
(world.expert_core.ExpertDriver) reads only that snapshot. Typed against the real `carla` client
(0.9.15 / 0.9.16 PyPI wheels; the same calls exist in 0.9.10.1): Actor.get_transform / get_velocity /
bounding_box / type_id / id, Map.get_waypoint, Waypoint.road_id / lane_id / is_junction / get_junction /
next, TrafficLight.get_state / trigger_volume.

Where CARLA differs from the offline world:
- lights: a light controls the approach lanes its trigger volume covers (as the leaderboard's
  RunningRedLightTest finds them: waypoints across the volume, followed to the junction); its stop line is
  the junction entry, so `stop_offset` is STOP_OFFSET_M, the offline world's default;
- junction priority: the road a vehicle entered a junction from is the last non-junction road it was
  seen on (the snapshot keeps it across ticks), the offline world's `entry_road`.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import carla
import numpy as np

from vlmad.frames import carla_location_to_ego, carla_pose_to_ego, ego_to_carla_location
from world.config import DynamicsConfig
from world.expert_core import EgoState, LanePoint, Obstacles

STOP_OFFSET_M = 1.0  # stop line before the junction entry (the offline world's default stop_offset)
PED_HALF_WIDTH_M = 0.35  # a pedestrian's half width in the corridor test (as the offline world)
LIGHT_STATE = {carla.TrafficLightState.Red: 0, carla.TrafficLightState.Yellow: 1,
               carla.TrafficLightState.Green: 2}  # Off / Unknown count as green: nothing to stop for


@dataclass
class ActorSnap:
    """One actor of a snapshot, in the project's frame: pose, size (l, w, h), velocity, box centre."""

    id: int
    type_id: str
    kind: str  # "vehicle" | "walker"
    x: float
    y: float
    yaw: float
    speed: float  # along its heading, m/s
    size: tuple[float, float, float]
    center: np.ndarray  # (3,) world box centre
    velocity: np.ndarray  # (2,) world velocity
    junction: int  # junction id of its lane, -1 outside
    entry_road: int  # the road it entered its junction from (-1: unknown / not in one)


def _to_world(tf, loc) -> carla.Location:
    """`loc` (actor-local, CARLA axes) in CARLA world axes. Transform.transform works in place on 0.9.10
    and returns the result on 0.9.15+: copy first, take whichever holds it."""
    p = carla.Location(float(loc.x), float(loc.y), float(loc.z))
    out = tf.transform(p)
    return p if out is None else out


def _forward_speed(actor) -> float:
    """Speed along the actor's heading (frame-independent: a dot product of two CARLA vectors)."""
    v = actor.get_velocity()
    f = actor.get_transform().get_forward_vector()
    return float(v.x * f.x + v.y * f.y + v.z * f.z)


class CarlaExpertWorld:
    """`ExpertWorld` over a CARLA server: `tick()` once per simulation step, then the queries."""

    def __init__(self, world, cmap, hero, dynamics: DynamicsConfig | None = None):
        self.world, self.cmap, self.hero = world, cmap, hero
        ext = hero.bounding_box.extent  # half sizes: the expert's corridor uses the real ego's size
        self.dynamics = dataclasses.replace(dynamics or DynamicsConfig(), length=2.0 * float(ext.x),
                                            width=2.0 * float(ext.y), height=2.0 * float(ext.z))
        self.lights: list = []  # carla.TrafficLight actors, index = the expert's light index
        self._light_lanes: dict[tuple[int, int], int] = {}  # (road_id, lane_id) of an approach -> light
        self._last_road: dict[int, int] = {}  # actor id -> last non-junction road seen
        self.actors: list[ActorSnap] = []
        self.light_states: list[int] = []
        self._ego = EgoState(0.0, 0.0, 0.0, 0.0)
        self._ego_junction = -1
        self._index_lights()

    # --- set-up ----------------------------------------------------------------------------------------
    def _index_lights(self) -> None:
        for light in self.world.get_actors().filter("traffic.traffic_light*"):
            k = len(self.lights)
            self.lights.append(light)
            for road_lane in self._approach_lanes(light):
                self._light_lanes.setdefault(road_lane, k)

    def _approach_lanes(self, light) -> set[tuple[int, int]]:
        """(road_id, lane_id) of the lanes a light's trigger volume covers, followed to the junction."""
        tv = light.trigger_volume
        tf = light.get_transform()
        centre = _to_world(tf, tv.location)
        yaw = math.radians(tf.rotation.yaw)
        lanes = set()
        n = max(int(2 * tv.extent.x), 1)
        for i in range(n + 1):  # points across the volume's x extent (lanes side by side)
            off = -tv.extent.x + 2 * tv.extent.x * i / n
            pt = carla.Location(centre.x + off * math.cos(yaw), centre.y + off * math.sin(yaw), centre.z)
            wp = self.cmap.get_waypoint(pt)
            if wp is None:
                continue
            for _ in range(100):  # walk to the junction entry (<= 50 m)
                if wp.is_junction:
                    break
                lanes.add((int(wp.road_id), int(wp.lane_id)))
                nxt = wp.next(0.5)
                if not nxt:
                    break
                wp = nxt[0]
        return lanes

    # --- one snapshot per tick -------------------------------------------------------------------------
    def tick(self) -> None:
        """Read the hero, the other vehicles and walkers, and the lights (one server round trip each)."""
        pos, yaw = carla_pose_to_ego(self.hero.get_transform())
        self._ego = EgoState(float(pos[0]), float(pos[1]), yaw, _forward_speed(self.hero))
        self._ego_junction = self._junction_of(self.hero.get_location(), self.hero.id)[0]
        snaps = []
        for a in self.world.get_actors():
            tid = str(a.type_id)
            kind = {"vehicle": "vehicle", "walker": "walker"}.get(tid.split(".", 1)[0])
            if kind is None or a.id == self.hero.id:
                continue
            tf = a.get_transform()
            apos, ayaw = carla_pose_to_ego(tf)
            bb = a.bounding_box
            junction, entry = self._junction_of(tf.location, a.id) if kind == "vehicle" else (-1, -1)
            snaps.append(ActorSnap(
                int(a.id), tid, kind, float(apos[0]), float(apos[1]), ayaw,
                _forward_speed(a) if kind == "vehicle" else 0.0,  # the offline world's walkers: speed 0
                (2.0 * float(bb.extent.x), 2.0 * float(bb.extent.y), 2.0 * float(bb.extent.z)),
                carla_location_to_ego(_to_world(tf, bb.location)),
                carla_location_to_ego(a.get_velocity())[:2],
                junction, entry,
            ))
        self.actors = snaps
        self.light_states = [LIGHT_STATE.get(light.get_state(), 2) for light in self.lights]

    def _junction_of(self, loc, actor_id: int) -> tuple[int, int]:
        """(junction id or -1, road it entered that junction from or -1); remembers the last road."""
        wp = self.cmap.get_waypoint(loc)
        if wp is None:
            return -1, -1
        if not wp.is_junction:
            self._last_road[actor_id] = int(wp.road_id)
            return -1, -1
        return int(wp.get_junction().id), self._last_road.get(actor_id, -1)

    # --- ExpertWorld -----------------------------------------------------------------------------------
    def ego(self) -> EgoState:
        return self._ego

    def ego_in_junction(self) -> bool:
        return self._ego_junction >= 0

    def lane_at(self, xy: np.ndarray) -> LanePoint | None:
        wp = self.cmap.get_waypoint(ego_to_carla_location(xy))
        if wp is None:
            return None
        return LanePoint(int(wp.road_id), int(wp.get_junction().id) if wp.is_junction else -1)

    def approach_light(self, xy: np.ndarray) -> int:
        wp = self.cmap.get_waypoint(ego_to_carla_location(xy))
        if wp is None:
            return -1
        return self._light_lanes.get((int(wp.road_id), int(wp.lane_id)), -1)

    def light_state(self, light: int) -> int:
        return self.light_states[light]

    def stop_offset(self, light: int) -> float:
        return STOP_OFFSET_M

    def obstacles(self) -> Obstacles:
        pts, owner, half, speed = [], [], [], []
        for a in self.actors:
            if a.kind == "vehicle":  # front / centre / rear on the long axis, as the offline world
                c, s = math.cos(a.yaw), math.sin(a.yaw)
                for f in (-0.45, 0.0, 0.45):
                    pts.append((a.x + f * a.size[0] * c, a.y + f * a.size[0] * s))
                    owner.append(a.id)
                    half.append(0.5 * a.size[1])
                    speed.append(a.speed)
            else:
                pts.append((a.x, a.y))
                owner.append(a.id)
                half.append(PED_HALF_WIDTH_M)
                speed.append(0.0)
        peds = frozenset(a.id for a in self.actors if a.kind == "walker")
        return Obstacles(np.array(pts).reshape(-1, 2), np.array(owner, dtype=np.int64), np.array(half),
                         np.array(speed), peds)

    def junction_busy(self, junction_id: int, my_road: int) -> bool:
        return any(a.kind == "vehicle" and a.junction == junction_id and a.entry_road not in (my_road, -1)
                   and a.speed > 0.3 for a in self.actors)
