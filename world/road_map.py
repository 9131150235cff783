"""Road maps of the offline world: towns, lane graph, traffic lights, crosswalks, random routes.

A `RoadMap` wraps a `carla.Map` built offline from OpenDRIVE text (`carla.Map(name, xodr)`, no server)
and adds what the simulation needs in our right-handed world frame (x east, y north; CARLA's y flipped,
conversions in `vlmad.frames`): the lane graph the background traffic drives on (built from the route
planner's graph, `world.global_planner`), the traffic lights of each junction approach, and the
crosswalks. `random_routes` draws leaderboard routes (`routes.parse.Route`) over the lane graph.

Towns: a path to any `.xodr`; `VlmadGrid` (the project's generated default town) or `VlmadGrid<X>x<Y>`;
or a CARLA town name looked up as `<name>.xodr` in `maps_dir` and in
`<carla_root>/CarlaUE4/Content/Carla/Maps/OpenDrive/`.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import carla
import numpy as np

from routes.parse import Route, Waypoint
from vlmad.commands import RoadOption
from vlmad.errors import UserError
from vlmad.frames import (
    carla_location_to_ego,
    carla_pose_to_ego,
    ego_to_carla_location,
    ego_to_carla_xyz,
    ego_yaw_to_carla,
)
from world.global_planner import GlobalRoutePlanner
from world.xodr_gen import TownSpec, generate_town

GENERATED_TOWN = "VlmadGrid"
_IDENTITY = carla.Transform()
_GRID_RE = re.compile(r"VlmadGrid(?:(\d+)x(\d+))?")
CARLA_MAPS_SUBDIR = Path("CarlaUE4/Content/Carla/Maps/OpenDrive")


# ----------------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------------
def resolve_town(
    town: str, maps_dir: str | Path | None = None, carla_root: str | Path | None = None
) -> tuple[str, str]:
    """(map name, OpenDRIVE text) for a town argument (see the module docstring)."""
    m = _GRID_RE.fullmatch(town)
    if m:
        spec = TownSpec(name=town)
        if m.group(1):
            spec.grid_x, spec.grid_y = int(m.group(1)), int(m.group(2))
        return town, generate_town(spec)
    path = Path(town)
    if path.suffix == ".xodr" or path.is_file():
        if not path.is_file():
            raise UserError(f"OpenDRIVE file {path} does not exist")
        return path.stem, path.read_text()
    tried = []
    for folder in (maps_dir, Path(carla_root) / CARLA_MAPS_SUBDIR if carla_root else None):
        if folder is None:
            continue
        cand = Path(folder) / f"{town}.xodr"
        tried.append(str(cand))
        if cand.is_file():
            return town, cand.read_text()
    raise UserError(
        f"town {town!r} not found (looked in: {', '.join(tried) or 'nowhere'}). Give a path to its .xodr, "
        f"pass --carla-root pointing at a CARLA install (maps in {CARLA_MAPS_SUBDIR}), or use the generated "
        f"town {GENERATED_TOWN!r} (python -m scripts.make_town writes one to a file)."
    )


def load_map(
    town: str = GENERATED_TOWN,
    maps_dir: str | Path | None = None,
    carla_root: str | Path | None = None,
    resolution: float = 1.0,
) -> RoadMap:
    """Load a town into a `RoadMap` (raises `UserError` when it cannot be found or parsed)."""
    name, xodr = resolve_town(town, maps_dir, carla_root)
    return RoadMap(name, xodr, resolution)


# ----------------------------------------------------------------------------------------------------
# Lane graph, traffic lights, crosswalks (our frame)
# ----------------------------------------------------------------------------------------------------
@dataclass
class Segment:
    """One lane segment of the topology, densely sampled, in our frame."""

    id: int
    key: tuple[int, int, int]  # (road_id, section_id, lane_id)
    pts: np.ndarray  # (N, 2) lane centre points
    yaw: np.ndarray  # (N,) heading, radians CCW
    s: np.ndarray  # (N,) arc length from the segment start
    width: float  # lane width, metres
    junction: int  # junction id, -1 outside junctions
    succ: list[int] = field(default_factory=list)
    pred: list[int] = field(default_factory=list)
    light: int = -1  # index into RoadMap.lights of the light controlling this segment's end (incoming lanes)

    @property
    def length(self) -> float:
        return float(self.s[-1])


@dataclass
class TrafficLight:
    """A traffic light = one signalised approach of a junction (CARLA keeps one light actor per approach)."""

    id: int  # OpenDRIVE signal id
    junction: int  # junction id
    phase: int  # position in the junction's cycle (one approach green at a time, as CARLA's groups)
    segments: list[int]  # incoming lane segments whose end is this light's stop line
    stop_pts: np.ndarray  # (M, 2) lane centre at the stop line (junction entry), one per lane
    stop_yaw: np.ndarray  # (M,) lane heading there
    stop_width: np.ndarray  # (M,) lane widths
    pole: np.ndarray  # (3,) position of the light's pole (our frame)
    pole_yaw: float  # direction the light faces (towards the approaching traffic), radians


class RoadMap:
    """A town: the carla.Map plus lane graph, route planner, lights and crosswalks in our frame."""

    def __init__(self, name: str, xodr: str, resolution: float = 1.0):
        self.name = name
        self.xodr = xodr
        try:
            self.cmap = carla.Map(name, xodr)
        except RuntimeError as e:
            raise UserError(f"town {name!r}: carla.Map could not parse the OpenDRIVE text ({e})") from None
        if not self.cmap.get_topology():
            raise UserError(f"town {name!r} has no lanes (is it an OpenDRIVE file?)")
        self.resolution = resolution

    @cached_property
    def planner(self) -> GlobalRoutePlanner:
        return GlobalRoutePlanner(self.cmap, self.resolution)

    # --- lane graph ---------------------------------------------------------------------------------
    @cached_property
    def segments(self) -> list[Segment]:
        g = self.planner.graph
        segs: list[Segment] = []
        edge_to_seg: dict[tuple[int, int], int] = {}
        for n1, n2, e in g.edges(data=True):
            if e["type"] != RoadOption.LANEFOLLOW:
                continue
            wps = [e["entry_waypoint"], *e["path"], e["exit_waypoint"]]
            poses = np.array([(*p[:2], yaw) for p, yaw in (carla_pose_to_ego(w.transform) for w in wps)])
            keep = np.concatenate([[True], np.linalg.norm(np.diff(poses[:, :2], axis=0), axis=1) > 0.05])
            poses = poses[keep]
            if len(poses) < 2:
                continue
            s = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(poses[:, :2], axis=0), axis=1))])
            entry = e["entry_waypoint"]
            junction = entry.get_junction().id if entry.is_junction else -1
            edge_to_seg[(n1, n2)] = len(segs)
            segs.append(
                Segment(
                    len(segs),
                    (entry.road_id, entry.section_id, entry.lane_id),
                    poses[:, :2],
                    poses[:, 2],
                    s,
                    float(entry.lane_width),
                    junction,
                )
            )
        for (_n1, n2), sid in edge_to_seg.items():
            for nb in g.successors(n2):
                nid = edge_to_seg.get((n2, nb))
                if nid is not None:
                    segs[sid].succ.append(nid)
                    segs[nid].pred.append(sid)
        self._lights = self._find_lights(segs)  # also sets Segment.light of the incoming lanes
        return segs

    @cached_property
    def segment_by_key(self) -> dict[tuple[int, int, int], int]:
        return {s.key: s.id for s in self.segments}

    def locate(self, xy: np.ndarray) -> tuple[int, float] | None:
        """(segment id, s) of the lane point nearest to `xy` (our frame), via the map's waypoint lookup."""
        wp = self.cmap.get_waypoint(ego_to_carla_location(xy))
        if wp is None:
            return None
        sid = self.segment_by_key.get((wp.road_id, wp.section_id, wp.lane_id))
        if sid is None:
            return None
        seg = self.segments[sid]
        i = int(np.argmin(np.linalg.norm(seg.pts - np.asarray(xy)[:2], axis=1)))
        return sid, float(seg.s[i])

    # --- traffic lights ------------------------------------------------------------------------------
    @property
    def lights(self) -> list[TrafficLight]:
        """One light per signalised junction approach (built with the lane graph)."""
        _ = self.segments
        return self._lights

    def _find_lights(self, segs: list[Segment]) -> list[TrafficLight]:
        # Incoming lanes: non-junction segments whose successors are junction segments.
        approaches: dict[tuple[int, int], list[int]] = {}
        for sg in segs:
            if sg.junction >= 0:
                continue
            js = {segs[n].junction for n in sg.succ if segs[n].junction >= 0}
            for j in js:
                approaches.setdefault((j, sg.key[0]), []).append(sg.id)
        lights: list[TrafficLight] = []
        per_junction: dict[int, int] = {}
        for (junction, road), sids in sorted(approaches.items()):
            sid_ids: list[str] = []
            pole = None
            pole_yaw = 0.0
            # A light of this approach sits on the approach road or is referenced by one of its connectors
            # (a landmark farther along belongs to the next junction).
            connectors = [segs[n] for s_ in sids for n in segs[s_].succ if segs[n].junction == junction]
            allowed = {road} | {c.key[0] for c in connectors}
            reach = max([c.length for c in connectors], default=0.0)
            for sid in sids:
                sg = segs[sid]
                back = max(0.0, sg.length - 20.0)
                i = int(np.searchsorted(sg.s, back))
                wp = self.cmap.get_waypoint(ego_to_carla_location(sg.pts[min(i, len(sg.pts) - 1)]))
                if wp is None:
                    continue
                for lm in wp.get_landmarks_of_type(sg.length - back + reach, "1000001", False):
                    if lm.road_id not in allowed:
                        continue
                    sid_ids.append(lm.id)
                    if pole is None or lm.road_id == road:
                        pole = carla_location_to_ego(lm.transform.location)
                        pole_yaw = float(sg.yaw[-1] + math.pi)
            if not sid_ids:
                continue  # unsignalised approach
            light_id = int(sid_ids[0]) if sid_ids[0].lstrip("-").isdigit() else 100000 + len(lights)
            end_pts = np.array([segs[s].pts[-1] for s in sids])
            end_yaw = np.array([segs[s].yaw[-1] for s in sids])
            if pole is None:
                pole = np.array([*end_pts[-1], 0.0])
            phase = per_junction.get(junction, 0)
            per_junction[junction] = phase + 1
            lights.append(
                TrafficLight(
                    light_id,
                    junction,
                    phase,
                    list(sids),
                    end_pts,
                    end_yaw,
                    np.array([segs[s].width for s in sids]),
                    pole,
                    pole_yaw,
                )
            )
            for s in sids:
                segs[s].light = len(lights) - 1
        return lights

    @cached_property
    def junction_phases(self) -> dict[int, int]:
        """junction id -> number of signalised approaches (length of its cycle in phases)."""
        out: dict[int, int] = {}
        for lt in self.lights:
            out[lt.junction] = out.get(lt.junction, 0) + 1
        return out

    # --- crosswalks ----------------------------------------------------------------------------------
    @cached_property
    def crosswalks(self) -> list[np.ndarray]:
        """Closed crosswalk polygons (K, 2) in our frame."""
        pts = self.cmap.get_crosswalks()
        polys, cur = [], []
        for p in pts:
            cur.append(carla_location_to_ego(p)[:2])
            if len(cur) > 2 and abs(cur[0][0] - cur[-1][0]) < 1e-3 and abs(cur[0][1] - cur[-1][1]) < 1e-3:
                polys.append(np.array(cur))
                cur = []
        return polys

    def driving_lane_at(self, xy: np.ndarray) -> carla.Waypoint | None:
        """The driving-lane waypoint under `xy` without projecting (None when off every driving lane)."""
        return self.cmap.get_waypoint(ego_to_carla_location(xy), project_to_road=False)

    @cached_property
    def junction_boxes(self) -> list[carla.BoundingBox]:
        """Bounding boxes (CARLA frame) of the junctions: paved as a whole in CARLA's towns."""
        boxes, seen = [], set()
        for seg in self.segments:
            if seg.junction >= 0 and seg.junction not in seen:
                seen.add(seg.junction)
                wp = self.cmap.get_waypoint(ego_to_carla_location(seg.pts[len(seg.pts) // 2]))
                if wp is not None and wp.is_junction:
                    boxes.append(wp.get_junction().bounding_box)
        return boxes

    def on_road_surface(self, xy: np.ndarray) -> bool:
        """True when `xy` is on any OpenDRIVE lane (driving, sidewalk, shoulder, ...) or in a junction box."""
        loc = ego_to_carla_location(xy)
        if self.cmap.get_waypoint(loc, project_to_road=False, lane_type=carla.LaneType.Any) is not None:
            return True
        return any(b.contains(loc, _IDENTITY) for b in self.junction_boxes)


# ----------------------------------------------------------------------------------------------------
# Random routes
# ----------------------------------------------------------------------------------------------------
def random_routes(
    rmap: RoadMap,
    n: int,
    rng: np.random.Generator,
    min_length: float = 150.0,
    max_length: float = 400.0,
    min_junctions: int = 1,
    first_id: int = 0,
) -> list[Route]:
    """`n` random routes: a random walk over the lane graph (no U-turns) through at least `min_junctions`
    junctions, given as keypoints after every junction (so A* between keypoints follows the walk)."""
    segs = rmap.segments
    starts = [s for s in segs if s.junction < 0 and s.length > 25.0]
    if not starts:
        raise UserError(f"town {rmap.name!r} has no lane long enough to start a route")
    routes: list[Route] = []
    attempts = 0
    while len(routes) < n:
        attempts += 1
        if attempts > 200 * max(n, 1):
            raise UserError(f"could not generate {n} routes of {min_length}-{max_length} m in {rmap.name!r}")
        seg = starts[int(rng.integers(len(starts)))]
        s0 = float(rng.uniform(2.0, seg.length - 10.0))
        target = float(rng.uniform(min_length, max_length))
        i0 = int(np.searchsorted(seg.s, s0))
        kps = [(seg.pts[i0], seg.yaw[i0])]
        travelled = seg.length - seg.s[i0]
        junctions = 0
        cur = seg
        ok = True
        while travelled < target:
            if not cur.succ:
                ok = False
                break
            nxt = segs[cur.succ[int(rng.integers(len(cur.succ)))]]
            if nxt.junction >= 0 and cur.junction < 0:
                junctions += 1
            if nxt.junction < 0 and cur.junction >= 0 and nxt.length > 12.0:
                j = min(len(nxt.pts) - 1, int(np.searchsorted(nxt.s, 6.0)))
                kps.append((nxt.pts[j], nxt.yaw[j]))
            travelled += nxt.length
            cur = nxt
        if not ok or junctions < min_junctions or cur.junction >= 0 or cur.length < 12.0:
            continue
        over = travelled - target
        s_end = float(np.clip(cur.length - over, 6.0, cur.length - 3.0))
        j = int(np.searchsorted(cur.s, s_end))
        j = min(j, len(cur.pts) - 1)
        if len(kps) > 1 and np.linalg.norm(kps[-1][0] - cur.pts[j]) < 5.0:
            kps.pop()
        kps.append((cur.pts[j], cur.yaw[j]))
        waypoints = []
        for p, y in kps:
            cx, cy, _ = ego_to_carla_xyz([p[0], p[1], 0.0])
            waypoints.append(Waypoint(float(cx), float(cy), 0.0, yaw=float(ego_yaw_to_carla(y))))
        routes.append(Route(str(first_id + len(routes)), rmap.name, waypoints))
    return routes
