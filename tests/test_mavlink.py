"""MAVLink with a real peer: a second pymavlink endpoint plays the autopilot on UDP loopback."""
import math
import os
import socket
import time

import pytest

os.environ.setdefault("MAVLINK20", "1")
from pymavlink import mavutil  # noqa: E402

from skyloc.errors import SkylocError  # noqa: E402
from skyloc.runtime.localizer import NO_FIX, OK, Estimate  # noqa: E402
from skyloc.onboard.mavlink import MavlinkLink, gps_time  # noqa: E402


def _free_port() -> int:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Autopilot:
    """The peer: receives what skyloc sends and can send telemetry back."""

    def __init__(self, port, key=None):
        self.conn = mavutil.mavlink_connection(f"udpin:127.0.0.1:{port}", source_system=1, source_component=1)
        if key:
            self.conn.setup_signing(key, sign_outgoing=False)

    def collect(self, seconds, on_msg=None):
        out = []
        end = time.time() + seconds
        while time.time() < end:
            m = self.conn.recv_match(blocking=True, timeout=0.05)
            if m is not None and m.get_type() != "BAD_DATA":
                out.append((time.time(), m))
                if on_msg:
                    on_msg(m)
        return out

    def close(self):
        self.conn.close()


def _est(status=OK, lat=47.4, lon=8.5, acc=5.0):
    return Estimate(time=time.time(), status=status, lat=lat, lon=lon, x=0, y=0, horizontal_accuracy=acc,
                    confidence=0.9 if status == OK else 0.1, vx=2.0, vy=-1.0, source="odometry", odometry=True)


def test_peer_gets_heartbeat_gps_input_statustext_and_sends_telemetry():
    port = _free_port()
    ap = Autopilot(port)
    link = MavlinkLink(f"udpout:127.0.0.1:{port}", outputs=("gps_input", "odometry", "global_position"),
                       gps_rate_hz=5.0, heartbeat_timeout=1.5).start()
    try:
        before = ap.collect(1.2)
        gps0 = [m for _, m in before if m.get_type() == "GPS_INPUT"]
        assert gps0 and all(m.fix_type == 0 for m in gps0)  # nothing to report yet: honest no fix
        hb = [m for _, m in before if m.get_type() == "HEARTBEAT"]
        assert hb and hb[0].type == mavutil.mavlink.MAV_TYPE_ONBOARD_CONTROLLER
        assert hb[0].get_srcComponent() == mavutil.mavlink.MAV_COMP_ID_ONBOARD_COMPUTER

        link.publish(_est(lat=47.412345, lon=8.523456))

        def answer(m):  # the autopilot talks back: heartbeat, yaw and altitude
            ap.conn.mav.heartbeat_send(mavutil.mavlink.MAV_TYPE_QUADROTOR, mavutil.mavlink.MAV_AUTOPILOT_ARDUPILOTMEGA, 0, 0, 0)
            ap.conn.mav.attitude_send(0, 0.0, 0.0, math.radians(123.0), 0.0, 0.0, 0.0)
            ap.conn.mav.global_position_int_send(0, 0, 0, 0, 87000, 0, 0, 0, 9000)

        msgs = ap.collect(2.2, answer)
        gps = [(t, m) for t, m in msgs if m.get_type() == "GPS_INPUT"]
        rate = (len(gps) - 1) / (gps[-1][0] - gps[0][0])
        assert rate >= 5.0 * 0.9, rate
        # a no-fix message sent just before publish() may still be in the socket: at most one
        fixes = [i for i, (_, m) in enumerate(gps) if m.fix_type == 3]
        assert fixes and fixes[0] <= 1, [m.fix_type for _, m in gps]
        first = gps[fixes[0]][1]
        # within a metre of the estimate (it is predicted forward at 2 m/s for the ~0.2 s since)
        assert first.fix_type == 3 and first.lat == pytest.approx(474123450, abs=90) and first.lon == pytest.approx(85234560, abs=130)
        accs = [m.horiz_accuracy for _, m in gps[fixes[0]:]]
        assert accs == sorted(accs) and accs[-1] > accs[0]  # honest, growing accuracy between fixes
        week, _ = gps_time(time.time())
        assert first.time_week == week
        # the altitude is the autopilot's own AMSL one (skyloc measures none; this one says 0 m AMSL,
        # 87 m above home): ignored until it has come
        last = gps[-1][1]
        assert not last.ignore_flags & mavutil.mavlink.GPS_INPUT_IGNORE_FLAG_ALT and last.alt == pytest.approx(0.0)
        kinds = {m.get_type() for _, m in msgs}
        assert {"STATUSTEXT", "ODOMETRY", "GLOBAL_POSITION_SENSOR"} <= kinds
        text = next(m.text for _, m in msgs if m.get_type() == "STATUSTEXT")
        assert "fix OK" in text
        assert link.telemetry.yaw_deg == pytest.approx(123.0, abs=0.01)
        assert link.telemetry.altitude_agl == pytest.approx(87.0)
        assert link.telemetry.heading_deg == pytest.approx(90.0)
        assert link.stats.autopilot_alive

        link.publish(_est(status=NO_FIX, lat=math.nan, lon=math.nan))
        msgs = ap.collect(0.8)
        assert any(m.get_type() == "STATUSTEXT" and "no fix" in m.text for _, m in msgs)
        assert all(m.fix_type == 0 for _, m in msgs if m.get_type() == "GPS_INPUT")
    finally:
        link.close()
        ap.close()


def test_stale_fix_degrades_to_no_fix_type():
    link = MavlinkLink("udpout:127.0.0.1:9", outputs=("gps_input",), max_prediction_s=2.0)
    try:
        link.publish(_est())
        now = time.time()
        f_now, f_late = link.gps_input_fields(now), link.gps_input_fields(now + 3.0)
        assert f_now["fix_type"] == 3 and f_late["fix_type"] == 0
        assert f_late["horiz_accuracy"] > f_now["horiz_accuracy"] + 10
        assert f_late["lat"] != f_now["lat"]  # predicted forward with the filter velocity
        low = _est(status="low-confidence")
        link.publish(low)
        assert link.gps_input_fields(time.time())["fix_type"] == 0  # only "ok" is a 3D fix
    finally:
        link.close()


def test_a_fix_is_carried_forward_on_the_autopilots_velocity_while_it_is_fresh():
    """Between frames the outputs predict the newest fix forward. The autopilot's own velocity (its
    IMU-driven EKF, GLOBAL_POSITION_INT) carries it while fresh and aided (the autopilot reports a
    position); the filter's velocity, from camera positions 0.1 s apart, otherwise."""
    link = MavlinkLink("udpout:127.0.0.1:9", outputs=("gps_input",), max_prediction_s=2.0)
    try:
        est = _est()  # the filter says 2 m/s east, 1 m/s south
        link.publish(est)
        t0 = est.time

        def moved(now):  # (east, north) metres from the fix, as GPS_INPUT says
            f = link.gps_input_fields(now)
            return ((f["lon"] / 1e7 - est.lon) * 111_320.0 * math.cos(math.radians(est.lat)),
                    (f["lat"] / 1e7 - est.lat) * 111_320.0)

        e, n = moved(t0 + 1.0)  # no autopilot velocity yet: the filter's
        assert abs(e - 2.0) < 0.05 and abs(n + 1.0) < 0.05, (e, n)
        link.telemetry.velocity, link.telemetry.velocity_time = (0.0, 8.0), t0 + 0.9  # flying north at 8 m/s
        e, n = moved(t0 + 1.0)
        assert abs(e - 2.0) < 0.05, "a velocity from an autopilot that reports no position means nothing"
        link.telemetry.lat, link.telemetry.lon = est.lat, est.lon
        e, n = moved(t0 + 1.0)
        assert abs(e) < 0.05 and abs(n - 8.0) < 0.05, (e, n)
        e, n = moved(t0 + 0.9 + link.velocity_fresh_s + 0.1)  # the autopilot's has gone stale
        assert abs(e - 2.0 * 1.5) < 0.05, (e, n)
    finally:
        link.close()


def test_peer_that_goes_away_and_comes_back():
    port = _free_port()
    ap = Autopilot(port)
    link = MavlinkLink(f"udpout:127.0.0.1:{port}", outputs=("gps_input",), heartbeat_timeout=0.6).start()
    try:
        link.publish(_est())
        beat = lambda m: ap.conn.mav.heartbeat_send(2, 3, 0, 0, 0)  # noqa: E731
        assert any(m.get_type() == "GPS_INPUT" for _, m in ap.collect(0.6, beat))
        assert link.stats.autopilot_alive
        ap.close()  # the autopilot vanishes
        time.sleep(1.2)
        assert not link.stats.autopilot_alive and link.stats.link_losses == 1
        ap = Autopilot(port)  # ... and returns on the same port
        msgs = ap.collect(1.0, beat)
        assert sum(m.get_type() == "GPS_INPUT" for _, m in msgs) >= 4
        assert link.stats.autopilot_alive
    finally:
        link.close()
        ap.close()


def test_signed_link():
    port = _free_port()
    key = bytes(range(32))
    ap = Autopilot(port, key=key)
    link = MavlinkLink(f"udpout:127.0.0.1:{port}", signing_key=key).start()
    try:
        msgs = ap.collect(1.2)
        hb = [m for _, m in msgs if m.get_type() == "HEARTBEAT"]
        assert hb and all(m._signed for m in hb)
    finally:
        link.close()
        ap.close()


def test_bad_settings():
    with pytest.raises(SkylocError, match="unknown MAVLink output 'gps'"):
        MavlinkLink("udpout:127.0.0.1:9", outputs=("gps",))
    with pytest.raises(SkylocError, match="below 5"):
        MavlinkLink("udpout:127.0.0.1:9", gps_rate_hz=2)
