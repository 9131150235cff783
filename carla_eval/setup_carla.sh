#!/usr/bin/env bash
# Set up closed-loop evaluation on a machine with a GPU (never run in CI):
#   1. the CARLA server for a supported version (0.9.16 default, or 0.9.15),
#   2. leaderboard 1.0 and scenario_runner clones, pinned (see versions.lock below),
#   3. this project's two changes: 6 RGB cameras allowed, and the global_route_planner_dao
#      compatibility module CARLA >= 0.9.12 needs (python -m carla_eval.patch_leaderboard),
#   4. a client/server version check, and the benchmark route files (python -m routes.fetch),
#   5. an import smoke of the real evaluator (`import leaderboard.leaderboard_evaluator` with the PYTHONPATH
#      the launcher gives it), so a broken environment fails here, not at route 1.
#
#   bash carla_eval/setup_carla.sh --dir ~/carla_eval [--carla-version 0.9.16] [--install-deps]
#   bash carla_eval/setup_carla.sh --dir ~/carla_eval --smoke-only     # re-check an existing set-up
#
# Pinning: commits, not branches. The leaderboard is branch `stable` at 8956c4e (the tree the project
# scores like, carla_eval/scoring.py DEFAULT_TREE) or, with --leaderboard-tree leaderboard-1.0, that
# branch's head 2165f5e; scenario_runner is branch `leaderboard` at 95366ad. DIR/versions.lock records
# what was cloned; `--lock FILE` checks out exactly the commits of an earlier set-up.
# CARLA 0.9.10.1 (the benchmark's own version) is not handled here: it needs Python 3.7 and the agent
# bridge (docs/closed_loop.md).
set -euo pipefail

CARLA_VERSION="0.9.16"
DIR=""
LOCK=""
INSTALL_DEPS=0
SKIP_CARLA=0
SMOKE_ONLY=0
PY_ARG=""
TREE="stable"
LEADERBOARD_URL="https://github.com/carla-simulator/leaderboard.git"
LB_COMMIT_STABLE="8956c4e0c53bfa24e2bd0ccb1a5269ce47770a57"  # branch stable (Jan 2021)
LB_COMMIT_10="2165f5e4a53be8e96c501fa39965800489b1a0a5"      # branch leaderboard-1.0 head (2023)
SCENARIO_RUNNER_URL="https://github.com/carla-simulator/scenario_runner.git"
SR_COMMIT="95366ad3f52c2ab048714044437727d447bdcfbe"         # branch leaderboard (Sep 2020)
CARLA_URL_BASE="https://carla-releases.s3.us-east-005.backblazeb2.com/Linux"
# What the pinned evaluator imports (its own requirements files pin versions that do not install on
# Python 3.10+): leaderboard_evaluator.py imports pkg_resources (removed from setuptools >= 82, and torch
# pulls a newer one: hence the pin; torch needs >= 77.0.3, so pip picks 80.x) and distutils (the
# setuptools shim);
# checkpoint_tools.py imports requests; statistics / route code imports dictor, tabulate; scenario_runner
# imports py_trees 0.8, ephem, six, xmlschema, psutil, numpy; CARLA's agents import networkx, shapely.
LEADERBOARD_DEPS=("setuptools<81" requests dictor "py-trees==0.8.3" ephem tabulate xmlschema psutil pexpect
                  six transforms3d simple-watchdog-timer networkx shapely numpy)

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
  --leaderboard-tree T   stable (default, commit 8956c4e) or leaderboard-1.0 (commit 2165f5e)
  --smoke-only           only the import smoke of DIR's evaluator (with --install-deps: install first);
                         nothing downloaded or cloned
  --python PY            the Python that runs the evaluator (default: the project's .venv, else python3);
                         give the launcher the same one (--evaluator-python)
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
    --leaderboard-tree) TREE="$2"; shift 2 ;;
    --smoke-only) SMOKE_ONLY=1; shift ;;
    --python) PY_ARG="$2"; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "error: unknown option $1" >&2; usage >&2; exit 2 ;;
  esac
done
[[ -n "$DIR" ]] || { echo "error: --dir is required" >&2; usage >&2; exit 2; }
case "$TREE" in
  stable) LB_COMMIT="$LB_COMMIT_STABLE" ;;
  leaderboard-1.0) LB_COMMIT="$LB_COMMIT_10" ;;
  *) echo "error: --leaderboard-tree must be stable or leaderboard-1.0, got $TREE" >&2; exit 2 ;;
esac
case "$CARLA_VERSION" in
  0.9.15|0.9.16) ;;
  0.9.10.1) echo "error: CARLA 0.9.10.1 needs a Python 3.7 client and the agent bridge, which is not yet" \
                 "available; use 0.9.16 or 0.9.15 (docs/closed_loop.md)" >&2; exit 2 ;;
  *) echo "error: CARLA $CARLA_VERSION is not supported; use 0.9.16 or 0.9.15" >&2; exit 2 ;;
esac

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$HERE")"
if [[ -n "$PY_ARG" ]]; then PY="$PY_ARG"
elif [[ -x "$ROOT/.venv/bin/python" ]]; then PY="$ROOT/.venv/bin/python"; else PY="$(command -v python3)"; fi
"$PY" -c pass 2>/dev/null || { echo "error: --python $PY does not run" >&2; exit 2; }
mkdir -p "$DIR"
DIR="$(cd "$DIR" && pwd)"
CARLA_ROOT="$DIR/CARLA_$CARLA_VERSION"

# The import smoke: the evaluator module with the PYTHONPATH carla_eval/launcher.py gives it. On failure
# it names the missing module (pip install it, or re-run with --install-deps) and set-up fails.
smoke() {
  local pp="$DIR/leaderboard:$DIR/scenario_runner:$CARLA_ROOT/PythonAPI/carla:$ROOT"
  local out
  if out="$(cd "$DIR" && PYTHONPATH="$pp${PYTHONPATH:+:$PYTHONPATH}" "$PY" -W ignore -c '
import importlib, sys, traceback
try:
    importlib.import_module("leaderboard.leaderboard_evaluator")
except ModuleNotFoundError as e:
    print(f"missing module {e.name!r} ({e})")
    sys.exit(3)
except BaseException as e:
    print(f"{type(e).__name__}: {e}")
    traceback.print_exc(limit=-3, file=sys.stdout)
    sys.exit(4)
' 2>&1)"; then
    echo "import smoke: leaderboard.leaderboard_evaluator imports (PYTHONPATH=$pp)"
  else
    echo "error: the leaderboard evaluator cannot be imported: $out" >&2
    if [[ "$out" == *"missing module 'agents'"* ]]; then
      echo "  'agents' is CARLA's own PythonAPI/carla/agents, shipped with the server in $CARLA_ROOT" >&2
    fi
    echo "  (PYTHONPATH=$pp; python $PY). Install what it names (re-run with --install-deps for the" \
         "pinned evaluator's packages), then check with: bash carla_eval/setup_carla.sh --dir $DIR" \
         "--smoke-only" >&2
    exit 3
  fi
}
if [[ $SMOKE_ONLY -eq 1 ]]; then
  [[ -d "$DIR/leaderboard/leaderboard" ]] || { echo "error: $DIR/leaderboard is not a leaderboard clone;" \
    "run the full set-up first" >&2; exit 2; }
  if [[ $INSTALL_DEPS -eq 1 ]]; then "$PY" -m pip install "${LEADERBOARD_DEPS[@]}"; fi
  smoke
  exit 0
fi

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
clone() {  # clone URL SHA DEST: exactly that commit, whatever the branches have become
  local url="$1" sha="$2" dest="$3"
  if [[ ! -d "$dest/.git" ]]; then git clone "$url" "$dest"; fi
  git -C "$dest" fetch --quiet origin
  git -C "$dest" checkout --quiet "$sha" || { echo "error: commit $sha not found in $url" >&2; exit 2; }
}
if [[ -n "$LOCK" ]]; then
  LB_COMMIT="$(lock_get leaderboard)"
  SR_COMMIT="$(lock_get scenario_runner)"
  TREE="$(lock_get leaderboard_tree)"; TREE="${TREE:-stable}"
  if [[ -z "$LB_COMMIT" || -z "$SR_COMMIT" ]]; then
    echo "error: $LOCK does not name both leaderboard and scenario_runner commits" >&2; exit 2
  fi
fi
clone "$LEADERBOARD_URL" "$LB_COMMIT" "$DIR/leaderboard"
clone "$SCENARIO_RUNNER_URL" "$SR_COMMIT" "$DIR/scenario_runner"
{
  echo "# written by carla_eval/setup_carla.sh on $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "leaderboard_tree $TREE"
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
( cd "$ROOT" && "$PY" -m routes.fetch --out "$DIR/routes" )

# ---- 6. the real evaluator must import ------------------------------------------------------------------
smoke

cat <<EOF

Set-up done (CARLA $CARLA_VERSION, client $CLIENT_VERSION).
The client/server version is checked again against the running server by run_evaluation.sh.
Run, for example:
  bash carla_eval/run_evaluation.sh --routes short --routes-dir $DIR/routes --carla-root $CARLA_ROOT \\
      --leaderboard-root $DIR/leaderboard --scenario-runner-root $DIR/scenario_runner \\
      --checkpoint CKPT --servers 1 --out runs/town05_short
EOF
