"""Driving server of the agent bridge: runs the project's agent for a Python 3.7 leaderboard next door.

    python -m carla_eval.bridge.server --listen unix:/tmp/vlmad_bridge.sock --agent agent/vad_agent.py

The leaderboard of the benchmark's CARLA 0.9.10.1 runs `carla_eval/bridge/py37_agent.py` in Python 3.7;
that agent connects here once per route and forwards setup, sensors, the route plan, every tick's
sensor data, and destroy (protocol.py: JSON header + raw numpy buffers, no pickle). For each connection
this server builds one agent (leaderboard rules: one agent per route) and answers every call with what
the agent returns.

`--agent` names any leaderboard agent class: `package.module:Class`, `path/to/file.py:Class`, or a module
or file with `get_entry_point()`. The class is built as leaderboard 1.0 does, `Class(path_to_conf_file)`
(its constructor calls `setup`), or `Class()` then `setup(path)` when the constructor takes no argument.

Images: when the agent has `input_image_sizes() -> {camera id: (width, height)}`, the client is asked to
resize those cameras on its side (numpy, `--resize`), so only the pixels the model uses cross the bridge;
otherwise the images arrive at the size `sensors()` asked for.
"""

from __future__ import annotations

import argparse
import inspect
import os
import signal
import socket
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np

from agent.compat import load_agent_class
from carla_eval.bridge import protocol as P
from vlmad.commands import RoadOption
from vlmad.errors import UserError, cli_main

HELLO_TIMEOUT = 10.0  # a connection must say hello this fast (anything else is not our client)
REPLY_TIMEOUT = 60.0  # sending one reply (the client reads at once; this only bounds a stuck peer)


# ----------------------------------------------------------------------------------------------------
# agents
# ----------------------------------------------------------------------------------------------------
def make_agent(cls: type, config: str) -> Any:
    """Build one agent as leaderboard 1.0 does (constructor calls setup) or Class() + setup(config)."""
    required = [p for p in inspect.signature(cls).parameters.values()
                if p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if len(required) == 1:
        return cls(config)
    if not required:
        agent = cls()
        agent.setup(config)
        return agent
    raise UserError(f"{cls.__name__}'s constructor takes {[p.name for p in required]}; the bridge builds "
                    f"agents as Class(path_to_conf_file) (leaderboard 1.0) or Class()")


def image_sizes(agent: Any, sensors: list[dict]) -> dict[str, list[int]]:
    """Camera id -> [width, height] the client must send (the agent's input size, else the sensor's)."""
    sizes = {str(s["id"]): [int(s["width"]), int(s["height"])] for s in sensors
             if s.get("type") == "sensor.camera.rgb"}  # never resample depth / segmentation labels
    hook = getattr(agent, "input_image_sizes", None)
    if callable(hook):
        for cam, (w, h) in dict(hook()).items():
            if str(cam) in sizes:
                sizes[str(cam)] = [int(w), int(h)]
    return sizes


def plan_objects(msg: dict) -> tuple[list, list]:
    """The `plan` message -> ([({lat, lon, z}, RoadOption)], [(carla.Transform, RoadOption)])."""
    import carla  # the project's client (PyPI); only its plain value types are used here

    gps, world = np.asarray(msg["gps"], np.float64), np.asarray(msg["world"], np.float64)
    gps_plan = [({"lat": float(r[0]), "lon": float(r[1]), "z": float(r[2])}, RoadOption(int(o)))
                for r, o in zip(gps, msg["gps_options"])]
    world_plan = [(carla.Transform(carla.Location(x=float(r[0]), y=float(r[1]), z=float(r[2])),
                                   carla.Rotation(pitch=float(r[4]), yaw=float(r[5]), roll=float(r[3]))),
                   RoadOption(int(o))) for r, o in zip(world, msg["world_options"])]
    return gps_plan, world_plan


def control_dict(control: Any) -> dict:
    """carla.VehicleControl (or anything with its attributes) -> the reply's control."""
    return {"steer": float(control.steer), "throttle": float(control.throttle), "brake": float(control.brake),
            "hand_brake": bool(getattr(control, "hand_brake", False)),
            "reverse": bool(getattr(control, "reverse", False))}


def _error(e: BaseException, what: str) -> dict:
    return {"ok": False, "error": f"{what} raised {type(e).__name__}: {e}", "kind": type(e).__name__}


# ----------------------------------------------------------------------------------------------------
# server
# ----------------------------------------------------------------------------------------------------
class BridgeServer:
    """Listens at `address`; one thread and one agent per connection (= per route)."""

    def __init__(self, address: str, agent: str | type, resize: str = "bilinear",
                 idle_timeout: float = 3600.0, protocol_version: int = P.PROTOCOL_VERSION,
                 project_version: str = P.PROJECT_VERSION, verbose: bool = True) -> None:
        if resize not in P.RESIZE_METHODS:
            raise UserError(f"--resize {resize!r}: expected one of {P.RESIZE_METHODS}")
        self.address = address
        self.agent_cls = agent if isinstance(agent, type) else load_agent_class(agent)
        self.resize = resize
        self.idle_timeout = idle_timeout
        self.versions = (protocol_version, project_version)
        self.verbose = verbose
        self.family, self.sockaddr = P.parse_address(address)
        self.listener: socket.socket | None = None
        self.stopping = threading.Event()
        self.threads: list[threading.Thread] = []
        self.n_conn = 0

    def log(self, msg: str) -> None:
        if self.verbose:
            print(f"[bridge {time.strftime('%H:%M:%S')}] {msg}", flush=True)

    # ---- lifecycle ----------------------------------------------------------------------------------
    def bind(self) -> None:
        if self.family == socket.AF_UNIX:
            path = str(self.sockaddr)
            if os.path.exists(path):
                probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                try:
                    probe.settimeout(1.0)
                    probe.connect(path)
                except OSError:
                    os.unlink(path)  # stale socket file of a server that died
                else:
                    raise UserError(f"another program already listens at {self.address}; stop it or choose "
                                    f"another --listen address")
                finally:
                    probe.close()
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        sock = socket.socket(self.family, socket.SOCK_STREAM)
        if self.family != socket.AF_UNIX:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(self.sockaddr)
        except OSError as e:
            sock.close()
            raise UserError(f"cannot listen at {self.address}: {e.strerror or e}") from None
        sock.listen(8)
        self.listener = sock
        self.log(f"listening at {self.address}; agent {self.agent_cls.__module__}.{self.agent_cls.__name__}; "
                 f"protocol {self.versions[0]}, project {self.versions[1]}; resize {self.resize}")

    def serve_forever(self) -> None:
        if self.listener is None:
            self.bind()
        self.listener.settimeout(0.2)  # wake up to notice `stopping`
        while not self.stopping.is_set():
            try:
                conn, _ = self.listener.accept()
            except socket.timeout:  # noqa: UP041 - explicit: the listener's own timeout
                continue
            except OSError:
                if self.stopping.is_set():
                    break
                raise
            self.n_conn += 1
            t = threading.Thread(target=self._serve, args=(conn, self.n_conn), name=f"bridge-{self.n_conn}",
                                 daemon=True)
            t.start()
            self.threads = [x for x in self.threads if x.is_alive()] + [t]

    def start(self) -> threading.Thread:
        """Bind now and serve in a background thread (tests, benchmarks)."""
        self.bind()
        t = threading.Thread(target=self.serve_forever, name="bridge-accept", daemon=True)
        t.start()
        return t

    def close(self) -> None:
        self.stopping.set()
        if self.listener is not None:
            self.listener.close()
            self.listener = None
        if self.family == socket.AF_UNIX and os.path.exists(str(self.sockaddr)):
            try:
                os.unlink(str(self.sockaddr))
            except OSError:
                pass

    # ---- one connection = one route ----------------------------------------------------------------
    def _serve(self, conn: socket.socket, n: int) -> None:
        if self.family != socket.AF_UNIX:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        agent = None
        region = None  # shared memory the client put its camera images in (op "shm")
        try:
            if not self._hello(conn, n):
                return
            while True:
                msg = P.recv_message(conn, self.idle_timeout, region)
                op = msg.get("op") if isinstance(msg, dict) else None
                if op == "step":
                    reply = self._step(agent, msg)
                elif op == "shm":
                    if region is not None:
                        region.close()
                    region, reply = self._attach(msg, n)
                elif op == "setup":
                    if agent is not None:
                        reply = {"ok": False, "error": "setup twice on one connection (one agent per route)"}
                    else:
                        agent, reply = self._setup(msg, n)
                elif op == "plan":
                    reply = self._plan(agent, msg)
                elif op == "destroy":
                    self._destroy(agent, n)
                    agent = None
                    P.send_message(conn, {"ok": True}, REPLY_TIMEOUT)
                    return
                else:
                    reply = {"ok": False, "error": f"unknown request {op!r}"}
                P.send_message(conn, reply, REPLY_TIMEOUT)
        except P.PeerGone:
            if agent is not None:
                self.log(f"connection {n}: the 3.7 side left without destroy")
        except P.BridgeTimeout:
            self.log(f"connection {n}: no request for {self.idle_timeout:g} s; dropping the agent")
        except P.ProtocolError as e:
            self.log(f"connection {n}: protocol error: {e}")
        finally:
            if agent is not None:
                self._destroy(agent, n)
            if region is not None:
                region.close()
            conn.close()

    def _attach(self, msg: dict, n: int) -> tuple[P.SharedRegion | None, dict]:
        try:
            region = P.SharedRegion(str(msg["path"]), int(msg["size"]), create=False)
        except (P.BridgeError, OSError, KeyError, ValueError) as e:
            self.log(f"connection {n}: shared memory refused: {e}")
            return None, {"ok": False, "error": f"cannot map {msg.get('path')!r}: {e}"}
        region.unlink()  # mapped on both sides now: the memory goes away with the last mapping
        return region, {"ok": True}

    def _hello(self, conn: socket.socket, n: int) -> bool:
        msg = P.recv_message(conn, HELLO_TIMEOUT)
        if not isinstance(msg, dict) or msg.get("op") != "hello":
            P.send_message(conn, {"ok": False, "error": "expected hello"}, REPLY_TIMEOUT)
            return False
        reply = {"ok": True, "protocol": self.versions[0], "project_version": self.versions[1],
                 "peer": {"python": sys.version.split()[0], "pid": os.getpid(),
                          "agent": f"{self.agent_cls.__module__}:{self.agent_cls.__name__}"}}
        problem = P.handshake_problem(msg.get("protocol", -1), str(msg.get("project_version", "?")),
                                      *self.versions)
        if problem:
            reply.update(ok=False, error=problem)
            self.log(f"connection {n} refused: {problem}")
        P.send_message(conn, reply, REPLY_TIMEOUT)
        return problem is None

    def _setup(self, msg: dict, n: int) -> tuple[Any, dict]:
        config = str(msg.get("config", ""))
        t0 = time.perf_counter()
        try:
            agent = make_agent(self.agent_cls, config)
            sensors = [dict(s) for s in agent.sensors()]
            sizes = image_sizes(agent, sensors)
        except Exception as e:  # noqa: BLE001 - reported to the 3.7 side, which fails the route
            self.log(f"connection {n}: agent setup failed:\n{traceback.format_exc()}")
            return None, _error(e, f"{self.agent_cls.__name__} setup({config!r})")
        track = getattr(agent, "track", "SENSORS")
        track = str(getattr(track, "value", track))
        self.log(f"connection {n}: agent ready in {time.perf_counter() - t0:.1f} s ({config}); images "
                 f"{ {k: f'{w}x{h}' for k, (w, h) in sizes.items()} }")
        return agent, {"ok": True, "sensors": sensors, "images": sizes, "resize": self.resize, "track": track,
                       "shm": P.shm_available()}

    def _plan(self, agent: Any, msg: dict) -> dict:
        if agent is None:
            return {"ok": False, "error": "set_global_plan before setup"}
        try:
            gps_plan, world_plan = plan_objects(msg)
            agent.set_global_plan(gps_plan, world_plan)
        except Exception as e:  # noqa: BLE001
            self.log(f"set_global_plan failed:\n{traceback.format_exc()}")
            return _error(e, f"{self.agent_cls.__name__}.set_global_plan")
        return {"ok": True}

    def _step(self, agent: Any, msg: dict) -> dict:
        if agent is None:
            return {"ok": False, "error": "run_step before setup"}
        try:
            control = agent.run_step(msg["input"], msg["timestamp"])
            return {"ok": True, "control": control_dict(control)}
        except Exception as e:  # noqa: BLE001 - the 3.7 side raises it (as in-process: "Agent crashed")
            self.log(f"run_step failed:\n{traceback.format_exc()}")
            return _error(e, f"{self.agent_cls.__name__}.run_step")

    def _destroy(self, agent: Any, n: int) -> None:
        if agent is None:
            return
        try:
            agent.destroy()
        except Exception:  # noqa: BLE001 - a failing destroy must not take the server down
            self.log(f"connection {n}: destroy failed:\n{traceback.format_exc()}")
        self.log(f"connection {n}: agent destroyed")


# ----------------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m carla_eval.bridge.server", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--listen", required=True, help="unix:/path/to.sock (preferred) or tcp:127.0.0.1:PORT")
    ap.add_argument("--agent", default="agent/vad_agent.py",
                    help="agent class: pkg.module:Class, path/file.py[:Class] (default agent/vad_agent.py)")
    ap.add_argument("--resize", choices=P.RESIZE_METHODS, default="bilinear",
                    help="how the 3.7 side resizes camera images (default bilinear: OpenCV INTER_LINEAR "
                         "within 1 grey level; nearest is cheaper)")
    ap.add_argument("--idle-timeout", type=float, default=3600.0,
                    help="drop a route's agent after this many seconds without a request (default 3600)")
    args = ap.parse_args(argv)
    server = BridgeServer(args.listen, args.agent, resize=args.resize, idle_timeout=args.idle_timeout)

    def stop(signum: int, frame: Any) -> None:
        server.close()

    for s in (signal.SIGTERM, signal.SIGINT):
        signal.signal(s, stop)
    try:
        server.serve_forever()
    finally:
        server.close()
    return 0


if __name__ == "__main__":
    cli_main(main)
