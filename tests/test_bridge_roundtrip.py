"""Full round trips over the bridge: 100 ticks, controls identical to calling the agent in-process."""

from __future__ import annotations

import json
import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from carla_eval.bridge import protocol as P
from carla_eval.bridge.probe_agent import ProbeAgent, synthetic_input, synthetic_route
from carla_eval.bridge.py37_agent import BridgeAgent, prepare_input
from carla_eval.bridge.server import BridgeServer, load_agent_class, make_agent
from vlmad.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
PROBE = "carla_eval.bridge.probe_agent:ProbeAgent"


@pytest.fixture
def sock_dir() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="vb", dir="/tmp"))  # short: Unix socket paths are limited to 107 B
    yield d
    shutil.rmtree(d, ignore_errors=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def client_config(path: Path, address: str, agent_config: str = "", **options: float) -> str:
    path.write_text(json.dumps({"address": address, "agent_config": agent_config, **options}))
    return str(path)


def controls(c) -> tuple:
    return (c.steer, c.throttle, c.brake, c.hand_brake, c.reverse)


def drive_both(agent_cls: type, agent_config: str, address: str, cfg_path: Path, ticks: int,
               camera_size: tuple[int, int], speed: float = 3.0,
               shared_memory: bool = True) -> tuple[list, list, BridgeAgent, object]:
    """Drive the same synthetic route through the bridge and in-process; (bridge, in-process) controls."""
    gps, world = synthetic_route()
    bridged = BridgeAgent(client_config(cfg_path, address, agent_config, step_timeout=60.0,
                                        shared_memory=shared_memory))
    local = make_agent(agent_cls, agent_config)
    assert bridged.sensors() == local.sensors()
    bridged.set_global_plan(gps, world)
    local.set_global_plan(gps, world)
    rng = np.random.default_rng(0)
    over, here = [], []
    for tick in range(ticks):
        data = synthetic_input(tick, rng, camera_size, speed=speed)
        t = 0.05 * (tick + 1)
        over.append(controls(bridged.run_step(data, t)))
        # the in-process agent sees what the server's agent sees: the images the 3.7 side resized
        here.append(controls(local.run_step(prepare_input(data, bridged._image_sizes, bridged._resize), t)))
    return over, here, bridged, local


@pytest.mark.parametrize("resize, shm, transport", [("bilinear", True, "unix"), ("nearest", False, "unix"),
                                                    ("bilinear", True, "tcp")])
def test_100_ticks_probe_agent_identical_over_the_bridge(tmp_path: Path, sock_dir: Path, resize: str,
                                                         shm: bool, transport: str) -> None:
    (tmp_path / "probe.json").write_text(json.dumps({"camera_size": [80, 45], "input_size": [32, 18]}))
    address = f"unix:{sock_dir}/b.sock" if transport == "unix" else f"tcp:127.0.0.1:{free_port()}"
    server = BridgeServer(address, PROBE, resize=resize, verbose=False)
    server.start()
    try:
        over, here, bridged, _ = drive_both(ProbeAgent, str(tmp_path / "probe.json"), server.address,
                                            tmp_path / "client.json", 100, (80, 45), shared_memory=shm)
        assert bridged._image_sizes["CAM_FRONT"] == (32, 18) and bridged._resize == resize
        assert (bridged._region is not None) == shm  # images went through /dev/shm, or the socket
        bridged.destroy()
    finally:
        server.close()
    assert over == here
    assert len(set(over)) > 90  # the probe's control is a checksum of its inputs: every tick differs
    assert not list(Path(P.SHM_DIR).glob(f"{P.SHM_PREFIX}{os.getpid()}_*"))  # nothing left in /dev/shm


def test_bridge_is_lossless_the_probe_notices_any_change(tmp_path: Path, sock_dir: Path) -> None:
    """Guard for the test above: had the bridge changed one pixel, the controls would differ."""
    a, b = ProbeAgent(""), ProbeAgent("")
    data = synthetic_input(0, np.random.default_rng(0), (16, 9))
    changed = {k: (f, v.copy() if isinstance(v, np.ndarray) else v) for k, (f, v) in data.items()}
    changed["CAM_BACK"][1][3, 4, 1] ^= 1
    assert controls(a.run_step(data, 0.05)) != controls(b.run_step(changed, 0.05))


def test_100_ticks_vad_agent_identical_over_the_bridge(tmp_path: Path, sock_dir: Path) -> None:
    """The real agent (agent/vad_agent.py) on a random-init vad_nano export, CPU."""
    from scripts.export_agent import main as export

    export(["--random-init", "--config", "vad_nano", "--out", str(tmp_path / "nano")])
    # camera_size != the model's input size, so the image resize path runs; a controller that never
    # brakes and ignores the route target makes every control a function of the model's plan
    (tmp_path / "agent.yaml").write_text(
        f"checkpoint: {tmp_path / 'nano'}\ndevice: cpu\ncamera_size: [320, 180]\nmodel_every: 10\n"
        "controller: {brake_speed: 0.0, brake_ratio: 1000000000.0, use_route_target: false, turn_kp: 0.02,\n"
        "  turn_ki: 0.0, turn_kd: 0.0, speed_kp: 0.05, speed_ki: 0.0, speed_kd: 0.0, clip_delta: 100.0}\n")
    cls = load_agent_class(str(ROOT / "agent" / "vad_agent.py"))
    server = BridgeServer(f"unix:{sock_dir}/b.sock", cls, verbose=False)
    server.start()
    try:
        over, here, bridged, local = drive_both(cls, str(tmp_path / "agent.yaml"), server.address,
                                                tmp_path / "client.json", 100, (320, 180), speed=0.5)
    finally:
        server.close()
    # the agent's input_image_sizes(): 320x180 cameras were resized to the model's 160x90 on the 3.7 side
    assert bridged._image_sizes["CAM_FRONT"] == (160, 90) and bridged._region is not None
    assert local.brake_reason is None  # it really drove (a sensor problem would brake every tick)
    assert over == here
    assert len({c[0] for c in over}) > 50  # unsaturated steering follows the model's plan: it varies
    bridged.destroy()
    local.destroy()


def test_destroy_reaches_the_server_agent(tmp_path: Path, sock_dir: Path) -> None:
    made: list[ProbeAgent] = []

    class Recording(ProbeAgent):
        def setup(self, path_to_conf_file: str) -> None:
            super().setup(path_to_conf_file)
            made.append(self)

    (tmp_path / "probe.json").write_text(json.dumps({"camera_size": [16, 9]}))
    server = BridgeServer(f"unix:{sock_dir}/b.sock", Recording, verbose=False)
    server.start()
    try:
        for _route in range(2):  # one server-side agent per route (connection)
            cfg = client_config(tmp_path / "c.json", server.address, str(tmp_path / "probe.json"))
            agent = BridgeAgent(cfg)
            agent.run_step(synthetic_input(0, np.random.default_rng(0), (16, 9)), 0.05)
            agent.destroy()
            agent.destroy()  # twice is harmless
    finally:
        server.close()
    assert len(made) == 2 and all(a.destroyed for a in made) and made[0] is not made[1]


def test_agent_loader_accepts_module_file_and_entry_point(tmp_path: Path) -> None:
    assert load_agent_class(PROBE) is ProbeAgent
    assert load_agent_class("carla_eval.bridge.probe_agent") is ProbeAgent  # get_entry_point()
    path = ROOT / "carla_eval" / "bridge" / "probe_agent.py"
    assert load_agent_class(str(path)).__name__ == "ProbeAgent"
    assert load_agent_class(f"{path}:ProbeAgent").__name__ == "ProbeAgent"
    for bad, words in [("no_such_module_xyz:A", "importing"), (f"{tmp_path}/none.py", "does not exist"),
                       ("carla_eval.bridge.probe_agent:Nope", "no class"), ("json", "get_entry_point"),
                       ("carla_eval.bridge.probe_agent:ProbeOptions", "no sensors")]:
        with pytest.raises(UserError, match=words):
            load_agent_class(bad)


def test_protocol_errors_are_bridge_errors() -> None:
    from carla_eval.bridge.py37_agent import BridgeAgentError

    assert issubclass(BridgeAgentError, P.BridgeError) and issubclass(BridgeAgentError, Exception)


FAKE_LEADERBOARD = {
    "leaderboard/__init__.py": "",
    "leaderboard/autoagents/__init__.py": "",
    # leaderboard 1.0's interface: the constructor calls setup(); Track enum; AgentError in agent_wrapper
    "leaderboard/autoagents/autonomous_agent.py": (
        "from enum import Enum\n"
        "class Track(Enum):\n    SENSORS = 'SENSORS'\n    MAP = 'MAP'\n"
        "class AutonomousAgent(object):\n"
        "    def __init__(self, path_to_conf_file):\n"
        "        self.track = Track.SENSORS\n        self.base_plans = 0\n"
        "        self.setup(path_to_conf_file)\n"
        "    def set_global_plan(self, gps, world):\n        self.base_plans += 1\n"),
    "leaderboard/autoagents/agent_wrapper.py": "class AgentError(Exception):\n    pass\n",
}


def test_under_the_leaderboard_it_is_an_autonomous_agent(tmp_path: Path, sock_dir: Path, monkeypatch) -> None:
    """Loaded by path with a leaderboard 1.0 on sys.path (a stand-in with its interface), as the evaluator
    does: the agent is an AutonomousAgent and its errors are AgentErrors."""
    import importlib
    import sys

    for rel, text in FAKE_LEADERBOARD.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.syspath_prepend(str(ROOT / "carla_eval" / "bridge"))
    for name in [m for m in sys.modules if m == "py37_agent" or m.startswith("leaderboard")]:
        monkeypatch.delitem(sys.modules, name)
    mod = importlib.import_module("py37_agent")
    from leaderboard.autoagents.agent_wrapper import AgentError
    from leaderboard.autoagents.autonomous_agent import AutonomousAgent, Track

    assert issubclass(mod.BridgeAgent, AutonomousAgent) and issubclass(mod.BridgeAgentError, AgentError)
    (tmp_path / "probe.json").write_text(json.dumps({"camera_size": [16, 9]}))
    server = BridgeServer(f"unix:{sock_dir}/b.sock", PROBE, verbose=False)
    server.start()
    try:
        agent_cls = getattr(mod, mod.get_entry_point())  # as leaderboard_evaluator.py builds it
        agent = agent_cls(client_config(tmp_path / "c.json", server.address, str(tmp_path / "probe.json")))
        assert agent.track is Track.SENSORS and len(agent.sensors()) == 9
        agent.set_global_plan(*synthetic_route())
        assert agent.base_plans == 1  # the base class keeps its own copy, as for any leaderboard agent
        c = agent.run_step(synthetic_input(0, np.random.default_rng(0), (16, 9)), 0.05)
        assert 0.0 <= c.throttle <= 1.0
        agent.destroy()
        with pytest.raises(AgentError, match="not reachable"):  # what the evaluator catches
            mod.BridgeAgent(client_config(tmp_path / "d.json", f"unix:{sock_dir}/none.sock"))
    finally:
        server.close()
        monkeypatch.delitem(sys.modules, "py37_agent")
