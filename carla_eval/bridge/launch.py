"""What `carla_eval/run_evaluation.sh --carla-version 0.9.10.1` needs to run a shard through the bridge.

The launcher (carla_eval/launcher.py) calls, for CARLA 0.9.10.1 only:
- `check_setup(...)` in its validation: the evaluator's Python is 3.7 with numpy, CARLA has the 3.7 egg;
- per shard K, `ShardBridge.plan(...)`: the driving server's address (a Unix socket OUT/shard_K/bridge.sock,
  or loopback TCP on PORT_BASE + 10 K + 8 when that path is too long for the OS), its command line, and
  the 3.7-side agent's config OUT/shard_K/bridge_client.json (written here);
- `fields()`: the evaluator then runs `--agent carla_eval/bridge/py37_agent.py --agent-config
  OUT/shard_K/bridge_client.json`; `pythonpath(carla_root)`: the egg to put on the evaluator's PYTHONPATH;
- `start(sup, restart=...)` after each (re)start of CARLA server K and before each evaluator run: the
  driving server runs in its own process group through the launcher's Supervisor (log
  OUT/shard_K/bridge_N.log, the shard's GPU) and must answer the handshake within the timeout;
  `stop(sup)` at the end.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from carla_eval.bridge import protocol as P
from vlmad.errors import UserError
from vlmad.io import atomic_write_json

PROJECT_ROOT = Path(__file__).resolve().parents[2]
BRIDGE_AGENT = PROJECT_ROOT / "carla_eval" / "bridge" / "py37_agent.py"  # the evaluator's --agent
BRIDGE_PORT_OFFSET = 8  # TCP fallback: server K listens on port_base + 10 K + 8 (rpc +0, stream +1, tm +5)


def bridge_address(shard_dir: Path, tcp_port: int) -> str:
    """A Unix socket in the shard folder when its path fits the OS limit, else loopback TCP."""
    path = Path(shard_dir).resolve() / "bridge.sock"
    if len(str(path).encode()) <= 100:
        return f"unix:{path}"
    return f"tcp:127.0.0.1:{tcp_port}"


@dataclass
class ShardBridge:
    """The bridge of one shard: addresses, files, and its driving-server process."""

    address: str  # where the driving server listens
    client_config: Path  # the 3.7-side agent's --agent-config (JSON, protocol.CLIENT_CONFIG_DEFAULTS keys)
    server_cmd: list[str]  # command line of the driving server
    env: dict[str, str]  # its environment: PYTHONPATH = project root, CUDA_VISIBLE_DEVICES = the shard's GPU
    log_dir: Path  # bridge_N.log files go here
    timeout: float = 180.0  # bounded wait for the server's handshake after a start, seconds
    proc: subprocess.Popen | None = field(default=None, repr=False)
    starts: int = 0

    @classmethod
    def plan(cls, shard_dir: str | Path, shard: int, port_base: int, agent: str, agent_config: str,
             gpu: str = "", timeout: float = 180.0, python: str = "", resize: str = "bilinear",
             step_timeout: float = 30.0, setup_timeout: float = 300.0) -> ShardBridge:
        """Plan shard `shard`'s bridge and write its client config (OUT/shard_K/bridge_client.json).

        agent: the server-side agent (`--agent` of the launcher); a relative .py path is taken from the
        project root. agent_config: what that agent's setup() gets (the checkpoint folder or agent YAML).
        """
        shard_dir = Path(shard_dir)
        shard_dir.mkdir(parents=True, exist_ok=True)
        if agent.endswith(".py") and not Path(agent).is_absolute():
            agent = str(PROJECT_ROOT / agent)
        if agent_config and Path(agent_config).exists():
            agent_config = str(Path(agent_config).resolve())  # the server does not share the launcher's cwd
        address = bridge_address(shard_dir, port_base + 10 * shard + BRIDGE_PORT_OFFSET)
        cfg = dict(P.CLIENT_CONFIG_DEFAULTS, address=address, agent_config=agent_config,
                   step_timeout=float(step_timeout), setup_timeout=float(setup_timeout),
                   reconnect_window=30.0)  # this launcher restarts dead driving servers: wait for them
        client_config = shard_dir / "bridge_client.json"
        atomic_write_json(client_config, cfg, indent=2)
        cmd = [python or sys.executable, "-m", "carla_eval.bridge.server", "--listen", address, "--agent",
               agent, "--resize", resize]
        paths = [str(PROJECT_ROOT), os.environ.get("PYTHONPATH", "")]
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in paths if p))
        if gpu:
            env["CUDA_VISIBLE_DEVICES"] = gpu
        return cls(address, client_config, cmd, env, shard_dir, timeout)

    def fields(self) -> dict[str, str]:
        """Evaluator command fields that change under the bridge: {agent} and {checkpoint}."""
        return {"agent": str(BRIDGE_AGENT), "checkpoint": str(self.client_config)}

    @staticmethod
    def pythonpath(carla_root: str) -> list[str]:
        """What the 3.7 evaluator needs on PYTHONPATH besides the launcher's usual entries: the egg."""
        return [str(carla_egg(carla_root))] if carla_root else []

    def start(self, sup: Any, restart: bool = False) -> None:
        """Start the driving server through `sup` (the launcher's Supervisor: start(cmd, log, env), kill(p))
        unless it runs already (or always, with `restart`), and wait for its handshake."""
        if self.proc is not None and self.proc.poll() is None and not restart:
            return
        self.stop(sup)
        self.starts += 1
        log = self.log_dir / f"bridge_{self.starts}.log"
        self.proc = sup.start(self.server_cmd, log, env=self.env)
        wait_for_bridge(self.address, self.timeout, self.proc, str(log))

    def stop(self, sup: Any) -> None:
        if self.proc is not None:
            sup.kill(self.proc)
            self.proc = None


def check_setup(evaluator_python: str, real_evaluator: bool, carla_root: str) -> None:
    """Validation for --carla-version 0.9.10.1 (UserError with what to do)."""
    if real_evaluator:  # stand-in evaluators (tests) run in this Python
        if not evaluator_python:
            raise UserError("--carla-version 0.9.10.1 runs the leaderboard in Python 3.7: pass "
                            "--evaluator-python PATH (the conda environment of docs/bridge.md)")
        check_evaluator_python(evaluator_python)
    if carla_root:
        carla_egg(carla_root)


def ping(address: str, timeout: float) -> dict:
    """Connect and say hello; the server's hello reply (BridgeError when it does not answer properly)."""
    sock = P.connect(address, timeout)
    try:
        P.send_message(sock, {"op": "hello", "protocol": P.PROTOCOL_VERSION,
                              "project_version": P.PROJECT_VERSION, "peer": {"launcher": True}}, timeout)
        reply = P.recv_message(sock, timeout)
    finally:
        sock.close()
    if not isinstance(reply, dict) or not reply.get("ok"):
        raise P.BridgeError(reply.get("error") if isinstance(reply, dict) else f"bad reply {reply!r}")
    return reply


def wait_for_bridge(address: str, timeout: float, proc: subprocess.Popen | None = None,
                    log_hint: str = "") -> dict:
    """Block until the driving server at `address` answers a hello (bounded by `timeout` s)."""
    deadline = time.monotonic() + timeout
    last = "nothing listens there yet"
    see = f"; see {log_hint}" if log_hint else ""
    while True:
        if proc is not None and proc.poll() is not None:
            raise UserError(f"the bridge driving server exited with code {proc.returncode} while "
                            f"starting{see}")
        try:
            reply = ping(address, timeout=min(5.0, max(0.1, deadline - time.monotonic())))
        except (P.PeerGone, P.BridgeTimeout, OSError) as e:  # not up yet
            last = str(e)
        except P.BridgeError as e:  # it answered, but refused (version mismatch) or is not a bridge server
            raise UserError(f"the bridge driving server at {address} is not usable: {e}{see}") from None
        else:
            pid = (reply.get("peer") or {}).get("pid")
            if proc is None or pid == proc.pid:
                return reply
            raise UserError(f"another driving server (pid {pid}) already answers at {address}; stop it (left "
                            f"from an earlier run?) or use another --out{see}")
        if time.monotonic() >= deadline:
            raise UserError(f"no bridge driving server answered at {address} within {timeout:g} s "
                            f"({last}){see}")
        time.sleep(0.2)


def carla_egg(carla_root: str | Path) -> Path:
    """The Python 3.7 client of a CARLA 0.9.10.1 folder: PythonAPI/carla/dist/carla-0.9.10-py3.7-*.egg,
    which must be on the evaluator's PYTHONPATH (beside PythonAPI/carla for the `agents` package)."""
    dist = Path(carla_root).expanduser() / "PythonAPI" / "carla" / "dist"
    eggs = sorted(dist.glob("carla-*-py3.7-*.egg"))
    if not eggs:
        raise UserError(f"no Python 3.7 CARLA client egg in {dist} (expected carla-0.9.10-py3.7-linux-x86_64"
                        f".egg from CARLA_0.9.10.1.tar.gz); is --carla-root a CARLA 0.9.10.1 folder? See "
                        f"docs/bridge.md")
    return eggs[0]


def check_evaluator_python(python: str, timeout: float = 60.0) -> str:
    """The leaderboard-side interpreter must be Python 3.7 with numpy; returns its version, else UserError."""
    probe = "import sys, numpy; print('%d.%d' % sys.version_info[:2], numpy.__version__)"
    try:
        res = subprocess.run([python, "-c", probe], capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise UserError(f"--evaluator-python {python!r} does not run ({e}); create the Python 3.7 "
                        f"environment of docs/bridge.md") from None
    words = res.stdout.split()
    if res.returncode != 0 or len(words) != 2:
        raise UserError(f"--evaluator-python {python!r} cannot import numpy ({res.stderr.strip()[-300:]}); "
                        f"see docs/bridge.md for the Python 3.7 environment")
    if words[0] != "3.7":
        raise UserError(f"--evaluator-python {python!r} is Python {words[0]}; CARLA 0.9.10.1's client needs "
                        f"Python 3.7 (docs/bridge.md)")
    return f"Python {words[0]}, numpy {words[1]}"
