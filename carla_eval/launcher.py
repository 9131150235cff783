"""Closed-loop launcher: CARLA servers, sharded leaderboard evaluators, crash recovery, final report.

    bash carla_eval/run_evaluation.sh --routes long --checkpoint CKPT --servers 2 --carla-root ~/carla \
        --leaderboard-root ~/leaderboard --out runs/long_vlmad

What one run does (each step bounded, every child in its own process group):
1. resolve the route file (`short`/`long` from `routes.fetch`'s folder, or a path) and split it into one
   shard per server, balanced by route length (`routes.parse.shard_routes`); the plan is saved in
   OUT/plan.json so `--resume` continues exactly the same shards;
2. per shard, start a server off-screen with its own RPC / streaming / traffic-manager ports (only with
   `--carla-root`; without it the servers must already run) and wait until it answers: TCP connect, then
   `carla.Client.get_server_version()` and a client/server version check;
3. run `leaderboard_evaluator.py` on the shard with its own `--checkpoint` results file (`--resume=1` when
   the file already holds progress: the evaluator's `--resume` is `type=bool`, so "0" would mean True);
4. when the evaluator dies (non-zero exit; leaderboard 1.0 exits -1 after recording "Failed - Simulation
   crashed"), or stalls, restart the server and resume at the route it was on; a route that crashed
   `--max-crashes` times is recorded as "Failed - Simulation crashed" with zero scores (the one place
   that writes zeros: `scoring.give_up_record`, with the route's keypoint length and the measured
   durations) and skipped (failed, not missing);
5. on exit, Ctrl-C or SIGTERM every process group it started is killed; at the end the report
   (`carla_eval.report`) is written to OUT/report.{json,md} and OUT/plots/.

Failing loudly: before any server starts, the checkpoint is loaded the way the project's agent loads it
(`agent.options.load_agent_options` + `models.checkpoint_formats.load_driving_checkpoint`, on the CPU),
so a missing or broken checkpoint stops the run with the loader's message. And a shard whose every route
ended "Failed - Agent couldn't be set up" (the evaluator then still exits 0) is an error carrying the
agent's own message from the evaluator log.

Server and evaluator commands are templates (`server_cmd`, `evaluator_cmd`), so tests swap in stand-in
executables; fields: {python} {project_root} {carla_root} {leaderboard_root} {scenario_runner_root} {host}
{rpc_port} {streaming_port} {tm_port} {tm_seed} {gpu} {routes} {scenarios} {repetitions} {agent}
{checkpoint} {track} {results} {client_timeout} {shard}.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from carla_eval import scoring
from carla_eval.bridge.launch import ShardBridge, check_setup
from routes.fetch import BENCHMARKS
from routes.parse import Route, parse_routes, shard_routes, write_routes
from vlmad.config import load_config, save_resolved
from vlmad.errors import UserError, cli_main
from vlmad.io import atomic_write_json, sha256_file

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SUPPORTED_CARLA = ("0.9.15", "0.9.16")  # servers the PyPI client of the same version drives
BRIDGE_CARLA = ("0.9.10.1",)  # the benchmark's own version: needs the Python 3.7 agent bridge
PORT_STRIDE = 10  # server i uses ports port_base + 10 i + {0 rpc, 1 streaming, 5 traffic manager}

DEFAULT_SERVER_CMD = (
    "{carla_root}/CarlaUE4.sh", "-RenderOffScreen", "-nosound", "-carla-rpc-port={rpc_port}",
    "-carla-streaming-port={streaming_port}", "-graphicsadapter={gpu}",
)
DEFAULT_EVALUATOR_CMD = (
    "{python}", "{leaderboard_root}/leaderboard/leaderboard_evaluator.py", "--host={host}",
    "--port={rpc_port}", "--trafficManagerPort={tm_port}", "--trafficManagerSeed={tm_seed}",
    "--timeout={client_timeout}", "--routes={routes}", "--scenarios={scenarios}",
    "--repetitions={repetitions}", "--agent={agent}", "--agent-config={checkpoint}", "--track={track}",
    "--checkpoint={results}", "--debug=0",
)


@dataclass
class EvalConfig:
    routes: str = "short"  # "short", "long" (files from `python -m routes.fetch`) or a route XML path
    routes_dir: str = "runs/routes"  # folder `python -m routes.fetch --out` wrote the benchmark files to
    scenarios: str = ""  # scenario JSON; "" = benchmark default (Long: town05_all_scenarios.json, else none)
    checkpoint: str = ""  # exported driving checkpoint (folder or agent YAML), given as --agent-config
    agent: str = "agent/vad_agent.py"  # leaderboard agent file (relative paths: to the project root)
    out: str = "runs/closed_loop"  # output folder: plan, shard results, logs, report
    servers: int = 1  # CARLA servers = shards run in parallel (one per GPU)
    gpus: str = ""  # comma-separated GPU index per server; "" = 0, 1, ..., servers-1
    repetitions: int = 1  # leaderboard --repetitions (each route driven R times)
    resume: bool = False  # continue the run in `out` (same routes, servers and repetitions)
    carla_root: str = ""  # CARLA server folder (CarlaUE4.sh); "" = servers already run at the ports
    leaderboard_root: str = ""  # leaderboard 1.0 clone (patched by carla_eval/setup_carla.sh)
    scenario_runner_root: str = ""  # scenario_runner clone; "" = <leaderboard_root>/../scenario_runner
    carla_version: str = "0.9.16"  # expected server version: 0.9.15 or 0.9.16 (0.9.10.1 needs the bridge)
    host: str = "127.0.0.1"  # where the servers listen
    port_base: int = 2000  # server i: RPC base+10i, streaming base+10i+1, traffic manager base+10i+5
    timeout: float = 180.0  # bounded wait (s) for a server to answer after (re)start
    client_timeout: float = 60.0  # leaderboard --timeout: CARLA client / agent watchdog timeout (s)
    max_crashes: int = 3  # a route whose simulation crashes this many times is recorded as failed
    stall_timeout: float = 3600.0  # kill + treat as crash when neither results nor log change this long (s)
    track: str = "SENSORS"  # leaderboard track
    tm_seed: int = 0  # traffic manager seed
    label: str = ""  # name of this checkpoint / run in the report ("" = the checkpoint's name)
    server_check: str = "carla"  # "carla": TCP + get_server_version + version check; "tcp": TCP only
    evaluator_python: str = ""  # Python that runs the evaluator ("" = this one)
    check_checkpoint: bool = True  # load the checkpoint as the agent will before any server starts
    server_cmd: tuple[str, ...] = DEFAULT_SERVER_CMD  # server command template (one item per argument)
    evaluator_cmd: tuple[str, ...] = DEFAULT_EVALUATOR_CMD  # evaluator command template


def ports(cfg: EvalConfig, i: int) -> dict[str, int]:
    """Distinct ports of server `i`."""
    base = cfg.port_base + PORT_STRIDE * i
    return {"rpc_port": base, "streaming_port": base + 1, "tm_port": base + 5}


def gpu_list(cfg: EvalConfig) -> list[str]:
    if not cfg.gpus:
        return [str(i) for i in range(cfg.servers)]
    gpus = [g.strip() for g in cfg.gpus.split(",") if g.strip()]
    if len(gpus) != cfg.servers:
        raise UserError(f"--gpus lists {len(gpus)} GPU(s) for {cfg.servers} server(s)")
    return gpus


def how_to_start(cfg: EvalConfig, i: int) -> str:
    p = ports(cfg, i)
    root = cfg.carla_root or "<CARLA folder>"
    return (f"start one with `{root}/CarlaUE4.sh -RenderOffScreen -nosound -carla-rpc-port={p['rpc_port']} "
            f"-carla-streaming-port={p['streaming_port']}` (CARLA {cfg.carla_version}; install it with "
            f"carla_eval/setup_carla.sh), or pass --carla-root so this script starts the servers itself; "
            f"see docs/closed_loop.md")


VAD_AGENT = PROJECT_ROOT / "agent" / "vad_agent.py"
VAD_AGENT_MODULES = ("agent.vad_agent", "agent/vad_agent")


def agent_path(agent: str) -> str:
    """`--agent` as the evaluator gets it: a relative file path is taken from the project root (the
    evaluator would resolve it against its working directory); module names (the bridge) pass unchanged."""
    if agent.endswith(".py") and not Path(agent).expanduser().is_absolute():
        return str(PROJECT_ROOT / agent)
    return str(Path(agent).expanduser()) if agent.endswith(".py") else agent


def preflight_checkpoint(cfg: EvalConfig) -> bool:
    """Load `--checkpoint` the way agent/vad_agent.py's `setup` does (CPU); UserError with the loader's
    message if that fails. Returns False (nothing checked) for other agents, whose loader is unknown."""
    agent = agent_path(cfg.agent)
    if not cfg.check_checkpoint or not cfg.checkpoint or not (
            agent in VAD_AGENT_MODULES or (agent.endswith(".py") and Path(agent).resolve() == VAD_AGENT)):
        return False
    from agent.options import load_agent_options  # late: torch and the model only when checking
    from models.checkpoint_formats import load_driving_checkpoint

    try:
        _, folder = load_agent_options(cfg.checkpoint)
        load_driving_checkpoint(folder, "cpu")
    except UserError as e:
        raise UserError(f"checkpoint check failed before starting any server: {e}") from None
    except Exception as e:  # a loader bug or unreadable file: still the agent's setup failure
        raise UserError(f"checkpoint check failed before starting any server: could not load "
                        f"{cfg.checkpoint} as the agent does: {type(e).__name__}: {e}") from None
    return True


_ANSI = re.compile(r"\x1b\[[0-9;]*m")
SETUP_MARK = "Could not set up the required agent:"


def agent_setup_message(logs: list[Path]) -> str:
    """The agent's own error from the evaluator logs: the "> message" line leaderboard_evaluator.py prints
    after "Could not set up the required agent:" (the last one found), or "" when there is none."""
    msg = ""
    for log in logs:
        try:
            lines = _ANSI.sub("", log.read_text(errors="replace")).splitlines()
        except OSError:
            continue
        for i, line in enumerate(lines):
            if SETUP_MARK in line:
                nxt = next((x.strip() for x in lines[i + 1:i + 4] if x.strip()), "")
                msg = nxt[1:].strip() if nxt.startswith(">") else nxt
    return msg


def all_setup_failed(data: dict[str, Any] | None) -> bool:
    """True when the results hold records and every one is "Failed - Agent couldn't be set up"."""
    recs = (data or {}).get("_checkpoint", {}).get("records") or []
    return bool(recs) and all(scoring.REASON_AGENT_SETUP in str(r.get("status", "")) for r in recs)


# ---- processes -------------------------------------------------------------------------------------

class Supervisor:
    """Every child runs in its own session / process group; `kill_all` ends each group (TERM, then KILL)."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.procs: list[subprocess.Popen] = []
        self.stopping = threading.Event()

    def start(self, cmd: list[str], log_path: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
        with self.lock:
            if self.stopping.is_set():
                raise InterruptedError("shutting down")
            log_path.parent.mkdir(parents=True, exist_ok=True)
            with open(log_path, "ab") as log:
                log.write(f"$ {shlex.join(cmd)}\n".encode())
                log.flush()
                try:
                    p = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         env=env, start_new_session=True)
                except OSError as e:
                    raise UserError(f"could not start {cmd[0]!r}: {e}") from None
            self.procs.append(p)
            return p

    def kill(self, p: subprocess.Popen, grace: float = 5.0) -> None:
        """SIGTERM the process group of `p`, then SIGKILL whatever is left of the group after `grace` s
        (the leader may be gone while members it spawned still live)."""
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(p.pid, sig)
            except (ProcessLookupError, PermissionError):
                pass
            try:
                p.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                pass
        with self.lock:
            if p in self.procs:
                self.procs.remove(p)

    def kill_all(self) -> None:
        with self.lock:
            self.stopping.set()
            procs = list(self.procs)
        for p in procs:
            self.kill(p, grace=3.0)


def _tcp_open(host: str, port: int, timeout: float) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _version_tuple(v: str) -> tuple[str, ...]:
    return tuple(v.strip().split("-")[0].split(".")[:3])


def check_versions(client: str, server: str, expected: str) -> None:
    """Client and server must be the same release, and the one asked for (first 3 components)."""
    if _version_tuple(server) != _version_tuple(client):
        raise UserError(f"CARLA client {client} and server {server} differ; they must match: run a {client} "
                        f"server or install the matching client (`pip install carla=={server}`)")
    if _version_tuple(server) != _version_tuple(expected):
        raise UserError(f"CARLA server is {server} but --carla-version is {expected}")


def carla_server_version(host: str, port: int, timeout: float) -> tuple[str, str]:
    """(client version, server version) through the real carla client; RuntimeError if it does not answer."""
    try:
        import carla  # the PyPI client; imported here so the launcher runs without it in "tcp" mode
    except ImportError:
        raise UserError("the carla Python client is not installed (pip install carla==0.9.16)") from None
    client = carla.Client(host, port)
    client.set_timeout(timeout)
    return client.get_client_version(), client.get_server_version()


def wait_for_server(cfg: EvalConfig, i: int, proc: subprocess.Popen | None, stop: threading.Event) -> str:
    """Block until server `i` answers (bounded by cfg.timeout); returns its version ("" in tcp mode)."""
    port = ports(cfg, i)["rpc_port"]
    deadline = time.monotonic() + cfg.timeout
    seen = "nothing listens on that port"
    while not stop.is_set():
        if proc is not None and proc.poll() is not None:
            raise UserError(f"CARLA server {i} (port {port}) exited with code {proc.returncode} while "
                            f"starting; see its log in {cfg.out}/shard_{i}/; {how_to_start(cfg, i)}")
        left = deadline - time.monotonic()
        if _tcp_open(cfg.host, port, timeout=max(0.1, min(2.0, left))):
            if cfg.server_check == "tcp":
                return ""
            try:
                client_v, server_v = carla_server_version(cfg.host, port, timeout=max(1.0, min(10.0, left)))
            except RuntimeError:  # port open but the simulator is not ready (or it is not CARLA)
                seen = "the port is open but get_server_version() got no answer"
            else:
                # under the bridge the client is the 3.7 egg, not this one: check the server alone
                check_versions(server_v if cfg.carla_version in BRIDGE_CARLA else client_v, server_v,
                               cfg.carla_version)
                return server_v
        if time.monotonic() >= deadline:
            raise UserError(f"no CARLA server answered on {cfg.host}:{port} within {cfg.timeout:g} s "
                            f"({seen}); {how_to_start(cfg, i)}")
        stop.wait(0.25)
    raise InterruptedError("stopped")


# ---- results files -----------------------------------------------------------------------------------

def read_results(path: Path) -> dict[str, Any] | None:
    """The evaluator's results JSON, or None when absent, empty or corrupt (it writes non-atomically, so a
    crash mid-write is expected here, not a user error)."""
    try:
        return scoring.read_results_file(path, missing_ok=True)
    except (UserError, OSError):
        return None


def progress_of(data: dict[str, Any] | None) -> tuple[int, int] | None:
    prog = (data or {}).get("_checkpoint", {}).get("progress") or []
    return (int(prog[0]), int(prog[1])) if len(prog) == 2 else None


def mark_route_failed(path: Path, data: dict[str, Any] | None, index: int, route: Route, total: int,
                      crashes: int, wall_s: float) -> None:
    """Record route x repetition `index` as given up after `crashes` crashes (`scoring.give_up_record`:
    zero scores, route length along the keypoints, durations measured: `wall_s` seconds of evaluator time
    on it, the game time of the evaluator's last record of it) and move progress past it."""
    data = data or {"_checkpoint": {"global_record": {}, "progress": [index, total], "records": []},
                    "sensors": [], "values": []}
    records = data["_checkpoint"]["records"]
    last = next((r for r in records if int(r.get("index", -1)) == index), None)
    game = float((last or {}).get("meta", {}).get("duration_game", 0.0) or 0.0)
    rec = scoring.give_up_record(route.name, index, max(route.length_m, 1e-3), crashes,
                                 duration_system=max(float(wall_s), 0.0), duration_game=max(game, 0.0))
    records[:] = [r for r in records if int(r.get("index", -1)) != index]
    records.append(rec)
    records.sort(key=lambda r: int(r["index"]))
    data["_checkpoint"]["progress"] = [index + 1, total]
    atomic_write_json(path, data, indent=4)


def installed_tree(leaderboard_root: str) -> str:
    """The leaderboard tree setup_carla.sh recorded beside the clone (DIR/versions.lock), else the default."""
    lock = Path(leaderboard_root).parent / "versions.lock" if leaderboard_root else None
    try:
        for line in lock.read_text().splitlines() if lock else ():
            parts = line.split()
            if len(parts) >= 2 and parts[0] == "leaderboard_tree" and parts[1] in scoring.TREES:
                return parts[1]
    except OSError:
        pass
    return scoring.DEFAULT_TREE


def finalize_results(path: Path, total: int, tree: str = scoring.DEFAULT_TREE) -> None:
    """Rewrite global_record / entry_status (with `tree`'s rules) when the launcher, not the evaluator,
    closed the file."""
    data = read_results(path)
    if data is None:
        return
    recs = data["_checkpoint"]["records"]
    prog = list(progress_of(data) or (len(recs), total))
    full = scoring.make_results_file(recs, prog, sensors=data.get("sensors", []), meta=data.get("meta"),
                                     tree=tree)
    atomic_write_json(path, full, indent=4)


# ---- one shard ---------------------------------------------------------------------------------------

class ShardRunner(threading.Thread):
    def __init__(self, cfg: EvalConfig, k: int, routes: list[Route], route_file: Path, scenarios: Path,
                 sup: Supervisor, state: CrashState) -> None:
        super().__init__(name=f"shard-{k}", daemon=True)
        self.cfg, self.k, self.routes, self.route_file, self.scenarios = cfg, k, routes, route_file, scenarios
        self.sup, self.state = sup, state
        self.dir = Path(cfg.out) / f"shard_{k}"
        self.results = self.dir / "results.json"
        self.total = len(routes) * cfg.repetitions
        self.server: subprocess.Popen | None = None
        self.error: BaseException | None = None
        self.n_server = 0
        self.n_eval = 0
        self.wall: dict[int, float] = {}  # evaluator seconds spent on each crashing route index
        self.bridge = (ShardBridge.plan(self.dir, k, cfg.port_base, cfg.agent, cfg.checkpoint,
                                        gpu_list(cfg)[k], cfg.timeout)
                       if cfg.carla_version in BRIDGE_CARLA else None)  # 0.9.10.1: the agent bridge

    def log(self, msg: str) -> None:
        print(f"[shard {self.k}] {msg}", flush=True)

    def scenario_runner_root(self) -> str:
        lb = self.cfg.leaderboard_root
        return self.cfg.scenario_runner_root or (str(Path(lb).parent / "scenario_runner") if lb else "")

    def fields(self) -> dict[str, Any]:
        cfg = self.cfg
        lb = cfg.leaderboard_root
        return {"python": cfg.evaluator_python or sys.executable, "project_root": str(PROJECT_ROOT),
                "carla_root": cfg.carla_root, "leaderboard_root": lb,
                "scenario_runner_root": self.scenario_runner_root(), "host": cfg.host, "tm_seed": cfg.tm_seed,
                "gpu": gpu_list(cfg)[self.k], "routes": str(self.route_file),
                "scenarios": str(self.scenarios),
                "repetitions": cfg.repetitions, "agent": agent_path(cfg.agent), "checkpoint": cfg.checkpoint,
                "track": cfg.track, "results": str(self.results), "client_timeout": cfg.client_timeout,
                "shard": self.k, **ports(cfg, self.k), **(self.bridge.fields() if self.bridge else {})}

    def _cmd(self, template: tuple[str, ...]) -> list[str]:
        try:
            return [a.format(**self.fields()) for a in template]
        except (KeyError, IndexError, ValueError) as e:
            raise UserError(f"command template {list(template)} uses an unknown field {e}") from None

    def start_server(self) -> None:
        if self.server is not None:
            self.sup.kill(self.server)
            self.server = None
        if self.cfg.carla_root:
            port = ports(self.cfg, self.k)["rpc_port"]
            if _tcp_open(self.cfg.host, port, 0.5):
                raise UserError(f"port {port} is already in use before server {self.k} started; stop what "
                                f"listens there or choose another --port-base")
            self.n_server += 1
            self.log(f"starting server on port {port}")
            log = self.dir / f"server_{self.n_server}.log"
            self.server = self.sup.start(self._cmd(self.cfg.server_cmd), log)
        version = wait_for_server(self.cfg, self.k, self.server, self.sup.stopping)
        self.log(f"server answers{' (CARLA ' + version + ')' if version else ''}")
        if self.bridge is not None:  # a fresh driving server with every simulator
            self.bridge.start(self.sup, restart=True)
            self.log(f"bridge driving server answers at {self.bridge.address}")

    def evaluator_env(self) -> dict[str, str]:
        env = dict(os.environ)
        paths = [self.cfg.leaderboard_root, self.scenario_runner_root(),
                 *(self.bridge.pythonpath(self.cfg.carla_root) if self.bridge else []),
                 str(Path(self.cfg.carla_root) / "PythonAPI" / "carla") if self.cfg.carla_root else "",
                 str(PROJECT_ROOT), env.get("PYTHONPATH", "")]
        env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
        env["CUDA_VISIBLE_DEVICES"] = gpu_list(self.cfg)[self.k]
        return env

    def run_evaluator(self) -> int:
        """Run the evaluator once (resuming when the results file holds progress); returns its exit code."""
        if self.bridge is not None:
            self.bridge.start(self.sup)  # no-op while it runs; restarted if it died with the last route
        cmd = self._cmd(self.cfg.evaluator_cmd)
        if progress_of(read_results(self.results)) is not None:
            cmd.append("--resume=1")  # type=bool upstream: pass a non-empty value or nothing at all
        self.n_eval += 1
        log = self.dir / f"evaluator_{self.n_eval}.log"
        p = self.sup.start(cmd, log, env=self.evaluator_env())
        last_change = time.monotonic()
        stamp = None
        while True:
            try:
                return p.wait(timeout=0.5)
            except subprocess.TimeoutExpired:
                pass
            bridge_proc = self.bridge.proc if self.bridge is not None else None
            if bridge_proc is not None and bridge_proc.poll() is not None:
                # the driving server died mid-run: the route in flight fails as an agent error; restart it
                # so that the following routes of this shard connect to a fresh one
                self.log(f"bridge driving server exited with code {bridge_proc.returncode}; restarting it")
                self.bridge.start(self.sup)
            if self.sup.stopping.is_set():
                self.sup.kill(p)
                raise InterruptedError("stopped")
            now_stamp = tuple(f.stat().st_mtime_ns if f.exists() else 0 for f in (self.results, log))
            if now_stamp != stamp:
                stamp, last_change = now_stamp, time.monotonic()
            elif time.monotonic() - last_change > self.cfg.stall_timeout:
                self.log(f"evaluator made no progress for {self.cfg.stall_timeout:g} s: killing it")
                self.sup.kill(p)
                return -9

    def run(self) -> None:
        try:
            self._run()
        except InterruptedError:
            pass
        except BaseException as e:  # handed to the main thread
            self.error = e
        finally:
            if self.server is not None:
                self.sup.kill(self.server)
            if self.bridge is not None:
                self.bridge.stop(self.sup)

    def _run(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        backup = self.results.with_suffix(".json.bak")
        self.start_server()
        while True:
            data = read_results(self.results)
            prog = progress_of(data)
            if prog is not None and prog[0] >= self.total:
                break
            if data is not None:
                shutil.copyfile(self.results, backup)  # the evaluator rewrites the file in place
            t0 = time.monotonic()
            rc = self.run_evaluator()
            spent = time.monotonic() - t0
            data = read_results(self.results)
            if data is None and backup.exists():
                self.log("results file corrupt after the evaluator died; restoring the last good copy")
                shutil.copyfile(backup, self.results)
                data = read_results(self.results)
            prog = progress_of(data)
            if data is None:
                raise UserError(f"the evaluator exited with code {rc} before writing {self.results}; see "
                                f"{self.dir}/evaluator_{self.n_eval}.log")
            if data.get("entry_status") == scoring.ENTRY_REJECTED or any(
                    scoring.REASON_SENSORS_INVALID in str(r.get("status", "")) for r in
                    data["_checkpoint"].get("records", [])):
                raise UserError(f"the leaderboard rejected the agent's sensors (see {self.dir}/evaluator_"
                                f"{self.n_eval}.log); apply the 6-camera patch (carla_eval/setup_carla.sh)")
            if prog is not None and prog[0] >= self.total:
                if rc != 0:
                    self.log(f"evaluator exited with code {rc} after the last route; closing the file")
                    finalize_results(self.results, self.total, installed_tree(self.cfg.leaderboard_root))
                break
            index = prog[0] if prog is not None else 0
            self.wall[index] = self.wall.get(index, 0.0) + spent
            n = self.state.add(self.k, index)
            route = self.routes[index // self.cfg.repetitions]
            self.log(f"evaluator exited with code {rc} on {route.name} (index {index}); crash {n} of "
                     f"{self.cfg.max_crashes}")
            if n >= self.cfg.max_crashes:
                self.log(f"{route.name} (index {index}) crashed {n} times: recorded as failed")
                mark_route_failed(self.results, data, index, route, self.total, n, self.wall.get(index, 0.0))
                if index + 1 >= self.total:
                    finalize_results(self.results, self.total, installed_tree(self.cfg.leaderboard_root))
                    break
            self.start_server()
        if all_setup_failed(read_results(self.results)):
            logs = sorted(self.dir.glob("evaluator_*.log"), key=lambda p: int(p.stem.split("_")[-1]))
            msg = agent_setup_message(logs) or "no message in the evaluator log"
            raise UserError(f"shard {self.k}: the agent could not be set up on any of its {self.total} "
                            f"route(s) (every record is \"Failed - {scoring.REASON_AGENT_SETUP}\"): {msg}; "
                            f"see {self.dir}/evaluator_{self.n_eval}.log")
        self.log("done")


class CrashState:
    """Crash counts per (shard, route index), persisted in OUT/state.json so `--resume` keeps them."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lock = threading.Lock()
        self.crashes: dict[str, int] = {}
        if path.is_file():
            try:
                self.crashes = {str(k): int(v) for k, v in json.loads(path.read_text())["crashes"].items()}
            except (ValueError, KeyError, TypeError, AttributeError):
                raise UserError(f"{path} is corrupt; delete it to reset the crash counts") from None

    def add(self, shard: int, index: int) -> int:
        with self.lock:
            key = f"{shard}:{index}"
            self.crashes[key] = self.crashes.get(key, 0) + 1
            atomic_write_json(self.path, {"crashes": self.crashes})
            return self.crashes[key]


# ---- planning ----------------------------------------------------------------------------------------

def resolve_routes(cfg: EvalConfig) -> tuple[Path, Path | None, str | None]:
    """(route file, scenario file or None, benchmark name or None)."""
    if cfg.routes in BENCHMARKS:
        route_name, scen_name, _ = BENCHMARKS[cfg.routes]
        folder = Path(cfg.routes_dir)
        route_file = folder / route_name
        if not route_file.is_file():
            raise UserError(f"{route_file} not found; get the benchmark files with "
                            f"`python -m routes.fetch --out {folder}` (or pass --routes-dir)")
        scen = Path(cfg.scenarios) if cfg.scenarios else (folder / scen_name if scen_name else None)
        if scen is not None and not scen.is_file():
            raise UserError(f"scenario file {scen} not found; run `python -m routes.fetch --out {folder}`")
        return route_file, scen, cfg.routes
    route_file = Path(cfg.routes)
    if not route_file.is_file():
        raise UserError(f"--routes {cfg.routes!r} is neither 'short', 'long' nor an existing route XML file")
    scen = Path(cfg.scenarios) if cfg.scenarios else None
    if scen is not None and not scen.is_file():
        raise UserError(f"scenario file {scen} not found")
    return route_file, scen, None


def validate(cfg: EvalConfig) -> None:
    if cfg.carla_version in BRIDGE_CARLA:  # leaderboard in Python 3.7, the agent behind the bridge
        check_setup(cfg.evaluator_python, "{leaderboard_root}" in " ".join(cfg.evaluator_cmd), cfg.carla_root)
    elif cfg.carla_version not in SUPPORTED_CARLA:
        raise UserError(f"--carla-version {cfg.carla_version} is not supported; use one of {SUPPORTED_CARLA}")
    for name in ("servers", "repetitions", "max_crashes"):
        if getattr(cfg, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be >= 1")
    if cfg.timeout <= 0 or cfg.client_timeout <= 0 or cfg.stall_timeout <= 0:
        raise UserError("timeouts must be positive")
    if not 1 <= cfg.port_base <= 65535 - PORT_STRIDE * cfg.servers:
        raise UserError(f"--port-base {cfg.port_base} leaves no room for {cfg.servers} server(s)")
    if cfg.server_check not in ("carla", "tcp"):
        raise UserError("--server-check must be 'carla' or 'tcp'")
    gpu_list(cfg)
    if cfg.carla_root and not Path(cfg.carla_root).is_dir():
        raise UserError(f"--carla-root {cfg.carla_root} is not a folder (install CARLA with "
                        f"carla_eval/setup_carla.sh)")
    uses = " ".join(cfg.evaluator_cmd)
    if "{leaderboard_root}" in uses:
        if not cfg.leaderboard_root or not Path(cfg.leaderboard_root, "leaderboard").is_dir():
            raise UserError(f"--leaderboard-root {cfg.leaderboard_root!r} is not a leaderboard clone; set it "
                            f"up with carla_eval/setup_carla.sh")
    if "{agent}" in uses and cfg.agent.endswith(".py") and not Path(agent_path(cfg.agent)).is_file():
        raise UserError(f"--agent {cfg.agent!r}: {agent_path(cfg.agent)} does not exist (relative paths are "
                        f"taken from the project root {PROJECT_ROOT})")
    if "{checkpoint}" in uses and not cfg.checkpoint:
        raise UserError("--checkpoint is required (an exported driving checkpoint folder or agent YAML)")


def plan(cfg: EvalConfig) -> tuple[list[list[Route]], Path, Path, str | None]:
    """Shard the routes (or reload the saved plan with --resume); writes OUT/plan.json and shard XMLs."""
    route_file, scen, bench = resolve_routes(cfg)
    out = Path(cfg.out)
    routes = parse_routes(route_file)
    plan_path = out / "plan.json"
    if scen is None:
        # the evaluator needs a scenario file; this one (as transfuser's no_scenarios.json) has none
        scen = out / "no_scenarios.json"
        atomic_write_json(scen, {"available_scenarios": [{}]})
    sig = {"routes_sha256": sha256_file(route_file), "scenarios_sha256": sha256_file(scen),
           "repetitions": cfg.repetitions, "servers": cfg.servers}
    started = any(out.glob("shard_*/results.json"))
    if plan_path.is_file() and (cfg.resume or started):
        if not cfg.resume:
            raise UserError(f"{out} already holds a run (plan.json); pass --resume to continue it or choose "
                            f"a new --out")
        try:
            saved = json.loads(plan_path.read_text())
        except ValueError:
            raise UserError(f"{plan_path} is corrupt; start a new run in another --out") from None
        for key, val in sig.items():
            if saved.get(key) != val:
                raise UserError(f"--resume: {key} differs from the run in {out} ({saved.get(key)} vs {val}); "
                                f"resume with the same routes, scenarios, --repetitions and --servers")
        by_id = {r.id: r for r in routes}
        shards = [[by_id[i] for i in ids] for ids in saved["shards"]]
    else:
        shards = shard_routes(routes, cfg.servers)
        atomic_write_json(plan_path, {**sig, "routes_file": str(route_file), "scenarios_file": str(scen),
                                      "benchmark": bench, "shards": [[r.id for r in s] for s in shards]})
    for k, s in enumerate(shards):
        write_routes(s, out / f"shard_{k}" / "routes.xml")
    return shards, route_file, scen, bench


def run(cfg: EvalConfig) -> Path:
    """Run the whole evaluation; returns the report JSON path."""
    validate(cfg)
    if preflight_checkpoint(cfg):
        print(f"checkpoint {cfg.checkpoint} loads as the agent loads it")
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    shards, route_file, scen, bench = plan(cfg)
    save_resolved(cfg, out, "eval_config.yaml")
    if len(shards) < cfg.servers:
        print(f"only {len(shards)} route(s): using {len(shards)} server(s)")
    sup = Supervisor()
    state = CrashState(out / "state.json")
    runners = [ShardRunner(cfg, k, s, out / f"shard_{k}" / "routes.xml", scen, sup, state)
               for k, s in enumerate(shards)]

    def on_signal(signum: int, frame: Any) -> None:
        if not sup.stopping.is_set():  # first signal only: a second one must not break the clean-up
            sup.stopping.set()
            raise KeyboardInterrupt

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        for r in runners:
            r.start()
        while any(r.is_alive() for r in runners):
            for r in runners:
                r.join(timeout=0.2)
                if r.error is not None:
                    raise r.error
        for r in runners:
            if r.error is not None:
                raise r.error
    finally:
        sup.kill_all()
        for r in runners:
            r.join(timeout=10.0)
        for s, h in old.items():
            signal.signal(s, h)
    from carla_eval.report import write_report  # late: matplotlib only once results exist

    label = cfg.label or (Path(cfg.checkpoint).name if cfg.checkpoint else "run")
    files = [r.results for r in runners if r.results.is_file()]
    return write_report(files, out / "report.json", out / "report.md", plots_dir=out / "plots",
                        routes_file=route_file, repetitions=cfg.repetitions, label=label, benchmark=bench)


# ---- CLI ---------------------------------------------------------------------------------------------

HELP_EPILOG = """\
Ports: server i listens on RPC port PORT_BASE+10i, streaming PORT_BASE+10i+1, traffic manager
PORT_BASE+10i+5. Servers run off-screen (-RenderOffScreen -nosound), server i on GPU i (-graphicsadapter).
Output: OUT/plan.json, OUT/shard_K/{routes.xml,results.json,server_N.log,evaluator_N.log},
OUT/state.json (crash counts), OUT/report.json, OUT/report.md, OUT/plots/.
Supported CARLA: 0.9.16 and 0.9.15 servers with the matching Python client (PyPI carla==0.9.16 is the
project default). The benchmark's original 0.9.10.1 runs the leaderboard under Python 3.7
(--evaluator-python) with the agent behind the bridge: docs/bridge.md.
Details: docs/closed_loop.md
"""


def build_parser() -> argparse.ArgumentParser:
    d = EvalConfig()
    p = argparse.ArgumentParser(
        prog="carla_eval/run_evaluation.sh",
        description="Closed-loop evaluation on the CARLA leaderboard (Town05 Short/Long): starts CARLA "
                    "servers, runs one leaderboard evaluator per server on a shard of the routes, restarts "
                    "crashed servers and resumes, and writes the report.",
        epilog=HELP_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    a = p.add_argument
    a("--routes", default=None, help=f"'short' (Town05 Short, 32 routes), 'long' (Town05 Long, 10 routes, "
      f"with town05_all_scenarios.json) or a route XML file (default {d.routes})")
    a("--routes-dir", default=None, help=f"folder with the files from `python -m routes.fetch` "
      f"(default {d.routes_dir})")
    a("--scenarios", default=None, help="scenario JSON (default: town05_all_scenarios.json for long, none "
      "otherwise)")
    a("--checkpoint", default=None, help="exported driving checkpoint folder or agent YAML (--agent-config)")
    a("--agent", default=None, help=f"leaderboard agent module (default {d.agent})")
    a("--servers", type=int, default=None, help=f"number of CARLA servers / parallel shards, one per GPU "
      f"(default {d.servers})")
    a("--gpus", default=None, help="comma-separated GPU per server (default 0,1,...)")
    a("--repetitions", type=int, default=None, help=f"times each route is driven (default {d.repetitions})")
    a("--out", default=None, help=f"output folder (default {d.out})")
    a("--resume", action="store_true", default=None, help="continue the run already in --out")
    a("--carla-root", default=None, help="CARLA folder with CarlaUE4.sh: servers are started (and restarted "
      "after crashes) by this script; without it, servers must already run on the ports")
    a("--leaderboard-root", default=None, help="leaderboard 1.0 clone prepared by carla_eval/setup_carla.sh")
    a("--scenario-runner-root", default=None, help="scenario_runner clone (default: beside the leaderboard)")
    a("--carla-version", default=None, help=f"server version: 0.9.16 or 0.9.15 (default {d.carla_version}); "
      "0.9.10.1 runs through the Python 3.7 agent bridge (needs --evaluator-python; docs/bridge.md)")
    a("--host", default=None, help=f"server host (default {d.host})")
    a("--port-base", type=int, default=None, help=f"first RPC port (default {d.port_base})")
    a("--timeout", type=float, default=None, help=f"bounded wait for each server to answer, seconds "
      f"(default {d.timeout:g})")
    a("--client-timeout", type=float, default=None, help=f"leaderboard --timeout, seconds "
      f"(default {d.client_timeout:g})")
    a("--max-crashes", type=int, default=None, help=f"K: a route whose simulation crashes K times is "
      f"recorded as failed with score 0 (default {d.max_crashes})")
    a("--stall-timeout", type=float, default=None, help=f"kill an evaluator silent this long, seconds "
      f"(default {d.stall_timeout:g})")
    a("--label", default=None, help="name of this checkpoint in the report (default: checkpoint name)")
    a("--server-check", choices=("carla", "tcp"), default=None, help="'carla' (default): TCP connect, "
      "get_server_version and version check; 'tcp': connect only (stand-in servers)")
    a("--server-cmd", default=None,
      help="server command template (shell words); fields in carla_eval/launcher.py")
    a("--evaluator-cmd", default=None, help="evaluator command template (shell words)")
    a("--evaluator-python", default=None, help="Python that runs the evaluator (default: this one)")
    a("--no-check-checkpoint", dest="check_checkpoint", action="store_false", default=None,
      help="skip loading --checkpoint with the agent's loader before the servers start (default: check; "
           "only for the project's agent/vad_agent.py, whose loader is known)")
    a("--config", default=None, help="YAML with any of the fields above (EvalConfig); flags override it")
    return p


def config_from_args(args: argparse.Namespace) -> EvalConfig:
    overrides: dict[str, Any] = {}
    for f in dataclasses.fields(EvalConfig):
        v = getattr(args, f.name, None)
        if v is None:
            continue
        overrides[f.name] = tuple(shlex.split(v)) if f.name in ("server_cmd", "evaluator_cmd") else v
    cfg = load_config(EvalConfig, yaml_path=args.config)
    return dataclasses.replace(cfg, **overrides)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cfg = config_from_args(args)
    report = run(cfg)
    summary = json.loads(report.read_text())
    print(f"report: {report} (DS {summary['driving_score']:.2f}, RC {summary['route_completion']:.2f}, "
          f"IS {summary['infraction_penalty']:.3f}; {summary['num_routes_found']}/"
          f"{summary['num_routes_expected']} routes)")
    return 0


if __name__ == "__main__":
    cli_main(main)
