"""Leaderboard route XML: parse and validate, split into shards, write shard files.

A route file is the leaderboard 1.0 format::

    <routes>
      <route id="16" town="Town05">
        <weather cloudiness="30" sun_altitude_angle="70" .../>      (optional, any number)
        <waypoint x=".." y=".." z=".." pitch=".." roll=".." yaw=".."/>  (two or more)
      </route>
    </routes>

As the leaderboard's `RouteParser` (stable 8956c4e / leaderboard-1.0) reads it:
- `x`, `y` and `z` are required on every waypoint (the real parser raises KeyError on a missing `z`; here
  it is a clear error); `pitch` / `roll` / `yaw` are optional (the real parser ignores them);
- several `<weather>` elements are MERGED into one weather, later attributes overriding earlier ones
  (`Route.weather`); with none, the leaderboard uses sun_altitude_angle 70, cloudiness 30
  (`DEFAULT_WEATHER`).

Waypoints are sparse keypoints; the leaderboard densifies them with CARLA's global route planner for
driving, but its `meta.route_length` (`compute_route_length`) is the 3-D length along these keypoints,
which is exactly `Route.length_m`. It balances shards and is the length of the launcher's give-up record.
"""

from __future__ import annotations

import copy
import math
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

from vlmad.errors import UserError
from vlmad.io import atomic_write_bytes

WAYPOINT_KEYS = ("x", "y", "z", "pitch", "roll", "yaw")
REQUIRED_WAYPOINT_KEYS = ("x", "y", "z")
# The <weather> attributes leaderboard 1.0's RouteParser.parse_weather reads (others are ignored there).
WEATHER_KEYS = ("cloudiness", "precipitation", "precipitation_deposits", "wind_intensity",
                "sun_azimuth_angle", "sun_altitude_angle", "wetness", "fog_distance", "fog_density",
                "fog_falloff")
DEFAULT_WEATHER = {"sun_altitude_angle": 70.0, "cloudiness": 30.0}  # no <weather>: the leaderboard's default
ROUTE_NAME_PREFIX = "RouteScenario_"  # the leaderboard names a route "RouteScenario_<id>" (its RouteScenario)


def route_name(route_id: str | int) -> str:
    """The leaderboard's name of route `route_id` in results files ("16" -> "RouteScenario_16"); a name
    already in that form is returned unchanged."""
    s = str(route_id)
    return s if s.startswith(ROUTE_NAME_PREFIX) else f"{ROUTE_NAME_PREFIX}{s}"


def route_id_of(name: str | int) -> str:
    """Inverse of `route_name`: "RouteScenario_16" -> "16"; other strings are returned unchanged."""
    s = str(name)
    return s[len(ROUTE_NAME_PREFIX):] if s.startswith(ROUTE_NAME_PREFIX) else s


@dataclass
class Waypoint:
    x: float  # metres, CARLA world frame (left-handed: x forward/east, y right/south)
    y: float
    z: float
    pitch: float = 0.0  # degrees
    roll: float = 0.0
    yaw: float = 0.0


@dataclass
class Route:
    id: str  # the `id` attribute (the leaderboard names the route "RouteScenario_<id>")
    town: str  # e.g. "Town05"
    waypoints: list[Waypoint]  # >= 2 keypoints
    weathers: list[dict[str, float]] = field(default_factory=list)  # <weather> attributes, may be empty
    element: ET.Element | None = field(default=None, repr=False)  # original element, written back unchanged

    @property
    def length_m(self) -> float:
        """Sum of straight 3-D distances between consecutive keypoints (metres): the leaderboard's
        `compute_route_length`, i.e. the `meta.route_length` its records carry."""
        wps = self.waypoints
        return sum(math.dist((a.x, a.y, a.z), (b.x, b.y, b.z)) for a, b in zip(wps, wps[1:]))

    @property
    def weather(self) -> dict[str, float]:
        """The one weather the leaderboard applies: every <weather> element merged in file order (later
        attributes win), only the attributes it reads; DEFAULT_WEATHER when there is none (attributes not
        named keep CARLA's `WeatherParameters()` defaults)."""
        if not self.weathers:
            return dict(DEFAULT_WEATHER)
        merged: dict[str, float] = {}
        for w in self.weathers:
            merged.update({k: v for k, v in w.items() if k in WEATHER_KEYS})
        return merged

    @property
    def name(self) -> str:
        """The leaderboard's `route_id` in results files."""
        return route_name(self.id)


def _float(el: ET.Element, key: str, where: str, default: float | None = None) -> float:
    raw = el.attrib.get(key)
    if raw is None:
        if default is not None:
            return default
        raise UserError(f"{where}: <{el.tag}> has no {key!r} attribute")
    try:
        v = float(raw)
    except ValueError:
        raise UserError(f"{where}: <{el.tag}> {key}={raw!r} is not a number") from None
    if not math.isfinite(v):
        raise UserError(f"{where}: <{el.tag}> {key}={raw!r} is not finite")
    return v


def parse_routes(path: str | Path) -> list[Route]:
    """Parse and validate a route XML; any defect is a `UserError` naming the file and the route."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"route file {path} does not exist (get the benchmark files with "
                        f"`python -m routes.fetch --out DIR`)")
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as e:
        raise UserError(f"route file {path} is not well-formed XML: {e}") from None
    if root.tag != "routes":
        raise UserError(f"route file {path}: root element is <{root.tag}>, expected <routes>")
    routes: list[Route] = []
    seen: set[str] = set()
    for i, el in enumerate(root):
        if el.tag != "route":
            raise UserError(f"route file {path}: element #{i} is <{el.tag}>, expected <route>")
        rid = el.attrib.get("id", "").strip()
        where = f"route file {path}, route id={rid!r}" if rid else f"route file {path}, route #{i}"
        if not rid:
            raise UserError(f"{where}: missing id attribute")
        if rid in seen:
            raise UserError(f"{where}: duplicate route id")
        seen.add(rid)
        town = el.attrib.get("town", "").strip()
        if not town:
            raise UserError(f"{where}: missing town attribute")
        wps = [Waypoint(*(_float(w, k, where, None if k in REQUIRED_WAYPOINT_KEYS else 0.0)
                          for k in WAYPOINT_KEYS)) for w in el.iter("waypoint")]
        if len(wps) < 2:
            raise UserError(f"{where}: a route needs at least 2 waypoints, found {len(wps)}")
        weathers = [{k: _float(w, k, where) for k in w.attrib} for w in el.iter("weather")]
        routes.append(Route(rid, town, wps, weathers, el))
    if not routes:
        raise UserError(f"route file {path} holds no <route> element")
    return routes


def select_routes(routes: list[Route], ids: list[str] | None) -> list[Route]:
    """The routes whose id is in `ids`, in file order (all of them when `ids` is None); a `UserError` for
    an id the file does not hold."""
    if ids is None:
        return list(routes)
    unknown = sorted(set(ids) - {r.id for r in routes})
    if unknown:
        raise UserError(f"route ids {unknown} are not in the route file (it has {[r.id for r in routes]})")
    return [r for r in routes if r.id in ids]


def shard_routes(routes: list[Route], n: int) -> list[list[Route]]:
    """Split into `n` shards of similar total length (longest route first onto the lightest shard).

    Each shard keeps the file order of its routes; empty shards are dropped (n > number of routes)."""
    if n < 1:
        raise UserError(f"number of shards must be >= 1, got {n}")
    load = [0.0] * n
    members: list[list[int]] = [[] for _ in range(n)]
    for i in sorted(range(len(routes)), key=lambda i: (-routes[i].length_m, i)):
        s = min(range(n), key=lambda s: (load[s], s))
        members[s].append(i)
        # a floor of 1 m keeps zero-length routes spreading across shards
        load[s] += max(routes[i].length_m, 1.0)
    return [[routes[i] for i in sorted(m)] for m in members if m]


def routes_to_xml(routes: list[Route]) -> bytes:
    """Serialise routes (original elements when known) as a leaderboard route file."""
    root = ET.Element("routes")
    for r in routes:
        if r.element is not None:
            root.append(copy.deepcopy(r.element))
            continue
        el = ET.SubElement(root, "route", {"id": r.id, "town": r.town})
        for w in r.weathers:
            ET.SubElement(el, "weather", {k: repr(v) for k, v in w.items()})
        for wp in r.waypoints:
            ET.SubElement(el, "waypoint", {k: repr(getattr(wp, k)) for k in WAYPOINT_KEYS})
    ET.indent(root, space="  ")
    return b"<?xml version='1.0' encoding='UTF-8'?>\n" + ET.tostring(root, encoding="utf-8") + b"\n"


def write_routes(routes: list[Route], path: str | Path) -> Path:
    """Write a route file atomically; returns the path."""
    atomic_write_bytes(path, routes_to_xml(routes))
    return Path(path)


def write_shards(routes: list[Route], n: int, out_dir: str | Path, stem: str = "shard") -> list[Path]:
    """Shard and write `<out_dir>/<stem>_<k>.xml`; returns the paths (one per non-empty shard)."""
    return [write_routes(s, Path(out_dir) / f"{stem}_{k}.xml") for k, s in enumerate(shard_routes(routes, n))]
