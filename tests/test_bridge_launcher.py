"""End to end: `--carla-version 0.9.10.1` through the launcher, with the agent behind the bridge.

Everything the launcher runs is its default command templates, with stand-ins where this machine lacks
the real thing:
- `CARLA_ROOT/CarlaUE4.sh`: a shell script that runs the TCP stand-in server of
  test_carla_eval_launcher.py on the `-carla-rpc-port` it was given (it spawns a grandchild too);
- `CARLA_ROOT/PythonAPI/carla/dist/carla-0.9.10-py3.7-linux-x86_64.egg`: an empty file (the egg check);
- `--evaluator-python`: a wrapper that answers the launcher's version probe (`-c ...`) as Python 3.7 and
  runs everything else in this Python (this machine has no 3.7; tests/test_bridge_compat.py checks that
  the 3.7 side really is 3.7-compatible);
- `LEADERBOARD_ROOT/leaderboard/leaderboard_evaluator.py`: does with the agent what leaderboard 1.0 does
  (loads `--agent` by path, builds it with `--agent-config`, sensors, set_global_plan, ticks, destroy)
  on synthetic data, records every control it got back, and writes a leaderboard results file; the
  `leaderboard` package beside it is the interface stand-in of test_bridge_roundtrip.py, so the bridge
  agent runs as an AutonomousAgent.
The driving server is the real one (`python -m carla_eval.bridge.server`, started by the launcher) with
the deterministic probe agent, whose controls are a checksum of its inputs: the controls the evaluator
got must equal the probe agent's, computed here in-process on the same data.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from carla_eval import launcher
from carla_eval.bridge import protocol as P
from carla_eval.bridge.probe_agent import ProbeAgent, synthetic_input, synthetic_route
from carla_eval.bridge.py37_agent import prepare_input
from carla_eval.bridge.server import image_sizes
from routes.parse import parse_routes, write_routes
from tests.test_bridge_roundtrip import FAKE_LEADERBOARD
from tests.test_carla_eval_launcher import STAND_IN_SERVER, _free_port_base, _server_pids, _wait_dead
from vlmad.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
TICKS = 12  # ticks per route
CAMERA = (32, 18)  # (W, H) the probe agent's cameras render; it asks for INPUT over the bridge
INPUT = (16, 9)

EVALUATOR = textwrap.dedent("""
    # leaderboard 1.0's leaderboard_evaluator.py, as far as the agent and the results file are concerned
    import argparse, importlib, json, os, signal, socket, sys
    import xml.etree.ElementTree as ET
    import numpy as np
    from carla_eval import scoring
    from carla_eval.bridge.probe_agent import synthetic_input, synthetic_route
    from leaderboard.autoagents.agent_wrapper import AgentError

    plan = json.load(open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "plan.json")))
    p = argparse.ArgumentParser()
    for name in ("--host", "--port", "--trafficManagerPort", "--trafficManagerSeed", "--timeout", "--routes",
                 "--scenarios", "--repetitions", "--agent", "--agent-config", "--track", "--checkpoint",
                 "--debug", "--resume"):
        p.add_argument(name)
    a = p.parse_args()
    socket.create_connection((a.host, int(a.port)), timeout=5).close()  # the simulator must answer
    sys.path.insert(0, os.path.dirname(a.agent))  # how leaderboard 1.0 imports --agent
    module = importlib.import_module(os.path.basename(a.agent).split(".")[0])
    agent_cls = getattr(module, module.get_entry_point())
    R = int(a.repetitions)
    ids = [r.attrib["id"] for r in ET.parse(a.routes).getroot()]
    total = len(ids) * R
    data = json.load(open(a.checkpoint)) if a.resume else None
    if not data:
        data = {"_checkpoint": {"global_record": {}, "progress": [0, total], "records": []},
                "sensors": [], "values": []}
    recs = data["_checkpoint"]["records"]

    def save(d):
        with open(a.checkpoint, "w") as f:  # in place, like leaderboard's save_dict
            json.dump(d, f)

    def record(**kw):
        with open(plan["record"], "a") as f:
            f.write(json.dumps(dict(kw, pid=os.getpid(), argv=sys.argv[1:],
                                    pythonpath=os.environ["PYTHONPATH"])) + "\\n")

    def finish(index, rid, completion, failure=""):
        recs[index:] = [scoring.make_route_record("RouteScenario_" + rid, index, completion,
                                                  route_length=100.0, failure=failure,
                                                  target_reached=completion >= 100.0 and not failure)]
        data["_checkpoint"]["progress"] = [index + 1, total]
        save(data)

    for index in range(data["_checkpoint"]["progress"][0], total):
        rid = ids[index // R]
        counter = os.path.join(plan["state"], "crash_" + rid)
        crash = not os.path.exists(counter) and rid in plan["crash"]
        try:
            agent = agent_cls(a.agent_config)
        except Exception as e:  # leaderboard 1.0: "Agent couldn't be set up", then the next route
            record(route=rid, index=index, controls=[], crashed=False, server_pid=None, error=str(e))
            finish(index, rid, 0.0, scoring.REASON_AGENT_SETUP)
            continue
        sensors = agent.sensors()
        data["sensors"] = [s["type"] for s in sensors]
        agent.set_global_plan(*synthetic_route(8 + int(rid)))
        rng = np.random.default_rng(int(rid))
        controls, error = [], ""
        for tick in range(plan["ticks"]):
            if [rid, tick] == plan["kill_server"]:  # the driving server dies (e.g. out of GPU memory)
                os.kill(agent.server_info["peer"]["pid"], signal.SIGKILL)
            try:
                c = agent.run_step(synthetic_input(tick, rng, tuple(plan["camera"])), 0.05 * (tick + 1))
            except AgentError as e:  # leaderboard 1.0: "Agent crashed", then the next route
                error = str(e)
                break
            controls.append([c.steer, c.throttle, c.brake, c.hand_brake, c.reverse])
            if crash and tick == plan["ticks"] // 2:  # the simulator dies mid-route: leaderboard 1.0
                open(counter, "w").close()           # records it and exits -1, progress not advanced
                record(route=rid, index=index, controls=controls, crashed=True,
                       server_pid=agent.server_info["peer"]["pid"], error="")
                recs[index:] = [scoring.make_route_record("RouteScenario_" + rid, index, 30.0,
                                                          failure=scoring.REASON_SIMULATION_CRASHED)]
                save(data)
                os._exit(255)
        record(route=rid, index=index, controls=controls, crashed=False, n_sensors=len(sensors),
               server_pid=agent.server_info["peer"]["pid"], track=str(agent.track),
               bases=[c.__name__ for c in type(agent).__mro__], error=error)
        agent.destroy()
        if error:
            finish(index, rid, 100.0 * len(controls) / plan["ticks"], scoring.REASON_AGENT_CRASHED)
        else:
            finish(index, rid, 100.0)
    save(scoring.make_results_file(recs, [total, total], data["sensors"]))
""")


def _setup(tmp_path: Path, ref: Path, n_routes: int, crash: tuple[str, ...] = (),
           kill_server: tuple[str, int] | None = None) -> dict:
    """Stand-ins (CARLA folder, leaderboard clone, Python 3.7 wrapper), route file and probe config."""
    exe = sys.executable
    routes = parse_routes(ref / "routes_town05_short.xml")[:n_routes]
    route_file = write_routes(routes, tmp_path / "routes.xml")
    (tmp_path / "server.py").write_text(STAND_IN_SERVER)
    carla_root = tmp_path / "carla"
    dist = carla_root / "PythonAPI" / "carla" / "dist"
    dist.mkdir(parents=True)
    egg = dist / "carla-0.9.10-py3.7-linux-x86_64.egg"
    egg.write_bytes(b"")
    ue4 = carla_root / "CarlaUE4.sh"
    ue4.write_text("#!/bin/sh\nfor a in \"$@\"; do\n"
                   "  case \"$a\" in -carla-rpc-port=*) port=\"${a#*=}\";; esac\n"
                   f"done\nexec {exe} {tmp_path / 'server.py'} \"$port\" {tmp_path / 'server_log.txt'}\n")
    lb = tmp_path / "lb"
    for rel, text in FAKE_LEADERBOARD.items():
        (lb / rel).parent.mkdir(parents=True, exist_ok=True)
        (lb / rel).write_text(text)
    (lb / "leaderboard" / "leaderboard_evaluator.py").write_text(EVALUATOR)
    py37 = tmp_path / "python3.7"
    py37.write_text(f"#!/bin/sh\necho \"$*\" >> {tmp_path / 'py37_calls.txt'}\n"
                    "if [ \"$1\" = -c ]; then echo 3.7 1.21.6; exit 0; fi\n"
                    f"exec {exe} \"$@\"\n")
    for f in (ue4, py37):
        f.chmod(0o755)
    (tmp_path / "state").mkdir()
    (tmp_path / "plan.json").write_text(json.dumps({
        "record": str(tmp_path / "controls.jsonl"), "state": str(tmp_path / "state"), "crash": list(crash),
        "kill_server": list(kill_server) if kill_server else None, "ticks": TICKS, "camera": list(CAMERA)}))
    probe = tmp_path / "probe.json"
    probe.write_text(json.dumps({"camera_size": list(CAMERA), "input_size": list(INPUT)}))
    return {"routes": str(route_file), "carla_root": str(carla_root), "leaderboard_root": str(lb),
            "evaluator_python": str(py37), "checkpoint": str(probe), "egg": str(egg)}


def _config(s: dict, out: Path, servers: int) -> launcher.EvalConfig:
    """What `run_evaluation.sh --carla-version 0.9.10.1 ...` builds, with the stand-ins of `_setup`."""
    return launcher.EvalConfig(
        routes=s["routes"], out=str(out), servers=servers, carla_root=s["carla_root"],
        leaderboard_root=s["leaderboard_root"], carla_version="0.9.10.1",
        evaluator_python=s["evaluator_python"], checkpoint=s["checkpoint"],
        agent="carla_eval.bridge.probe_agent", port_base=_free_port_base(servers), timeout=20.0,
        client_timeout=20.0, server_check="tcp")


def _records(tmp_path: Path) -> list[dict]:
    return [json.loads(x) for x in (tmp_path / "controls.jsonl").read_text().splitlines()]


def _expected_controls(probe_cfg: str, rid: str, ticks: int = TICKS) -> list[list]:
    """The probe agent's controls in this process on the evaluator's data (images resized as the 3.7
    side does for the size the agent asks for)."""
    agent = ProbeAgent(probe_cfg)
    sizes = image_sizes(agent, agent.sensors())
    assert sizes["CAM_FRONT"] == list(INPUT)  # the bridge has to resize: CAMERA -> INPUT
    agent.set_global_plan(*synthetic_route(8 + int(rid)))
    rng = np.random.default_rng(int(rid))
    out = []
    for tick in range(ticks):
        data = prepare_input(synthetic_input(tick, rng, CAMERA), sizes, "bilinear")
        c = agent.run_step(data, 0.05 * (tick + 1))
        out.append([c.steer, c.throttle, c.brake, c.hand_brake, c.reverse])
    return out


def _check_controls(recs: list[dict], probe_cfg: str) -> None:
    """Every route driven without an agent error got exactly the in-process agent's controls."""
    for r in (r for r in recs if not r["error"]):
        want = _expected_controls(probe_cfg, r["route"], len(r["controls"]))
        assert r["controls"] == want, f"route {r['route']}: controls differ from the in-process agent"
        assert len({tuple(c) for c in r["controls"]}) == len(r["controls"])  # a checksum: every tick differs


def _no_children_left(tmp_path: Path, recs: list[dict]) -> None:
    servers = [r["server_pid"] for r in recs if r["server_pid"]]  # None: the agent's setup failed
    pids = _server_pids(tmp_path) + [r["pid"] for r in recs] + servers
    assert _wait_dead(pids) == [], "processes left running"
    for r in recs:  # the 3.7 side's shared-memory image slots are gone
        assert not list(Path(P.SHM_DIR).glob(f"{P.SHM_PREFIX}{r['pid']}_*"))


def test_two_shards_run_through_the_bridge(tmp_path, shared_reference):
    s = _setup(tmp_path, shared_reference, n_routes=4)
    out = tmp_path / "out"
    cfg = _config(s, out, servers=2)
    report = json.loads(launcher.run(cfg).read_text())

    assert report["num_routes_expected"] == 4 and report["num_routes_found"] == 4
    assert report["missing_routes"] == [] and report["failed_routes"] == []
    assert [r["status"] for r in report["routes"]] == ["Completed"] * 4
    assert (out / "report.md").is_file()
    # the evaluator's Python was checked (version probe), then ran each shard's evaluator
    calls = (tmp_path / "py37_calls.txt").read_text().splitlines()
    assert calls[0].startswith("-c ") and sum("leaderboard_evaluator.py" in c for c in calls) == 2
    assert len((tmp_path / "server_log.txt").read_text().splitlines()) == 2  # one CARLA stand-in per shard

    recs = _records(tmp_path)
    assert sorted(r["route"] for r in recs) == ["0", "1", "2", "3"] and not any(r["crashed"] for r in recs)
    shards = json.loads((out / "plan.json").read_text())["shards"]
    for k, ids in enumerate(shards):
        mine = [r for r in recs if r["route"] in ids]
        argv = mine[0]["argv"]
        # the evaluator ran the 3.7-side agent with the shard's client config, and the egg on its path
        assert f"--agent={ROOT / 'carla_eval' / 'bridge' / 'py37_agent.py'}" in argv
        client_cfg = out / f"shard_{k}" / "bridge_client.json"
        assert f"--agent-config={client_cfg}" in argv
        assert s["egg"] in mine[0]["pythonpath"].split(os.pathsep)
        address = json.loads(client_cfg.read_text())["address"]
        # one driving server per shard, the one the launcher started and logged, serving all its routes
        assert len({r["server_pid"] for r in mine}) == 1
        log = (out / f"shard_{k}" / "bridge_1.log").read_text()
        assert f"listening at {address}" in log and "carla_eval.bridge.probe_agent.ProbeAgent" in log
        assert log.count("agent destroyed") == len(ids)  # one server-side agent per route, destroyed
        assert not (out / f"shard_{k}" / "bridge_2.log").exists()
    assert len({r["server_pid"] for r in recs}) == 2
    r0 = recs[0]
    assert r0["n_sensors"] == 9 and r0["track"] == "Track.SENSORS" and "AutonomousAgent" in r0["bases"]
    _check_controls(recs, s["checkpoint"])
    _no_children_left(tmp_path, recs)
    assert not list(out.glob("shard_*/bridge.sock"))  # the driving servers shut down cleanly (SIGTERM)


def test_run_evaluation_sh_restarts_the_driving_server_after_a_crash(tmp_path, shared_reference):
    """The user's command; the simulator dies mid-route 1: CARLA and the driving server are restarted and
    the route is driven again from its start by a fresh server-side agent."""
    s = _setup(tmp_path, shared_reference, n_routes=2, crash=("1",))
    out = tmp_path / "out"
    r = subprocess.run(
        ["bash", str(ROOT / "carla_eval" / "run_evaluation.sh"), "--carla-version", "0.9.10.1",
         "--routes", s["routes"], "--checkpoint", s["checkpoint"], "--agent", "carla_eval.bridge.probe_agent",
         "--carla-root", s["carla_root"], "--leaderboard-root", s["leaderboard_root"],
         "--evaluator-python", s["evaluator_python"], "--server-check", "tcp", "--out", str(out),
         "--port-base", str(_free_port_base(1)), "--timeout", "20", "--client-timeout", "20"],
        cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "2/2 routes" in r.stdout and "Traceback" not in r.stderr

    report = json.loads((out / "report.json").read_text())
    assert [x["status"] for x in report["routes"]] == ["Completed"] * 2 and report["missing_routes"] == []
    assert json.loads((out / "state.json").read_text())["crashes"] == {"0:1": 1}
    assert len((tmp_path / "server_log.txt").read_text().splitlines()) == 2  # CARLA restarted once
    recs = _records(tmp_path)
    assert [(x["route"], x["crashed"]) for x in recs] == [("0", False), ("1", True), ("1", False)]
    assert len(recs[1]["controls"]) == TICKS // 2 + 1 and len(recs[2]["controls"]) == TICKS
    assert "--resume=1" in recs[2]["argv"] and "--resume=1" not in recs[0]["argv"]
    # the first driving server served route 0 and the crashed try; a new one (bridge_2.log) the retry
    assert recs[0]["server_pid"] == recs[1]["server_pid"] != recs[2]["server_pid"]
    for n in (1, 2):
        assert "listening at" in (out / "shard_0" / f"bridge_{n}.log").read_text()
    assert not (out / "shard_0" / "bridge_3.log").exists()
    _check_controls(recs, s["checkpoint"])
    _no_children_left(tmp_path, recs)


@pytest.mark.parametrize("missing", ["egg", "python"])
def test_bridge_mode_refuses_an_incomplete_setup_before_starting_anything(tmp_path, shared_reference,
                                                                          missing):
    s = _setup(tmp_path, shared_reference, n_routes=1)
    if missing == "egg":
        Path(s["egg"]).unlink()
    else:
        Path(s["evaluator_python"]).write_text("#!/bin/sh\necho 3.10 1.26.4\n")
    cfg = _config(s, tmp_path / "out", servers=1)
    with pytest.raises(UserError, match="egg" if missing == "egg" else "is Python 3.10"):
        launcher.run(cfg)
    assert not (tmp_path / "server_log.txt").exists()  # nothing was started


@pytest.fixture(scope="module")
def server_killed_run(tmp_path_factory, shared_reference) -> tuple[Path, dict, list[dict]]:
    """One shard, 3 routes; the driving server is SIGKILLed during route 0 (before its tick 3)."""
    tmp_path = tmp_path_factory.mktemp("killed")
    s = _setup(tmp_path, shared_reference, n_routes=3, kill_server=("0", 3))
    report = json.loads(launcher.run(_config(s, tmp_path / "out", servers=1)).read_text())
    return tmp_path, report, _records(tmp_path)


def test_driving_server_killed_mid_route_brakes_and_fails_the_route(server_killed_run):
    tmp_path, report, recs = server_killed_run
    first = recs[0]
    assert first["route"] == "0" and "lost the driving server" in first["error"]
    probe_cfg = str(tmp_path / "probe.json")
    assert first["controls"][:3] == _expected_controls(probe_cfg, "0", 3)
    assert first["controls"][3:] == [[0.0, 0.0, 1.0, False, False]]  # the tick after: full brake, then stop
    assert report["routes"][0]["status"] == "Failed - Agent crashed"
    assert report["num_routes_found"] == 3 and report["missing_routes"] == []
    _no_children_left(tmp_path, recs)


def test_routes_after_a_driving_server_death_get_a_fresh_server(server_killed_run):
    tmp_path, report, recs = server_killed_run
    assert [r["status"] for r in report["routes"][1:]] == ["Completed", "Completed"]
    later = [r for r in recs if r["route"] in ("1", "2")]
    assert len({r["server_pid"] for r in later}) == 1 and later[0]["server_pid"] != recs[0]["server_pid"]
    assert (tmp_path / "out" / "shard_0" / "bridge_2.log").is_file()
    _check_controls(later, str(tmp_path / "probe.json"))
