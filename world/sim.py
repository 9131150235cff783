"""The offline world: ego + background traffic on a `RoadMap`, stepped at a fixed rate. Not CARLA.

`OfflineWorld.step(control)` advances the ego (kinematic bicycle under a carla.VehicleControl), then the
lights, vehicles and pedestrians, and reports the ego's contacts of that step (`contacts`): another
vehicle, a pedestrian, or the layout (the ego's centre left every OpenDRIVE lane - driving, sidewalk,
shoulder - and every junction box, where CARLA has buildings, poles and fences). A contact is physical:
the ego does not pass through what it hit (its move is undone and it stops), so a car pushing into a
wall stays there, as in CARLA.

Everything is deterministic for a given seed: numpy's Generator drives every random choice.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from vlmad.frames import ego_to_carla_location, se2_pose
from world.config import WorldConfig
from world.dynamics import EgoState, step_ego
from world.road_map import RoadMap
from world.traffic import STATE_NAMES, Traffic

LAYOUT_TYPE = "static.roadside"  # type id of a layout contact (the offline world does not model props)


@dataclass
class Contact:
    """One thing the ego touched during a step."""

    kind: str  # "vehicle" | "walker" | "static"
    type_id: str  # CARLA-style blueprint id of the other actor, e.g. "vehicle.car", "walker.pedestrian"
    actor_id: int  # other actor's id (0 for the static layout, as CARLA's map geometry)


def obb_overlap(
    a: tuple[float, float, float, float, float], b: tuple[float, float, float, float, float]
) -> bool:
    """Separating-axis test of two oriented rectangles (x, y, yaw, length, width)."""
    ax, ay, ayaw, al, aw = a
    bx, by, byaw, bl, bw = b
    d = np.array([bx - ax, by - ay])
    axes = [
        (math.cos(ayaw), math.sin(ayaw)),
        (-math.sin(ayaw), math.cos(ayaw)),
        (math.cos(byaw), math.sin(byaw)),
        (-math.sin(byaw), math.cos(byaw)),
    ]
    ua, va, ub, vb = (np.array(v) for v in axes)
    for axis in (ua, va, ub, vb):
        ra = 0.5 * al * abs(ua @ axis) + 0.5 * aw * abs(va @ axis)
        rb = 0.5 * bl * abs(ub @ axis) + 0.5 * bw * abs(vb @ axis)
        if abs(d @ axis) > ra + rb:
            return False
    return True


class OfflineWorld:
    """Ego, traffic and lights on one map. Poses are in our right-handed world frame."""

    def __init__(self, rmap: RoadMap, cfg: WorldConfig | None = None, seed: int = 0):
        self.rmap = rmap
        self.cfg = cfg or WorldConfig()
        self.rng = np.random.default_rng(seed)
        self.traffic = Traffic(rmap, self.cfg.traffic, self.rng)
        self.t = 0.0  # simulated seconds since reset
        self.frame = 0
        self.ego = EgoState(0.0, 0.0, 0.0)
        self.ego_z = 0.0
        self.contacts: list[Contact] = []
        self.ego_junction = -1  # junction the ego is in (-1: none)
        self.ego_entry_road = -1  # road the ego came from into that junction
        self._ego_road = -1

    # --- set-up ----------------------------------------------------------------------------------------
    def reset(
        self,
        x: float,
        y: float,
        yaw: float,
        speed: float = 0.0,
        spawn_traffic: bool = True,
        avoid: np.ndarray | None = None,
    ) -> None:
        """Place the ego (our frame, yaw radians) and spawn the traffic away from it (and from `avoid`)."""
        self.t, self.frame = 0.0, 0
        self.ego = EgoState(float(x), float(y), float(yaw), float(speed))
        self._update_ego_lane()
        if spawn_traffic:
            self.traffic.spawn(np.array([x, y]), avoid)
        self.traffic.light_states = self.traffic.lights.states(0.0)

    @property
    def ego_size(self) -> tuple[float, float, float]:
        d = self.cfg.dynamics
        return d.length, d.width, d.height

    def _update_ego_lane(self) -> None:
        wp = self.rmap.cmap.get_waypoint(ego_to_carla_location((self.ego.x, self.ego.y, 0.0)))
        self.ego_z = wp.transform.location.z if wp is not None else 0.0
        if wp is None:
            return
        if wp.is_junction:
            jid = wp.get_junction().id
            if jid != self.ego_junction:
                self.ego_junction, self.ego_entry_road = jid, self._ego_road
        else:
            self.ego_junction = -1
            self._ego_road = wp.road_id

    # --- stepping -------------------------------------------------------------------------------------
    def step(self, control) -> None:
        """Advance the world by one step under the ego's carla.VehicleControl."""
        dt = self.cfg.dt
        self.contacts = []
        old = self.ego
        new = step_ego(old, control, self.cfg.dynamics, dt)
        hits = self._ego_contacts(new)
        if hits:
            self.contacts.extend(hits)
            new = old.copy()
            new.v, new.accel, new.yaw_rate, new.lat_accel = 0.0, -old.v / dt, 0.0, 0.0
            for h in hits:
                if h.kind == "vehicle":
                    for veh in self.traffic.vehicles:
                        if veh.id == h.actor_id:
                            veh.v = 0.0
        self.ego = new
        self._update_ego_lane()
        length, width, _ = self.ego_size
        ego_tuple = (self.ego.x, self.ego.y, self.ego.yaw, self.ego.v, length, width)
        self.traffic.step(self.t, dt, ego_tuple, self.ego_junction, self.ego_entry_road)
        # Traffic that moved into the ego this step (e.g. the ego cut in) is a contact as well.
        for h in self._ego_contacts(self.ego, layout=False):
            if all(h.actor_id != c.actor_id for c in self.contacts):
                self.contacts.append(h)
        self.t += dt
        self.frame += 1

    def _ego_contacts(self, st: EgoState, layout: bool = True) -> list[Contact]:
        length, width, _ = self.ego_size
        box = (st.x, st.y, st.yaw, length, width)
        out = []
        for veh in self.traffic.vehicles:
            if abs(veh.x - st.x) > 12.0 or abs(veh.y - st.y) > 12.0:
                continue
            if obb_overlap(box, (veh.x, veh.y, veh.yaw, veh.size[0], veh.size[1])):
                out.append(Contact("vehicle", veh.category, veh.id))
        for p in self.traffic.pedestrians:
            if abs(p.x - st.x) > 5.0 or abs(p.y - st.y) > 5.0:
                continue
            if obb_overlap(box, (p.x, p.y, p.yaw, 0.5, 0.5)):
                out.append(Contact("walker", "walker.pedestrian", p.id))
        if layout and not self.rmap.on_road_surface((st.x, st.y)):
            # The body centre left every lane (kerb, sidewalk, shoulder included) and every junction:
            # in CARLA the car would be in the buildings, poles and fences beyond the sidewalk.
            out.append(Contact("static", LAYOUT_TYPE, 0))
        return out

    # --- views ----------------------------------------------------------------------------------------
    def world_from_ego(self) -> np.ndarray:
        """(4, 4) ego pose; z is the ground height under the ego."""
        return se2_pose(self.ego.x, self.ego.y, self.ego.yaw, self.ego_z)

    def ego_velocity(self) -> np.ndarray:
        """(3,) ego-frame velocity, m/s."""
        return np.array([self.ego.v, 0.0, 0.0])

    def ego_accel(self) -> np.ndarray:
        """(3,) ego-frame kinematic acceleration (no gravity), m/s^2."""
        return np.array([self.ego.accel, self.ego.lat_accel, 0.0])

    def ego_gyro(self) -> np.ndarray:
        """(3,) ego-frame angular velocity, rad/s."""
        return np.array([0.0, 0.0, self.ego.yaw_rate])

    def light_state(self, index: int) -> str:
        """ "red" | "yellow" | "green" of `rmap.lights[index]` now."""
        return STATE_NAMES[int(self.traffic.light_states[index])]

    def actors(self) -> list[dict]:
        """Every background actor: id, category, center (3,), size (3,), yaw, velocity (2,), color."""
        out = []
        for v in self.traffic.vehicles:
            vel = (v.v * math.cos(v.yaw), v.v * math.sin(v.yaw))
            out.append(
                {
                    "id": v.id,
                    "category": v.category,
                    "center": np.array([v.x, v.y, self.ego_z + 0.5 * v.size[2]]),
                    "size": np.array(v.size),
                    "yaw": v.yaw,
                    "velocity": np.array(vel),
                    "color": v.color,
                }
            )
        for p in self.traffic.pedestrians:
            vel = (p.v * math.cos(p.yaw), p.v * math.sin(p.yaw))
            out.append(
                {
                    "id": p.id,
                    "category": "human.pedestrian.adult",
                    "center": np.array([p.x, p.y, self.ego_z + 0.87]),
                    "size": np.array([0.5, 0.6, 1.75]),
                    "yaw": p.yaw,
                    "velocity": np.array(vel),
                    "color": (180, 90, 60),
                }
            )
        return out
