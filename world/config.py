"""Configuration of the offline world: one dataclass per concern, a comment on every field.

Loaded and overridden with `vlmad.config.load_config(WorldConfig, yaml_path=..., overrides=[...])` and
saved beside every output with `save_resolved`, so a result file can always be traced to its settings.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field

from vlmad.config import load_config
from vlmad.horizon import TICK_S

SOURCE = "offline_world"  # `meta.source` of every result file / dataset written from this world
LABEL = "VLM-AD offline world (embedded default, no CARLA server): kinematic traffic on CARLA road networks"


@dataclass
class DynamicsConfig:
    """Ego vehicle: kinematic bicycle driven by carla.VehicleControl (sized like CARLA's Lincoln MKZ)."""

    length: float = 4.90  # body length, metres (CARLA mkz2017 bounding box 2 x 2.45)
    width: float = 2.12  # body width, metres
    height: float = 1.51  # body height, metres
    wheelbase: float = 2.87  # metres; the reference point is the body centre, axles at +-wheelbase/2
    max_steer_deg: float = 70.0  # front-wheel angle at |steer| = 1 (CARLA's default wheel max steer angle)
    steer_time_constant: float = 0.10  # first-order lag of the steering actuator, seconds
    max_lateral_accel: float = 8.0  # tyre grip: the turn is limited to v^2 * curvature <= this (m/s^2)
    max_accel: float = 3.5  # full-throttle acceleration at standstill, m/s^2
    max_speed: float = 30.0  # speed at which full throttle no longer accelerates, m/s
    max_brake: float = 8.0  # deceleration at brake = 1, m/s^2
    hand_brake_decel: float = 6.0  # deceleration of the hand brake, m/s^2
    rolling_resistance: float = 0.15  # constant deceleration while moving, m/s^2
    drag: float = 0.0004  # quadratic drag coefficient, 1/m
    engine_brake: float = 0.3  # extra deceleration with throttle = 0 and brake = 0, m/s^2
    max_reverse_speed: float = 5.0  # m/s


@dataclass
class TrafficConfig:
    """Background vehicles, pedestrians and traffic-light cycles."""

    num_vehicles: int = 30  # background vehicles spawned at reset (fewer if the town is small)
    vehicle_speed: float = 8.0  # desired cruise speed, m/s (each vehicle draws +-20 % around it)
    junction_speed: float = 5.0  # desired speed inside junctions, m/s
    idm_accel: float = 1.5  # IDM maximum acceleration, m/s^2
    idm_decel: float = 3.0  # IDM comfortable deceleration, m/s^2
    idm_gap: float = 2.0  # IDM standstill gap, metres
    idm_headway: float = 1.2  # IDM time headway, seconds
    spawn_clearance: float = 12.0  # min distance between spawned vehicles, metres
    stuck_respawn_s: float = 90.0  # a vehicle standing this long (gridlock) is moved to a free spot far away
    ego_clearance: float = 20.0  # no vehicle is spawned closer than this to the ego start, metres
    num_pedestrians: int = (
        6  # pedestrians crossing at crosswalks (0 disables; towns without crosswalks: none)
    )
    pedestrian_speed: float = 1.3  # walking speed, m/s
    green_s: float = 10.0  # green time of each approach, seconds (CARLA's default)
    yellow_s: float = 3.0  # yellow time, seconds
    all_red_s: float = 2.0  # all-red clearance between two approaches' greens, seconds


@dataclass
class CriteriaConfig:
    """Leaderboard-1.0 criteria parameters (defaults are the leaderboard's)."""

    seconds_per_meter: float = 0.8  # route timeout = seconds_per_meter x route length + initial delay
    initial_delay_s: float = 5.0  # (leaderboard 1.0 route_scenario.py)
    blocked_speed: float = 0.1  # AgentBlockedTest speed threshold, m/s
    blocked_time_s: float = 180.0  # seconds below the threshold that end the route
    offroute_max_m: float = 30.0  # InRouteTest offroad_max: farther than this from the route = deviation
    completion_distance_m: float = (
        10.0  # RouteCompletionTest: target reached within this distance (at > 99 %)
    )


@dataclass
class ExpertConfig:
    """The privileged expert (route, lights, other actors known exactly)."""

    cruise_speed: float = 7.0  # desired speed on straight roads, m/s
    max_lateral_accel: float = 2.5  # curve speed limit v^2 * curvature <= this, m/s^2
    stop_margin: float = 0.5  # metres between the front bumper and a stop line / crosswalk edge
    lead_gap: float = 3.5  # standstill gap to an obstacle, metres
    decel: float = 3.5  # comfortable deceleration used to decide whether a yellow can be stopped for, m/s^2
    lookahead_m: float = 40.0  # corridor length checked for obstacles, metres
    # Seconds it waits, standing, after what held it clears (the light turns green, the lead pulls away),
    # as a driver reacts. 0 = pulls away the same tick. With 0, 2 Hz keyframes almost never show a car
    # standing at a green light (8 of 2,400), so a planner trained on them never sees the cue to go
    # (docs/experiments.md).
    start_delay_s: float = 0.0


@dataclass
class WorldConfig:
    """Everything that defines an offline-world run (besides the town, routes and agent)."""

    dt: float = TICK_S  # simulation step, seconds (the leaderboard runs CARLA synchronously at 20 Hz)
    seed: int = 0  # seeds traffic spawn, route choice of background vehicles, light offsets
    image_width: int = 640  # rendered camera width (VAD-Tiny input resolution)
    image_height: int = 360  # rendered camera height
    dynamics: DynamicsConfig = field(default_factory=DynamicsConfig)
    traffic: TrafficConfig = field(default_factory=TrafficConfig)
    criteria: CriteriaConfig = field(default_factory=CriteriaConfig)
    expert: ExpertConfig = field(default_factory=ExpertConfig)


def add_world_args(p: argparse.ArgumentParser) -> None:
    """The options every offline-world CLI shares: seed, where maps come from, world config + overrides."""
    p.add_argument("--seed", type=int, default=0,
                   help="seeds routes, traffic and lights (default %(default)s)")
    p.add_argument("--maps-dir", default=None, help="folder of <town>.xodr files")
    p.add_argument("--carla-root", default=None,
                   help="CARLA install (maps in CarlaUE4/Content/Carla/Maps/OpenDrive)")
    p.add_argument("--config", default=None, help="world config YAML (world.config.WorldConfig)")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="config overrides, e.g. traffic.num_vehicles=10")


def world_config_from_args(a: argparse.Namespace) -> WorldConfig:
    """The WorldConfig of `add_world_args` options (YAML, then overrides, then --seed)."""
    cfg = load_config(WorldConfig, yaml_path=a.config, overrides=a.set)
    cfg.seed = a.seed
    return cfg
