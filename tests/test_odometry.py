"""Camera geometry, visual odometry and the track filter on rendered frames with known motion."""
import math

import numpy as np
import pytest

from skyloc.runtime.camera import Intrinsics, Pose, footprint, ground_to_image, image_to_ground, project
from skyloc.runtime.filter import FilterConfig, TrackFilter
from skyloc.runtime.odometry import VisualOdometry
from skyloc.synth.render import Camera, render_view


@pytest.fixture(scope="module")
def world(heldout_map):
    from skyloc.runtime.geo import GeoMap

    gm = GeoMap(heldout_map)
    t = gm.transform
    left, bottom, right, top = gm.bounds
    return gm.read_all(), (t.a, 0.0, t.c, 0.0, t.e, t.f), ((left + right) / 2, (bottom + top) / 2)


def test_geometry_round_trip_and_attitude():
    intr = Intrinsics(640, 480, 60.0)
    pose = Pose(100.0, 200.0, 120.0, yaw=35.0, tilt=8.0, roll=3.0)
    pts = np.array([[0, 0], [640, 0], [320, 240], [10, 470]], float)
    back = project(ground_to_image(intr, pose), project(image_to_ground(intr, pose), pts))
    np.testing.assert_allclose(back, pts, atol=1e-6)
    assert intr.nadir_gsd(120.0) == pytest.approx(2 * 120 * math.tan(math.radians(30)) / 640)
    # rolling right (right side down) makes a fixed camera look left of the track
    level = project(image_to_ground(intr, Pose(altitude=100.0)), [[320, 240]])[0]
    rolled = project(image_to_ground(intr, Pose(altitude=100.0, roll=5.0)), [[320, 240]])[0]
    np.testing.assert_allclose(level, [0, 0], atol=1e-9)
    assert rolled[0] == pytest.approx(-100 * math.tan(math.radians(5)), rel=1e-6) and abs(rolled[1]) < 1e-6
    assert footprint(intr, Pose(altitude=100.0, tilt=70.0)) is None  # looking at the horizon: no footprint


def _fly(world, n=8, step=(1.5, 2.0), yaw0=20.0, dyaw=2.0, alt=120.0, size=(480, 320)):
    img, tr, (cx, cy) = world
    frames, poses = [], []
    for i in range(n):
        x, y, yaw = cx + step[0] * i, cy + step[1] * i, yaw0 + dyaw * i
        frames.append(render_view(img, tr, Camera(x, y, alt, yaw, 0.0, 60.0, *size)))
        poses.append((x, y, yaw))
    return frames, poses


def test_odometry_measures_ground_motion_through_an_exposure_jump(world):
    frames, poses = _fly(world)
    frames[4] = np.clip(frames[4].astype(np.float32) * 0.55 + 10, 0, 255).astype(np.uint8)  # auto exposure jumps
    vo = VisualOdometry()
    intr = Intrinsics(480, 320, 60.0)
    assert vo.step(frames[0], 0.0, Pose(altitude=120.0, yaw=poses[0][2]), intr) is None  # nothing to compare yet
    for i in range(1, len(frames)):
        s = vo.step(frames[i], 0.1 * i, Pose(altitude=120.0, yaw=poses[i][2]), intr)
        assert s.ok, s.reason
        truth = np.subtract(poses[i][:2], poses[i - 1][:2])
        assert math.hypot(s.dx - truth[0], s.dy - truth[1]) < 0.25, (i, s, truth)
        assert s.dt == pytest.approx(0.1)


def test_odometry_refuses_flat_frames_and_a_changed_frame_size(world):
    vo = VisualOdometry()
    intr = Intrinsics(480, 320, 60.0)
    rng = np.random.default_rng(0)
    flat = [np.clip(90 + rng.normal(0, 2, (320, 480, 3)), 0, 255).astype(np.uint8) for _ in range(2)]
    vo.step(flat[0], 0.0, Pose(altitude=120.0), intr)
    s = vo.step(flat[1], 0.1, Pose(altitude=120.0), intr)
    assert not s.ok and ("texture" in s.reason or "track" in s.reason or "consistent" in s.reason), s
    frames, _ = _fly(world, n=2)
    vo.reset()
    vo.step(frames[0], 0.0, Pose(altitude=120.0, yaw=20.0), intr)
    other = frames[1][:240, :360].copy()
    s = vo.step(other, 0.1, Pose(altitude=120.0, yaw=22.0), Intrinsics(360, 240, 60.0))
    assert not s.ok and "size changed" in s.reason
    s = vo.step(other, 0.2, Pose(altitude=math.nan, yaw=22.0), Intrinsics(360, 240, 60.0))
    assert not s.ok and "altitude" in s.reason


def test_odometry_keeps_the_visual_heading_when_the_yaw_jumps(world):
    frames, poses = _fly(world, n=4)
    vo = VisualOdometry()
    intr = Intrinsics(480, 320, 60.0)
    vo.step(frames[0], 0.0, Pose(altitude=120.0, yaw=poses[0][2]), intr)
    vo.step(frames[1], 0.1, Pose(altitude=120.0, yaw=poses[1][2]), intr)
    s = vo.step(frames[2], 0.2, Pose(altitude=120.0, yaw=poses[2][2] + 40.0), intr)  # a compass glitch
    assert s.ok and s.yaw_correction_deg == pytest.approx(-40.0, abs=1.0)
    truth = np.subtract(poses[2][:2], poses[1][:2])
    assert math.hypot(s.dx - truth[0], s.dy - truth[1]) < 0.25
    s = vo.step(frames[3], 0.3, Pose(altitude=120.0, yaw=poses[3][2] + 40.0), intr)  # and stays wrong
    truth = np.subtract(poses[3][:2], poses[2][:2])
    assert s.ok and math.hypot(s.dx - truth[0], s.dy - truth[1]) < 0.25


def test_filter_grows_honestly_on_odometry_and_gates_outliers():
    f = TrackFilter(FilterConfig(odometry_drift=0.05))
    f.init(0.0, (0.0, 0.0), 2.0)
    s0 = f.position_drms
    for i in range(1, 101):  # 100 m flown on odometry alone
        f.odometry(0.1 * i, (1.0, 0.0), 0.05)
    assert f.x[0] == pytest.approx(100.0) and f.velocity[0] == pytest.approx(10.0, abs=0.5)
    # the systematic part grows linearly with distance (5 % of 100 m), not with its square root
    assert f.position_sigma >= 5.0 and f.position_drms > s0
    assert not f.update((160.0, 0.0), 1.0)  # 60 m off: rejected, nothing changes
    assert f.x[0] == pytest.approx(100.0)
    assert f.update((103.0, 1.0), 1.0)
    assert 100.0 < f.x[0] <= 103.0 and f.position_sigma < 2.0


def test_an_outage_is_carried_on_the_autopilots_velocity_not_on_the_last_one():
    """A camera cut while the vehicle brakes (a failsafe LAND in SITL): carried on the last
    velocity the track ran 80 m off in 10 s and never found the map again; with the autopilot's
    own velocity fused each second it stays on the vehicle, and its accuracy stays honest."""
    coast, held = TrackFilter(), TrackFilter()
    for f in (coast, held):
        f.init(0.0, (0.0, 0.0), 1.0, velocity=(8.0, 0.0), velocity_sigma=0.3)
    for i in range(1, 11):  # the vehicle stopped at once; a prediction per second without frames
        held.velocity_update((0.0, 0.0), 1.0)
        for f in (coast, held):
            f.predict(float(i))
    assert coast.x[0] == pytest.approx(80.0, abs=1.0)
    assert abs(held.x[0]) < 10.0 and abs(held.velocity[0]) < 1.0
    assert abs(held.x[0]) <= 3 * held.position_sigma < 60.0  # honest, and narrow enough to register again
