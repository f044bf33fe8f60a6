"""Map registration: finds the frame near the prediction, verifies it, and refuses what it cannot verify."""
import math

import numpy as np
import pytest

from skyloc.runtime.camera import Intrinsics, Pose
from skyloc.runtime.geo import GeoMap
from skyloc.runtime.registration import MapRegistration, log10_nfa, split_headings
from skyloc.synth.render import Camera, render_view


@pytest.fixture(scope="module")
def maps(tmp_path_factory):
    """One layout as a grey summer map with a white border, and as the colour autumn scene the camera sees."""
    from skyloc.synth.world import generate, write_geotiff

    d = tmp_path_factory.mktemp("reg")
    grey = write_geotiff(generate(1024, 0.5, seed=31), d / "grey.tif", bands=1, border=0.25)
    autumn = generate(1024, 0.5, seed=31, season="autumn")
    return GeoMap(grey, nodata=255), autumn


def _frame(maps, x, y, yaw=40.0, alt=120.0, size=(480, 320)):
    _, autumn = maps
    return render_view(autumn.image, autumn.transform, Camera(x, y, alt, yaw, 0.0, 60.0, *size))


def _airframe_frame(maps, intr: Intrinsics, true: Pose) -> np.ndarray:
    """The autumn scene seen by a camera fixed to a leaning airframe (pitch and roll)."""
    import cv2

    from skyloc.runtime.camera import ground_to_image

    a, _, c, _, e, f = maps[1].transform[:6]
    pix_to_ground = np.array([[a, 0, c], [0, e, f], [0, 0, 1]], dtype=np.float64)
    return cv2.warpPerspective(maps[1].image, ground_to_image(intr, true) @ pix_to_ground, (intr.width, intr.height),
                               flags=cv2.INTER_LINEAR)


def _centre(gm):
    left, bottom, right, top = gm.bounds
    return (left + right) / 2, (bottom + top) / 2


def test_colour_frame_on_a_grey_map_of_another_season(maps):
    gm, _ = maps
    reg = MapRegistration(gm)
    x, y = _centre(gm)
    intr = Intrinsics(480, 320, 60.0)
    for dx, dy, yaw in ((12.0, -9.0, 40.0), (-20.0, 5.0, 200.0)):
        frame = _frame(maps, x, y, yaw)
        r = reg.register(frame, intr, Pose(x + dx, y + dy, 120.0, yaw), search_radius_m=40.0)
        assert r.ok, r.reason
        assert math.hypot(r.x - x, r.y - y) < 1.0 and abs(r.rotation_deg) < 2 and abs(r.scale - 1) < 0.03
        assert r.corners.shape == (4, 2) and r.inliers >= 20


def test_refuses_a_place_that_is_not_in_the_search_area(maps):
    gm, _ = maps
    reg = MapRegistration(gm)
    x, y = _centre(gm)
    frame = _frame(maps, x, y)
    r = reg.register(frame, Intrinsics(480, 320, 60.0), Pose(x + 120.0, y - 90.0, 120.0, 40.0), search_radius_m=25.0)
    assert not r.ok and r.reason


def test_wrong_yaw_or_altitude_is_caught(maps):
    gm, _ = maps
    reg = MapRegistration(gm)
    x, y = _centre(gm)
    frame = _frame(maps, x, y, yaw=40.0)
    intr = Intrinsics(480, 320, 60.0)
    turned = reg.register(frame, intr, Pose(x, y, 120.0, 70.0), search_radius_m=30.0)
    assert not turned.ok
    scaled = reg.register(frame, intr, Pose(x, y, 160.0, 40.0), search_radius_m=30.0)
    assert not scaled.ok


def test_window_at_the_map_edge_and_outside(maps):
    gm, autumn = maps
    reg = MapRegistration(gm)
    left, bottom, right, top = gm.bounds
    # the frame reaches the map's edge and the search window hangs far outside it
    x, y = _centre(gm)
    x_edge = left + 60.0
    frame = render_view(autumn.image, autumn.transform, Camera(x_edge, y, 100.0, 10.0, 0.0, 60.0, 480, 320))
    r = reg.register(frame, Intrinsics(480, 320, 60.0), Pose(x_edge - 10, y, 100.0, 10.0), search_radius_m=40.0)
    assert r.ok, r.reason
    assert math.hypot(r.x - x_edge, r.y - y) < 1.0
    out = reg.register(frame, Intrinsics(480, 320, 60.0), Pose(left - 2000, y, 100.0, 10.0), search_radius_m=40.0)
    assert not out.ok and "outside the map" in out.reason


def test_chance_agreement_is_improbable_only_with_enough_inliers():
    p = math.pi * 2.5**2 / (math.pi * 100.0**2)
    assert log10_nfa(200, 3, p) > -3.0  # three agreeing matches out of 200 happen by chance
    assert log10_nfa(200, 12, p) < -10.0
    assert log10_nfa(50, 12, 0.9) > 0.0  # when everything agrees with everything, nothing is significant


def test_a_leaning_airframe_camera_is_located_by_its_pose_on_the_map_and_the_attitude_error_measured(maps):
    """A quadcopter at 8 m/s leans 25-35 deg, and an EKF without GNSS can be degrees off in roll
    and pitch: at 120 m, 4 deg at a 30 deg slant puts the similarity's fix 11 m off. The pose
    solved on the map (PnP) does not rest on that attitude, and measures its error, which the
    localizer then uses for the fixes and odometry steps that do rest on it."""
    gm, _ = maps
    x, y = _centre(gm)
    intr = Intrinsics(640, 360, 60.0)
    frame = _airframe_frame(maps, intr, Pose(x, y, 120.0, 30.0, pitch=-22.0, roll=18.0))
    told = Pose(x + 6.0, y - 4.0, 120.0, 30.0, pitch=-19.0, roll=21.0)  # 3 deg off in each axis
    r = MapRegistration(gm).register(frame, intr, told, search_radius_m=40.0)
    assert r.ok and r.pose_solved, r.reason
    assert math.hypot(r.x - x, r.y - y) < 2.0 and 3 * r.sigma >= math.hypot(r.x - x, r.y - y)
    assert r.attitude_error_deg == pytest.approx(4.2, abs=1.0)  # the optical axis is ~4.2 deg off


def test_every_solved_pose_claims_an_accuracy_that_covers_its_error(maps):
    """Leaning views at random headings and attitudes, the telemetry 4 deg off: the halves'
    spread alone claimed 3 sigma of 0.6-1.5 m for errors of up to 1.7 m (a bias the halves share)."""
    gm, _ = maps
    x, y = _centre(gm)
    intr = Intrinsics(640, 360, 60.0)
    rng = np.random.default_rng(0)
    reg = MapRegistration(gm)
    solved = 0
    for _ in range(7):
        yaw, pitch, roll = rng.uniform(0, 360), rng.uniform(-30, -15), rng.uniform(-20, 20)
        dp, dr, _ = rng.uniform(-4, 4, 3)
        frame = _airframe_frame(maps, intr, Pose(x, y, 120.0, yaw, pitch=pitch, roll=roll))
        r = reg.register(frame, intr, Pose(x + 6.0, y - 4.0, 120.0, yaw, pitch=pitch + dp, roll=roll + dr),
                         search_radius_m=40.0)
        if r.ok:
            solved += r.pose_solved
            assert 3 * r.sigma >= math.hypot(r.x - x, r.y - y), (yaw, pitch, roll, r.sigma)
    assert solved >= 5


def test_a_leaning_camera_the_telemetry_calls_level_gets_an_accuracy_that_covers_it(maps):
    """Without a DEM a camera the telemetry calls level keeps the similarity's answer (on hills the
    solved pose would trade slope for tilt). After an EKF failsafe in SITL the telemetry called a
    vehicle leaning 9 deg level, and that answer was 15 m off with a 2.4 m accuracy; the pose solved
    beside it disagrees by that much, and the fix's sigma now says so."""
    gm, _ = maps
    x, y = _centre(gm)
    intr = Intrinsics(640, 360, 60.0)
    frame = _airframe_frame(maps, intr, Pose(x, y, 110.0, 30.0, pitch=-6.0, roll=6.0))
    r = MapRegistration(gm).register(frame, intr, Pose(x + 5.0, y + 5.0, 110.0, 30.0), search_radius_m=40.0)
    err = math.hypot(r.x - x, r.y - y)
    assert r.ok and not r.pose_solved, r.reason
    assert err > 8.0 and 3 * r.sigma >= err and r.tilt_correction_m > 8.0


def test_a_wide_heading_search_splits_into_narrow_steps_that_cover_it_nearest_first():
    circle, origin = split_headings([(0.0, 1.0), (0.0, 1.5)], 180.0, 8.0)
    for k in (1.0, 1.5):
        heads = [h for h, kk in circle if kk == k]
        assert len(heads) == 23 and len({round(h % 360, 6) for h in heads}) == 23  # every 16 deg, no repeats
        assert heads[0] == 0.0 and [abs(h) for h in heads] == sorted(abs(h) for h in heads)  # likeliest first
        for true in np.arange(-180.0, 180.0, 0.5):  # any heading is within 8 deg of a step
            assert min(abs((true - h + 180) % 360 - 180) for h in heads) <= 8.0 + 1e-9
    assert set(origin.values()) == {0.0}
    compass, _ = split_headings([(10.0, 1.0)], 32.0, 8.0)
    assert [h for h, _ in compass] == [10.0, 26.0, -6.0, 42.0, -22.0]


def test_a_frame_with_few_features_and_no_heading_registers_in_steps_that_overlap(maps):
    """A small frame (few features) between two steps (40 deg: 32 and 48 are each 8 deg off)."""
    gm, _ = maps
    x, y = _centre(gm)
    intr = Intrinsics(160, 100, 60.0)
    frame = _frame(maps, x, y, yaw=40.0, alt=200.0, size=(160, 100))
    reg = MapRegistration(gm)
    r = reg.register(frame, intr, Pose(x + 10, y - 8, 200.0, 0.0), 30.0, rotation_tol_deg=180.0)
    assert r.ok, r.reason
    assert abs(r.rotation_deg - 40.0) < 1.0 and math.hypot(r.x - x, r.y - y) < 2.0
    assert reg._few_features(frame, intr, Pose(x, y, 200.0, 0.0))
    big = _frame(maps, x, y, yaw=40.0)
    assert not reg._few_features(big, Intrinsics(480, 320, 60.0), Pose(x, y, 120.0, 0.0))  # keeps the one wide search
