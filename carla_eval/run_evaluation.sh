#!/usr/bin/env bash
# Closed-loop CARLA leaderboard evaluation (Town05 Short / Long), one shard per CARLA server.
#
#   bash carla_eval/run_evaluation.sh --routes long --checkpoint runs/export/vlmad_base \
#        --servers 2 --carla-root ~/carla-0.9.16 --leaderboard-root ~/lb/leaderboard --out runs/long
#
# Thin wrapper: every option is handled (and documented by --help) in carla_eval/launcher.py, which
# starts the servers, runs and restarts the evaluators, cleans up its child processes and writes the
# report. `exec` hands signals (Ctrl-C, SIGTERM) straight to the launcher.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$HERE")"
if [[ -x "$ROOT/.venv/bin/python" ]]; then PY="$ROOT/.venv/bin/python"; else PY="$(command -v python3)"; fi
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
exec "$PY" -m carla_eval.launcher "$@"
