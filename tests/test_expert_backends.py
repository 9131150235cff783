"""The expert's one decision logic (world.expert_core) on its two backends: the offline world and CARLA.

The CARLA backend (carla_eval.expert_carla) is fed recorded offline-world snapshots as a CARLA server
would report them (tests/carla_fakes.py: the carla library's own Transform / Location / Rotation /
Vector3D / BoundingBox / TrafficLightState, the town's real carla.Map), so both backends see the same
world and must decide the same."""

from __future__ import annotations

import math

import carla
import numpy as np
import pytest
from carla_fakes import FakeActor, FakeWorld, MirrorWorld, light_actor, vehicle_actor

from carla_eval.expert_carla import STOP_OFFSET_M, CarlaExpertWorld
from world.config import WorldConfig
from world.expert import ExpertAgent, OfflineExpertWorld
from world.expert_core import ExpertDriver
from world.road_map import load_map, random_routes
from world.runner import OfflineRunner


@pytest.fixture(scope="module")
def grid():
    return load_map("VlmadGrid1x1")


class _SameStopLines(CarlaExpertWorld):
    """CARLA's stop line is the junction entry (STOP_OFFSET_M); the offline town draws its own a crosswalk
    before it. The comparison gives the CARLA backend the offline town's stop lines: a map property, not
    a decision."""

    def __init__(self, *a, offsets=None, **k):
        super().__init__(*a, **k)
        self.offsets = offsets

    def stop_offset(self, light: int) -> float:
        return float(self.offsets[light])


def test_decisions_match_on_both_backends_along_a_drive(grid):
    cfg = WorldConfig()
    cfg.traffic.num_vehicles, cfg.traffic.num_pedestrians = 14, 6
    cfg.traffic.green_s, cfg.traffic.yellow_s, cfg.traffic.all_red_s = 6.0, 2.0, 1.0
    runner = OfflineRunner(grid, cfg, seed=3)
    spec = random_routes(grid, 1, np.random.default_rng(7), 120, 200, min_junctions=1)[0]
    state: dict = {}
    compared, reasons, mismatches, steps = 0, set(), [], [0]

    def hook(view):
        nonlocal compared
        agent, w = view.agent, view.world
        if "carla" not in state:
            mirror = MirrorWorld(w)
            ref = ExpertDriver(cfg.expert)  # the offline backend, a second driver on the same snapshot
            ref.view, ref._plan = OfflineExpertWorld(w), agent._plan
            ref._prepare()
            car = ExpertDriver(cfg.expert)
            car.view = _SameStopLines(mirror, grid.cmap, mirror.hero, cfg.dynamics,
                                      offsets=w.traffic.stop_offset)
            car._plan = agent._plan
            car._prepare()
            assert [e[2] for e in car.entries] == [e[2] for e in ref.entries]  # same lights found
            state.update(carla=car, ref=ref, mirror=mirror)
        car, ref, mirror = state["carla"], state["ref"], state["mirror"]
        mirror.sync()
        car.view.tick()  # every tick: the CARLA backend learns junction entry roads from the history
        steps[0] += 1
        if steps[0] % 5:
            return
        car.idx = ref.idx = agent.idx
        a, b = ref.decide(), car.decide()
        compared += 1
        reasons.add(ref.info["stop_reason"])
        # carla.Location / Vector3D hold float32: poses and speeds differ from the offline world's float64
        # by ~1e-6 m, so decisions agree to that precision, not bit for bit
        if not (np.allclose(a, b, atol=1e-4) and a_info_equal(ref.info, car.info)):
            mismatches.append((steps[0], a, b, ref.info, car.info))

    rec = runner.run_route(lambda: ExpertAgent("", cfg.expert), spec, 0, on_step=hook)
    assert rec["status"] == "Completed"
    assert compared > 100 and {"red_light", "vehicle"} <= reasons  # lights and leads were exercised
    assert not mismatches, mismatches[:3]


def a_info_equal(x: dict, y: dict) -> bool:
    for k in x:
        a, b = x[k], y[k]
        if isinstance(a, float) and isinstance(b, float):
            if not math.isclose(a, b, abs_tol=1e-3):
                return False
        elif a != b:
            return False
    return True


def test_offline_backend_reads_the_world_as_the_expert_did(grid):
    """ExpertAgent drives through OfflineExpertWorld; its answers are the world's own state."""
    cfg = WorldConfig()
    cfg.traffic.num_vehicles, cfg.traffic.num_pedestrians = 6, 3
    runner = OfflineRunner(grid, cfg, seed=1)
    spec = random_routes(grid, 1, np.random.default_rng(2), 80, 120)[0]
    seen = []

    def hook(view):
        w, v = view.world, view.agent.view
        e = v.ego()
        assert (e.x, e.y, e.yaw, e.v) == (w.ego.x, w.ego.y, w.ego.yaw, w.ego.v)
        obs = v.obstacles()
        assert obs.pedestrian_ids == {p.id for p in w.traffic.pedestrians}
        assert len(obs.pts) == 3 * len(w.traffic.vehicles) + len(w.traffic.pedestrians)
        seen.append(v.ego_in_junction() == (w.ego_junction >= 0))

    runner.run_route(lambda: ExpertAgent("", cfg.expert), spec, 0, on_step=hook, max_steps=200)
    assert len(seen) == 200 and all(seen)


class _Wp:
    """A waypoint stand-in: real carla.Transform, ids, junction flag, `next`."""

    def __init__(self, x: float, road: int, lane: int, junction: int):
        self.transform = carla.Transform(carla.Location(x, 0.0, 0.0), carla.Rotation())
        self.road_id, self.lane_id, self.is_junction = road, lane, junction >= 0
        self._j = junction

    def get_junction(self):
        return type("J", (), {"id": self._j})()

    def next(self, d: float):
        return [_Map.waypoint_at(self.transform.location.x + d)]


class _Map:
    """CARLA x 0..50: road 1 (lane -1); 50..70: junction 7 (road 10); beyond: road 2."""

    name = "Carla/Maps/Town01"

    @staticmethod
    def waypoint_at(x: float) -> _Wp:
        if x < 50.0:
            return _Wp(x, 1, -1, -1)
        if x < 70.0:
            return _Wp(x, 10, -1, 7)
        return _Wp(x, 2, -1, -1)

    def get_waypoint(self, loc: carla.Location) -> _Wp:
        assert isinstance(loc, carla.Location)  # the backend hands real carla types to the map
        return self.waypoint_at(loc.x)


def test_carla_backend_snapshot_with_carla_types():
    """A recorded CARLA snapshot: hero at CARLA (10, 0) heading +x (ours: yaw 0), a car 20 m ahead moving
    at 3 m/s, a walker, a red light whose trigger volume sits on road 1; another car inside the junction
    that came from road 5 (a crossing approach), and one from our road."""
    hero = vehicle_actor(1, 10.0, 0.0, 0.0, 4.0, (4.9, 2.1, 1.5), role="hero")
    lead = vehicle_actor(2, 30.0, 0.0, 0.0, 3.0, (4.0, 2.0, 1.5))
    walker = FakeActor(3, "walker.pedestrian.0002", carla.Transform(carla.Location(20.0, -3.0, 0.0)),
                       carla.Vector3D(), carla.Vector3D(0.3, 0.3, 0.9))
    light = light_actor(4, np.array([[48.0, 0.0]]), np.array([0.0]), carla.TrafficLightState.Red)
    crossing = vehicle_actor(5, 60.0, 0.0, math.pi / 2, 5.0, (4.0, 2.0, 1.5))
    world = FakeWorld([hero, lead, walker, light, crossing])
    view = CarlaExpertWorld(world, _Map(), hero)
    assert view.dynamics.length == pytest.approx(4.9) and view.dynamics.width == pytest.approx(2.1)
    # the crossing car was seen on road 5 before it entered the junction
    view._last_road[5] = 5
    view.tick()
    e = view.ego()
    assert (e.x, e.y, e.yaw, e.v) == pytest.approx((10.0, 0.0, 0.0, 4.0))
    assert view.lane_at(np.array([20.0, 0.0])) == (1, -1)
    assert view.lane_at(np.array([60.0, 0.0])) == (10, 7)
    assert view.approach_light(np.array([49.0, 0.0])) == 0 and view.light_state(0) == 0  # red
    assert view.approach_light(np.array([80.0, 0.0])) == -1
    assert view.stop_offset(0) == STOP_OFFSET_M
    obs = view.obstacles()
    assert obs.pedestrian_ids == {3}
    lead_pts = obs.pts[obs.owner == 2]
    np.testing.assert_allclose(lead_pts, [[28.2, 0.0], [30.0, 0.0], [31.8, 0.0]], atol=1e-5)
    np.testing.assert_allclose(obs.pts[obs.owner == 3], [[20.0, 3.0]], atol=1e-6)  # CARLA y -3 -> ours +3
    assert obs.speed[obs.owner == 2] == pytest.approx([3.0] * 3)
    assert view.junction_busy(7, my_road=1)  # moving, from another road
    assert not view.junction_busy(7, my_road=5)  # from the asker's own road
    assert not view.ego_in_junction()


def test_carla_backend_drives_the_shared_logic_to_a_stop_at_red():
    """The decision logic on the CARLA backend: a straight route through the junction, red light ahead ->
    brakes for the light and reports it; green -> drives on at cruise."""
    plan = [(carla.Transform(carla.Location(float(x), 0.0, 0.0)), 4) for x in np.arange(0.0, 120.0, 1.0)]
    for state, expect in ((carla.TrafficLightState.Red, "red_light"), (carla.TrafficLightState.Green, None)):
        hero = vehicle_actor(1, 38.0, 0.0, 0.0, 5.0, (4.9, 2.1, 1.5), role="hero")
        light = light_actor(4, np.array([[48.0, 0.0]]), np.array([0.0]), state)
        view = CarlaExpertWorld(FakeWorld([hero, light]), _Map(), hero)
        d = ExpertDriver()
        d.view, d._plan = view, plan
        d._prepare()
        view.tick()
        throttle, steer, brake = d.decide()
        assert d.entries and d.entries[0][2] == 0  # the junction entry at x = 50 is controlled by light 0
        assert d.info["traffic_light"] == ("red" if expect else "green")
        assert d.info["stop_reason"] == expect
        assert abs(steer) < 1e-6 and d.info["road_option"] == "LANEFOLLOW"
        if expect:
            assert brake > 0.0 and throttle == 0.0
        else:
            assert throttle > 0.0 and brake == 0.0
        control = carla.VehicleControl(throttle=throttle, steer=steer, brake=brake)
        assert isinstance(control, carla.VehicleControl)
