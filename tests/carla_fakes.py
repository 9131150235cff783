"""Minimal stand-ins for a CARLA server's world and actors that return the `carla` library's own types.

`mirror_world(offline_world)` records an offline-world snapshot (ego, vehicles, pedestrians, lights) as
the actors a CARLA server would report: real carla.Transform / Location / Rotation / Vector3D /
BoundingBox / TrafficLightState values, converted from our frame through vlmad.frames. The map is the
offline town's real carla.Map (built from its OpenDRIVE), so waypoints are real carla.Waypoints.
"""

from __future__ import annotations

import fnmatch
import math

import carla
import numpy as np

from vlmad.frames import ego_pose_to_carla_transform, ego_to_carla_location, ego_yaw_to_carla

STATES = (carla.TrafficLightState.Red, carla.TrafficLightState.Yellow, carla.TrafficLightState.Green)


class FakeActors(list):
    """world.get_actors(): a list with carla.ActorList's `filter(pattern)`."""

    def filter(self, pattern: str) -> FakeActors:
        return FakeActors(a for a in self if fnmatch.fnmatch(a.type_id, pattern))


class FakeActor:
    def __init__(self, aid: int, type_id: str, transform: carla.Transform, velocity: carla.Vector3D,
                 extent: carla.Vector3D, role: str = ""):
        self.id, self.type_id = aid, type_id
        self.attributes = {"role_name": role} if role else {}
        self._tf, self._vel = transform, velocity
        self.bounding_box = carla.BoundingBox(carla.Location(0.0, 0.0, extent.z), extent)

    def get_transform(self) -> carla.Transform:
        return self._tf

    def get_location(self) -> carla.Location:
        return self._tf.location

    def get_velocity(self) -> carla.Vector3D:
        return self._vel


class FakeLight(FakeActor):
    def __init__(self, aid: int, transform: carla.Transform, half_span: float, state):
        super().__init__(aid, "traffic.traffic_light", transform, carla.Vector3D(), carla.Vector3D(1, 1, 1))
        self.trigger_volume = carla.BoundingBox(carla.Location(0.0, 0.0, 0.0),
                                                carla.Vector3D(half_span, 1.0, 1.0))
        self.state = state

    def get_state(self):
        return self.state


class FakeWorld:
    def __init__(self, actors: list):
        self.actors = FakeActors(actors)

    def get_actors(self) -> FakeActors:
        return self.actors


def vehicle_actor(aid: int, x: float, y: float, yaw: float, v: float, size, role: str = "",
                  type_id: str = "vehicle.tesla.model3") -> FakeActor:
    """A vehicle at a planar pose of our frame moving at `v` along its heading."""
    vel = ego_to_carla_location((v * math.cos(yaw), v * math.sin(yaw), 0.0))
    return FakeActor(aid, type_id, ego_pose_to_carla_transform(x, y, 0.0, yaw),
                     carla.Vector3D(vel.x, vel.y, vel.z),
                     carla.Vector3D(0.5 * size[0], 0.5 * size[1], 0.5 * size[2]), role)


def light_actor(aid: int, stop_pts: np.ndarray, stop_yaw: np.ndarray, state) -> FakeLight:
    """A light whose trigger volume crosses its approach lanes 3 m before the stop line (the volume's
    x extent runs along the light's yaw, as the leaderboard reads it)."""
    back = stop_pts - 3.0 * np.stack([np.cos(stop_yaw), np.sin(stop_yaw)], axis=1)
    centre = back.mean(axis=0)
    lat = float(stop_yaw[0]) + math.pi / 2
    span = float(np.abs((back - centre) @ np.array([math.cos(lat), math.sin(lat)])).max()) + 0.5
    tf = carla.Transform(ego_to_carla_location(centre), carla.Rotation(yaw=float(ego_yaw_to_carla(lat))))
    return FakeLight(aid, tf, span, state)


class MirrorWorld(FakeWorld):
    """A fake CARLA world holding an offline world's state; `sync()` re-reads it (the hero and the light
    actors stay the same objects, as on a server)."""

    def __init__(self, w, hero_id: int = 1):
        super().__init__([])
        self.w = w
        d = w.cfg.dynamics
        self.hero = vehicle_actor(hero_id, w.ego.x, w.ego.y, w.ego.yaw, w.ego.v,
                                  (d.length, d.width, d.height), role="hero",
                                  type_id="vehicle.lincoln.mkz_2017")
        self.lights = [light_actor(100_000 + i, lt.stop_pts, lt.stop_yaw, STATES[0])
                       for i, lt in enumerate(w.rmap.lights)]
        self.sync()

    def sync(self) -> None:
        w, d = self.w, self.w.cfg.dynamics
        now = vehicle_actor(self.hero.id, w.ego.x, w.ego.y, w.ego.yaw, w.ego.v, (d.length, d.width, d.height))
        self.hero._tf, self.hero._vel = now._tf, now._vel
        actors = [self.hero]
        for veh in w.traffic.vehicles:
            actors.append(vehicle_actor(veh.id, veh.x, veh.y, veh.yaw, veh.v, veh.size))
        for p in w.traffic.pedestrians:
            tf = ego_pose_to_carla_transform(p.x, p.y, 0.0, 0.0)
            actors.append(FakeActor(p.id, "walker.pedestrian.0001", tf, carla.Vector3D(),
                                    carla.Vector3D(0.3, 0.3, 0.9)))
        for i, light in enumerate(self.lights):
            light.state = STATES[int(w.traffic.light_states[i])]
        self.actors = FakeActors(actors + self.lights)
