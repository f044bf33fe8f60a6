"""What the telemetry gets wrong, learned from the map: the camera's heading and its height.

A compass is 5-20 deg off on real drones (motor currents, steel, a camera mounted a few degrees
off), a barometer gives the altitude above the take-off point rather than above the ground under
the camera, and some drones give no usable yaw or altitude at all. So telemetry is a prior here,
never a gate. Two scalar Kalman states carry what it gets wrong:

    heading = reference yaw + b          b: compass (and mount) error, deg; reference 0 without yaw
    height  = reference height * exp(c)  c: log of the height error; the reference is a rangefinder,
                                         or baro + home elevation - DEM, or the baro altitude alone

Odometry measures how b and c change from frame to frame (its visual turn against the
telemetry's turn, its visual scale against the altitude change); a verified registration
measures them absolutely (its rotation and scale on the map). Both grow honestly uncertain
between measurements, and an uncertain state widens the registration's search
(`hypotheses`): the whole circle of headings when there is no yaw at all.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


def wrap180(deg: float) -> float:
    """An angle difference in (-180, 180]."""
    return -((-deg + 180.0) % 360.0 - 180.0)


@dataclass
class BiasConfig:
    compass_sigma_deg: float = 10.0  # prior 1-sigma of the compass error (+ mount yaw) before the map has measured it
    compass_drift_deg_s: float = 0.3  # the compass error wanders this much per sqrt(second) (it varies with heading)
    turn_sigma_deg: float = 0.1  # one odometry step's error in the measured turn
    height_sigma: float = 0.10  # prior 1-sigma of log(height / barometric altitude): terrain, baro drift
    rangefinder_sigma: float = 0.03  # ... of log(height / rangefinder range)
    dem_sigma: float = 0.05  # ... of log(height / (baro + home elevation - DEM))
    height_drift_per_m: float = 0.003  # log-height error wanders this much per sqrt(metre) flown (relief)
    scale_sigma: float = 0.004  # one odometry step's error in the measured scale change
    no_height_range: tuple[float, float] = (30.0, 1200.0)  # heights to search with no altitude at all (m)
    max_scale_search: float = 1.6  # one registration covers heights this factor off; beyond, a grid of
    scale_step: float = 2.0  # ... height hypotheses this ratio apart
    max_hypotheses: int = 12


@dataclass
class CameraPrior:
    """This frame's heading and height as the localizer believes them, with 1-sigma."""

    heading_deg: float
    heading_sigma_deg: float
    height_m: float
    height_sigma: float  # of log(height): 0.1 is about 10 %
    yaw_reference: str  # compass | none
    height_reference: str  # rangefinder | dem | baro | none


class TelemetryBias:
    """Heading error b (deg) and log-height error c with their variances; see the module doc."""

    def __init__(self, config: BiasConfig | None = None):
        self.cfg = config or BiasConfig()
        self.reset()

    def reset(self) -> None:
        self.b = 0.0
        self.vb: float | None = None  # None: no heading known yet
        self.c = 0.0
        self.vc: float | None = None
        self.yaw_ref = "none"
        self.height_ref = "none"
        self.ref_yaw = 0.0
        self.ref_height = math.nan
        self.t: float | None = None
        self.measured_heading = False  # a registration has measured the heading since the reset
        self.measured_height = False

    # -- the prior of one frame -------------------------------------------------------------------
    def prior(self, t: float, yaw_deg: float | None, height_ref_m: float | None, height_ref: str,
              distance_m: float = 0.0) -> CameraPrior:
        """Heading and height for a frame at time t, given the telemetry's yaw (None: none) and a
        reference height (rangefinder, DEM-corrected baro or baro; None: none). distance_m: ground
        flown since the previous frame (relief changes the baro's error with distance)."""
        cfg = self.cfg
        dt = 0.0 if self.t is None else max(0.0, t - self.t)
        self.t = t
        heading = self.heading if self.vb is not None else None
        height = self.height if self.vc is not None else None
        # heading: re-reference on a change of source so the estimate stays continuous
        kind = "compass" if yaw_deg is not None and math.isfinite(yaw_deg) else "none"
        ref = float(yaw_deg) % 360.0 if kind == "compass" else 0.0
        if self.vb is None or (kind == "compass" and self.yaw_ref == "none" and not self.measured_heading):
            # the first yaw (a daemon's first frames can come before the autopilot's ATTITUDE):
            # the compass prior, not the whole circle of the frames that had none
            self.b, self.vb = 0.0, (cfg.compass_sigma_deg ** 2 if kind == "compass" else 180.0 ** 2)
        elif kind != self.yaw_ref and heading is not None:
            self.b = wrap180(heading - ref)
        self.yaw_ref, self.ref_yaw = kind, ref
        if kind == "compass":
            self.vb = min(180.0 ** 2, self.vb + cfg.compass_drift_deg_s ** 2 * dt)
        # height
        hkind = height_ref if height_ref_m is not None and math.isfinite(height_ref_m) and height_ref_m > 0 else "none"
        sig = {"rangefinder": cfg.rangefinder_sigma, "dem": cfg.dem_sigma, "baro": cfg.height_sigma}
        if hkind == "none":  # no altitude: the last estimate carries on (or the middle of the range)
            lo, hi = cfg.no_height_range
            href = height if height is not None else math.sqrt(lo * hi)
            self.c = 0.0
            if height is None:
                self.vc = (0.5 * math.log(hi / lo)) ** 2
        else:
            href = float(height_ref_m)
            if self.vc is None:
                self.c, self.vc = 0.0, sig[hkind] ** 2
            elif hkind != self.height_ref:
                # a new source: keep what the map measured when it is sharper than the new prior
                if height is not None and self.vc < sig[hkind] ** 2:
                    self.c = math.log(height / href)
                else:
                    self.c, self.vc = 0.0, sig[hkind] ** 2
        self.height_ref, self.ref_height = hkind, href
        self.vc = self.vc + cfg.height_drift_per_m ** 2 * max(0.0, distance_m)
        if hkind != "none":  # never more doubtful than twice the source's prior
            self.vc = min(self.vc, 4.0 * sig[hkind] ** 2)
        return self.current()

    def current(self) -> CameraPrior:
        return CameraPrior(self.heading, self.heading_sigma, self.height, self.height_sigma, self.yaw_ref,
                           self.height_ref)

    @property
    def heading(self) -> float:
        return (self.ref_yaw + self.b) % 360.0

    @property
    def heading_sigma(self) -> float:
        return math.sqrt(self.vb) if self.vb is not None else 180.0

    @property
    def height(self) -> float:
        return self.ref_height * math.exp(self.c)

    @property
    def height_sigma(self) -> float:
        return math.sqrt(self.vc) if self.vc is not None else 1.0

    @property
    def yaw_bias(self) -> float | None:
        """The compass error the map measured (deg), None without a compass or a measurement."""
        return wrap180(self.b) if self.yaw_ref == "compass" and self.measured_heading else None

    @property
    def height_scale(self) -> float | None:
        """True height over the reference height, None before the map measured it."""
        return math.exp(self.c) if self.measured_height and self.height_ref != "none" else None

    # -- measurements -----------------------------------------------------------------------------
    def odometry(self, turn_deg: float, scale: float) -> None:
        """An odometry step: the visual turn minus the reference's turn (0: not used), and the visual
        scale change against the reference height's change (1: not used)."""
        if turn_deg:
            self.b += turn_deg
            self.vb = min(180.0 ** 2, (self.vb or 0.0) + self.cfg.turn_sigma_deg ** 2)
        if scale != 1.0 and scale > 0 and math.isfinite(scale):
            self.c += math.log(scale)
            self.vc = (self.vc or 0.0) + self.cfg.scale_sigma ** 2

    def registered(self, rotation_deg: float, rotation_sigma_deg: float, scale: float, scale_sigma: float) -> None:
        """A verified registration: the true heading is the one used plus rotation_deg, the true
        height the one used times scale (both relative to this frame's current estimate).

        Once measured, a value far outside the estimate's doubt (a frame whose attitude came late
        in a fast turn, a tilted view) does not move it; it only widens the doubt a little, so an
        error that really changed is taken after a few registrations agree."""
        if self.vb >= 90.0 ** 2:  # nothing known: the measurement is the estimate
            self.b, self.vb = self.b + rotation_deg, rotation_sigma_deg ** 2
        elif self.measured_heading and rotation_deg ** 2 > 9.0 * (self.vb + rotation_sigma_deg ** 2):
            self.vb = min(180.0 ** 2, 1.5 * self.vb + 0.1)
        else:
            k = self.vb / (self.vb + rotation_sigma_deg ** 2)
            self.b += k * rotation_deg
            self.vb = (1 - k) * self.vb
        d = math.log(scale)
        if self.measured_height and d * d > 9.0 * (self.vc + scale_sigma ** 2):
            self.vc = 1.5 * self.vc + 1e-5
        else:
            k = self.vc / (self.vc + scale_sigma ** 2)
            self.c += k * d
            self.vc = (1 - k) * self.vc
        self.measured_heading = self.measured_height = True

    def doubt(self, rotation_deg: float | None = None, scale: float | None = None) -> None:
        """A good match was refused because the heading (or height) was further off than the
        estimate allowed: the estimate's doubt grows to cover it, so the next registration
        searches that wide (and verifies it, with the stricter threshold that comes with it).
        The compass prior is Gaussian; real compass errors have heavier tails."""
        if rotation_deg is not None and self.vb is not None:
            self.vb = min(180.0 ** 2, max(self.vb, (abs(wrap180(rotation_deg)) / 2.5) ** 2))
        if scale is not None and scale > 0 and self.vc is not None:
            self.vc = max(self.vc, (abs(math.log(scale)) / 2.5) ** 2)

    def _face_value(self) -> tuple[bool, bool]:
        """Which of heading and height a face-value search narrows: the telemetry's, unmeasured."""
        return (self.yaw_ref == "compass" and not self.measured_heading,
                self.height_ref != "none" and not self.measured_height)

    def odometry_doubt(self, base_rotation_deg: float, base_scale: float, at_face_value: bool = False) -> float:
        """Systematic error of an odometry track per metre flown: a heading still uncertain turns
        every step the same way, a height still uncertain scales it. At face value (the telemetry
        within the registration's own tolerances, as `hypotheses(at_face_value=True)` searches)
        the doubt is the tolerances' (1/3 of them), so that search stays as narrow as the telemetry
        deserves while the wide one grows with the whole doubt."""
        heading, height = self.heading_sigma, self.height_sigma
        if at_face_value:
            narrow_heading, narrow_height = self._face_value()
            heading = min(heading, base_rotation_deg / 3.0) if narrow_heading else heading
            height = min(height, base_scale / 3.0) if narrow_height else height
        return min(2.0, math.radians(heading)) + height

    def hypotheses(self, base_rotation_deg: float, base_scale: float, at_face_value: bool = False,
                   steps: bool = False) -> tuple[list[tuple[float, float]], float, float]:
        """Offsets (heading deg, height factor) from the current estimate to try in a registration,
        and the rotation and scale tolerance of each. The registration's matcher turns and scales
        the frame's features itself (SIFT is rotation and scale covariant), so one hypothesis
        covers any heading error (tolerance 3 sigma, up to the whole circle) and height errors up
        to `max_scale_search`; only larger height doubts (no altitude at all) need a grid."""
        cfg = self.cfg
        if at_face_value and (self.yaw_ref == "compass" or self.height_ref != "none"):
            # the telemetry as it is, within the registration's own tolerances, and with `steps`
            # a few steps of them either side out to 3 sigma of the prior (a compass 16 or 32 deg
            # off, a baro 25 % off): each is a narrow search, so the few inliers of a coarse map
            # (5 m/px) stay above the threshold that a wide tolerance's larger reach would need.
            # The wide search takes the other tries until the map has measured the errors.
            wide = self.hypotheses(base_rotation_deg, base_scale)
            narrow_rot, narrow_height = self._face_value()
            headings = [0.0]
            if narrow_rot and steps:
                for i in range(1, 1 + min(2, math.ceil((3.0 * self.heading_sigma - base_rotation_deg)
                                                       / (2.0 * base_rotation_deg)))):
                    headings += [2.0 * base_rotation_deg * i, -2.0 * base_rotation_deg * i]
            heights = [1.0]
            if narrow_height and steps and 3.0 * self.height_sigma > base_scale:
                step = math.exp(2.0 * math.log1p(base_scale))
                heights += [step, 1.0 / step]
            if not narrow_height:
                heights = [k for _, k in wide[0]]
            grid = [(h, k) for k in heights for h in headings]
            grid.sort(key=lambda hk: (hk[0] / base_rotation_deg) ** 2 + (math.log(hk[1]) / math.log1p(base_scale)) ** 2)
            return (grid[: cfg.max_hypotheses], base_rotation_deg if narrow_rot else wide[1],
                    base_scale if narrow_height else wide[2])
        rot_tol = min(180.0, max(base_rotation_deg, 3.0 * self.heading_sigma + (2.0 if self.heading_sigma > 3 else 0.0)))
        sc3 = 3.0 * self.height_sigma
        if sc3 <= math.log(cfg.max_scale_search):
            return [(0.0, 1.0)], rot_tol, max(base_scale, math.expm1(sc3))
        half = sc3
        if self.height_ref == "none" and self.vc is not None and self.vc >= (0.5 * math.log(cfg.no_height_range[1] / cfg.no_height_range[0])) ** 2 * 0.99:
            lo, hi = cfg.no_height_range
            half = 0.5 * math.log(hi / lo)
        n = max(2, int(math.ceil(2 * half / math.log(cfg.scale_step))))
        factors = [math.exp(v) for v in np.linspace(-half + half / n, half - half / n, n)]
        factors.sort(key=lambda f: abs(math.log(f)))  # the likeliest first
        return [(0.0, f) for f in factors][: cfg.max_hypotheses], rot_tol, math.expm1(0.5 * 2 * half / n) + 0.03
