"""The rule teacher: Q1 and Q2 answers written from privileged ground truth, with no network and no VLM.

It stands in for the VLM where none can be reached (CI, tests, a fresh machine) and is labelled as such in
every answer it writes, in the store's `teacher` column and in every report. It reads:
- ego speed and longitudinal acceleration (`ego_speed`, `ego_accel`),
- the future path (`ego_fut`, `ego_fut_mask`, `ego_fut_yaw`): travelled distance, heading change,
  lateral offset and the part of it a constant-curvature arc does not explain (a lane change),
- the lead agent: the nearest ground-truth box ahead within the ego's lane corridor (`agents`),
- the traffic-light state when the record carries one (`privileged["traffic_light"]`).

Label rules (documented in docs/teacher.md): reverse if the path goes backwards; stop if the ego moves
less than `still_m` in the horizon; move slowly below `slow_mps` mean speed; else go straight. Turn left/
right when the heading changes by >= 20 deg with >= 1.5 m lateral offset; turn around at >= 150 deg. Lane
change when >= 1.5 m of lateral offset is left after removing the arc's chord offset. "Merge" labels are
never written: ground truth cannot tell a merge from a lane change.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from nusc.classes import DETECTION_CLASSES
from teacher.backends.openai_chat import Reply
from vlmad.horizon import STEP_S
from vlmad.io import sha256_bytes

RULE_TEACHER_LABEL = "rule-teacher (privileged ground truth, not a VLM)"
RULE_MODEL = "rule-teacher-v1"  # bump when the rules change (part of every cache key)

_VEHICLES = {"car", "truck", "construction_vehicle", "bus", "trailer", "motorcycle", "bicycle"}


def _arr(x: Any, shape_tail: tuple[int, ...] = ()) -> np.ndarray:
    a = np.asarray(x if x is not None else [], dtype=np.float64)
    return a.reshape((-1,) + shape_tail) if a.size or shape_tail else a.reshape(0)


def future_path(record: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """Valid future points (K, 2) up to the first missing keyframe, and their yaws (K,) (NaN if absent)."""
    fut = _arr(record.get("ego_fut"), (2,))
    mask = np.asarray(record.get("ego_fut_mask", np.ones(len(fut), bool)), bool).reshape(-1)
    n = int(np.argmin(mask)) if not mask.all() else len(mask)
    yaw = record.get("ego_fut_yaw")
    yaws = _arr(yaw)[:n] if yaw is not None else np.full(n, np.nan)
    pts = fut[:n]
    ok = np.isfinite(pts).all(axis=1)
    n_ok = int(np.argmin(ok)) if not ok.all() else len(ok)
    return pts[:n_ok], yaws[:n_ok]


def lead_agent(record: Mapping[str, Any], corridor_m: float = 2.0, max_range_m: float = 50.0
               ) -> dict[str, Any] | None:
    """The nearest ground-truth agent ahead inside the ego lane corridor: class, gap (m), speed (m/s)."""
    agents = record.get("agents") or {}
    boxes = _arr(agents.get("boxes"), (7,))
    if len(boxes) == 0:
        return None
    labels = np.asarray(agents.get("labels", [-1] * len(boxes))).reshape(-1)
    vel = (_arr(agents.get("velocity"), (2,)) if agents.get("velocity") is not None
           else np.zeros((len(boxes), 2)))
    best = None
    for i, b in enumerate(boxes):
        x, y, length = b[0], b[1], b[3]
        if not (0.0 < x <= max_range_m and abs(y) <= corridor_m + b[4] / 2):
            continue
        gap = max(0.0, x - length / 2)
        if best is None or gap < best["gap"]:
            lab = int(labels[i])
            cls = DETECTION_CLASSES[lab] if 0 <= lab < len(DETECTION_CLASSES) else "object"
            speed = float(np.linalg.norm(vel[i])) if i < len(vel) and np.isfinite(vel[i]).all() else 0.0
            best = {"cls": cls, "gap": float(gap), "speed": speed}
    return best


def rule_labels(record: Mapping[str, Any], still_m: float = 1.0, slow_mps: float = 2.5) -> dict[str, str]:
    """Control / turn / lane labels from the ground-truth future."""
    pts, yaws = future_path(record)
    speed = float(record.get("ego_speed") or 0.0)
    if len(pts) == 0:  # no future: decide from the current speed only
        return {"control": "stop" if speed < 0.3 else "go straight", "turn": "none", "lane": "none"}
    seg = np.diff(np.concatenate([np.zeros((1, 2)), pts]), axis=0)
    path_len = float(np.linalg.norm(seg, axis=1).sum())
    horizon = len(pts) * STEP_S
    x_end, y_end = float(pts[-1, 0]), float(pts[-1, 1])
    yaw_end = float(yaws[-1]) if np.isfinite(yaws[-1]) else math.atan2(seg[-1, 1], seg[-1, 0])
    if x_end < -0.5 and path_len > 0.5:
        control = "reverse"
    elif math.hypot(x_end, y_end) < still_m:
        control = "stop"
    elif path_len / horizon < slow_mps:
        control = "move slowly"
    else:
        control = "go straight"
    turn, lane = "none", "none"
    if control not in ("stop", "reverse"):
        if abs(yaw_end) >= math.radians(150):
            turn = "turn around"
        elif yaw_end >= math.radians(20) and y_end >= 1.5:
            turn = "turn left"
        elif yaw_end <= -math.radians(20) and y_end <= -1.5:
            turn = "turn right"
        else:
            # a circular arc ending at heading yaw_end has its chord at yaw_end / 2: what the arc does not
            # explain is a sideways move, i.e. a lane change
            residual = y_end - x_end * math.tan(yaw_end / 2)
            if residual >= 1.5:
                lane = "change lane to the left"
            elif residual <= -1.5:
                lane = "change lane to the right"
    return {"control": control, "turn": turn, "lane": lane}


def rule_texts(record: Mapping[str, Any], labels: Mapping[str, str]) -> dict[str, str]:
    """A_c, A_f, A_r sentences from the same ground truth as `rule_labels`."""
    speed_kmh = 3.6 * float(record.get("ego_speed") or 0.0)
    accel = float(record.get("ego_accel") or 0.0)
    if speed_kmh < 1.0:
        current = "The ego vehicle is stopped."
    else:
        trend = (" and accelerating" if accel > 0.5 else " and slowing down" if accel < -0.5
                 else " at a steady speed")
        current = f"The ego vehicle is driving forward at about {speed_kmh:.0f} km/h{trend}."
    pts, _ = future_path(record)
    dist = float(np.linalg.norm(np.diff(np.concatenate([np.zeros((1, 2)), pts]), axis=0), axis=1).sum()) \
        if len(pts) else 0.0
    verb = {"go straight": "keep going straight", "move slowly": "move slowly", "stop": "stop",
            "reverse": "reverse"}[labels["control"]]
    extra = ""
    if labels["turn"] != "none":
        extra = f" and {labels['turn']}"
    elif labels["lane"] != "none":
        extra = f" and {labels['lane'].replace('change lane', 'change lanes')}"
    future = f"It will {verb}{extra}, covering about {dist:.0f} m in the next {len(pts) * STEP_S:g} seconds."
    reasons = []
    priv = record.get("privileged") or {}
    light = priv.get("traffic_light") if isinstance(priv, Mapping) else None
    if light:
        reasons.append(f"the traffic light ahead is {light}")
    lead = lead_agent(record)
    if lead is not None:
        moving = "stationary" if lead["speed"] < 0.5 else f"moving at about {3.6 * lead['speed']:.0f} km/h"
        reasons.append(f"a {lead['cls'].replace('_', ' ')} is about {lead['gap']:.0f} m ahead in its lane, "
                       f"{moving}")
    else:
        reasons.append("the lane ahead is clear")
    if labels["turn"] != "none":
        reasons.append(f"its route continues with a {labels['turn'].replace('turn ', '')} turn")
    elif labels["lane"] != "none":
        reasons.append("its route requires moving to the adjacent lane")
    reasoning = "The ego vehicle acts this way because " + "; ".join(reasons) + "."
    return {"current": current, "future": future, "reasoning": reasoning}


def rule_input_hash(record: Mapping[str, Any]) -> str:
    """Hash of every ground-truth field the rule teacher reads (its 'image hash' in the cache key)."""
    agents = record.get("agents") or {}

    def lst(x: Any) -> Any:
        return None if x is None else np.round(np.asarray(x, dtype=np.float64), 4).tolist()

    data = {
        "ego_fut": lst(record.get("ego_fut")), "mask": np.asarray(record.get("ego_fut_mask", [])).tolist(),
        "yaw": lst(record.get("ego_fut_yaw")), "speed": record.get("ego_speed"),
        "accel": record.get("ego_accel"),
        "boxes": lst(agents.get("boxes")), "labels": np.asarray(agents.get("labels", [])).tolist(),
        "velocity": lst(agents.get("velocity")), "privileged": record.get("privileged"),
    }
    return sha256_bytes(json.dumps(data, sort_keys=True, default=str).encode())[:16]


class RuleTeacher:
    """Writes P1 / P2 answers (JSON text, like a structured-output VLM) from a record's ground truth."""

    teacher_name = RULE_TEACHER_LABEL
    model = RULE_MODEL

    def __init__(self, still_m: float = 1.0):
        self.still_m = still_m

    def answer(self, prompt_name: str, record: Mapping[str, Any]) -> Reply:
        labels = rule_labels(record, still_m=self.still_m)
        body = labels if prompt_name == "P2" else rule_texts(record, labels)
        return Reply(json.dumps({"teacher": RULE_TEACHER_LABEL, **body}), "rule", None)
