"""Where a driving agent goes wrong: the privileged expert rides along and says what it would do.

`RideAlong` wraps a leaderboard agent for the offline runner: the agent drives (its control is applied),
while an `ExpertAgent` bound to the same world computes its own decision every tick without acting. Each
tick is classified by comparing the two (docs/experiments.md, "Diagnosing a drive"):

    go        the expert would drive on and the agent moves
    stop      both stop (the expert names its reason: red light, vehicle, pedestrian, junction)
    false_stop  the agent stands still where the expert would go; split into "plan" (the model's plan asks
              for less than the controller's brake speed), "fault" (a safety brake: sensor / NaN), "other"
    missed_stop the agent drives on (moving, throttle and no brake) where the expert stops (split by the
              expert's reason)

"Moves" means at least STOPPED_MPS, or pulling away (throttle, no brake) from standstill.

A "stuck" episode is a false stop that lasts `stuck_s` or more. The agent needs no privileged input: only
the diagnosis reads the expert.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from vlmad.horizon import TICK_S

STOPPED_MPS = 0.3  # below this speed the ego counts as standing still


@dataclass
class Diagnosis:
    """Counts of one or more drives (ticks; a tick is 0.05 s). JSON round trip: to_json / from_json."""

    ticks: Counter = field(default_factory=Counter)  # category -> ticks
    detail: Counter = field(default_factory=Counter)  # "category/sub-reason" -> ticks
    light_when_false_stop: Counter = field(default_factory=Counter)  # light state ahead -> ticks
    stuck_episodes: list[float] = field(default_factory=list)  # seconds of each stuck episode
    plan_end_sum: float = 0.0  # sum of the plan's end distance (m) over false-stop ticks with a plan
    plan_end_n: int = 0

    def to_json(self) -> dict:
        return {"ticks": dict(self.ticks), "detail": dict(self.detail),
                "light_when_false_stop": dict(self.light_when_false_stop),
                "stuck_episodes": self.stuck_episodes, "plan_end_sum": self.plan_end_sum,
                "plan_end_n": self.plan_end_n}

    @classmethod
    def from_json(cls, d: dict) -> Diagnosis:
        return cls(Counter(d["ticks"]), Counter(d["detail"]), Counter(d["light_when_false_stop"]),
                   list(d["stuck_episodes"]), float(d["plan_end_sum"]), int(d["plan_end_n"]))

    def __add__(self, o: Diagnosis) -> Diagnosis:
        return Diagnosis(self.ticks + o.ticks, self.detail + o.detail,
                         self.light_when_false_stop + o.light_when_false_stop,
                         self.stuck_episodes + o.stuck_episodes, self.plan_end_sum + o.plan_end_sum,
                         self.plan_end_n + o.plan_end_n)

    def summary(self) -> dict:
        """Shares of all ticks per category and sub-reason, stuck episodes, mean plan length when stuck."""
        total = max(sum(self.ticks.values()), 1)
        return {
            "ticks": sum(self.ticks.values()),
            "share": {k: round(v / total, 4) for k, v in sorted(self.ticks.items())},
            "detail_share": {k: round(v / total, 4) for k, v in sorted(self.detail.items())},
            "light_when_false_stop": dict(self.light_when_false_stop),
            "stuck_episodes": len(self.stuck_episodes),
            "stuck_seconds": round(float(sum(self.stuck_episodes)), 1),
            "plan_end_m_when_false_stop": (round(self.plan_end_sum / self.plan_end_n, 2)
                                           if self.plan_end_n else None),
        }


class RideAlong:
    """Leaderboard agent: `agent` drives, `expert` (world.expert.ExpertAgent) rides along; fills `diag`."""

    def __init__(self, agent, expert, diag: Diagnosis, stuck_s: float = 10.0, brake_speed: float = 0.4):
        self.agent, self.expert, self.diag = agent, expert, diag
        self.stuck_s, self.brake_speed = stuck_s, brake_speed
        self._false_run = 0

    def set_global_plan(self, gps, route) -> None:
        self.agent.set_global_plan(gps, route)
        self.expert.set_global_plan(gps, route)

    def bind_world(self, world) -> None:
        self.expert.bind_world(world)
        if hasattr(self.agent, "bind_world"):
            self.agent.bind_world(world)

    def sensors(self) -> list[dict]:
        return self.agent.sensors()

    def wants_images(self) -> bool:  # the rendering hint of the agent that drives (world/runner.py)
        wants = getattr(self.agent, "wants_images", None)
        return True if wants is None else bool(wants())

    def run_step(self, input_data: dict, timestamp: float):
        self.expert.run_step(input_data, timestamp)  # decides only: its control is dropped
        control = self.agent.run_step(input_data, timestamp)
        self._classify(self.expert.info, float(control.throttle) > 0.0 and float(control.brake) == 0.0)
        return control

    def destroy(self) -> None:
        self._end_run()
        self.agent.destroy()
        self.expert.destroy()

    # ------------------------------------------------------------------------------------------------
    def _classify(self, info: dict, pulling_away: bool) -> None:
        """One tick: the expert's decision (`info`) against the agent's motion. pulling_away: the agent
        gives throttle and no brake."""
        d = self.diag
        reason = info.get("stop_reason")
        moving = float(info.get("speed", 0.0)) >= STOPPED_MPS or pulling_away
        if reason is None and moving:
            cat, sub = "go", None
        elif reason is not None and not (moving and pulling_away):  # standing, braking or coasting
            cat, sub = "stop", reason
        elif reason is not None:
            cat, sub = "missed_stop", reason
        else:
            cat, sub = "false_stop", self._why_stopped()
            d.light_when_false_stop[str(info.get("traffic_light"))] += 1
        d.ticks[cat] += 1
        if sub is not None:
            d.detail[f"{cat}/{sub}"] += 1
        if cat == "false_stop":
            self._false_run += 1
        else:
            self._end_run()

    def _why_stopped(self) -> str:
        a = self.agent
        if getattr(a, "brake_reason", None):
            return "fault"
        plan = getattr(a, "_plan", None)  # VADAgent: (plan (T, 2) ego frame, pose, tick) of its last call
        if isinstance(plan, tuple) and isinstance(plan[0], np.ndarray):
            wp = np.asarray(plan[0], dtype=np.float64).reshape(-1, 2)
            self.diag.plan_end_sum += float(np.linalg.norm(wp[-1]))
            self.diag.plan_end_n += 1
            desired = float(np.linalg.norm(np.diff(wp, axis=0), axis=1).mean() * 2.0)
            return "plan" if desired < self.brake_speed else "other"
        return "other"

    def _end_run(self) -> None:
        if self._false_run * TICK_S >= self.stuck_s:
            self.diag.stuck_episodes.append(self._false_run * TICK_S)
        self._false_run = 0
