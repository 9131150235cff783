"""carla_eval/setup_carla.sh without CARLA: pinned commits, the evaluator's packages, and the import smoke
that makes a set-up whose evaluator cannot be imported fail (run on fake leaderboard trees)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from carla_eval import scoring

ROOT = Path(__file__).resolve().parents[1]
SETUP = ROOT / "carla_eval" / "setup_carla.sh"


def _setup(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SETUP), *args, "--python", sys.executable], capture_output=True,
                          text=True, timeout=120)


def _fake_tree(d: Path, evaluator: str) -> Path:
    """DIR with leaderboard/, scenario_runner/ and CARLA_0.9.16/PythonAPI/carla/agents, each a module the
    fake evaluator imports, so a pass proves the smoke's PYTHONPATH holds all three (and the project)."""
    files = {
        "leaderboard/leaderboard/__init__.py": "",
        "leaderboard/leaderboard/leaderboard_evaluator.py": evaluator,
        "scenario_runner/srunner/__init__.py": "",
        "scenario_runner/srunner/thing.py": "X = 1\n",
        "CARLA_0.9.16/PythonAPI/carla/agents/__init__.py": "",
        "CARLA_0.9.16/PythonAPI/carla/agents/navigation/__init__.py": "",
        "CARLA_0.9.16/PythonAPI/carla/agents/navigation/local_planner.py": "RoadOption = 1\n",
    }
    for rel, text in files.items():
        (d / rel).parent.mkdir(parents=True, exist_ok=True)
        (d / rel).write_text(text)
    return d


GOOD = "import srunner.thing\nimport agents.navigation.local_planner\nimport carla_eval.scoring\n"


def test_smoke_passes_when_the_evaluator_imports(tmp_path):
    r = _setup("--dir", str(_fake_tree(tmp_path, GOOD)), "--smoke-only")
    assert r.returncode == 0, r.stderr
    assert "leaderboard.leaderboard_evaluator imports" in r.stdout


def test_smoke_fails_set_up_naming_the_missing_module(tmp_path):
    # as the real evaluator on setuptools >= 82: `import pkg_resources` fails
    d = _fake_tree(tmp_path, GOOD + "import no_such_module_xyz\n")
    r = _setup("--dir", str(d), "--smoke-only")
    assert r.returncode == 3
    assert "cannot be imported" in r.stderr and "missing module 'no_such_module_xyz'" in r.stderr
    assert "--install-deps" in r.stderr
    # CARLA's agents package missing: the error says where it comes from
    d2 = _fake_tree(tmp_path / "b", GOOD)
    shutil.rmtree(d2 / "CARLA_0.9.16")
    r = _setup("--dir", str(d2), "--smoke-only")
    assert r.returncode == 3 and "missing module 'agents'" in r.stderr
    assert "PythonAPI/carla/agents" in r.stderr


def test_smoke_fails_on_other_import_errors(tmp_path):
    d = _fake_tree(tmp_path, GOOD + "from srunner.thing import NOT_THERE\n")
    r = _setup("--dir", str(d), "--smoke-only")
    assert r.returncode == 3 and "ImportError" in r.stderr and "NOT_THERE" in r.stderr
    r = _setup("--dir", str(tmp_path / "empty"), "--smoke-only")
    assert r.returncode == 2 and "not a leaderboard clone" in r.stderr


def test_commits_not_branches_are_pinned():
    text = SETUP.read_text()
    for sha in scoring.LEADERBOARD_COMMITS.values():
        assert re.search(rf'^LB_COMMIT_\w+="{sha}"', text, re.M), sha
    sr = re.search(r'^SR_COMMIT="([0-9a-f]{40})"', text, re.M)
    assert sr and sr.group(1).startswith(scoring.SCENARIO_RUNNER_COMMIT)
    assert "origin/$ref" not in text and 'checkout --quiet "$sha"' in text
    assert "leaderboard_tree $TREE" in text  # the lock file records the tree with the commits


def test_the_evaluators_own_imports_are_installed():
    text = SETUP.read_text()
    deps = re.search(r"LEADERBOARD_DEPS=\((.*?)\)", text, re.S)
    assert deps is not None
    names = deps.group(1).replace('"', "").split()
    # pkg_resources (leaderboard_evaluator.py) is gone from setuptools >= 82; requests: checkpoint_tools.py
    assert "setuptools<81" in names and "requests" in names
    for mod in ("dictor", "py-trees==0.8.3", "ephem", "tabulate", "xmlschema", "psutil", "six", "networkx"):
        assert mod in names


@pytest.mark.parametrize("args, match", [
    (["--leaderboard-tree", "master"], "stable or leaderboard-1.0"),
    (["--python", "/no/such/python"], "does not run"),
])
def test_bad_options(tmp_path, args, match):
    r = subprocess.run(["bash", str(SETUP), "--dir", str(tmp_path), *args, "--smoke-only"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and match in r.stderr
