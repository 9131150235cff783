"""CARLA data collection: the collection agent's run_step records a valid dataset (read back through the
nuscenes-devkit and the record builder), and collect.sh's argument handling with stand-in executables.

The agent runs inside the offline world, which plays the CARLA server: its sensors come from the offline
runner (the leaderboard's input_data layout) and its privileged view from a CarlaDataProvider stand-in
holding the offline world as CARLA actors with the carla library's types (tests/carla_fakes.py)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from carla_fakes import MirrorWorld
from test_carla_eval_launcher import STAND_IN_EVALUATOR, STAND_IN_SERVER, _free_port_base

from carla_eval import collect
from carla_eval.collect_agent import CollectAgent, route_hash, town_of
from nusc.infos import build_infos, load_nuscenes
from vlmad.commands import Command
from vlmad.errors import UserError
from vlmad.rig import CAMERA_NAMES
from world.config import WorldConfig
from world.road_map import load_map, random_routes
from world.runner import OfflineRunner

ROOT = Path(__file__).resolve().parents[1]
W, H = 96, 54
TICKS = 45  # 4 keyframes (every 10th tick) and 22 CAN frames (every 2nd)


@pytest.fixture(scope="module")
def grid():
    return load_map("VlmadGrid1x1")


class _Provider:
    world = None
    cmap = None

    @classmethod
    def get_world(cls):
        return cls.world

    @classmethod
    def get_map(cls):
        return cls.cmap


class _Agent(CollectAgent):
    provider = _Provider
    image_size = (W, H)
    keyframes: list = []

    def _frame(self, input_data, timestamp, key, target):
        f = super()._frame(input_data, timestamp, key, target)
        if key:  # what the agent saw: compared with the dataset below
            e = self.view.ego()
            near = [a for a in self.view.actors if np.hypot(a.x - e.x, a.y - e.y) < 59.0]
            _Agent.keyframes.append({"xy": (e.x, e.y), "actors": len(near), "command": int(target.command),
                                     "info": dict(self.expert.info)})
        return f


def test_run_step_records_a_valid_dataset(grid, tmp_path):
    cfg = WorldConfig()
    cfg.traffic.num_vehicles, cfg.traffic.num_pedestrians = 8, 4
    runner = OfflineRunner(grid, cfg, seed=4)
    spec = random_routes(grid, 1, np.random.default_rng(4), 150, 200, min_junctions=1)[0]
    parts = tmp_path / "parts"
    _Agent.keyframes = []

    def setup_world(world, route):
        _Provider.world, _Provider.cmap = MirrorWorld(world), grid.cmap

    def tick(view):  # the "server" advanced one step: its actors report the new state
        _Provider.world.sync()

    rec = runner.run_route(lambda: _Agent(str(parts)), spec, 0, setup_world=setup_world, on_step=tick,
                           max_steps=TICKS)
    assert "crashed" not in rec["status"], rec
    files = sorted(parts.glob("*.npz"))
    assert len(files) == 1 and files[0].name.startswith(f"{town_of(grid.cmap)}_")
    assert (parts / f"{town_of(grid.cmap)}.xodr").read_text() == grid.cmap.to_opendrive()

    [root] = collect.finalize(parts, tmp_path / "out", "v1.0-mini")
    nusc = load_nuscenes(root, "v1.0-mini")  # the real nuscenes-devkit
    assert len(nusc.scene) == 1 and len(nusc.sample) == 4 == len(_Agent.keyframes)
    recs = build_infos(root, "v1.0-mini", progress=False)
    for r, k in zip(recs, _Agent.keyframes):
        # pose: the hero's carla.Transform (float32) back in our frame
        np.testing.assert_allclose(r["world_from_ego"][:2, 3], k["xy"], atol=1e-3)
        p = r["privileged"]
        assert p["source"] == "carla" and p["command"] == k["command"] and r["command"] == k["command"]
        assert p["road_option"] == k["info"]["road_option"]
        assert p["speed"] == pytest.approx(k["info"]["speed"])
        assert set(r["cams"]) == set(CAMERA_NAMES) and r["cams"]["CAM_FRONT"]["width"] == W
        assert abs(len(r["agents"]["boxes"]) - k["actors"]) <= 1  # boxes within 60 m (one may sit on 60 m)
        assert r["can_bus"][9] == pytest.approx(9.81, abs=1.5)  # the IMU's specific force, gravity included
        assert r["map"] and {m["cls"] for m in r["map"]} <= {0, 1, 2}  # map vectors from the town's OpenDRIVE
    assert recs[0]["timestamp"] + 500_000 == recs[1]["timestamp"]
    assert all(r["command"] in {int(c) for c in Command} for r in recs)
    img = nusc.get("sample_data", nusc.sample[0]["data"]["CAM_FRONT"])
    assert (img["width"], img["height"]) == (W, H)


def test_finalize_without_drives_or_map_is_a_named_error(tmp_path):
    (tmp_path / "parts").mkdir()
    with pytest.raises(UserError, match="no recorded drive"):
        collect.finalize(tmp_path / "parts", tmp_path / "out")


def test_route_hash_names_a_route_by_its_ends():
    import carla

    a = [(carla.Transform(carla.Location(float(x), 0.0, 0.0)), 4) for x in range(10)]
    b = [(carla.Transform(carla.Location(float(x), 1.0, 0.0)), 4) for x in range(10)]
    assert route_hash(a) == route_hash(list(a)) != route_hash(b)


ROUTES_XML = """<?xml version="1.0"?>
<routes>
  <route id="0" town="Town01"><waypoint x="0" y="0" z="0"/><waypoint x="100" y="0" z="0"/></route>
  <route id="1" town="Town05"><waypoint x="0" y="0" z="0"/><waypoint x="100" y="0" z="0"/></route>
  <route id="2" town="Town02"><waypoint x="0" y="0" z="0"/><waypoint x="50" y="0" z="0"/></route>
</routes>
"""

# Wraps the launcher tests' stand-in evaluator: records the arguments the collection is launched with,
# writes one drive per run into --agent-config (as the collection agent does), then runs the stand-in.
WRAPPER = textwrap.dedent("""
    import json, shutil, subprocess, sys
    args = sys.argv[1:]
    opts = dict(a.split("=", 1) for a in args if a.startswith("--") and "=" in a)
    with open(opts["--calls"], "a") as f:
        f.write(json.dumps(args) + "\\n")
    parts = opts["--agent-config"]
    shutil.copy(opts["--drive"], parts + "/Town01_x.npz")
    shutil.copy(opts["--xodr"], parts + "/Town01.xodr")
    keep = [a for a in args if a.split("=", 1)[0] in ("--port", "--routes", "--repetitions", "--checkpoint",
                                                      "--resume", "--plan")]
    sys.exit(subprocess.call([sys.executable, opts["--stand-in"], *keep]))
""")


def _drive_part(grid, path: Path) -> None:
    """A small recorded drive in Town01 in the collection agent's cache format."""
    from nusc.writer import DriveFrame, RecordedDrive
    from vlmad.frames import se2_pose
    from vlmad.rig import CARLA_RIG
    from world.collect import save_drive

    rig = CARLA_RIG.with_image_size(32, 18)
    frames = [DriveFrame(timestamp_us=i * 100_000, world_from_ego=se2_pose(0.5 * i, 0.0, 0.0), images={},
                         boxes=[], is_keyframe=i % 5 == 0) for i in range(11)]
    for f in frames:
        if f.is_keyframe:
            f.images = {c: np.zeros((18, 32, 3), np.uint8) for c in CAMERA_NAMES}
            f.privileged = {"source": "carla", "command": 2}
    save_drive(path, RecordedDrive("Town01_x", "Town01", rig, frames, [], "stand-in drive"))


def test_collect_sh_arguments_with_a_stand_in_evaluator(grid, tmp_path):
    routes = tmp_path / "routes.xml"
    routes.write_text(ROUTES_XML)
    for name, text in (("server.py", STAND_IN_SERVER), ("evaluator.py", STAND_IN_EVALUATOR),
                       ("wrapper.py", WRAPPER)):
        (tmp_path / name).write_text(text)
    (tmp_path / "state").mkdir()
    (tmp_path / "plan.json").write_text(json.dumps({"crash": {}, "state": str(tmp_path / "state"),
                                                    "calls": str(tmp_path / "inner_calls.jsonl")}))
    _drive_part(grid, tmp_path / "drive.npz")
    (tmp_path / "Town01.xodr").write_text(grid.cmap.to_opendrive())
    (tmp_path / "carla").mkdir()
    out = tmp_path / "out"
    evaluator = " ".join([
        sys.executable, str(tmp_path / "wrapper.py"), "--port={rpc_port}", "--routes={routes}",
        "--repetitions={repetitions}", "--checkpoint={results}", "--agent={agent}", "--track={track}",
        "--agent-config={checkpoint}", f"--plan={tmp_path / 'plan.json'}", f"--calls={tmp_path / 'calls'}",
        f"--drive={tmp_path / 'drive.npz'}", f"--xodr={tmp_path / 'Town01.xodr'}",
        f"--stand-in={tmp_path / 'evaluator.py'}"])
    cmd = ["bash", str(ROOT / "carla_eval" / "collect.sh"), "--routes", str(routes), "--out", str(out),
           "--version", "v1.0-mini", "--carla-root", str(tmp_path / "carla"), "--servers", "1",
           "--port-base", str(_free_port_base(1)), "--server-check", "tcp", "--timeout", "20",
           "--server-cmd", f"{sys.executable} {tmp_path / 'server.py'} {{rpc_port}} {tmp_path / 'srv.log'}",
           "--evaluator-cmd", evaluator]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    # default towns: every town of the file but Town05
    chosen = (out / "collect_routes.xml").read_text()
    assert 'town="Town01"' in chosen and 'town="Town02"' in chosen and "Town05" not in chosen
    [argv] = [json.loads(x) for x in (tmp_path / "calls").read_text().splitlines()]
    opts = dict(a.split("=", 1) for a in argv if "=" in a)
    assert opts["--track"] == "MAP" and opts["--agent-config"] == str(out / "parts")
    assert opts["--agent"] == str(ROOT / "carla_eval" / "collect_agent.py")
    assert json.loads((out / "eval" / "report.json").read_text())["num_routes_found"] == 2
    assert len(load_nuscenes(out / "dataset", "v1.0-mini").sample) == 3  # the drive the "agent" wrote

    # flags this script owns are refused; unknown towns are named
    for extra, msg in ((["--checkpoint", "x"], "sets these itself"), (["--towns", "Town09"], "Town09")):
        with pytest.raises(UserError, match=msg):
            collect.main(["--routes", str(routes), "--out", str(tmp_path / "o2"), *extra])
    with pytest.raises(UserError, match="routes_training.xml"):
        collect.main(["--out", str(tmp_path / "o3"), "--leaderboard-root", str(tmp_path)])
