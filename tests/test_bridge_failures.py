"""Bridge failures: no server, server killed or stuck mid-route, version mismatch, agent errors, launcher."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from carla_eval.bridge import launch
from carla_eval.bridge import protocol as P
from carla_eval.bridge.probe_agent import synthetic_input, synthetic_route
from carla_eval.bridge.py37_agent import BridgeAgent, BridgeAgentError, read_client_config
from carla_eval.bridge.server import BridgeServer
from carla_eval.launcher import Supervisor
from vlmad.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
PROBE = "carla_eval.bridge.probe_agent:ProbeAgent"
SMALL = (16, 9)


@pytest.fixture
def sock_dir() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="vb", dir="/tmp"))  # short: Unix socket paths are limited to 107 B
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def probe_cfg(tmp_path: Path) -> str:
    path = tmp_path / "probe.json"
    path.write_text(json.dumps({"camera_size": list(SMALL)}))
    return str(path)


def client(tmp_path: Path, address: str, agent_config: str = "", **kw: object) -> BridgeAgent:
    path = tmp_path / "client.json"
    path.write_text(json.dumps({"address": address, "agent_config": agent_config, **kw}))
    return BridgeAgent(str(path))


def tick(agent: BridgeAgent, i: int):
    return agent.run_step(synthetic_input(i, np.random.default_rng(i), SMALL), 0.05 * (i + 1))


def is_full_brake(c) -> bool:
    return c.brake == 1.0 and c.throttle == 0.0 and c.steer == 0.0


def start_server_process(sock_dir: Path, probe_cfg: str) -> tuple[launch.ShardBridge, Supervisor]:
    """A real driving-server process, started as the launcher does (ShardBridge + its Supervisor)."""
    bridge = launch.ShardBridge.plan(sock_dir, 0, 2000, PROBE, probe_cfg, timeout=60.0)
    sup = Supervisor()
    try:
        bridge.start(sup)
    except BaseException:
        sup.kill_all()
        raise
    return bridge, sup


def test_no_server_at_setup_is_a_clear_agent_error_fast(tmp_path: Path, sock_dir: Path) -> None:
    t0 = time.monotonic()
    with pytest.raises(BridgeAgentError, match="not reachable.*carla_eval.bridge.server") as e:
        client(tmp_path, f"unix:{sock_dir}/none.sock")
    assert time.monotonic() - t0 < 5.0
    assert isinstance(e.value, P.BridgeError)


@contextlib.contextmanager
def _served_later(address: str, delay_s: float | None, reset_first: bool = False) -> Iterator[None]:
    """While inside: after `delay_s`, a real driving server at `address` (None: none), from a thread.
    With `reset_first`, a listener that accepts one connection and closes it unanswered stands there
    first (a server being killed)."""
    servers: list[BridgeServer] = []

    def run() -> None:
        path = address.split(":", 1)[1]
        if reset_first:
            raw = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            raw.bind(path)
            raw.listen(1)
            conn, _ = raw.accept()
            conn.close()
            raw.close()
            os.unlink(path)
        if delay_s is None:
            return
        time.sleep(delay_s)
        srv = BridgeServer(address, PROBE, verbose=False)
        srv.start()
        servers.append(srv)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    time.sleep(0.2)  # the resetting listener (if any) is up
    try:
        yield
    finally:
        t.join(10)
        for srv in servers:
            srv.close()


def test_restarting_server_is_waited_for_the_whole_reconnect_window(tmp_path: Path, sock_dir: Path,
                                                                      probe_cfg: str) -> None:
    """The window is longer than one connect's timeout (the launcher's 30 s vs 10 s): it is not capped."""
    address = f"unix:{sock_dir}/late.sock"
    with _served_later(address, delay_s=1.5):
        t0 = time.monotonic()
        agent = client(tmp_path, address, probe_cfg, connect_timeout=0.5, reconnect_window=6.0)
        assert time.monotonic() - t0 >= 1.0  # it waited past the 0.5 s connect timeout
        assert agent.server_info["peer"]["pid"] == os.getpid()  # the in-thread real server answered
        agent.destroy()


def test_connection_reset_before_the_hello_reply_is_retried(tmp_path: Path, sock_dir: Path,
                                                           probe_cfg: str) -> None:
    """A server being killed can accept and then reset; setup retries and reaches the fresh server."""
    address = f"unix:{sock_dir}/reset.sock"
    with _served_later(address, delay_s=0.3, reset_first=True):
        agent = client(tmp_path, address, probe_cfg, reconnect_window=6.0)
        assert agent.server_info["peer"]["pid"] == os.getpid()  # the in-thread real server answered
        agent.destroy()
    gone = f"unix:{sock_dir}/gone.sock"
    with _served_later(gone, delay_s=None, reset_first=True):
        t0 = time.monotonic()
        with pytest.raises(BridgeAgentError, match="not reachable"):  # nothing comes after the reset
            client(tmp_path, gone, probe_cfg, reconnect_window=1.0)
        assert time.monotonic() - t0 < 5.0  # within the window, not a hang


def test_server_killed_mid_route_brakes_then_fails_the_route(sock_dir: Path, probe_cfg: str) -> None:
    bridge, sup = start_server_process(sock_dir, probe_cfg)
    try:
        agent = BridgeAgent(str(bridge.client_config))  # the config file the launcher wrote
        agent.set_global_plan(*synthetic_route())
        before = [tick(agent, i) for i in range(5)]
        assert not any(is_full_brake(c) for c in before)  # it drove (the probe never gives 0/0/1)
        os.killpg(bridge.proc.pid, signal.SIGKILL)
        bridge.proc.wait(timeout=10)
        t0 = time.monotonic()
        c = tick(agent, 5)
        assert is_full_brake(c) and time.monotonic() - t0 < agent.config["step_timeout"]
        with pytest.raises(BridgeAgentError, match="lost the driving server"):
            tick(agent, 6)  # the leaderboard turns this into "Agent crashed" for the route
        with pytest.raises(BridgeAgentError):
            tick(agent, 7)
        t0 = time.monotonic()
        agent.destroy()  # bounded, never raises
        assert time.monotonic() - t0 < 1.0
        # the launcher's next evaluator run finds the process dead and starts a new one
        bridge.start(sup)
        assert bridge.starts == 2 and bridge.proc.poll() is None
        again = BridgeAgent(str(bridge.client_config))
        assert not is_full_brake(tick(again, 0))
        again.destroy()
    finally:
        sup.kill_all()


def test_server_that_stops_answering_brakes_within_the_timeout(tmp_path: Path, sock_dir: Path) -> None:
    cfg = tmp_path / "probe.json"
    cfg.write_text(json.dumps({"camera_size": list(SMALL), "sleep_s": 3.0}))
    server = BridgeServer(f"unix:{sock_dir}/b.sock", PROBE, verbose=False)
    server.start()
    try:
        agent = client(tmp_path, server.address, str(cfg), step_timeout=0.5, destroy_timeout=0.5)
        t0 = time.monotonic()
        c = tick(agent, 0)
        waited = time.monotonic() - t0
        assert is_full_brake(c) and 0.4 < waited < 2.0
        with pytest.raises(BridgeAgentError, match="timed out"):
            tick(agent, 1)
        agent.destroy()
    finally:
        server.close()


def test_version_mismatch_refuses_and_names_the_side_to_update(tmp_path: Path, sock_dir: Path,
                                                               probe_cfg: str) -> None:
    newer = BridgeServer(f"unix:{sock_dir}/a.sock", PROBE, protocol_version=P.PROTOCOL_VERSION + 1,
                         project_version="9.0.0", verbose=False)
    older = BridgeServer(f"unix:{sock_dir}/b.sock", PROBE, project_version="0.0.1", verbose=False)
    newer.start()
    older.start()
    try:
        with pytest.raises(BridgeAgentError, match="update the 3.7 side"):
            client(tmp_path, newer.address, probe_cfg)
        with pytest.raises(BridgeAgentError, match="update the driving server"):
            client(tmp_path, older.address, probe_cfg)
        # the server refuses on its own too: an old client that would not check gets ok=false and a close
        sock = P.connect(newer.address, 2.0)
        with sock:
            P.send_message(sock, {"op": "hello", "protocol": P.PROTOCOL_VERSION, "project_version": "0.1.0"},
                           2.0)
            reply = P.recv_message(sock, 2.0)
            assert reply["ok"] is False and "update the 3.7 side" in reply["error"]
            with pytest.raises(P.PeerGone):
                P.recv_message(sock, 2.0)
    finally:
        newer.close()
        older.close()


def test_agent_errors_cross_as_agent_errors(tmp_path: Path, sock_dir: Path) -> None:
    server = BridgeServer(f"unix:{sock_dir}/b.sock", PROBE, verbose=False)
    server.start()
    try:
        (tmp_path / "bad.json").write_text("{not json")
        with pytest.raises(BridgeAgentError, match="setup failed.*probe agent config"):
            client(tmp_path, server.address, str(tmp_path / "bad.json"))
        (tmp_path / "fail.json").write_text(json.dumps({"camera_size": list(SMALL), "fail_at_tick": 2}))
        agent = client(tmp_path, server.address, str(tmp_path / "fail.json"))
        tick(agent, 0)
        tick(agent, 1)
        with pytest.raises(BridgeAgentError, match="run_step failed.*failing at tick 2"):
            tick(agent, 2)  # raised at once, as it would be in-process
        agent.destroy()
        # a sensor value the bridge cannot carry is a bug on the 3.7 side: raised, not braked
        agent = client(tmp_path, server.address, str(tmp_path / "fail.json"))
        with pytest.raises(BridgeAgentError, match="cannot cross"):
            agent.run_step({"LIDAR": (0, object())}, 0.05)
        agent.destroy()
    finally:
        server.close()


def test_client_config_errors_are_clear(tmp_path: Path) -> None:
    for text, words in [("{", "cannot read"), ("[]", "not a JSON object"), ('{"adress": "x"}', "unknown key"),
                        ('{"agent_config": "x"}', "no 'address'"),
                        ('{"address": "unix:/x", "step_timeout": 0}', "positive"),
                        ('{"address": "unix:/x", "resize_threads": 0}', "resize_threads"),
                        ('{"address": "unix:/x", "shared_memory": 1}', "shared_memory")]:
        (tmp_path / "c.json").write_text(text)
        with pytest.raises(BridgeAgentError, match=words):
            read_client_config(str(tmp_path / "c.json"))
    with pytest.raises(BridgeAgentError, match="cannot read"):
        read_client_config(str(tmp_path / "missing.json"))


def test_launch_plan(tmp_path: Path, sock_dir: Path) -> None:
    bridge = launch.ShardBridge.plan(sock_dir, 1, 2000, "agent/vad_agent.py", "ckpt", gpu="3",
                                     step_timeout=12.0)
    assert bridge.address == f"unix:{sock_dir.resolve()}/bridge.sock"
    cfg = read_client_config(str(bridge.client_config))
    assert cfg["address"] == bridge.address and cfg["agent_config"] == "ckpt" and cfg["step_timeout"] == 12.0
    assert bridge.server_cmd[1:4] == ["-m", "carla_eval.bridge.server", "--listen"]
    assert bridge.server_cmd[bridge.server_cmd.index("--agent") + 1] == str(ROOT / "agent" / "vad_agent.py")
    assert bridge.env["CUDA_VISIBLE_DEVICES"] == "3"
    assert str(ROOT) in bridge.env["PYTHONPATH"].split(os.pathsep)
    assert bridge.fields() == {"agent": str(ROOT / "carla_eval" / "bridge" / "py37_agent.py"),
                               "checkpoint": str(bridge.client_config)}
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    assert launch.ShardBridge.plan(deep, 1, 2000, "a:B", "").address == "tcp:127.0.0.1:2018"  # 2000 + 10 + 8
    t0 = time.monotonic()
    with pytest.raises(UserError, match="no bridge driving server answered"):
        launch.wait_for_bridge(f"unix:{sock_dir}/none.sock", 0.5)
    assert time.monotonic() - t0 < 3.0
    dead = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    dead.wait()
    with pytest.raises(UserError, match="exited with code 3"):
        launch.wait_for_bridge(f"unix:{sock_dir}/none.sock", 5.0, dead)


def test_server_process_stops_cleanly_on_sigterm(sock_dir: Path, probe_cfg: str) -> None:
    bridge, sup = start_server_process(sock_dir, probe_cfg)
    try:
        first = bridge.proc
        bridge.start(sup)  # already running: kept
        assert bridge.proc is first
        first.send_signal(signal.SIGTERM)
        assert first.wait(timeout=10) == 0
        assert not (sock_dir / "bridge.sock").exists()  # no stale socket left for the next start
        log = (sock_dir / "bridge_1.log").read_text()
        assert "listening at unix:" in log and "carla_eval.bridge.probe_agent.ProbeAgent" in log
        bridge.start(sup, restart=True)
        assert bridge.proc is not first and (sock_dir / "bridge_2.log").exists()
        bridge.stop(sup)
        assert bridge.proc is None and not (sock_dir / "bridge.sock").exists()
    finally:
        sup.kill_all()


def test_shared_memory_refused_by_the_server_falls_back_to_the_socket(tmp_path: Path, sock_dir: Path,
                                                                      probe_cfg: str, monkeypatch) -> None:
    def refuse(self, msg: dict, n: int) -> tuple:
        return None, {"ok": False, "error": "not here"}

    monkeypatch.setattr(BridgeServer, "_attach", refuse)
    server = BridgeServer(f"unix:{sock_dir}/b.sock", PROBE, verbose=False)
    server.start()
    try:
        with_shm = client(tmp_path, server.address, probe_cfg)
        assert with_shm._region is None  # refused -> images through the socket
        plain = client(tmp_path, server.address, probe_cfg, shared_memory=False)
        assert controls_of(with_shm, 3) == controls_of(plain, 3)
        with_shm.destroy()
        plain.destroy()
    finally:
        server.close()


def controls_of(agent: BridgeAgent, n: int) -> list[tuple]:
    return [(c.steer, c.throttle, c.brake) for c in (tick(agent, i) for i in range(n))]


def test_carla_egg_and_evaluator_python_checks(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no Python 3.7 CARLA client egg"):
        launch.carla_egg(tmp_path)
    dist = tmp_path / "PythonAPI" / "carla" / "dist"
    dist.mkdir(parents=True)
    (dist / "carla-0.9.10-py3.7-linux-x86_64.egg").write_bytes(b"")
    assert launch.carla_egg(tmp_path).name == "carla-0.9.10-py3.7-linux-x86_64.egg"
    with pytest.raises(UserError, match="is Python 3.1"):  # this interpreter: 3.10+
        launch.check_evaluator_python(sys.executable)
    with pytest.raises(UserError, match="does not run"):
        launch.check_evaluator_python(str(tmp_path / "no_python"))
    with pytest.raises(UserError, match="--evaluator-python PATH"):
        launch.check_setup("", True, "")
    launch.check_setup("", False, str(tmp_path))  # stand-in evaluator: only the egg is checked
    fake = tmp_path / "python3.7"
    fake.write_text("#!/bin/sh\necho 3.7 1.21.6\n")
    fake.chmod(0o755)
    assert launch.check_evaluator_python(str(fake)) == "Python 3.7, numpy 1.21.6"
