"""Closed-loop driving in the offline world (no CARLA server) with leaderboard-format results.

    python -m scripts.drive --agent-config CKPT --num-routes 4 --seed 0 --out results.json
    python -m scripts.drive --expert --town Town02.xodr --routes routes.xml --out results.json --video vids/

The agent is any leaderboard agent module (`--agent`, default agent.vad_agent: a module name or a
.py file with `get_entry_point()`), built with `--agent-config` for every route as the leaderboard
does; `--expert` drives the offline world's privileged expert instead. Routes come from a leaderboard
route XML (`--routes`, keypoints in CARLA coordinates) or are generated at random (`--num-routes`).
The results file has the leaderboard's layout (`python -m carla_eval.report` reads it unchanged) and is
labelled as the offline world in its `meta`; it is rewritten atomically after every route and
`--resume` continues an interrupted run. Scores are offline-world scores, NOT CARLA scores.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
from tqdm import tqdm

from agent.compat import load_agent_class
from carla_eval import scoring
from routes.parse import Route, parse_routes, select_routes
from vlmad.cli import script_parser
from vlmad.config import save_resolved
from vlmad.errors import UserError, cli_main
from vlmad.io import atomic_write_json
from vlmad.rig import CARLA_RIG, Rig
from world.config import LABEL, SOURCE, add_world_args, world_config_from_args
from world.expert import ExpertAgent
from world.ride_along import Diagnosis, RideAlong
from world.road_map import GENERATED_TOWN, load_map, random_routes
from world.runner import OfflineRunner, StepView, VideoWriter, results_file


def _routes(a, cfg) -> tuple[list[Route], str]:
    if a.routes:
        routes = select_routes(parse_routes(a.routes), a.route_ids.split(",") if a.route_ids else None)
        towns = {r.town for r in routes}
        if a.town is None and len(towns) > 1:
            raise UserError(f"{a.routes} mixes towns {sorted(towns)}; pass --town or --route-ids")
        return routes, a.town or routes[0].town
    town = a.town or GENERATED_TOWN
    return [], town


def main(argv: list[str] | None = None) -> int:
    p = script_parser("scripts.drive", __doc__)
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("--agent-config", help="agent configuration: the driving checkpoint (folder or YAML)")
    who.add_argument("--expert", action="store_true", help="drive the privileged expert of the offline world")
    p.add_argument(
        "--agent", default="agent.vad_agent", help="leaderboard agent module or .py (default %(default)s)"
    )
    p.add_argument(
        "--town",
        default=None,
        help=f"map: {GENERATED_TOWN} (generated, default), a .xodr path or a "
        "CARLA town name found in --maps-dir / --carla-root",
    )
    p.add_argument("--routes", default=None, help="leaderboard route XML (keypoints in CARLA coordinates)")
    p.add_argument("--route-ids", default=None, help="comma-separated route ids of --routes to run")
    p.add_argument(
        "--num-routes", type=int, default=4, help="random routes when no --routes (default %(default)s)"
    )
    p.add_argument("--min-length", type=float, default=150.0, help="random route length range, metres")
    p.add_argument("--max-length", type=float, default=400.0)
    p.add_argument("--out", required=True, help="results JSON (leaderboard layout)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run of the same settings")
    p.add_argument("--video", default=None, help="folder for one front-camera MP4 per route")
    p.add_argument("--diagnose", metavar="FILE", default=None,
                   help="let the privileged expert ride along (it does not drive) and write where the agent "
                        "departs from it to FILE: shares of ticks it stops where the expert would go (and "
                        "why: its plan, a safety brake), moves where the expert stops, stuck episodes "
                        "(world/ride_along.py)")
    add_world_args(p)
    a = p.parse_args(argv)

    cfg = world_config_from_args(a)
    if a.expert:
        factory, agent_desc = (lambda: ExpertAgent("", cfg.expert)), "offline-world privileged expert"
    else:
        cls = load_agent_class(a.agent)
        first = [
            cls(a.agent_config)
        ]  # built once up front: a bad checkpoint is a clear error, not N failed routes

        def factory():
            return first.pop() if first else cls(a.agent_config)

        agent_desc = f"{a.agent} with {a.agent_config}"

    routes, town = _routes(a, cfg)
    rmap = load_map(town, a.maps_dir, a.carla_root or os.environ.get("CARLA_ROOT"))
    if not routes:
        routes = random_routes(rmap, a.num_routes, np.random.default_rng(a.seed), a.min_length, a.max_length)
    for r in routes:
        if r.town != rmap.name and a.routes and a.town is None:
            raise UserError(f"route {r.id} is for town {r.town!r}, not {rmap.name!r}")

    out = Path(a.out)
    settings = {
        "town": rmap.name,
        "seed": a.seed,
        "agent": agent_desc,
        "routes": [[r.id, [(w.x, w.y, w.z, w.yaw) for w in r.waypoints]] for r in routes],
    }
    digest = hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
    records: list[dict] = []
    old = None
    if a.resume:
        try:
            old = scoring.read_results_file(out, missing_ok=True)
        except UserError as e:
            raise UserError(f"{e}; remove it or run without --resume") from None
    if old is not None:
        if old.get("meta", {}).get("run_digest") != digest:
            raise UserError(
                f"{out} was written by a run with other settings (town/seed/agent/routes); "
                "use another --out or drop --resume"
            )
        records = [r for r in old["_checkpoint"]["records"] if not scoring.is_simulation_crash(r["status"])]
    elif out.exists() and not a.resume:
        raise UserError(f"{out} exists; pass --resume to continue it or choose another --out")
    save_resolved(cfg, out.parent, f"{out.stem}.world.yaml")

    runner = OfflineRunner(rmap, cfg, seed=a.seed)
    meta = {"run_digest": digest, "town": rmap.name, "seed": a.seed, "agent": agent_desc}
    sensors = []
    diag_routes: dict[str, dict] = {}
    if a.diagnose and a.resume and Path(a.diagnose).is_file():  # keep the finished routes' diagnoses
        old_diag = json.loads(Path(a.diagnose).read_text())
        diag_routes = {k: v for k, v in old_diag.get("routes", {}).items() if int(k) < len(records)}
    bar = tqdm(total=len(routes), initial=len(records), desc=f"offline world {rmap.name}", unit="route")
    for index in range(len(records), len(routes)):
        spec = routes[index]
        video = VideoWriter(Path(a.video) / f"route_{spec.id}.mp4") if a.video else None
        vid_rig = Rig("video", (CARLA_RIG.camera("CAM_FRONT").resized(640, 360),))

        def hook(view: StepView, video=video, vid_rig=vid_rig, rid=spec.id) -> None:
            w = view.world
            if w.frame % 100 == 0:
                bar.set_postfix(route=rid, sim_s=f"{w.t:.0f}", refresh=False)
            if video is not None and w.frame % 2 == 0:
                img = view.images.get("CAM_FRONT")
                video.add(img if img is not None else runner.render(w, vid_rig)["CAM_FRONT"])

        route_diag = Diagnosis()

        def tracked_factory(route_diag=route_diag):
            agent = factory()
            sensors[:] = list(agent.sensors())
            return RideAlong(agent, ExpertAgent("", cfg.expert), route_diag) if a.diagnose else agent

        record = runner.run_route(tracked_factory, spec, index, on_step=hook)
        if a.diagnose:
            diag_routes[str(index)] = route_diag.to_json()
            total = sum((Diagnosis.from_json(d) for d in diag_routes.values()), Diagnosis())
            atomic_write_json(a.diagnose, {"meta": meta, "routes": diag_routes, "summary": total.summary()})
        if video is not None:
            video.close()
        records.append(record)
        atomic_write_json(out, results_file(records, len(routes), sensors, meta))
        bar.update(1)
        bar.write(
            f"route {spec.id}: {record['status']}, RC {record['scores']['score_route']:.1f}, "
            f"DS {record['scores']['score_composed']:.1f}"
        )
    bar.close()
    data = results_file(records, len(routes), sensors, meta)
    atomic_write_json(out, data)
    g = data["_checkpoint"]["global_record"]["scores"]
    print(f"[{SOURCE}] {LABEL}")
    print(
        f"{len(records)} routes on {rmap.name}: driving score {g['score_composed']:.2f}, route completion "
        f"{g['score_route']:.2f}, infraction penalty {g['score_penalty']:.3f} (offline world, not CARLA)"
    )
    print(f"results: {out}  (report: python -m carla_eval.report {out} --json R.json --markdown R.md)")
    return 0


if __name__ == "__main__":
    cli_main(main)
