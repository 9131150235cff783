"""The offline world renders cameras only on the ticks a VADAgent reads them (VADAgent.wants_images).

Same route, same random-init vad_nano, twice: once rendering every tick (the hint hidden), once on
demand. The model must get the same images at every call and the agent must give the same controls,
while about half the renders are skipped (model_every 2).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from agent.vad_agent import VADAgent
from scripts.export_agent import main as export_main
from world.config import WorldConfig
from world.expert import ExpertAgent
from world.ride_along import Diagnosis, RideAlong
from world.road_map import load_map, random_routes
from world.runner import OfflineRunner

STEPS = 24


class EveryTick:
    """The agent without its rendering hint: the runner renders every tick, as before."""

    def __init__(self, agent: VADAgent):
        self.agent = agent

    def __getattr__(self, name: str):
        if name == "wants_images":
            raise AttributeError(name)
        return getattr(self.agent, name)


def _drive(agent_yaml: str, hide_hint: bool, ride_along: bool = False,
           model_every: int = 2) -> tuple[list[torch.Tensor], list[tuple], int]:
    rmap = load_map("VlmadGrid1x1")
    cfg = WorldConfig()
    cfg.traffic.num_vehicles, cfg.traffic.num_pedestrians = 4, 0
    runner = OfflineRunner(rmap, cfg, 0)
    spec = random_routes(rmap, 1, np.random.default_rng(0), 40, 80)[0]
    images, controls, renders = [], [], [0]
    real_render = runner.render

    def counting_render(world, rig):
        renders[0] += 1
        return real_render(world, rig)

    runner.render = counting_render

    def factory():
        agent = VADAgent(agent_yaml)
        agent.opts.model_every = model_every
        model = agent.model

        def spy(inputs: dict, state):
            images.append(inputs["img"].clone())
            return model(inputs, state)

        agent.model = spy
        driver = EveryTick(agent) if hide_hint else agent
        return RideAlong(driver, ExpertAgent("", cfg.expert), Diagnosis()) if ride_along else driver

    def hook(view):
        c = view.control
        controls.append((c.throttle, c.steer, c.brake))

    runner.run_route(factory, spec, 0, on_step=hook, max_steps=STEPS)
    return images, controls, renders[0]


@pytest.fixture(scope="module")
def agent_yaml(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("render_on_demand")
    export_main(["--random-init", "--config", "vad_nano", "--out", str(root / "nano")])
    (root / "agent.yaml").write_text("checkpoint: nano\ncamera_size: [160, 90]\nmodel_every: 2\n"
                                     "device: cpu\n")
    return str(root / "agent.yaml")


@pytest.mark.parametrize("ride_along", [False, True])
def test_rendering_on_demand_gives_the_model_the_same_images(agent_yaml, ride_along):
    torch.manual_seed(0)
    img_all, ctrl_all, n_all = _drive(agent_yaml, hide_hint=True, ride_along=ride_along)
    torch.manual_seed(0)
    img_lazy, ctrl_lazy, n_lazy = _drive(agent_yaml, hide_hint=False, ride_along=ride_along)
    assert n_all == STEPS
    assert n_lazy == STEPS // 2  # model_every 2: every other tick
    assert len(img_all) == len(img_lazy) == STEPS // 2
    for a, b in zip(img_all, img_lazy):
        assert torch.equal(a, b)
    assert ctrl_all == ctrl_lazy


def test_images_never_get_staler_than_the_agents_limit(agent_yaml):
    """model_every 4 with max_sensor_lag_frames 2: of every 4 ticks, the model's and the one where the
    images would be 3 frames old are rendered; the agent never brakes for a stale camera."""
    _, controls, renders = _drive(agent_yaml, hide_hint=False, model_every=4)
    assert renders == STEPS // 2
    _, controls_all, _ = _drive(agent_yaml, hide_hint=True, model_every=4)
    assert controls == controls_all
