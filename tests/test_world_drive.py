"""Offline world: dynamics, the expert, and leaderboard criteria on planted infractions."""

from __future__ import annotations

import math

import carla
import numpy as np
import pytest

from routes.parse import Route, Waypoint
from world.config import WorldConfig
from world.dynamics import EgoState, step_ego
from world.expert import ExpertAgent
from world.global_planner import interpolate_trajectory, keypoint_locations
from world.road_map import RoadMap, load_map, random_routes
from world.runner import OfflineRunner
from world.traffic import GREEN, RED, Pedestrian


def _cfg(vehicles: int = 0) -> WorldConfig:
    cfg = WorldConfig()
    cfg.traffic.num_vehicles = vehicles
    cfg.traffic.num_pedestrians = 0
    return cfg


@pytest.fixture(scope="module")
def grid() -> RoadMap:
    return load_map("VlmadGrid1x1")


def _spec(rm: RoadMap, pts: list[np.ndarray], yaw: float = 0.0) -> Route:
    return Route("0", rm.name, [Waypoint(float(p[0]), float(-p[1]), 0.0, yaw=yaw) for p in pts])


def _junction_routes(rm: RoadMap) -> tuple[Route, Route, int]:
    """(straight route, right-turn route) from the same outer lane of a 4-way approach, and its light."""
    for li, lt in enumerate(rm.lights):
        if rm.junction_phases[lt.junction] != 4:
            continue
        for sid in lt.segments:
            seg = rm.segments[sid]
            exits = {}
            for j in seg.succ:
                js = rm.segments[j]
                turn = (js.yaw[-1] - js.yaw[0] + math.pi) % (2 * math.pi) - math.pi
                kind = "straight" if abs(turn) < 0.3 else ("right" if turn < -1.2 else "left")
                exits[kind] = rm.segments[js.succ[0]]
            if "straight" in exits and "right" in exits:
                start = seg.pts[int(np.searchsorted(seg.s, seg.length - 35.0))]
                straight = _spec(rm, [start, exits["straight"].pts[30]])
                right = _spec(rm, [start, exits["right"].pts[50]])
                return straight, right, li
    raise AssertionError("no 4-way approach with straight and right exits")


class Reckless(ExpertAgent):
    """Follows the route but ignores other actors, lights and junction priority."""

    def _lead(self, *args):
        return None

    def _junction_busy(self, entry_idx):
        return False

    def _prepare(self):
        super()._prepare()
        self.entries = []


class Still(ExpertAgent):
    def run_step(self, input_data, timestamp):
        return carla.VehicleControl(throttle=0.0, steer=0.0, brake=1.0)


def _all(state: int):
    def setup(world, route):
        world.traffic.lights.forced = {i: state for i in range(len(world.rmap.lights))}

    return setup


# ---- dynamics ----------------------------------------------------------------------------------------
def test_bicycle_follows_carla_control_conventions():
    cfg = WorldConfig().dynamics
    st = EgoState(0.0, 0.0, 0.0, v=8.0)
    right = st
    for _ in range(20):
        right = step_ego(right, carla.VehicleControl(throttle=0.3, steer=0.3), cfg, 0.05)
    assert right.yaw < -0.3 and right.y < 0  # CARLA steer > 0 turns right: clockwise, towards -y
    braking = EgoState(0.0, 0.0, 0.0, v=10.0)
    n = 0
    while braking.v > 0 and n < 200:
        braking = step_ego(braking, carla.VehicleControl(brake=1.0), cfg, 0.05)
        n += 1
    assert braking.v == 0.0 and 5.0 < braking.x < 8.5  # v^2 / (2 x ~8 m/s^2) ~ 6.3 m
    back = EgoState(0.0, 0.0, 0.0)
    for _ in range(40):
        back = step_ego(back, carla.VehicleControl(throttle=0.5, reverse=True), cfg, 0.05)
    assert back.v < -1.0 and back.x < -1.0
    nan = step_ego(
        EgoState(0, 0, 0, v=5.0), carla.VehicleControl(throttle=float("nan"), steer=float("nan")), cfg, 0.05
    )
    assert all(math.isfinite(v) for v in (nan.x, nan.y, nan.yaw, nan.v))


# ---- the expert ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("town", ["VlmadGrid1x1", "Town02"])
def test_expert_completes_routes_without_infractions(town, shared_maps):
    rm = load_map(town, maps_dir=shared_maps)
    cfg = _cfg(vehicles=12)
    cfg.traffic.green_s, cfg.traffic.yellow_s, cfg.traffic.all_red_s = 6.0, 2.0, 1.0
    runner = OfflineRunner(rm, cfg, seed=5)
    routes = random_routes(rm, 2, np.random.default_rng(5), 100, 160, min_junctions=1)
    reasons = set()

    def hook(view):
        reasons.add(view.agent.info.get("stop_reason"))

    for i, spec in enumerate(routes):
        rec = runner.run_route(lambda: ExpertAgent("", cfg.expert), spec, i, on_step=hook)
        assert rec["status"] == "Completed", (town, rec)
        assert not any(rec["infractions"].values()), rec["infractions"]
        assert rec["scores"]["score_composed"] == 100.0
    assert "red_light" in reasons  # the routes made it wait at a red light at least once


def test_expert_waits_at_a_red_light_that_never_turns_green(grid):
    straight, _, _ = _junction_routes(grid)
    cfg = _cfg()
    cfg.criteria.blocked_time_s = 5.0
    rec = OfflineRunner(grid, cfg).run_route(lambda: ExpertAgent(), straight, 0, setup_world=_all(RED))
    assert rec["infractions"]["red_light"] == [] and rec["status"] == "Failed - Agent got blocked"


@pytest.mark.parametrize("delay", [0.0, 1.0])
def test_expert_pulls_away_from_a_green_light_after_its_start_delay(grid, delay):
    """ExpertConfig.start_delay_s: standing at the red, the expert waits `delay` seconds after the green
    before it pulls away (0: the same tick); it never waits at the route's start, where nothing held it."""
    straight, _, _ = _junction_routes(grid)
    cfg = _cfg()
    cfg.expert.start_delay_s = delay
    green_at, seen = 10.0, {"first_throttle": None, "speed_at_green": None}

    def on_step(view):
        w = view.world
        if w.t >= green_at:
            w.traffic.lights.forced = {i: GREEN for i in range(len(w.rmap.lights))}
            if seen["speed_at_green"] is None:
                seen["speed_at_green"] = w.ego.v
            if view.control.throttle > 0 and seen["first_throttle"] is None:
                seen["first_throttle"] = w.t
        elif w.t < 0.2:
            assert view.control.throttle > 0  # the start of the route: no delay

    OfflineRunner(grid, cfg).run_route(lambda: ExpertAgent(cfg=cfg.expert), straight, 0, on_step=on_step,
                                       setup_world=_all(RED), max_steps=int((green_at + 3.0) / cfg.dt))
    assert seen["speed_at_green"] == 0.0  # it stood at the red line
    waited = seen["first_throttle"] - green_at
    assert delay <= waited < delay + 0.2, waited


# ---- planted infractions --------------------------------------------------------------------------------
def test_driving_into_a_parked_vehicle_is_one_vehicle_collision(grid):
    straight, _, _ = _junction_routes(grid)
    cfg = _cfg()
    cfg.criteria.blocked_time_s = 4.0
    parked = {}

    def plant(world, route):
        t = route[15][0]
        veh = world.traffic.add_parked(np.array([t.location.x, -t.location.y]), math.radians(-t.rotation.yaw))
        parked["id"] = veh.id

    rec = OfflineRunner(grid, cfg).run_route(lambda: Reckless(), straight, 0, setup_world=plant)
    hits = rec["infractions"]["collisions_vehicle"]
    assert len(hits) == 1 and f"type=vehicle.car and id={parked['id']}" in hits[0]
    assert hits[0].startswith("Agent collided against object with type=")
    assert rec["scores"]["score_penalty"] == pytest.approx(0.6)
    assert rec["status"] == "Failed - Agent got blocked"  # it cannot drive through the car


def test_walking_into_a_standing_pedestrian_is_one_pedestrian_collision(grid):
    straight, _, _ = _junction_routes(grid)
    cfg = _cfg()
    cfg.criteria.blocked_time_s = 4.0
    planted = {}

    def plant(world, route):
        t = route[15][0]
        # A pedestrian that waits at its kerb for ever, placed on the ego's lane (our frame: y = -CARLA y).
        ped = Pedestrian(world.traffic.new_id(), 0, 0.0, 1, 0.0, wait=1e9, x=t.location.x, y=-t.location.y)
        world.traffic.pedestrians.append(ped)
        planted["id"] = ped.id

    rec = OfflineRunner(grid, cfg).run_route(lambda: Reckless(), straight, 0, setup_world=plant)
    hits = rec["infractions"]["collisions_pedestrian"]
    assert len(hits) == 1 and f"type=walker.pedestrian and id={planted['id']} at (x=" in hits[0], hits
    assert rec["infractions"]["collisions_vehicle"] == [] and rec["infractions"]["collisions_layout"] == []
    assert rec["scores"]["score_penalty"] == pytest.approx(0.5)
    assert rec["status"] == "Failed - Agent got blocked"  # the contact stops the car


class OffTheRoad(Reckless):
    """Follows the route for a second, then steers hard right, over the kerb and off the road."""

    def run_step(self, input_data, timestamp):
        control = super().run_step(input_data, timestamp)
        if timestamp > 1.0:
            control.steer, control.throttle, control.brake = 1.0, 0.5, 0.0
        return control


def test_leaving_the_road_is_one_layout_collision(grid):
    straight, _, _ = _junction_routes(grid)
    cfg = _cfg()
    cfg.criteria.blocked_time_s = 3.0
    rec = OfflineRunner(grid, cfg).run_route(lambda: OffTheRoad(), straight, 0)
    hits = rec["infractions"]["collisions_layout"]
    # The ego stays against the layout: one event (the same place is not counted again).
    assert len(hits) == 1 and hits[0].startswith(
        "Agent collided against object with type=static.roadside and id=0 at (x="
    ), hits
    assert not rec["infractions"]["collisions_pedestrian"] and not rec["infractions"]["collisions_vehicle"]
    assert rec["scores"]["score_penalty"] == pytest.approx(0.65)
    assert rec["status"] == "Failed - Agent got blocked"


def test_running_a_red_light_is_detected(grid):
    straight, _, light = _junction_routes(grid)
    rec = OfflineRunner(grid, _cfg()).run_route(lambda: Reckless(), straight, 0, setup_world=_all(RED))
    assert len(rec["infractions"]["red_light"]) == 1
    assert rec["infractions"]["red_light"][0].startswith(
        f"Agent ran a red light {grid.lights[light].id} at (x="
    )
    assert rec["status"] == "Completed" and rec["scores"]["score_penalty"] == pytest.approx(0.7)
    green = OfflineRunner(grid, _cfg()).run_route(lambda: Reckless(), straight, 0, setup_world=_all(GREEN))
    assert green["infractions"]["red_light"] == [] and green["scores"]["score_composed"] == 100.0


def test_leaving_the_route_ends_it_as_a_deviation(grid):
    straight, right, _ = _junction_routes(grid)
    other = OfflineRunner(grid, _cfg())
    _, right_plan = interpolate_trajectory(grid.planner, keypoint_locations(right))

    class Deviator(ExpertAgent):
        def set_global_plan(self, gps, world_plan):
            super().set_global_plan(gps, right_plan)

    rec = other.run_route(lambda: Deviator(), straight, 0, setup_world=_all(GREEN))
    assert len(rec["infractions"]["route_dev"]) == 1
    assert rec["infractions"]["route_dev"][0].startswith("Agent deviated from the route at (x=")
    assert rec["status"] == "Failed - Agent deviated from the route" and rec["scores"]["score_route"] < 80


def test_standing_still_is_blocked_and_slow_is_timeout(grid):
    straight, _, _ = _junction_routes(grid)
    cfg = _cfg()
    cfg.criteria.blocked_time_s = 3.0
    rec = OfflineRunner(grid, cfg).run_route(lambda: Still(), straight, 0)
    assert rec["status"] == "Failed - Agent got blocked" and rec["scores"]["score_route"] < 5
    assert rec["infractions"]["vehicle_blocked"][0].startswith("Agent got blocked at (x=")
    assert 3.0 < rec["meta"]["duration_game"] < 4.0
    cfg = _cfg()
    cfg.criteria.seconds_per_meter, cfg.criteria.initial_delay_s = 0.01, 2.0
    rec = OfflineRunner(grid, cfg).run_route(lambda: Still(), straight, 0)
    assert (
        rec["infractions"]["route_timeout"] == ["Route timeout."]
        and rec["status"] == "Failed - Agent timed out"
    )


def test_agent_errors_fail_the_route_not_the_run(grid):
    straight, _, _ = _junction_routes(grid)

    class Crashing(ExpertAgent):
        def run_step(self, input_data, timestamp):
            if timestamp > 1.0:
                raise ValueError("boom")
            return super().run_step(input_data, timestamp)

    def broken():
        raise RuntimeError("cannot load")

    runner = OfflineRunner(grid, _cfg())
    assert runner.run_route(lambda: Crashing(), straight, 0)["status"] == "Failed - Agent crashed"
    assert runner.run_route(broken, straight, 1)["status"] == "Failed - Agent couldn't be set up"


def test_camera_agent_gets_leaderboard_input_data(grid):
    from vlmad.rig import CARLA_RIG

    straight, _, _ = _junction_routes(grid)
    rig = CARLA_RIG.with_image_size(64, 36)
    seen = {}

    class Camera(ExpertAgent):
        def sensors(self):
            out = rig.carla_sensors()
            out.append({"type": "sensor.opendrive_map", "id": "MAP", "reading_frequency": 1})
            return out

        def set_global_plan(self, gps, world_plan):
            seen["plan"] = (len(gps), len(world_plan), gps[0][0].keys())
            super().set_global_plan(gps, world_plan)

        def run_step(self, input_data, timestamp):
            seen.setdefault("data", input_data)
            return super().run_step(input_data, timestamp)

    rec = OfflineRunner(grid, _cfg()).run_route(lambda: Camera(), straight, 0, max_steps=3)
    assert rec["status"].startswith("Failed")  # stopped after 3 steps: not reached
    data = seen["data"]
    for cam in rig.camera_names:
        frame, img = data[cam]
        assert img.shape == (36, 64, 4) and img.dtype == np.uint8
    assert data["GPS"][1].shape == (3,) and data["IMU"][1].shape == (7,) and "speed" in data["SPEED"][1]
    assert "<OpenDRIVE>" in data["MAP"][1]["opendrive"]
    n_gps, n_world, keys = seen["plan"]
    assert n_gps == n_world > 20 and set(keys) == {"lat", "lon", "z"}  # the dense route, as the leaderboard

    class Lidar(ExpertAgent):
        def sensors(self):
            return [{"type": "sensor.lidar.ray_cast", "id": "LIDAR", "x": 0, "y": 0, "z": 2}]

    from vlmad.errors import UserError

    with pytest.raises(UserError, match="cannot simulate sensor"):
        OfflineRunner(grid, _cfg()).run_route(lambda: Lidar(), straight, 0, max_steps=3)
