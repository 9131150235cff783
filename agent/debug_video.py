"""Optional per-route debug video: the front image with the plan drawn on it, beside a BEV sketch.

Off by default (`AgentConfig.debug_dir`). One MP4 per route (the leaderboard rebuilds the agent for every
route), written to `<name>.partial.mp4` and renamed when the agent is destroyed, so a crashed route leaves
a file that says so. The BEV sketch shows the plan (green), the route target (red), detected agents
(orange boxes, score >= 0.3) and map elements (score >= 0.5: dividers white, crossings blue, boundaries
grey), ego frame with x up.
"""

from __future__ import annotations

import itertools
import os
import time
from pathlib import Path

import cv2
import numpy as np

from vlmad.frames import project_points
from vlmad.rig import CameraSpec

FRONT_WIDTH = 640  # pixels of the front image in the video
BEV_RANGE = (-15.0, 45.0)  # metres behind / ahead shown in the sketch (square, lateral +-30 m)
MAP_COLOURS = ((255, 255, 255), (255, 160, 0), (150, 150, 150))  # BGR: divider, ped_crossing, boundary
_COUNTER = itertools.count()


class DebugVideo:
    """Writes one frame per call of `add`; `close` finishes the file."""

    def __init__(self, folder: str | Path, fps: float) -> None:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        name = f"route_{stamp}_{os.getpid()}_{next(_COUNTER):03d}"
        self.folder = Path(folder)
        self.partial = self.folder / f"{name}.partial.mp4"
        self.path = self.folder / f"{name}.mp4"
        self.fps = fps
        self._writer: cv2.VideoWriter | None = None
        self.frames = 0

    def add(self, front_bgra: np.ndarray, cam: CameraSpec, plan: np.ndarray | None, target: np.ndarray | None,
            outputs: dict | None, lines: list[str]) -> None:
        """front_bgra: (H, W, 4) uint8 as received; cam: the front camera at that size; plan (T, 2) and
        target (2,) in the current ego frame; outputs: the model's numpy outputs of its last call."""
        h0, w0 = front_bgra.shape[:2]
        s = FRONT_WIDTH / w0
        front = cv2.resize(cv2.cvtColor(front_bgra, cv2.COLOR_BGRA2BGR), (FRONT_WIDTH, round(h0 * s)))
        if plan is not None:
            pts = np.concatenate([np.zeros((1, 2)), plan], 0)
            uv, _, ok = project_points(cam.img_from_ego(s), np.concatenate([pts, np.zeros((len(pts), 1))], 1))
            uv = uv[ok]
            if len(uv) >= 2 and np.isfinite(uv).all():
                cv2.polylines(front, [np.round(uv).astype(np.int32)], False, (0, 255, 0), 2, cv2.LINE_AA)
        bev = self._bev(front.shape[0], plan, target, outputs)
        frame = np.concatenate([front, bev], 1)
        for i, line in enumerate(lines):
            cv2.putText(frame, line, (8, 20 + 18 * i), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 255, 255), 1,
                        cv2.LINE_AA)
        if self._writer is None:
            self.folder.mkdir(parents=True, exist_ok=True)
            fourcc = cv2.VideoWriter_fourcc(*"mp4v")
            size = (frame.shape[1], frame.shape[0])
            self._writer = cv2.VideoWriter(str(self.partial), fourcc, self.fps, size)
        self._writer.write(frame)
        self.frames += 1

    @staticmethod
    def _bev(size: int, plan: np.ndarray | None, target: np.ndarray | None,
             outputs: dict | None) -> np.ndarray:
        img = np.zeros((size, size, 3), np.uint8)
        ppm = size / (BEV_RANGE[1] - BEV_RANGE[0])

        def px(xy: np.ndarray) -> np.ndarray:  # ego (x fwd, y left) -> pixel (col, row), x up
            xy = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
            col = size / 2 - xy[:, 1] * ppm
            row = size - (xy[:, 0] - BEV_RANGE[0]) * ppm
            return np.round(np.stack([col, row], 1)).astype(np.int32)

        if outputs is not None:
            scores = outputs["map_scores"]
            for pts, cls, sc in zip(outputs["map_pts"], outputs["map_cls"], scores):
                if sc >= 0.5:
                    cv2.polylines(img, [px(pts)], False, MAP_COLOURS[int(cls) % 3], 1, cv2.LINE_AA)
            for box, sc in zip(outputs["det_boxes"], outputs["det_scores"]):
                if sc >= 0.3:
                    c, s = np.cos(box[6]), np.sin(box[6])
                    half = np.array([[1, 1], [1, -1], [-1, -1], [-1, 1]]) * box[3:5] / 2
                    corners = box[:2] + half @ np.array([[c, s], [-s, c]])
                    cv2.polylines(img, [px(corners)], True, (0, 140, 255), 1, cv2.LINE_AA)
        ego = np.array([[2.4, 1.0], [2.4, -1.0], [-2.4, -1.0], [-2.4, 1.0]])
        cv2.fillPoly(img, [px(ego)], (200, 200, 200))
        if plan is not None:
            cv2.polylines(img, [px(np.concatenate([np.zeros((1, 2)), plan], 0))], False, (0, 255, 0), 2,
                          cv2.LINE_AA)
        if target is not None:
            t = np.clip(px(target)[0], 0, size - 1)
            cv2.circle(img, (int(t[0]), int(t[1])), 5, (0, 0, 255), -1)
        return img

    def close(self) -> Path | None:
        """Finish the file (renamed to its final name); returns its path, or None if nothing was written."""
        if self._writer is None:
            return None
        self._writer.release()
        self._writer = None
        os.replace(self.partial, self.path)
        return self.path
