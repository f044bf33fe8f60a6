"""Visual odometry: how far the drone moved over the ground between two frames, in metres.

Corners on the previous frame are tracked into the new one with pyramidal Lucas-Kanade and
checked forward-backward; a homography fitted with MAGSAC keeps the points that move together.
Both point sets are then laid on the ground with each frame's own attitude and altitude, and a
similarity between them gives the displacement of the drone (and how far the visual rotation
and scale disagree with the telemetry). Frames without enough texture, a dropped or changed
frame and inconsistent geometry give "no odometry", never a made-up motion.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

import cv2
import numpy as np

from skyloc.runtime.camera import Intrinsics, Pose, image_to_ground, looks_at_ground, project
from skyloc.runtime.preprocess import flatten_illumination, normalize_contrast, to_grey


YAW_SIGN = -1.0  # the fitted ground rotation (counter-clockwise) maps to a yaw correction (clockwise) with this sign


@dataclass
class OdometryConfig:
    width: int = 320  # frames are tracked at this width: cost grows with area, accuracy barely
    max_corners: int = 300
    min_distance: int = 7
    min_corner_strength: float = 2e-4  # absolute min-eigenvalue floor: noise and flat frames have none
    fb_max_px: float = 0.7  # forward-backward disagreement allowed, pixels at the working width
    min_inliers: int = 25
    min_inlier_ratio: float = 0.5
    max_rotation_deg: float = 8.0  # visual rotation vs the telemetry's yaw change: beyond, the yaw jumped
    max_scale_error: float = 0.12  # visual scale vs the altitude change
    max_speed: float = 60.0  # m/s: faster is a failed track, not a fast drone
    min_motion_px: float = 0.0  # below this median flow a frame counts as static (see still_share)
    still_share: float = 0.0
    highpass: bool = True


@dataclass
class OdometryStep:
    """Ground displacement of the drone between two frames (east, north), with its uncertainty."""

    t: float
    dt: float
    ok: bool
    dx: float = 0.0
    dy: float = 0.0
    sigma: float = math.inf  # 1-sigma per axis of the random error, metres
    inliers: int = 0
    tracked: int = 0
    rotation_deg: float = 0.0  # visual heading change minus telemetry heading change
    scale: float = 1.0  # visual scale change relative to the altitude change
    reason: str = ""
    yaw_correction_deg: float = 0.0  # non-zero when the telemetry yaw jumped: add it to this frame's yaw
    telemetry_turn_deg: float = 0.0  # the heading change the poses said (this frame's yaw - the previous one's)
    tilt_change_deg: float = 0.0  # how far the telemetry's roll and pitch moved between the two frames
    tilt_deg: float = 0.0  # the camera's angle off nadir in this frame

    @property
    def visual_turn_deg(self) -> float:
        """The heading change the images show."""
        return self.telemetry_turn_deg + self.rotation_deg

    @property
    def distance(self) -> float:
        return math.hypot(self.dx, self.dy)


class VisualOdometry:
    """Frame-to-frame motion of a downward camera. Feed every frame to `step`."""

    def __init__(self, config: OdometryConfig | None = None):
        self.cfg = config or OdometryConfig()
        self._prev: tuple[np.ndarray, np.ndarray | None, float, Pose, Intrinsics, tuple] | None = None
        self.lk = dict(winSize=(21, 21), maxLevel=3,
                       criteria=(cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 30, 0.01))

    def reset(self) -> None:
        self._prev = None

    def retag(self, t: float, pose: Pose) -> None:
        """The pose the last frame really had (the localizer learned its heading and height after
        the step): the next step measures against it."""
        if self._prev is not None and self._prev[2] == t:
            self._prev = (*self._prev[:3], pose, *self._prev[4:])

    def _prepare(self, frame: np.ndarray) -> tuple[np.ndarray, float]:
        h, w = frame.shape[:2]
        scale = min(1.0, self.cfg.width / w)
        grey = to_grey(frame)
        if scale < 1.0:
            grey = cv2.resize(grey, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA)
        return (flatten_illumination(grey) if self.cfg.highpass else normalize_contrast(grey)), scale

    def _corners(self, grey: np.ndarray) -> np.ndarray | None:
        """Strong corners only: an absolute floor keeps noise and flat ground out."""
        pts = cv2.goodFeaturesToTrack(grey, self.cfg.max_corners, 0.01, self.cfg.min_distance, blockSize=7)
        if pts is None:
            return None
        eig = cv2.cornerMinEigenVal(grey, 7)
        p = pts.reshape(-1, 2)
        strength = eig[p[:, 1].astype(int), p[:, 0].astype(int)]
        # cornerMinEigenVal of an 8-bit image is in (grey levels / 255)^2-like units per pixel
        keep = strength >= self.cfg.min_corner_strength
        return p[keep].astype(np.float32).reshape(-1, 1, 2) if keep.sum() else None

    def step(self, frame: np.ndarray, t: float, pose: Pose, intrinsics: Intrinsics,
             trust_yaw: bool = True) -> OdometryStep | None:
        """Motion since the previous frame given to `step`; None for the first frame.

        `pose` carries this frame's altitude and attitude (its x, y are ignored). trust_yaw=False
        (no heading from telemetry, the previous one stands in): every visual turn becomes a yaw
        correction, not only a jump.
        """
        grey, scale = self._prepare(frame)
        intr = intrinsics.scaled(grey.shape[1], grey.shape[0])
        shape = frame.shape[:2]
        prev, self._prev = self._prev, None
        corners = self._corners(grey)
        self._prev = (grey, corners, t, pose, intr, shape)
        if prev is None:
            return None
        p_grey, p_pts, p_t, p_pose, p_intr, p_shape = prev
        dt = t - p_t
        fail = lambda reason, **kw: OdometryStep(t, dt, False, reason=reason, **kw)  # noqa: E731
        if p_shape != shape:
            return fail(f"frame size changed {p_shape[1]}x{p_shape[0]} -> {shape[1]}x{shape[0]}")
        if dt <= 0:
            return fail("frame time did not advance")
        if not (math.isfinite(pose.altitude) and pose.altitude > 0 and math.isfinite(p_pose.altitude)):
            return fail("no altitude")
        if not (looks_at_ground(intr, pose) and looks_at_ground(p_intr, p_pose)):
            return fail("camera does not look at the ground")
        if p_pts is None or len(p_pts) < self.cfg.min_inliers:
            return fail("too little texture", tracked=0 if p_pts is None else len(p_pts))
        nxt, st, _ = cv2.calcOpticalFlowPyrLK(p_grey, grey, p_pts, None, **self.lk)
        back, st2, _ = cv2.calcOpticalFlowPyrLK(grey, p_grey, nxt, None, **self.lk)
        fb = np.linalg.norm((back - p_pts).reshape(-1, 2), axis=1)
        good = (st.ravel() == 1) & (st2.ravel() == 1) & (fb < self.cfg.fb_max_px)
        a, b = p_pts.reshape(-1, 2)[good], nxt.reshape(-1, 2)[good]
        if len(a) < self.cfg.min_inliers:
            return fail("lost track of the ground", tracked=int(good.sum()))
        _, mask = cv2.findHomography(a, b, cv2.USAC_MAGSAC, 1.5, maxIters=500, confidence=0.995)
        if mask is None:
            return fail("no consistent motion", tracked=len(a))
        inl = mask.ravel().astype(bool)
        n, ratio = int(inl.sum()), float(inl.mean())
        if n < self.cfg.min_inliers or ratio < self.cfg.min_inlier_ratio:
            return fail(f"no consistent motion ({n} of {len(a)} points agree)", tracked=len(a), inliers=n)
        # Both point sets on the ground, each with its own frame's attitude (drone at 0, 0)
        ga = project(image_to_ground(p_intr, p_pose.moved_to(0, 0)), a[inl])
        gb = project(image_to_ground(intr, pose.moved_to(0, 0)), b[inl])
        m, sim_mask = cv2.estimateAffinePartial2D(gb, ga, method=cv2.RANSAC, ransacReprojThreshold=3 * intr.nadir_gsd(pose.altitude),
                                                  maxIters=500, confidence=0.995)
        if m is None:
            return fail("no consistent ground motion", tracked=len(a), inliers=n)
        sim_in = sim_mask.ravel().astype(bool)
        s = float(math.hypot(m[0, 0], m[1, 0]))
        rot = float(math.degrees(math.atan2(m[1, 0], m[0, 0])))
        dx, dy = float(m[0, 2]), float(m[1, 2])  # the new frame's nadir point in the old frame's ground axes
        resid = np.linalg.norm(gb[sim_in] @ m[:, :2].T + m[:, 2] - ga[sim_in], axis=1)
        gsd = intr.nadir_gsd(pose.altitude)
        sigma = float(max(0.25 * gsd, 1.5 * np.sqrt(np.mean(resid ** 2)) / math.sqrt(max(1, sim_in.sum()))))
        step = OdometryStep(t, dt, True, dx, dy, sigma, int(sim_in.sum()), len(a), -rot, s,
                            telemetry_turn_deg=-((-(pose.yaw - p_pose.yaw) + 180.0) % 360.0 - 180.0),
                            tilt_change_deg=math.hypot(pose.pitch - p_pose.pitch, pose.roll - p_pose.roll),
                            tilt_deg=pose.off_nadir_deg)
        if sim_in.sum() < self.cfg.min_inliers:
            return fail("no consistent ground motion", tracked=len(a), inliers=int(sim_in.sum()))
        if abs(rot) > (self.cfg.max_rotation_deg if trust_yaw else 0.0):
            # The displacement is still right (the fit includes the rotation), but this frame's yaw
            # is not: the previous yaw plus the visual turn replaces it, here and for the next step.
            step.yaw_correction_deg = YAW_SIGN * rot
            self._prev = (grey, corners, t, replace(pose, yaw=(pose.yaw + step.yaw_correction_deg) % 360), intr, shape)
        if abs(s - 1.0) > self.cfg.max_scale_error:
            return fail(f"visual scale disagrees with the altitude by {100 * (s - 1):.0f} %", tracked=len(a),
                        inliers=n, rotation_deg=-rot, scale=s)
        if step.distance > self.cfg.max_speed * dt:
            return fail(f"implausible motion {step.distance:.0f} m in {dt:.2f} s", tracked=len(a), inliers=n)
        return step
