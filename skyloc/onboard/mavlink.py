"""MAVLink to the autopilot (pymavlink): heartbeat, telemetry in, position estimates out.

Outputs (any combination):
  gps_input          GPS_INPUT for ArduPilot (GPS1_TYPE=14). Sent at a steady rate (>= 5 Hz; ArduPilot
                     marks the GPS unhealthy below ~4 Hz) by predicting the last fix forward with a
                     growing horiz_accuracy; fix_type 3 only while the estimate is "ok", else 0.
  odometry           ODOMETRY in local NED (FRD) from an origin, with covariance (ArduPilot ExternalNav,
                     PX4 EKF2_EV_CTRL).
  vision_position    VISION_POSITION_ESTIMATE in local NED with covariance (older firmware).
  global_position    GLOBAL_POSITION_SENSOR (id 296, source VISION; newer PX4).
STATUSTEXT reports state changes (fix acquired / degraded / lost, autopilot link lost / back).
"""
from __future__ import annotations

import logging
import math
import os
import threading
import time
from dataclasses import dataclass, field

from skyloc.errors import SkylocError
from skyloc.runtime.geo import Geodesy, utm_crs_for
from skyloc.runtime.estimate import NO_FIX, OK, Estimate

os.environ.setdefault("MAVLINK20", "1")
from pymavlink import mavutil  # noqa: E402  (MAVLINK20 must be set before the import)

log = logging.getLogger("skyloc.mavlink")

OUTPUTS = ("gps_input", "odometry", "vision_position", "global_position")
GPS_EPOCH = 315964800  # 1980-01-06 in Unix seconds
GPS_LEAP_SECONDS = 18
_IGNORE = mavutil.mavlink
# What GPS_INPUT does not carry: altitude and vertical velocity/accuracy (baro and the EKF have them).
GPS_IGNORE_FLAGS = (_IGNORE.GPS_INPUT_IGNORE_FLAG_ALT | _IGNORE.GPS_INPUT_IGNORE_FLAG_VDOP
                    | _IGNORE.GPS_INPUT_IGNORE_FLAG_VEL_VERT | _IGNORE.GPS_INPUT_IGNORE_FLAG_VERTICAL_ACCURACY)


def gps_time(unix_s: float) -> tuple[int, int]:
    """(GPS week, milliseconds of week) for a Unix time."""
    gps = unix_s - GPS_EPOCH + GPS_LEAP_SECONDS
    week = int(gps // (7 * 86400))
    return week, int((gps - week * 7 * 86400) * 1000)


@dataclass
class Telemetry:
    """The newest telemetry from the autopilot; None where nothing has arrived yet."""

    yaw_deg: float | None = None  # ATTITUDE yaw, 0..360 clockwise from north
    roll_deg: float | None = None  # ATTITUDE roll and pitch (for cameras fixed to the airframe)
    pitch_deg: float | None = None
    altitude_agl: float | None = None  # GLOBAL_POSITION_INT relative_alt (m above home)
    heading_deg: float | None = None
    lat: float | None = None  # GLOBAL_POSITION_INT (the autopilot's estimate)
    lon: float | None = None
    gnss: tuple[float, float, float, int] | None = None  # GPS_RAW_INT: lat, lon, accuracy (m), fix_type
    gnss_time: float = 0.0
    updated: float = 0.0


@dataclass
class LinkStats:
    sent: dict = field(default_factory=dict)
    received: dict = field(default_factory=dict)
    autopilot_alive: bool = False
    link_losses: int = 0


class MavlinkLink:
    def __init__(self, url: str, outputs=("gps_input",), gps_rate_hz: float = 5.0, system_id: int = 1,
                 component_id: int = mavutil.mavlink.MAV_COMP_ID_ONBOARD_COMPUTER, origin: tuple | None = None,
                 signing_key: bytes | None = None, heartbeat_timeout: float = 3.0, max_prediction_s: float = 2.0,
                 accel: float = 3.0, baud: int = 921600):
        bad = [o for o in outputs if o not in OUTPUTS]
        if bad:
            raise SkylocError(f"unknown MAVLink output {bad[0]!r}; choose from {', '.join(OUTPUTS)}")
        if gps_rate_hz < 5 and "gps_input" in outputs:
            raise SkylocError(f"gps_rate_hz {gps_rate_hz} is below 5: ArduPilot marks GPS_INPUT unhealthy under ~4 Hz")
        self.url, self.outputs, self.gps_rate_hz = url, tuple(outputs), gps_rate_hz
        self.system_id, self.component_id, self.baud = system_id, component_id, baud
        self.signing_key, self.heartbeat_timeout = signing_key, heartbeat_timeout
        self.max_prediction_s, self.accel = max_prediction_s, accel
        self.origin = origin  # (lat, lon, alt) of local NED; default: the first fix
        self._ned: Geodesy | None = None
        self._origin_xy = (0.0, 0.0)
        self.telemetry = Telemetry()
        self.stats = LinkStats()
        self._latest: Estimate | None = None
        self._latest_wall = 0.0
        self._last_status: str | None = None
        self._last_heartbeat_rx = 0.0
        self._last_fix_sent = -math.inf
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.conn = None
        self._boot = time.time()
        self._connect()

    # -- connection -----------------------------------------------------------------------------
    def _connect(self) -> None:
        try:
            self.conn = mavutil.mavlink_connection(self.url, source_system=self.system_id,
                                                   source_component=self.component_id, baud=self.baud,
                                                   autoreconnect=True)
        except Exception as exc:
            raise SkylocError(f"cannot open MAVLink connection {self.url}: {exc}") from None
        if self.signing_key:
            self.conn.setup_signing(self.signing_key, sign_outgoing=True)

    def start(self) -> "MavlinkLink":
        for name, target in (("mavlink-rx", self._rx_loop), ("mavlink-tx", self._tx_loop)):
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def close(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=2)
        if self.conn is not None:
            self.conn.close()

    def _send(self, name: str, fn, *args) -> None:
        try:
            fn(*args)
            self.stats.sent[name] = self.stats.sent.get(name, 0) + 1
        except OSError as exc:  # peer gone (e.g. UDP port unreachable): keep going, it may come back
            log.debug("send %s failed: %s", name, exc)

    # -- receive --------------------------------------------------------------------------------
    def _rx_loop(self) -> None:
        while not self._stop.is_set():
            try:
                msg = self.conn.recv_match(blocking=True, timeout=0.2)
            except (OSError, ValueError) as exc:
                log.debug("receive failed: %s", exc)
                self._stop.wait(0.2)
                continue
            now = time.time()
            if msg is not None:
                self._handle(msg, now)
            alive = now - self._last_heartbeat_rx < self.heartbeat_timeout
            if alive != self.stats.autopilot_alive:
                self.stats.autopilot_alive = alive
                if alive:
                    log.info("autopilot link up")
                    self.statustext("skyloc: autopilot link up", mavutil.mavlink.MAV_SEVERITY_INFO)
                else:
                    self.stats.link_losses += 1
                    log.warning("autopilot heartbeat lost; still sending, waiting for it to return")

    def _handle(self, msg, now: float) -> None:
        kind = msg.get_type()
        if kind == "BAD_DATA":
            return
        self.stats.received[kind] = self.stats.received.get(kind, 0) + 1
        t = self.telemetry
        if kind == "HEARTBEAT":
            if msg.autopilot != mavutil.mavlink.MAV_AUTOPILOT_INVALID:
                self._last_heartbeat_rx = now
        elif kind == "ATTITUDE":
            t.yaw_deg = math.degrees(msg.yaw) % 360.0
            t.roll_deg, t.pitch_deg = math.degrees(msg.roll), math.degrees(msg.pitch)
            t.updated = now
        elif kind == "GPS_RAW_INT":
            acc = getattr(msg, "h_acc", 0) / 1000.0 if getattr(msg, "h_acc", 0) else (
                msg.eph / 100.0 * 2.5 if msg.eph not in (0, 65535) else 10.0)  # HDOP x ~2.5 m UERE
            t.gnss = (msg.lat / 1e7, msg.lon / 1e7, max(1.0, acc), int(msg.fix_type))
            t.gnss_time = now
        elif kind == "GLOBAL_POSITION_INT":
            t.altitude_agl = msg.relative_alt / 1000.0
            if msg.hdg != 65535:
                t.heading_deg = msg.hdg / 100.0
            if msg.lat or msg.lon:
                t.lat, t.lon = msg.lat / 1e7, msg.lon / 1e7
            t.updated = now

    # -- transmit -------------------------------------------------------------------------------
    def _tx_loop(self) -> None:
        next_hb, next_gps = 0.0, 0.0
        period = 1.0 / self.gps_rate_hz
        while not self._stop.is_set():
            now = time.time()
            if now >= next_hb:
                self._send("HEARTBEAT", self.conn.mav.heartbeat_send, mavutil.mavlink.MAV_TYPE_ONBOARD_CONTROLLER,
                           mavutil.mavlink.MAV_AUTOPILOT_INVALID, 0, 0, mavutil.mavlink.MAV_STATE_ACTIVE)
                next_hb = now + 1.0
            if "gps_input" in self.outputs and now >= next_gps:
                self._send_gps_input(now)
                next_gps = max(next_gps + period, now - period)  # steady rate, no bursts after a stall
            self._stop.wait(max(0.0, min(next_hb, next_gps if "gps_input" in self.outputs else next_hb) - time.time()))

    def gnss_fix(self, now: float, max_age: float = 2.0, quiet_s: float = 5.0) -> tuple[float, float, float] | None:
        """The autopilot's own GNSS fix (lat, lon, accuracy m) when it is a fresh 3D fix that cannot
        be skyloc's: if skyloc sends GPS_INPUT, none of it may have carried a fix for `quiet_s`."""
        g = self.telemetry.gnss
        if g is None or now - self.telemetry.gnss_time > max_age or g[3] < 3 or not (g[0] or g[1]):
            return None
        if "gps_input" in self.outputs and now - self._last_fix_sent < quiet_s:
            return None
        return g[0], g[1], g[2]

    def statustext(self, text: str, severity: int = mavutil.mavlink.MAV_SEVERITY_NOTICE) -> None:
        self._send("STATUSTEXT", self.conn.mav.statustext_send, severity, text[:50].encode())

    def publish(self, est: Estimate) -> None:
        """Hand a new estimate to the link: event outputs go now, GPS_INPUT on its own clock."""
        with self._lock:
            self._latest, self._latest_wall = est, time.time()
        if est.status != self._last_status:
            text = {OK: "skyloc: fix OK", NO_FIX: "skyloc: no fix"}.get(est.status, "skyloc: fix degraded")
            sev = mavutil.mavlink.MAV_SEVERITY_INFO if est.status == OK else mavutil.mavlink.MAV_SEVERITY_WARNING
            self.statustext(f"{text} ({est.horizontal_accuracy:.0f} m)" if est.has_position else text, sev)
            self._last_status = est.status
        if not est.has_position:
            return
        usec = int(est.time * 1e6)
        if any(o in self.outputs for o in ("odometry", "vision_position")):
            n, e = self._local_ne(est)
            var = est.horizontal_accuracy ** 2
            nan = float("nan")
            if "odometry" in self.outputs:
                pose_cov = [nan] * 21
                pose_cov[0], pose_cov[6], pose_cov[11] = var, var, 1e4  # x, y, z variances
                vel_cov = [nan] * 21
                q = self._quaternion()
                self._send("ODOMETRY", self.conn.mav.odometry_send, usec, mavutil.mavlink.MAV_FRAME_LOCAL_FRD,
                           mavutil.mavlink.MAV_FRAME_BODY_FRD, n, e, nan, q, nan, nan, nan, nan, nan, nan,
                           pose_cov, vel_cov, 0, mavutil.mavlink.MAV_ESTIMATOR_TYPE_VISION,
                           int(100 * est.confidence) if est.status == OK else 0)
            if "vision_position" in self.outputs:
                cov = [0.0] * 21
                cov[0], cov[6], cov[11] = var, var, 1e4
                yaw = math.radians(self.telemetry.yaw_deg) if self.telemetry.yaw_deg is not None else 0.0
                self._send("VISION_POSITION_ESTIMATE", self.conn.mav.vision_position_estimate_send, usec, n, e, 0.0,
                           0.0, 0.0, yaw, cov, 0)
        if "global_position" in self.outputs:
            flags = 0 if est.status == OK else mavutil.mavlink.GLOBAL_POSITION_UNHEALTHY
            self._send("GLOBAL_POSITION_SENSOR", self.conn.mav.global_position_sensor_send, 0, 0, 0, usec,
                       int(sum(est.latency_ms.values()) * 1000) if est.latency_ms else 0,
                       mavutil.mavlink.GLOBAL_POSITION_SRC_VISION, flags, int(round(est.lat * 1e7)),
                       int(round(est.lon * 1e7)), float("nan"), float("nan"), est.horizontal_accuracy, float("nan"))

    def _quaternion(self) -> list[float]:
        if self.telemetry.yaw_deg is None:
            return [float("nan"), 0.0, 0.0, 0.0]  # unknown attitude
        half = math.radians(self.telemetry.yaw_deg) / 2
        return [math.cos(half), 0.0, 0.0, math.sin(half)]

    def _local_ne(self, est: Estimate) -> tuple[float, float]:
        if self._ned is None:
            lat0, lon0 = (self.origin[0], self.origin[1]) if self.origin else (est.lat, est.lon)
            self._ned = Geodesy(utm_crs_for(lat0, lon0))
            self._origin_xy = self._ned.from_latlon(lat0, lon0)
        x, y = self._ned.from_latlon(est.lat, est.lon)
        return y - self._origin_xy[1], x - self._origin_xy[0]  # north, east

    def gps_input_fields(self, now: float) -> dict:
        """GPS_INPUT contents at wall time `now`: the last fix predicted forward, honestly degraded."""
        with self._lock:
            est, at = self._latest, self._latest_wall
        week, week_ms = gps_time(now)
        f = dict(time_usec=int(now * 1e6), gps_id=0, ignore_flags=GPS_IGNORE_FLAGS, time_week_ms=week_ms,
                 time_week=week, fix_type=0, lat=0, lon=0, alt=0.0, hdop=99.99, vdop=99.99, vn=0.0, ve=0.0, vd=0.0,
                 speed_accuracy=99.0, horiz_accuracy=9999.0, vert_accuracy=0.0, satellites_visible=0, yaw=0)
        if est is None or not est.has_position:
            return f
        age = max(0.0, now - at)
        lat, lon = est.lat, est.lon
        if age > 0:  # dead-reckon with the filter's velocity
            dlat = est.vy * age / 111_320.0
            dlon = est.vx * age / (111_320.0 * max(0.01, math.cos(math.radians(lat))))
            lat, lon = lat + dlat, lon + dlon
        acc = math.hypot(est.horizontal_accuracy, 0.5 * self.accel * age * age + 1.0 * age)
        fresh = age <= self.max_prediction_s
        f.update(lat=int(round(lat * 1e7)), lon=int(round(lon * 1e7)), vn=est.vy, ve=est.vx,
                 horiz_accuracy=float(acc), hdop=float(min(99.0, max(0.5, acc / 3.0))),
                 speed_accuracy=float(min(99.0, 1.0 + 2.0 * age + est.horizontal_accuracy / 10)))
        if est.status == OK and fresh:
            # ArduPilot's EKF wants >= 6 satellites for a usable fix; a vision fix has none, so
            # report a nominal 10 only while the fix is good (0 otherwise).
            f.update(fix_type=3, satellites_visible=10)
        return f

    def _send_gps_input(self, now: float) -> None:
        f = self.gps_input_fields(now)
        if f["fix_type"] >= 3:
            self._last_fix_sent = now
        self._send("GPS_INPUT", lambda: self.conn.mav.gps_input_send(**f))
