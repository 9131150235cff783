"""Open-loop planning metrics: L2 and box collision rate, under the VAD/ST-P3 and UniAD conventions.

This is the one module that defines these numbers (docs/metrics.md explains every choice). Everything is
in the ego frame of the keyframe (x forward, y left, metres); a plan is 6 future positions at 0.5 s steps.

Per sample and per step t = 1..6 we compute
- `l2[t]`: Euclidean distance between the predicted and ground-truth position at step t;
- `col[t]`: the ego box placed on the predicted trajectory overlaps a rasterised ground-truth agent;
- `gt_col[t]`: the same test for the ground-truth trajectory. Steps where the ground truth itself
  collides are never counted as collisions (they stay in the denominator, as in VAD and UniAD code).

Horizon reductions (k = 1, 2, 3 s <-> steps 2, 4, 6):
- VAD / ST-P3: value at k s = mean over steps 1..2k of the per-step values (per sample, then over samples).
- UniAD: value at k s = the per-step value at step 2k (averaged over samples).
Both report "avg" = mean of the 1/2/3 s values; collision rates are in percent.

Collision raster. A 200 x 200 grid at 0.5 m centred on the ego (x, y in [-50, 50) m). A cell is occupied
by an agent at step t when the cell centre lies inside the agent's box at its ground-truth future position
and yaw (only where that future is valid); the ego footprint is the set of cells whose centres lie inside
the ego box (4.084 m x 1.85 m, centre 0.5 m ahead of the trajectory point along the heading). A step
collides when footprint and occupancy share a cell. `box_collisions` evaluates exactly this without
materialising the grid (the ego's ~32 cells per step against the agents near it); `rasterise_agents` /
`rasterise_ego` build the full grids for visualisation and for the test that both agree.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from vlmad.horizon import FUT_STEPS, STEP_S

HORIZONS_S = (1, 2, 3)  # reported horizons; step index (1-based) = 2 * k
CONVENTIONS = ("vad", "uniad")

CONVENTION_DOC = {
    "vad": ("VAD / ST-P3: value at k s = mean over steps 1..2k (0.5 s each) of the per-step value, averaged "
            "over samples; collision = fraction of counted collision steps among steps 1..2k, in percent"),
    "uniad": ("UniAD: value at k s = the per-step value at step 2k (t = k s), averaged over samples; "
              "collision = percentage of samples whose ego box collides at exactly t = k s"),
}


@dataclass
class CollisionConfig:
    """Geometry of the collision test (defaults: docs/facts.md section 7)."""

    grid_size: int = 200  # cells per side of the BEV occupancy grid
    resolution: float = 0.5  # metres per cell; grid covers +-grid_size*resolution/2 around the ego
    ego_length: float = 4.084  # ego box length (m), nuScenes Renault Zoe as in VAD/UniAD/ST-P3
    ego_width: float = 1.85  # ego box width (m)
    ego_offset: float = 0.5  # box centre ahead of the trajectory point along the heading (m)
    heading: str = "trajectory"  # "trajectory": yaw from consecutive points; "fixed": axis-aligned (VAD code)
    min_heading_step: float = 0.2  # m; shorter moves keep the previous heading (standing: no direction)

    def __post_init__(self) -> None:
        if self.heading not in ("trajectory", "fixed"):
            raise ValueError(f"heading must be 'trajectory' or 'fixed', got {self.heading!r}")
        if self.grid_size <= 0 or self.resolution <= 0:
            raise ValueError("grid_size and resolution must be positive")

    @property
    def half_extent(self) -> float:
        """Half the side of the grid in metres (50 m by default)."""
        return self.grid_size * self.resolution / 2.0


# ----------------------------------------------------------------------------------------------------
# L2
# ----------------------------------------------------------------------------------------------------
def l2_per_step(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """Per-step L2 distance. pred, gt: (..., T, 2) -> (..., T)."""
    pred = np.asarray(pred, dtype=np.float64)
    gt = np.asarray(gt, dtype=np.float64)
    if pred.shape != gt.shape or pred.shape[-1] != 2:
        raise ValueError(f"pred {pred.shape} and gt {gt.shape} must both be (..., T, 2)")
    return np.linalg.norm(pred - gt, axis=-1)


# ----------------------------------------------------------------------------------------------------
# Ego footprint
# ----------------------------------------------------------------------------------------------------
def trajectory_headings(traj: np.ndarray, min_step: float = 0.2) -> np.ndarray:
    """Heading (rad) of the ego at each step from consecutive points. traj: (..., T, 2) -> (..., T).

    Step t uses the direction from point t-1 to point t (point 0 = the current position, the origin).
    Moves shorter than `min_step` keep the previous heading; the initial heading is 0 (the ego's x axis).
    """
    traj = np.asarray(traj, dtype=np.float64)
    prev = np.concatenate([np.zeros_like(traj[..., :1, :]), traj[..., :-1, :]], axis=-2)
    d = traj - prev
    raw = np.arctan2(d[..., 1], d[..., 0])
    ok = np.linalg.norm(d, axis=-1) >= min_step
    # forward fill: index of the last step (<= t) with a usable move; -1 -> initial heading 0
    t = traj.shape[-2]
    idx = np.where(ok, np.arange(t), -1)
    idx = np.maximum.accumulate(idx, axis=-1)
    raw_padded = np.concatenate([np.zeros_like(raw[..., :1]), raw], axis=-1)
    return np.take_along_axis(raw_padded, idx + 1, axis=-1)


def ego_boxes(traj: np.ndarray, cfg: CollisionConfig, origin: np.ndarray | None = None
              ) -> tuple[np.ndarray, np.ndarray]:
    """Centres (T, 2) and yaws (T,) of the ego box along `traj` (T, 2).

    `origin` (2,) is where the trajectory's reference point is at t = 0 in the ego frame: (0, 0) for
    ego-origin plans, the LIDAR_TOP position for VAD-style plans (displacements of the lidar).
    """
    traj = np.asarray(traj, dtype=np.float64)
    if cfg.heading == "trajectory":
        yaw = trajectory_headings(traj, cfg.min_heading_step)
    else:
        yaw = np.zeros(traj.shape[:-1])
    ref = traj if origin is None else traj + np.asarray(origin, dtype=np.float64)[:2]
    centre = ref + np.stack([np.cos(yaw), np.sin(yaw)], -1) * cfg.ego_offset
    return centre, yaw


def _inside_box(pts: np.ndarray, centre: np.ndarray, yaw: np.ndarray, length: np.ndarray,
                width: np.ndarray) -> np.ndarray:
    """Whether points lie inside (boundary included) oriented boxes; all arguments broadcast.

    pts, centre: (..., 2); yaw, length, width: (...). Returns (...) bool.
    """
    d = pts - centre
    c, s = np.cos(yaw), np.sin(yaw)
    u = d[..., 0] * c + d[..., 1] * s  # along the box's length axis
    v = -d[..., 0] * s + d[..., 1] * c  # along its width axis
    eps = 1e-9
    return (np.abs(u) <= length / 2 + eps) & (np.abs(v) <= width / 2 + eps)


def _cell_index(xy: np.ndarray, cfg: CollisionConfig) -> np.ndarray:
    """Integer cell indices (..., 2) (ix along x, iy along y) of metric points (..., 2)."""
    return np.floor((np.asarray(xy) + cfg.half_extent) / cfg.resolution).astype(np.int64)


def _cell_centre(idx: np.ndarray, cfg: CollisionConfig) -> np.ndarray:
    return (idx + 0.5) * cfg.resolution - cfg.half_extent


def ego_footprint(traj: np.ndarray, cfg: CollisionConfig, origin: np.ndarray | None = None
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Cells covered by the ego box at each step: candidate cell indices and a validity mask.

    traj: (T, 2). Returns (cells (T, K, 2) int64 [ix, iy], inside (T, K) bool): the K candidate cells
    around each box centre, and which of them have their centre inside the box and lie in the grid.
    """
    centre, yaw = ego_boxes(traj, cfg, origin)
    radius = math.hypot(cfg.ego_length / 2, cfg.ego_width / 2)
    m = int(math.ceil(radius / cfg.resolution)) + 1
    win = np.stack(np.meshgrid(np.arange(-m, m + 1), np.arange(-m, m + 1), indexing="ij"), -1).reshape(-1, 2)
    cells = _cell_index(centre, cfg)[:, None, :] + win[None]  # (T, K, 2)
    pts = _cell_centre(cells, cfg)
    inside = _inside_box(pts, centre[:, None], yaw[:, None], np.float64(cfg.ego_length),
                         np.float64(cfg.ego_width))
    in_grid = ((cells >= 0) & (cells < cfg.grid_size)).all(-1)
    return cells, inside & in_grid


def box_collisions(traj: np.ndarray, agent_xy: np.ndarray, agent_yaw: np.ndarray, agent_size: np.ndarray,
                   agent_mask: np.ndarray, cfg: CollisionConfig, origin: np.ndarray | None = None
                   ) -> np.ndarray:
    """Per-step collision of the ego box along `traj` with rasterised ground-truth agents.

    traj: (T, 2) ego positions. agent_xy: (A, T, 2) agent box centres at each future step; agent_yaw:
    (A, T); agent_size: (A, 2) [length, width]; agent_mask: (A, T) bool, valid future steps.
    `origin`: see `ego_boxes` (the ego frame's origin by default).
    Returns (T,) bool. Same result as `(rasterise_ego & rasterise_agents).any((1, 2))`, without the grid.
    """
    traj = np.asarray(traj, dtype=np.float64)
    t = traj.shape[0]
    out = np.zeros(t, dtype=bool)
    agent_xy = np.asarray(agent_xy, dtype=np.float64).reshape(-1, t, 2)
    if agent_xy.shape[0] == 0:
        return out
    agent_yaw = np.asarray(agent_yaw, dtype=np.float64).reshape(-1, t)
    size = np.asarray(agent_size, dtype=np.float64).reshape(-1, 2)
    mask = np.asarray(agent_mask, dtype=bool).reshape(-1, t)
    centre, _ = ego_boxes(traj, cfg, origin)
    # a shared cell centre lies in both boxes: centre distance <= sum of half-diagonals (cheap pre-filter)
    reach = (math.hypot(cfg.ego_length, cfg.ego_width) + np.hypot(size[:, 0], size[:, 1])) / 2 + 1e-6
    near = mask & (np.linalg.norm(agent_xy - centre[None], axis=-1) <= reach[:, None])  # (A, T)
    if not near.any():
        return out
    keep = near.any(axis=1)
    cells, inside = ego_footprint(traj, cfg, origin)
    tt, kk = np.nonzero(inside)  # the ego's cells, ~32 per step
    pts = _cell_centre(cells[tt, kk], cfg)  # (M, 2)
    xy, yw, sz, ok = agent_xy[keep], agent_yaw[keep], size[keep], near[keep]  # (A', ...)
    hit = _inside_box(pts[:, None, :], xy[:, tt].transpose(1, 0, 2), yw[:, tt].T,
                      sz[None, :, 0], sz[None, :, 1])
    hit &= ok[:, tt].T  # (M, A')
    np.logical_or.at(out, tt, hit.any(axis=1))
    return out


def grid_cell_centres(cfg: CollisionConfig) -> np.ndarray:
    """(H, W, 2) metric centres of all grid cells; [ix, iy] indexes x (forward) then y (left)."""
    c = _cell_centre(np.arange(cfg.grid_size), cfg)
    return np.stack(np.meshgrid(c, c, indexing="ij"), -1)


def rasterise_agents(agent_xy: np.ndarray, agent_yaw: np.ndarray, agent_size: np.ndarray,
                     agent_mask: np.ndarray, cfg: CollisionConfig) -> np.ndarray:
    """Full occupancy grids (T, H, W) bool of the agents (see `box_collisions` for shapes)."""
    agent_mask = np.asarray(agent_mask, dtype=bool)
    t = agent_mask.shape[1] if agent_mask.ndim == 2 else FUT_STEPS
    agent_xy = np.asarray(agent_xy, dtype=np.float64).reshape(-1, t, 2)
    agent_yaw = np.asarray(agent_yaw, dtype=np.float64).reshape(-1, t)
    size = np.asarray(agent_size, dtype=np.float64).reshape(-1, 2)
    occ = np.zeros((t, cfg.grid_size, cfg.grid_size), dtype=bool)
    pts = grid_cell_centres(cfg)
    for a, s in zip(*np.nonzero(agent_mask.reshape(-1, t))):  # one whole-grid test per agent box
        occ[s] |= _inside_box(pts, agent_xy[a, s], agent_yaw[a, s], size[a, 0], size[a, 1])
    return occ


def rasterise_ego(traj: np.ndarray, cfg: CollisionConfig, origin: np.ndarray | None = None) -> np.ndarray:
    """Full ego footprint grids (T, H, W) bool along `traj` (T, 2)."""
    cells, inside = ego_footprint(traj, cfg, origin)
    grid = np.zeros((len(cells), cfg.grid_size, cfg.grid_size), dtype=bool)
    tt, kk = np.nonzero(inside)
    grid[tt, cells[tt, kk, 0], cells[tt, kk, 1]] = True
    return grid


# ----------------------------------------------------------------------------------------------------
# Horizon reductions
# ----------------------------------------------------------------------------------------------------
def horizon_values(per_step: np.ndarray, convention: str) -> np.ndarray:
    """Per-sample values at 1/2/3 s. per_step: (N, 6) float -> (N, 3) under `convention`."""
    per_step = np.asarray(per_step, dtype=np.float64)
    if per_step.ndim != 2 or per_step.shape[1] != FUT_STEPS:
        raise ValueError(f"per_step must be (N, {FUT_STEPS}), got {per_step.shape}")
    steps = [int(k / STEP_S) for k in HORIZONS_S]  # 2, 4, 6
    if convention == "vad":
        return np.stack([per_step[:, :s].mean(axis=1) for s in steps], axis=1)
    if convention == "uniad":
        return np.stack([per_step[:, s - 1] for s in steps], axis=1)
    raise ValueError(f"unknown convention {convention!r}; expected one of {CONVENTIONS}")


def _table(values: np.ndarray, scale: float) -> dict[str, float | None]:
    """Mean over samples of (N, 3) horizon values -> {"1s", "2s", "3s", "avg"} (None when N == 0)."""
    if len(values) == 0:
        return {"1s": None, "2s": None, "3s": None, "avg": None}
    m = values.mean(axis=0) * scale
    out = {f"{k}s": float(v) for k, v in zip(HORIZONS_S, m)}
    out["avg"] = float(m.mean())
    return out


def summarise(l2: np.ndarray, col: np.ndarray, gt_col: np.ndarray) -> dict[str, dict]:
    """Both conventions from per-step arrays of the evaluated samples.

    l2: (N, 6) metres; col, gt_col: (N, 6) bool. A step counts as a collision when `col & ~gt_col`.
    Returns {"vad": {"l2": {...}, "collision": {...}}, "uniad": {...}}, collision in percent.
    """
    l2 = np.asarray(l2, dtype=np.float64).reshape(-1, FUT_STEPS)
    counted = (np.asarray(col, bool) & ~np.asarray(gt_col, bool)).reshape(-1, FUT_STEPS).astype(np.float64)
    return {conv: {"l2": _table(horizon_values(l2, conv), 1.0),
                   "collision": _table(horizon_values(counted, conv), 100.0)}
            for conv in CONVENTIONS}
