#!/usr/bin/env bash
# Create or refresh the project-local virtual environment in .venv (idempotent).
#
#   bash scripts/setup_env.sh          # CPU machine: torch 2.13.0 CPU build via constraints-cpu.txt
#   bash scripts/setup_env.sh --gpu    # GPU machine: install a CUDA torch yourself first (docs/install.md)
#
# A second run with unchanged pyproject.toml / constraints does nothing (stamp file in .venv).
set -euo pipefail
cd "$(dirname "$0")/.."

gpu=0
for arg in "$@"; do
  case "$arg" in
    --gpu) gpu=1 ;;
    -h|--help) sed -n '2,8p' "$0"; exit 0 ;;
    *) echo "setup_env.sh: unknown option $arg (see --help)" >&2; exit 2 ;;
  esac
done

if ! command -v python3 >/dev/null; then
  echo "error: python3 (3.10 or newer) is needed" >&2; exit 2
fi
python3 - <<'PY' || { echo "error: Python 3.10+ is required (found $(python3 --version))" >&2; exit 2; }
import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)
PY

stamp_src=$(cat pyproject.toml constraints-cpu.txt | sha256sum | cut -d' ' -f1)-gpu$gpu
if [ -f .venv/.vlmad-stamp ] && [ "$(cat .venv/.vlmad-stamp)" = "$stamp_src" ] && [ -x .venv/bin/python ]; then
  exit 0
fi

echo "[setup] creating/updating .venv (one-off, about a minute)"
[ -x .venv/bin/python ] || python3 -m venv .venv
pip_args=(-q --disable-pip-version-check)
if [ "$gpu" = 1 ]; then
  .venv/bin/python -c "import torch" 2>/dev/null || {
    echo "error: --gpu expects a CUDA build of torch already installed in .venv (see docs/install.md)" >&2; exit 2; }
  .venv/bin/pip install "${pip_args[@]}" -e ".[dev]"
else
  .venv/bin/pip install "${pip_args[@]}" -c constraints-cpu.txt -e ".[dev]"
fi
echo "$stamp_src" > .venv/.vlmad-stamp
echo "[setup] done"
