"""A constant-velocity Kalman filter in local metres, with Mahalanobis gating of outliers."""
from __future__ import annotations

import numpy as np


class ConstantVelocityFilter:
    """State [x, y, vx, vy]. `accel` is the white-acceleration noise (m/s^2) of the motion model."""

    def __init__(self, accel: float = 3.0, gate_chi2: float = 13.8):
        self.accel, self.gate_chi2 = accel, gate_chi2
        self.x: np.ndarray | None = None
        self.P: np.ndarray | None = None
        self.t: float | None = None

    @property
    def initialized(self) -> bool:
        return self.x is not None

    def reset(self) -> None:
        self.x = self.P = self.t = None

    def init(self, t: float, xy, sigma: float) -> None:
        self.x = np.array([xy[0], xy[1], 0.0, 0.0])
        self.P = np.diag([sigma**2, sigma**2, 15.0**2, 15.0**2])  # unknown speed: up to ~15 m/s
        self.t = t

    def _predicted(self, t: float) -> tuple[np.ndarray, np.ndarray]:
        dt = max(0.0, t - self.t)
        f = np.eye(4)
        f[0, 2] = f[1, 3] = dt
        q1 = np.array([[dt**4 / 4, dt**3 / 2], [dt**3 / 2, dt**2]]) * self.accel**2
        q = np.zeros((4, 4))
        q[np.ix_([0, 2], [0, 2])] = q1
        q[np.ix_([1, 3], [1, 3])] = q1
        return f @ self.x, f @ self.P @ f.T + q

    def predict(self, t: float) -> None:
        self.x, self.P = self._predicted(t)
        self.t = max(self.t, t)

    def peek(self, t: float) -> tuple[np.ndarray, np.ndarray]:
        """The state at time t without changing the filter (for sending between fixes)."""
        return self._predicted(t)

    def mahalanobis2(self, xy, sigma: float) -> float:
        s = self.P[:2, :2] + np.eye(2) * sigma**2
        d = np.asarray(xy) - self.x[:2]
        return float(d @ np.linalg.solve(s, d))

    def update(self, xy, sigma: float) -> bool:
        """Fuse a position fix; returns False (and changes nothing) if the gate rejects it."""
        if self.mahalanobis2(xy, sigma) > self.gate_chi2:
            return False
        h = np.zeros((2, 4))
        h[0, 0] = h[1, 1] = 1.0
        s = h @ self.P @ h.T + np.eye(2) * sigma**2
        k = self.P @ h.T @ np.linalg.inv(s)
        self.x = self.x + k @ (np.asarray(xy) - h @ self.x)
        self.P = (np.eye(4) - k @ h) @ self.P
        return True

    @property
    def position_sigma(self) -> float:
        """1-sigma horizontal accuracy (m): the larger principal axis of the position covariance."""
        return float(np.sqrt(max(np.linalg.eigvalsh(self.P[:2, :2]))))
