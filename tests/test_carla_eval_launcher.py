"""Launcher logic with stand-in executables: a TCP 'server' and an evaluator that mimics leaderboard 1.0
(results file, progress, --resume, "Failed - Simulation crashed" + exit -1, "Failed - Agent couldn't be
set up" + exit 0 when the agent's setup raises) and crashes or hangs on demand."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from carla_eval import launcher, scoring
from routes.parse import parse_routes, write_routes
from vlmad.errors import UserError

ROOT = Path(__file__).resolve().parents[1]

STAND_IN_SERVER = textwrap.dedent("""
    import os, socket, subprocess, sys, time
    port, log = int(sys.argv[1]), sys.argv[2]
    # a grandchild the launcher must clean up too
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    with open(log, "a") as f:
        f.write(f"start port={port} pid={os.getpid()} child={child.pid}\\n")
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", port))
    s.listen(16)
    while True:
        c, _ = s.accept()
        c.close()
""")

STAND_IN_EVALUATOR = textwrap.dedent("""
    import argparse, json, os, socket, subprocess, sys, time
    import xml.etree.ElementTree as ET
    from carla_eval import scoring
    p = argparse.ArgumentParser()
    for a in ("--port", "--routes", "--repetitions", "--checkpoint", "--resume", "--plan", "--agent"):
        p.add_argument(a)
    a = p.parse_args()
    plan = json.load(open(a.plan))
    with open(plan["calls"], "a") as f:
        f.write(json.dumps({"argv": sys.argv[1:], "pid": os.getpid()}) + "\\n")
    R = int(a.repetitions)
    ids = [r.attrib["id"] for r in ET.parse(a.routes).getroot()]
    total = len(ids) * R

    def load():
        try:
            return json.load(open(a.checkpoint))
        except (OSError, ValueError):
            return {}

    def save(d):
        with open(a.checkpoint, "w") as f:  # in place, like leaderboard's save_dict
            json.dump(d, f)

    data = load() if a.resume else {}
    if not data:
        data = {"_checkpoint": {"global_record": {}, "progress": [0, total], "records": []},
                "sensors": [], "values": []}
        save(data)
    socket.create_connection(("127.0.0.1", int(a.port)), timeout=2).close()  # the server must answer
    if plan.get("setup_error"):
        # leaderboard 1.0 on a bad checkpoint: print the agent's error, record every route, exit 0
        for index in range(data["_checkpoint"]["progress"][0], total):
            print("\\n\\033[91mCould not set up the required agent:")
            print("> {}\\033[0m\\n".format(plan["setup_error"]))
            print("Traceback (most recent call last):\\n  ...")
            rec = scoring.make_route_record(f"RouteScenario_{ids[index // R]}", index, 0.0,
                                            route_length=1000.0, duration_system=0.0, duration_game=0.0,
                                            failure=scoring.REASON_AGENT_SETUP)
            data["_checkpoint"]["records"][index:] = [rec]
            data["_checkpoint"]["progress"] = [index + 1, total]
            save(data)
        save(scoring.make_results_file(data["_checkpoint"]["records"], [total, total], data["sensors"]))
        sys.exit(0)
    if plan.get("hang"):
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
        with open(plan["calls"], "a") as f:
            f.write(json.dumps({"hang_child": child.pid}) + "\\n")
        time.sleep(600)
    data["sensors"] = ["carla_camera"] * 6
    recs = data["_checkpoint"]["records"]
    for index in range(data["_checkpoint"]["progress"][0], total):
        rid = ids[index // R]
        counter = os.path.join(plan["state"], f"crash_{rid}_{index % R}")
        n = int(open(counter).read()) if os.path.exists(counter) else 0
        if n < plan["crash"].get(rid, 0):
            open(counter, "w").write(str(n + 1))
            rec = scoring.make_route_record(f"RouteScenario_{rid}", index, 40.0, route_length=1000.0,
                                            duration_system=5.0, duration_game=7.5,
                                            failure=scoring.REASON_SIMULATION_CRASHED)
            recs[index:] = [rec]
            save(data)
            sys.exit(-1)  # leaderboard 1.0 after "Simulation crashed"; progress is not advanced
        infr = {"collisions_vehicle": ["hit"]} if rid in plan.get("collide", []) else {}
        rec = scoring.make_route_record(f"RouteScenario_{rid}", index, 100.0, infr, route_length=1000.0,
                                        target_reached=True)
        recs[index:] = [rec]
        data["_checkpoint"]["progress"] = [index + 1, total]
        save(data)
    save(scoring.make_results_file(recs, [total, total], data["sensors"]))
""")


def _free_port_base(n: int) -> int:
    """A base port with base + 10 i (i < n) free; ports come from the kernel's ephemeral range."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            base = s.getsockname()[1]
        if base + 10 * n > 65000:
            continue
        ok = True
        for i in range(n):
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", base + 10 * i))
                except OSError:
                    ok = False
        if ok:
            return base
    raise RuntimeError("no free ports")


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def _setup(
    tmp_path: Path,
    ref: Path,
    n_routes: int,
    servers: int,
    crash: dict[str, int] | None = None,
    hang: bool = False,
    collide: list[str] | None = None,
    setup_error: str = "",
    **kw,
) -> launcher.EvalConfig:
    routes = parse_routes(ref / "routes_town05_short.xml")[:n_routes]
    route_file = write_routes(routes, tmp_path / "routes.xml")
    (tmp_path / "server.py").write_text(STAND_IN_SERVER)
    (tmp_path / "evaluator.py").write_text(STAND_IN_EVALUATOR)
    (tmp_path / "state").mkdir()
    plan = {
        "crash": crash or {},
        "hang": hang,
        "collide": collide or [],
        "setup_error": setup_error,
        "state": str(tmp_path / "state"),
        "calls": str(tmp_path / "calls.jsonl"),
    }
    (tmp_path / "plan.json").write_text(json.dumps(plan))
    fake_carla = tmp_path / "carla"
    fake_carla.mkdir()
    kw.setdefault("check_checkpoint", False)  # "ckpt" is no checkpoint: the stand-ins never load it
    return launcher.EvalConfig(
        routes=str(route_file),
        out=str(tmp_path / "out"),
        servers=servers,
        carla_root=str(fake_carla),
        port_base=_free_port_base(servers),
        timeout=20.0,
        server_check="tcp",
        checkpoint="ckpt",
        server_cmd=(
            sys.executable,
            str(tmp_path / "server.py"),
            "{rpc_port}",
            str(tmp_path / "server_log.txt"),
        ),
        evaluator_cmd=(
            sys.executable,
            str(tmp_path / "evaluator.py"),
            "--port={rpc_port}",
            "--routes={routes}",
            "--repetitions={repetitions}",
            "--checkpoint={results}",
            f"--plan={tmp_path / 'plan.json'}",
        ),
        **kw,
    )


def _server_pids(tmp_path: Path) -> list[int]:
    pids = []
    for line in (tmp_path / "server_log.txt").read_text().splitlines():
        f = dict(x.split("=") for x in line.split()[1:])
        pids += [int(f["pid"]), int(f["child"])]
    return pids


def _calls(tmp_path: Path) -> list[dict]:
    return [json.loads(x) for x in (tmp_path / "calls.jsonl").read_text().splitlines()]


def _wait_dead(pids: list[int], timeout: float = 5.0) -> list[int]:
    end = time.monotonic() + timeout
    while time.monotonic() < end and any(_alive(p) for p in pids):
        time.sleep(0.05)
    return [p for p in pids if _alive(p)]


def test_two_shards_distinct_ports_report_and_cleanup(tmp_path, shared_reference):
    cfg = _setup(tmp_path, shared_reference, n_routes=6, servers=2, collide=["1"])
    report = json.loads(launcher.run(cfg).read_text())
    assert report["num_routes_expected"] == 6 and report["num_routes_found"] == 6
    assert report["missing_routes"] == [] and report["failed_routes"] == []
    # one collision with a vehicle on route 1: DS 100 x 0.6 there, 100 elsewhere
    assert report["driving_score"] == pytest.approx((5 * 100 + 60) / 6)
    starts = (tmp_path / "server_log.txt").read_text().splitlines()
    assert len(starts) == 2 and len({s.split()[1] for s in starts}) == 2  # two servers, two RPC ports
    calls = _calls(tmp_path)
    assert len(calls) == 2 and all("--resume=1" not in c["argv"] for c in calls)
    shard_ids = json.loads((tmp_path / "out" / "plan.json").read_text())["shards"]
    assert sorted(i for s in shard_ids for i in s) == [str(i) for i in range(6)] and len(shard_ids) == 2
    assert (tmp_path / "out" / "report.md").is_file() and (
        tmp_path / "out" / "plots" / "per_route_ds.png"
    ).is_file()
    assert _wait_dead(_server_pids(tmp_path)) == []  # servers and the processes they spawned are gone


def test_crash_restarts_server_and_resumes_the_route(tmp_path, shared_reference):
    cfg = _setup(tmp_path, shared_reference, n_routes=3, servers=1, crash={"1": 2}, max_crashes=3)
    report = json.loads(launcher.run(cfg).read_text())
    assert [r["status"] for r in report["routes"]] == ["Completed"] * 3
    assert report["driving_score"] == pytest.approx(100.0)
    calls = _calls(tmp_path)
    assert len(calls) == 3  # first run + two resumed runs after the two crashes
    assert "--resume=1" not in calls[0]["argv"] and all("--resume=1" in c["argv"] for c in calls[1:])
    assert (
        len((tmp_path / "server_log.txt").read_text().splitlines()) == 3
    )  # server restarted after each crash
    state = json.loads((tmp_path / "out" / "state.json").read_text())
    assert state["crashes"] == {"0:1": 2}
    assert _wait_dead(_server_pids(tmp_path)) == []


def test_route_crashing_k_times_is_failed_not_missing(tmp_path, shared_reference):
    cfg = _setup(tmp_path, shared_reference, n_routes=3, servers=1, crash={"1": 99, "2": 99}, max_crashes=2)
    report = json.loads(launcher.run(cfg).read_text())
    status = {r["route_id"]: r["status"] for r in report["routes"]}
    assert status == {
        "RouteScenario_0": "Completed",
        "RouteScenario_1": "Failed - Simulation crashed",
        "RouteScenario_2": "Failed - Simulation crashed",
    }
    assert report["missing_routes"] == [] and report["num_routes_found"] == 3
    assert {f["route_id"] for f in report["crashed_routes"]} == {"RouteScenario_1", "RouteScenario_2"}
    assert report["driving_score"] == pytest.approx(100.0 / 3)
    assert len(_calls(tmp_path)) == 4  # 2 tries end on route 1 (route 0 done in the first), 2 on route 2
    results = json.loads((tmp_path / "out" / "shard_0" / "results.json").read_text())
    assert results["_checkpoint"]["progress"] == [3, 3]
    assert results["entry_status"] == scoring.ENTRY_FINISHED
    # the give-up record is the one with zeros, a real route length and measured durations
    routes = parse_routes(tmp_path / "routes.xml")
    for rec in results["_checkpoint"]["records"][1:]:
        assert rec["scores"] == {"score_composed": 0.0, "score_penalty": 0.0, "score_route": 0.0}
        assert rec["meta"]["marked_by"] == "carla_eval.launcher" and rec["meta"]["crashes"] == 2
        length = routes[rec["index"]].length_m
        assert length > 10 and rec["meta"]["route_length"] == pytest.approx(length)
        assert rec["meta"]["duration_system"] > 0 and rec["meta"]["duration_game"] == 7.5


def test_give_up_record_takes_the_measured_wall_time(tmp_path, shared_reference):
    _setup(tmp_path, shared_reference, n_routes=1, servers=1)
    data = {"_checkpoint": {"progress": [0, 1], "records": []}}
    route = parse_routes(tmp_path / "routes.xml")[0]
    rec = scoring.make_route_record(route.name, 0, 40.0, route_length=1000.0, duration_system=5.0,
                                    duration_game=7.5, failure=scoring.REASON_SIMULATION_CRASHED)
    data["_checkpoint"]["records"].append(rec)
    out = tmp_path / "r.json"
    launcher.mark_route_failed(out, data, 0, route, 1, 1, wall_s=3.25)
    got = json.loads(out.read_text())["_checkpoint"]["records"][0]
    assert got["meta"]["duration_system"] == 3.25
    assert got["meta"]["route_length"] == pytest.approx(route.length_m)
    assert got["meta"]["duration_game"] == 7.5 and got["scores"]["score_route"] == 0.0


def test_checkpoint_preflight_loads_a_good_one_and_skips_unknown_agents(tmp_path):
    from scripts.export_agent import main as export_main

    export_main(["--random-init", "--config", "vad_nano", "--out", str(tmp_path / "nano")])
    good = launcher.EvalConfig(checkpoint=str(tmp_path / "nano"))
    assert launcher.preflight_checkpoint(good) is True
    # other agents: their loader is unknown, nothing is checked; the switch turns the check off
    for other in ({"agent": "/x/other.py"}, {"check_checkpoint": False}):
        assert launcher.preflight_checkpoint(launcher.EvalConfig(checkpoint="nope", **other)) is False
    with pytest.raises(UserError, match="checkpoint check failed"):
        launcher.preflight_checkpoint(launcher.EvalConfig(checkpoint=str(tmp_path / "nope")))


def _run_sh(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(ROOT / "carla_eval" / "run_evaluation.sh"), *args], cwd=cwd,
                          capture_output=True, text=True, timeout=120)


def _sh_args(cfg: launcher.EvalConfig) -> list[str]:
    import shlex

    return ["--routes", cfg.routes, "--out", cfg.out, "--carla-root", cfg.carla_root,
            "--port-base", str(cfg.port_base), "--timeout", "20", "--server-check", "tcp",
            "--server-cmd", shlex.join(cfg.server_cmd), "--evaluator-cmd", shlex.join(cfg.evaluator_cmd)]


def test_bad_checkpoint_fails_before_any_server_starts(tmp_path, shared_reference):
    cfg = _setup(tmp_path, shared_reference, n_routes=2, servers=1)
    broken = tmp_path / "broken_ckpt"
    broken.mkdir()
    (broken / "config.yaml").write_text("{}\n")
    (broken / "model.safetensors").write_bytes(b"not a safetensors file")
    for ckpt in (tmp_path / "no_such_ckpt", broken):
        r = _run_sh([*_sh_args(cfg), "--checkpoint", str(ckpt)], cwd=tmp_path)
        assert r.returncode != 0, r.stdout
        assert "checkpoint check failed before starting any server" in r.stderr and str(ckpt) in r.stderr
        assert "Traceback" not in r.stderr
        assert not (tmp_path / "server_log.txt").exists() and not (tmp_path / "calls.jsonl").exists()


def test_all_routes_agent_setup_failed_is_an_error_with_the_agents_message(tmp_path, shared_reference):
    """The real evaluator on a bad checkpoint records every route "couldn't be set up" and exits 0."""
    msg = "checkpoint /x/y is corrupt: model.safetensors does not match"
    cfg = _setup(tmp_path, shared_reference, n_routes=2, servers=1, setup_error=msg)
    r = _run_sh([*_sh_args(cfg), "--checkpoint", "ckpt", "--no-check-checkpoint"], cwd=tmp_path)
    assert r.returncode != 0, r.stdout
    assert "could not be set up on any of its 2 route(s)" in r.stderr and msg in r.stderr
    assert "\x1b[" not in r.stderr and "Traceback" not in r.stderr
    assert len(_calls(tmp_path)) == 1  # the evaluator exited 0: not retried as a crash


def test_relative_agent_is_taken_from_the_project_root(tmp_path, shared_reference, monkeypatch):
    cfg = _setup(tmp_path, shared_reference, n_routes=1, servers=1)
    cfg = launcher.EvalConfig(**{**cfg.__dict__, "agent": "agent/vad_agent.py",
                                 "evaluator_cmd": (*cfg.evaluator_cmd, "--agent={agent}")})
    monkeypatch.chdir(tmp_path)  # not the project root
    launcher.run(cfg)
    assert _calls(tmp_path)[0]["argv"][-1] == f"--agent={ROOT / 'agent' / 'vad_agent.py'}"
    assert launcher.agent_path("/abs/agent.py") == "/abs/agent.py"
    assert launcher.agent_path("carla_eval.bridge.probe_agent") == "carla_eval.bridge.probe_agent"
    with pytest.raises(UserError, match="project root"):
        launcher.validate(launcher.EvalConfig(**{**cfg.__dict__, "agent": "agent/no_such_agent.py"}))


def test_resume_continues_and_refuses_without_flag(tmp_path, shared_reference):
    cfg = _setup(tmp_path, shared_reference, n_routes=2, servers=1, crash={"1": 99}, max_crashes=1)
    launcher.run(cfg)
    with pytest.raises(UserError, match="--resume"):
        launcher.run(cfg)
    changed = launcher.EvalConfig(**{**cfg.__dict__, "resume": True, "repetitions": 2})
    with pytest.raises(UserError, match="repetitions"):
        launcher.run(changed)
    # resuming a finished run re-runs nothing and rewrites the same report
    n = len(_calls(tmp_path))
    report = json.loads(launcher.run(launcher.EvalConfig(**{**cfg.__dict__, "resume": True})).read_text())
    assert len(_calls(tmp_path)) == n and report["num_routes_found"] == 2


def test_ctrl_c_kills_every_child(tmp_path, shared_reference):
    cfg = _setup(tmp_path, shared_reference, n_routes=2, servers=2, hang=True)
    argv = [
        sys.executable,
        "-m",
        "carla_eval.launcher",
        "--routes",
        cfg.routes,
        "--out",
        cfg.out,
        "--servers",
        "2",
        "--carla-root",
        cfg.carla_root,
        "--port-base",
        str(cfg.port_base),
        "--timeout",
        "20",
        "--server-check",
        "tcp",
        "--checkpoint",
        "ckpt",
        "--no-check-checkpoint",
        "--server-cmd",
        " ".join(cfg.server_cmd),
        "--evaluator-cmd",
        " ".join(cfg.evaluator_cmd),
    ]
    proc = subprocess.Popen(
        argv, cwd=ROOT, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        end = time.monotonic() + 20
        while time.monotonic() < end:
            calls = _calls(tmp_path) if (tmp_path / "calls.jsonl").exists() else []
            if sum("hang_child" in c for c in calls) == 2:
                break
            time.sleep(0.05)
        else:
            raise AssertionError(f"evaluators did not start: {proc.stdout.read1().decode()}")
        pids = _server_pids(tmp_path) + [c.get("pid") or c["hang_child"] for c in calls]
        assert len(pids) == 8 and all(_alive(p) for p in pids)
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
        rc = proc.wait(timeout=20)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert rc == 130
    assert _wait_dead(pids) == []


def test_no_server_bounded_wait_says_how_to_start_one(tmp_path, shared_reference):
    t0 = time.monotonic()
    r = subprocess.run(
        [
            "bash",
            str(ROOT / "carla_eval" / "run_evaluation.sh"),
            "--routes",
            str(shared_reference / "routes_town05_short.xml"),
            "--checkpoint",
            "x",
            "--no-check-checkpoint",
            "--out",
            str(tmp_path / "out"),
            "--port-base",
            str(_free_port_base(1)),
            "--timeout",
            "1",
            "--evaluator-cmd",
            "python -c pass",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2
    assert time.monotonic() - t0 < 30
    assert "within 1 s" in r.stderr and "CarlaUE4.sh -RenderOffScreen" in r.stderr
    assert "Traceback" not in r.stderr


def test_help_documents_every_option():
    r = subprocess.run(
        ["bash", str(ROOT / "carla_eval" / "run_evaluation.sh"), "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0
    for flag in (
        "--routes",
        "--checkpoint",
        "--servers",
        "--repetitions",
        "--out",
        "--resume",
        "--carla-root",
        "--leaderboard-root",
        "--port-base",
        "--timeout",
        "--max-crashes",
        "--carla-version",
        "--help",
    ):
        assert flag in r.stdout, flag
    # every parser option appears in the help text
    for action in launcher.build_parser()._actions:
        assert any(o in r.stdout for o in action.option_strings)


def test_config_errors_are_user_errors(tmp_path, shared_reference):
    base = launcher.EvalConfig(
        routes=str(shared_reference / "routes_town05_short.xml"),
        out=str(tmp_path),
        checkpoint="x",
        evaluator_cmd=("true",),
    )
    with pytest.raises(UserError, match="evaluator-python"):
        launcher.validate(launcher.EvalConfig(**{**base.__dict__, "carla_version": "0.9.10.1",
                                                 "evaluator_cmd": launcher.EvalConfig().evaluator_cmd}))
    with pytest.raises(UserError, match="--gpus"):
        launcher.validate(launcher.EvalConfig(**{**base.__dict__, "servers": 2, "gpus": "0"}))
    with pytest.raises(UserError, match="routes.fetch"):
        launcher.resolve_routes(launcher.EvalConfig(routes="long", routes_dir=str(tmp_path)))
    with pytest.raises(UserError, match="leaderboard"):
        launcher.validate(launcher.EvalConfig(routes="short", checkpoint="x"))
    with pytest.raises(UserError, match="differ"):
        launcher.check_versions("0.9.16", "0.9.15", "0.9.16")
    launcher.check_versions("0.9.16", "0.9.16-1-gabc", "0.9.16")
    assert launcher.ports(base, 1) == {"rpc_port": 2010, "streaming_port": 2011, "tm_port": 2015}


def test_stalled_evaluator_is_killed_and_counted_as_crash(tmp_path, shared_reference):
    cfg = _setup(
        tmp_path, shared_reference, n_routes=1, servers=1, hang=True, max_crashes=1, stall_timeout=1.0
    )
    report = json.loads(launcher.run(cfg).read_text())
    assert [r["status"] for r in report["routes"]] == ["Failed - Simulation crashed"]
    hung = [c["hang_child"] for c in _calls(tmp_path) if "hang_child" in c]
    assert len(hung) == 1 and _wait_dead(hung + _server_pids(tmp_path)) == []


def test_carla_check_rejects_a_port_that_is_not_carla(tmp_path):
    port = _free_port_base(1)
    srv = subprocess.Popen([sys.executable, "-c", STAND_IN_SERVER, str(port), str(tmp_path / "log.txt")])
    try:
        end = time.monotonic() + 10
        while not (tmp_path / "log.txt").exists() and time.monotonic() < end:
            time.sleep(0.05)
        time.sleep(0.2)
        cfg = launcher.EvalConfig(port_base=port, timeout=1.5)  # the real check: carla.Client
        with pytest.raises(UserError, match="get_server_version"):
            launcher.wait_for_server(cfg, 0, None, threading.Event())
    finally:
        srv.kill()
        srv.wait()
        for line in (tmp_path / "log.txt").read_text().splitlines():
            os.kill(int(line.split("child=")[1]), signal.SIGKILL)


def test_installed_tree_comes_from_the_lock_file(tmp_path):
    (tmp_path / "leaderboard").mkdir()
    assert launcher.installed_tree(str(tmp_path / "leaderboard")) == "stable"  # no lock: the default
    (tmp_path / "versions.lock").write_text("# x\nleaderboard_tree leaderboard-1.0\nleaderboard abc URL\n")
    assert launcher.installed_tree(str(tmp_path / "leaderboard")) == "leaderboard-1.0"
    recs = [scoring.make_route_record(0, 0, 50.0, route_length=100.0)]
    atomic = tmp_path / "r.json"
    atomic.write_text(json.dumps(scoring.make_results_file(recs, [1, 1])))
    launcher.finalize_results(atomic, 1, "leaderboard-1.0")
    g = json.loads(atomic.read_text())["_checkpoint"]["global_record"]
    assert scoring.detect_tree(g) == "leaderboard-1.0" and g["meta"]["total_length"] == 100.0
