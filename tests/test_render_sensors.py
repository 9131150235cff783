"""Leaderboard-format sensor data of the offline world (world/sensors.py) and the GNSS math it uses
(vlmad/gnss.py)."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest

carla = pytest.importorskip("carla")

from vlmad.frames import ego_to_carla_xyz, se2_pose, transform_points  # noqa: E402
from vlmad.gnss import (  # noqa: E402
    carla_xy_to_gnss,
    compass_from_yaw,
    geo_reference,
    gnss_to_carla_xy,
    yaw_from_compass,
)
from vlmad.rig import CARLA_RIG  # noqa: E402
from world.sensors import GRAVITY, make_input_data  # noqa: E402


@pytest.fixture(scope="module")
def town02_text(shared_maps) -> str:
    return (shared_maps / "Town02.xodr").read_text()


@pytest.fixture(scope="module")
def town02(town02_text):
    return carla.Map("Town02", town02_text)


def _images(h=9, w=16):
    rng = np.random.default_rng(0)
    return {n: rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for n in CARLA_RIG.camera_names}


def _input(pose, town02, speed=0.0, acc=(0, 0, 0), gyro=(0, 0, 0), images=None):
    return make_input_data(images or _images(), 7, pose, speed, np.array(acc, float), np.array(gyro, float),
                           town02, CARLA_RIG)


def test_input_data_format(town02):
    images = _images()
    red = np.zeros((9, 16, 3), np.uint8)
    red[..., 0] = 255
    images["CAM_FRONT"] = red
    data = _input(se2_pose(10.0, -150.0, 0.3), town02, speed=4.5, images=images)
    assert set(data) == set(CARLA_RIG.camera_names) | {"GPS", "IMU", "SPEED"}
    assert all(isinstance(v, tuple) and v[0] == 7 for v in data.values())
    for n in CARLA_RIG.camera_names:
        img = data[n][1]
        assert img.shape == (9, 16, 4) and img.dtype == np.uint8 and img.flags["C_CONTIGUOUS"]
    assert tuple(data["CAM_FRONT"][1][0, 0]) == (0, 0, 255, 255)  # BGRA
    assert tuple(data["CAM_BACK"][1][3, 5, :3]) == tuple(images["CAM_BACK"][3, 5, ::-1])
    assert data["GPS"][1].shape == (3,) and data["IMU"][1].shape == (7,)
    assert data["SPEED"][1] == {"speed": 4.5}


@pytest.mark.parametrize("x,y,yaw", [(0.0, 0.0, 0.0), (150.0, -200.0, 1.0), (-30.0, -310.0, -2.5)])
def test_gps_round_trip_to_mount_position(town02, x, y, yaw):
    pose = se2_pose(x, y, yaw)
    lat, lon, alt = _input(pose, town02)["GPS"][1]
    cx, cy = gnss_to_carla_xy(lat, lon, *geo_reference(town02))
    mount = ego_to_carla_xyz(transform_points(pose, np.array([CARLA_RIG.imu_x, 0.0, 0.0])))
    assert math.hypot(cx - mount[0], cy - mount[1]) < 0.1
    assert abs(alt - mount[2]) < 1e-6


def test_gnss_math_round_trip_and_directions():
    for lat_ref, lon_ref in ((0.0, 0.0), (49.0, 8.0), (-33.9, 151.2)):
        x = np.array([-800.0, 0.0, 123.4, 950.0])
        y = np.array([600.0, 0.0, -77.0, -990.0])
        lat, lon = carla_xy_to_gnss(x, y, lat_ref, lon_ref)
        bx, by = gnss_to_carla_xy(lat, lon, lat_ref, lon_ref)
        assert np.abs(bx - x).max() < 1e-3 and np.abs(by - y).max() < 1e-3
        assert lat[1] == pytest.approx(lat_ref) and lon[1] == pytest.approx(lon_ref)
        # North is CARLA -y, east is CARLA +x.
        assert carla_xy_to_gnss(0.0, -100.0, lat_ref, lon_ref)[0] > lat_ref
        assert carla_xy_to_gnss(100.0, 0.0, lat_ref, lon_ref)[1] > lon_ref
    # At the equator a metre east is 1 / 111319.49 degrees (the 6378137 m sphere).
    assert carla_xy_to_gnss(1000.0, 0.0, 0.0, 0.0)[1] == pytest.approx(1000.0 / 111319.490793, rel=1e-6)


def test_geo_reference_parsing_matches_carla(town02_text, town02):
    assert geo_reference(town02_text) == (0.0, 0.0) == geo_reference(town02)
    custom = re.sub(r"<geoReference>.*?</geoReference>",
                    "<geoReference><![CDATA[+proj=tmerc +lat_0=49.5 +lon_0=8.25 +k=1]]></geoReference>",
                    town02_text, count=1, flags=re.S)
    ref = geo_reference(custom)
    assert ref == (49.5, 8.25)
    origin = carla.Map("custom", custom).transform_to_geolocation(carla.Location(0, 0, 0))
    assert (origin.latitude, origin.longitude) == pytest.approx(ref)
    # No geoReference: CARLA (and the leaderboard) fall back to (42, 2).
    bare = re.sub(r"<geoReference>.*?</geoReference>", "", town02_text, count=1, flags=re.S)
    assert geo_reference(bare) == (42.0, 2.0)
    origin = carla.Map("bare", bare).transform_to_geolocation(carla.Location(0, 0, 0))
    assert (origin.latitude, origin.longitude) == pytest.approx((42.0, 2.0))


def test_compass_convention():
    # CARLA's IMU compass: radians, 0 = north (CARLA -y = our +y), clockwise, in [0, 2 pi).
    assert compass_from_yaw(math.pi / 2) == pytest.approx(0.0, abs=1e-12)  # heading north
    assert compass_from_yaw(0.0) == pytest.approx(math.pi / 2)  # east
    assert compass_from_yaw(-math.pi / 2) == pytest.approx(math.pi)  # south
    assert compass_from_yaw(math.pi) == pytest.approx(3 * math.pi / 2)  # west
    for yaw in np.linspace(-3.1, 3.1, 13):
        assert 0.0 <= compass_from_yaw(yaw) < 2 * math.pi
        assert math.cos(yaw_from_compass(compass_from_yaw(yaw)) - yaw) == pytest.approx(1.0)


def test_imu_values(town02):
    north = _input(se2_pose(5.0, -120.0, math.pi / 2), town02)["IMU"][1]
    assert north[:6] == pytest.approx([0, 0, GRAVITY, 0, 0, 0])  # at rest: gravity only
    assert north[6] == pytest.approx(0.0, abs=1e-9)
    # Accelerating forward while turning left with a leftward (centripetal) acceleration.
    imu = _input(se2_pose(5.0, -120.0, 0.0), town02, acc=(2.0, 1.5, 0.0), gyro=(0.0, 0.0, 0.4))["IMU"][1]
    assert imu[0] == pytest.approx(2.0)
    assert imu[1] == pytest.approx(-1.5)  # CARLA y points right
    assert imu[5] == pytest.approx(-0.4)  # left turn = CARLA yaw decreasing
    assert imu[6] == pytest.approx(math.pi / 2)


def test_bad_images_rejected(town02):
    images = _images()
    del images["CAM_BACK"]
    with pytest.raises(KeyError, match="CAM_BACK"):
        _input(se2_pose(0, 0, 0), town02, images=images)
    images = _images()
    images["CAM_FRONT"] = images["CAM_FRONT"].astype(np.float32)
    with pytest.raises(ValueError, match="CAM_FRONT"):
        _input(se2_pose(0, 0, 0), town02, images=images)
