"""The leaderboard's `AutonomousAgent` and `Track` when the leaderboard is importable, else stand-ins.

Under `leaderboard_evaluator.py` the real base class is used (its `__call__` reads the sensor interface
and its `set_global_plan` downsamples the route). Without the leaderboard (tests, CI, the offline world)
the stand-in below keeps the same interface and the same route downsampling (leaderboard 1.0:
`downsample_route(route, 50)`, mirrored by `downsample_route` below), so the agent behaves the same.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from enum import Enum
from pathlib import Path

from vlmad.commands import RoadOption
from vlmad.errors import UserError


def downsample_route(route: list[tuple], sample_factor: float) -> list[int]:
    """Indices kept by the leaderboard's `downsample_route` (what `AutonomousAgent.set_global_plan` uses,
    with sample_factor 50 in leaderboard 1.0): every lane change, every change of option, every
    `sample_factor` metres, and the last point."""
    ids: list[int] = []
    prev = None
    dist = 0.0
    lane_changes = (RoadOption.CHANGELANELEFT, RoadOption.CHANGELANERIGHT)
    for i, (point, option) in enumerate(route):
        if option in lane_changes:
            ids.append(i)
            dist = 0.0
        elif prev != option and prev not in lane_changes:
            ids.append(i)
            dist = 0.0
        elif dist > sample_factor:
            ids.append(i)
            dist = 0.0
        elif i == len(route) - 1:
            ids.append(i)
            dist = 0.0
        else:
            dist += point.location.distance(route[i - 1][0].location)
        prev = option
    return ids


try:  # the real thing, under the CARLA leaderboard
    from leaderboard.autoagents.autonomous_agent import AutonomousAgent, Track

    LEADERBOARD = True
except ImportError:  # leaderboard (or scenario_runner) not installed
    LEADERBOARD = False

    class Track(Enum):  # type: ignore[no-redef]
        """Leaderboard 1.0 tracks."""

        SENSORS = "SENSORS"
        MAP = "MAP"

    class AutonomousAgent:  # type: ignore[no-redef]
        """Stand-in for leaderboard 1.0's base class: same constructor, attributes and route handling."""

        def __init__(self, path_to_conf_file: str) -> None:
            self.track = Track.SENSORS
            self._global_plan = None  # downsampled GPS route [({lat, lon, z}, option)]
            self._global_plan_world_coord = None  # downsampled route [(carla.Transform, option)]
            self.wallclock_t0 = None
            self.setup(path_to_conf_file)

        def setup(self, path_to_conf_file: str) -> None:
            pass

        def sensors(self) -> list[dict]:
            return []

        def run_step(self, input_data: dict, timestamp: float):
            raise NotImplementedError

        def destroy(self) -> None:
            pass

        def set_global_plan(self, global_plan_gps: list, global_plan_world_coord: list) -> None:
            ds_ids = downsample_route(global_plan_world_coord, 50)
            self._global_plan_world_coord = [(global_plan_world_coord[x][0], global_plan_world_coord[x][1])
                                             for x in ds_ids]
            self._global_plan = [global_plan_gps[x] for x in ds_ids]


def load_agent_class(spec: str) -> type:
    """The agent class of `pkg.module:Class`, `path/file.py:Class`, or a module / file (get_entry_point())."""
    target, _, cls_name = spec.partition(":")
    try:
        if target.endswith(".py") or os.sep in target:
            path = Path(target).expanduser().resolve()
            if not path.is_file():
                raise UserError(f"agent {spec!r}: {path} does not exist")
            name = f"_leaderboard_agent_{path.stem}"
            mod_spec = importlib.util.spec_from_file_location(name, path)
            module = importlib.util.module_from_spec(mod_spec)
            sys.modules[name] = module
            mod_spec.loader.exec_module(module)
        else:
            module = importlib.import_module(target)
    except UserError:
        raise
    except Exception as e:  # noqa: BLE001 - any import failure of the user's agent is their error to fix
        raise UserError(f"agent {spec!r}: importing {target} failed: {type(e).__name__}: {e}") from None
    if not cls_name:
        entry = getattr(module, "get_entry_point", None)
        if entry is None:
            raise UserError(f"agent {spec!r}: {target} has no get_entry_point(); name the class as "
                            f"{target}:ClassName")
        cls_name = entry()
    cls = getattr(module, cls_name, None)
    if not isinstance(cls, type):
        raise UserError(f"agent {spec!r}: {target} has no class {cls_name!r}")
    for method in ("sensors", "run_step"):
        if not callable(getattr(cls, method, None)):
            raise UserError(f"agent {spec!r}: {cls_name} has no {method}(); not a leaderboard agent")
    return cls
