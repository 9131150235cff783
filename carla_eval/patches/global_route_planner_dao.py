"""Compatibility module for CARLA >= 0.9.12 (installed by vlm-ad's carla_eval/setup_carla.sh).

CARLA 0.9.12 removed `agents.navigation.global_route_planner_dao` and changed the planner from
`GlobalRoutePlanner(GlobalRoutePlannerDAO(map, resolution)); grp.setup()` to
`GlobalRoutePlanner(map, resolution)`. Leaderboard 1.0 (`leaderboard/utils/route_manipulation.py`)
and scenario_runner's leaderboard branch still use the old form. Importing this module:
- provides `GlobalRoutePlannerDAO` (map + sampling resolution, with the old accessors), and
- lets `GlobalRoutePlanner` accept such a DAO and keeps a no-op `setup()`,
so that code runs unchanged on 0.9.15 / 0.9.16. Nothing else in CARLA's agents is touched. This file
is installed only where CARLA has no module of this name (never over the real 0.9.10/0.9.11 one).
"""

from agents.navigation import global_route_planner as _grp

VLMAD_COMPAT = True  # marker: this is the vlm-ad shim, not CARLA's original module


class GlobalRoutePlannerDAO:
    """The pre-0.9.12 data-access object: a map and the sampling resolution (metres)."""

    def __init__(self, wmap, sampling_resolution=2.0):
        self._wmap = wmap
        self._sampling_resolution = sampling_resolution

    def get_map(self):
        return self._wmap

    def get_resolution(self):
        return self._sampling_resolution

    def get_topology(self):
        return self._wmap.get_topology()

    def get_waypoint(self, location):
        return self._wmap.get_waypoint(location)


_Planner = _grp.GlobalRoutePlanner
if not getattr(_Planner, "_vlmad_accepts_dao", False):
    _new_init = _Planner.__init__

    def _init(self, wmap, sampling_resolution=None):
        if isinstance(wmap, GlobalRoutePlannerDAO):
            wmap, sampling_resolution = wmap.get_map(), wmap.get_resolution()
        if sampling_resolution is None:
            raise TypeError("GlobalRoutePlanner needs (map, sampling_resolution) or a GlobalRoutePlannerDAO")
        _new_init(self, wmap, sampling_resolution)

    _Planner.__init__ = _init
    if not hasattr(_Planner, "setup"):
        _Planner.setup = lambda self: None  # the graph is built in __init__ since 0.9.12
    _Planner._vlmad_accepts_dao = True
