#!/usr/bin/env bash
# Expert data collection in CARLA (track MAP), one shard per CARLA server, into the project's dataset.
#
#   bash carla_eval/collect.sh --out runs/carla_data --leaderboard-root ~/lb/leaderboard \
#        --carla-root ~/carla-0.9.15 --carla-version 0.9.15 --servers 2 [--routes FILE] [--towns Town01 ...]
#
# Thin wrapper, as run_evaluation.sh: the options are handled (and documented by --help) in
# carla_eval/collect.py, which selects the routes, runs carla_eval/collect_agent.py through
# carla_eval/launcher.py (servers, crash restarts, --resume) and writes the dataset. `exec` hands signals
# (Ctrl-C, SIGTERM) straight to it.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$HERE")"
if [[ -x "$ROOT/.venv/bin/python" ]]; then PY="$ROOT/.venv/bin/python"; else PY="$(command -v python3)"; fi
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
exec "$PY" -m carla_eval.collect "$@"
