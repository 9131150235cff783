"""The main job on the embedded defaults: the whole VLM-AD pipeline, end to end, on this machine.

    bash scripts/run_main.sh                 # installs, then runs this (about 15 minutes on 2 cores)
    python -m scripts.main --out runs/main   # the same, in an existing environment
    python -m scripts.main --smoke           # a 1-2 minute version (what the test suite runs)

It is the `main` experiment of scripts.experiment (experiments/config.py PRESETS), a short version of the
CPU protocol of docs/experiments.md. Its steps, each a real CLI of the project run as a subprocess (so what
runs here is what users run; experiments/steps.py is the table of steps):
 1. collect   expert drives in the offline world (generated town) -> a nuScenes-format dataset
 2. infos     the sample index through nuscenes-devkit
 3. annotate  the rule teacher (privileged ground truth, NOT a VLM) answers Q1 / Q2 for every keyframe
 4. report    annotation statistics (Table 7, Fig. 5) and an HTML gallery
 5. encode    MiniLM text features (the offline stand-in for CLIP ViT-B/32)
 6. drive     the privileged expert on the evaluation routes (the upper bound)
 7. per variant (plain VAD, VAD + VLM-AD Q1+Q2) and seed: train the TEST-SIZE model (vad_nano), evaluate
    open loop on the held-out scenes (both metric conventions), drive the offline-world routes, score
 8. table     Table 1 layout, mean +/- std over the seeds, paired differences with 95 % intervals

Every output is labelled with what produced it: the offline world is not CARLA, the rule teacher is
not GPT-4o, MiniLM is not CLIP, vad_nano is not VAD-Tiny/Base. The numbers show that the pipeline
works end to end; they are not the paper's numbers and must not be compared with them.

Re-running with the same --out skips the steps whose outputs exist (each step writes atomically), so an
interrupted run continues where it stopped.
"""

from __future__ import annotations

import argparse

from scripts.experiment import resolve, run
from vlmad.errors import cli_main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m scripts.main", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", help="output folder (default runs/main, runs/main_smoke with --smoke)")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes: checks the pipeline in 1-2 minutes")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override a field of the experiment, e.g. --set train.steps=200 --set seeds=[0]")
    args = ap.parse_args(argv)
    cfg = resolve("main_smoke" if args.smoke else "main", None, args.overrides, args.out)
    print("=" * 100)
    print("VLM-AD main job on the EMBEDDED DEFAULTS: offline world (not CARLA), rule teacher (not a VLM),")
    print(f"MiniLM (not CLIP), {cfg.train.model} (test size, not VAD-Tiny/Base). "
          "Not comparable with the paper.")
    print("=" * 100)
    run(cfg)
    return 0


if __name__ == "__main__":
    cli_main(main)
