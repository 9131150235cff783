"""The two leaderboard 1.0 changes, on a stand-in leaderboard / CARLA tree (no CARLA needed)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from carla_eval import patch_leaderboard
from vlmad.errors import UserError

# The shape of leaderboard 1.0's agent_wrapper.py around the limits (the module-level dict).
AGENT_WRAPPER_1_0 = textwrap.dedent("""
    MAX_ALLOWED_RADIUS_SENSOR = 3.0

    SENSORS_LIMITS = {
        'sensor.camera.rgb': 4,
        'sensor.lidar.ray_cast': 1,
        'sensor.other.radar': 2,
        'sensor.other.gnss': 1,
        'sensor.other.imu': 1,
        'sensor.opendrive_map': 1,
        'sensor.speedometer': 1
    }


    def limit():
        return SENSORS_LIMITS['sensor.camera.rgb']
""")

# CARLA >= 0.9.12 planner: built from (map, resolution), no DAO, no setup().
NEW_PLANNER = textwrap.dedent("""
    class GlobalRoutePlanner(object):
        def __init__(self, wmap, sampling_resolution):
            self._wmap = wmap
            self._sampling_resolution = sampling_resolution
""")


def _leaderboard(tmp_path, text=AGENT_WRAPPER_1_0):
    f = tmp_path / "lb" / "leaderboard" / "autoagents" / "agent_wrapper.py"
    f.parent.mkdir(parents=True)
    f.write_text(text)
    return tmp_path / "lb", f


def test_six_camera_patch_applies_once(tmp_path):
    root, f = _leaderboard(tmp_path)
    spec = patch_leaderboard.PATCH_DIR / "agent_wrapper_6_cameras.yaml"
    assert patch_leaderboard.apply_edit(spec, root) == "applied"
    ns: dict = {}
    exec(f.read_text(), ns)
    assert ns["limit"]() == 6 and ns["SENSORS_LIMITS"]["sensor.lidar.ray_cast"] == 1
    assert ns["MAX_ALLOWED_RADIUS_SENSOR"] == 3.0
    assert patch_leaderboard.apply_edit(spec, root) == "already applied"
    assert f.read_text().count("'sensor.camera.rgb': 6") == 1


def test_unexpected_leaderboard_file_is_refused(tmp_path):
    # leaderboard 2.0 style: a qualifier dict with 4 cameras and the main dict with 8 -> not ours to patch
    text = (
        "QUALIFIER_SENSORS_LIMITS = {\n    'sensor.camera.rgb': 4,\n}\n"
        "SENSORS_LIMITS = {\n    'sensor.camera.rgb': 8,\n}\n"
    )
    root, f = _leaderboard(tmp_path, text)
    with pytest.raises(UserError, match="exactly one match"):
        patch_leaderboard.apply_edit(patch_leaderboard.PATCH_DIR / "agent_wrapper_6_cameras.yaml", root)
    assert f.read_text() == text
    with pytest.raises(UserError, match="leaderboard 1.0 clone"):
        patch_leaderboard.main(["--leaderboard-root", str(tmp_path / "nowhere")])


def test_dao_compat_module_runs_old_code_on_the_new_planner(tmp_path):
    nav = tmp_path / "carla" / "PythonAPI" / "carla" / "agents" / "navigation"
    nav.mkdir(parents=True)
    (nav.parent / "__init__.py").write_text("")
    (nav / "__init__.py").write_text("")
    (nav / "global_route_planner.py").write_text(NEW_PLANNER)
    assert patch_leaderboard.install_compat(tmp_path / "carla") == "installed"
    assert patch_leaderboard.install_compat(tmp_path / "carla") == "already installed"
    # leaderboard 1.0's route_manipulation.py usage, unchanged, plus the new form
    code = textwrap.dedent("""
        from agents.navigation.global_route_planner import GlobalRoutePlanner
        from agents.navigation.global_route_planner_dao import GlobalRoutePlannerDAO
        dao = GlobalRoutePlannerDAO("MAP", 1.0)
        grp = GlobalRoutePlanner(dao)
        grp.setup()
        assert (grp._wmap, grp._sampling_resolution) == ("MAP", 1.0)
        grp2 = GlobalRoutePlanner("MAP2", 2.0)
        assert (grp2._wmap, grp2._sampling_resolution) == ("MAP2", 2.0)
        print("ok")
    """)
    r = subprocess.run(
        [sys.executable, "-c", code], cwd=nav.parents[1], capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr


def test_compat_module_never_replaces_carlas_own(tmp_path):
    nav = tmp_path / "carla" / "PythonAPI" / "carla" / "agents" / "navigation"
    nav.mkdir(parents=True)
    (nav / "global_route_planner.py").write_text("# 0.9.10 planner\n")
    (nav / "global_route_planner_dao.py").write_text("# CARLA 0.9.10's own DAO\n")
    assert patch_leaderboard.install_compat(tmp_path / "carla") == "not needed (CARLA has its own)"
    assert (nav / "global_route_planner_dao.py").read_text() == "# CARLA 0.9.10's own DAO\n"
    with pytest.raises(UserError, match="CARLA server folder"):
        patch_leaderboard.install_compat(tmp_path / "empty")


def test_setup_script_help_and_early_refusals(tmp_path):
    script = str(patch_leaderboard.PATCH_DIR.parent / "setup_carla.sh")
    assert subprocess.run(["bash", "-n", script], timeout=30).returncode == 0
    r = subprocess.run(["bash", script, "--help"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0 and "--carla-version" in r.stdout and "--lock" in r.stdout
    r = subprocess.run(["bash", script, "--dir", str(tmp_path), "--carla-version", "0.9.10.1"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and "Python 3.7" in r.stderr
    # client 0.9.16 here: a 0.9.15 server is refused before any download
    r = subprocess.run(["bash", script, "--dir", str(tmp_path), "--carla-version", "0.9.15"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and "must match" in r.stderr
    assert list(tmp_path.iterdir()) == []
