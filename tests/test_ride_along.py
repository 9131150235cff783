"""world/ride_along.py through `scripts.drive --diagnose`: the expert riding along classifies every tick.

The expert judged by itself departs nowhere (no false or missed stop); an agent that never moves is a false
stop of its plan wherever the expert would go, with one stuck episode per route.
"""

from __future__ import annotations

import json
import textwrap

import pytest

from scripts.drive import main as drive_main
from world.ride_along import Diagnosis

ROUTE = ["--town", "VlmadGrid1x1", "--num-routes", "1", "--seed", "3", "--min-length", "40",
         "--max-length", "60", "--set", "traffic.num_vehicles=0", "traffic.num_pedestrians=0"]

STANDSTILL = textwrap.dedent('''
    import carla
    import numpy as np


    def get_entry_point():
        return "Standstill"


    class Standstill:
        """Plans to stay where it is: six points at the ego's position."""

        def __init__(self, path_to_conf_file):
            self._plan = (np.zeros((6, 2)), None, 0)
            self.brake_reason = None

        def sensors(self):
            return [{"type": "sensor.speedometer", "id": "SPEED", "reading_frequency": 20}]

        def set_global_plan(self, gps, route):
            pass

        def run_step(self, input_data, timestamp):
            return carla.VehicleControl(throttle=0.0, steer=0.0, brake=1.0)

        def destroy(self):
            pass
''')


def test_expert_agrees_with_itself(tmp_path):
    out = tmp_path / "diag.json"
    assert drive_main(["--expert", *ROUTE, "--out", str(tmp_path / "r.json"), "--diagnose", str(out)]) == 0
    d = json.loads(out.read_text())
    s = d["summary"]
    assert s["ticks"] > 200 and set(s["share"]) <= {"go", "stop"} and s["share"]["go"] > 0.1
    assert s["stuck_episodes"] == 0 and list(d["routes"]) == ["0"]


def test_an_agent_that_never_moves_is_a_stuck_false_stop(tmp_path):
    agent = tmp_path / "standstill.py"
    agent.write_text(STANDSTILL)
    out = tmp_path / "diag.json"
    assert drive_main(["--agent", str(agent), "--agent-config", "-", *ROUTE,
                       "--out", str(tmp_path / "r.json"), "--diagnose", str(out)]) == 0
    s = json.loads(out.read_text())["summary"]
    assert s["share"]["false_stop"] > 0.9 and s["detail_share"]["false_stop/plan"] == s["share"]["false_stop"]
    assert s["stuck_episodes"] == 1 and s["stuck_seconds"] >= 10.0
    assert s["plan_end_m_when_false_stop"] == pytest.approx(0.0)


def test_diagnoses_add_and_round_trip():
    a = Diagnosis()
    a.ticks.update({"go": 3, "false_stop": 1})
    a.stuck_episodes.append(12.0)
    b = Diagnosis.from_json(json.loads(json.dumps(a.to_json())))
    c = a + b
    assert c.ticks == {"go": 6, "false_stop": 2} and c.stuck_episodes == [12.0, 12.0]
    assert c.summary()["share"] == {"false_stop": 0.25, "go": 0.75}
