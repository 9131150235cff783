"""OpenDRIVE grid-town generator: the offline world's default town (CARLA's Town05 is not redistributable).

The town is a lattice of (grid_x + 2) x (grid_y + 2) points spaced `block_m` apart. Interior points are
signalised 4-way junctions, points on the border are signalised T-junctions and the four corner points
are 90-degree curves of a ring road. Every road is two-way with `lanes` driving lanes per direction and a
sidewalk on each side. Junctions hold one connecting road per allowed movement: straight (every lane to
the same lane), left (innermost lane to innermost lane) and right (outermost to outermost); no U-turns.
Each approach carries a traffic-light signal (OpenDRIVE type 1000001, as CARLA's towns), referenced from
the connecting roads it controls, and a crosswalk just before the junction. The signal stands where CARLA's
US-style towns put it: across the junction, on the far right corner (`light_side="far"`; in Town04 and
Town10HD the pole is 16-26 m beyond the stop line and 4-6 m to the right), so a car waiting at the line
sees its light. At a T-junction's stem, which has no road straight ahead, it stands on the far kerb of the
road to the right. `light_side="near"` puts it at the stop line (the generator before this fix); a car
stopped there cannot see it (docs/experiments.md, "Why the trained agent does not drive").

Geometry is written in the OpenDRIVE frame, which is our right-handed world frame (x east, y north);
CARLA flips y when it loads the file. `generate_town(spec)` returns the .xodr text; `validate_town`
loads it with `carla.Map` (no server needed) and checks junctions, signals and connectivity.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from xml.sax.saxutils import escape

from vlmad.errors import UserError


@dataclass
class TownSpec:
    """Parameters of a generated grid town."""

    name: str = "VlmadGrid"  # map name given to carla.Map and written into route files
    grid_x: int = 2  # interior 4-way junctions along x (the lattice has grid_x + 2 columns)
    grid_y: int = 2  # interior 4-way junctions along y
    block_m: float = 80.0  # distance between neighbouring junction centres, metres
    lanes: int = 2  # driving lanes per direction
    lane_width: float = 3.5  # metres
    sidewalk_width: float = 2.0  # metres, one sidewalk lane on each side of every road
    junction_margin: float = 6.0  # junction half-size beyond the driving lanes (room for turns), metres
    corner_radius: float = 25.0  # radius of the ring road's corner curves (reference line), metres
    crosswalks: bool = True  # a crosswalk across each approach just before its junction
    light_side: str = "far"  # "far": signal across the junction (CARLA's US towns); "near": at the stop line
    speed_limit_kmh: float = 40.0  # OpenDRIVE road type speed
    lat0: float = 0.0  # geoReference latitude origin (CARLA's towns use 0)
    lon0: float = 0.0  # geoReference longitude origin

    @property
    def junction_half(self) -> float:
        """Half-size of a junction box: roads end this far from the junction centre."""
        return self.lanes * self.lane_width + self.junction_margin


def _fmt(v: float) -> str:
    return f"{v:.10g}"


@dataclass
class _Geom:
    """One planView record: a line or an arc (curvature != 0)."""

    x: float
    y: float
    hdg: float
    length: float
    curvature: float = 0.0


@dataclass
class _Road:
    id: int
    geoms: list[_Geom]
    junction: int = -1  # junction id for connecting roads
    pred: tuple[str, int, str] | None = None  # (elementType, elementId, contactPoint) ...
    succ: tuple[str, int, str] | None = None
    lane_pred: int | None = None  # connecting roads: predecessor lane of lane -1
    lane_succ: int | None = None
    signals: list[str] = field(default_factory=list)  # raw <signal>/<signalReference> XML
    objects: list[str] = field(default_factory=list)  # raw <object> XML

    @property
    def length(self) -> float:
        return sum(g.length for g in self.geoms)


def _advance(g: _Geom, ds: float) -> tuple[float, float, float]:
    """Point and heading `ds` metres along a line/arc geometry."""
    if abs(g.curvature) < 1e-12:
        return g.x + ds * math.cos(g.hdg), g.y + ds * math.sin(g.hdg), g.hdg
    k = g.curvature
    h1 = g.hdg + k * ds
    return g.x + (math.sin(h1) - math.sin(g.hdg)) / k, g.y - (math.cos(h1) - math.cos(g.hdg)) / k, h1


def _unit(a: float) -> tuple[float, float]:
    return math.cos(a), math.sin(a)


def _right(h: float) -> tuple[float, float]:
    return math.sin(h), -math.cos(h)


def _left(h: float) -> tuple[float, float]:
    return -math.sin(h), math.cos(h)


def _wrap(a: float) -> float:
    return (a + math.pi) % (2 * math.pi) - math.pi


class _Builder:
    def __init__(self, spec: TownSpec):
        self.spec = spec
        self.roads: list[_Road] = []
        self.junction_xml: list[str] = []
        self.controllers: list[str] = []
        self._next_road = 1
        self._next_signal = 5000
        self._next_object = 8000
        self._next_ctrl = 9000

    def new_road(self, geoms: list[_Geom], **kw) -> _Road:
        r = _Road(self._next_road, geoms, **kw)
        self._next_road += 1
        self.roads.append(r)
        return r

    # ------------------------------------------------------------------------------------------------
    def build(self) -> str:
        s = self.spec
        if s.grid_x < 1 or s.grid_y < 1:
            raise UserError(f"town grid must be at least 1x1 interior junctions, got {s.grid_x}x{s.grid_y}")
        if s.lanes < 1 or s.lanes > 4:
            raise UserError(f"lanes per direction must be 1..4, got {s.lanes}")
        jh = s.junction_half
        if s.block_m < 2 * jh + 10.0:
            raise UserError(
                f"block_m={s.block_m} too short for junctions of half-size {jh:.1f} m; "
                f"use at least {2 * jh + 10.0:.0f}"
            )
        outer = s.lanes * s.lane_width + s.sidewalk_width
        if not (outer + 1.0 < s.corner_radius <= s.block_m - jh):
            raise UserError(f"corner_radius must be in ({outer + 1:.1f}, {s.block_m - jh:.1f}] m")
        nx, ny = s.grid_x + 2, s.grid_y + 2
        corners = {(0, 0), (nx - 1, 0), (0, ny - 1), (nx - 1, ny - 1)}
        jid = {}
        for i in range(nx):
            for j in range(ny):
                if (i, j) not in corners:
                    jid[(i, j)] = 1000 + len(jid)
        # arms[(i, j)] = list of (direction angle, road, junction_at_road_start)
        arms: dict[tuple[int, int], list[tuple[float, _Road, bool]]] = {p: [] for p in jid}
        pos = {(i, j): (i * s.block_m, j * s.block_m) for i in range(nx) for j in range(ny)}

        # Straight roads between two junctions.
        for i, j in jid:
            for di, dj, ang in ((1, 0, 0.0), (0, 1, math.pi / 2)):
                q = (i + di, j + dj)
                if q not in jid:
                    continue
                x0, y0 = pos[(i, j)]
                ux, uy = _unit(ang)
                length = s.block_m - 2 * jh
                road = self.new_road(
                    [_Geom(x0 + jh * ux, y0 + jh * uy, ang, length)],
                    pred=("junction", jid[(i, j)], ""),
                    succ=("junction", jid[q], ""),
                )
                arms[(i, j)].append((ang, road, True))
                arms[q].append((_wrap(ang + math.pi), road, False))

        # Corner roads of the ring: line, 90-degree arc, line.
        for c in sorted(corners):
            nbrs = [(c[0] + d[0], c[1] + d[1]) for d in ((1, 0), (-1, 0), (0, 1), (0, -1))]
            nbrs = sorted(n for n in nbrs if n in jid)
            a, b = nbrs
            cx, cy = pos[c]
            ax, ay = pos[a]
            bx, by = pos[b]
            u_ang = math.atan2(cy - ay, cx - ax)
            v_ang = math.atan2(by - cy, bx - cx)
            turn = _wrap(v_ang - u_ang)
            rc = s.corner_radius
            l1 = s.block_m - jh - rc
            ux, uy = _unit(u_ang)
            g1 = _Geom(ax + jh * ux, ay + jh * uy, u_ang, l1)
            x1, y1, _ = _advance(g1, l1)
            g2 = _Geom(x1, y1, u_ang, abs(turn) * rc, math.copysign(1.0 / rc, turn))
            x2, y2, _ = _advance(g2, g2.length)
            g3 = _Geom(x2, y2, v_ang, s.block_m - jh - rc)
            road = self.new_road([g1, g2, g3], pred=("junction", jid[a], ""), succ=("junction", jid[b], ""))
            arms[a].append((u_ang, road, True))
            arms[b].append((_wrap(v_ang + math.pi), road, False))

        for p, jnum in jid.items():
            self._junction(jnum, pos[p], arms[p])
        return self._xml()

    # ------------------------------------------------------------------------------------------------
    def _signal_site(
        self, ang: float, road: _Road, at_start: bool, arms: list[tuple[float, _Road, bool]]
    ) -> tuple[_Road, float, float, str, tuple[int, int]]:
        """(road, s, t, orientation, validity lanes) of the signal for traffic entering from arm `ang`.

        "near": the approach's own kerb at its stop line. "far": the far right corner, on the kerb of the
        road straight ahead (right of the traffic leaving on it), or at a T-junction's stem the far kerb of
        the road to the right. An arm's `at_start` says whether its road starts at this junction."""
        s, k = self.spec, self.spec.lanes
        side_t = k * s.lane_width + 0.5 * s.sidewalk_width
        if s.light_side not in ("far", "near"):
            raise UserError(f"light_side must be 'far' or 'near', got {s.light_side!r}")
        h_in = _wrap(ang + math.pi)  # heading of the traffic entering from this arm
        by_turn = {
            round(math.degrees(_wrap(b_ang - h_in))): (b_road, b_start) for b_ang, b_road, b_start in arms
        }
        exit_turn = 0 if 0 in by_turn else -90  # straight ahead, else (a stem) the road to the right
        if s.light_side == "far" and exit_turn in by_turn:
            b_road, b_start = by_turn[exit_turn]
            # Valid for the lanes leaving on that road, so its own incoming traffic never finds this light.
            # Straight: the leaving traffic's right kerb; stem: the kerb on the far side (the other one).
            kerb = -side_t if exit_turn == 0 else side_t
            if b_start:  # leaving traffic drives along s on the right (-) lanes
                return b_road, 1.0, kerb, "+", (-k, -1)
            return b_road, b_road.length - 1.0, -kerb, "-", (1, k)
        if at_start:  # near: traffic towards the junction drives against s on the left (+) lanes
            return road, 1.0, side_t, "-", (1, k)
        return road, road.length - 1.0, -side_t, "+", (-k, -1)

    # ------------------------------------------------------------------------------------------------
    def _junction(
        self, jnum: int, centre: tuple[float, float], arms: list[tuple[float, _Road, bool]]
    ) -> None:
        s = self.spec
        k, w, jh = s.lanes, s.lane_width, s.junction_half
        arm_sig: dict[int, int] = {}
        # A signal (and crosswalk) on each approach, at the junction-side end of the arm road.
        for ai, (_ang, road, at_start) in enumerate(arms):
            sig = self._next_signal
            self._next_signal += 1
            arm_sig[ai] = sig
            sig_road, s_pos, t_pos, orient, lanes = self._signal_site(_ang, road, at_start, arms)
            sig_road.signals.append(
                f'<signal name="Signal_3Light_Post01" id="{sig}" s="{_fmt(s_pos)}" t="{_fmt(t_pos)}" '
                f'zOffset="0" hOffset="0" roll="0" pitch="0" orientation="{orient}" dynamic="yes" '
                f'country="OpenDRIVE" type="1000001" subtype="-1" value="-1" text="" height="1.16" '
                f'width="0.52"><validity fromLane="{lanes[0]}" toLane="{lanes[1]}"/></signal>'
            )
            ctrl = self._next_ctrl
            self._next_ctrl += 1
            self.controllers.append(
                f'<controller name="ctrl{ctrl}" id="{ctrl}" sequence="{ai}">'
                f'<control signalId="{sig}" type=""/></controller>'
            )
            if s.crosswalks:
                cw_len = 3.0
                s_c = (0.5 + cw_len / 2) if at_start else road.length - 0.5 - cw_len / 2
                hu, hv = cw_len / 2, k * w
                corners = [(hu, hv), (hu, -hv), (-hu, -hv), (-hu, hv), (hu, hv)]
                outline = "".join(f'<cornerLocal u="{_fmt(u)}" v="{_fmt(v)}" z="0"/>' for u, v in corners)
                road.objects.append(
                    f'<object id="{self._next_object}" name="Crosswalk" s="{_fmt(s_c)}" t="0" zOffset="0" '
                    f'hdg="0" roll="0" pitch="0" orientation="none" type="crosswalk" width="{_fmt(2 * hv)}" '
                    f'length="{_fmt(cw_len)}"><outline>{outline}</outline></object>'
                )
                self._next_object += 1

        conns = []
        cx, cy = centre
        for ai, (a_ang, a_road, a_start) in enumerate(arms):
            h_in = _wrap(a_ang + math.pi)
            apx, apy = cx + jh * math.cos(a_ang), cy + jh * math.sin(a_ang)
            turns = {
                round(math.degrees(_wrap(b_ang - h_in))): (b_ang, b_road, b_start)
                for b_ang, b_road, b_start in arms
            }
            for deg, (b_ang, b_road, b_start) in sorted(turns.items()):
                turn = math.radians(deg)
                if deg == 0:
                    pairs = [(i, i) for i in range(1, k + 1)]
                elif abs(deg) != 90:
                    continue  # U-turn: not allowed
                elif 0 in turns:  # with a straight exit: only the innermost / outermost lane turns
                    pairs = [(1, 1)] if deg > 0 else [(k, k)]
                elif k == 1:
                    pairs = [(1, 1)]
                else:  # T-junction stem: split the lanes between the two turns (every lane leads somewhere)
                    n_left = (k + 1) // 2 if -90 in turns else k
                    lanes = (
                        range(1, n_left + 1) if deg > 0 else range(n_left + 1 if 90 in turns else 1, k + 1)
                    )
                    pairs = [(i, i) for i in lanes]
                bpx, bpy = cx + jh * math.cos(b_ang), cy + jh * math.sin(b_ang)
                for li, lo in pairs:
                    rx, ry = _right(h_in)
                    px, py = apx + (li - 0.5) * w * rx, apy + (li - 0.5) * w * ry
                    rx2, ry2 = _right(b_ang)
                    qx, qy = bpx + (lo - 0.5) * w * rx2, bpy + (lo - 0.5) * w * ry2
                    lx, ly = _left(h_in)
                    sx, sy = px + 0.5 * w * lx, py + 0.5 * w * ly
                    if deg == 0:
                        geom = _Geom(sx, sy, h_in, math.hypot(qx - px, qy - py))
                    else:
                        fx, fy = _unit(h_in)
                        radius = (qx - px) * fx + (qy - py) * fy
                        r_ref = radius - 0.5 * w if turn > 0 else radius + 0.5 * w
                        geom = _Geom(sx, sy, h_in, 0.5 * math.pi * r_ref, math.copysign(1.0 / r_ref, turn))
                    in_lane = li if a_start else -li
                    out_lane = -lo if b_start else lo
                    conn = self.new_road(
                        [geom],
                        junction=jnum,
                        pred=("road", a_road.id, "start" if a_start else "end"),
                        succ=("road", b_road.id, "start" if b_start else "end"),
                        lane_pred=in_lane,
                        lane_succ=out_lane,
                    )
                    conn.signals.append(
                        f'<signalReference id="{arm_sig[ai]}" s="0" t="0" orientation="+">'
                        f'<validity fromLane="-1" toLane="-1"/></signalReference>'
                    )
                    conns.append(
                        f'<connection id="{len(conns)}" incomingRoad="{a_road.id}" '
                        f'connectingRoad="{conn.id}" '
                        f'contactPoint="start"><laneLink from="{in_lane}" to="-1"/></connection>'
                    )
        self.junction_xml.append(
            f'<junction id="{jnum}" name="junction{jnum}">' + "".join(conns) + "</junction>"
        )

    # ------------------------------------------------------------------------------------------------
    def _lane(
        self,
        lid: int,
        kind: str,
        width: float,
        mark: str,
        color: str = "white",
        pred: int | None = None,
        succ: int | None = None,
    ) -> str:
        link = ""
        if pred is not None or succ is not None:
            link = (f'<predecessor id="{pred}"/>' if pred is not None else "") + (
                f'<successor id="{succ}"/>' if succ is not None else ""
            )
        return (
            f'<lane id="{lid}" type="{kind}" level="false"><link>{link}</link>'
            f'<width sOffset="0" a="{_fmt(width)}" b="0" c="0" d="0"/>'
            f'<roadMark sOffset="0" type="{mark}" weight="standard" color="{color}" width="0.15" '
            f'laneChange="{"both" if mark == "broken" else "none"}"/></lane>'
        )

    def _road_xml(self, r: _Road) -> str:
        s = self.spec
        k, w = s.lanes, s.lane_width
        out = [f'<road name="Road {r.id}" length="{_fmt(r.length)}" id="{r.id}" junction="{r.junction}">']
        link = "<link>"
        for tag, el in (("predecessor", r.pred), ("successor", r.succ)):
            if el is None:
                continue
            if el[0] == "junction":
                link += f'<{tag} elementType="junction" elementId="{el[1]}"/>'
            else:
                link += f'<{tag} elementType="road" elementId="{el[1]}" contactPoint="{el[2]}"/>'
        out.append(link + "</link>")
        out.append(f'<type s="0" type="town"><speed max="{_fmt(s.speed_limit_kmh)}" unit="km/h"/></type>')
        out.append("<planView>")
        s0 = 0.0
        for g in r.geoms:
            shape = "<line/>" if abs(g.curvature) < 1e-12 else f'<arc curvature="{_fmt(g.curvature)}"/>'
            out.append(
                f'<geometry s="{_fmt(s0)}" x="{_fmt(g.x)}" y="{_fmt(g.y)}" hdg="{_fmt(g.hdg)}" '
                f'length="{_fmt(g.length)}">{shape}</geometry>'
            )
            s0 += g.length
        out.append("</planView>")
        out.append('<elevationProfile><elevation s="0" a="0" b="0" c="0" d="0"/></elevationProfile>')
        out.append("<lateralProfile/>")
        out.append('<lanes><laneSection s="0">')
        if r.junction >= 0:
            out.append(
                '<center><lane id="0" type="none" level="false"><roadMark sOffset="0" type="none" '
                'weight="standard" color="white" width="0.15"/></lane></center>'
            )
            out.append(
                "<right>"
                + self._lane(-1, "driving", w, "none", pred=r.lane_pred, succ=r.lane_succ)
                + "</right>"
            )
        else:
            left = [self._lane(k + 1, "sidewalk", s.sidewalk_width, "none")]
            right = []
            for i in range(k, 0, -1):
                left.append(self._lane(i, "driving", w, "solid" if i == k else "broken"))
            for i in range(1, k + 1):
                right.append(self._lane(-i, "driving", w, "solid" if i == k else "broken"))
            right.append(self._lane(-(k + 1), "sidewalk", s.sidewalk_width, "none"))
            out.append("<left>" + "".join(left) + "</left>")
            out.append(
                '<center><lane id="0" type="none" level="false"><roadMark sOffset="0" type="solid solid" '
                'weight="standard" color="yellow" width="0.15" laneChange="none"/></lane></center>'
            )
            out.append("<right>" + "".join(right) + "</right>")
        out.append("</laneSection></lanes>")
        out.append("<objects>" + "".join(r.objects) + "</objects>")
        out.append("<signals>" + "".join(r.signals) + "</signals>")
        out.append("</road>")
        return "\n".join(out)

    def _xml(self) -> str:
        s = self.spec
        xs = [g.x for r in self.roads for g in r.geoms]
        ys = [g.y for r in self.roads for g in r.geoms]
        geo = f"+proj=tmerc +lat_0={s.lat0} +lon_0={s.lon0} +k=1 +x_0=0 +y_0=0 +datum=WGS84 +units=m +no_defs"
        head = (
            f'<?xml version="1.0" encoding="UTF-8"?>\n<OpenDRIVE>\n<header revMajor="1" revMinor="4" '
            f'name="{escape(s.name)}" version="1" date="generated" north="{_fmt(max(ys))}" '
            f'south="{_fmt(min(ys))}" east="{_fmt(max(xs))}" west="{_fmt(min(xs))}" '
            'vendor="vlmad offline world">'
            f"<geoReference><![CDATA[{geo}]]></geoReference></header>"
        )
        body = [self._road_xml(r) for r in self.roads]
        return "\n".join([head, *body, *self.controllers, *self.junction_xml, "</OpenDRIVE>"]) + "\n"


def generate_town(spec: TownSpec | None = None) -> str:
    """The OpenDRIVE (.xodr) text of a grid town (deterministic for a given spec)."""
    return _Builder(spec or TownSpec()).build()


def validate_town(xodr: str, name: str = "VlmadGrid") -> dict:
    """Load `xodr` with `carla.Map` and check it is a usable town; returns a summary dict.

    Raises `UserError` when the map has no junctions, no traffic-light signals, or driving lanes that
    lead nowhere (a dead end would trap the background traffic).
    """
    import carla

    cmap = carla.Map(name, xodr)
    topo = cmap.get_topology()
    wps = cmap.generate_waypoints(4.0)
    junctions = {w.get_junction().id for w in wps if w.is_junction}
    lights = cmap.get_all_landmarks_of_type("1000001")
    dead = 0
    for _entry, exit_wp in topo:
        if not exit_wp.next(1.0):
            dead += 1
    summary = {
        "segments": len(topo),
        "junctions": len(junctions),
        "traffic_lights": len({lm.id for lm in lights}),
        "crosswalks": len(cmap.get_crosswalks()) // 5,
        "dead_ends": dead,
    }
    if not topo or not junctions:
        raise UserError(f"generated town {name!r} has no junctions after loading: {summary}")
    if not lights:
        raise UserError(f"generated town {name!r} has no traffic-light signals: {summary}")
    if dead:
        raise UserError(f"generated town {name!r} has {dead} lane(s) that lead nowhere: {summary}")
    return summary
