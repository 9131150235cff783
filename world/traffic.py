"""Background traffic of the offline world: traffic-light cycles, lane-following IDM vehicles, pedestrians.

Vehicles live on the lane graph of `RoadMap.segments` (position = segment + arc length), pick a random
successor at every lane end (seeded), keep their distance with IDM to anything on their path corridor
(vehicles, the ego, pedestrians), stop at red lights (and at yellow when they can), yield at junctions
(they do not enter while an actor from another approach is inside, nor when the exit is jammed), and
never change lanes. Lights cycle per junction like CARLA's traffic-light groups: one approach green at a
time, then yellow, then an all-red clearance; each junction starts at a seeded offset. Pedestrians walk
across crosswalks when the crossed approach is red (or, without a light, when no vehicle is near).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from world.config import TrafficConfig
from world.dynamics import idm_accel
from world.road_map import RoadMap, Segment

RED, YELLOW, GREEN = 0, 1, 2
STATE_NAMES = ("red", "yellow", "green")
LOOKAHEAD_M = 50.0  # path corridor length each vehicle checks ahead

# (nuScenes category, length, width, height, spawn weight) of the background fleet.
FLEET = (
    ("vehicle.car", 4.6, 1.9, 1.5, 0.70),
    ("vehicle.car", 4.0, 1.8, 1.6, 0.12),
    ("vehicle.truck", 6.5, 2.3, 2.8, 0.10),
    ("vehicle.bus.rigid", 10.5, 2.6, 3.2, 0.03),
    ("vehicle.motorcycle", 2.2, 0.9, 1.5, 0.05),
)


class LightController:
    """Per-junction cycles: `states(t)` -> (L,) int array of RED / YELLOW / GREEN for RoadMap.lights."""

    def __init__(self, rmap: RoadMap, cfg: TrafficConfig, rng: np.random.Generator):
        self.lights = rmap.lights
        self.slot = cfg.green_s + cfg.yellow_s + cfg.all_red_s
        self.cfg = cfg
        n_per = rmap.junction_phases
        self.phase = np.array([lt.phase for lt in self.lights], dtype=np.int64)
        self.cycle = np.array([n_per[lt.junction] * self.slot for lt in self.lights])
        junctions = sorted(n_per)
        offsets = {j: float(rng.uniform(0.0, n_per[j] * self.slot)) for j in junctions}
        self.offset = np.array([offsets[lt.junction] for lt in self.lights])
        self.forced: dict[int, int] = {}  # light index -> fixed state (planted scenarios, tests)

    def states(self, t: float) -> np.ndarray:
        if not len(self.lights):
            return np.zeros(0, dtype=np.int64)
        out = self._cycle_states(t)
        for i, st in self.forced.items():
            out[i] = st
        return out

    def _cycle_states(self, t: float) -> np.ndarray:
        local = (t + self.offset) % self.cycle
        slot = np.floor(local / self.slot).astype(np.int64)
        r = local - slot * self.slot
        out = np.full(len(self.lights), RED, dtype=np.int64)
        mine = slot == self.phase
        out[mine & (r < self.cfg.green_s)] = GREEN
        out[mine & (r >= self.cfg.green_s) & (r < self.cfg.green_s + self.cfg.yellow_s)] = YELLOW
        return out

    def time_in_state(self, t: float) -> np.ndarray:
        """Seconds since each light entered its current state (used by pedestrians)."""
        if not len(self.lights):
            return np.zeros(0)
        local = (t + self.offset) % self.cycle
        start_green = self.phase * self.slot
        rel = (local - start_green) % self.cycle
        g, y = self.cfg.green_s, self.cfg.yellow_s
        return np.where(rel < g, rel, np.where(rel < g + y, rel - g, rel - g - y))


def seg_point(seg: Segment, s: float) -> tuple[float, float, float]:
    """(x, y, yaw) at arc length `s` on a segment (clamped to its ends)."""
    s = min(max(s, 0.0), seg.length)
    i = int(np.searchsorted(seg.s, s))
    if i <= 0:
        return float(seg.pts[0, 0]), float(seg.pts[0, 1]), float(seg.yaw[0])
    if i >= len(seg.s):
        return float(seg.pts[-1, 0]), float(seg.pts[-1, 1]), float(seg.yaw[-1])
    f = (s - seg.s[i - 1]) / max(seg.s[i] - seg.s[i - 1], 1e-9)
    p = seg.pts[i - 1] + f * (seg.pts[i] - seg.pts[i - 1])
    return float(p[0]), float(p[1]), float(seg.yaw[i if f > 0.5 else i - 1])


@dataclass
class Vehicle:
    """One background (or parked) vehicle."""

    id: int  # actor id (unique in the world, stable over the run)
    category: str  # nuScenes category
    size: tuple[float, float, float]  # length, width, height
    color: tuple[int, int, int]  # body colour (RGB) for the renderer
    seg: int  # current segment
    s: float  # arc length on it
    v: float  # speed, m/s
    v_des: float  # desired speed
    plan: list[int] = field(default_factory=list)  # upcoming segments (chosen ahead, seeded)
    parked: bool = False  # never moves (planted obstacles)
    x: float = 0.0
    y: float = 0.0
    yaw: float = 0.0
    entry_road: int = -1  # road id of the approach the vehicle entered its current junction from
    cache: tuple | None = field(default=None, repr=False)  # (seg, path pts, arc lengths, entries, total)
    stuck: float = 0.0  # seconds standing still (a gridlocked vehicle is moved away, see TrafficConfig)


@dataclass
class Pedestrian:
    """One pedestrian shuttling across a crosswalk."""

    id: int
    crosswalk: int  # index into Traffic.crossings
    u: float  # position along the crossing path, metres from its start
    direction: int  # +1 walking from start to end, -1 back
    lateral: float  # offset across the crosswalk band, metres
    wait: float  # seconds still to wait at the kerb before it may cross
    walking: bool = False
    x: float = 0.0
    y: float = 0.0
    yaw: float = 0.0
    v: float = 0.0
    blocked: float = 0.0  # seconds spent halted by a vehicle in its way (turns back after 2 s)


@dataclass
class Crossing:
    """A walkable crosswalk: a straight path between its two kerbs."""

    start: np.ndarray  # (2,)
    end: np.ndarray  # (2,)
    half_width: float  # half the crosswalk's extent along the road
    light: int  # index of the light whose red lets pedestrians cross (-1: gap acceptance)

    @property
    def length(self) -> float:
        return float(np.linalg.norm(self.end - self.start))


def _blocks(boxes: np.ndarray, pt: np.ndarray) -> bool:
    """True when `pt` is inside a vehicle footprint (+0.4 m), or within 3 m in front of a moving one."""
    dx, dy = pt[0] - boxes[:, 0], pt[1] - boxes[:, 1]
    c, s = np.cos(boxes[:, 2]), np.sin(boxes[:, 2])
    lon, lat = c * dx + s * dy, -s * dx + c * dy
    front = 0.5 * boxes[:, 3] + 0.4 + np.where(boxes[:, 5] > 0.5, 3.0, 0.0)
    inside = (lon > -0.5 * boxes[:, 3] - 0.4) & (lon < front) & (np.abs(lat) < 0.5 * boxes[:, 4] + 0.4)
    return bool(inside.any())


def _crossings(rmap: RoadMap) -> list[Crossing]:
    out = []
    lights = rmap.lights
    for poly in rmap.crosswalks:
        pts = poly[:-1] if np.allclose(poly[0], poly[-1]) else poly
        if len(pts) != 4:
            continue
        e = [np.linalg.norm(pts[(i + 1) % 4] - pts[i]) for i in range(4)]
        i = int(np.argmin(e))  # a short edge: the kerb side
        a = 0.5 * (pts[i] + pts[(i + 1) % 4])
        b = 0.5 * (pts[(i + 2) % 4] + pts[(i + 3) % 4])
        d = (b - a) / max(np.linalg.norm(b - a), 1e-6)
        centre = 0.5 * (a + b)
        light = -1
        best = 10.0
        for li, lt in enumerate(lights):
            dist = float(np.min(np.linalg.norm(lt.stop_pts - centre, axis=1)))
            if dist < best:
                best, light = dist, li
        out.append(Crossing(a - 1.5 * d, b + 1.5 * d, 0.5 * min(e), light))
    return out


class Traffic:
    """All background actors and the light cycles; `step` advances them by dt."""

    def __init__(self, rmap: RoadMap, cfg: TrafficConfig, rng: np.random.Generator):
        self.rmap = rmap
        self.cfg = cfg
        self.rng = rng
        self.segs = rmap.segments
        self.lights = LightController(rmap, cfg, rng)
        self.light_states = self.lights.states(0.0)
        self.vehicles: list[Vehicle] = []
        self.pedestrians: list[Pedestrian] = []
        self.crossings = _crossings(rmap)
        self._next_id = 100
        # Stop line offsets: stop before the crosswalk when one lies just before the junction entry.
        self.stop_offset = np.ones(len(rmap.lights))
        for c in self.crossings:
            if c.light >= 0:
                self.stop_offset[c.light] = 2.0 * c.half_width + 2.0

    # --- spawning -------------------------------------------------------------------------------------
    def new_id(self) -> int:
        self._next_id += 1
        return self._next_id

    def spawn(self, ego_xy: np.ndarray, avoid: np.ndarray | None = None) -> None:
        """Spawn the configured number of vehicles and pedestrians away from the ego (and `avoid` points)."""
        cands = [s for s in self.segs if s.junction < 0 and s.length > 8.0]
        if not cands:
            return
        lengths = np.array([s.length for s in cands])
        probs = lengths / lengths.sum()
        weights = np.array([f[4] for f in FLEET])
        weights /= weights.sum()
        placed: list[np.ndarray] = [np.asarray(p[:2]) for p in (avoid if avoid is not None else [])]
        for _ in range(self.cfg.num_vehicles * 20):
            if len([v for v in self.vehicles if not v.parked]) >= self.cfg.num_vehicles:
                break
            seg = cands[int(self.rng.choice(len(cands), p=probs))]
            s = float(self.rng.uniform(3.0, seg.length - 3.0))
            x, y, yaw = seg_point(seg, s)
            p = np.array([x, y])
            if np.linalg.norm(p - ego_xy[:2]) < self.cfg.ego_clearance:
                continue
            if any(np.linalg.norm(p - q) < self.cfg.spawn_clearance for q in placed):
                continue
            kind = FLEET[int(self.rng.choice(len(FLEET), p=weights))]
            color = tuple(int(c) for c in self.rng.integers(30, 230, size=3))
            v_des = self.cfg.vehicle_speed * float(self.rng.uniform(0.8, 1.2))
            veh = Vehicle(self.new_id(), kind[0], kind[1:4], color, seg.id, s, 0.0, v_des, x=x, y=y, yaw=yaw)
            self.vehicles.append(veh)
            placed.append(p)
        for k in range(self.cfg.num_pedestrians if self.crossings else 0):
            ci = int(self.rng.integers(len(self.crossings)))
            c = self.crossings[ci]
            d = 1 if self.rng.random() < 0.5 else -1
            ped = Pedestrian(
                self.new_id(),
                ci,
                0.0 if d > 0 else c.length,
                d,
                float(self.rng.uniform(-0.7, 0.7) * c.half_width),
                float(self.rng.uniform(0, 15) + k),
            )
            self._place_ped(ped)
            self.pedestrians.append(ped)

    def _relocate(self, veh: Vehicle, ego: tuple | None) -> None:
        """Move a gridlocked vehicle to a free lane point far from the ego (rare: big junctions can jam)."""
        cands = [s for s in self.segs if s.junction < 0 and s.length > 8.0]
        others = np.array([[v.x, v.y] for v in self.vehicles if v is not veh] + ([ego[:2]] if ego else []))
        for _ in range(50):
            seg = cands[int(self.rng.integers(len(cands)))]
            s = float(self.rng.uniform(3.0, seg.length - 3.0))
            x, y, yaw = seg_point(seg, s)
            d = np.linalg.norm(others - np.array([x, y]), axis=1) if len(others) else np.array([np.inf])
            far = ego is None or math.hypot(x - ego[0], y - ego[1]) > 60.0
            if far and d.min() > self.cfg.spawn_clearance:
                veh.seg, veh.s, veh.v, veh.plan, veh.cache, veh.stuck = seg.id, s, 0.0, [], None, 0.0
                veh.x, veh.y, veh.yaw, veh.entry_road = x, y, yaw, -1
                return
        veh.stuck = 0.0

    def add_parked(
        self, xy: np.ndarray, yaw: float, size=(4.6, 1.9, 1.5), category: str = "vehicle.car"
    ) -> Vehicle:
        """A vehicle that never moves (a planted obstacle), snapped to the nearest lane for the graph."""
        loc = self.rmap.locate(np.asarray(xy))
        seg, s = loc if loc is not None else (0, 0.0)
        veh = Vehicle(
            self.new_id(),
            category,
            tuple(size),
            (120, 120, 120),
            seg,
            s,
            0.0,
            0.0,
            parked=True,
            x=float(xy[0]),
            y=float(xy[1]),
            yaw=float(yaw),
        )
        self.vehicles.append(veh)
        return veh

    def _place_ped(self, p: Pedestrian) -> None:
        c = self.crossings[p.crosswalk]
        d = (c.end - c.start) / max(c.length, 1e-6)
        n = np.array([-d[1], d[0]])
        pos = c.start + p.u * d + p.lateral * n
        p.x, p.y = float(pos[0]), float(pos[1])
        p.yaw = math.atan2(d[1], d[0]) if p.direction > 0 else math.atan2(-d[1], -d[0])

    # --- obstacles ------------------------------------------------------------------------------------
    def obstacle_points(
        self, ego: tuple[float, float, float, float, float, float] | None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Sample points of every actor: (P, 2) points, (P,) owner id, (P,) half width, (P,) speed along x.

        Vehicles contribute front / centre / rear points on their axis; pedestrians one point. `ego` is
        (x, y, yaw, v, length, width) or None. The ego's owner id is 0.
        """
        pts, owner, half, speed = [], [], [], []
        actors = [(v.id, v.x, v.y, v.yaw, v.v, v.size[0], v.size[1]) for v in self.vehicles]
        if ego is not None:
            actors.append((0, *ego))
        for aid, x, y, yaw, v, length, width in actors:
            c, s = math.cos(yaw), math.sin(yaw)
            for f in (-0.45, 0.0, 0.45):
                pts.append((x + f * length * c, y + f * length * s))
                owner.append(aid)
                half.append(0.5 * width)
                speed.append(v)
        for p in self.pedestrians:
            pts.append((p.x, p.y))
            owner.append(p.id)
            half.append(0.35)
            speed.append(0.0)
        return (
            np.array(pts).reshape(-1, 2),
            np.array(owner, dtype=np.int64),
            np.array(half),
            np.array(speed),
        )

    def _chain(
        self, seg_id: int, plan: list[int]
    ) -> tuple[np.ndarray, np.ndarray, list[tuple[int, float]], float]:
        """Polyline of a segment followed by `plan`: points, arc length from the segment start, entries."""
        seg = self.segs[seg_id]
        pts, cum, entries = [seg.pts], [seg.s], []
        total = seg.length
        for sid in plan:
            nxt = self.segs[sid]
            entries.append((sid, total))
            pts.append(nxt.pts[1:])
            cum.append(nxt.s[1:] + total)
            total += nxt.length
        return np.concatenate(pts), np.concatenate(cum), entries, total

    @staticmethod
    def _slice(pts, cum, entries, s, length):
        i0 = int(np.searchsorted(cum, s))
        i1 = int(np.searchsorted(cum, s + length, side="right"))
        return pts[i0:i1], cum[i0:i1] - s, [(sid, d - s) for sid, d in entries if d - s < length]

    def _vehicle_path(self, veh: Vehicle) -> tuple[np.ndarray, np.ndarray, list[tuple[int, float]]]:
        """Corridor ahead of `veh`, from a per-vehicle cache rebuilt only when its plan changes."""
        cache = veh.cache
        if cache is None or cache[0] != veh.seg or cache[4] - veh.s < LOOKAHEAD_M + 5.0:
            self._extend_plan(veh)
            pts, cum, entries, total = self._chain(veh.seg, veh.plan)
            veh.cache = cache = (veh.seg, pts, cum, entries, total)
        return self._slice(cache[1], cache[2], cache[3], veh.s, LOOKAHEAD_M)

    def _extend_plan(self, veh: Vehicle, length: float = 2 * LOOKAHEAD_M) -> None:
        total = self.segs[veh.seg].length - veh.s + sum(self.segs[p].length for p in veh.plan)
        last = veh.plan[-1] if veh.plan else veh.seg
        while total < length:
            succ = self.segs[last].succ
            if not succ:
                break
            last = succ[int(self.rng.integers(len(succ)))]
            veh.plan.append(last)
            total += self.segs[last].length

    # --- step ------------------------------------------------------------------------------------------
    def step(self, t: float, dt: float, ego: tuple | None, ego_junction: int, ego_entry_road: int) -> None:
        """Advance lights, vehicles and pedestrians to time `t` (+dt). `ego` as in `obstacle_points`;
        `ego_junction` / `ego_entry_road`: the junction the ego is in (-1) and the road it came from."""
        self.light_states = self.lights.states(t)
        pts, owner, half, speed = self.obstacle_points(ego)
        occupants: dict[int, set[int]] = {}
        for v in self.vehicles:
            j = self.segs[v.seg].junction
            if j >= 0:
                occupants.setdefault(j, set()).add(v.entry_road)
        if ego_junction >= 0:
            occupants.setdefault(ego_junction, set()).add(ego_entry_road)

        moving = [v for v in self.vehicles if not v.parked]
        n = len(moving)
        gaps = np.full(n, np.inf)
        dvs = np.zeros(n)
        v0 = np.zeros(n)
        if n:
            pos = np.array([[v.x, v.y] for v in moving])
            diff = pos[:, None, :] - pts[None, :, :]
            near_all = np.einsum("nmk,nmk->nm", diff, diff) < (LOOKAHEAD_M + 6.0) ** 2
        for k, veh in enumerate(moving):
            seg = self.segs[veh.seg]
            v0[k] = self.cfg.junction_speed if seg.junction >= 0 else veh.v_des
            path, along, entries = self._vehicle_path(veh)
            half_len = 0.5 * veh.size[0]
            # Other actors in the corridor (only those within reach are tested).
            cand = np.nonzero(near_all[k] & (owner != veh.id))[0]
            if len(cand) and len(path):
                dd = path[:, None, :] - pts[None, cand, :]
                lim = 0.5 * veh.size[1] + half[cand] + 0.25
                hit = np.einsum("kmj,kmj->km", dd, dd) < (lim * lim)[None, :]
                # only what is ahead of the front half counts (an actor beside the body is not a lead)
                rows = np.nonzero(hit.any(axis=1) & (along > 0.8 * half_len))[0]
                if len(rows):
                    r0 = rows[0]
                    gaps[k] = along[r0] - half_len - 0.5
                    dvs[k] = veh.v - max(float(np.min(speed[cand[hit[r0]]])), 0.0)
            # Lights and junction entry (only while still before the junction).
            if seg.junction < 0 and entries:
                first_seg, d_entry = entries[0]
                jn = self.segs[first_seg].junction
                if jn >= 0:
                    stop_gap = None
                    if seg.light >= 0:
                        st = self.light_states[seg.light]
                        d_stop = d_entry - self.stop_offset[seg.light] - half_len
                        if st == RED or (st == YELLOW and d_stop > veh.v**2 / (2 * self.cfg.idm_decel)):
                            stop_gap = d_stop
                    occ = occupants.get(jn, set()) - {seg.key[0]}
                    if stop_gap is None and d_entry - half_len < 8.0 and occ:
                        stop_gap = d_entry - half_len - 1.0  # yield: someone from another approach is inside
                    if stop_gap is None and d_entry - half_len < 8.0 and np.isfinite(gaps[k]):
                        exit_d = d_entry + sum(
                            self.segs[s_].length for s_, _ in entries if self.segs[s_].junction == jn
                        )
                        if gaps[k] + half_len < exit_d + 3.0 and dvs[k] >= -0.5 and veh.v < 2.0:
                            stop_gap = d_entry - half_len - 1.0  # don't block the box
                    if stop_gap is not None and stop_gap > -1.0 and stop_gap < gaps[k]:
                        gaps[k], dvs[k] = max(stop_gap, 0.0), veh.v
        if n:
            acc = idm_accel(np.array([v.v for v in moving]), v0, gaps, dvs, self.cfg)
            for k, veh in enumerate(moving):
                new_v = max(0.0, veh.v + acc[k] * dt)
                ds = 0.5 * (veh.v + new_v) * dt
                if np.isfinite(gaps[k]):
                    ds = min(ds, max(gaps[k] + 0.3, 0.0))  # never drive into what is ahead
                    if ds < 0.5 * (veh.v + new_v) * dt:
                        new_v = min(new_v, ds / dt)
                veh.v = new_v
                veh.stuck = veh.stuck + dt if new_v < 0.1 else 0.0
                self._advance(veh, ds)
            for veh in moving:
                if veh.stuck > self.cfg.stuck_respawn_s:
                    self._relocate(veh, ego)
        boxes = [(v.x, v.y, v.yaw, v.size[0], v.size[1], v.v) for v in self.vehicles]
        if ego is not None:
            boxes.append(tuple(ego[:3]) + (ego[4], ego[5], ego[3]))
        self._step_pedestrians(t, dt, np.array(boxes).reshape(-1, 6))

    def _advance(self, veh: Vehicle, ds: float) -> None:
        veh.s += ds
        while veh.s > self.segs[veh.seg].length:
            if not veh.plan:
                self._extend_plan(veh)
                if not veh.plan:
                    veh.s = self.segs[veh.seg].length
                    veh.v = 0.0
                    break
            old = self.segs[veh.seg]
            veh.s -= old.length
            veh.seg = veh.plan.pop(0)
            if self.segs[veh.seg].junction >= 0 and old.junction < 0:
                veh.entry_road = old.key[0]
        veh.x, veh.y, veh.yaw = seg_point(self.segs[veh.seg], veh.s)

    def _step_pedestrians(self, t: float, dt: float, boxes: np.ndarray) -> None:
        """Pedestrians wait at the kerb, cross when allowed, and halt rather than step into a vehicle's
        footprint or in front of a moving one. `boxes`: (B, 6) vehicles and ego as x, y, yaw, l, w, v."""
        if not self.pedestrians:
            return
        in_state = self.lights.time_in_state(t)
        for p in self.pedestrians:
            c = self.crossings[p.crosswalk]
            if not p.walking:
                p.v = 0.0
                p.wait -= dt
                if p.wait > 0:
                    continue
                mid = 0.5 * (c.start + c.end)
                near = np.hypot(boxes[:, 0] - mid[0], boxes[:, 1] - mid[1]) if len(boxes) else np.zeros(0)
                clear = not np.any((near < 12.0) & (boxes[:, 5] > 0.5)) if len(boxes) else True
                if c.light >= 0:
                    ok = self.light_states[c.light] == RED and 1.0 < in_state[c.light] < 15.0 and clear
                else:
                    ok = not len(boxes) or float(np.min(near)) > 15.0
                if ok:
                    p.walking = True
                continue
            d = (c.end - c.start) / max(c.length, 1e-6)
            nxt = np.array([p.x, p.y]) + p.direction * d * 0.8
            if len(boxes) and _blocks(boxes, nxt):
                p.v = 0.0  # a vehicle is in the way: wait for it, and step back after a while
                p.blocked += dt
                if p.blocked > 2.0:
                    p.direction, p.blocked = -p.direction, 0.0
                continue
            p.blocked = 0.0
            p.v = self.cfg.pedestrian_speed
            p.u += p.direction * p.v * dt
            if p.u <= 0.0 or p.u >= c.length:
                p.u = min(max(p.u, 0.0), c.length)
                p.direction *= -1
                p.walking = False
                p.v = 0.0
                p.wait = float(self.rng.uniform(5.0, 25.0))
            self._place_ped(p)
