"""A valid random batch for any VAD config (tests and the benchmarks scripts/bench_model.py, bench_train.py,
bench_vlmad.py; not the pipeline, hence here and not in models/).

Images are random (already "normalised"), calibration is the real CARLA rig from `vlmad.rig` at the
config's image size, ego motion is a plausible forward drive, targets are random but well-formed (in
range, 20-point map polylines, agent futures along their velocity). Not data: a shape-and-plumbing aid.
The feature part is `models.features.feature_inputs(batch)`.
"""

from __future__ import annotations

import numpy as np
import torch

from models.vad import VADConfig
from vlmad.frames import relative_motion, se2_pose
from vlmad.horizon import FUT_STEPS, HIS_STEPS, STEP_S
from vlmad.rig import CARLA_RIG


def dummy_img_from_ego(cfg: VADConfig) -> torch.Tensor:
    """(Ncam, 4, 4) projections of the CARLA rig for the config's resized (and padded) images."""
    rig = CARLA_RIG.with_image_size(*cfg.img_size_raw)
    mats = rig.img_from_ego(cfg.img_scale)[: cfg.num_cams]
    return torch.as_tensor(mats, dtype=torch.float32)


def make_dummy_batch(
    cfg: VADConfig,
    batch_size: int = 1,
    num_agents: int = 3,
    num_map: int = 4,
    seed: int = 0,
    queue_length: int | None = None,
) -> dict:
    """A batch in the data contract's "Model batch" layout (features + targets) for `cfg`.

    queue_length defaults to cfg.queue_length. Extra keys: goal_point (B, 2) and tl_label (B,) for the
    CARLA variant (harmless otherwise)."""
    g = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    b, tq = batch_size, queue_length or cfg.queue_length
    h, w = cfg.img_hw
    x0, y0, x1, y1 = cfg.ego_range  # targets live in the ego frame
    img = torch.randn(b, tq, cfg.num_cams, 3, h, w, generator=g)
    img_from_ego = dummy_img_from_ego(cfg)[None, None].expand(b, tq, -1, -1, -1).clone()

    # ego drives forward ~5 m/s with a gentle yaw rate; frames STEP_S apart
    cur_from_prev = torch.zeros(b, tq, 4, 4)
    for i in range(b):
        speed, yaw_rate = 3.0 + 4.0 * rng.random(), rng.uniform(-0.2, 0.2)
        poses = [se2_pose(STEP_S * k * speed, 0.0, STEP_S * k * yaw_rate) for k in range(tq)]
        cur_from_prev[i, 0] = torch.eye(4)
        for k in range(1, tq):
            cur_from_prev[i, k] = torch.as_tensor(
                relative_motion(poses[k - 1], poses[k]), dtype=torch.float32
            )
    prev_valid = torch.ones(b, tq, dtype=torch.bool)
    prev_valid[:, 0] = False
    can_bus = torch.randn(b, tq, 18, generator=g) * 0.5

    command = torch.randint(0, 3, (b,), generator=g)
    t = torch.arange(1, FUT_STEPS + 1, dtype=torch.float32) * STEP_S
    speed = 2.0 + 6.0 * torch.rand(b, 1, generator=g)
    lateral = torch.where(command == 0, -1.0, torch.where(command == 1, 1.0, 0.0))[:, None] * 0.2 * t**2
    ego_fut = torch.stack([speed * t, lateral.expand(b, FUT_STEPS)], -1)
    ago = [STEP_S * (HIS_STEPS - k) for k in range(HIS_STEPS)]  # 1.0 s, 0.5 s
    ego_his = torch.stack([torch.cat([-speed * a, torch.zeros(b, 1)], -1) for a in ago], 1)

    agents, maps = [], []
    for _ in range(b):
        n = num_agents
        # agents and map lines stay out of the ego corridor (|y| < 4 m) so the planning constraints
        # agree with the ground-truth plan, as they would on real data
        side = torch.where(torch.rand(n, generator=g) < 0.5, -1.0, 1.0)
        xy = torch.stack(
            [
                torch.empty(n).uniform_(x0 + 3, x1 - 3, generator=g),
                side * torch.empty(n).uniform_(4.0, max(y1 - 2, 4.5), generator=g),
            ],
            -1,
        )
        size = torch.tensor([4.5, 1.9, 1.6]) * (0.8 + 0.4 * torch.rand(n, 3, generator=g))
        yaw = torch.empty(n, 1).uniform_(-0.3, 0.3, generator=g)
        z = torch.full((n, 1), 0.8)
        vel = torch.stack([torch.randn(n, generator=g) * 3.0, torch.zeros(n)], -1)
        fut = xy[:, None] + vel[:, None] * t[None, :, None]
        agents.append(
            {
                "boxes": torch.cat([xy, z, size, yaw], -1),
                "labels": torch.randint(0, cfg.num_classes, (n,), generator=g),
                "velocity": vel,
                "fut": fut,
                "fut_mask": torch.ones(n, FUT_STEPS, dtype=torch.bool),
            }
        )
        k = num_map
        side = torch.where(torch.rand(k, generator=g) < 0.5, -1.0, 1.0)
        start = torch.stack(
            [
                torch.empty(k).uniform_(x0 + 2, 0.0, generator=g),
                side * torch.empty(k).uniform_(5.0, max(y1 - 1, 5.5), generator=g),
            ],
            -1,
        )
        ang = torch.empty(k).uniform_(-0.1, 0.1, generator=g)
        s = torch.linspace(0, 20.0, cfg.map_num_pts)
        pts = start[:, None] + s[None, :, None] * torch.stack([ang.cos(), ang.sin()], -1)[:, None]
        pts = torch.stack([pts[..., 0].clamp(x0, x1), pts[..., 1].clamp(y0, y1)], -1)
        maps.append({"cls": torch.randint(0, cfg.map_num_classes, (k,), generator=g), "pts": pts})
    return {
        "img": img,
        "img_from_ego": img_from_ego,
        "can_bus": can_bus,
        "cur_from_prev": cur_from_prev,
        "prev_valid": prev_valid,
        "command": command,
        "ego_his": ego_his,
        "goal_point": ego_fut[:, -1].clone() + torch.tensor([10.0, 0.0]),
        "ego_fut": ego_fut,
        "ego_fut_mask": torch.ones(b, FUT_STEPS, dtype=torch.bool),
        "agents": agents,
        "map": maps,
        "tl_label": torch.randint(0, cfg.tl_num_classes, (b,), generator=g),
        "token": [f"dummy_{seed}_{i}" for i in range(b)],
    }

