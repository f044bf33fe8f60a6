"""The track filter: position and velocity in local metres from odometry and absolute fixes.

A constant-velocity Kalman filter with two honest additions:
- odometry moves the position by the measured displacement (a relative measurement), and its
  systematic error (altitude and heading bias scale every step the same way) grows the
  uncertainty linearly with the distance flown, not with its square root as white noise would;
- absolute fixes (map registrations) pass a Mahalanobis gate before they are fused.
Between measurements the state is predicted with the velocity and the covariance grows.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import numpy as np


@dataclass
class FilterConfig:
    accel: float = 5.0  # white-acceleration noise of the motion model, m/s^2: a multicopter braking at a
    # corner (25-35 deg of lean) is 5 m/s^2; at 2, the velocity lagged 4 m/s there and its sigma
    # covered 92 % of the errors in SITL (GPS_INPUT's velocity set off ArduPilot's EKF failsafe)
    odometry_drift: float = 0.04  # systematic odometry error per metre flown (scale and heading bias)
    gate_chi2: float = 13.8  # 99.9 % for 2 dof
    initial_speed_sigma: float = 15.0  # m/s, before odometry has measured the velocity


class TrackFilter:
    """State [x, y, vx, vy] (east, north, metres and m/s in the map CRS)."""

    def __init__(self, config: FilterConfig | None = None):
        self.cfg = config or FilterConfig()
        self.x: np.ndarray | None = None
        self.P: np.ndarray | None = None
        self.t: float | None = None
        self.drift = 0.0  # accumulated systematic odometry error (1 sigma, metres) since the last fix
        self.narrow_drift = 0.0  # ... if the telemetry's heading and height are right (`odometry`'s narrow_systematic)
        self.anchor: np.ndarray | None = None  # the position right after the last absolute fix (or the start)

    @property
    def initialized(self) -> bool:
        return self.x is not None

    def reset(self) -> None:
        self.x = self.P = self.t = None
        self.drift = self.narrow_drift = 0.0

    def snapshot(self) -> "TrackFilter":
        """A copy to rewind to (a registration that finishes late is fused at its frame's time)."""
        return copy.deepcopy(self)

    def init(self, t: float, xy, sigma: float, velocity=(0.0, 0.0), velocity_sigma: float | None = None) -> None:
        vs = self.cfg.initial_speed_sigma if velocity_sigma is None else velocity_sigma
        self.x = np.array([xy[0], xy[1], velocity[0], velocity[1]], dtype=np.float64)
        self.P = np.diag([sigma**2, sigma**2, vs**2, vs**2])
        self.t = float(t)
        self.drift = self.narrow_drift = 0.0
        self.anchor = self.x[:2].copy()

    def _transition(self, dt: float) -> tuple[np.ndarray, np.ndarray]:
        f = np.eye(4)
        f[0, 2] = f[1, 3] = dt
        q1 = np.array([[dt**4 / 4, dt**3 / 2], [dt**3 / 2, dt**2]]) * self.cfg.accel**2
        q = np.zeros((4, 4))
        q[np.ix_([0, 2], [0, 2])] = q1
        q[np.ix_([1, 3], [1, 3])] = q1
        return f, q

    def predict(self, t: float) -> None:
        """Dead-reckon with the velocity up to time t."""
        dt = max(0.0, t - self.t)
        f, q = self._transition(dt)
        self.x, self.P = f @ self.x, f @ self.P @ f.T + q
        self.t = max(self.t, t)

    def peek(self, t: float) -> tuple[np.ndarray, np.ndarray]:
        """State and covariance (drift included) at time t, without changing the filter."""
        dt = max(0.0, t - self.t)
        f, q = self._transition(dt)
        p = f @ self.P @ f.T + q
        p[:2, :2] += np.eye(2) * self.drift**2
        return f @ self.x, p

    def odometry(self, t: float, dxy, sigma: float, systematic: float = 0.0,
                 narrow_systematic: float | None = None) -> None:
        """Move by a measured displacement since the filter's time (the previous frame).

        The position follows the displacement (its uncertainty grows by the step's noise and the
        systematic drift, plus `systematic` per metre: a heading or height still uncertain); the
        velocity is updated from displacement / time. narrow_systematic: the same if the
        telemetry's heading and height are right within the registration's tolerances (it sizes
        the search that takes them at face value; `narrow_position_cov`).
        """
        d = np.asarray(dxy, dtype=np.float64)
        dt = float(t) - self.t
        if dt > 1e-6:
            q_v = self.cfg.accel**2 * dt**2
            p_v = self.P[2:, 2:] + np.eye(2) * q_v
            r_v = np.eye(2) * (sigma**2 / dt**2 + (0.5 * self.cfg.accel * dt) ** 2)
            k = p_v @ np.linalg.inv(p_v + r_v)
            self.x[2:] = self.x[2:] + k @ (d / dt - self.x[2:])
            self.P[2:, 2:] = (np.eye(2) - k) @ p_v
            self.P[:2, 2:] = self.P[:2, 2:] @ (np.eye(2) - k).T
            self.P[2:, :2] = self.P[:2, 2:].T
            self.t = float(t)
        self.x[:2] += d
        self.P[:2, :2] += np.eye(2) * sigma**2
        dist = float(np.hypot(*d))
        self.drift += (self.cfg.odometry_drift + systematic) * dist
        narrow = systematic if narrow_systematic is None else min(systematic, narrow_systematic)
        self.narrow_drift += (self.cfg.odometry_drift + narrow) * dist

    def _fuse(self, states: tuple[int, int], z, sigma: float) -> None:
        """Kalman update of two states (0, 1: position; 2, 3: velocity) by a measurement of them."""
        h = np.zeros((2, 4))
        h[0, states[0]] = h[1, states[1]] = 1.0
        s = h @ self.P @ h.T + np.eye(2) * sigma**2
        k = self.P @ h.T @ np.linalg.inv(s)
        self.x = self.x + k @ (np.asarray(z, dtype=np.float64) - h @ self.x)
        self.P = (np.eye(4) - k @ h) @ self.P
        self.P = 0.5 * (self.P + self.P.T)

    def velocity_update(self, v, sigma: float) -> None:
        """Fuse a measured velocity (east, north in the filter's axes, 1-sigma per axis): the
        autopilot's own, while no frame comes, keeps the prediction on the vehicle."""
        self._fuse((2, 3), v, sigma)

    def mahalanobis2(self, xy, sigma: float) -> float:
        s = self.P[:2, :2] + np.eye(2) * (sigma**2 + self.drift**2)
        d = np.asarray(xy, dtype=np.float64) - self.x[:2]
        return float(d @ np.linalg.solve(s, d))

    def update(self, xy, sigma: float, gate: bool = True) -> bool:
        """Fuse an absolute position fix; False (and no change) if the gate rejects it."""
        if gate and self.mahalanobis2(xy, sigma) > self.cfg.gate_chi2:
            return False
        self.P[:2, :2] += np.eye(2) * self.drift**2  # fold the systematic drift into the prior
        self.drift = self.narrow_drift = 0.0
        self._fuse((0, 1), xy, sigma)
        self.anchor = self.x[:2].copy()
        return True

    @property
    def position_cov(self) -> np.ndarray:
        return self.P[:2, :2] + np.eye(2) * self.drift**2

    def flown_since_fix(self) -> np.ndarray:
        """The displacement since the last absolute fix: what a heading or height error turns
        and scales (odometry and dead reckoning both rest on them)."""
        return self.x[:2] - self.anchor

    def narrow_position_cov(self) -> np.ndarray:
        """The position's covariance if the telemetry's heading and height are right (within the
        registration's tolerances): the window of a search that takes them at face value."""
        return self.P[:2, :2] + np.eye(2) * self.narrow_drift**2

    @property
    def position_sigma(self) -> float:
        """1-sigma along the worst axis (m)."""
        return float(np.sqrt(max(np.linalg.eigvalsh(self.position_cov))))

    @property
    def position_drms(self) -> float:
        """Root-mean-square horizontal error (m): sqrt(trace of the position covariance)."""
        return float(np.sqrt(np.trace(self.position_cov)))

    @property
    def velocity(self) -> tuple[float, float]:
        return float(self.x[2]), float(self.x[3])

    def speed_sigma(self) -> float:
        return float(np.sqrt(max(np.linalg.eigvalsh(self.P[2:, 2:]))))


def confidence_ellipse_radius(cov: np.ndarray, k: float = 3.0) -> float:
    """Radius (m) of the circle that holds the k-sigma ellipse of a 2x2 covariance."""
    return k * math.sqrt(max(np.linalg.eigvalsh(cov)))
