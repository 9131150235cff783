"""What `carla_eval/run_evaluation.sh --carla-version 0.9.10.1` needs to run a shard through the bridge.

Per shard K of a run in OUT:
- `shard_bridge(...)` -> BridgeShard: the driving server's address (a Unix socket in OUT/shard_K, or
  loopback TCP on PORT_BASE + 10 K + 8 when that path is too long), its command line, and the 3.7-side
  agent's config file OUT/shard_K/bridge_client.json (written here);
- the launcher starts `server_cmd` (its own process group, log OUT/shard_K/bridge_N.log) beside the CARLA
  server and calls `wait_for_bridge` before the evaluator; it restarts the bridge server whenever it
  restarts the CARLA server (or finds the bridge process dead);
- the evaluator then runs `--agent BRIDGE_AGENT --agent-config <client_config>` under the Python 3.7
  interpreter of the leaderboard environment (`--evaluator-python`).
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from carla_eval.bridge import protocol as P
from vlmad.errors import UserError
from vlmad.io import atomic_write_json

PROJECT_ROOT = Path(__file__).resolve().parents[2]
BRIDGE_AGENT = PROJECT_ROOT / "carla_eval" / "bridge" / "py37_agent.py"  # the evaluator's --agent
BRIDGE_PORT_OFFSET = 8  # TCP fallback: server K listens on port_base + 10 K + 8 (rpc +0, stream +1, tm +5)


@dataclass
class BridgeShard:
    """Everything one shard needs to drive through the bridge."""

    address: str  # where its driving server listens
    client_config: Path  # the 3.7-side agent's --agent-config (JSON, protocol.CLIENT_CONFIG_DEFAULTS keys)
    server_cmd: list[str]  # command line of the driving server (run with PYTHONPATH = project root)


def bridge_address(shard_dir: Path, tcp_port: int) -> str:
    """A Unix socket in the shard folder when its path fits the OS limit, else loopback TCP."""
    path = Path(shard_dir).resolve() / "bridge.sock"
    if len(str(path).encode()) <= 100:
        return f"unix:{path}"
    return f"tcp:127.0.0.1:{tcp_port}"


def shard_bridge(shard_dir: Path, shard: int, port_base: int, agent: str, agent_config: str,
                 python: str = "", resize: str = "bilinear", step_timeout: float = 30.0,
                 setup_timeout: float = 300.0) -> BridgeShard:
    """Plan shard `shard`'s bridge and write its client config (OUT/shard_K/bridge_client.json)."""
    shard_dir = Path(shard_dir)
    address = bridge_address(shard_dir, port_base + 10 * shard + BRIDGE_PORT_OFFSET)
    if agent_config and Path(agent_config).exists():
        agent_config = str(Path(agent_config).resolve())  # the server may run from another folder
    cfg = dict(P.CLIENT_CONFIG_DEFAULTS, address=address, agent_config=agent_config,
               step_timeout=float(step_timeout), setup_timeout=float(setup_timeout))
    client_config = shard_dir / "bridge_client.json"
    atomic_write_json(client_config, cfg, indent=2)
    cmd = [python or sys.executable, "-m", "carla_eval.bridge.server", "--listen", address, "--agent", agent,
           "--resize", resize]
    return BridgeShard(address, client_config, cmd)


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
    while True:
        if proc is not None and proc.poll() is not None:
            raise UserError(f"the bridge driving server exited with code {proc.returncode} while starting"
                            f"{'; see ' + log_hint if log_hint else ''}")
        try:
            return ping(address, timeout=min(5.0, max(0.1, deadline - time.monotonic())))
        except (P.PeerGone, P.BridgeTimeout, ConnectionError, socket.timeout) as e:
            last = str(e)
        except P.BridgeError as e:  # it answered but refused: a version mismatch is not worth waiting for
            raise UserError(f"the bridge driving server at {address} refused the launcher: {e}") from None
        if time.monotonic() >= deadline:
            raise UserError(f"no bridge driving server answered at {address} within {timeout:g} s ({last})"
                            f"{'; see ' + log_hint if log_hint else ''}")
        time.sleep(0.2)
