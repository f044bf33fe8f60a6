"""MAVLink to the autopilot (pymavlink): heartbeat, telemetry in, position estimates out.

Outputs (any combination), each on its own steady clock, predicted forward from the newest
estimate (on the autopilot's own velocity while fresh, else the filter's) and an honestly growing
uncertainty:
  odometry           ODOMETRY, ArduPilot ExternalNav's preferred input (and PX4 EKF2_EV_CTRL):
                     frame LOCAL_FRD / child BODY_FRD, x/y north/east of the EKF origin, z from
                     the altitude, the attitude from ATTITUDE, body-frame velocity, a pose
                     covariance with real variances, reset_counter bumped on every jump, quality
                     from the confidence. Sent only once the EKF origin is set and ATTITUDE known.
  gps_input          GPS_INPUT for ArduPilot GPS1_TYPE=14: fix_type 3 only while "ok", else 0.
  vision_position    VISION_POSITION_ESTIMATE (older firmware), same frame and covariance.
  global_position    GLOBAL_POSITION_SENSOR (id 296, source VISION; newer PX4), per estimate.
The EKF origin: without GNSS the autopilot's EKF cannot start until one is set, so
SET_GPS_GLOBAL_ORIGIN (from `origin`, else the first ok fix) is sent, and re-sent every second
until the autopilot answers with GPS_GLOBAL_ORIGIN; an origin the autopilot reports is adopted.
Telemetry in: a stock autopilot streams nothing on a new link, so the link asks for what the
localizer needs (SET_MESSAGE_INTERVAL, and REQUEST_DATA_STREAM for old firmware) once it hears
the autopilot, and asks again while it does not come (`missing_streams` says which).
Outputs carry a position only while frames come: predictions made without a frame (a camera
outage) do not refresh them, so after `max_prediction_s` ODOMETRY stops and GPS_INPUT says no
fix; in between ODOMETRY's quality is -1, which ArduPilot never fuses (VISO_QUAL_MIN >= 0).
Frames that measure nothing (no odometry, no registration: too low over a coarse map, no
texture) count as no frames: the filter's own dead reckoning is not a measurement, and fused as
one it pulled SITL's EKF 450 m off in a landing.
STATUSTEXT reports state changes. Only the sender thread writes to the link.
"""
from __future__ import annotations

import bisect
import logging
import math
import os
import queue
import threading
import time
from collections import deque
from dataclasses import dataclass, field

from skyloc.errors import SkylocError
from skyloc.runtime.estimate import NO_FIX, NO_FRAME, OK, Estimate
from skyloc.onboard.telemetry import TelemetrySample
from skyloc.runtime.geo import Geodesy

os.environ.setdefault("MAVLINK20", "1")
from pymavlink import mavutil  # noqa: E402  (MAVLINK20 must be set before the import)

log = logging.getLogger("skyloc.mavlink")
M = mavutil.mavlink

OUTPUTS = ("gps_input", "odometry", "vision_position", "global_position")
GPS_EPOCH = 315964800  # 1980-01-06 in Unix seconds
GPS_LEAP_SECONDS = 18
# What GPS_INPUT does not carry: altitude and vertical velocity/accuracy (baro and the EKF have them).
GPS_IGNORE_FLAGS = (M.GPS_INPUT_IGNORE_FLAG_ALT | M.GPS_INPUT_IGNORE_FLAG_VDOP | M.GPS_INPUT_IGNORE_FLAG_VEL_VERT
                    | M.GPS_INPUT_IGNORE_FLAG_VERTICAL_ACCURACY)
Z_SIGMA = 2.0  # m, 1-sigma of the altitude put in ODOMETRY's z (baro-like; the EKF should take z from baro)
ATT_SIGMA = math.radians(2.0)  # attitude passed through from ATTITUDE
# What the localizer needs from the autopilot, and the rate asked for (Hz)
STREAMS = {"ATTITUDE": 50.0, "GLOBAL_POSITION_INT": 10.0, "GPS_RAW_INT": 5.0, "DISTANCE_SENSOR": 10.0}
# The same through the old REQUEST_DATA_STREAM groups (firmware without SET_MESSAGE_INTERVAL)
DATA_STREAMS = {M.MAV_DATA_STREAM_EXTRA1: 50, M.MAV_DATA_STREAM_POSITION: 10, M.MAV_DATA_STREAM_EXTENDED_STATUS: 5,
                M.MAV_DATA_STREAM_EXTRA3: 10}
REQUIRED_STREAMS = ("ATTITUDE", "GLOBAL_POSITION_INT")  # without these the localizer has no attitude/altitude


def ardupilot_pose_variances(sigma_h: float, sigma_z: float) -> tuple[float, float, float]:
    """(var_x, var_y, var_z) for ArduPilot's ODOMETRY receiver, which folds the three into one
    error as cbrt(var_x^2 + var_y^2 + var_z^2) (GCS_MAVLINK::handle_odometry): three equal values
    v = sqrt(sigma_h^3 / 3) make that error the horizontal 1-sigma per axis, so neither the
    height (which ArduPilot takes from the baro) nor the formula's units inflate it."""
    del sigma_z  # ArduPilot does not fuse ExternalNav height with EK3_SRCn_POSZ = baro
    v = math.sqrt(max(sigma_h, 1e-3) ** 3 / 3.0)
    return v, v, v


def gps_time(unix_s: float) -> tuple[int, int]:
    """(GPS week, milliseconds of week) for a Unix time."""
    gps = unix_s - GPS_EPOCH + GPS_LEAP_SECONDS
    week = int(gps // (7 * 86400))
    return week, int((gps - week * 7 * 86400) * 1000)


def euler_to_quaternion(roll: float, pitch: float, yaw: float) -> list[float]:
    """[w, x, y, z] of the body-to-NED rotation for roll, pitch, yaw in radians (aerospace order)."""
    cr, sr, cp, sp, cy, sy = (math.cos(roll / 2), math.sin(roll / 2), math.cos(pitch / 2), math.sin(pitch / 2),
                              math.cos(yaw / 2), math.sin(yaw / 2))
    return [cr * cp * cy + sr * sp * sy, sr * cp * cy - cr * sp * sy, cr * sp * cy + sr * cp * sy,
            cr * cp * sy - sr * sp * cy]


@dataclass
class Telemetry:
    """The newest telemetry from the autopilot; None where nothing has arrived yet."""

    yaw_deg: float | None = None  # ATTITUDE yaw, 0..360 clockwise from north
    roll_deg: float | None = None  # ATTITUDE roll and pitch (for cameras fixed to the airframe)
    pitch_deg: float | None = None
    altitude_agl: float | None = None  # GLOBAL_POSITION_INT relative_alt (m above home)
    altitude_amsl: float | None = None  # GLOBAL_POSITION_INT alt
    heading_deg: float | None = None
    lat: float | None = None  # GLOBAL_POSITION_INT (the autopilot's estimate)
    lon: float | None = None
    velocity: tuple[float, float] | None = None  # GLOBAL_POSITION_INT vx, vy as east, north (m/s)
    velocity_time: float = 0.0
    gnss: tuple[float, float, float, int] | None = None  # GPS_RAW_INT: lat, lon, accuracy (m), fix_type
    gnss_time: float = 0.0
    range_m: float | None = None  # DISTANCE_SENSOR facing down (m)
    range_time: float = 0.0
    ekf_origin: tuple[float, float, float] | None = None  # GPS_GLOBAL_ORIGIN: lat, lon, alt (m AMSL)
    autopilot_system: int = 1
    armed: bool | None = None  # HEARTBEAT's safety-armed flag (None: no heartbeat yet)
    updated: float = 0.0
    history: deque = field(default_factory=lambda: deque(maxlen=600))  # (time, yaw, roll, pitch, alt_agl)

    def aided_velocity(self, now: float, max_age_s: float) -> tuple[float, float] | None:
        """The autopilot's own velocity (east, north m/s) while fresh and while its estimator has a
        position: one that reports none (a ground peer, an EKF never aided) sends a velocity of 0
        that means nothing."""
        v = self.velocity
        if v is None or self.lat is None or not 0.0 <= now - self.velocity_time < max_age_s \
                or not all(map(math.isfinite, v)):
            return None
        return v

    def at(self, t: float) -> tuple[float | None, float | None, float | None, float | None]:
        """(yaw, roll, pitch, altitude above home) at wall time t, interpolated between the samples
        around it: a frame that waited in the queue gets the attitude it was taken with, not the
        newest. Outside the history the nearest sample; None where nothing has arrived."""
        h = list(self.history)
        if not h:
            return self.yaw_deg, self.roll_deg, self.pitch_deg, self.altitude_agl
        i = bisect.bisect_left([s[0] for s in h], t)
        if i == 0 or i == len(h):
            return h[0 if i == 0 else -1][1:]
        (t0, *a), (t1, *b) = h[i - 1], h[i]
        w = 0.0 if t1 <= t0 else (t - t0) / (t1 - t0)
        out = []
        for k, (u, v) in enumerate(zip(a, b)):
            if u is None or v is None:
                out.append(v if u is None else u)
            elif k == 0:  # yaw wraps at 360
                out.append((u + w * ((v - u + 180.0) % 360.0 - 180.0)) % 360.0)
            else:
                out.append(u + w * (v - u))
        return tuple(out)

    def sample(self, t: float) -> TelemetrySample:
        """The telemetry at wall time t as a log's sample would hold it (NaN where unknown)."""
        nan = math.nan
        yaw, roll, pitch, alt = (nan if v is None else v for v in self.at(t))
        return TelemetrySample(t, alt=alt, yaw=yaw, roll=roll, pitch=pitch)


@dataclass
class LinkStats:
    sent: dict = field(default_factory=dict)
    received: dict = field(default_factory=dict)
    autopilot_alive: bool = False
    link_losses: int = 0
    origin_confirmed: bool = False
    autopilot: str = ""  # ardupilot | px4 | other, from its HEARTBEAT
    stream_requests: int = 0  # rounds of SET_MESSAGE_INTERVAL / REQUEST_DATA_STREAM sent
    missing_streams: list = field(default_factory=lambda: list(REQUIRED_STREAMS))
    # when each periodic output left (the sender's own cadence, beside what the autopilot saw)
    sent_at: dict = field(default_factory=lambda: {k: deque(maxlen=100_000) for k in
                                                   ("GPS_INPUT", "ODOMETRY", "VISION_POSITION_ESTIMATE")})


class MavlinkLink:
    compass_warn_deg = 10.0  # STATUSTEXT when the compass disagrees with the map by more than this
    # Dead reckoning (ODOMETRY quality -1, never fused) is what the daemon says is a camera outage
    # (its predictions without a frame), or an estimate older than this whatever it says. Not a
    # slow frame: in SITL, map registrations of 0.5-3 s while tracking had made the EKF drop
    # ExternalNav when -1 came after 0.5 s, and its variance failsafe fired.
    stale_s = 1.5
    mount_yaw_deg = 0.0  # camera heading relative to the nose (send_heading turns it back)
    velocity_fresh_s = 0.5  # the autopilot's velocity carries predictions while younger than this

    def __init__(self, url: str, outputs=("gps_input",), gps_rate_hz: float = 10.0, system_id: int = 1,
                 component_id: int = M.MAV_COMP_ID_ONBOARD_COMPUTER, origin: tuple | None = None,
                 signing_key: bytes | None = None, heartbeat_timeout: float = 3.0, max_prediction_s: float = 2.0,
                 accel: float = 3.0, baud: int = 921600, odometry_rate_hz: float = 10.0,
                 request_streams: bool = True, send_heading: bool = False, gps_id: int = 0):
        bad = [o for o in outputs if o not in OUTPUTS]
        if bad:
            raise SkylocError(f"unknown MAVLink output {bad[0]!r}; choose from {', '.join(OUTPUTS)}")
        if gps_rate_hz < 5 and "gps_input" in outputs:
            raise SkylocError(f"gps_rate_hz {gps_rate_hz} is below 5: ArduPilot marks GPS_INPUT unhealthy under ~4 Hz")
        if odometry_rate_hz < 4 and any(o in outputs for o in ("odometry", "vision_position")):
            raise SkylocError(f"odometry_rate_hz {odometry_rate_hz} is below 4: ArduPilot drops ExternalNav "
                              "after 300 ms without a message")
        self.url, self.outputs = url, tuple(outputs)
        self.gps_rate_hz, self.odometry_rate_hz = gps_rate_hz, odometry_rate_hz
        self.system_id, self.component_id, self.baud = system_id, component_id, baud
        self.signing_key, self.heartbeat_timeout = signing_key, heartbeat_timeout
        self.max_prediction_s, self.accel = max_prediction_s, accel
        self.request_streams, self.send_heading, self.gps_id = request_streams, send_heading, gps_id
        self.origin: tuple[float, float, float] | None = None  # lat, lon, alt AMSL
        self._ned: Geodesy | None = None
        self._origin_xy = (0.0, 0.0)
        if origin:
            self._set_origin(tuple(origin))
        self._last_request = -math.inf
        self._stream_seen: dict[str, float] = {}
        self._compass_warned = False
        self._boot_offset: float | None = None
        self._boot_last = -math.inf
        self.telemetry = Telemetry()
        self.stats = LinkStats()
        self._latest: Estimate | None = None
        self._latest_wall = 0.0
        # when a frame last showed motion or the map (odometry or registration): estimates after
        # it are the filter's own dead reckoning even though frames come (no texture, too low)
        self._seen_wall: float | None = None
        self._blind_warned = False
        self._no_frames = False  # the newest estimate is a camera outage's prediction
        self._last_status: str | None = None
        self._last_heartbeat_rx = 0.0
        self._last_fix_sent = -math.inf
        self._reset_counter = 0
        self._track_id: int | None = None
        self._last_sent_ne: tuple[float, float, float] | None = None  # north, east, sigma of the last odometry
        self._origin_sent: tuple | None = None
        self._lock = threading.Lock()
        self._outbox: queue.Queue = queue.Queue(maxsize=256)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.conn = None
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

    def _send(self, name: str, fn, *args, **kw) -> None:
        """Write one message (sender thread only)."""
        try:
            fn(*args, **kw)
            self.stats.sent[name] = self.stats.sent.get(name, 0) + 1
            if name in self.stats.sent_at:
                self.stats.sent_at[name].append(time.time())
        except OSError as exc:  # peer gone (e.g. UDP port unreachable): keep going, it may come back
            log.debug("send %s failed: %s", name, exc)

    def _queue(self, name: str, fn, *args, **kw) -> None:
        """Hand a message to the sender thread (any thread may call this)."""
        try:
            self._outbox.put_nowait((name, fn, args, kw))
        except queue.Full:
            log.warning("MAVLink outbox full: dropping %s", name)

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
                    self.statustext("skyloc: autopilot link up", M.MAV_SEVERITY_INFO)
                else:
                    self.stats.link_losses += 1
                    log.warning("autopilot heartbeat lost; still sending, waiting for it to return")

    def _handle(self, msg, now: float) -> None:
        kind = msg.get_type()
        if kind == "BAD_DATA":
            return
        self.stats.received[kind] = self.stats.received.get(kind, 0) + 1
        self._stream_seen[kind] = now
        t = self.telemetry
        if kind == "HEARTBEAT":
            if msg.autopilot != M.MAV_AUTOPILOT_INVALID:
                self._last_heartbeat_rx = now
                t.autopilot_system = msg.get_srcSystem()
                self.stats.autopilot = {M.MAV_AUTOPILOT_ARDUPILOTMEGA: "ardupilot",
                                        M.MAV_AUTOPILOT_PX4: "px4"}.get(msg.autopilot, "other")
                t.armed = bool(msg.base_mode & M.MAV_MODE_FLAG_SAFETY_ARMED)
        elif kind == "DISTANCE_SENSOR":
            if msg.orientation == M.MAV_SENSOR_ROTATION_PITCH_270 and msg.min_distance <= msg.current_distance \
                    <= msg.max_distance:
                t.range_m, t.range_time = msg.current_distance / 100.0, now
        elif kind == "ATTITUDE":
            t.yaw_deg = math.degrees(msg.yaw) % 360.0
            t.roll_deg, t.pitch_deg = math.degrees(msg.roll), math.degrees(msg.pitch)
            t.updated = now
            t.history.append((self._autopilot_time(msg.time_boot_ms, now), t.yaw_deg, t.roll_deg, t.pitch_deg,
                              t.altitude_agl))
        elif kind == "GLOBAL_POSITION_INT":
            t.altitude_agl = msg.relative_alt / 1000.0
            t.altitude_amsl = msg.alt / 1000.0
            if msg.hdg != 65535:
                t.heading_deg = msg.hdg / 100.0
            if msg.lat or msg.lon:
                t.lat, t.lon = msg.lat / 1e7, msg.lon / 1e7
            t.velocity, t.velocity_time = (msg.vy / 100.0, msg.vx / 100.0), now
            t.updated = now
        elif kind == "GPS_RAW_INT":
            acc = getattr(msg, "h_acc", 0) / 1000.0 if getattr(msg, "h_acc", 0) else (
                msg.eph / 100.0 * 2.5 if msg.eph not in (0, 65535) else 10.0)  # HDOP x ~2.5 m UERE
            t.gnss = (msg.lat / 1e7, msg.lon / 1e7, max(1.0, acc), int(msg.fix_type))
            t.gnss_time = now
        elif kind == "GPS_GLOBAL_ORIGIN":
            origin = (msg.latitude / 1e7, msg.longitude / 1e7, msg.altitude / 1000.0)
            with self._lock:
                t.ekf_origin = origin
                if self._ned is None or self.origin is None or \
                        math.hypot(origin[0] - self.origin[0], origin[1] - self.origin[1]) > 1e-7:
                    log.info("the autopilot's EKF origin is %.7f, %.7f: local positions are relative to it", *origin[:2])
                    self._set_origin(origin)
                self.stats.origin_confirmed = True

    def _autopilot_time(self, boot_ms: int, now: float) -> float:
        """When the autopilot measured a sample, on this clock: its own time_boot_ms plus the
        smallest link delay seen (receive times alone carry the link's and this process's delays,
        tens of ms on a busy companion: in a fast turn that is a heading error)."""
        boot = boot_ms / 1000.0
        d = now - boot
        last = self._boot_last
        self._boot_last = boot
        if self._boot_offset is None or boot < last - 1.0:  # first sample, or the autopilot rebooted
            self._boot_offset = d
        elif d < self._boot_offset:
            self._boot_offset = d
        else:  # let the offset follow a slow clock drift (100 ppm)
            self._boot_offset += min(d - self._boot_offset, 1e-4 * max(0.0, boot - last))
        return boot + self._boot_offset

    # -- transmit -------------------------------------------------------------------------------
    def _tx_loop(self) -> None:
        """One steady clock per output; event messages from other threads go out in between."""
        clocks = {"heartbeat": 1.0, "origin": 1.0, "streams": 1.0}
        if "gps_input" in self.outputs:
            clocks["gps_input"] = 1.0 / self.gps_rate_hz
        for o in ("odometry", "vision_position"):
            if o in self.outputs:
                clocks[o] = 1.0 / self.odometry_rate_hz
        due = {k: 0.0 for k in clocks}
        while not self._stop.is_set():
            now = time.time()
            for name, period in clocks.items():
                if now >= due[name]:
                    getattr(self, f"_tick_{name}")(now)
                    due[name] = max(due[name] + period, now - period)  # steady rate, no bursts after a stall
            while True:
                try:
                    name, fn, args, kw = self._outbox.get_nowait()
                except queue.Empty:
                    break
                self._send(name, fn, *args, **kw)
            wait = min(due.values()) - time.time()
            if wait > 0:
                try:  # sleep until the next tick, or until an event message arrives
                    name, fn, args, kw = self._outbox.get(timeout=wait)
                    self._send(name, fn, *args, **kw)
                except queue.Empty:
                    pass

    def _tick_heartbeat(self, now: float) -> None:
        self._send("HEARTBEAT", self.conn.mav.heartbeat_send, M.MAV_TYPE_ONBOARD_CONTROLLER, M.MAV_AUTOPILOT_INVALID,
                   0, 0, M.MAV_STATE_ACTIVE)

    def _tick_streams(self, now: float) -> None:
        """Ask for the telemetry the localizer needs once the autopilot is heard, and again every
        5 s while some of it does not arrive (a stock autopilot streams nothing to a new link)."""
        missing = [k for k in STREAMS if now - self._stream_seen.get(k, -math.inf) > 3.0]
        self.stats.missing_streams = [k for k in missing if k in REQUIRED_STREAMS]
        if not self.request_streams or not self.stats.autopilot_alive or not missing:
            return
        if now - self._last_request < 5.0:
            return
        self._last_request = now
        self.stats.stream_requests += 1
        target = self.telemetry.autopilot_system
        for name in missing:
            msg_id = getattr(M, f"MAVLINK_MSG_ID_{name}")
            self._send("COMMAND_LONG", self.conn.mav.command_long_send, target, 1, M.MAV_CMD_SET_MESSAGE_INTERVAL, 0,
                       msg_id, 1e6 / STREAMS[name], 0, 0, 0, 0, 0)
        for stream, hz in DATA_STREAMS.items():  # firmware without SET_MESSAGE_INTERVAL
            self._send("REQUEST_DATA_STREAM", self.conn.mav.request_data_stream_send, target, 1, stream, hz, 1)
        if self.stats.stream_requests == 1 or self.stats.stream_requests % 6 == 0:
            log.info("asked the autopilot for %s", ", ".join(missing))
        if self.stats.stream_requests == 3 and self.stats.missing_streams:
            log.warning("the autopilot does not send %s: check SRn_* stream rates or the link",
                        ", ".join(self.stats.missing_streams))
            self.statustext(f"skyloc: no {self.stats.missing_streams[0]} from autopilot", M.MAV_SEVERITY_WARNING)

    def _tick_origin(self, now: float) -> None:
        """SET_GPS_GLOBAL_ORIGIN until the autopilot confirms it (only outputs in local NED need it)."""
        if self.stats.origin_confirmed or not any(o in self.outputs for o in ("odometry", "vision_position")):
            return
        if self.stats.autopilot_alive:  # an autopilot with GNSS has its origin already: ask for it
            self._send("COMMAND_LONG", self.conn.mav.command_long_send, self.telemetry.autopilot_system, 1,
                       M.MAV_CMD_REQUEST_MESSAGE, 0, M.MAVLINK_MSG_ID_GPS_GLOBAL_ORIGIN, 0, 0, 0, 0, 0, 0)
        with self._lock:
            origin = self.origin
        if origin is None:
            return
        self._send("SET_GPS_GLOBAL_ORIGIN", self.conn.mav.set_gps_global_origin_send,
                   self.telemetry.autopilot_system, int(round(origin[0] * 1e7)), int(round(origin[1] * 1e7)),
                   int(round(origin[2] * 1000)), int(now * 1e6))
        self._origin_sent = origin

    def _origin_first(self, now: float) -> None:
        """The EKF cannot use local positions before it has the origin: it goes out first."""
        if not self.stats.origin_confirmed and self._origin_sent != self.origin:
            self._tick_origin(now)

    def _tick_gps_input(self, now: float) -> None:
        f = self.gps_input_fields(now)
        self._send("GPS_INPUT", self.conn.mav.gps_input_send, **f)

    def _tick_odometry(self, now: float) -> None:
        f = self.odometry_fields(now)
        if f is not None:
            self._origin_first(now)
            self._send("ODOMETRY", self.conn.mav.odometry_send, **f)

    def _tick_vision_position(self, now: float) -> None:
        f = self.odometry_fields(now)
        if f is None:
            return
        self._origin_first(now)
        roll, pitch, yaw = (math.radians(v or 0.0) for v in (self.telemetry.roll_deg, self.telemetry.pitch_deg,
                                                              self.telemetry.yaw_deg))
        self._send("VISION_POSITION_ESTIMATE", self.conn.mav.vision_position_estimate_send, f["time_usec"], f["x"],
                   f["y"], f["z"], roll, pitch, yaw, f["pose_covariance"], f["reset_counter"])

    def statustext(self, text: str, severity: int = M.MAV_SEVERITY_NOTICE) -> None:
        self._queue("STATUSTEXT", self.conn.mav.statustext_send, severity, text[:50].encode())

    # -- estimates in ---------------------------------------------------------------------------
    def publish(self, est: Estimate) -> None:
        """Hand a new estimate to the link: the clocked outputs predict from it until the next."""
        with self._lock:
            now = time.time()
            self._no_frames = est.source == NO_FRAME
            if est.source == NO_FRAME and self._latest is not None \
                    and self._latest.has_position and est.has_position:
                pass  # no frame behind it (a camera outage): the outputs keep predicting from the last
                # estimate that had one, so its age grows and they say so and stop in time
            else:
                # predict from the time the frame shows, not from now: the estimate is already as
                # old as the camera's and skyloc's latency (100-300 ms in SITL), and the EKF fuses
                # ODOMETRY at its send time minus VISO_DELAY_MS, the link's delay alone
                shot = est.time if abs(now - est.time) < 10.0 else now  # not a wall clock: now
                self._latest, self._latest_wall = est, min(shot, now)
                if est.odometry or est.registered or est.source in ("odometry", "registration"):
                    self._seen_wall = min(shot, now)
            if est.status == OK and self.origin is None and est.has_position:
                alt = self.telemetry.altitude_amsl
                agl = self.telemetry.altitude_agl
                ground = (alt - agl) if alt is not None and agl is not None else 0.0
                self._set_origin((est.lat, est.lon, ground))
                log.info("EKF origin from the first ok fix: %.7f, %.7f", est.lat, est.lon)
            if self._track_id is not None and est.track_id != self._track_id and est.has_position:
                self._reset_counter = (self._reset_counter + 1) % 256  # the track restarted: a position jump
            if est.has_position:
                self._track_id = est.track_id
        if est.source != NO_FRAME and est.has_position:  # frames come, but do they measure anything?
            blind = self.blind_s(now) > self.stale_s
            if blind and not self._blind_warned:
                self.statustext("skyloc: frames show nothing, dead reckoning", M.MAV_SEVERITY_WARNING)
            elif not blind and self._blind_warned:
                self.statustext("skyloc: frames measure again", M.MAV_SEVERITY_INFO)
            self._blind_warned = blind
        bias = getattr(est, "yaw_bias_deg", math.nan)
        if math.isfinite(bias) and est.status == OK:
            if abs(bias) > self.compass_warn_deg and not self._compass_warned:
                self._compass_warned = True
                self.statustext(f"skyloc: compass off by {-bias:+.0f} deg vs map", M.MAV_SEVERITY_WARNING)
            elif abs(bias) < 0.7 * self.compass_warn_deg:
                self._compass_warned = False
        if est.status != self._last_status:
            text = {OK: "skyloc: fix OK", NO_FIX: "skyloc: no fix"}.get(est.status, "skyloc: fix degraded")
            sev = M.MAV_SEVERITY_INFO if est.status == OK else M.MAV_SEVERITY_WARNING
            self.statustext(f"{text} ({est.horizontal_accuracy:.0f} m)" if est.has_position else text, sev)
            self._last_status = est.status
        if est.has_position and "global_position" in self.outputs:
            flags = 0 if est.status == OK else M.GLOBAL_POSITION_UNHEALTHY
            self._queue("GLOBAL_POSITION_SENSOR", self.conn.mav.global_position_sensor_send, 0, 0, 0,
                        int(est.time * 1e6), int(est.latency_ms.get("total", 0.0) * 1000),
                        M.GLOBAL_POSITION_SRC_VISION, flags, int(round(est.lat * 1e7)), int(round(est.lon * 1e7)),
                        float("nan"), float("nan"), est.horizontal_accuracy, float("nan"))

    def _set_origin(self, origin: tuple[float, float, float]) -> None:
        """Local north/east of the EKF origin on a tangent plane there (azimuthal equidistant):
        true north, as the EKF's NED frame. A UTM grid's north is off by the meridian convergence,
        2 deg and more away from a zone's centre: 10 m at 300 m from the origin."""
        self.origin = origin
        self._ned = Geodesy(f"+proj=aeqd +lat_0={origin[0]:.9f} +lon_0={origin[1]:.9f} +datum=WGS84 +units=m")
        self._origin_xy = self._ned.from_latlon(origin[0], origin[1])

    def _predicted(self, now: float):
        """(estimate, age s, lat, lon, horizontal 1-sigma per axis) of the newest estimate carried to now."""
        with self._lock:
            est, at = self._latest, self._latest_wall
        if est is None or not est.has_position:
            return None
        age = max(0.0, now - at)
        lat, lon = est.lat, est.lon
        if age > 0:
            ve, vn = self._prediction_velocity(est, now)
            lat += vn * age / 111_320.0
            lon += ve * age / (111_320.0 * max(0.01, math.cos(math.radians(lat))))
        drms = math.hypot(est.horizontal_accuracy, 0.5 * self.accel * age * age + 1.0 * age)
        return est, age, lat, lon, drms

    def _prediction_velocity(self, est: Estimate, now: float) -> tuple[float, float]:
        """(east, north) m/s to carry the newest fix to `now` with: the autopilot's own velocity
        (GLOBAL_POSITION_INT, its IMU-driven EKF) while fresh and aided, else the filter's. In SITL the
        filter's velocity, from positions 0.1 s apart, was metres per second off after a turn or a
        registration's step, and a slow frame (0.5-1 s) carried that into ODOMETRY: sent positions
        3-20 m off, fused by EKF3 at EK3_POSNE_M_NSE (0.5 m), then its position ran away."""
        v = self.telemetry.aided_velocity(now, self.velocity_fresh_s)
        return v if v is not None else (est.vx, est.vy)

    def blind_s(self, now: float) -> float:
        """Seconds since a frame last measured anything (odometry or registration); 0 while the
        autopilot says it is disarmed: on the ground the camera sees too little to measure, the
        track is the autopilot's own GNSS fix, and ArduPilot arms only with a healthy ExternalNav."""
        if self.telemetry.armed is False:
            return 0.0
        with self._lock:
            seen = self._seen_wall
        return math.inf if seen is None else max(0.0, now - seen)

    def _speed_sigma(self, est: Estimate, age: float) -> float:
        """1-sigma (m/s) of the velocity sent: the filter's, grown by the prediction's age."""
        return math.hypot(min(50.0, est.velocity_sigma), self.accel * age, 0.3)

    # -- message contents -----------------------------------------------------------------------
    def gps_input_fields(self, now: float) -> dict:
        """GPS_INPUT contents at wall time `now`: the last fix predicted forward, honestly degraded."""
        week, week_ms = gps_time(now)
        f = dict(time_usec=int(now * 1e6), gps_id=self.gps_id, ignore_flags=GPS_IGNORE_FLAGS, time_week_ms=week_ms,
                 time_week=week, fix_type=0, lat=0, lon=0, alt=0.0, hdop=99.99, vdop=99.99, vn=0.0, ve=0.0, vd=0.0,
                 speed_accuracy=99.0, horiz_accuracy=9999.0, vert_accuracy=0.0, satellites_visible=0, yaw=0)
        p = self._predicted(now)
        if p is None:
            return f
        est, age, lat, lon, acc = p
        if self.telemetry.altitude_amsl is not None:
            # skyloc measures no altitude: the autopilot's own (baro, EK3_SRC1_POSZ = 1) goes back, as
            # a GPS at 0 m AMSL fails ArduPilot's "GPS positions differ" check and misleads blending
            f.update(alt=float(self.telemetry.altitude_amsl), vert_accuracy=5.0,
                     ignore_flags=GPS_IGNORE_FLAGS & ~(M.GPS_INPUT_IGNORE_FLAG_ALT
                                                       | M.GPS_INPUT_IGNORE_FLAG_VERTICAL_ACCURACY))
        f.update(lat=int(round(lat * 1e7)), lon=int(round(lon * 1e7)), vn=est.vy, ve=est.vx,
                 horiz_accuracy=float(acc), hdop=float(min(99.0, max(0.5, acc / 3.0))),
                 speed_accuracy=float(min(99.0, self._speed_sigma(est, age))))
        if est.status == OK and age <= self.max_prediction_s and self.blind_s(now) <= self.max_prediction_s:
            # ArduPilot's EKF wants >= 6 satellites for a usable fix; a vision fix has none, so
            # report a nominal 10 only while the fix is good (0 otherwise).
            f.update(fix_type=3, satellites_visible=10)
            self._last_fix_sent = now
        elif self.telemetry.armed is False and self.gps_id != 0 and age <= self.max_prediction_s:
            # On the ground (disarmed) as the second GPS: ArduPilot arms only when every configured
            # GPS has a 3D fix, and a camera on the ground sees nothing it can register. The track
            # there is the autopilot's own GPS1 fix (the GNSS prior), sent with its honest accuracy
            # and fewer satellites, so GPS1 stays the better one; armed, only "ok" fixes go out.
            f.update(fix_type=3, satellites_visible=6)
        return f

    def odometry_fields(self, now: float) -> dict | None:
        """ODOMETRY contents at `now`, or None while it cannot be sent honestly: no origin yet, no
        attitude from the autopilot, no position, or a prediction older than `max_prediction_s`."""
        t = self.telemetry
        p = self._predicted(now)
        if p is None or self._ned is None or t.yaw_deg is None:
            return None
        est, age, lat, lon, drms = p
        blind = self.blind_s(now)
        if age > self.max_prediction_s or blind > self.max_prediction_s:
            return None  # dead reckoning only: the EKF's ExternalNav source times out
        x, y = self._ned.from_latlon(lat, lon)
        north, east = y - self._origin_xy[1], x - self._origin_xy[0]
        down = -(t.altitude_agl if t.altitude_agl is not None else 0.0)
        sigma = drms / math.sqrt(2.0)  # per axis
        var = sigma * sigma
        with self._lock:
            if self._last_sent_ne is not None:  # a jump the filter did not move smoothly through is a reset
                n0, e0, s0 = self._last_sent_ne
                if math.hypot(north - n0, east - e0) > max(10.0, 4.0 * max(s0, sigma)):
                    self._reset_counter = (self._reset_counter + 1) % 256
            self._last_sent_ne = (north, east, sigma)
            reset = self._reset_counter
        yaw_deg = t.yaw_deg
        if self.send_heading and math.isfinite(getattr(est, "heading_sigma_deg", math.nan)) \
                and est.heading_sigma_deg < 3.0 and est.status == OK:
            yaw_deg = (est.heading_deg - self.mount_yaw_deg) % 360  # the map's heading (EK3_SRCn_YAW = 6)
        roll, pitch, yaw = (math.radians(v or 0.0) for v in (t.roll_deg, t.pitch_deg, yaw_deg))
        q = euler_to_quaternion(roll, pitch, yaw)
        cy, sy = math.cos(yaw), math.sin(yaw)  # NED velocity into the body frame (level flight)
        vfwd, vright = est.vy * cy + est.vx * sy, -est.vy * sy + est.vx * cy
        pose_cov = [0.0] * 21
        if self.stats.autopilot == "ardupilot":
            pose_cov[0], pose_cov[6], pose_cov[11] = ardupilot_pose_variances(sigma, Z_SIGMA)
        else:  # PX4 and others read the diagonal as variances
            pose_cov[0] = pose_cov[6] = var  # x, y
            pose_cov[11] = Z_SIGMA**2  # z
        pose_cov[15] = pose_cov[18] = pose_cov[20] = ATT_SIGMA**2  # roll, pitch, yaw
        vel_var = self._speed_sigma(est, age) ** 2  # PX4 reads it
        vel_cov = [0.0] * 21
        vel_cov[0] = vel_cov[6] = vel_var
        vel_cov[11] = 4.0  # no vertical velocity is measured: 0 +- 2 m/s
        vel_cov[15] = vel_cov[18] = vel_cov[20] = 1.0
        dead = self._no_frames or age > self.stale_s or blind > self.stale_s
        if dead or est.status != OK:
            # ArduPilot fuses ODOMETRY velocities with VISO_VEL_M_NSE whatever covariance comes with
            # them, and drops NaN ones: only a confirmed track's velocity goes out
            vfwd = vright = float("nan")
        if dead:
            quality = -1  # dead reckoning without frames: "failed", never fused by ArduPilot
        elif est.status == OK:
            quality = int(max(50, min(100, round(100 * est.confidence))))
        else:
            quality = int(max(1, min(49, round(50 * est.confidence))))
        return dict(time_usec=int(now * 1e6), frame_id=M.MAV_FRAME_LOCAL_FRD, child_frame_id=M.MAV_FRAME_BODY_FRD,
                    x=float(north), y=float(east), z=float(down), q=q, vx=float(vfwd), vy=float(vright), vz=0.0,
                    rollspeed=float("nan"), pitchspeed=float("nan"), yawspeed=float("nan"),
                    pose_covariance=pose_cov, velocity_covariance=vel_cov, reset_counter=reset,
                    estimator_type=M.MAV_ESTIMATOR_TYPE_VISION, quality=quality)

    def gnss_fix(self, now: float, max_age: float = 2.0, quiet_s: float = 5.0) -> tuple[float, float, float] | None:
        """The autopilot's own GNSS fix (lat, lon, accuracy m) when it is a fresh 3D fix that cannot
        be skyloc's. GPS_RAW_INT is ArduPilot's first GPS: when skyloc is that one (gps_id 0), none
        of its GPS_INPUT may have carried a fix for `quiet_s`; as the second GPS it never is."""
        g = self.telemetry.gnss
        if g is None or now - self.telemetry.gnss_time > max_age or g[3] < 3 or not (g[0] or g[1]):
            return None
        if "gps_input" in self.outputs and self.gps_id == 0 and now - self._last_fix_sent < quiet_s:
            return None
        return g[0], g[1], g[2]
