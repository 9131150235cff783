"""Camera renderer of the offline world: the rig's 6 RGB cameras from road geometry, boxes and lights.

Approach (fast on 2 CPU cores; about 2-4 ms per 640x360 camera):
1. Ground. The static ground (terrain, sidewalks, asphalt, junction areas, lane markings, kerbs, stop lines,
   crosswalks) is rasterised ONCE per map into a top-down world texture (`ground_texture`, 0.1 m/px,
   coarser for very large maps) plus a 4x downsampled copy. The ground is the plane z = ground height under
   the ego, so each camera sees it through a 3x3 homography img <- texture built from the camera's
   `img_from_ego` (`vlmad.rig`, never hand-copied) and the ego pose. One `cv2.warpPerspective` per
   texture level fills the image rows below the horizon: the full-resolution texture for near rows, the
   downsampled one for rows where a pixel covers more ground than 2 texels (a two-level mipmap: far lane
   marks blur instead of flickering).
2. Sky and haze. Rows above the horizon get a vertical sky gradient; far ground fades into the horizon
   colour between `HAZE_START_M` and `GROUND_MAX_M` (rays that meet the ground beyond that are sky).
3. Solids. Vehicles (and anything else given as `RenderBox`) and traffic lights (pole, head and three
   lamps) are 3-D boxes: corners transformed for all boxes and cameras at once, frustum-culled, faces
   back-face culled and shaded by their world orientation (fixed sun), clipped against the near plane,
   and filled with `cv2.fillConvexPoly` in far-to-near order (painter's algorithm, fine for disjoint
   boxes). Each box first gets a soft contact shadow on the ground. Lamps are discs on the light's face;
   the lamp of the current state is lit.

Assumptions: the ground is locally flat at the ego's height (the world pose's z is the ground height under
the ego origin); boxes do not interpenetrate. Images are RGB uint8.
"""

from __future__ import annotations

import math
import weakref
from dataclasses import dataclass

import cv2
import numpy as np

from vlmad.frames import invert_transform
from vlmad.rig import Rig
from world.geometry import RoadGeometry

# Palette (RGB).
TERRAIN = (104, 116, 84)
SIDEWALK = (156, 152, 146)
SHOULDER = (88, 88, 90)
ASPHALT = (74, 74, 78)
KERB = (196, 194, 188)
PAINT = {"white": (226, 226, 220), "yellow": (222, 182, 52)}
SKY_ZENITH = (92, 140, 212)
SKY_HORIZON = (196, 212, 228)
SHADOW = (34, 34, 36)
LIGHT_HEAD = (38, 38, 40)
CHASSIS = (30, 30, 32)
GLASS = (52, 62, 74)
TROUSERS = (48, 50, 66)
SKIN = (206, 168, 138)
LIGHT_POLE = (70, 72, 76)
LAMP_ON = {"red": (255, 48, 32), "yellow": (255, 196, 20), "green": (40, 240, 110)}
LAMP_OFF = {"red": (70, 30, 28), "yellow": (70, 62, 26), "green": (26, 60, 36)}

TEXTURE_RES_M = 0.1  # texture metres per pixel for ordinary towns
TEXTURE_MAX_PIXELS = 24e6  # coarser texture above this many pixels (large maps)
GROUND_MAX_M = 400.0  # ground rays meeting the plane farther than this (along the optical axis) are sky
HAZE_START_M = 90.0  # far ground blends linearly into SKY_HORIZON from here to GROUND_MAX_M
SOLID_MAX_M = 160.0  # boxes farther than this from a camera are not drawn
NEAR_M = 0.25  # near clipping plane
SUN = np.array([0.35, 0.45, 0.82]) / np.linalg.norm([0.35, 0.45, 0.82])  # towards the sun, world frame
DASH_ON_M, DASH_OFF_M = 3.0, 3.0  # broken lane marks
MARK_WIDTH_M = 0.15
STOP_LINE_M = 0.4
_SHIFT = 3  # fixed-point bits for polygon vertices (sub-pixel accuracy)

# Traffic-light body (metres): pole, head (depth along the face normal, width, height), lamps.
POLE_SIZE = (0.16, 0.16, 3.0)
HEAD_SIZE = (0.32, 0.44, 1.08)
HEAD_CENTER_Z = 3.45
LAMP_RADIUS = 0.13
LAMP_DZ = {"red": 0.34, "yellow": 0.0, "green": -0.34}

# Box corner i has signs (x, y, z) = bits (4, 2, 1); faces as corner loops, outward normals in box axes.
_SIGNS = np.array([[1 if i & 4 else -1, 1 if i & 2 else -1, 1 if i & 1 else -1] for i in range(8)], float) / 2
_FACES = np.array([[4, 6, 7, 5], [0, 1, 3, 2], [2, 3, 7, 6], [0, 4, 5, 1], [1, 5, 7, 3]])  # +x -x +y -y +z
_NORMALS = np.array([[1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1]], float)
_BOTTOM = [0, 4, 6, 2]


@dataclass
class RenderBox:
    """A solid box. `center` is the geometric centre (world, so z = ground + h/2 for a vehicle)."""

    center: np.ndarray  # (3,) world
    size: tuple[float, float, float]  # length (along yaw), width, height, metres
    yaw: float  # radians, world
    color: tuple[int, int, int]  # RGB of a face lit head-on by the sun
    kind: str = "auto"  # "box" | "car" (chassis, body, cabin) | "pedestrian" (legs, torso, head) | "auto"


@dataclass
class RenderLight:
    """A traffic light: pole base on the ground, facing direction and the state shown."""

    position: np.ndarray  # (3,) world, pole base (e.g. `TrafficLightSite.position`)
    yaw: float  # radians, the direction the lamps face (towards approaching traffic)
    state: str  # "red" | "yellow" | "green" (anything else: all lamps off)


# ----------------------------------------------------------------------------------------------------
# Ground texture (once per map)
# ----------------------------------------------------------------------------------------------------
@dataclass
class GroundTexture:
    """Top-down RGB rasters of the static ground; `world_from_tex[k]`: pixel (u, v, 1) -> world (x, y, 1)."""

    levels: list[np.ndarray]  # [full, 4x downsampled] (H, W, 3) uint8
    world_from_tex: list[np.ndarray]  # 3x3 per level
    res: float  # metres per pixel of level 0


_TEXTURES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def ground_texture(geometry: RoadGeometry, res: float | None = None) -> GroundTexture:
    """Rasterise (or fetch the cached) ground texture of a map."""
    x0, y0, x1, y1 = geometry.bounds
    margin = 20.0
    x0, y0, x1, y1 = x0 - margin, y0 - margin, x1 + margin, y1 + margin
    if res is None:
        res = max(TEXTURE_RES_M, math.sqrt((x1 - x0) * (y1 - y0) / TEXTURE_MAX_PIXELS))
    per_map = _TEXTURES.setdefault(geometry, {})
    if res not in per_map:
        per_map[res] = _rasterise(geometry, (x0, y0, x1, y1), res)
    return per_map[res]


def _to_px(pts: np.ndarray, x0: float, y1: float, res: float) -> np.ndarray:
    """World (N, 2) -> fixed-point texture pixels (north up)."""
    uv = np.stack([(pts[:, 0] - x0) / res, (y1 - pts[:, 1]) / res], axis=1)
    return np.round(uv * (1 << _SHIFT)).astype(np.int32)


def _offset(pts: np.ndarray, d: float) -> np.ndarray:
    """Polyline (N, 2) shifted sideways by d metres (positive = left of the direction of travel)."""
    t = np.gradient(pts, axis=0)
    t /= np.maximum(np.linalg.norm(t, axis=1, keepdims=True), 1e-9)
    return pts + d * np.stack([-t[:, 1], t[:, 0]], axis=1)


def _dashes(pts: np.ndarray) -> list[np.ndarray]:
    """Split a polyline into DASH_ON_M pieces every DASH_ON_M + DASH_OFF_M metres of arc length."""
    seg = np.linalg.norm(np.diff(pts, axis=0), axis=1)
    s = np.concatenate([[0.0], np.cumsum(seg)])
    out, period = [], DASH_ON_M + DASH_OFF_M
    for a in np.arange(0.0, s[-1], period):
        b = min(a + DASH_ON_M, s[-1])
        ss = np.concatenate([[a], s[(s > a) & (s < b)], [b]])
        out.append(np.stack([np.interp(ss, s, pts[:, 0]), np.interp(ss, s, pts[:, 1])], axis=1))
    return out


def _rasterise(geometry: RoadGeometry, box: tuple[float, float, float, float], res: float) -> GroundTexture:
    x0, y0, x1, y1 = box
    w, h = int(math.ceil((x1 - x0) / res)), int(math.ceil((y1 - y0) / res))
    img = np.empty((h, w, 3), np.uint8)
    img[:] = TERRAIN
    px = lambda p: _to_px(p, x0, y1, res)  # noqa: E731
    fill = lambda polys, col: cv2.fillPoly(img, [px(p) for p in polys], col, cv2.LINE_AA, _SHIFT)  # noqa: E731

    def line(p, col, width_m):
        thick = max(1, int(round(width_m / res)))
        cv2.polylines(img, [px(p)], False, col, thick, cv2.LINE_AA, _SHIFT)

    _junction_corners(img, geometry, px, res)
    for kind, col in (("sidewalk", SIDEWALK), ("median", SIDEWALK), ("shoulder", SHOULDER)):
        for s in geometry.outer_lanes:
            if s.kind == kind:
                fill([s.polygon()], col)
    fill(geometry.junction_areas, ASPHALT)
    for s in geometry.lanes:
        fill([s.polygon()], ASPHALT)
    for s in geometry.outer_lanes:
        if s.kerb is not None:
            line(s.kerb, KERB, 0.3)
    for m in geometry.markings:
        col = PAINT[m.colour]
        lines = [_offset(m.pts, 0.12), _offset(m.pts, -0.12)] if "_" in m.kind else [m.pts]
        kinds = m.kind.split("_")
        for pts, kind in zip(lines, kinds if len(kinds) == len(lines) else kinds * len(lines)):
            for piece in (_dashes(pts) if kind == "broken" else [pts]):
                if len(piece) >= 2:
                    line(piece, col, MARK_WIDTH_M)
    for site in geometry.lights:  # stop line across the governed lane
        left = np.array([-math.sin(site.lane_yaw), math.cos(site.lane_yaw)])
        half = _lane_half_width(geometry, site)
        c = site.stop_point[:2]
        line(np.stack([c + left * half, c - left * half]), PAINT["white"], STOP_LINE_M)
    for cw in geometry.crosswalks:
        _zebra(img, cw, px, res)
    # Fine grain and slow mottling so that the ground has texture to track (as real asphalt does).
    # Grain and slow mottling: one 1024 px noise tile repeated (the repeat is not visible at road scale),
    # added in strips to keep the temporary memory small on big maps.
    rng = np.random.default_rng(0)
    n = 1024
    coarse = np.tile(rng.normal(0, 5, (16, 16)).astype(np.float32), (3, 3))  # periodic: no seams
    tile = cv2.resize(coarse, (3 * n, 3 * n), interpolation=cv2.INTER_CUBIC)[n:2 * n, n:2 * n]
    tile = np.round(tile + rng.normal(0, 3, (n, n)).astype(np.float32)).astype(np.int16)
    row = np.tile(tile, (1, w // n + 1))[:, :w]
    for a in range(0, h, n):
        b = min(h, a + n)
        img[a:b] = np.clip(img[a:b].astype(np.int16) + row[: b - a, :, None], 0, 255)
    low = cv2.resize(img, (w // 4, h // 4), interpolation=cv2.INTER_AREA)
    w0 = np.array([[res, 0, x0], [0, -res, y1], [0, 0, 1]])
    # Level-1 pixel k covers level-0 pixels 4k..4k+3, centred at 4k + 1.5.
    w1 = np.array([[4 * res, 0, x0 + 1.5 * res], [0, -4 * res, y1 - 1.5 * res], [0, 0, 1]])
    return GroundTexture(levels=[img, low], world_from_tex=[w0, w1], res=res)


def _junction_corners(img: np.ndarray, geometry: RoadGeometry, px, res: float) -> None:
    """Pavement around junction corners (CARLA's sidewalks stop where the junction starts): each junction
    area grown by the typical sidewalk width; roads and sidewalks painted afterwards cover the rest."""
    widths = [float(np.median(np.linalg.norm(s.left - s.right, axis=1))) for s in geometry.outer_lanes
              if s.kind == "sidewalk"]
    if not widths:
        return
    grow = float(np.median(widths)) + 0.3
    r = max(1, int(round(grow / res)))
    disk = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))
    for area in geometry.junction_areas:
        outline = px(area)
        u0, v0 = (outline.min(0) >> _SHIFT) - r - 2
        u1, v1 = (outline.max(0) >> _SHIFT) + r + 3
        u0, v0 = max(int(u0), 0), max(int(v0), 0)
        u1, v1 = min(int(u1), img.shape[1]), min(int(v1), img.shape[0])
        if u1 <= u0 or v1 <= v0:
            continue
        mask = np.zeros((v1 - v0, u1 - u0), np.uint8)
        cv2.fillPoly(mask, [outline - (np.array([u0, v0]) << _SHIFT)], 255, cv2.LINE_8, _SHIFT)
        img[v0:v1, u0:u1][cv2.dilate(mask, disk) > 0] = SIDEWALK


def _lane_half_width(geometry: RoadGeometry, site) -> float:
    for s in geometry.lanes:
        if s.road_id == site.road_id and s.lane_id == site.lane_id:
            return float(np.linalg.norm(s.left[0] - s.right[0]) / 2)
    return 1.75


def _zebra(img: np.ndarray, poly: np.ndarray, px, res: float) -> None:
    """White bars across a crosswalk polygon (continental style), clipped to the polygon."""
    (cx, cy), (a, b), ang = cv2.minAreaRect(poly.astype(np.float32))
    long_ax = math.radians(ang) if a >= b else math.radians(ang + 90)
    length, width = max(a, b), min(a, b)
    u = np.array([math.cos(long_ax), math.sin(long_ax)])
    v = np.array([-u[1], u[0]])
    bars = []
    for t in np.arange(-length / 2 + 0.25, length / 2, 1.0):
        c = np.array([cx, cy]) + u * t
        bars.append(np.stack([c + v * width / 2, c + u * 0.5 + v * width / 2, c + u * 0.5 - v * width / 2,
                              c - v * width / 2]))
    # Work in the polygon's bounding box only (full-texture masks would cost a lot on big maps).
    outline = px(poly)
    u0, v0 = np.maximum(outline.min(0) >> _SHIFT, 0) - 1
    u1, v1 = (outline.max(0) >> _SHIFT) + 2
    u0, v0 = max(int(u0), 0), max(int(v0), 0)
    u1, v1 = min(int(u1), img.shape[1]), min(int(v1), img.shape[0])
    if u1 <= u0 or v1 <= v0:
        return
    off = np.array([u0, v0]) << _SHIFT
    mask = np.zeros((v1 - v0, u1 - u0), np.uint8)
    cv2.fillPoly(mask, [px(b) - off for b in bars], 255, cv2.LINE_8, _SHIFT)
    clip = np.zeros_like(mask)
    cv2.fillPoly(clip, [outline - off], 255, cv2.LINE_8, _SHIFT)
    img[v0:v1, u0:u1][(mask > 0) & (clip > 0)] = PAINT["white"]


# ----------------------------------------------------------------------------------------------------
# Solids
# ----------------------------------------------------------------------------------------------------
def _rot(yaw: np.ndarray) -> np.ndarray:
    """(N, 3, 3) rotations about z."""
    c, s = np.cos(yaw), np.sin(yaw)
    r = np.zeros((len(yaw), 3, 3))
    r[:, 0, 0], r[:, 0, 1], r[:, 1, 0], r[:, 1, 1], r[:, 2, 2] = c, -s, s, c, 1.0
    return r


@dataclass
class _Solids:
    corners: np.ndarray  # (N, 8, 3) world
    normals: np.ndarray  # (N, 5, 3) world, per face
    colours: np.ndarray  # (N, 5, 3) shaded face colours
    groups: list[list[int]]  # solids drawn together, in order (a car's chassis, body, cabin)
    shadow: dict[int, int]  # group -> solid whose footprint casts the contact shadow
    lamps: dict[int, list[tuple[np.ndarray, np.ndarray, tuple]]]  # solid -> [(centre, normal, rgb)]


class _Builder:
    """Collects boxes (centre, size, yaw, per-face base colours) into groups."""

    def __init__(self):
        self.centers, self.sizes, self.yaws, self.cols = [], [], [], []
        self.groups: list[list[int]] = []
        self.shadow: dict[int, int] = {}
        self.lamps: dict[int, list] = {}

    def add(self, center, size, yaw, face_cols) -> int:
        self.centers.append(np.asarray(center, float))
        self.sizes.append(size)
        self.yaws.append(yaw)
        self.cols.append(np.broadcast_to(np.asarray(face_cols, float), (5, 3)))
        self.groups[-1].append(len(self.centers) - 1)
        return len(self.centers) - 1


def _is_car(b: RenderBox) -> bool:
    length, width, height = b.size
    return b.kind == "car" or (b.kind == "auto" and 2.5 <= length <= 6.5 and 0.9 <= height <= 2.3)


def _is_pedestrian(b: RenderBox) -> bool:
    length, width, height = b.size
    return b.kind == "pedestrian" or (b.kind == "auto" and max(length, width) <= 1.2 and height >= 1.2)


def _add_box(bld: _Builder, b: RenderBox) -> None:
    """One group per box; "auto" styles car-sized boxes as cars and person-sized ones as pedestrians."""
    c = np.asarray(b.center, float)[:3]
    length, width, height = (float(v) for v in b.size)
    col = np.asarray(b.color, float)
    bld.groups.append([])
    bottom = c[2] - height / 2
    if _is_pedestrian(b):
        # Legs, torso (the box colour), head; all within the given box.
        bld.shadow[len(bld.groups) - 1] = bld.add([c[0], c[1], bottom + 0.23 * height],
                                                  (0.6 * length, 0.8 * width, 0.46 * height), b.yaw, TROUSERS)
        bld.add([c[0], c[1], bottom + 0.63 * height], (0.8 * length, width, 0.34 * height), b.yaw, col)
        s = min(length, width) * 0.45
        bld.add([c[0], c[1], bottom + 0.9 * height], (s, s, 0.2 * height), b.yaw, SKIN)
        return
    if not _is_car(b):
        bld.shadow[len(bld.groups) - 1] = bld.add(c, (length, width, height), b.yaw, col)
        return
    # A car: dark chassis (reads as wheels), painted body, glass cabin with a painted roof.
    fwd = np.array([math.cos(b.yaw), math.sin(b.yaw), 0.0])
    clear = min(0.3, 0.2 * height)
    body_top = bottom + 0.58 * height
    chassis = bld.add([c[0], c[1], bottom + clear / 2], (0.86 * length, 0.94 * width, clear), b.yaw, CHASSIS)
    bld.shadow[len(bld.groups) - 1] = chassis
    body_h = body_top - bottom - clear
    bld.add([c[0], c[1], bottom + clear + body_h / 2], (length, width, body_h), b.yaw, col)
    cab_h = bottom + height - body_top
    glass = np.array([GLASS] * 5, float)
    glass[4] = col
    cab_c = c + fwd * (-0.06 * length)
    cab_c[2] = body_top + cab_h / 2
    bld.add(cab_c, (0.5 * length, 0.86 * width, cab_h), b.yaw, glass)


def _add_light(bld: _Builder, lt: RenderLight) -> None:
    base = np.asarray(lt.position, float)[:3]
    fwd = np.array([math.cos(lt.yaw), math.sin(lt.yaw), 0.0])
    bld.groups.append([])
    bld.add(base + [0, 0, POLE_SIZE[2] / 2], POLE_SIZE, lt.yaw, LIGHT_POLE)
    head = base + [0, 0, HEAD_CENTER_Z]
    i = bld.add(head, HEAD_SIZE, lt.yaw, LIGHT_HEAD)
    bld.lamps[i] = [(head + fwd * (HEAD_SIZE[0] / 2 + 0.01) + [0, 0, dz], fwd,
                     (LAMP_ON if lt.state == name else LAMP_OFF)[name]) for name, dz in LAMP_DZ.items()]


def _solids(boxes: list[RenderBox], lights: list[RenderLight]) -> _Solids:
    bld = _Builder()
    for b in boxes:
        if not (np.isfinite(np.asarray(b.center, float)).all() and np.isfinite(b.size).all()
                and math.isfinite(b.yaw) and min(b.size) > 0):
            raise ValueError(f"render: box with non-finite or non-positive values: {b}")
        _add_box(bld, b)
    for lt in lights:
        if not (np.isfinite(np.asarray(lt.position, float)).all() and math.isfinite(lt.yaw)):
            raise ValueError(f"render: traffic light with non-finite values: {lt}")
        _add_light(bld, lt)
    if not bld.centers:
        return _Solids(np.zeros((0, 8, 3)), np.zeros((0, 5, 3)), np.zeros((0, 5, 3)), [], {}, {})
    rot = _rot(np.asarray(bld.yaws, float))
    corners = np.einsum("nij,nkj->nki", rot, _SIGNS[None] * np.asarray(bld.sizes, float)[:, None, :])
    corners += np.asarray(bld.centers)[:, None, :]
    normals = np.einsum("nij,fj->nfi", rot, _NORMALS)
    shade = 0.42 + 0.58 * np.clip(normals @ SUN, 0.0, 1.0)  # (N, 5)
    colours = np.clip(np.asarray(bld.cols) * shade[..., None], 0, 255)
    return _Solids(corners, normals, colours, bld.groups, bld.shadow, bld.lamps)


def _inv3(m: np.ndarray) -> np.ndarray:
    """3x3 inverse through OpenCV: LAPACK calls interleaved with OpenCV's thread pool were measured to
    cost milliseconds each on a 2-core machine; OpenCV's own inverse stays in microseconds."""
    ok, inv = cv2.invert(m)
    return inv


def _clip_near(poly: np.ndarray, near: float) -> np.ndarray:
    """Sutherland-Hodgman clip of a camera-frame polygon (K, 3) to z >= near."""
    out = []
    k = len(poly)
    for i in range(k):
        a, b = poly[i], poly[(i + 1) % k]
        ina, inb = a[2] >= near, b[2] >= near
        if ina:
            out.append(a)
        if ina != inb:
            t = (near - a[2]) / (b[2] - a[2])
            out.append(a + t * (b - a))
    return np.array(out) if out else np.zeros((0, 3))


# ----------------------------------------------------------------------------------------------------
# Renderer
# ----------------------------------------------------------------------------------------------------
class Renderer:
    """Renders the rig's cameras; `render(world_from_ego, boxes, lights)` -> {camera name: (H, W, 3) RGB}."""

    def __init__(self, geometry: RoadGeometry, rig: Rig, width: int, height: int,
                 texture_res: float | None = None):
        self.geometry = geometry
        self.rig = rig.with_image_size(width, height)
        self.width, self.height = width, height
        self.texture = ground_texture(geometry, texture_res)
        self.cams = []
        for cam in self.rig.cameras:
            k = cam.intrinsics()
            self.cams.append({"name": cam.name, "K": k, "K_inv": np.linalg.inv(k),
                              "ego_from_cam": cam.ego_from_cam(), "cam_from_ego": cam.cam_from_ego()})
        v = np.arange(height, dtype=np.float64)
        self._v = v
        self._sky_cache: dict[tuple, np.ndarray] = {}

    # -- public ---------------------------------------------------------------------------------------
    def render(self, world_from_ego: np.ndarray, boxes: list[RenderBox] | None = None,
               lights: list[RenderLight] | None = None) -> dict[str, np.ndarray]:
        """All rig cameras for an ego pose (4x4 world_from_ego; its z is the ground height).

        Raises ValueError for a pose that is not a finite 4x4 matrix or a box/light with non-finite values.
        """
        world_from_ego = np.asarray(world_from_ego, dtype=np.float64)
        if world_from_ego.shape != (4, 4) or not np.isfinite(world_from_ego).all():
            raise ValueError(f"render: world_from_ego must be a finite 4x4 matrix, got {world_from_ego!r}")
        solids = _solids(list(boxes or []), list(lights or []))
        out = {}
        for cam in self.cams:
            world_from_cam = world_from_ego @ cam["ego_from_cam"]
            img = self._ground(cam, world_from_cam, float(world_from_ego[2, 3]))
            self._draw_solids(img, cam, invert_transform(world_from_cam), solids)
            out[cam["name"]] = img
        return out

    # -- ground and sky -------------------------------------------------------------------------------
    def _ground(self, cam: dict, world_from_cam: np.ndarray, ground_z: float) -> np.ndarray:
        w, h = self.width, self.height
        r_wc, c_w = world_from_cam[:3, :3], world_from_cam[:3, 3]
        height = c_w[2] - ground_z
        ray = r_wc @ cam["K_inv"]  # world ray (unit optical depth) of pixel (u, v, 1)
        g = ray[2]  # its z component, linear in (u, v)
        v = self._v + 0.5
        dz_a, dz_b = g[0] * 0.5 + g[1] * v + g[2], g[0] * (w - 0.5) + g[1] * v + g[2]
        dz_max = np.maximum(dz_a, dz_b)
        thr = -height / GROUND_MAX_M
        sky = self._sky(ray, cam)
        any_ground = np.minimum(dz_a, dz_b) < thr
        # Camera at/below the ground, upside down, or looking at the sky only.
        if height <= 0.05 or g[1] >= 0 or not any_ground.any():
            return sky.copy()
        v_top = int(np.argmax(any_ground))  # first row with some ground within GROUND_MAX_M
        # Level split: geometric-mean ground footprint of a pixel vs 2 level-0 texels.
        f = cam["K"][0, 0]
        depth = height / np.maximum(-dz_max, 1e-9)
        footprint = depth ** 1.5 / (f * math.sqrt(height))
        near_rows = np.nonzero((footprint < 2 * self.texture.res) & (dz_max < thr))[0]
        v_split = int(near_rows[0]) if len(near_rows) else h
        v_split = max(v_split, v_top)
        img = np.empty((h, w, 3), np.uint8)
        img[:v_split] = sky[:v_split]  # rows below are all ground and are overwritten by the warp
        r_cw = r_wc.T
        plane = np.stack([r_cw[:, 0], r_cw[:, 1], r_cw[:, 2] * ground_z - r_cw @ c_w], axis=1)
        h_img_world = cam["K"] @ plane  # img <- world (x, y, 1) on the ground plane
        for level, (a, b) in ((1, (v_top, v_split)), (0, (v_split, h))):
            if b <= a:
                continue
            h_img_tex = h_img_world @ self.texture.world_from_tex[level]
            shift = np.array([[1.0, 0, 0], [0, 1.0, a], [0, 0, 1.0]])
            h_tex_band = _inv3(h_img_tex) @ shift
            flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
            if level == 0:  # straight into the image (rows a..b of a C-contiguous array are contiguous)
                cv2.warpPerspective(self.texture.levels[0], h_tex_band, (w, b - a), dst=img[a:b], flags=flags,
                                    borderMode=cv2.BORDER_CONSTANT, borderValue=TERRAIN)
            else:
                band = cv2.warpPerspective(self.texture.levels[1], h_tex_band, (w, b - a), flags=flags,
                                           borderMode=cv2.BORDER_CONSTANT, borderValue=TERRAIN)
                img[a:b] = self._haze(band, img[a:b], g, height, a, b)
        return img

    def _haze(self, band: np.ndarray, sky: np.ndarray, g: np.ndarray, height: float, a: int,
              b: int) -> np.ndarray:
        """Blend far ground into the sky already painted in rows a..b (alpha 1 = sky)."""
        # Only rows that reach HAZE_START_M somewhere need blending (depth is extreme at the row's ends).
        rows = np.arange(a, b) + 0.5
        ends = np.stack([g[0] * 0.5 + g[1] * rows + g[2], g[0] * (self.width - 0.5) + g[1] * rows + g[2]])
        hazy = np.nonzero(ends.max(0) > -height / HAZE_START_M)[0]
        if len(hazy) == 0:
            return band
        b = a + int(hazy[-1]) + 1
        band[: b - a] = self._haze_rows(band[: b - a], sky[: b - a], g, height, a, b)
        return band

    def _haze_rows(self, band: np.ndarray, sky: np.ndarray, g: np.ndarray, height: float, a: int,
                   b: int) -> np.ndarray:
        u = np.arange(self.width) + 0.5
        dz = g[0] * u[None, :] + g[1] * (np.arange(a, b) + 0.5)[:, None] + g[2]
        depth = np.where(dz < 0, height / np.maximum(-dz, 1e-9), np.inf)
        alpha = np.clip((depth - HAZE_START_M) / (GROUND_MAX_M - HAZE_START_M), 0.0, 1.0)[..., None]
        if not alpha.any():
            return band
        return (band * (1.0 - alpha) + sky * alpha).astype(np.uint8)

    def _sky(self, ray: np.ndarray, cam: dict) -> np.ndarray:
        """Sky gradient by the elevation of the centre-column ray of each row; the elevations do not change
        when the ego turns (rotation about z), so the image is cached per camera and tilt."""
        key = (cam["name"], *np.round(ray[2], 7))
        sky = self._sky_cache.get(key)
        if sky is None:
            if len(self._sky_cache) > 64:
                self._sky_cache.clear()
            sky = self._sky_cache[key] = self._sky_gradient(ray, cam)
        return sky

    def _sky_gradient(self, ray: np.ndarray, cam: dict) -> np.ndarray:
        cx = cam["K"][0, 2]
        d = ray[:, 0:1] * cx + ray[:, 1:2] * (self._v + 0.5) + ray[:, 2:3]  # (3, H), element-wise (no BLAS)
        elev = np.arctan2(d[2], np.hypot(d[0], d[1]))
        t = np.clip(elev / 0.6, 0.0, 1.0)[:, None]
        grad = (np.asarray(SKY_HORIZON, float) * (1 - t) + np.asarray(SKY_ZENITH, float) * t).astype(np.uint8)
        return np.ascontiguousarray(np.broadcast_to(grad[:, None, :], (self.height, self.width, 3)))

    # -- solids ---------------------------------------------------------------------------------------
    def _draw_solids(self, img: np.ndarray, cam: dict, cam_from_world: np.ndarray, s: _Solids) -> None:
        if len(s.corners) == 0:
            return
        r, t = cam_from_world[:3, :3], cam_from_world[:3, 3]
        pc = s.corners @ r.T + t  # (N, 8, 3) camera frame (x right, y down, z forward)
        k = cam["K"]
        tx = (self.width / 2 + 2) / k[0, 0]
        ty = (self.height / 2 + 2) / k[1, 1]
        x, y, z = pc[..., 0], pc[..., 1], pc[..., 2]
        outside = ((z < NEAR_M).all(1) | (x > tx * z).all(1) | (x < -tx * z).all(1)
                   | (y > ty * z).all(1) | (y < -ty * z).all(1) | (z.min(1) > SOLID_MAX_M))
        if outside.all():
            return
        in_front = (z >= NEAR_M).all(1)
        uv_all = pc @ k.T
        uv_all = uv_all[..., :2] / np.where(in_front[:, None, None], uv_all[..., 2:3], 1.0)
        nc = s.normals @ r.T  # (N, 5, 3)
        face_pt = pc[:, _FACES].mean(2)  # (N, 5, 3)
        visible = ((nc * face_pt).sum(-1) < 0) & ~outside[:, None]  # (N, 5)
        dist = np.linalg.norm(pc.mean(1), axis=1)
        live = [g for g in range(len(s.groups)) if not outside[s.groups[g]].all()]
        live.sort(key=lambda g: -dist[s.groups[g][0]])
        scale = float(1 << _SHIFT)
        for g in live:
            if g in s.shadow:
                self._shadow(img, pc[s.shadow[g]], k)
            for i in s.groups[g]:
                for f in np.nonzero(visible[i])[0]:
                    col = tuple(int(c) for c in s.colours[i, f])
                    if in_front[i]:
                        pts = uv_all[i, _FACES[f]]
                    else:
                        poly = _clip_near(pc[i, _FACES[f]], NEAR_M)
                        if len(poly) < 3:
                            continue
                        pts = poly[:, :2] / poly[:, 2:3] * [k[0, 0], k[1, 1]] + [k[0, 2], k[1, 2]]
                    cv2.fillConvexPoly(img, np.round(pts * scale).astype(np.int32), col, cv2.LINE_AA, _SHIFT)
                for centre_w, normal_w, col in s.lamps.get(i, []):
                    pcl = r @ centre_w + t
                    if pcl[2] < NEAR_M or float((r @ normal_w) @ pcl) >= 0:
                        continue
                    uvl = (k @ pcl) / pcl[2] * scale
                    rad = max(k[0, 0] * LAMP_RADIUS / pcl[2], 0.7) * scale
                    cv2.circle(img, (int(round(uvl[0])), int(round(uvl[1]))), int(round(rad)), col, -1,
                               cv2.LINE_AA, _SHIFT)

    def _shadow(self, img: np.ndarray, corners_cam: np.ndarray, k: np.ndarray) -> None:
        """A dark footprint slightly larger than the box, on the ground under it."""
        bottom = corners_cam[_BOTTOM]
        mid = bottom.mean(0)
        poly = _clip_near(mid + (bottom - mid) * 1.12, NEAR_M)
        if len(poly) < 3:
            return
        pts = poly[:, :2] / poly[:, 2:3] * [k[0, 0], k[1, 1]] + [k[0, 2], k[1, 2]]
        cv2.fillConvexPoly(img, np.round(pts * (1 << _SHIFT)).astype(np.int32), SHADOW, cv2.LINE_AA, _SHIFT)
