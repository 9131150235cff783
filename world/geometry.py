"""Road geometry of a `carla.Map`, extracted once per map for rendering, map targets and the world.

Everything here is in the WORLD frame of the project's right-handed convention (x east, y north = CARLA
-y, z up, metres; yaw counter-clockwise, radians): CARLA locations and poses go through `vlmad.frames`
(`carla_to_ego_xyz`, `carla_pose_to_ego`), nowhere else.

What is extracted (all from the map alone, no server):
- driving lanes as strips (centre line, left/right edges, widths) sampled every `step` metres along each
  lane of `map.get_topology()` (junction connecting lanes included);
- the other lanes beside the outermost driving lanes (shoulders, parking, sidewalks...) as strips, with
  the kerb line where a sidewalk meets the road;
- junction areas: their connecting lanes with the gaps between them closed (a raster closing);
- lane markings from `waypoint.left_lane_marking` / `right_lane_marking` (type and colour) as polylines,
  each painted line once (a line shared by two lanes is emitted by one of them);
- road boundaries: the outline of the drivable area (driving lanes + junction areas), traced on a
  0.2 m raster with OpenCV so that overlapping lanes and junctions need no polygon library;
- crosswalks (`map.get_crosswalks()`) as polygons;
- traffic-light sites (`map.get_all_landmarks_of_type("1000001")`): the landmark's lane, a stop point on
  the lane centre and a pole position (the landmark's own roadside spot; on the right kerb when the
  signal sits on the carriageway), facing approaching traffic.

`map_polylines()` gives the VAD / nuScenes map classes: "divider" (painted lines between two driving
lanes), "ped_crossing" (crosswalk outlines) and "boundary" (drivable-area outline).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field

import cv2
import numpy as np

from vlmad.frames import carla_pose_to_ego, carla_to_ego_xyz

# Colours and kinds of painted lines we keep (CARLA's LaneMarkingType / LaneMarkingColor names).
_SOLID_KINDS = {"Solid": "solid", "Broken": "broken", "SolidSolid": "solid_solid",
                "SolidBroken": "solid_broken", "BrokenSolid": "broken_solid", "BrokenBroken": "broken_broken",
                "BottsDots": "broken"}
_COLOURS = {"Yellow": "yellow"}  # everything else (Standard, White, Other, Blue...) renders white
_OUTER_LANE_KINDS = {"Sidewalk": "sidewalk", "Shoulder": "shoulder", "Parking": "shoulder",
                     "Border": "shoulder", "Biking": "shoulder", "Median": "median", "Restricted": "shoulder"}
TRAFFIC_LIGHT_TYPE = "1000001"  # OpenDRIVE signal type of a traffic light, as CARLA's towns use it
BOUNDARY_RASTER_M = 0.2  # resolution of the raster the drivable-area outline is traced on
JUNCTION_CLOSE_M = 2.5  # gaps narrower than about twice this between a junction's lanes are paved
POLE_KERB_OFFSET_M = 1.0  # pole distance beyond the lane's right edge, for signals placed on the road


@dataclass
class LaneStrip:
    """One lane sampled along its length. Shapes: N samples."""

    road_id: int
    lane_id: int
    kind: str  # "driving" or an outer-lane kind ("sidewalk", "shoulder", "median")
    junction_id: int  # -1 outside junctions
    center: np.ndarray  # (N, 3) world
    left: np.ndarray  # (N, 2) left edge (left of the lane's travel direction)
    right: np.ndarray  # (N, 2) right edge
    kerb: np.ndarray | None = None  # (N, 2) the edge that touches the road, for sidewalks

    def polygon(self) -> np.ndarray:
        """(2N, 2) outline: left edge forward, right edge backward."""
        return np.concatenate([self.left, self.right[::-1]], axis=0)


@dataclass
class Marking:
    """A painted line: (N, 2) world points, kind solid/broken/solid_solid/..., colour white/yellow."""

    kind: str
    colour: str
    pts: np.ndarray
    divider: bool  # True between two driving lanes (a VAD "divider"), False on a road edge


@dataclass
class TrafficLightSite:
    """Where a traffic light (OpenDRIVE signal 1000001) stands and which lane it governs."""

    landmark_id: str  # OpenDRIVE signal id (unique per light)
    road_id: int  # road and lane of the governed lane near the stop point
    lane_id: int
    stop_point: np.ndarray  # (3,) lane centre at the landmark, world
    lane_yaw: float  # travel direction of the governed lane, radians
    position: np.ndarray  # (3,) pole base: the landmark's roadside spot (or the right kerb), world
    yaw: float  # direction the light's face points (towards approaching traffic), radians


@dataclass(eq=False)
class RoadGeometry:
    """Static road geometry of one map, world frame. Build with `RoadGeometry.from_map`."""

    name: str
    lanes: list[LaneStrip]  # driving lanes
    outer_lanes: list[LaneStrip]  # sidewalks, shoulders, ... beside the outermost driving lanes
    junction_areas: list[np.ndarray]  # (K, 2) polygons (paved area of each junction)
    markings: list[Marking]
    boundaries: list[np.ndarray]  # (N, 2) closed outlines of the drivable area (first point not repeated)
    crosswalks: list[np.ndarray]  # (K, 2) polygons
    lights: list[TrafficLightSite]
    bounds: tuple[float, float, float, float]  # xmin, ymin, xmax, ymax of everything above, metres
    cache: dict = field(default_factory=dict, repr=False)  # per-map products of other modules (textures)

    @classmethod
    def from_map(cls, carla_map, step: float = 1.0) -> RoadGeometry:
        """Extract the geometry of a `carla.Map` (memoised per map content and step)."""
        key = (carla_map.name, hashlib.sha1(carla_map.to_opendrive().encode()).hexdigest(), float(step))
        if key not in _CACHE:
            if len(_CACHE) >= 4:  # a handful of maps per process at most; drop the oldest
                _CACHE.pop(next(iter(_CACHE)))
            _CACHE[key] = _extract(carla_map, step)
        return _CACHE[key]

    def map_polylines(self) -> list[tuple[str, np.ndarray]]:
        """VAD map elements as (class, (N, 2) world polyline): divider, ped_crossing, boundary.

        Crosswalks and boundaries are closed: their first point is repeated at the end.
        """
        out: list[tuple[str, np.ndarray]] = [("divider", m.pts) for m in self.markings if m.divider]
        out += [("ped_crossing", np.concatenate([c, c[:1]])) for c in self.crosswalks]
        out += [("boundary", np.concatenate([b, b[:1]])) for b in self.boundaries]
        return out


_CACHE: dict[tuple, RoadGeometry] = {}


# ----------------------------------------------------------------------------------------------------
# Extraction
# ----------------------------------------------------------------------------------------------------
def _left_of(yaw: float) -> np.ndarray:
    return np.array([-math.sin(yaw), math.cos(yaw)])


def _is_driving(wp) -> bool:
    return wp is not None and str(wp.lane_type) == "Driving"


def _key(wp) -> tuple[int, int, int]:
    return wp.road_id, wp.section_id, wp.lane_id


def _lane_waypoints(entry, exit_, step: float) -> list:
    wps = [entry]
    for w in entry.next_until_lane_end(step):
        if _key(w) != _key(entry):
            break
        wps.append(w)
    last = wps[-1].transform.location
    if exit_ is not None and exit_.transform.location.distance(last) > 0.05:
        wps.append(exit_)
    return wps


def _strip(wps, kind: str, poses=None) -> LaneStrip:
    poses = poses or [carla_pose_to_ego(w.transform) for w in wps]
    c = np.array([p for p, _ in poses])
    left = np.array([_left_of(y) for _, y in poses])
    half = np.array([w.lane_width / 2.0 for w in wps])[:, None]
    wp0 = wps[0]
    return LaneStrip(road_id=wp0.road_id, lane_id=wp0.lane_id, kind=kind,
                     junction_id=wp0.junction_id if wp0.is_junction else -1,
                     center=c, left=c[:, :2] + left * half, right=c[:, :2] - left * half)


def _runs(keys: list) -> list[tuple[int, int]]:
    """Index ranges [a, b] (inclusive) of consecutive equal, non-None keys."""
    out, start = [], None
    for i, k in enumerate(keys + [None]):
        if start is not None and (k != keys[start] if i < len(keys) else True):
            out.append((start, i - 1))
            start = None
        if start is None and i < len(keys) and k is not None:
            start = i
    return out


def _marking_key(mark, emit: bool, divider: bool):
    if not emit or mark is None:
        return None
    kind = _SOLID_KINDS.get(str(mark.type))
    if kind is None:
        return None
    return kind, _COLOURS.get(str(mark.color), "white"), divider


def _lane_markings(wps, strip: LaneStrip) -> list[Marking]:
    """Painted lines of one lane; a line shared with a neighbour is emitted by one lane only."""
    left_keys, right_keys = [], []
    for w in wps:
        if w.is_junction:  # no paint inside junctions (CARLA's connecting lanes carry nominal marks)
            left_keys.append(None)
            right_keys.append(None)
            continue
        ln, rn = w.get_left_lane(), w.get_right_lane()
        # Right line: always ours. It divides two driving lanes when the right neighbour drives too.
        right_keys.append(_marking_key(w.right_lane_marking, True, _is_driving(rn)))
        # Left line: a same-direction left neighbour emits it as its right line; for the centre line
        # between opposite directions the lane with the negative id (CARLA's reference direction) emits.
        if _is_driving(ln):
            emit = (ln.lane_id * w.lane_id < 0) and w.lane_id < 0
        else:
            emit = True
        left_keys.append(_marking_key(w.left_lane_marking, emit, _is_driving(ln)))
    out = []
    for keys, edge in ((left_keys, strip.left), (right_keys, strip.right)):
        for a, b in _runs(keys):
            if b > a:
                kind, colour, divider = keys[a]
                out.append(Marking(kind, colour, edge[a:b + 1].copy(), divider))
    return out


def _outer_lanes(wps, side: str) -> list[LaneStrip]:
    """Non-driving lanes beyond the outermost driving lane on one side, one strip per lane index."""
    chains: dict[int, list] = {}
    for w in wps:
        nb = w.get_right_lane() if side == "right" else w.get_left_lane()
        depth = 0
        while nb is not None and not _is_driving(nb) and depth < 4:
            kind = _OUTER_LANE_KINDS.get(str(nb.lane_type))
            if kind is None or nb.lane_width < 0.05:
                break
            chains.setdefault(nb.lane_id, []).append(nb)
            nb = nb.get_right_lane() if side == "right" else nb.get_left_lane()
            depth += 1
    out = []
    for seq in chains.values():
        if len(seq) < 2:
            continue
        kind = _OUTER_LANE_KINDS[str(seq[0].lane_type)]
        strip = _strip(seq, kind)
        if kind == "sidewalk":
            # The kerb is the sidewalk edge nearest the road (nearest to the first driving lane).
            ref = carla_pose_to_ego(wps[0].transform)[0][:2]
            dl = np.linalg.norm(strip.left[0] - ref)
            dr = np.linalg.norm(strip.right[0] - ref)
            strip.kerb = strip.left if dl < dr else strip.right
        out.append(strip)
    return out


def _crosswalks(carla_map) -> list[np.ndarray]:
    """`get_crosswalks()` is a flat list of closed polygons (first point repeated at each end)."""
    pts = [carla_to_ego_xyz(p.x, p.y, p.z)[:2] for p in carla_map.get_crosswalks()]
    out, cur = [], []
    for p in pts:
        if cur and len(cur) >= 3 and np.linalg.norm(p - cur[0]) < 1e-3:
            out.append(np.array(cur))
            cur = []
        else:
            cur.append(p)
    if len(cur) >= 3:
        out.append(np.array(cur))
    return out


def _lights(carla_map) -> list[TrafficLightSite]:
    import carla  # local: keeps this module importable for type checks without the client

    sites, seen = [], set()
    for lm in carla_map.get_all_landmarks_of_type(TRAFFIC_LIGHT_TYPE):
        if lm.id in seen:
            continue
        seen.add(lm.id)
        wp = carla_map.get_waypoint(lm.transform.location, project_to_road=True,
                                    lane_type=carla.LaneType.Driving)
        if wp is None:
            continue
        c, yaw = carla_pose_to_ego(wp.transform)
        base = c.copy()  # on the ground at the lane's height (landmark z carries OpenDRIVE zOffset)
        on_lane = carla_map.get_waypoint(lm.transform.location, project_to_road=False,
                                         lane_type=carla.LaneType.Driving)
        if on_lane is None:  # CARLA's towns place the signal at the roadside: keep it there
            loc = lm.transform.location
            base[:2] = carla_to_ego_xyz(loc.x, loc.y)[:2]
        else:  # a signal on the carriageway (e.g. on the reference line): move it to the right kerb
            base[:2] += -_left_of(yaw) * (wp.lane_width / 2.0 + POLE_KERB_OFFSET_M)
        sites.append(TrafficLightSite(landmark_id=str(lm.id), road_id=wp.road_id, lane_id=wp.lane_id,
                                      stop_point=c, lane_yaw=yaw, position=base,
                                      yaw=float(math.atan2(-math.sin(yaw), -math.cos(yaw)))))
    return sites


def _junction_area(polys: list[np.ndarray]) -> list[np.ndarray]:
    """Outline of a junction: its connecting lanes with the gaps between them closed (a morphological
    closing of `JUNCTION_CLOSE_M`); unlike a convex hull it does not spill over the kerb corners."""
    res = BOUNDARY_RASTER_M
    pad = JUNCTION_CLOSE_M + 1.0
    cat = np.concatenate(polys)
    x0, y0 = cat.min(0) - pad
    w, h = (np.ceil((cat.max(0) + pad - [x0, y0]) / res).astype(int) + 1)
    mask = np.zeros((h, w), np.uint8)
    cv2.fillPoly(mask, [np.round((p - [x0, y0]) / res).astype(np.int32) for p in polys], 255)
    r = int(round(JUNCTION_CLOSE_M / res))
    disk = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))
    mask = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, disk)
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    out = []
    for c in contours:
        c = cv2.approxPolyDP(c, 0.1 / res + 0.5, True)
        if len(c) >= 3:
            out.append(c[:, 0, :].astype(np.float64) * res + [x0, y0])
    return out


def _boundaries(polys: list[np.ndarray], bounds: tuple[float, float, float, float]) -> list[np.ndarray]:
    """Outline of the union of polygons, traced on a raster (holes included)."""
    res = BOUNDARY_RASTER_M
    x0, y0 = bounds[0] - 2.0, bounds[1] - 2.0
    w = int(math.ceil((bounds[2] - x0 + 2.0) / res)) + 1
    h = int(math.ceil((bounds[3] - y0 + 2.0) / res)) + 1
    mask = np.zeros((h, w), np.uint8)
    for p in polys:
        cv2.fillPoly(mask, [np.round((p - [x0, y0]) / res).astype(np.int32)], 255)
    mask = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, np.ones((3, 3), np.uint8))  # seal sub-pixel seams
    contours, _ = cv2.findContours(mask, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_NONE)
    out = []
    for c in contours:
        c = cv2.approxPolyDP(c, 0.1 / res + 0.5, True)
        if len(c) >= 3 and cv2.contourArea(c) * res * res > 4.0:
            out.append(c[:, 0, :].astype(np.float64) * res + [x0, y0])
    return out


def _all_lanes(carla_map, step: float) -> list[list]:
    """Waypoint lists of every driving lane: the topology's segments (with their exact ends), plus lanes
    the topology leaves out (isolated roads without links), ordered along their travel direction."""
    lanes = [_lane_waypoints(a, b, step) for a, b in carla_map.get_topology()]
    covered = {_key(w[0]) for w in lanes}
    rest: dict[tuple, list] = {}
    for w in carla_map.generate_waypoints(step):
        if _key(w) not in covered:
            rest.setdefault(_key(w), []).append(w)
    for group in rest.values():
        group.sort(key=lambda w: w.s)
        if len(group) >= 2:
            p0, yaw = carla_pose_to_ego(group[0].transform)
            d = carla_pose_to_ego(group[-1].transform)[0][:2] - p0[:2]
            if d @ np.array([math.cos(yaw), math.sin(yaw)]) < 0:
                group.reverse()
        lanes.append(group)
    return lanes


def _extract(carla_map, step: float) -> RoadGeometry:
    lanes, outer, markings = [], [], []
    junction_pts: dict[int, list[np.ndarray]] = {}
    seen = set()
    for wps in _all_lanes(carla_map, step):
        start = wps[0].transform.location
        sig = (*_key(wps[0]), round(start.x, 1), round(start.y, 1))
        if len(wps) < 2 or sig in seen:  # a lane with several successors appears once per successor
            continue
        seen.add(sig)
        strip = _strip(wps, "driving")
        lanes.append(strip)
        markings += _lane_markings(wps, strip)
        if strip.junction_id >= 0:
            junction_pts.setdefault(strip.junction_id, []).append(strip.polygon())
        else:
            outer += _outer_lanes(wps, "right") + _outer_lanes(wps, "left")
    junctions = [area for polys in junction_pts.values() for area in _junction_area(polys)]
    crosswalks = _crosswalks(carla_map)
    lights = _lights(carla_map)
    allpts = [s.polygon() for s in lanes + outer] + junctions + crosswalks
    if not allpts:
        raise ValueError(f"map {carla_map.name!r} has no driving lanes")
    cat = np.concatenate(allpts)
    bounds = (float(cat[:, 0].min()), float(cat[:, 1].min()), float(cat[:, 0].max()), float(cat[:, 1].max()))
    boundaries = _boundaries([s.polygon() for s in lanes] + junctions, bounds)
    return RoadGeometry(name=carla_map.name, lanes=lanes, outer_lanes=outer, junction_areas=junctions,
                        markings=markings, boundaries=boundaries, crosswalks=crosswalks, lights=lights,
                        bounds=bounds)
