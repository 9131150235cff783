"""Road maps, route planning and route files for the offline world.

A `RoadMap` wraps a `carla.Map` built offline from OpenDRIVE text (`carla.Map(name, xodr)`, no server)
and adds what the simulation needs in our right-handed world frame (x east, y north; CARLA's y flipped):
the lane graph the background traffic drives on, the traffic lights of each junction approach, and the
crosswalks.

Route planning mirrors CARLA 0.9.10's `GlobalRoutePlanner` + `GlobalRoutePlannerDAO` (the planner the
leaderboard 1.0 uses in `interpolate_trajectory`): a networkx graph whose edges are the topology's lane
segments (sampled every `resolution` metres), zero-cost lane-change links, A* with a straight-line
heuristic, and the same turn decision at junctions (LEFT / RIGHT / STRAIGHT from the cross product of the
entry vector and the junction chord against the other exits; LANEFOLLOW elsewhere; CHANGELANE* on
lane-change links). `interpolate_trajectory` returns the dense route and its GPS twin exactly as the
leaderboard passes them to `agent.set_global_plan`, and `downsample_route` is the leaderboard's own
downsampling that an agent's `set_global_plan` applies.

Towns: a path to any `.xodr`; `VlmadGrid` (the project's generated default town) or `VlmadGrid<X>x<Y>`;
or a CARLA town name looked up as `<name>.xodr` in `maps_dir` and in
`<carla_root>/CarlaUE4/Content/Carla/Maps/OpenDrive/`.
"""

from __future__ import annotations

import math
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import carla
import networkx as nx
import numpy as np

from vlmad.commands import RoadOption
from vlmad.errors import UserError
from vlmad.frames import carla_yaw_to_ego, ego_yaw_to_carla
from world.sensors import carla_xy_to_gnss, geo_reference
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
# Conversions between carla objects and our frame
# ----------------------------------------------------------------------------------------------------
def loc_to_xy(loc: carla.Location) -> np.ndarray:
    """carla.Location -> (x, y, z) in our right-handed world frame."""
    return np.array([loc.x, -loc.y, loc.z])


def xy_to_loc(p: np.ndarray | tuple) -> carla.Location:
    """(x, y[, z]) in our frame -> carla.Location."""
    return carla.Location(float(p[0]), float(-p[1]), float(p[2]) if len(p) > 2 else 0.0)


def wp_pose(wp: carla.Waypoint) -> tuple[float, float, float]:
    """(x, y, yaw) of a waypoint in our frame."""
    t = wp.transform
    return t.location.x, -t.location.y, float(carla_yaw_to_ego(t.rotation.yaw))


def make_transform(x: float, y: float, z: float, yaw: float) -> carla.Transform:
    """A carla.Transform for a pose in our frame (yaw radians CCW)."""
    return carla.Transform(
        carla.Location(float(x), float(-y), float(z)),
        carla.Rotation(pitch=0.0, yaw=float(ego_yaw_to_carla(yaw)), roll=0.0),
    )


def location_to_gps(ref: tuple[float, float], loc: carla.Location) -> dict:
    """GPS dict {lat, lon, z} of a location, as the leaderboard's `_location_to_gps`: Mercator about the
    map's geoReference `ref` = `world.sensors.geo_reference(map)` (the GNSS sensor's math, so route and
    sensor agree)."""
    lat, lon = carla_xy_to_gnss(loc.x, loc.y, *ref)
    return {"lat": float(lat), "lon": float(lon), "z": loc.z}


def _vec(a: carla.Location, b: carla.Location) -> np.ndarray:
    d = np.array([b.x - a.x, b.y - a.y, b.z - a.z])
    return d / (np.linalg.norm(d) + np.finfo(float).eps)


# ----------------------------------------------------------------------------------------------------
# Route planner (CARLA 0.9.10 GlobalRoutePlanner semantics, CARLA coordinates)
# ----------------------------------------------------------------------------------------------------
class RoutePlanner:
    """A* route planning on the lane topology with leaderboard-1.0 RoadOption decisions."""

    def __init__(self, cmap: carla.Map, resolution: float = 1.0):
        self.map = cmap
        self.resolution = resolution
        self.topology = self._topology()
        self.graph = nx.DiGraph()
        self.id_map: dict[tuple, int] = {}
        self.road_id_to_edge: dict[int, dict[int, dict[int, tuple[int, int]]]] = {}
        self._build_graph()
        self._find_loose_ends()
        self._lane_change_link()
        self._intersection_end_node = -1
        self._previous_decision = RoadOption.VOID

    def _topology(self) -> list[dict]:
        out = []
        for wp1, wp2 in self.map.get_topology():
            l1, l2 = wp1.transform.location, wp2.transform.location
            r = np.round([l1.x, l1.y, l1.z, l2.x, l2.y, l2.z], 0)
            seg = {"entry": wp1, "exit": wp2, "entryxyz": tuple(r[:3]), "exitxyz": tuple(r[3:]), "path": []}
            if l1.distance(l2) > self.resolution:
                w = wp1.next(self.resolution)[0]
                while w.transform.location.distance(l2) > self.resolution:
                    seg["path"].append(w)
                    nxt = w.next(self.resolution)
                    if not nxt:
                        break
                    w = nxt[0]
            else:
                nxt = wp1.next(self.resolution)
                if nxt:
                    seg["path"].append(nxt[0])
            out.append(seg)
        return out

    def _node(self, xyz: tuple) -> int:
        if xyz not in self.id_map:
            self.id_map[xyz] = len(self.id_map)
            self.graph.add_node(self.id_map[xyz], vertex=xyz)
        return self.id_map[xyz]

    def _build_graph(self) -> None:
        for seg in self.topology:
            entry, exit_ = seg["entry"], seg["exit"]
            n1, n2 = self._node(seg["entryxyz"]), self._node(seg["exitxyz"])
            self.road_id_to_edge.setdefault(entry.road_id, {}).setdefault(entry.section_id, {})[
                entry.lane_id
            ] = (n1, n2)
            ev = entry.transform.rotation.get_forward_vector()
            xv = exit_.transform.rotation.get_forward_vector()
            self.graph.add_edge(
                n1,
                n2,
                length=len(seg["path"]) + 1,
                path=seg["path"],
                entry_waypoint=entry,
                exit_waypoint=exit_,
                entry_vector=np.array([ev.x, ev.y, ev.z]),
                exit_vector=np.array([xv.x, xv.y, xv.z]),
                net_vector=_vec(entry.transform.location, exit_.transform.location),
                intersection=entry.is_junction,
                type=RoadOption.LANEFOLLOW,
            )

    def _find_loose_ends(self) -> None:
        count = 0
        for seg in self.topology:
            end = seg["exit"]
            if end.lane_id in self.road_id_to_edge.get(end.road_id, {}).get(end.section_id, {}):
                continue
            count += 1
            n1, n2 = self.id_map[seg["exitxyz"]], -count
            self.road_id_to_edge.setdefault(end.road_id, {}).setdefault(end.section_id, {})[end.lane_id] = (
                n1,
                n2,
            )
            path = []
            nxt = end.next(self.resolution)
            while nxt and (nxt[0].road_id, nxt[0].section_id, nxt[0].lane_id) == (
                end.road_id,
                end.section_id,
                end.lane_id,
            ):
                path.append(nxt[0])
                nxt = nxt[0].next(self.resolution)
            if path:
                loc = path[-1].transform.location
                self.graph.add_node(n2, vertex=(loc.x, loc.y, loc.z))
                self.graph.add_edge(
                    n1,
                    n2,
                    length=len(path) + 1,
                    path=path,
                    entry_waypoint=end,
                    exit_waypoint=path[-1],
                    entry_vector=None,
                    exit_vector=None,
                    net_vector=None,
                    intersection=end.is_junction,
                    type=RoadOption.LANEFOLLOW,
                )

    def _localize(self, location: carla.Location) -> tuple[int, int] | None:
        wp = self.map.get_waypoint(location)
        try:
            return self.road_id_to_edge[wp.road_id][wp.section_id][wp.lane_id]
        except KeyError:
            return None

    def _lane_change_link(self) -> None:
        for seg in self.topology:
            left_found = right_found = False
            if seg["entry"].is_junction:
                continue
            for wp in seg["path"]:
                for side in ("right", "left"):
                    found = right_found if side == "right" else left_found
                    flag = carla.LaneChange.Right if side == "right" else carla.LaneChange.Left
                    if found or not (wp.lane_change & flag):
                        continue
                    other = wp.get_right_lane() if side == "right" else wp.get_left_lane()
                    if (
                        other is None
                        or other.lane_type != carla.LaneType.Driving
                        or other.road_id != wp.road_id
                    ):
                        continue
                    nxt = self._localize(other.transform.location)
                    if nxt is None:
                        continue
                    option = RoadOption.CHANGELANERIGHT if side == "right" else RoadOption.CHANGELANELEFT
                    self.graph.add_edge(
                        self.id_map[seg["entryxyz"]],
                        nxt[0],
                        entry_waypoint=seg["entry"],
                        exit_waypoint=self.graph.edges[nxt[0], nxt[1]]["entry_waypoint"],
                        path=[],
                        length=0,
                        type=option,
                        change_waypoint=wp,
                    )
                    if side == "right":
                        right_found = True
                    else:
                        left_found = True
                if left_found and right_found:
                    break

    def _heuristic(self, a: int, b: int) -> float:
        return float(
            np.linalg.norm(np.array(self.graph.nodes[a]["vertex"]) - np.array(self.graph.nodes[b]["vertex"]))
        )

    def _path_search(self, origin: carla.Location, destination: carla.Location) -> list[int]:
        start, end = self._localize(origin), self._localize(destination)
        if start is None or end is None:
            raise UserError(
                f"route end point {origin if start is None else destination} is not on a driving lane"
            )
        try:
            route = nx.astar_path(
                self.graph, source=start[0], target=end[0], heuristic=self._heuristic, weight="length"
            )
        except nx.NetworkXNoPath:
            raise UserError(f"no drivable route from {origin} to {destination}") from None
        route.append(end[1])
        return route

    def _successive_last_intersection_edge(
        self, index: int, route: list[int]
    ) -> tuple[int | None, dict | None]:
        last_edge, last_node = None, None
        for n1, n2 in zip(route[index:-1], route[index + 1 :]):
            edge = self.graph.edges[n1, n2]
            if n1 == route[index]:
                last_edge = edge
            if edge["type"] == RoadOption.LANEFOLLOW and edge["intersection"]:
                last_edge, last_node = edge, n2
            else:
                break
        return last_node, last_edge

    def _turn_decision(self, index: int, route: list[int], threshold: float = math.radians(33)) -> RoadOption:
        prev_node, cur_node, next_node = route[index - 1], route[index], route[index + 1]
        next_edge = self.graph.edges[cur_node, next_node]
        if index == 0:
            decision = next_edge["type"]
        elif (
            self._previous_decision != RoadOption.VOID
            and self._intersection_end_node > 0
            and self._intersection_end_node != prev_node
            and next_edge["type"] == RoadOption.LANEFOLLOW
            and next_edge["intersection"]
        ):
            decision = self._previous_decision
        else:
            self._intersection_end_node = -1
            cur_edge = self.graph.edges[prev_node, cur_node]
            calculate = (
                cur_edge["type"] == RoadOption.LANEFOLLOW
                and not cur_edge["intersection"]
                and next_edge["type"] == RoadOption.LANEFOLLOW
                and next_edge["intersection"]
            )
            if not calculate:
                decision = next_edge["type"]
            else:
                last_node, tail = self._successive_last_intersection_edge(index, route)
                self._intersection_end_node = last_node
                if tail is not None:
                    next_edge = tail
                cv, nv = cur_edge["exit_vector"], next_edge["net_vector"]
                crosses = []
                for nb in self.graph.successors(cur_node):
                    sel = self.graph.edges[cur_node, nb]
                    if sel["type"] == RoadOption.LANEFOLLOW and nb != route[index + 1]:
                        crosses.append(np.cross(cv, sel["net_vector"])[2])
                next_cross = np.cross(cv, nv)[2]
                dev = math.acos(
                    np.clip(np.dot(cv, nv) / (np.linalg.norm(cv) * np.linalg.norm(nv)), -1.0, 1.0)
                )
                if not crosses:
                    crosses.append(0)
                decision = RoadOption.VOID
                if dev < threshold:
                    decision = RoadOption.STRAIGHT
                elif next_cross < min(crosses):
                    decision = RoadOption.LEFT
                elif next_cross > max(crosses):
                    decision = RoadOption.RIGHT
                elif next_cross < 0:
                    decision = RoadOption.LEFT
                elif next_cross > 0:
                    decision = RoadOption.RIGHT
        self._previous_decision = decision
        return decision

    @staticmethod
    def _closest(wp: carla.Waypoint, wps: list[carla.Waypoint]) -> int:
        loc = wp.transform.location
        d = [w.transform.location.distance(loc) for w in wps]
        return int(np.argmin(d)) if d else -1

    def trace_route(
        self, origin: carla.Location, destination: carla.Location
    ) -> list[tuple[carla.Waypoint, RoadOption]]:
        """Dense route [(waypoint, RoadOption)] from `origin` to `destination` (CARLA locations)."""
        trace: list[tuple[carla.Waypoint, RoadOption]] = []
        route = self._path_search(origin, destination)
        cur = self.map.get_waypoint(origin)
        dest_wp = self.map.get_waypoint(destination)
        for i in range(len(route) - 1):
            option = self._turn_decision(i, route)
            edge = self.graph.edges[route[i], route[i + 1]]
            if edge["type"] not in (RoadOption.LANEFOLLOW, RoadOption.VOID):
                trace.append((cur, option))
                exit_wp = edge["exit_waypoint"]
                n1, n2 = self.road_id_to_edge[exit_wp.road_id][exit_wp.section_id][exit_wp.lane_id]
                nxt = self.graph.edges[n1, n2]
                if nxt["path"]:
                    idx = min(len(nxt["path"]) - 1, self._closest(cur, nxt["path"]) + 5)
                    cur = nxt["path"][idx]
                else:
                    cur = nxt["exit_waypoint"]
                trace.append((cur, option))
            else:
                path = [edge["entry_waypoint"], *edge["path"], edge["exit_waypoint"]]
                start = self._closest(cur, path)
                for wp in path[start:]:
                    cur = wp
                    trace.append((cur, option))
                    if (
                        len(route) - i <= 2
                        and wp.transform.location.distance(destination) < 2 * self.resolution
                    ):
                        break
                    if len(route) - i <= 2 and (cur.road_id, cur.section_id, cur.lane_id) == (
                        dest_wp.road_id,
                        dest_wp.section_id,
                        dest_wp.lane_id,
                    ):
                        if start > self._closest(dest_wp, path):
                            break
        return trace


def interpolate_trajectory(
    planner: RoutePlanner, keypoints: list[carla.Location]
) -> tuple[list[tuple[dict, RoadOption]], list[tuple[carla.Transform, RoadOption]]]:
    """The leaderboard's `interpolate_trajectory`: (gps_route, route) for the route's keypoints.

    route: [(carla.Transform, RoadOption)] every ~`planner.resolution` m;
    gps_route: [({lat, lon, z}, option)].
    """
    route: list[tuple[carla.Transform, RoadOption]] = []
    planner._previous_decision, planner._intersection_end_node = (
        RoadOption.VOID,
        -1,
    )  # a fresh planner per route
    for a, b in zip(keypoints[:-1], keypoints[1:]):
        for wp, option in planner.trace_route(a, b):
            route.append((wp.transform, option))
    ref = geo_reference(planner.map)
    gps = [(location_to_gps(ref, t.location), o) for t, o in route]
    return gps, route


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


# ----------------------------------------------------------------------------------------------------
# Route files (leaderboard XML)
# ----------------------------------------------------------------------------------------------------
@dataclass
class RouteSpec:
    """One route of a leaderboard route file: keypoints in CARLA coordinates."""

    route_id: str  # the XML's id attribute
    town: str  # map name
    keypoints: list[tuple[float, float, float, float]]  # (x, y, z, yaw_deg) in CARLA coordinates

    def locations(self) -> list[carla.Location]:
        return [carla.Location(x, y, z) for x, y, z, _ in self.keypoints]


def parse_routes_xml(path: str | Path, route_ids: list[str] | None = None) -> list[RouteSpec]:
    """Routes of a leaderboard route XML (`<routes><route id town><waypoint x y z yaw .../>`)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"route file {path} does not exist")
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as e:
        raise UserError(f"route file {path} is not valid XML: {e}") from None
    out = []
    for r in root.iter("route"):
        try:
            kps = [
                (
                    float(w.attrib["x"]),
                    float(w.attrib["y"]),
                    float(w.attrib.get("z", 0.0)),
                    float(w.attrib.get("yaw", 0.0)),
                )
                for w in r.iter("waypoint")
            ]
            rid, town = r.attrib["id"], r.attrib["town"]
        except (KeyError, ValueError) as e:
            raise UserError(f"route file {path}: malformed route element ({e})") from None
        if len(kps) < 2:
            raise UserError(f"route file {path}: route {rid} has fewer than 2 waypoints")
        if route_ids is None or rid in route_ids:
            out.append(RouteSpec(rid, town, kps))
    if not out:
        raise UserError(
            f"route file {path} holds no routes" + (f" with ids {route_ids}" if route_ids else "")
        )
    return out


def routes_to_xml(routes: list[RouteSpec]) -> str:
    """Leaderboard route XML text for `routes`."""
    lines = ["<?xml version='1.0' encoding='UTF-8'?>", "<routes>"]
    for r in routes:
        lines.append(f'  <route id="{r.route_id}" town="{r.town}">')
        for x, y, z, yaw in r.keypoints:
            lines.append(
                f'    <waypoint x="{x:.6f}" y="{y:.6f}" z="{z:.6f}" pitch="0.0" roll="0.0" yaw="{yaw:.6f}"/>'
            )
        lines.append("  </route>")
    lines.append("</routes>")
    return "\n".join(lines) + "\n"


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
    def planner(self) -> RoutePlanner:
        return RoutePlanner(self.cmap, self.resolution)

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
            poses = np.array([wp_pose(w) for w in wps])
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
        wp = self.cmap.get_waypoint(xy_to_loc(xy))
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
                wp = self.cmap.get_waypoint(xy_to_loc(sg.pts[min(i, len(sg.pts) - 1)]))
                if wp is None:
                    continue
                for lm in wp.get_landmarks_of_type(sg.length - back + reach, "1000001", False):
                    if lm.road_id not in allowed:
                        continue
                    sid_ids.append(lm.id)
                    if pole is None or lm.road_id == road:
                        t = lm.transform
                        pole = np.array([t.location.x, -t.location.y, t.location.z])
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
            cur.append((p.x, -p.y))
            if len(cur) > 2 and abs(cur[0][0] - cur[-1][0]) < 1e-3 and abs(cur[0][1] - cur[-1][1]) < 1e-3:
                polys.append(np.array(cur))
                cur = []
        return polys

    def driving_lane_at(self, xy: np.ndarray) -> carla.Waypoint | None:
        """The driving-lane waypoint under `xy` without projecting (None when off every driving lane)."""
        return self.cmap.get_waypoint(xy_to_loc(xy), project_to_road=False)

    @cached_property
    def junction_boxes(self) -> list[carla.BoundingBox]:
        """Bounding boxes (CARLA frame) of the junctions: paved as a whole in CARLA's towns."""
        boxes, seen = [], set()
        for seg in self.segments:
            if seg.junction >= 0 and seg.junction not in seen:
                seen.add(seg.junction)
                wp = self.cmap.get_waypoint(xy_to_loc(seg.pts[len(seg.pts) // 2]))
                if wp is not None and wp.is_junction:
                    boxes.append(wp.get_junction().bounding_box)
        return boxes

    def on_road_surface(self, xy: np.ndarray) -> bool:
        """True when `xy` is on any OpenDRIVE lane (driving, sidewalk, shoulder, ...) or in a junction box."""
        loc = xy_to_loc(xy)
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
) -> list[RouteSpec]:
    """`n` random routes: a random walk over the lane graph (no U-turns) through at least `min_junctions`
    junctions, given as keypoints after every junction (so A* between keypoints follows the walk)."""
    segs = rmap.segments
    starts = [s for s in segs if s.junction < 0 and s.length > 25.0]
    if not starts:
        raise UserError(f"town {rmap.name!r} has no lane long enough to start a route")
    routes: list[RouteSpec] = []
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
        keypoints = [(float(p[0]), float(-p[1]), 0.0, float(ego_yaw_to_carla(y))) for p, y in kps]
        routes.append(RouteSpec(str(first_id + len(routes)), rmap.name, keypoints))
    return routes
