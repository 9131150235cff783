#!/usr/bin/env bash
# Set up closed-loop evaluation on a machine with a GPU (never run in CI):
#   1. the CARLA server for a supported version (0.9.16 default, or 0.9.15),
#   2. leaderboard 1.0 and scenario_runner clones, pinned (see versions.lock below),
#   3. this project's two changes: 6 RGB cameras allowed, and the global_route_planner_dao
#      compatibility module CARLA >= 0.9.12 needs (python -m carla_eval.patch_leaderboard),
#   4. a client/server version check, and the benchmark route files (python -m routes.fetch).
#
#   bash carla_eval/setup_carla.sh --dir ~/carla_eval [--carla-version 0.9.16] [--install-deps]
#
# Pinning: the leaderboard and scenario_runner refs below are the leaderboard 1.0 pair. The first set-up
# resolves them to commit SHAs and writes DIR/versions.lock; `--lock FILE` checks out exactly the commits
# of an earlier set-up (copy versions.lock between machines to evaluate with identical code).
# CARLA 0.9.10.1 (the benchmark's own version) is not handled here: it needs Python 3.7 and the agent
# bridge (docs/closed_loop.md).
set -euo pipefail

CARLA_VERSION="0.9.16"
DIR=""
LOCK=""
INSTALL_DEPS=0
SKIP_CARLA=0
LEADERBOARD_URL="https://github.com/carla-simulator/leaderboard.git"
LEADERBOARD_REF="stable"          # leaderboard 1.0 (statistics with vehicle_blocked, --trafficManagerPort)
SCENARIO_RUNNER_URL="https://github.com/carla-simulator/scenario_runner.git"
SCENARIO_RUNNER_REF="leaderboard" # the scenario_runner branch leaderboard 1.0 is documented with
CARLA_URL_BASE="https://carla-releases.s3.us-east-005.backblazeb2.com/Linux"
# Leaderboard 1.0 / scenario_runner runtime packages (their own requirements files pin versions that do
# not install on Python 3.10+; these are the modules they import).
LEADERBOARD_DEPS=(dictor "py-trees==0.8.3" ephem tabulate xmlschema psutil pexpect six transforms3d
                  simple-watchdog-timer)

usage() {
  cat <<EOF
usage: bash carla_eval/setup_carla.sh --dir DIR [options]

  --dir DIR              install folder: DIR/CARLA_<version>, DIR/leaderboard, DIR/scenario_runner,
                         DIR/routes, DIR/versions.lock
  --carla-version V      0.9.16 (default) or 0.9.15; the Python client must be the same version
                         (pip install carla==V). 0.9.10.1 is not available here (needs Python 3.7).
  --lock FILE            check out the leaderboard / scenario_runner commits recorded in FILE
  --skip-carla           do not download the CARLA server (use an existing DIR/CARLA_<version>)
  --install-deps         pip install the leaderboard's runtime packages into this Python:
                         ${LEADERBOARD_DEPS[*]}
  -h, --help             this help
Then: bash carla_eval/run_evaluation.sh --routes short --routes-dir DIR/routes --carla-root DIR/CARLA_V \\
        --leaderboard-root DIR/leaderboard --checkpoint CKPT --out runs/short
EOF
}

while [[ $# -gt 0 ]]; do
  case "$1" in
    --dir) DIR="$2"; shift 2 ;;
    --carla-version) CARLA_VERSION="$2"; shift 2 ;;
    --lock) LOCK="$2"; shift 2 ;;
    --skip-carla) SKIP_CARLA=1; shift ;;
    --install-deps) INSTALL_DEPS=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "error: unknown option $1" >&2; usage >&2; exit 2 ;;
  esac
done
[[ -n "$DIR" ]] || { echo "error: --dir is required" >&2; usage >&2; exit 2; }
case "$CARLA_VERSION" in
  0.9.15|0.9.16) ;;
  0.9.10.1) echo "error: CARLA 0.9.10.1 needs a Python 3.7 client and the agent bridge, which is not yet" \
                 "available; use 0.9.16 or 0.9.15 (docs/closed_loop.md)" >&2; exit 2 ;;
  *) echo "error: CARLA $CARLA_VERSION is not supported; use 0.9.16 or 0.9.15" >&2; exit 2 ;;
esac

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$HERE")"
if [[ -x "$ROOT/.venv/bin/python" ]]; then PY="$ROOT/.venv/bin/python"; else PY="$(command -v python3)"; fi
mkdir -p "$DIR"
DIR="$(cd "$DIR" && pwd)"
CARLA_ROOT="$DIR/CARLA_$CARLA_VERSION"

# ---- 1. client version first: fail before downloading 8 GB ------------------------------------------
CLIENT_VERSION="$("$PY" -c 'import importlib.metadata as m; print(m.version("carla"))' 2>/dev/null || true)"
if [[ "$CLIENT_VERSION" != "$CARLA_VERSION" ]]; then
  echo "error: the Python client is carla ${CLIENT_VERSION:-<not installed>} but the server would be" \
       "$CARLA_VERSION; client and server must match: pip install carla==$CARLA_VERSION" \
       "(or choose --carla-version $CLIENT_VERSION)" >&2
  exit 2
fi

# ---- 2. CARLA server ---------------------------------------------------------------------------------
if [[ $SKIP_CARLA -eq 0 && ! -x "$CARLA_ROOT/CarlaUE4.sh" ]]; then
  ARCHIVE="$DIR/CARLA_$CARLA_VERSION.tar.gz"
  echo "downloading CARLA $CARLA_VERSION (about 8 GB) to $ARCHIVE"
  wget -c -O "$ARCHIVE" "$CARLA_URL_BASE/CARLA_$CARLA_VERSION.tar.gz"
  mkdir -p "$CARLA_ROOT"
  tar -xzf "$ARCHIVE" -C "$CARLA_ROOT"
  rm -f "$ARCHIVE"
fi
[[ -x "$CARLA_ROOT/CarlaUE4.sh" ]] || { echo "error: $CARLA_ROOT/CarlaUE4.sh not found" >&2; exit 2; }
# Town05 ships in the base package of 0.9.15 / 0.9.16 (no AdditionalMaps needed for the benchmark).

# ---- 3. leaderboard + scenario_runner, pinned ---------------------------------------------------------
lock_get() { [[ -n "$LOCK" ]] && awk -v k="$1" '$1 == k {print $2}' "$LOCK" || true; }
clone() {  # clone URL REF DEST [PINNED_SHA]
  local url="$1" ref="$2" dest="$3" sha="${4:-}"
  if [[ ! -d "$dest/.git" ]]; then git clone "$url" "$dest"; fi
  git -C "$dest" fetch --quiet origin
  if [[ -n "$sha" ]]; then git -C "$dest" checkout --quiet "$sha"
  else git -C "$dest" checkout --quiet "origin/$ref" 2>/dev/null || git -C "$dest" checkout --quiet "$ref"; fi
}
LB_SHA="$(lock_get leaderboard)"
SR_SHA="$(lock_get scenario_runner)"
if [[ -n "$LOCK" && ( -z "$LB_SHA" || -z "$SR_SHA" ) ]]; then
  echo "error: $LOCK does not name both leaderboard and scenario_runner commits" >&2; exit 2
fi
clone "$LEADERBOARD_URL" "$LEADERBOARD_REF" "$DIR/leaderboard" "$LB_SHA"
clone "$SCENARIO_RUNNER_URL" "$SCENARIO_RUNNER_REF" "$DIR/scenario_runner" "$SR_SHA"
{
  echo "# written by carla_eval/setup_carla.sh on $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "leaderboard $(git -C "$DIR/leaderboard" rev-parse HEAD) $LEADERBOARD_URL"
  echo "scenario_runner $(git -C "$DIR/scenario_runner" rev-parse HEAD) $SCENARIO_RUNNER_URL"
  echo "carla $CARLA_VERSION $CARLA_URL_BASE/CARLA_$CARLA_VERSION.tar.gz"
} > "$DIR/versions.lock"
echo "pinned commits written to $DIR/versions.lock"

# ---- 4. the two changes ----------------------------------------------------------------------------
( cd "$ROOT" && "$PY" -m carla_eval.patch_leaderboard --leaderboard-root "$DIR/leaderboard" \
    --carla-root "$CARLA_ROOT" )

# ---- 5. packages, route files --------------------------------------------------------------------------
if [[ $INSTALL_DEPS -eq 1 ]]; then "$PY" -m pip install "${LEADERBOARD_DEPS[@]}"; fi
missing="$("$PY" - <<'EOF'
import importlib.util
mods = ["dictor", "py_trees", "ephem", "tabulate", "xmlschema", "psutil", "six", "transforms3d"]
print(" ".join(m for m in mods if importlib.util.find_spec(m) is None))
EOF
)"
if [[ -n "$missing" ]]; then
  echo "warning: the leaderboard needs Python modules that are missing here: $missing" \
       "(re-run with --install-deps)" >&2
fi
( cd "$ROOT" && "$PY" -m routes.fetch --out "$DIR/routes" )

cat <<EOF

Set-up done (CARLA $CARLA_VERSION, client $CLIENT_VERSION).
The client/server version is checked again against the running server by run_evaluation.sh.
Run, for example:
  bash carla_eval/run_evaluation.sh --routes short --routes-dir $DIR/routes --carla-root $CARLA_ROOT \\
      --leaderboard-root $DIR/leaderboard --scenario-runner-root $DIR/scenario_runner \\
      --checkpoint CKPT --servers 1 --out runs/town05_short
EOF
