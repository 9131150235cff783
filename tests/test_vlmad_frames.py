"""Frames, rig and command conventions (docs/facts.md section 4)."""

from __future__ import annotations

import math

import carla
import numpy as np
import pytest

from vlmad import frames
from vlmad.commands import Command, RoadOption, command_from_future, command_from_road_option
from vlmad.rig import CAMERA_NAMES, CARLA_RIG, NUSCENES_RIG, CameraSpec


@pytest.mark.parametrize("rig", [CARLA_RIG, NUSCENES_RIG], ids=lambda r: r.name)
def test_point_ahead_projects_to_front_centre_column(rig):
    cam = rig.camera("CAM_FRONT")
    point = np.array([[cam.x + 10.0, cam.y, cam.z]])  # 10 m ahead of the camera, at its height
    uv, depth, in_front = frames.project_points(cam.img_from_ego(), point)
    assert in_front[0]
    assert depth[0] == pytest.approx(10.0)
    assert uv[0, 0] == pytest.approx(cam.width / 2, abs=1e-6)
    assert uv[0, 1] == pytest.approx(cam.height / 2, abs=1e-6)
    # The same point is behind the back camera.
    _, _, in_front_back = frames.project_points(rig.camera("CAM_BACK").img_from_ego(), point)
    assert not in_front_back[0]


def test_left_point_lands_left_of_centre_and_in_left_camera():
    front = CARLA_RIG.camera("CAM_FRONT")
    uv, _, _ = frames.project_points(front.img_from_ego(), np.array([[10.0, 2.0, 1.6]]))
    assert uv[0, 0] < front.width / 2  # y left -> image left
    left = CARLA_RIG.camera("CAM_FRONT_LEFT")
    d = np.array([math.cos(math.radians(55)), math.sin(math.radians(55))]) * 8.0
    uv, _, ok = frames.project_points(left.img_from_ego(), np.array([[left.x + d[0], left.y + d[1], left.z]]))
    assert ok[0] and uv[0, 0] == pytest.approx(left.width / 2, abs=1e-6)


def test_intrinsics_scale_with_image_size():
    cam = CARLA_RIG.camera("CAM_FRONT")
    k = cam.intrinsics(0.4)
    assert k[0, 2] == pytest.approx(640 / 2) and k[1, 2] == pytest.approx(360 / 2)
    assert k[0, 0] == pytest.approx(cam.focal * 0.4)
    # 70 deg FOV at 1600 px: f = 800 / tan(35 deg)
    assert cam.focal == pytest.approx(800 / math.tan(math.radians(35)))


def test_rig_camera_order_and_carla_sensor_convention():
    assert CARLA_RIG.camera_names == CAMERA_NAMES
    sensors = {s["id"]: s for s in CARLA_RIG.carla_sensors()}
    # docs/facts.md section 8 (CARLA frame): FRONT_LEFT at y = -0.55, yaw -55; BACK_RIGHT y 0.55, yaw 110.
    assert sensors["CAM_FRONT_LEFT"]["y"] == pytest.approx(-0.55) and sensors["CAM_FRONT_LEFT"]["yaw"] == -55
    assert sensors["CAM_BACK_RIGHT"]["y"] == pytest.approx(0.55) and sensors["CAM_BACK_RIGHT"]["yaw"] == 110
    assert sensors["CAM_BACK"]["fov"] == 110 and sensors["CAM_BACK"]["x"] == -2.0
    assert len({s["id"] for s in CARLA_RIG.carla_sensors()}) == len(CARLA_RIG.carla_sensors())


def test_carla_sensor_dict_round_trip():
    for cam in CARLA_RIG.cameras:
        assert CameraSpec.from_carla_sensor(cam.carla_sensor()) == cam
    tilted = CameraSpec("X", 1.0, 0.3, 1.5, 20.0, 80.0, 320, 180, pitch_deg=5.0, roll_deg=-2.0)
    assert CameraSpec.from_carla_sensor(tilted.carla_sensor()) == tilted


def test_carla_sensor_pose_matches_rig_extrinsics():
    """The CARLA sensor dict, converted back through carla.Transform, gives the rig's body pose."""
    for cam in CARLA_RIG.cameras:
        s = cam.carla_sensor()
        t = carla.Transform(carla.Location(s["x"], s["y"], s["z"]),
                            carla.Rotation(pitch=s["pitch"], yaw=s["yaw"], roll=s["roll"]))
        m = np.array(t.get_matrix())
        ours = frames.carla_transform_to_ego(s["x"], s["y"], s["z"], s["roll"], s["pitch"], s["yaw"])
        np.testing.assert_allclose(ours, cam.ego_from_body(), atol=1e-6)
        np.testing.assert_allclose(frames.carla_rotation_matrix(s["roll"], s["pitch"], s["yaw"]), m[:3, :3],
                                   atol=1e-6)


def test_carla_round_trips_and_yaw_sign():
    pts = np.array([[1.0, 2.0, 3.0], [-4.0, 5.5, 0.0]])
    back = frames.ego_to_carla_xyz(frames.carla_to_ego_xyz(pts[:, 0], pts[:, 1], pts[:, 2]))
    np.testing.assert_allclose(back, pts)
    # CARLA yaw +90 deg turns x (forward) toward +y_carla = right: clockwise. Ours is then -90 deg.
    assert frames.carla_yaw_to_ego(90.0) == pytest.approx(-math.pi / 2)
    for yaw in (-170.0, -30.0, 0.0, 45.0, 179.0):
        assert frames.ego_yaw_to_carla(frames.carla_yaw_to_ego(yaw)) == pytest.approx(yaw)
    # A vehicle at CARLA yaw 90 moving forward 1 m goes to CARLA y + 1; ours: y - 1.
    pose = frames.se2_pose(0.0, 0.0, float(frames.carla_yaw_to_ego(90.0)))
    moved = frames.transform_points(pose, np.array([[1.0, 0.0]]))
    carla_xyz = frames.ego_to_carla_xyz(np.array([[moved[0, 0], moved[0, 1], 0.0]]))
    np.testing.assert_allclose(carla_xyz[0, :2], [0.0, 1.0], atol=1e-9)


def test_carla_objects_convert_like_the_array_functions():
    """carla.Location / Transform converters agree with carla_to_ego_xyz / carla_yaw_to_ego, flip y
    (a location 3 m to CARLA's right is 3 m to our right, y = -3) and round-trip."""
    loc = carla.Location(x=10.0, y=3.0, z=0.5)
    np.testing.assert_array_equal(frames.carla_location_to_ego(loc), [10.0, -3.0, 0.5])
    np.testing.assert_array_equal(frames.carla_location_to_ego(loc), frames.carla_to_ego_xyz(10.0, 3.0, 0.5))
    back = frames.ego_to_carla_location(frames.carla_location_to_ego(loc))
    assert (back.x, back.y, back.z) == pytest.approx((10.0, 3.0, 0.5))
    flat = frames.ego_to_carla_location((1.0, 2.0))  # 2-D: z = 0
    assert (flat.x, flat.y, flat.z) == pytest.approx((1.0, -2.0, 0.0))
    xy = frames.carla_locations_to_ego_xy([loc, carla.Location(x=-1.0, y=-2.0)])
    np.testing.assert_array_equal(xy, [[10.0, -3.0], [-1.0, 2.0]])
    assert frames.carla_locations_to_ego_xy([]).shape == (0, 2)
    # a vehicle facing CARLA yaw 90 (towards CARLA +y, clockwise of x) faces -90 deg in our frame
    t = frames.ego_pose_to_carla_transform(4.0, -5.0, 1.0, -math.pi / 2)
    assert (t.location.x, t.location.y, t.location.z) == pytest.approx((4.0, 5.0, 1.0))
    assert t.rotation.yaw == pytest.approx(90.0)
    pos, yaw = frames.carla_pose_to_ego(t)
    np.testing.assert_allclose(pos, [4.0, -5.0, 1.0], atol=1e-6)
    assert yaw == pytest.approx(-math.pi / 2)
    # agrees with the full 4x4 conversion of the same transform
    m = frames.carla_transform_to_ego(t.location.x, t.location.y, t.location.z, 0.0, 0.0, t.rotation.yaw)
    assert frames.yaw_of(m) == pytest.approx(yaw)


def test_imu_mirror_flips_polar_y_and_axial_x_z():
    """CARLA IMU <-> ours: accelerometer y flips (a push to our left, +y, reads -y in CARLA); gyroscope x
    and z flip (a left turn, +z for us, reads negative z in CARLA); gravity on z is kept; round trip."""
    acc, gyro = frames.ego_imu_to_carla([0.5, 2.0, 9.81], [0.1, 0.2, 0.3])
    np.testing.assert_array_equal(acc, [0.5, -2.0, 9.81])
    np.testing.assert_array_equal(gyro, [-0.1, 0.2, -0.3])
    back_acc, back_gyro = frames.carla_imu_to_ego(acc, gyro)
    np.testing.assert_array_equal(back_acc, [0.5, 2.0, 9.81])
    np.testing.assert_array_equal(back_gyro, [0.1, 0.2, 0.3])


def test_quaternion_round_trip_and_pose_inverse():
    rng = np.random.default_rng(0)
    for _ in range(20):
        r = frames.euler_to_rotmat(*rng.uniform(-math.pi, math.pi, 3))
        q = frames.rotmat_to_quat(r)
        np.testing.assert_allclose(frames.quat_to_rotmat(q), r, atol=1e-9)
        t = frames.make_transform(r, rng.normal(size=3))
        np.testing.assert_allclose(frames.invert_transform(t) @ t, np.eye(4), atol=1e-9)


def test_world_to_ego_and_relative_motion():
    world_from_prev = frames.se2_pose(10.0, 5.0, math.pi / 2)
    world_from_cur = frames.se2_pose(10.0, 7.0, math.pi / 2)  # moved 2 m forward (north)
    p_world = np.array([[10.0, 12.0]])
    np.testing.assert_allclose(frames.world_to_ego(world_from_cur, p_world), [[5.0, 0.0]], atol=1e-9)
    cur_from_prev = frames.relative_motion(world_from_prev, world_from_cur)
    np.testing.assert_allclose(frames.transform_points(cur_from_prev, np.array([[7.0, 0.0]])), [[5.0, 0.0]],
                               atol=1e-9)


def test_lidar_displacements_to_ego():
    # VAD/LIDAR_TOP: x right, y forward. 5 m forward, 1 m right -> ego (5, -1).
    np.testing.assert_allclose(frames.lidar_xy_to_ego(np.array([[1.0, 5.0]])), [[5.0, -1.0]])
    xy = np.array([[3.0, -2.0], [0.5, 0.25]])
    np.testing.assert_allclose(frames.ego_xy_to_lidar(frames.lidar_xy_to_ego(xy)), xy)
    np.testing.assert_allclose(NUSCENES_RIG.ego_from_lidar()[:3, :3], frames.EGO_FROM_LIDAR_ROT, atol=1e-12)


@pytest.mark.parametrize(("lateral", "expected"), [
    (-2.0, Command.RIGHT), (-5.0, Command.RIGHT), (2.0, Command.LEFT), (1.99, Command.STRAIGHT),
    (-1.99, Command.STRAIGHT), (0.0, Command.STRAIGHT)])
def test_command_from_future(lateral, expected):
    fut = np.stack([np.linspace(2, 12, 6), np.linspace(0, lateral, 6)], -1)
    assert command_from_future(fut) == expected


def test_command_uses_last_valid_point_and_road_options():
    fut = np.stack([np.linspace(2, 12, 6), [0, 0, 0, 3, 9, 9]], -1)
    assert command_from_future(fut, np.array([1, 1, 1, 0, 0, 0], bool)) == Command.STRAIGHT
    assert command_from_future(fut, np.array([1, 1, 1, 1, 0, 0], bool)) == Command.LEFT
    assert command_from_future(fut, np.zeros(6, bool)) == Command.STRAIGHT
    assert command_from_road_option(RoadOption.LEFT) == Command.LEFT
    assert command_from_road_option(RoadOption.RIGHT) == Command.RIGHT
    assert command_from_road_option(RoadOption.CHANGELANELEFT) == Command.STRAIGHT
    assert command_from_road_option(RoadOption.LANEFOLLOW) == Command.STRAIGHT


def test_carla_mount_conversion_flips_y_pitch_yaw_and_round_trips():
    from vlmad.frames import carla_mount_to_ego, ego_mount_to_carla

    # CARLA's CAM_FRONT_LEFT: 0.27 m to the LEFT is y = -0.27 there, yawed 55 deg to the left = -55
    assert carla_mount_to_ego(0.8, -0.27, 1.6, 1.0, 2.0, -55.0) == (0.8, 0.27, 1.6, 1.0, -2.0, 55.0)
    m = (1.5, 0.4, 1.7, -3.0, 5.0, 110.0)
    assert ego_mount_to_carla(*carla_mount_to_ego(*m)) == m
