"""Leaderboard agent for the benchmark's CARLA 0.9.10.1 (Python 3.7) that drives through the bridge.

    python leaderboard/leaderboard_evaluator.py ... \\
        --agent=/path/to/project/carla_eval/bridge/py37_agent.py --agent-config=OUT/shard_0/bridge_client.json

Runs in the leaderboard's own environment: Python 3.7, the standard library and numpy only (carla and
the leaderboard are used when importable, never required to import this file). Every call is forwarded
to the driving server (`python -m carla_eval.bridge.server`, the project's Python), which runs the real
agent; the wire format is `protocol.py` beside this file (length-prefixed JSON header + raw numpy
buffers, no pickle). Camera images are resized here to the size the server asked for in `setup`.

Failure handling (never a hang: every call is bounded by the timeouts of the config file):
- setup: no server, a version mismatch or a failing agent setup raise `BridgeAgentError` (a subclass of
  the leaderboard's AgentError when it is importable): the route is recorded "Agent couldn't be set up";
- run_step: the server dying or not answering within `step_timeout` -> this tick returns a full brake,
  the next tick raises `BridgeAgentError` so the leaderboard stops the route as "Agent crashed" with the
  message; an exception of the server-side agent is raised at once (as it would be in-process);
- destroy: bounded by `destroy_timeout`, never raises.

The config file (--agent-config) is JSON with the keys of `protocol.CLIENT_CONFIG_DEFAULTS`.
Keep this file Python 3.7-compatible (tests/test_bridge_compat.py runs vermin on it).
"""

import importlib.util
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

try:  # imported as carla_eval.bridge.py37_agent (the project's tests, the benchmark script)
    from . import protocol as P
except ImportError:  # loaded by file path, as the leaderboard does: load the sibling file privately
    _spec = importlib.util.spec_from_file_location(
        "_vlmad_bridge_protocol", os.path.join(os.path.dirname(os.path.abspath(__file__)), "protocol.py"))
    P = importlib.util.module_from_spec(_spec)
    sys.modules[_spec.name] = P
    _spec.loader.exec_module(P)

try:
    import carla
except ImportError:  # outside a CARLA environment (tests): controls are plain objects
    carla = None

try:
    from leaderboard.autoagents.autonomous_agent import AutonomousAgent, Track
except ImportError:
    AutonomousAgent, Track = None, None

try:
    from leaderboard.autoagents.agent_wrapper import AgentError as _AgentErrorBase
except ImportError:
    _AgentErrorBase = RuntimeError


def get_entry_point():
    return "BridgeAgent"


class BridgeAgentError(_AgentErrorBase, P.BridgeError):
    """The bridge failed; the leaderboard records the route as failed with this message."""


class Control(object):
    """carla.VehicleControl stand-in when the carla module is absent (same attribute names)."""

    def __init__(self, throttle=0.0, steer=0.0, brake=0.0, hand_brake=False, reverse=False):
        self.throttle, self.steer, self.brake = throttle, steer, brake
        self.hand_brake, self.reverse = hand_brake, reverse
        self.manual_gear_shift, self.gear = False, 0

    def __repr__(self):
        return ("Control(throttle={}, steer={}, brake={}, hand_brake={}, reverse={})"
                .format(self.throttle, self.steer, self.brake, self.hand_brake, self.reverse))


def make_control(throttle=0.0, steer=0.0, brake=0.0, hand_brake=False, reverse=False):
    """A carla.VehicleControl (or `Control` without carla) from plain values."""
    cls = carla.VehicleControl if carla is not None else Control
    return cls(throttle=float(throttle), steer=float(steer), brake=float(brake), hand_brake=bool(hand_brake),
               reverse=bool(reverse))


def full_brake():
    return make_control(throttle=0.0, steer=0.0, brake=1.0)


def read_client_config(path):
    """The bridge config file (JSON) -> dict with every key of CLIENT_CONFIG_DEFAULTS."""
    hint = ("the bridge agent's --agent-config must be the JSON file written by carla_eval/run_evaluation.sh "
            "--carla-version 0.9.10.1 (keys: {}); see docs/bridge.md"
            .format(", ".join(P.CLIENT_CONFIG_DEFAULTS)))
    try:
        with open(path) as f:
            raw = json.load(f)
    except (OSError, ValueError) as e:
        raise BridgeAgentError("cannot read the bridge config {!r} ({}); {}".format(path, e, hint)) from None
    if not isinstance(raw, dict):
        raise BridgeAgentError("bridge config {!r} is not a JSON object; {}".format(path, hint))
    unknown = sorted(set(raw) - set(P.CLIENT_CONFIG_DEFAULTS))
    if unknown:
        raise BridgeAgentError("bridge config {!r}: unknown key(s) {}; {}".format(path, unknown, hint))
    cfg = dict(P.CLIENT_CONFIG_DEFAULTS)
    cfg.update(raw)
    if not cfg["address"]:
        raise BridgeAgentError("bridge config {!r} has no 'address'; {}".format(path, hint))
    for key, val in cfg.items():
        if (key.endswith("_timeout") or key == "reconnect_window") and not (
                isinstance(val, (int, float)) and val > 0):
            raise BridgeAgentError("bridge config {!r}: {} must be a positive number of seconds"
                                   .format(path, key))
    if not isinstance(cfg["resize_threads"], int) or cfg["resize_threads"] < 1:
        raise BridgeAgentError("bridge config {!r}: resize_threads must be an integer >= 1".format(path))
    if not isinstance(cfg["shared_memory"], bool):
        raise BridgeAgentError("bridge config {!r}: shared_memory must be true or false".format(path))
    return cfg


def _option_value(option):
    """RoadOption (enum of agents.navigation.local_planner) or int -> int."""
    return int(getattr(option, "value", option))


def encode_plan(global_plan_gps, global_plan_world_coord):
    """The leaderboard's route plans -> arrays that cross the bridge (carla.Transform cannot).

    gps: (N, 3) float64 [lat, lon, z]; world: (N, 6) float64 [x, y, z, roll, pitch, yaw] (CARLA frame,
    degrees); options: (N,) int64 RoadOption values.
    """
    gps = np.array([[p["lat"], p["lon"], p["z"]] for p, _ in global_plan_gps], dtype=np.float64)
    gps = gps.reshape(-1, 3)
    world = np.array([[t.location.x, t.location.y, t.location.z, t.rotation.roll, t.rotation.pitch,
                       t.rotation.yaw] for t, _ in global_plan_world_coord], dtype=np.float64).reshape(-1, 6)
    return {"op": "plan", "gps": gps, "gps_options": np.array([_option_value(o) for _, o in global_plan_gps],
                                                              dtype=np.int64),
            "world": world, "world_options": np.array([_option_value(o) for _, o in global_plan_world_coord],
                                                      dtype=np.int64)}


def prepare_input(input_data, image_sizes, method, resizers=None, dest=None, pool=None):
    """input_data with every camera named in `image_sizes` resized to its (width, height), numpy only.

    `resizers` (a dict kept by the caller) caches one P.Resizer and its output buffer per camera: the
    output is overwritten by the next call, which is fine for data that is sent and then dropped.
    `dest(key, shape)` may return an array to write camera `key` into (shared memory), or None.
    `pool` (a concurrent.futures executor) resizes the cameras in parallel: numpy releases the GIL.
    """
    out = dict(input_data)
    jobs = []
    for key, value in input_data.items():
        size = image_sizes.get(key)
        data = value[1] if isinstance(value, tuple) and len(value) == 2 else None
        if size is None or not isinstance(data, np.ndarray) or data.ndim != 3 or data.dtype != np.uint8:
            continue
        w, h = int(size[0]), int(size[1])
        target = dest(key, (h, w) + data.shape[2:]) if dest is not None else None
        if (data.shape[1], data.shape[0]) == (w, h):
            if target is not None:
                np.copyto(target, data)
                out[key] = (value[0], target)
            continue
        resizer, buf = _resizer(resizers, key, data.shape, w, h, method)
        jobs.append((key, value[0], resizer, data, target if target is not None else buf))

    def run(job):
        key, frame, resizer, data, buf = job
        return key, (frame, resizer(data, buf))

    done = pool.map(run, jobs) if pool is not None and len(jobs) > 1 else map(run, jobs)
    for key, value in done:
        out[key] = value
    return out


def _resizer(cache, key, shape, w, h, method):
    """(P.Resizer, its output buffer or None) for camera `key`, cached in `cache` (a dict, or None)."""
    if cache is None:
        return P.Resizer(shape, w, h, method), None
    cached = cache.get(key)
    if cached is None or (cached[0].shape, cached[0].width, cached[0].height, cached[0].method) \
            != (tuple(shape), w, h, method):
        r = P.Resizer(shape, w, h, method)
        cached = cache[key] = (r, np.empty(r.out_shape, np.uint8))
    return cached


_Base = AutonomousAgent if AutonomousAgent is not None else object


class BridgeAgent(_Base):
    """Leaderboard agent whose every call runs on the driving server (one server-side agent per route)."""

    def __init__(self, path_to_conf_file, *args, **kwargs):
        self._sock = None
        self._failure = None
        self._sensors = []
        self._image_sizes = {}
        self._resize = "bilinear"
        self._resizers = {}
        self._region = None  # shared memory for camera images (P.SharedRegion), when both sides can
        self._layout = {}  # camera id -> (byte offset in a slot, shape)
        self._slot_bytes = 0
        self._ticks = 0
        self._pool = None  # threads resizing the cameras in parallel (config resize_threads)
        self.server_info = {}
        if AutonomousAgent is not None:
            # leaderboard 1.0: the base constructor calls setup(path_to_conf_file)
            AutonomousAgent.__init__(self, path_to_conf_file, *args, **kwargs)
        else:
            self.track = "SENSORS"
            self._global_plan = None
            self._global_plan_world_coord = None
            self.setup(path_to_conf_file)

    # ---- transport ---------------------------------------------------------------------------------
    def _request(self, msg, timeout):
        """Send `msg`, return the reply; P.BridgeError subclasses on transport failures."""
        return self._exchange(P.encode(msg), timeout)

    def _exchange(self, frame, timeout):
        """Send an encoded message (head, chunks) and return the reply, all within `timeout` s."""
        if self._sock is None:
            raise P.PeerGone("not connected to the driving server")
        P.send_frame(self._sock, frame[0], frame[1], timeout)
        reply = P.recv_message(self._sock, timeout, self._region)
        if not isinstance(reply, dict) or "ok" not in reply:
            raise P.ProtocolError("malformed reply from the driving server: {!r}".format(reply)[:300])
        return reply

    def _close(self):
        if self._pool is not None:
            self._pool.shutdown(wait=False)
            self._pool = None
        if self._region is not None:
            self._region.close()
            self._region = None
        if self._sock is not None:
            try:
                self._sock.close()
            except OSError:
                pass
            self._sock = None

    def _fail(self, msg):
        self._close()
        raise BridgeAgentError(msg)

    def _connect_and_hello(self, address):
        """Connect and exchange the hello; the server's reply. A refused connection, or one closed before
        the reply, is retried for `reconnect_window` s, each attempt bounded by `connect_timeout`: the
        launcher restarts a dead driving server (it asks for 30 s), and a server that is being killed can
        still accept into its backlog and then reset the connection as it goes (seen on a loaded machine).
        With no server at all this fails after the window."""
        hello = {"op": "hello", "protocol": P.PROTOCOL_VERSION, "project_version": P.PROJECT_VERSION,
                 "peer": {"python": sys.version.split()[0], "numpy": np.__version__, "pid": os.getpid(),
                          "carla": getattr(carla, "__file__", None) if carla is not None else None}}
        timeout = self.config["connect_timeout"]
        retry_until = time.monotonic() + self.config["reconnect_window"]
        while True:
            try:
                self._sock = P.connect(address, timeout)
                return self._request(hello, timeout)
            except P.PeerGone:
                self._close()
                if time.monotonic() + 0.2 >= retry_until:
                    raise
                time.sleep(0.2)

    # ---- leaderboard API ---------------------------------------------------------------------------
    def setup(self, path_to_conf_file):
        self.config = read_client_config(path_to_conf_file)
        address = self.config["address"]
        try:
            reply = self._connect_and_hello(address)
        except P.BridgeError as e:
            self._fail("driving server at {} not reachable: {}. Start it with `python -m "
                       "carla_eval.bridge.server --listen {} --agent AGENT` "
                       "(carla_eval/run_evaluation.sh --carla-version "
                       "0.9.10.1 does this); see docs/bridge.md".format(address, e, address))
        if "protocol" not in reply or "project_version" not in reply:
            self._fail("the program at {} is not a compatible driving server (hello reply {!r})"
                       .format(address, reply)[:500])
        problem = P.handshake_problem(P.PROTOCOL_VERSION, P.PROJECT_VERSION, reply["protocol"],
                                      reply["project_version"])
        if problem or not reply["ok"]:
            self._fail(problem or "driving server refused the connection: {}".format(reply.get("error")))
        self.server_info = reply
        try:
            reply = self._request({"op": "setup", "config": self.config["agent_config"]},
                                  self.config["setup_timeout"])
        except P.BridgeError as e:
            self._fail("driving server at {}: agent setup failed: {}".format(address, e))
        if not reply["ok"]:
            self._fail("driving server: agent setup failed: {}".format(reply.get("error")))
        self._sensors = list(reply["sensors"])
        self._image_sizes = {k: tuple(v) for k, v in reply["images"].items()}
        self._resize = reply["resize"]
        if Track is not None:
            self.track = Track[reply.get("track", "SENSORS")]
        if self.config["shared_memory"] and reply.get("shm") and self._image_sizes and P.shm_available():
            self._attach_shared_memory()

    def _attach_shared_memory(self):
        """Two slots of camera images (BGRA at the asked size) in /dev/shm; ticks alternate between them,
        so an image handed to the server-side agent stays unchanged for two ticks."""
        offset = 0
        for key in sorted(self._image_sizes):
            w, h = self._image_sizes[key]
            offset += -offset % P.ALIGN
            self._layout[key] = (offset, (int(h), int(w), 4))
            offset += int(h) * int(w) * 4
        self._slot_bytes = offset + (-offset % P.ALIGN)
        try:
            region = P.SharedRegion.create(2 * self._slot_bytes)
        except (OSError, P.BridgeError) as e:  # e.g. /dev/shm full: the socket carries the images instead
            self._layout = {}
            sys.stderr.write("[bridge] no shared memory ({}); sending images through the socket\n".format(e))
            return
        try:
            reply = self._request({"op": "shm", "path": region.path, "size": region.size},
                                  self.config["connect_timeout"])
        except P.BridgeError as e:
            region.close()
            region.unlink()
            self._fail("driving server at {}: attaching shared memory failed: {}"
                       .format(self.config["address"], e))
        region.unlink()  # both sides have it mapped (or the server said no): the name is no longer needed
        if reply["ok"]:
            self._region = region
        else:  # e.g. the server runs in another container: images go through the socket instead
            region.close()
            self._layout = {}
            sys.stderr.write("[bridge] shared memory refused ({}); sending images through the socket\n"
                             .format(reply.get("error")))

    def _shared_slot(self, key, shape):
        """Where camera `key` goes this tick, or None (not in the layout, or another shape)."""
        spot = self._layout.get(key)
        if spot is None or spot[1] != tuple(shape):
            return None
        return self._region.view((self._ticks % 2) * self._slot_bytes + spot[0], spot[1])

    def sensors(self):
        return [dict(s) for s in self._sensors]

    def set_global_plan(self, global_plan_gps, global_plan_world_coord):
        if AutonomousAgent is not None:  # keep the base class's own (downsampled) copy as well
            AutonomousAgent.set_global_plan(self, global_plan_gps, global_plan_world_coord)
        else:
            self._global_plan, self._global_plan_world_coord = global_plan_gps, global_plan_world_coord
        if self._failure is not None:
            return
        try:
            reply = self._request(encode_plan(global_plan_gps, global_plan_world_coord),
                                  self.config["step_timeout"])
        except P.BridgeError as e:  # reported on the first tick: the leaderboard then fails the route
            self._lost(e)
            return
        if not reply["ok"]:
            self._failure = "driving server: set_global_plan failed: {}".format(reply.get("error"))

    def run_step(self, input_data, timestamp):
        if self._failure is not None:
            raise BridgeAgentError(self._failure)
        dest = self._shared_slot if self._region is not None else None
        if self._pool is None and self.config["resize_threads"] > 1 and self._image_sizes:
            self._pool = ThreadPoolExecutor(int(self.config["resize_threads"]))
        msg = {"op": "step", "timestamp": float(timestamp),
               "input": prepare_input(input_data, self._image_sizes, self._resize, self._resizers, dest,
                                      self._pool)}
        self._ticks += 1
        try:
            frame = P.encode(msg, self._region)
        except P.ProtocolError as e:  # a sensor value of a kind the bridge does not carry: a bug, not a loss
            raise BridgeAgentError("input_data cannot cross the bridge: {}".format(e)) from None
        try:
            reply = self._exchange(frame, self.config["step_timeout"])
        except P.BridgeError as e:
            self._lost(e)
            return full_brake()
        if not reply["ok"]:
            raise BridgeAgentError("driving server: agent run_step failed: {}".format(reply.get("error")))
        c = reply["control"]
        return make_control(c["throttle"], c["steer"], c["brake"], c["hand_brake"], c["reverse"])

    def _lost(self, err):
        self._failure = ("lost the driving server at {} ({}); braked, and the route is stopped as an agent "
                         "failure. See the server log (OUT/shard_K/bridge_*.log) and docs/bridge.md"
                         .format(self.config["address"], err))
        sys.stderr.write("\n[bridge] {}\n".format(self._failure))
        sys.stderr.flush()
        self._close()

    def destroy(self):
        """Bounded by destroy_timeout; never raises (the leaderboard calls it in its clean-up)."""
        if self._sock is not None:
            try:
                self._request({"op": "destroy"}, self.config["destroy_timeout"])
            except P.BridgeError:
                pass
        self._close()
