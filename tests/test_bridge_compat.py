"""The 3.7 side of the bridge: Python 3.7 syntax/stdlib (vermin), stdlib + numpy imports only, versions."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from carla_eval.bridge import protocol as P

ROOT = Path(__file__).resolve().parents[1]
BRIDGE = ROOT / "carla_eval" / "bridge"
THREE_SEVEN_FILES = [BRIDGE / "py37_agent.py", BRIDGE / "protocol.py"]  # all the leaderboard side loads
VERMIN = Path(sys.executable).with_name("vermin")


def _vermin(*paths: Path) -> subprocess.CompletedProcess:
    if not VERMIN.exists():
        pytest.fail(f"vermin is not installed beside {sys.executable} (pip install -e .[dev])")
    return subprocess.run([str(VERMIN), "-t=3.7-", "--no-tips", "--violations", *map(str, paths)],
                          capture_output=True, text=True, timeout=120)


def test_vermin_finds_no_python_3_8_feature_in_the_3_7_side() -> None:
    res = _vermin(*THREE_SEVEN_FILES)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "Target versions not met" not in res.stdout
    assert "Minimum required versions: 3.7" in res.stdout or "Minimum required versions: 3.0" in res.stdout


def test_vermin_check_does_catch_a_violation(tmp_path: Path) -> None:
    # the check above must be able to fail: a walrus and math.prod need 3.8
    bad = tmp_path / "bad.py"
    bad.write_text("import math\nif (n := 3):\n    print(math.prod([n]))\n")
    res = _vermin(bad)
    assert res.returncode == 1 and "3.8" in res.stdout


IMPORT_PROBE = textwrap.dedent('''
    import importlib, importlib.abc, json, sys
    ALLOWED = set(sys.stdlib_module_names) | {"numpy", "py37_agent"}  # + the module under test
    blocked = []

    class Guard(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name.split(".")[0] not in ALLOWED:
                blocked.append(name)
                raise ModuleNotFoundError("blocked by the test: " + name)
            return None

    import numpy  # allowed; whatever it (and site start-up) loaded is the baseline
    baseline = set(sys.modules)
    sys.meta_path.insert(0, Guard())
    sys.path = [p for p in sys.path if "site-packages" in p or "python3" in p]  # no project root
    sys.path.insert(0, sys.argv[1])  # as leaderboard_evaluator does: the agent's folder, then import
    mod = importlib.import_module("py37_agent")
    P = mod.P
    import numpy as np
    # exercise the runtime paths too (a lazy import would only show up here)
    head, chunks = P.encode({"a": (1, np.arange(6, dtype=np.uint8).reshape(2, 3)), "s": {"speed": 1.5}})
    payload = b"".join(bytes(c) for c in chunks)
    body = P.decode(head[P.PREFIX.size:], bytearray(payload))
    img = np.zeros((9, 16, 4), np.uint8)
    small = mod.prepare_input({"CAM": (0, img)}, {"CAM": (8, 5)}, "bilinear", {})
    ctl = mod.full_brake()
    print(json.dumps({"blocked": blocked, "entry": mod.get_entry_point(), "carla": mod.carla is None,
                      "base": mod._Base.__name__, "control": type(ctl).__name__, "brake": ctl.brake,
                      "shape": list(small["CAM"][1].shape), "roundtrip": body["a"][1].tolist(),
                      "modules": sorted(m for m in set(sys.modules) - baseline
                                        if m.split(".")[0] not in ALLOWED
                                        and not m.startswith("_vlmad_bridge"))}))
''')


def test_3_7_side_imports_with_only_stdlib_and_numpy(tmp_path: Path) -> None:
    script = tmp_path / "probe.py"
    script.write_text(IMPORT_PROBE)
    res = subprocess.run([sys.executable, "-s", str(script), str(BRIDGE)], capture_output=True, text=True,
                         cwd=tmp_path, timeout=120)
    assert res.returncode == 0, res.stderr
    import json

    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["modules"] == [], f"non-stdlib modules got imported: {out['modules']}"
    # the optional imports were attempted (so the guard was active) and nothing else was
    assert "carla" in out["blocked"]
    assert {b.split(".")[0] for b in out["blocked"]} <= {"carla", "leaderboard"}
    assert out["entry"] == "BridgeAgent" and out["carla"] and out["base"] == "object"
    assert out["control"] == "Control" and out["brake"] == 1.0
    assert out["shape"] == [5, 8, 4] and out["roundtrip"] == [[0, 1, 2], [3, 4, 5]]


def test_project_version_in_protocol_matches_pyproject() -> None:
    text = (ROOT / "pyproject.toml").read_text()
    version = re.search(r'^version\s*=\s*"([^"]+)"', text, flags=re.M).group(1)
    assert version == P.PROJECT_VERSION, ("bump carla_eval/bridge/protocol.py PROJECT_VERSION with the "
                                          "project version")
