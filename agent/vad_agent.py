"""CARLA leaderboard agent: VAD driving from any exported driving checkpoint (docs/agent.md).

    python leaderboard/leaderboard_evaluator.py --agent agent/vad_agent.py --agent-config CKPT_OR_YAML ...

One tick (20 Hz): check the sensors -> GNSS + compass pose, odometry -> route target and command -> (every
`model_every` ticks) images, projections, CAN bus, ego motion and the previous BEV -> VAD -> plan of the
commanded mode -> lateral / longitudinal PID -> `carla.VehicleControl`. The checkpoint's own config decides
the model, the image size and normalisation, and whether the goal point is fed (CARLA variant); swapping
checkpoints needs no code change.

Safety: a missing / malformed / stale / non-finite sensor, a NaN or inf in the plan, or any exception in
the tick gives a full brake for that tick and one log line (repeats of the same cause are summarised once
a second); `run_step` never raises. A wrong or corrupt checkpoint fails in `setup`, before the route.
"""

# ruff: noqa: E402 - the sys.path fix below must run before the project imports
from __future__ import annotations

import sys
from pathlib import Path

if not __package__:  # loaded by file path (the leaderboard imports it as a top-level module)
    _ROOT = str(Path(__file__).resolve().parents[1])
    if _ROOT not in sys.path:
        sys.path.insert(0, _ROOT)

import contextlib
import dataclasses
import logging
import time
from collections import deque
from typing import NamedTuple

import carla
import numpy as np
import torch

from agent.compat import LEADERBOARD, AutonomousAgent, Track
from agent.controller import ControlOutput, PlanController
from agent.debug_video import DebugVideo
from agent.options import AgentConfig, load_agent_options
from agent.route import (
    GnssFrame,
    RouteTarget,
    ego_pose_from_gnss,
    fit_geo_reference,
    live_carla_map,
    planner_from_world_plan,
)
from agent.sensing import EgoReading, ImageInput, Odometry, SensorError, can_bus, read_sensors
from models.checkpoint_formats import load_driving_checkpoint
from models.onnx_export import CapacityGuard, OnnxRunner, sca_capacity
from models.vad import BEVState, check_finite_inputs, compile_for_inference
from vlmad.cli import resolve_device
from vlmad.commands import Command
from vlmad.errors import UserError
from vlmad.frames import carla_location_to_ego, invert_transform, relative_motion, transform_points
from vlmad.horizon import HIS_STEPS, STEP_S, TICK_S
from vlmad.rig import RIGS, rig_mismatch

log = logging.getLogger("agent.vad")
REPEAT_LOG_TICKS = 20  # the same brake cause is logged again at most once per second
GNSS_ROUTE_WARN_M = 20.0  # first GNSS fix farther than this from the spawn point: geolocation mismatch
MAX_STATE_AGE_TICKS = 40  # a previous BEV older than 2 s is dropped: the next call starts afresh
TL_STOP_CLASSES = (0, 1)  # traffic-light branch classes that forbid creeping: red, yellow


def get_entry_point() -> str:
    return "VADAgent"


class _Brake(Exception):
    """Internal: brake this tick for the given reason."""


class _Memory(NamedTuple):  # not a dataclass: those break under loaders that skip sys.modules
    """A past model call whose BEV can serve as the temporal state of a later one."""

    tick: int
    pose: np.ndarray  # odometry world_from_ego at that call
    state: BEVState


class VADAgent(AutonomousAgent):
    """Leaderboard agent driving a VAD driving checkpoint (see the module docstring)."""

    # ------------------------------------------------------------------------------------------------
    # leaderboard interface
    # ------------------------------------------------------------------------------------------------
    def setup(self, path_to_conf_file: str) -> None:
        """Load the checkpoint and options named by `--agent-config`; any problem is a UserError here."""
        self.track = Track.SENSORS
        self.opts: AgentConfig
        self.opts, folder = load_agent_options(path_to_conf_file)
        self.device = resolve_device(self.opts.device, "agent option device")
        self.model, self.cfg, self.meta = load_driving_checkpoint(folder, self.device)
        self.checkpoint = folder
        rig = RIGS.get(self.opts.rig)
        if rig is None:
            raise UserError(f"agent option rig={self.opts.rig!r} is unknown; valid: {sorted(RIGS)}")
        cfg = self.cfg
        if cfg.num_cams > len(rig.cameras):
            raise UserError(f"checkpoint {folder} wants {cfg.num_cams} cameras; rig {rig.name!r} has "
                            f"{len(rig.cameras)}")
        if cfg.ego_fut_mode != len(Command) or cfg.fut_ts < 2:
            raise UserError(f"checkpoint {folder}: the agent needs {len(Command)} command modes and >= 2 "
                            f"plan steps, the config has {cfg.ego_fut_mode} and {cfg.fut_ts}")
        size = tuple(self.opts.camera_size or cfg.img_size_raw)
        cams = tuple(c.resized(*size) for c in rig.cameras[: cfg.num_cams])
        self.rig = dataclasses.replace(rig, cameras=cams)
        self._sensors = self.rig.carla_sensors()
        self.images = ImageInput(cfg, self.rig)
        mismatch = rig_mismatch(self.meta.get("training_rig"), self.rig)
        if mismatch:
            log.warning("%s", mismatch)
        self._setup_backend(folder, size)
        self.controller = PlanController(self.opts.controller)
        self.odometry = Odometry()
        self.geo_ref: tuple[float, float] | None = None
        self.carla_map = None  # the live carla.Map (found via CarlaDataProvider under the leaderboard)
        self.gnss: GnssFrame | None = None
        self.route = None
        self._spawn_xy: np.ndarray | None = None
        self.tick = -1
        self._images_tick = -1  # the last tick `wants_images` asked for fresh images
        self._last_t: float | None = None
        self._poses: deque[tuple[float, np.ndarray]] = deque(maxlen=40)  # (time, odometry pose), ~2 s
        self._history: deque[_Memory] = deque()
        self._plan: tuple[np.ndarray, np.ndarray, int] | None = None  # (plan (T, 2), pose, tick)
        self._outputs: dict | None = None  # numpy outputs of the last model call (debug video, creep)
        self._last_fault: tuple[str, int] = ("", -REPEAT_LOG_TICKS)
        self._stopped_ticks = 0
        self._creep_left = 0
        self._gnss_checked = False
        self.target: RouteTarget | None = None
        self.goal: np.ndarray | None = None  # (2,) route target in the ego frame
        self.world_from_ego: np.ndarray | None = None  # (4, 4) GNSS + compass pose of the last tick
        self.last_control = ControlOutput(0.0, 0.0, 1.0)
        self.brake_reason: str | None = None
        self.timing: dict[str, float] = {}
        self._video = (DebugVideo(self.opts.debug_dir, 20.0 / self.opts.debug_every)
                       if self.opts.debug_dir else None)
        note = " RANDOM-INIT (untrained: drives, has learned nothing)" if self.meta.get("random_init") else ""
        say = log.warning if note else log.info
        say("VAD agent: %s (%s%s, VLM-AD at training: %s) on %s; %d cameras %dx%d; goal point: %s; "
            "traffic-light branch: %s; model every %d tick(s); leaderboard base class: %s", folder,
            self.meta.get("config_name") or cfg.name, note, self.meta.get("trained_with_vlm_ad"),
            self.device, cfg.num_cams, size[0], size[1], cfg.use_goal_point, cfg.use_traffic_light,
            self.opts.model_every, LEADERBOARD)

    def _setup_backend(self, folder: Path, size: tuple[int, int]) -> None:
        """torch (eager or compiled) or onnxruntime. The fixed-shape forms size their cross-attention
        for this rig's projections (models.onnx_export: a calibration that does not fit is refused)."""
        proj = torch.as_tensor(np.stack([self.images.img_from_ego(n, *size) for n in self.images.names]),
                               dtype=torch.float32)
        # the compiled module shares the weights; it is only ever called, never saved (None = eager)
        self._compiled = self._guard = None
        if self.opts.compile:
            cap = sca_capacity(self.cfg, proj)
            self._compiled = compile_for_inference(self.model, sca_capacity=cap)
            self._guard = CapacityGuard(self.cfg, cap, "the compiled model")
        self._onnx: OnnxRunner | None = None  # the onnxruntime backend (models.onnx_export), else None
        if self.opts.backend == "onnxruntime":
            onnx_path = Path(self.opts.onnx) if self.opts.onnx else folder / "model.onnx"
            # UserError: missing file / package, other config. As many threads as torch has
            # (OMP_NUM_THREADS): onnxruntime's default, one per core, made two drives side by side
            # fight for the cores (docs/experiments.md)
            self._onnx = OnnxRunner(onnx_path, self.cfg, threads=torch.get_num_threads())
            try:
                self._onnx.check_calibration(proj)
            except ValueError as e:
                raise UserError(f"{onnx_path}: {e}") from None

    def sensors(self) -> list[dict]:
        """6 RGB cameras of the rig (VAD layout), GNSS, IMU, speedometer (vlmad.rig.Rig.carla_sensors)."""
        return [dict(s) for s in self._sensors]

    def input_image_sizes(self) -> dict[str, tuple[int, int]]:
        """Camera id -> (W, H) the model actually uses. The agent bridge (carla_eval.bridge) resizes on the
        simulator side to this; images at the sensors() size are accepted as well."""
        return {name: self.images.size for name in self.images.names}

    def wants_images(self) -> bool:
        """Whether the next `run_step` reads the camera images: a model call, a debug-video frame, or the
        last images would otherwise be older than `max_sensor_lag_frames`. Called once per tick, before
        `run_step`, by the offline world only (world/runner.py), which then renders the cameras only on
        those ticks and hands the last images, with their own frame number, on the others (the images
        the model sees are the same; rendering is a third of a tick, docs/offline_world.md). CARLA and
        the leaderboard never call it: they render every tick."""
        nxt = self.tick + 1
        want = (self._plan is None or nxt - self._plan[2] >= self.opts.model_every
                or nxt - self._images_tick > self.opts.max_sensor_lag_frames
                or (self._video is not None and nxt % self.opts.debug_every == 0))
        if want:
            self._images_tick = nxt
        return want

    def set_global_plan(self, global_plan_gps: list, global_plan_world_coord: list) -> None:
        super().set_global_plan(global_plan_gps, global_plan_world_coord)  # downsamples (leaderboard's rule)
        self._init_route(global_plan_gps, global_plan_world_coord)

    def run_step(self, input_data: dict, timestamp: float) -> carla.VehicleControl:
        """One 20 Hz tick -> VehicleControl. Never raises: any failure is a full brake and a log line."""
        self.tick += 1
        self.timing = {"preprocess_ms": 0.0, "model_ms": 0.0, "control_ms": 0.0}
        t0 = time.perf_counter()
        try:
            out = self._drive(input_data, float(timestamp))
            self.brake_reason = None
        except (SensorError, _Brake) as e:
            out = self._brake(str(e))
        except Exception as e:  # noqa: BLE001 - never crash the evaluation: brake and say why
            out = self._brake(f"{type(e).__name__} in the agent: {e}")
        self.timing["total_ms"] = (time.perf_counter() - t0) * 1e3
        self.last_control = out
        if self._video is not None and self.tick % self.opts.debug_every == 0:
            self._debug_frame(input_data, out)
        return carla.VehicleControl(throttle=float(out.throttle), steer=float(out.steer),
                                    brake=float(out.brake))

    def destroy(self) -> None:
        """Finish the debug video and free the model (the leaderboard builds a new agent per route)."""
        video, self._video = getattr(self, "_video", None), None
        if video is not None:
            try:
                path = video.close()
                if path is not None:
                    log.info("debug video: %s (%d frames)", path, video.frames)
            except Exception as e:  # noqa: BLE001 - a video problem must not fail the route
                log.warning("debug video could not be finished: %s", e)
        self.model = self._compiled = self._onnx = None
        if hasattr(self, "_history"):
            self._history.clear()  # BEV states can hold GPU memory
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    # ------------------------------------------------------------------------------------------------
    # one tick
    # ------------------------------------------------------------------------------------------------
    def _init_route(self, gps_plan: list, world_plan: list) -> None:
        if not world_plan or not self._global_plan_world_coord:
            log.error("set_global_plan: empty route; the agent will brake")
            return
        self.geo_ref, worst = fit_geo_reference(gps_plan, world_plan)
        if not worst < 1.0:
            log.warning("route GPS and world coordinates disagree by up to %.2f m under the leaderboard's "
                        "Mercator; GNSS positions may be off", worst)
        if self.carla_map is None:
            self.carla_map = live_carla_map()
        self.gnss = self._gnss_frame(self.opts.gnss)
        start = world_plan[0][0].location
        self._spawn_xy = carla_location_to_ego(start)[:2]  # the leaderboard spawns the ego here
        self.route = planner_from_world_plan(self._global_plan_world_coord, self.opts.route_min_distance,
                                             self.opts.route_max_distance)

    def _gnss_frame(self, mode: str) -> GnssFrame:
        has_map = hasattr(self.carla_map, "geolocation_to_transform")
        if mode == "auto":
            mode = "carla_map" if has_map else "classic"
        if mode == "carla_map" and not has_map:
            log.error("gnss: carla_map needs the live CARLA >= 0.9.16 map; none found: using classic")
            mode = "classic"
        return GnssFrame(mode, self.geo_ref, self.carla_map)

    def _check_first_fix(self, ego: EgoReading) -> None:
        """The first fix must be near the spawn point; under gnss: auto, switch convention if the other
        one explains it (e.g. a CARLA version mix), else warn once."""
        def dist(frame: GnssFrame) -> float:
            pose = ego_pose_from_gnss(frame.world_xy(ego.lat, ego.lon, ego.alt), ego.yaw, self.rig.imu_x)
            return float(np.linalg.norm(pose[:2, 3] - self._spawn_xy))

        d = dist(self.gnss)
        if d <= GNSS_ROUTE_WARN_M:
            return
        if self.opts.gnss == "auto":
            for mode in GnssFrame.MODES:
                if mode == self.gnss.mode or (mode == "carla_map" and self.carla_map is None):
                    continue
                other = GnssFrame(mode, self.geo_ref, self.carla_map)
                if dist(other) < 0.25 * GNSS_ROUTE_WARN_M:
                    log.warning("first GNSS fix is %.0f m from the spawn point under the %s convention and "
                                "%.1f m under %s: using %s", d, self.gnss.mode, dist(other), mode, mode)
                    self.gnss = other
                    return
        log.warning("first GNSS fix is %.0f m from the spawn point (%s convention): the server's geolocation "
                    "may differ from the route's (docs/agent.md, 'GNSS')", d, self.gnss.mode)

    def _drive(self, input_data: dict, timestamp: float) -> ControlOutput:
        ego = read_sensors(input_data, self._sensors, self.opts.max_sensor_lag_frames,
                           self.input_image_sizes())
        if self.route is None and self._global_plan_world_coord:
            self._init_route(self._global_plan or [], self._global_plan_world_coord)
        if self.route is None:
            raise _Brake("no route: set_global_plan was not called or the route is empty")
        t_ctrl = time.perf_counter()
        if not self._gnss_checked:
            self._gnss_checked = True
            self._check_first_fix(ego)
        # absolute pose (for the route) from GNSS + compass; odometry pose (for ego motion)
        gnss_xy = self.gnss.world_xy(ego.lat, ego.lon, ego.alt)
        self.world_from_ego = ego_pose_from_gnss(gnss_xy, ego.yaw, self.rig.imu_x)
        ego_xy = self.world_from_ego[:2, 3]
        pose = self._odometry(ego, ego_xy, timestamp)
        self.target = self.route.run_step(ego_xy)
        self.goal = transform_points(invert_transform(self.world_from_ego), self.target.xy)
        ctrl_ms = time.perf_counter() - t_ctrl

        if self._plan is None or self.tick - self._plan[2] >= self.opts.model_every:
            self._plan = None  # a failed call leaves no plan: brake, retry next tick
            self._run_model(input_data, ego, pose, timestamp)
        plan_xy, plan_pose, _ = self._plan
        t_ctrl = time.perf_counter()
        plan = transform_points(relative_motion(plan_pose, pose), plan_xy)  # into the current ego frame
        out = self._creep(self.controller.step(plan, ego.speed, self.goal), ego)
        out.info["plan"] = plan
        self.timing["control_ms"] = (ctrl_ms + time.perf_counter() - t_ctrl) * 1e3
        return out

    def _odometry(self, ego: EgoReading, ego_xy: np.ndarray, timestamp: float) -> np.ndarray:
        if not self.odometry.started:
            self.odometry.reset(ego_xy, ego.yaw, ego.alt)
            pose = self.odometry.pose()
        else:
            dt = timestamp - self._last_t if self._last_t is not None else TICK_S
            dt = dt if 0.0 < dt <= 5.0 else TICK_S  # gaps (sensor faults) integrate at the current speed
            pose = self.odometry.update(ego.speed, ego.yaw, dt, ego.alt)
        self._last_t = timestamp
        self._poses.append((timestamp, pose))
        return pose

    def _previous(self) -> _Memory | None:
        """The newest stored model call at least `bev_history_ticks` old (older ones are dropped)."""
        limit = self.tick - self.opts.bev_history_ticks
        h = self._history
        max_age = max(MAX_STATE_AGE_TICKS, self.opts.bev_history_ticks + self.opts.model_every)
        while h and (self.tick - h[0].tick > max_age or (len(h) >= 2 and h[1].tick <= limit)):
            h.popleft()  # too old to align (e.g. after a sensor outage), or a newer one qualifies
        return h[0] if h and h[0].tick <= limit else None

    def _ego_his(self, pose: np.ndarray, now: float) -> np.ndarray:
        """(HIS_STEPS, 2) ego positions 1.0 s and 0.5 s ago (oldest first, vlmad.horizon) in the current ego
        frame (0 where not yet known)."""
        out = np.zeros((HIS_STEPS, 2))
        for i, ago in enumerate(STEP_S * k for k in range(HIS_STEPS, 0, -1)):
            best = min(self._poses, key=lambda p: abs(p[0] - (now - ago)), default=None)
            if best is not None and abs(best[0] - (now - ago)) < 0.5 * TICK_S + 1e-6:
                out[i] = transform_points(invert_transform(pose), best[1][:3, 3])[:2]
        return out

    def _run_model(self, input_data: dict, ego: EgoReading, pose: np.ndarray, timestamp: float) -> None:
        t0 = time.perf_counter()
        dev = self.device
        img, proj = self.images(input_data, dev)
        prev = self._previous()
        cur_from_prev = relative_motion(prev.pose, pose) if prev is not None else np.eye(4)
        bus = can_bus(pose, ego, prev.pose if prev is not None else None)

        def t(x: np.ndarray) -> torch.Tensor:
            return torch.as_tensor(np.asarray(x, dtype=np.float32), device=dev)

        inputs = {
            "img": img[None, None], "img_from_ego": proj[None, None], "can_bus": t(bus)[None, None],
            "cur_from_prev": t(cur_from_prev)[None, None],
            "prev_valid": torch.tensor([[prev is not None]], device=dev),
            "command": torch.tensor([int(self.target.command)], device=dev),
            "ego_his": t(self._ego_his(pose, timestamp))[None],
        }
        if self.cfg.use_goal_point:  # the CARLA variant: sparse goal point (+ command) into the planner
            inputs["goal_point"] = t(self.goal)[None]
        self.timing["preprocess_ms"] = (time.perf_counter() - t0) * 1e3
        t1 = time.perf_counter()
        amp = (torch.autocast("cuda", dtype=torch.bfloat16) if self.opts.autocast and dev.type == "cuda"
               else contextlib.nullcontext())
        if self._onnx is not None:  # checks the inputs' finiteness and shapes itself
            out, state = self._onnx(inputs, prev.state if prev is not None else None)
        else:
            if self._compiled is not None:  # a compiled graph cannot raise: check its inputs here
                check_finite_inputs(inputs)
                self._guard.check(inputs["img_from_ego"])
            with torch.inference_mode(), amp:
                model = self._compiled if self._compiled is not None else self.model
                out, state = model(inputs, prev.state if prev is not None else None)
        plan = out["plan"][0].float().cpu().numpy().astype(np.float64)  # (T, 2); the copy synchronises
        self.timing["model_ms"] = (time.perf_counter() - t1) * 1e3
        if not np.isfinite(plan).all():
            raise _Brake("the model's plan contains NaN or inf")
        if not bool(torch.isfinite(state.bev).all()):  # never carry a poisoned BEV into later ticks
            raise _Brake("the model's BEV state contains NaN or inf")
        self._plan = (plan, pose, self.tick)
        self._history.append(_Memory(self.tick, pose, state))
        self._outputs = {
            "det_boxes": out["det_boxes"][0].float().cpu().numpy(),
            "det_scores": out["det_logits"][0].float().sigmoid().max(-1)[0].cpu().numpy(),
            "map_pts": out["map_pts"][0].float().cpu().numpy(),
            "map_scores": out["map_logits"][0].float().sigmoid().max(-1)[0].cpu().numpy(),
            "map_cls": out["map_logits"][0].float().argmax(-1).cpu().numpy(),
            "tl_class": int(out["tl_logits"][0].argmax()) if "tl_logits" in out else None,
        }

    # ------------------------------------------------------------------------------------------------
    # safety, creep, debug
    # ------------------------------------------------------------------------------------------------
    def _brake(self, reason: str) -> ControlOutput:
        key = reason.split(":")[0]
        last_key, last_tick = self._last_fault
        if key != last_key or self.tick - last_tick >= REPEAT_LOG_TICKS:
            log.warning("tick %d: full brake: %s", self.tick, reason)
            self._last_fault = (key, self.tick)
        self.brake_reason = reason
        return ControlOutput(0.0, 0.0, 1.0, {"reason": reason})

    def _path_clear(self) -> bool:
        o, c = self._outputs, self.opts
        if o is None or o["tl_class"] in TL_STOP_CLASSES:
            return False
        xy = o["det_boxes"][:, :2]
        ahead = (xy[:, 0] > 0) & (xy[:, 0] < c.creep_clear_m) & (np.abs(xy[:, 1]) < c.creep_half_width_m)
        return not bool((ahead & (o["det_scores"] >= c.creep_det_score)).any())

    def _creep(self, out: ControlOutput, ego: EgoReading) -> ControlOutput:
        """Optional (AgentConfig.creep): after a long stop with a clear path, drive gently for a moment."""
        c = self.opts
        if not c.creep:
            return out
        self._stopped_ticks = self._stopped_ticks + 1 if abs(ego.speed) < 0.1 else 0
        if self._creep_left == 0 and out.brake > 0 and self._stopped_ticks * TICK_S >= c.creep_after_s:
            if self._path_clear():
                self._creep_left = max(1, round(c.creep_duration_s / TICK_S))
                self._stopped_ticks = 0
                log.info("tick %d: stopped for %.0f s with nothing detected ahead: creeping for %.1f s",
                         self.tick, c.creep_after_s, c.creep_duration_s)
        if self._creep_left > 0:
            self._creep_left -= 1
            return ControlOutput(out.steer, c.creep_throttle, 0.0, {**out.info, "creep": True})
        return out

    def _debug_frame(self, input_data: dict, out: ControlOutput) -> None:
        try:
            name = self.rig.camera_names[0]
            item = input_data.get(name)
            if item is None or not isinstance(item[1], np.ndarray) or item[1].ndim != 3:
                return
            img = item[1]
            cam = self.rig.camera(name).resized(img.shape[1], img.shape[0])
            cmd = self.target.command.name if self.target is not None else "-"
            lines = [f"tick {self.tick}  cmd {cmd}  steer {out.steer:+.2f} thr {out.throttle:.2f} "
                     f"brake {out.brake:.0f}",
                     f"model {self.timing.get('model_ms', 0.0):.0f} ms  desired "
                     f"{out.info.get('desired_speed', float('nan')):.1f} m/s"]
            if self.brake_reason:
                lines.append(f"BRAKE: {self.brake_reason[:70]}")
            self._video.add(img, cam, out.info.get("plan"), self.goal, self._outputs, lines)
        except Exception as e:  # noqa: BLE001 - debug output must never affect driving
            log.warning("debug video disabled after an error: %s", e)
            self._video = None
