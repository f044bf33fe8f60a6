"""A pymavlink endpoint that plays the autopilot, for tests, the soak benchmark and bench set-ups.

It behaves as ArduPilot does towards a companion computer (as SITL showed): heartbeats; no
telemetry on a new link until it is asked for (SET_MESSAGE_INTERVAL, answered with COMMAND_ACK,
or REQUEST_DATA_STREAM), then ATTITUDE and GLOBAL_POSITION_INT at the rate asked (from a callback
that knows the vehicle's state); an EKF origin that can be set once with SET_GPS_GLOBAL_ORIGIN and
is then reported with GPS_GLOBAL_ORIGIN; ODOMETRY read as ArduPilot reads it (`ekf_inputs`: one
position error cbrt(var_x^2 + var_y^2 + var_z^2), quality against VISO_QUAL_MIN). It records
everything skyloc sends, with arrival times, so cadence and order can be checked.
"""
from __future__ import annotations

import math
import os
import threading
import time
from collections import defaultdict
from typing import Callable

import numpy as np

os.environ.setdefault("MAVLINK20", "1")
from pymavlink import mavutil  # noqa: E402

M = mavutil.mavlink


class AutopilotPeer:
    """Listens on udpin:HOST:PORT (skyloc sends to it with udpout); `state()` gives the vehicle's
    (yaw_deg, roll_deg, pitch_deg, alt_agl_m, lat, lon) for the telemetry it streams."""

    def __init__(self, port: int, state: Callable[[], tuple] | None = None, rate_hz: float = 10.0,
                 host: str = "127.0.0.1", keep: set[str] | None = None, stock: bool = True):
        """stock=True: streams nothing until asked, as a stock ArduPilot; False: streams at rate_hz."""
        self.port, self.host, self.rate_hz = port, host, rate_hz
        self.intervals: dict[int, float] = {} if stock else {M.MAVLINK_MSG_ID_ATTITUDE: 1.0 / rate_hz,
                                                              M.MAVLINK_MSG_ID_GLOBAL_POSITION_INT: 1.0 / rate_hz}
        self._due: dict[int, float] = {}
        self.state = state or (lambda: (0.0, 0.0, 0.0, 100.0, 0.0, 0.0))
        self.keep = keep or {"ODOMETRY", "GPS_INPUT", "SET_GPS_GLOBAL_ORIGIN", "VISION_POSITION_ESTIMATE",
                             "GLOBAL_POSITION_SENSOR", "STATUSTEXT", "COMMAND_LONG", "REQUEST_DATA_STREAM"}
        self.times: dict[str, list[float]] = defaultdict(list)
        self.messages: list[tuple[float, object]] = []
        self.origin: tuple[float, float, float] | None = None
        self.armed = False  # what HEARTBEAT says (set it to fly)
        self.telemetry_on = True
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.conn = None
        self.thread: threading.Thread | None = None

    def start(self) -> "AutopilotPeer":
        self.conn = mavutil.mavlink_connection(f"udpin:{self.host}:{self.port}", source_system=1, source_component=1)
        self._stop.clear()
        self.thread = threading.Thread(target=self._run, name="autopilot-peer", daemon=True)
        self.thread.start()
        return self

    def stop(self) -> None:
        """The autopilot goes away (the port closes)."""
        self._stop.set()
        if self.thread:
            self.thread.join(timeout=2)
        if self.conn:
            self.conn.close()
            self.conn = None

    def _stream(self, now: float) -> None:
        """Telemetry that is due (only what was asked for)."""
        if not self.telemetry_on:
            return
        due = [i for i, period in self.intervals.items() if period > 0 and now >= self._due.get(i, 0.0)]
        if not due:
            return
        yaw, roll, pitch, alt, lat, lon = self.state()
        boot = int((now % 1e5) * 1000)
        for i in due:
            self._due[i] = max(self._due.get(i, 0.0) + self.intervals[i], now)
            if i == M.MAVLINK_MSG_ID_ATTITUDE:
                self.conn.mav.attitude_send(boot, math.radians(roll), math.radians(pitch),
                                            math.radians(((yaw + 180) % 360) - 180), 0.0, 0.0, 0.0)
            elif i == M.MAVLINK_MSG_ID_GLOBAL_POSITION_INT:
                self.conn.mav.global_position_int_send(boot, int(lat * 1e7), int(lon * 1e7),
                                                       int((alt + 400) * 1000), int(alt * 1000), 0, 0, 0,
                                                       int(yaw * 100) % 36000)

    def _request(self, msg) -> None:
        """SET_MESSAGE_INTERVAL and REQUEST_DATA_STREAM, as ArduPilot answers them."""
        kind = msg.get_type()
        if kind == "COMMAND_LONG" and msg.command == M.MAV_CMD_SET_MESSAGE_INTERVAL:
            msg_id, us = int(msg.param1), float(msg.param2)
            known = msg_id in (M.MAVLINK_MSG_ID_ATTITUDE, M.MAVLINK_MSG_ID_GLOBAL_POSITION_INT,
                               M.MAVLINK_MSG_ID_GPS_RAW_INT, M.MAVLINK_MSG_ID_DISTANCE_SENSOR)
            if known:
                self.intervals[msg_id] = 0.0 if us < 0 else (us / 1e6 if us > 0 else 1.0 / self.rate_hz)
            self.conn.mav.command_ack_send(M.MAV_CMD_SET_MESSAGE_INTERVAL,
                                           M.MAV_RESULT_ACCEPTED if known else M.MAV_RESULT_FAILED)
        elif kind == "COMMAND_LONG" and msg.command == M.MAV_CMD_REQUEST_MESSAGE:
            if int(msg.param1) == M.MAVLINK_MSG_ID_GPS_GLOBAL_ORIGIN and self.origin is not None:
                self.conn.mav.gps_global_origin_send(int(self.origin[0] * 1e7), int(self.origin[1] * 1e7),
                                                     int(self.origin[2] * 1000), int(time.time() * 1e6))
            self.conn.mav.command_ack_send(M.MAV_CMD_REQUEST_MESSAGE, M.MAV_RESULT_ACCEPTED
                                           if self.origin is not None else M.MAV_RESULT_FAILED)
        elif kind == "REQUEST_DATA_STREAM" and msg.start_stop:
            rate = max(1, msg.req_message_rate)
            if msg.req_stream_id in (M.MAV_DATA_STREAM_EXTRA1, M.MAV_DATA_STREAM_ALL):
                self.intervals.setdefault(M.MAVLINK_MSG_ID_ATTITUDE, 1.0 / rate)
            if msg.req_stream_id in (M.MAV_DATA_STREAM_POSITION, M.MAV_DATA_STREAM_ALL):
                self.intervals.setdefault(M.MAVLINK_MSG_ID_GLOBAL_POSITION_INT, 1.0 / rate)

    @staticmethod
    def ekf_inputs(msg, quality_min: int = 0) -> tuple[float, bool, bool]:
        """How ArduPilot reads one ODOMETRY (GCS_MAVLINK::handle_odometry, AP_VisualOdom_MAV):
        (position error it uses, position fused, velocity fused) with VISO_QUAL_MIN = quality_min."""
        c = msg.pose_covariance
        pos_err = (c[0] ** 2 + c[6] ** 2 + c[11] ** 2) ** (1.0 / 3.0) if not math.isnan(c[0]) else 0.0
        fused = msg.quality >= quality_min
        vel_ok = fused and not any(math.isnan(v) for v in (msg.vx, msg.vy, msg.vz))
        return pos_err, fused, vel_ok

    def _run(self) -> None:
        next_tx = 0.0
        while not self._stop.is_set():
            msg = self.conn.recv_match(blocking=True, timeout=0.005)
            now = time.time()
            if msg is not None and msg.get_type() != "BAD_DATA":
                kind = msg.get_type()
                with self._lock:
                    self.times[kind].append(now)
                    if kind in self.keep:
                        self.messages.append((now, msg))
                self._request(msg)
                if kind == "SET_GPS_GLOBAL_ORIGIN" and self.origin is None:  # ArduPilot accepts it once
                    self.origin = (msg.latitude / 1e7, msg.longitude / 1e7, msg.altitude / 1000.0)
                if kind == "SET_GPS_GLOBAL_ORIGIN" and self.origin is not None:
                    self.conn.mav.gps_global_origin_send(int(self.origin[0] * 1e7), int(self.origin[1] * 1e7),
                                                         int(self.origin[2] * 1000), int(now * 1e6))
            # talk only once skyloc's packets have told the UDP socket where it is
            if self.times:
                if now >= next_tx:
                    self.conn.mav.heartbeat_send(M.MAV_TYPE_QUADROTOR, M.MAV_AUTOPILOT_ARDUPILOTMEGA,
                                                 M.MAV_MODE_FLAG_SAFETY_ARMED if self.armed else 0, 0,
                                                 M.MAV_STATE_ACTIVE)
                    next_tx = now + 1.0
                self._stream(now)

    # -- what arrived ---------------------------------------------------------------------------
    def of(self, kind: str) -> list:
        with self._lock:
            return [m for _, m in self.messages if m.get_type() == kind]

    def gaps(self, kind: str, since: float = 0.0) -> np.ndarray:
        """Seconds between consecutive arrivals of `kind` after `since`."""
        with self._lock:
            t = np.array([x for x in self.times.get(kind, []) if x >= since])
        return np.diff(t) if t.size > 1 else np.zeros(0)

    def rate(self, kind: str, since: float = 0.0) -> float:
        with self._lock:
            t = [x for x in self.times.get(kind, []) if x >= since]
        return (len(t) - 1) / (t[-1] - t[0]) if len(t) > 1 and t[-1] > t[0] else 0.0


class LoopedFlight:
    """The vehicle's state from a recorded flight played over and over from wall time `t0` (what a
    looping camera shows): a picklable `state` for a peer in its own process."""

    def __init__(self, telemetry_path: str, t0: float, period_s: float):
        self.telemetry_path, self.t0, self.period_s = str(telemetry_path), t0, period_s
        self._track = None

    def __call__(self) -> tuple:
        if self._track is None:
            from skyloc.onboard.telemetry import load_telemetry

            self._track = load_telemetry(self.telemetry_path)
        s = self._track.at((time.time() - self.t0) % self.period_s)
        return s.yaw, 0.0, 0.0, s.alt, 0.0, 0.0


def _peer_main(conn, port: int, state, keep) -> None:
    peer = AutopilotPeer(port, state, keep=keep).start()
    while True:
        cmd, arg = conn.recv()
        if cmd == "telemetry":
            peer.telemetry_on = bool(arg)
        elif cmd == "stop":
            peer.stop()
            with peer._lock:
                conn.send({k: list(v) for k, v in peer.times.items()})
            return


class PeerProcess:
    """An `AutopilotPeer` in a process of its own, as an autopilot is: its receive times carry none
    of the daemon's scheduling (the same interpreter would make them share the daemon's GIL). After
    `stop()` it has `times` and `rate()` as the in-process peer does."""

    def __init__(self, port: int, state=None, keep: set[str] | None = None):
        import multiprocessing as mp

        ctx = mp.get_context("spawn")  # the daemon's threads are running: never fork them
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=_peer_main, args=(child, port, state, keep), name="autopilot-peer",
                                 daemon=True)
        self.times: dict[str, list[float]] = {}
        self.conn = True  # running (the in-process peer's `conn` is None once stopped)

    def start(self) -> "PeerProcess":
        self._proc.start()
        return self

    @property
    def telemetry_on(self) -> bool:
        return True

    @telemetry_on.setter
    def telemetry_on(self, on: bool) -> None:
        self._conn.send(("telemetry", on))

    def stop(self) -> None:
        if self.conn is None:
            return
        self._conn.send(("stop", None))
        if self._conn.poll(10.0):
            self.times = self._conn.recv()
        self._proc.join(timeout=5)
        self.conn = None

    def rate(self, kind: str, since: float = 0.0) -> float:
        t = [x for x in self.times.get(kind, []) if x >= since]
        return (len(t) - 1) / (t[-1] - t[0]) if len(t) > 1 and t[-1] > t[0] else 0.0
