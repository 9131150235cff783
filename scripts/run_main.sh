#!/usr/bin/env bash
# Install what the main job needs (idempotent, into .venv) and run it on the embedded defaults.
# Options are passed to `python -m scripts.main` (see `bash scripts/run_main.sh --help`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
exec .venv/bin/python -m scripts.main "$@"
