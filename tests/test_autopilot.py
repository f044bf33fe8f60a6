"""skyloc against a peer that behaves as ArduPilot does: EKF origin first, ODOMETRY it can fuse."""
import math
import socket
import time

import numpy as np
import pytest

from skyloc.onboard.mavlink import MavlinkLink, euler_to_quaternion
from skyloc.onboard.peer import AutopilotPeer


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_quaternion_is_the_body_to_ned_rotation():
    w, x, y, z = euler_to_quaternion(0.0, 0.0, math.radians(90))
    assert (w, z) == pytest.approx((math.cos(math.pi / 4), math.sin(math.pi / 4))) and x == y == 0
    q = np.array(euler_to_quaternion(0.1, -0.2, 2.5))
    assert np.linalg.norm(q) == pytest.approx(1.0)


def test_odometry_as_ardupilot_wants_it_origin_first_and_a_reset_when_the_track_restarts(tmp_path, heldout_map,
                                                                                  heldout_cache, embedder):
    from skyloc.onboard.replay import replay
    from skyloc.onboard.telemetry import load_telemetry
    from skyloc.runtime.cache import TileCache
    from skyloc.runtime.localizer import Localizer, LocalizerConfig
    from skyloc.synth.flight import FlightConfig, render_flight

    render_flight(heldout_map, tmp_path / "f.mp4", tmp_path / "f.csv",
                  FlightConfig(duration_s=8, fps=10, speed=10, altitude=125, pitch=0, width=480, height=320,
                               route="turns", seed=6))
    tel = load_telemetry(tmp_path / "f.csv")
    t0 = [time.time()]

    def vehicle():  # what the autopilot itself knows: attitude and altitude (no position: GNSS is denied)
        s = tel.at(time.time() - t0[0])
        return s.yaw, 0.0, 0.0, s.alt, 0.0, 0.0

    port = _free_port()
    peer = AutopilotPeer(port, vehicle).start()
    link = MavlinkLink(f"udpout:127.0.0.1:{port}", outputs=("odometry", "gps_input"), odometry_rate_hz=10.0).start()
    first = tel.at(0.0)
    loc = Localizer(embedder, TileCache.load(heldout_cache, embedder.meta), LocalizerConfig(),
                    start=(first.lat, first.lon, 40.0))

    forced = []

    def force(row):  # halfway the track is dropped and restarted from a known position (as after a GNSS
        if row.frame >= 40 and not forced:  # return); retrieval relocalization with the tests' tiny model is
            forced.append(row.frame)  # not reliable enough (>=: realtime drops frames the CPU cannot keep up with)
            loc.reset()
            here = tel.at(row.time + 0.1)
            loc.start = (here.lat, here.lon, 40.0)

    try:
        t0[0] = time.time()
        res = replay(str(tmp_path / "f.mp4"), loc, tel, mavlink=link, realtime=True, progress=force)
        time.sleep(0.3)
    finally:
        link.close()
        peer.stop()
    kinds = [m.get_type() for _, m in peer.messages]
    assert "SET_GPS_GLOBAL_ORIGIN" in kinds and "ODOMETRY" in kinds
    assert kinds.index("SET_GPS_GLOBAL_ORIGIN") < kinds.index("ODOMETRY")  # the EKF can use the first one
    assert link.stats.origin_confirmed and peer.origin[0] == pytest.approx(first.lat, abs=5e-4)
    odo = peer.of("ODOMETRY")
    for m in odo:
        assert m.frame_id == 20 and m.child_frame_id == 12  # MAV_FRAME_LOCAL_FRD, MAV_FRAME_BODY_FRD
        assert all(math.isfinite(v) for v in (m.x, m.y, m.z))
        # velocities only from a confirmed track (ArduPilot fuses them with VISO_VEL_M_NSE, NaN it drops)
        assert all(math.isfinite(v) for v in (m.vx, m.vy)) == (m.quality >= 50)
        assert np.linalg.norm(m.q) == pytest.approx(1.0, abs=1e-4)
        assert 0 < m.pose_covariance[0] < 1e3 and m.pose_covariance[11] == pytest.approx(m.pose_covariance[0])
    # ArduPilot's single position error from that covariance stays close to the horizontal accuracy
    pos_err = [AutopilotPeer.ekf_inputs(m)[0] for m in odo]
    assert max(pos_err) < 30.0
    # steady >= 4 Hz while there is a track (the relocalization gap has no position to send)
    t = np.array([tt for tt, m in peer.messages if m.get_type() == "ODOMETRY"])
    gaps = np.diff(t)
    assert (gaps <= 0.25).mean() > 0.9 and len(odo) / (t[-1] - t[0]) >= 4.0
    resets = [m.reset_counter for m in odo]
    assert resets == sorted(resets) and resets[-1] > resets[0], resets  # bumped by the restarted track
    # quality tells the EKF what the fix is worth: the restarted track starts below 50 (not yet
    # confirmed by registrations, VISO_QUAL_MIN can reject it) and rises to >= 50 once it is ok
    restarted = [m.quality for m in odo if m.reset_counter > resets[0]]
    assert restarted[0] < 50 and max(restarted) >= 50, restarted
    rep = res.report
    assert rep["track_starts"] >= 2 and rep["ok"] > 0
    # the last ODOMETRY is where the drone is (north/east of the origin)
    last = odo[-1]
    truth = tel.at(res.rows[-1].time)
    from skyloc.runtime.geo import Geodesy, utm_crs_for

    g = Geodesy(utm_crs_for(peer.origin[0], peer.origin[1]))
    ox, oy = g.from_latlon(peer.origin[0], peer.origin[1])
    tx, ty = g.from_latlon(truth.lat, truth.lon)
    assert math.hypot(last.x - (ty - oy), last.y - (tx - ox)) < 8.0


def test_a_frame_gets_the_attitude_of_its_own_time():
    from skyloc.onboard.mavlink import Telemetry

    tel = Telemetry()
    assert tel.at(5.0) == (None, None, None, None)  # nothing yet
    for t, yaw in ((0.0, 350.0), (0.1, 10.0), (0.2, 30.0)):
        tel.history.append((t, yaw, 2.0 * t, -t, 100.0 + t))
    yaw, roll, pitch, alt = tel.at(0.05)
    assert yaw == pytest.approx(0.0) and roll == pytest.approx(0.1) and alt == pytest.approx(100.05)  # wraps at 360
    assert tel.at(0.15)[0] == pytest.approx(20.0)
    assert tel.at(-1.0)[0] == 350.0 and tel.at(9.0)[0] == 30.0  # outside: the nearest sample


def _link_and_peer(outputs=("odometry", "gps_input"), **kw):
    port = _free_port()
    peer = AutopilotPeer(port, lambda: (30.0, 1.0, -2.0, 120.0, 0.0, 0.0)).start()  # stock: streams nothing unasked
    link = MavlinkLink(f"udpout:127.0.0.1:{port}", outputs=outputs, odometry_rate_hz=10.0, heartbeat_timeout=2.0,
                       **kw).start()
    return peer, link


def _ok(lat=47.4, lon=8.5, acc=2.0, source="registration"):
    from skyloc.runtime.estimate import OK, Estimate

    return Estimate(time.time(), OK, lat=lat, lon=lon, horizontal_accuracy=acc, confidence=0.9, vx=3.0, vy=4.0,
                    source=source, odometry=True)


def _fly_ok_until_ready(link, seconds: float = 1.0) -> None:
    """Publish ok estimates until the autopilot confirmed the origin and sends attitude, then `seconds` more."""
    end = time.time() + 8.0
    while time.time() < end and not (link.stats.origin_confirmed and link.telemetry.yaw_deg is not None):
        link.publish(_ok())
        time.sleep(0.1)
    for _ in range(int(seconds * 10)):
        link.publish(_ok())
        time.sleep(0.1)


def test_a_stock_autopilot_streams_nothing_until_the_link_asks_for_its_telemetry():
    peer, link = _link_and_peer()
    try:
        end = time.time() + 6.0
        while time.time() < end and (link.telemetry.yaw_deg is None or link.telemetry.altitude_agl is None):
            time.sleep(0.1)
        assert link.telemetry.yaw_deg == pytest.approx(30.0) and link.telemetry.altitude_agl == pytest.approx(120.0)
        asked = {int(m.param1) for m in peer.of("COMMAND_LONG") if m.command == 511}  # MAV_CMD_SET_MESSAGE_INTERVAL
        assert {30, 33} <= asked  # ATTITUDE, GLOBAL_POSITION_INT
        assert peer.of("REQUEST_DATA_STREAM")  # for firmware without SET_MESSAGE_INTERVAL
        assert link.stats.autopilot == "ardupilot"
        time.sleep(3.5)
        assert link.stats.missing_streams == []
    finally:
        link.close()
        peer.stop()
    # without asking, nothing comes, and the link says which streams are missing
    peer, link = _link_and_peer(request_streams=False)
    try:
        time.sleep(4.0)
        assert link.telemetry.yaw_deg is None and "ATTITUDE" in link.stats.missing_streams
    finally:
        link.close()
        peer.stop()


def test_a_configured_origin_the_autopilot_confirms_still_gets_odometry():
    peer, link = _link_and_peer(origin=(47.4, 8.5, 400.0))
    try:
        _fly_ok_until_ready(link)
    finally:
        link.close()
        peer.stop()
    assert link.stats.origin_confirmed and peer.origin == pytest.approx((47.4, 8.5, 400.0))
    odo = peer.of("ODOMETRY")
    assert len(odo) >= 5 and abs(odo[-1].x) < 1.0 and abs(odo[-1].y) < 1.0  # at the origin


def test_a_camera_outage_is_not_sent_as_a_fix():
    from skyloc.runtime.estimate import LOW, NO_FRAME, Estimate

    peer, link = _link_and_peer(origin=(47.4, 8.5, 400.0))
    try:
        _fly_ok_until_ready(link)
        cut = time.time()
        for _ in range(30):  # the daemon publishes predictions while no frame comes
            link.publish(Estimate(time.time(), LOW, lat=47.4, lon=8.5, horizontal_accuracy=8.0, confidence=0.3,
                                  source=NO_FRAME))
            time.sleep(0.1)
        back = time.time()
        _fly_ok_until_ready(link)
    finally:
        link.close()
        peer.stop()
    with peer._lock:
        odo = [(t, m) for t, m in peer.messages if m.get_type() == "ODOMETRY"]
        gps = [(t, m) for t, m in peer.messages if m.get_type() == "GPS_INPUT"]
    before = [m for t, m in odo if t < cut]
    assert before and all(AutopilotPeer.ekf_inputs(m)[1] for m in before[-5:])  # fused with VISO_QUAL_MIN = 0
    during = [(t - cut, m) for t, m in odo if cut + 0.7 < t < back]
    # dead reckoning is marked failed (quality -1: not fused even with the default VISO_QUAL_MIN = 0) ...
    assert during and all(m.quality == -1 and not AutopilotPeer.ekf_inputs(m)[1] for _, m in during)
    # ... and stops after max_prediction_s, so the EKF sees the source time out
    assert max(dt for dt, _ in during) < link.max_prediction_s + 0.3
    assert all(m.fix_type == 0 for t, m in gps if cut + link.max_prediction_s + 0.3 < t < back)
    after = [m for t, m in odo if t > back + 0.3]
    assert after and after[-1].quality >= 50
    texts = [m.text for m in peer.of("STATUSTEXT")]
    assert texts  # state changes are announced


def test_frames_that_measure_nothing_are_not_sent_as_a_fix():
    """Frames that come but measure nothing (no odometry, no registration: in SITL, the last 100 m
    of a landing over a 5 m/px map) leave the filter dead-reckoning on its own velocity. Fused as
    ExternalNav that had pulled the EKF 450 m off; it must go out as a camera outage does."""
    from skyloc.runtime.estimate import LOW, Estimate

    peer, link = _link_and_peer(origin=(47.4, 8.5, 400.0))
    unmeasured = lambda: Estimate(time.time(), LOW, lat=47.4, lon=8.5, horizontal_accuracy=8.0,  # noqa: E731
                                  confidence=0.3, source="prediction")
    try:
        _fly_ok_until_ready(link)
        ground = time.time()  # disarmed on the ground the camera sees too little: the track still goes
        for _ in range(30):   # out (ArduPilot arms only with a healthy ExternalNav; SITL refused to)
            link.publish(unmeasured())
            time.sleep(0.1)
        peer.armed = True
        end = time.time() + 3.0
        while time.time() < end and link.telemetry.armed is not True:
            link.publish(_ok())
            time.sleep(0.1)
        _fly_ok_until_ready(link)
        blind = time.time()
        for _ in range(30):
            link.publish(unmeasured())
            time.sleep(0.1)
        back = time.time()
        _fly_ok_until_ready(link)
    finally:
        link.close()
        peer.stop()
    with peer._lock:
        odo = [(t, m) for t, m in peer.messages if m.get_type() == "ODOMETRY"]
    on_ground = [m for t, m in odo if ground + link.stale_s + 0.5 < t < ground + 3.0]
    assert on_ground and all(1 <= m.quality <= 49 for m in on_ground)
    during = [(t - blind, m) for t, m in odo if blind + link.stale_s + 0.2 < t < back]
    assert during and all(m.quality == -1 and not AutopilotPeer.ekf_inputs(m)[1] for _, m in during)
    assert max(dt for dt, _ in during) < link.max_prediction_s + 0.3  # then it stops: ExternalNav times out
    assert [m for t, m in odo if t > back + 0.3][-1].quality >= 50
    texts = [m.text for m in peer.of("STATUSTEXT")]
    assert "skyloc: frames show nothing, dead reckoning" in texts and "skyloc: frames measure again" in texts


def test_odometry_covariance_reads_as_the_horizontal_sigma_in_ardupilots_formula():
    from skyloc.onboard.mavlink import ardupilot_pose_variances

    for sigma in (0.5, 1.2, 3.0, 10.0):
        vx, vy, vz = ardupilot_pose_variances(sigma, 2.0)
        assert (vx ** 2 + vy ** 2 + vz ** 2) ** (1 / 3) == pytest.approx(sigma, rel=1e-6)


def test_odometry_is_predicted_from_the_frames_capture_time_not_from_when_it_was_published():
    """An estimate is as old as the camera's and skyloc's latency when it is published; ArduPilot
    fuses ODOMETRY at its send time minus VISO_DELAY_MS, so the link must carry it forward from
    the capture. SITL showed 100-300 ms of it, and the EKF's attitude went astray on it."""
    from skyloc.runtime.estimate import OK, Estimate

    link = MavlinkLink("udpout:127.0.0.1:9", outputs=("odometry",), origin=(47.4, 8.5, 400.0))
    link.telemetry.yaw_deg = 0.0
    now = time.time()
    link.publish(Estimate(now - 0.3, OK, lat=47.4, lon=8.5, horizontal_accuracy=1.0, confidence=0.9,
                          vx=0.0, vy=8.0, source="registration"))  # 8 m/s north, captured 0.3 s ago
    f = link.odometry_fields(now)
    assert f["x"] == pytest.approx(2.4, abs=0.05) and abs(f["y"]) < 0.05  # 0.3 s at 8 m/s, north
    # a time that is not on the wall clock (a recording's) is predicted from when it arrived
    link.publish(Estimate(12.0, OK, lat=47.4, lon=8.5, horizontal_accuracy=1.0, confidence=0.9, vx=0.0, vy=8.0,
                          source="registration"))
    assert abs(link.odometry_fields(time.time())["x"]) < 0.1


def test_the_autopilots_clock_is_kept_across_published_estimates():
    """ATTITUDE is stamped on the autopilot's boot clock mapped by the smallest link delay seen; a
    late sample must not move that mapping, and publishing an estimate must not forget it."""
    from skyloc.runtime.estimate import OK, Estimate

    link = MavlinkLink("udpout:127.0.0.1:9", outputs=("odometry",), origin=(47.4, 8.5, 400.0))
    t0 = 1000.0
    assert link._autopilot_time(5000, t0 + 5.002) == pytest.approx(t0 + 5.002)
    link.publish(Estimate(time.time(), OK, lat=47.4, lon=8.5, horizontal_accuracy=1.0, confidence=0.9))
    # 80 ms late on a busy CPU: stamped when the autopilot measured it, not when it came in
    assert link._autopilot_time(5100, t0 + 5.182) == pytest.approx(t0 + 5.102, abs=1e-3)


def test_as_the_second_gps_the_ground_track_lets_arducopter_arm_and_only_ok_fixes_fly():
    """ArduPilot arms only when every configured GPS has a 3D fix (AP_Arming "GPS 2: Bad fix", seen
    in SITL), and on the ground the camera registers nothing: disarmed, skyloc as GPS2 sends its
    GNSS-prior track as a 3D fix with its accuracy and 6 satellites (GPS1 stays the better one);
    armed, a track that is not "ok" is fix_type 0 again."""
    from skyloc.runtime.estimate import LOW, Estimate

    peer, link = _link_and_peer(outputs=("gps_input",), gps_id=1)
    low = lambda: Estimate(time.time(), LOW, lat=47.4, lon=8.5, horizontal_accuracy=6.0, confidence=0.3,  # noqa: E731
                           source="prediction")
    def publish_until(ready, timeout: float, then: int) -> None:
        end = time.time() + timeout
        while time.time() < end and not ready():
            link.publish(low())
            time.sleep(0.1)
        for _ in range(then):
            link.publish(low())
            time.sleep(0.1)

    try:
        publish_until(lambda: link.telemetry.armed is not None and link.telemetry.altitude_amsl is not None, 6.0, 10)
        on_ground = peer.of("GPS_INPUT")[-3:]
        peer.armed = True
        publish_until(lambda: link.telemetry.armed, 4.0, 5)
        flying = peer.of("GPS_INPUT")[-3:]
    finally:
        link.close()
        peer.stop()
    assert on_ground and all(m.fix_type == 3 and m.satellites_visible == 6 and m.gps_id == 1
                             and 5.0 <= m.horiz_accuracy < 10.0 for m in on_ground)
    assert flying and all(m.fix_type == 0 for m in flying)
    assert all(abs(m.alt - 520.0) < 1.0 for m in on_ground), [m.alt for m in on_ground]  # the autopilot's own AMSL altitude, not 0 m
