"""A pymavlink endpoint that plays the autopilot, for tests, the soak benchmark and bench set-ups.

It behaves as ArduPilot does towards a companion computer: heartbeats, ATTITUDE and
GLOBAL_POSITION_INT streams (from a callback that knows the vehicle's state), an EKF origin that
can be set once with SET_GPS_GLOBAL_ORIGIN and is then reported with GPS_GLOBAL_ORIGIN. It records
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
                 host: str = "127.0.0.1", keep: set[str] | None = None):
        self.port, self.host, self.rate_hz = port, host, rate_hz
        self.state = state or (lambda: (0.0, 0.0, 0.0, 100.0, 0.0, 0.0))
        self.keep = keep or {"ODOMETRY", "GPS_INPUT", "SET_GPS_GLOBAL_ORIGIN", "VISION_POSITION_ESTIMATE",
                             "GLOBAL_POSITION_SENSOR", "STATUSTEXT"}
        self.times: dict[str, list[float]] = defaultdict(list)
        self.messages: list[tuple[float, object]] = []
        self.origin: tuple[float, float, float] | None = None
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
        yaw, roll, pitch, alt, lat, lon = self.state()
        boot = int((now % 1e5) * 1000)
        self.conn.mav.heartbeat_send(M.MAV_TYPE_QUADROTOR, M.MAV_AUTOPILOT_ARDUPILOTMEGA, 0, 0, M.MAV_STATE_ACTIVE)
        if self.telemetry_on:
            self.conn.mav.attitude_send(boot, math.radians(roll), math.radians(pitch),
                                        math.radians(((yaw + 180) % 360) - 180), 0.0, 0.0, 0.0)
            self.conn.mav.global_position_int_send(boot, int(lat * 1e7), int(lon * 1e7), int((alt + 400) * 1000),
                                                   int(alt * 1000), 0, 0, 0, int(yaw * 100) % 36000)

    def _run(self) -> None:
        next_tx = 0.0
        while not self._stop.is_set():
            msg = self.conn.recv_match(blocking=True, timeout=0.02)
            now = time.time()
            if msg is not None and msg.get_type() != "BAD_DATA":
                kind = msg.get_type()
                with self._lock:
                    self.times[kind].append(now)
                    if kind in self.keep:
                        self.messages.append((now, msg))
                if kind == "SET_GPS_GLOBAL_ORIGIN" and self.origin is None:  # ArduPilot accepts it once
                    self.origin = (msg.latitude / 1e7, msg.longitude / 1e7, msg.altitude / 1000.0)
                if kind == "SET_GPS_GLOBAL_ORIGIN" and self.origin is not None:
                    self.conn.mav.gps_global_origin_send(int(self.origin[0] * 1e7), int(self.origin[1] * 1e7),
                                                         int(self.origin[2] * 1000), int(now * 1e6))
            # talk only once skyloc's packets have told the UDP socket where it is
            if now >= next_tx and self.times:
                self._stream(now)
                next_tx = now + 1.0 / self.rate_hz

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
