"""VADAgent end to end on synthetic leaderboard input: controls, temporal state, safety, swapping, options."""

from __future__ import annotations

import json
import logging
import math
import shutil

import carla
import cv2
import numpy as np
import pytest
import torch
import yaml

from agent.vad_agent import VADAgent
from scripts.export_agent import main as export_main
from synthetic.leaderboard import camera_images, input_data, leaderboard_plans, turning_route
from vlmad.errors import UserError
from vlmad.frames import se2_pose
from vlmad.rig import RIGS, describe_rig

SMALL = [320, 180]  # camera_size for the tests that do not need full-size images


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("ckpts")
    export_main(["--random-init", "--config", "vad_nano", "--out", str(root / "nano")])
    # a second, different config: no goal point / traffic light, caffe BGR, another image scale and BEV
    export_main(["--random-init", "--config", "vad_nano", "--seed", "1", "--out", str(root / "other"),
                 "--set", "use_goal_point=false", "--set", "use_traffic_light=false",
                 "--set", "img_norm=caffe", "--set", "img_scale=0.08", "--set", "bev_h=20",
                 "--set", "bev_w=16"])
    return {"nano": root / "nano", "other": root / "other", "root": root}


def make_agent(ckpt, tmp_path, **opts) -> VADAgent:
    """An agent on `ckpt`, through an agent YAML when options are given."""
    if not opts:
        return VADAgent(str(ckpt))
    path = tmp_path / f"agent_{len(list(tmp_path.glob('agent_*.yaml')))}.yaml"
    path.write_text(yaml.safe_dump({"checkpoint": str(ckpt), **opts}))
    return VADAgent(str(path))


class Spy:
    """Wraps the agent's model: records inputs and states; can replace the plan, detections, traffic light,
    or raise. The real model still runs, so every output has its real shape."""

    def __init__(self, model, plan=None, exc=None, det_logit=None, det_xy=None, tl=None):
        self.model, self.plan, self.exc = model, plan, exc
        self.det_logit, self.det_xy, self.tl = det_logit, det_xy, tl
        self.inputs, self.states_in, self.states_out = [], [], []

    def __call__(self, inputs, state=None):
        self.inputs.append(inputs)
        self.states_in.append(state)
        if self.exc is not None:
            raise self.exc
        out, new = self.model(inputs, state)
        out = dict(out)
        if self.plan is not None:
            out["plan"] = torch.as_tensor(np.asarray(self.plan), dtype=torch.float32)[None]
        if self.det_logit is not None:
            out["det_logits"] = torch.full_like(out["det_logits"], float(self.det_logit))
        if self.det_xy is not None:
            out["det_boxes"] = out["det_boxes"].clone()
            out["det_boxes"][..., :2] = torch.as_tensor(self.det_xy, dtype=torch.float32)
        if self.tl is not None and "tl_logits" in out:
            out["tl_logits"] = torch.nn.functional.one_hot(torch.tensor([self.tl]), 4).float() * 10
        self.states_out.append(new)
        return out, new


def straight_plan(speed: float) -> np.ndarray:
    return np.stack([speed * 0.5 * np.arange(1, 7), np.zeros(6)], 1)


class Drive:
    """Feeds an agent synthetic ticks: the ego moves along its heading at `speed` from a route start."""

    def __init__(self, agent: VADAgent, speed: float = 2.0, yaw: float = 0.0, with_route: bool = True,
                 origin: tuple[float, float] = (0.0, 0.0)):
        self.agent, self.speed, self.yaw, self.origin = agent, speed, yaw, np.asarray(origin, dtype=float)
        pts, opts = turning_route()
        c, s = math.cos(yaw), math.sin(yaw)
        pts = pts @ np.array([[c, s], [-s, c]]) + self.origin  # rotate to start along `yaw`, then shift
        if with_route:
            agent.set_global_plan(*leaderboard_plans(pts, opts))
        self.images = camera_images(agent.sensors())
        self.tick = 0

    def pose(self, tick: int) -> np.ndarray:
        d = self.speed * 0.05 * tick
        x, y = self.origin + d * np.array([math.cos(self.yaw), math.sin(self.yaw)])
        return se2_pose(x, y, self.yaw)

    def data(self) -> dict:
        return input_data(self.agent.rig, self.images, 100 + self.tick, self.pose(self.tick), self.speed)

    def step(self, data: dict | None = None) -> carla.VehicleControl:
        data = self.data() if data is None else data
        control = self.agent.run_step(data, 0.05 * self.tick)
        self.tick += 1
        return control


def assert_valid(c: carla.VehicleControl) -> None:
    assert isinstance(c, carla.VehicleControl)
    for v in (c.throttle, c.steer, c.brake):
        assert math.isfinite(v)
    assert 0.0 <= c.throttle <= 0.75 + 1e-6 and -1.0 <= c.steer <= 1.0 and 0.0 <= c.brake <= 1.0


def test_fifty_ticks_at_the_rigs_resolution(ckpts):
    agent = VADAgent(str(ckpts["nano"]))
    cams = [s for s in agent.sensors() if s["type"] == "sensor.camera.rgb"]
    assert {(s["width"], s["height"]) for s in cams} == {(1600, 900)}
    drive = Drive(agent)
    for _ in range(50):
        assert_valid(drive.step())
        assert agent.brake_reason is None  # no fault on any tick: the controls came from the model's plans
        assert agent.timing["model_ms"] > 0 and agent.timing["control_ms"] > 0
    agent.destroy()


def test_plan_to_control_and_model_rate(ckpts, tmp_path):
    """A forward plan gives throttle; with model_every 3 the model runs on ticks 0, 3, 6 and the controller
    tracks the stored plan in between (moved into the current ego frame)."""
    agent = make_agent(ckpts["nano"], tmp_path, camera_size=SMALL, model_every=3)
    spy = agent.model = Spy(agent.model, plan=straight_plan(4.0))
    drive = Drive(agent, speed=1.0)
    controls = [drive.step() for _ in range(7)]
    assert len(spy.inputs) == 3
    for c in controls:
        assert c.brake == 0.0 and c.throttle > 0.0 and abs(c.steer) < 1e-6
    # between model calls the stored plan shifts back by the distance driven (1 m/s x 0.05 s per tick)
    plan = agent.last_control.info["plan"]
    assert np.allclose(plan[:, 0], straight_plan(4.0)[:, 0] - 0.0, atol=1e-6)  # tick 6 ran the model
    drive.step()
    assert np.allclose(agent.last_control.info["plan"][:, 0], straight_plan(4.0)[:, 0] - 0.05, atol=1e-6)


@pytest.mark.parametrize("yaw_deg", [0.0, 90.0])
def test_temporal_state_ego_motion_and_can_bus(ckpts, tmp_path, yaw_deg):
    """The previous BEV handed to the model is the one from bev_history_ticks ago, with the ego motion
    since then in the ego frame (cur_from_prev), the CAN-bus deltas in world axes, and the ego history."""
    agent = make_agent(ckpts["nano"], tmp_path, camera_size=SMALL, bev_history_ticks=4)
    spy = agent.model = Spy(agent.model)
    v, yaw = 2.0, math.radians(yaw_deg)
    drive = Drive(agent, speed=v, yaw=yaw)
    for _ in range(21):
        drive.step()
    assert len(spy.inputs) == 21
    for t in range(4):
        assert spy.states_in[t] is None and not bool(spy.inputs[t]["prev_valid"][0, 0])
    for t in (4, 9, 20):
        assert spy.states_in[t] is spy.states_out[t - 4]
        assert bool(spy.inputs[t]["prev_valid"][0, 0])
    d = v * 0.05 * 4
    cur_from_prev = spy.inputs[20]["cur_from_prev"][0, 0].double().numpy()
    assert np.allclose(cur_from_prev[:3, 3], [-d, 0.0, 0.0], atol=1e-4)  # the old origin is d behind
    assert np.allclose(cur_from_prev[:3, :3], np.eye(3), atol=1e-6)
    bus = spy.inputs[20]["can_bus"][0, 0].double().numpy()
    assert np.allclose(bus[:2], [d * math.cos(yaw), d * math.sin(yaw)], atol=1e-4)
    assert bus[13] == pytest.approx(v) and bus[17] == pytest.approx(0.0, abs=1e-4)
    his = spy.inputs[20]["ego_his"][0].double().numpy()  # -1.0 s and -0.5 s in the current ego frame
    assert np.allclose(his, [[-v * 1.0, 0.0], [-v * 0.5, 0.0]], atol=1e-4)
    goal = spy.inputs[20]["goal_point"][0].double().numpy()  # route target ahead on the ego's x axis
    assert goal[0] > 0 and abs(goal[1]) < 1e-3
    assert int(spy.inputs[20]["command"][0]) == 2  # straight while the next route point is LANEFOLLOW


def test_nan_plan_brakes_then_recovers(ckpts, tmp_path, caplog):
    agent = make_agent(ckpts["nano"], tmp_path, camera_size=SMALL)
    nan_plan = straight_plan(3.0)
    nan_plan[2, 1] = np.nan
    spy = agent.model = Spy(agent.model, plan=nan_plan)
    drive = Drive(agent)
    with caplog.at_level(logging.WARNING, logger="agent.vad"):
        c = drive.step()
    assert c.brake == 1.0 and c.throttle == 0.0
    assert "NaN" in agent.brake_reason
    lines = [r for r in caplog.records if "full brake" in r.getMessage()]
    assert len(lines) == 1 and "\n" not in lines[0].getMessage()
    spy.plan = straight_plan(3.0)
    c = drive.step()  # the next tick runs the model again and drives
    assert c.brake == 0.0 and c.throttle > 0.0 and agent.brake_reason is None


def test_missing_or_stale_sensor_brakes(ckpts, tmp_path, caplog):
    agent = make_agent(ckpts["nano"], tmp_path, camera_size=SMALL)
    agent.model = Spy(agent.model, plan=straight_plan(3.0))
    drive = Drive(agent)
    assert drive.step().brake == 0.0
    data = drive.data()
    del data["CAM_BACK"]
    with caplog.at_level(logging.WARNING, logger="agent.vad"):
        c = drive.step(data)
    assert c.brake == 1.0 and "CAM_BACK" in agent.brake_reason
    data = drive.data()
    data["GPS"] = (data["GPS"][0] - 5, data["GPS"][1])
    assert drive.step(data).brake == 1.0 and "stale" in agent.brake_reason
    data = drive.data()
    data["IMU"] = (data["IMU"][0], np.full(7, np.inf))
    assert drive.step(data).brake == 1.0 and "IMU" in agent.brake_reason
    assert drive.step().brake == 0.0  # good data again: drives


def test_model_exception_never_escapes(ckpts, tmp_path, caplog):
    agent = make_agent(ckpts["nano"], tmp_path, camera_size=SMALL)
    agent.model = Spy(agent.model, exc=RuntimeError("CUDA out of memory (simulated)"))
    drive = Drive(agent)
    with caplog.at_level(logging.WARNING, logger="agent.vad"):
        controls = [drive.step() for _ in range(30)]
    assert all(c.brake == 1.0 and c.throttle == 0.0 for c in controls)
    msgs = [r.getMessage() for r in caplog.records if "full brake" in r.getMessage()]
    # one line, not a traceback; the same cause repeated is logged again once per second (20 ticks)
    assert len(msgs) == 2 and all("simulated" in m and "Traceback" not in m for m in msgs)


def test_no_route_brakes(ckpts, tmp_path):
    agent = make_agent(ckpts["nano"], tmp_path, camera_size=SMALL)
    c = Drive(agent, with_route=False).step()
    assert c.brake == 1.0 and "no route" in agent.brake_reason


def test_checkpoint_swap_needs_no_code_change(ckpts, tmp_path):
    """Two configs, one agent class: the checkpoint's config decides image size, normalisation, goal point."""
    seen = {}
    for name in ("nano", "other"):
        agent = make_agent(ckpts[name], tmp_path, camera_size=SMALL)
        spy = agent.model = Spy(agent.model)
        drive = Drive(agent)
        for _ in range(3):
            assert_valid(drive.step())
            assert agent.brake_reason is None
        seen[name] = spy.inputs[-1]
        agent.destroy()
    assert seen["nano"]["img"].shape[-2:] == (96, 160) and "goal_point" in seen["nano"]
    assert seen["other"]["img"].shape[-2:] == (96, 128) and "goal_point" not in seen["other"]
    # caffe BGR vs torchvision RGB of the same pixels: different values, different ranges
    assert seen["other"]["img"].abs().max() > 50 > seen["nano"]["img"].abs().max()


def test_bad_checkpoint_or_options_fail_in_setup(ckpts, tmp_path):
    bad = tmp_path / "corrupt"
    shutil.copytree(ckpts["nano"], bad)
    weights = bad / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(UserError, match="model.safetensors"):
        VADAgent(str(bad))
    (bad / "meta.json").unlink()  # no recorded hash either: the truncated file itself is refused
    with pytest.raises(UserError, match="corrupt|truncated|meta.json"):
        VADAgent(str(bad))
    with pytest.raises(UserError, match="does not exist"):
        VADAgent(str(tmp_path / "nowhere"))
    with pytest.raises(UserError, match="unknown field.*model_evry"):
        make_agent(ckpts["nano"], tmp_path, model_evry=2)
    with pytest.raises(UserError, match="model_every"):
        make_agent(ckpts["nano"], tmp_path, model_every=20)
    with pytest.raises(UserError, match="rig"):
        make_agent(ckpts["nano"], tmp_path, rig="no_such_rig")
    no_ckpt = tmp_path / "agent.yaml"
    no_ckpt.write_text("device: cpu\n")
    with pytest.raises(UserError, match="checkpoint"):
        VADAgent(str(no_ckpt))


def test_creep_only_when_enabled_and_clear(ckpts, tmp_path):
    stop = np.zeros((6, 2))

    def run(**opts) -> list[carla.VehicleControl]:
        agent = make_agent(ckpts["nano"], tmp_path, camera_size=SMALL, **opts)
        agent.model = Spy(agent.model, plan=stop, det_logit=-10.0, tl=2)  # nothing detected, green light
        if opts.get("creep_det_score") == 0.0:
            agent.model.det_logit, agent.model.det_xy = 5.0, [5.0, 0.0]  # an agent 5 m ahead
        drive = Drive(agent, speed=0.0)
        return [drive.step() for _ in range(12)]

    assert all(c.brake == 1.0 for c in run())  # off by default
    controls = run(creep=True, creep_after_s=0.2, creep_duration_s=0.15, creep_throttle=0.3)
    # stopped for 4 ticks (0.2 s) with a clear path: creep for 3 ticks (0.15 s), then brake again
    assert [c.brake for c in controls[:3]] == [1.0] * 3
    assert [c.throttle for c in controls[3:6]] == pytest.approx([0.3] * 3)
    assert [c.brake for c in controls[3:6]] == [0.0] * 3 and controls[6].brake == 1.0
    blocked = run(creep=True, creep_after_s=0.2, creep_det_score=0.0)
    assert all(c.brake == 1.0 for c in blocked)


def test_debug_video_per_route(ckpts, tmp_path):
    out = tmp_path / "debug"
    agent = make_agent(ckpts["nano"], tmp_path, camera_size=SMALL, debug_dir=str(out), debug_every=1)
    drive = Drive(agent)
    for _ in range(4):
        drive.step()
    partial = list(out.glob("*.mp4"))
    assert len(partial) == 1 and ".partial" in partial[0].name  # not final before destroy
    agent.destroy()
    videos = list(out.glob("*.mp4"))
    assert len(videos) == 1 and ".partial" not in videos[0].name
    cap = cv2.VideoCapture(str(videos[0]))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 4
    ok, frame = cap.read()
    assert ok and frame.shape[1] > frame.shape[0]  # front image + BEV side by side
    cap.release()


def test_images_resized_by_the_bridge_are_accepted(ckpts, tmp_path):
    """The agent bridge resizes cameras to input_image_sizes() before sending: same projections result."""
    agent = make_agent(ckpts["nano"], tmp_path, camera_size=SMALL)
    spy = agent.model = Spy(agent.model)
    sizes = agent.input_image_sizes()
    assert set(sizes) == set(agent.rig.camera_names) and set(sizes.values()) == {(160, 90)}
    drive = Drive(agent)
    drive.step()
    data = drive.data()
    for name, (w, h) in sizes.items():
        frame, img = data[name]
        data[name] = (frame, cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA))
    drive.step(data)
    assert agent.brake_reason is None
    assert torch.allclose(spy.inputs[0]["img_from_ego"], spy.inputs[1]["img_from_ego"], atol=1e-4)
    data = drive.data()
    data["CAM_FRONT"] = (data["CAM_FRONT"][0], np.zeros((50, 70, 4), np.uint8))  # any other size: refused
    assert drive.step(data).brake == 1.0 and "CAM_FRONT" in agent.brake_reason


def _gnss_0916(data: dict, drive: Drive, carla_map) -> dict:
    """input_data whose GPS follows CARLA 0.9.16's map geolocation (what its GNSS sensor reports)."""
    pose = drive.pose(drive.tick)
    mount = pose @ np.array([drive.agent.rig.imu_x, 0.0, 0.0, 1.0])
    geo = carla_map.transform_to_geolocation(carla.Location(float(mount[0]), float(-mount[1]), 0.0))
    data["GPS"] = (data["GPS"][0], np.array([geo.latitude, geo.longitude, geo.altitude]))
    return data


@pytest.mark.parametrize("sensor", ["classic", "0.9.16"])
def test_gnss_convention_of_the_server(ckpts, tmp_path, sensor, caplog):
    """gnss: auto uses the live map's geolocation_to_transform when there is one (CARLA 0.9.16, whose GNSS
    follows the map's new projection); a first fix that only the other convention explains switches."""
    from world.xodr_gen import TownSpec, generate_town

    live_map = carla.Map("VlmadGrid", generate_town(TownSpec(lat0=49.0, lon0=8.0)))
    agent = make_agent(ckpts["nano"], tmp_path, camera_size=SMALL)
    agent.model = Spy(agent.model, plan=straight_plan(2.0))
    agent.carla_map = live_map  # what CarlaDataProvider.get_map() gives under the leaderboard
    drive = Drive(agent, origin=(40.0, -130.0), yaw=0.3)  # far from y = 0: the conventions differ by 260 m
    with caplog.at_level(logging.WARNING, logger="agent.vad"):
        for _ in range(3):
            data = drive.data()
            drive.step(_gnss_0916(data, drive, live_map) if sensor == "0.9.16" else data)
            truth = drive.pose(drive.tick - 1)
            assert np.allclose(agent.world_from_ego[:2, 3], truth[:2, 3], atol=0.05)
    assert agent.gnss.mode == ("carla_map" if sensor == "0.9.16" else "classic")
    switched = [r for r in caplog.records if "convention" in r.getMessage()]
    assert len(switched) == (1 if sensor == "classic" else 0)


def test_gnss_mismatch_without_a_live_map_is_reported(ckpts, tmp_path, caplog):
    from world.xodr_gen import TownSpec, generate_town

    live_map = carla.Map("VlmadGrid", generate_town(TownSpec(lat0=49.0, lon0=8.0)))
    agent = make_agent(ckpts["nano"], tmp_path, camera_size=SMALL)
    agent.model = Spy(agent.model, plan=straight_plan(2.0))
    drive = Drive(agent, origin=(40.0, -130.0))
    with caplog.at_level(logging.WARNING, logger="agent.vad"):
        drive.step(_gnss_0916(drive.data(), drive, live_map))
    assert any("from the spawn point" in r.getMessage() for r in caplog.records)


def test_poisoned_or_stale_bev_state_is_not_carried(ckpts, tmp_path):
    agent = make_agent(ckpts["nano"], tmp_path, camera_size=SMALL, bev_history_ticks=1)
    spy = agent.model = Spy(agent.model, plan=straight_plan(2.0))
    real = spy.model

    def nan_state(inputs, state=None):
        out, new = real(inputs, state)
        return out, type(new)(new.bev * float("nan"), new.valid)

    drive = Drive(agent)
    spy.model = nan_state
    assert drive.step().brake == 1.0 and "BEV state" in agent.brake_reason
    spy.model = real
    assert drive.step().brake == 0.0 and spy.states_in[-1] is None  # the poisoned state was not kept
    drive.step()
    assert spy.states_in[-1] is spy.states_out[-2]  # normal chaining again
    data = drive.data()
    del data["CAM_FRONT"]
    for _ in range(45):  # a 2.25 s camera outage: no model calls
        assert drive.step(dict(data)).brake == 1.0
    n = len(spy.inputs)
    drive.step()
    assert len(spy.inputs) == n + 1 and spy.states_in[-1] is None  # too old to align: starts afresh
    assert not bool(spy.inputs[-1]["prev_valid"][0, 0])


def test_deployed_agent_does_not_import_the_offline_world():
    """The agent module loads under the leaderboard without the offline world (world.*), the training
    stack's fixtures or the benchmarks' synthetic inputs: GNSS maths comes from vlmad.gnss, route
    downsampling from agent.compat, CARLA conversions from vlmad.frames."""
    import subprocess
    import sys
    from pathlib import Path

    code = ("import sys, agent.vad_agent; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('world', 'synthetic', 'scripts')))")
    r = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[1],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]", r.stdout


@pytest.mark.parametrize(("trained_on", "warns"),
                         [("nuscenes_nominal", True), ("carla_vad", False), (None, False)])
def test_rig_mismatch_with_the_checkpoint_is_warned_at_setup(ckpts, tmp_path, caplog, trained_on, warns):
    """The checkpoint's training rig (meta.json) against the agent's rig (option rig=carla_vad, here at a
    smaller camera size, which is no difference): one warning naming both rigs and what differs."""
    ckpt = tmp_path / "ckpt"
    shutil.copytree(ckpts["nano"], ckpt)
    meta = json.loads((ckpt / "meta.json").read_text())
    meta["training_rig"] = describe_rig(RIGS[trained_on]) if trained_on else None
    (ckpt / "meta.json").write_text(json.dumps(meta))
    with caplog.at_level(logging.WARNING, logger="agent.vad"):
        make_agent(ckpt, tmp_path, camera_size=SMALL)
    lines = [r.getMessage() for r in caplog.records if "rig mismatch" in r.getMessage()]
    if warns:
        assert len(lines) == 1 and "'nuscenes_nominal'" in lines[0] and "'carla_vad'" in lines[0]
        assert "CAM_FRONT: mount [1.7, 0.02, 1.51] vs [0.8, 0.0, 1.6] m" in lines[0]
    else:
        assert lines == []
