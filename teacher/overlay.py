"""The teacher's visual input: the front camera image with the ego's future trajectory drawn as a red line.

The trajectory is the current position (ego origin) followed by the valid future keyframes (`ego_fut`,
6 x 0.5 s), on the ground (z = 0 in the ego frame). It is projected with the record's own calibration
(`cams[name]["intrinsics"]`, `cams[name]["ego_from_cam"]`) through `vlmad.frames.project_points`; segments
that cross behind the camera are clipped at a near plane, so the line starts at the bottom edge of the
image instead of disappearing. When the ego stays (nearly) still no line is drawn: the prompt tells the
VLM that "no line suggests stopping or slowing down".

Variants from the paper's appendix: `six_view_composite` (all 6 cameras in one image) and
`sequence_composite` (the current and next 6 front frames).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from vlmad.errors import UserError
from vlmad.frames import img_from_ego_calibrated, project_points
from vlmad.io import sha256_bytes

OVERLAY_VERSION = 1  # bump when the drawing changes (part of the image fingerprint)
FRONT = "CAM_FRONT"
RED = (255, 0, 0)  # images are RGB throughout this module


@dataclass(frozen=True)
class OverlayConfig:
    """How the trajectory is drawn (part of the image hash, so changing it re-annotates)."""

    still_threshold_m: float = 1.0  # no line when the last valid future point is closer than this
    near_m: float = 0.5  # near plane (depth along the optical axis) where segments are clipped
    thickness_frac: float = 0.006  # line thickness as a fraction of the image width (min 2 px)
    draw_points: bool = True  # also mark each future keyframe with a dot


def img_from_ego(cam: Mapping[str, Any]) -> np.ndarray:
    """4x4 projection ego -> pixels of one record camera (its calibrated K and `ego_from_cam`)."""
    return img_from_ego_calibrated(cam["intrinsics"], cam["ego_from_cam"])


def trajectory_points(record: Mapping[str, Any]) -> np.ndarray:
    """(K, 3) ego-frame ground points: the current position then the valid future keyframes (z = 0).

    Stops at the first missing future keyframe (a gap would draw a misleading straight chord).
    """
    fut = np.asarray(record["ego_fut"], dtype=np.float64).reshape(-1, 2)
    mask = np.asarray(record.get("ego_fut_mask", np.ones(len(fut), bool)), dtype=bool).reshape(-1)
    n_valid = int(np.argmin(mask)) if not mask.all() else len(mask)
    xy = np.concatenate([np.zeros((1, 2)), fut[:n_valid]], axis=0)
    xy = xy[np.isfinite(xy).all(axis=1)]
    return np.concatenate([xy, np.zeros((len(xy), 1))], axis=1)


def is_still(record: Mapping[str, Any], threshold_m: float) -> bool:
    """True when the ego (nearly) stays: no valid future, or the last valid point is within threshold."""
    pts = trajectory_points(record)
    return len(pts) < 2 or float(np.linalg.norm(pts[-1, :2])) < threshold_m


def project_polyline(proj: np.ndarray, pts_ego: np.ndarray, near_m: float) -> list[np.ndarray]:
    """Project a 3-D polyline (K, 3), clipping every segment at depth `near_m`.

    Returns a list of pixel polylines (each (M, 2) float): a polyline is split where it goes behind the
    camera and comes back. Depth is affine in the 3-D point, so the crossing is found by linear
    interpolation in 3-D and then projected (exact, unlike interpolating pixels).
    """
    if len(pts_ego) == 0:
        return []
    _, depth, _ = project_points(proj, pts_ego, min_depth=near_m)
    runs: list[list[np.ndarray]] = []
    current: list[np.ndarray] = []

    def uv_of(p: np.ndarray) -> np.ndarray:
        return project_points(proj, p[None], min_depth=near_m * 0.999)[0][0]

    for i in range(len(pts_ego)):
        if depth[i] >= near_m:
            if i > 0 and depth[i - 1] < near_m:  # entering: start at the near-plane crossing
                t = (near_m - depth[i - 1]) / (depth[i] - depth[i - 1])
                current = [uv_of(pts_ego[i - 1] + t * (pts_ego[i] - pts_ego[i - 1]))]
            current.append(uv_of(pts_ego[i]))
        elif i > 0 and depth[i - 1] >= near_m:  # leaving: end at the crossing
            t = (depth[i - 1] - near_m) / (depth[i - 1] - depth[i])
            current.append(uv_of(pts_ego[i - 1] + t * (pts_ego[i] - pts_ego[i - 1])))
            runs.append(current)
            current = []
    if current:
        runs.append(current)
    return [np.stack(r) for r in runs if len(r) >= 2]


def draw_trajectory(image: np.ndarray, cam: Mapping[str, Any], record: Mapping[str, Any],
                    cfg: OverlayConfig = OverlayConfig()) -> tuple[np.ndarray, bool]:
    """Draw the record's future trajectory on `image` (H, W, 3) uint8 RGB of camera `cam`.

    Returns (new image, drawn) where drawn says whether any part of the line is inside the image.
    The camera's intrinsics refer to `cam["width"] x cam["height"]`; an image of another size is
    handled by scaling the pixel coordinates.
    """
    out = np.ascontiguousarray(image.copy())
    if is_still(record, cfg.still_threshold_m):
        return out, False
    h, w = out.shape[:2]
    sx = w / float(cam.get("width", w))
    sy = h / float(cam.get("height", h))
    lines = project_polyline(img_from_ego(cam), trajectory_points(record), cfg.near_m)
    thick = max(2, int(round(cfg.thickness_frac * w)))
    drawn = False
    shift = 4  # sub-pixel precision for cv2 (coordinates x 16)
    for uv in lines:
        uv = uv * np.array([sx, sy])
        for a, b in zip(uv[:-1], uv[1:]):
            # Clip to a generous frame first so cv2's integer coordinates cannot overflow.
            ok, p0, p1 = cv2.clipLine((-w, -h, 3 * w, 3 * h), _ipt(a, 0), _ipt(b, 0))
            if not ok:
                continue
            inside, _, _ = cv2.clipLine((0, 0, w, h), p0, p1)
            drawn |= bool(inside)
            cv2.line(out, _ipt(np.array(p0, float), shift), _ipt(np.array(p1, float), shift), RED, thick,
                     cv2.LINE_AA, shift)
        if cfg.draw_points:
            for p in uv[1:]:
                if 0 <= p[0] < w and 0 <= p[1] < h:
                    cv2.circle(out, _ipt(p, shift), int(thick * 1.2) << shift, RED, -1, cv2.LINE_AA, shift)
    return out, drawn


def _ipt(p: np.ndarray, shift: int) -> tuple[int, int]:
    s = 1 << shift
    return int(round(float(p[0]) * s)), int(round(float(p[1]) * s))


# ----------------------------------------------------------------------------------------------------
# Images and the variants
# ----------------------------------------------------------------------------------------------------
def load_image(dataroot: str | Path, cam: Mapping[str, Any]) -> np.ndarray:
    """(H, W, 3) uint8 RGB of a record camera; a missing or unreadable file is a `UserError`."""
    path = Path(dataroot) / cam["path"]
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise UserError(f"camera image {path} is missing or unreadable; check --dataroot")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def front_overlay(dataroot: str | Path, record: Mapping[str, Any],
                  cfg: OverlayConfig = OverlayConfig()) -> tuple[np.ndarray, bool]:
    """The paper's input: front image + trajectory. Returns (image (H, W, 3) RGB, line drawn)."""
    if FRONT not in record.get("cams", {}):
        raise UserError(f"sample {record.get('token')} has no {FRONT} camera")
    cam = record["cams"][FRONT]
    return draw_trajectory(load_image(dataroot, cam), cam, record, cfg)


# Grid layout of the 6-view composite, as nuScenes visualisations show it.
SIX_VIEW_GRID = (("CAM_FRONT_LEFT", "CAM_FRONT", "CAM_FRONT_RIGHT"),
                 ("CAM_BACK_LEFT", "CAM_BACK", "CAM_BACK_RIGHT"))


def six_view_composite(dataroot: str | Path, record: Mapping[str, Any], cfg: OverlayConfig = OverlayConfig(),
                       tile_width: int = 640) -> tuple[np.ndarray, bool]:
    """All 6 cameras in a 2 x 3 grid, the trajectory drawn on every view it is visible in.

    Tiles are resized to `tile_width` (aspect of each camera kept, rows padded to the tallest tile).
    """
    rows, any_drawn = [], False
    for names in SIX_VIEW_GRID:
        tiles = []
        for name in names:
            if name not in record["cams"]:
                raise UserError(f"sample {record.get('token')} has no {name} camera (6-view composite)")
            cam = record["cams"][name]
            img, drawn = draw_trajectory(load_image(dataroot, cam), cam, record, cfg)
            any_drawn |= drawn
            tiles.append(_resize_w(img, tile_width))
        rows.append(_hstack(tiles))
    return _vstack(rows), any_drawn


def sequence_composite(dataroot: str | Path, record: Mapping[str, Any], by_token: Mapping[str, Mapping],
                       cfg: OverlayConfig = OverlayConfig(), length: int = 7, cols: int = 4,
                       tile_width: int = 480) -> tuple[np.ndarray, bool]:
    """The current front frame (with the trajectory) and the next `length - 1` front frames in a grid.

    Frames past the end of the scene are left black. `by_token` maps sample tokens to records.
    """
    img, drawn = front_overlay(dataroot, record, cfg)
    tiles = [_resize_w(img, tile_width)]
    rec = record
    for _ in range(length - 1):
        nxt = rec.get("next", "")
        rec = by_token.get(nxt) if nxt else None
        if rec is None:
            tiles.append(np.zeros_like(tiles[0]))
            rec = {}
            continue
        tiles.append(_resize_w(load_image(dataroot, rec["cams"][FRONT]), tile_width))
    tiles += [np.zeros_like(tiles[0])] * (-len(tiles) % cols)
    grid = [_hstack(tiles[i:i + cols]) for i in range(0, len(tiles), cols)]
    return _vstack(grid), drawn


def _resize_w(img: np.ndarray, width: int) -> np.ndarray:
    h, w = img.shape[:2]
    return cv2.resize(img, (width, max(1, round(h * width / w))), interpolation=cv2.INTER_AREA)


def _hstack(tiles: list[np.ndarray]) -> np.ndarray:
    hmax = max(t.shape[0] for t in tiles)
    return np.concatenate([np.pad(t, ((0, hmax - t.shape[0]), (0, 0), (0, 0))) for t in tiles], axis=1)


def _vstack(rows: list[np.ndarray]) -> np.ndarray:
    wmax = max(r.shape[1] for r in rows)
    return np.concatenate([np.pad(r, ((0, 0), (0, wmax - r.shape[1]), (0, 0))) for r in rows], axis=0)


def encode_jpeg(image: np.ndarray, quality: int = 90) -> bytes:
    """JPEG bytes of an RGB image (what is sent to the VLM)."""
    bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return buf.tobytes()


def image_hash(image: np.ndarray) -> str:
    """Short SHA-256 of the pixels and shape (independent of the JPEG encoder's version)."""
    return sha256_bytes(repr(image.shape).encode() + np.ascontiguousarray(image).tobytes())[:16]
