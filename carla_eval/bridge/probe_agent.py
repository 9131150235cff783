"""A deterministic stand-in agent for checking a bridge set-up without a model (tests, benchmark, users).

    python -m carla_eval.bridge.server --listen unix:/tmp/b.sock \
        --agent carla_eval.bridge.probe_agent:ProbeAgent

Its control is a checksum of everything it was given (every byte of every sensor array, frames,
timestamp, the route plan), so two runs that feed it the same data return bit-identical controls and any
change anywhere changes them: that is how the round-trip test proves the bridge lossless. It drives
nowhere useful. `--agent-config` may be "" or a JSON file with the keys of `ProbeOptions`.
"""

from __future__ import annotations

import json
import struct
import time
import zlib
from dataclasses import dataclass, fields

import numpy as np

from vlmad.errors import UserError
from vlmad.rig import CARLA_RIG


def get_entry_point() -> str:
    return "ProbeAgent"


@dataclass
class ProbeOptions:
    camera_size: tuple[int, int] = (1600, 900)  # (W, H) the cameras of sensors() render
    input_size: tuple[int, int] | None = None  # (W, H) it wants (input_image_sizes); None = camera_size
    checksum: bool = True  # False: skip the image checksum (the benchmark measures transport alone)
    fail_at_tick: int = -1  # >= 0: run_step raises at this tick (tests an agent failure)
    sleep_s: float = 0.0  # seconds each run_step sleeps (tests the client's timeout)


class ProbeAgent:
    """Leaderboard-style agent (constructor calls setup) whose control is a checksum of its inputs."""

    def __init__(self, path_to_conf_file: str) -> None:
        self.setup(path_to_conf_file)

    def setup(self, path_to_conf_file: str) -> None:
        raw = {}
        if path_to_conf_file:
            try:
                with open(path_to_conf_file) as f:
                    raw = json.load(f)
            except (OSError, ValueError) as e:
                raise UserError(f"probe agent config {path_to_conf_file}: {e}") from None
        names = {f.name for f in fields(ProbeOptions)}
        if not isinstance(raw, dict) or set(raw) - names:
            raise UserError(f"probe agent config {path_to_conf_file}: keys must be among {sorted(names)}")
        self.opts = ProbeOptions(**raw)
        self.track = "SENSORS"
        self.crc = 0
        self.tick = 0
        self.destroyed = False

    def sensors(self) -> list[dict]:
        rig = CARLA_RIG.with_image_size(*self.opts.camera_size)
        return rig.carla_sensors()

    def input_image_sizes(self) -> dict[str, tuple[int, int]]:
        size = tuple(self.opts.input_size or self.opts.camera_size)
        return {name: size for name in CARLA_RIG.camera_names}

    def set_global_plan(self, global_plan_gps: list, global_plan_world_coord: list) -> None:
        for gps, opt in global_plan_gps:
            self.crc = zlib.crc32(struct.pack("<3dq", gps["lat"], gps["lon"], gps["z"], int(opt)), self.crc)
        for t, opt in global_plan_world_coord:
            loc, rot = t.location, t.rotation
            vals = (loc.x, loc.y, loc.z, rot.roll, rot.pitch, rot.yaw)
            self.crc = zlib.crc32(struct.pack("<6dq", *vals, int(opt)), self.crc)

    def _feed(self, value: object) -> None:
        if isinstance(value, np.ndarray):
            self.crc = zlib.crc32(f"{value.dtype.str}{value.shape}".encode(), self.crc)
            if self.opts.checksum or value.ndim < 3:
                self.crc = zlib.crc32(np.ascontiguousarray(value).data, self.crc)
        elif isinstance(value, dict):
            for k in sorted(value):
                self.crc = zlib.crc32(str(k).encode(), self.crc)
                self._feed(value[k])
        elif isinstance(value, (tuple, list)):
            for v in value:
                self._feed(v)
        else:
            self.crc = zlib.crc32(repr(value).encode(), self.crc)

    def run_step(self, input_data: dict, timestamp: float):
        import carla

        if self.tick == self.opts.fail_at_tick:
            raise RuntimeError(f"probe agent: failing at tick {self.tick} as configured")
        if self.opts.sleep_s:
            time.sleep(self.opts.sleep_s)
        self.tick += 1
        self._feed(input_data)
        self._feed(float(timestamp))
        c = self.crc
        return carla.VehicleControl(throttle=(c % 997) / 996.0, steer=((c >> 10) % 1999) / 999.0 - 1.0,
                                    brake=float((c >> 21) & 1), hand_brake=bool((c >> 22) & 1),
                                    reverse=bool((c >> 23) & 1))

    def destroy(self) -> None:
        self.destroyed = True


# ----------------------------------------------------------------------------------------------------
# synthetic leaderboard data (tests and the benchmark)
# ----------------------------------------------------------------------------------------------------
def synthetic_route(n: int = 40, spacing: float = 2.0, geo_ref: tuple[float, float] = (42.0, 2.0)):
    """A straight route along CARLA +x as the leaderboard hands it to set_global_plan:
    ([({lat, lon, z}, RoadOption)], [(carla.Transform, RoadOption)])."""
    import carla

    from vlmad.commands import RoadOption
    from vlmad.gnss import carla_xy_to_gnss

    gps, world = [], []
    for i in range(n):
        x, y = 10.0 + spacing * i, 5.0
        option = RoadOption.LANEFOLLOW if i < n - 5 else RoadOption.LEFT
        lat, lon = carla_xy_to_gnss(x, y, *geo_ref)
        gps.append(({"lat": float(lat), "lon": float(lon), "z": 0.0}, option))
        world.append((carla.Transform(carla.Location(x=x, y=y, z=0.0), carla.Rotation(yaw=0.0)), option))
    return gps, world


def synthetic_input(tick: int, rng: np.random.Generator, camera_size: tuple[int, int] = (1600, 900),
                    cameras: tuple[str, ...] = CARLA_RIG.camera_names, speed: float = 3.0,
                    geo_ref: tuple[float, float] = (42.0, 2.0)) -> dict:
    """One tick of leaderboard input_data: random BGRA cameras, GNSS moving along the synthetic route at
    `speed` m/s (20 Hz), IMU with gravity and a compass pointing along +x (east), speedometer."""
    from vlmad.gnss import carla_xy_to_gnss

    w, h = camera_size
    out: dict = {name: (tick, rng.integers(0, 256, (h, w, 4), dtype=np.uint8)) for name in cameras}
    x = 10.0 + speed * 0.05 * tick + CARLA_RIG.imu_x
    lat, lon = carla_xy_to_gnss(x, 5.0, *geo_ref)
    out["GPS"] = (tick, np.array([float(lat), float(lon), 0.0]))
    out["IMU"] = (tick, np.array([0.01 * tick % 0.3, 0.0, 9.81, 0.0, 0.0, 0.0, np.pi / 2]))
    out["SPEED"] = (tick, {"speed": speed})
    return out
