"""Camera geometry: where a downward camera's pixels fall on flat ground.

One definition used by every stage that needs it: the synthetic renderer (ground -> image),
visual odometry (image points -> metres on the ground) and map registration (the frame warped
north-up at the map's resolution). World axes are east, north, up in metres of the map's CRS.

A pose is the drone's ground position and altitude above ground plus the camera's orientation:
heading (yaw, clockwise from north: the direction of the image's top edge when the camera
looks straight down), tilt of the optical axis forward from nadir (gimbal or mount), and the
vehicle's pitch and roll (a camera fixed to a fixed-wing airframe looks sideways in a turn).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np


@dataclass(frozen=True)
class Intrinsics:
    """Pinhole camera with square pixels and the principal point at the centre (no distortion)."""

    width: int
    height: int
    hfov_deg: float = 60.0

    @property
    def focal_px(self) -> float:
        return (self.width / 2.0) / math.tan(math.radians(self.hfov_deg) / 2.0)

    @property
    def matrix(self) -> np.ndarray:
        f = self.focal_px
        return np.array([[f, 0.0, self.width / 2.0], [0.0, f, self.height / 2.0], [0.0, 0.0, 1.0]])

    def scaled(self, width: int, height: int) -> "Intrinsics":
        """The same lens seen in an image resized to width x height."""
        return replace(self, width=int(width), height=int(height))

    def nadir_gsd(self, altitude: float) -> float:
        """Metres per pixel on the ground straight below a nadir camera at `altitude`."""
        return altitude / self.focal_px


@dataclass(frozen=True)
class Pose:
    x: float = 0.0  # drone ground position, metres east in the map CRS
    y: float = 0.0  # metres north
    altitude: float = 150.0  # metres above the ground
    yaw: float = 0.0  # degrees clockwise from north
    tilt: float = 0.0  # camera optical axis forward of nadir (gimbal/mount), degrees
    pitch: float = 0.0  # vehicle nose-up, degrees
    roll: float = 0.0  # vehicle right side down, degrees

    def moved_to(self, x: float, y: float) -> "Pose":
        return replace(self, x=float(x), y=float(y))

    @property
    def off_nadir_deg(self) -> float:
        """How far the optical axis leans from nadir (mount tilt plus the vehicle's lean), about."""
        return abs(self.tilt) + math.hypot(self.pitch, self.roll)


_NED_TO_ENU = np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, -1.0]])


def world_from_camera(pose: Pose) -> np.ndarray:
    """3x3 rotation taking camera axes (x right, y down in the image, z along the optical axis)
    to world east/north/up. Vehicle attitude is yaw-pitch-roll (aerospace order); the camera
    looks along the body's down axis, tilted forward by `tilt`, with the image top forward."""
    psi, theta, phi, tau = (math.radians(v) for v in (pose.yaw, pose.pitch, pose.roll, pose.tilt))
    cz, sz, cy, sy, cx, sx = math.cos(psi), math.sin(psi), math.cos(theta), math.sin(theta), math.cos(phi), math.sin(phi)
    rz = np.array([[cz, -sz, 0.0], [sz, cz, 0.0], [0.0, 0.0, 1.0]])
    ry = np.array([[cy, 0.0, sy], [0.0, 1.0, 0.0], [-sy, 0.0, cy]])
    rx = np.array([[1.0, 0.0, 0.0], [0.0, cx, -sx], [0.0, sx, cx]])
    ct, st = math.cos(tau), math.sin(tau)
    body_from_camera = np.array([[0.0, -ct, st], [1.0, 0.0, 0.0], [0.0, st, ct]])  # columns: image x, y, optical axis
    return _NED_TO_ENU @ rz @ ry @ rx @ body_from_camera


def ground_to_image(intr: Intrinsics, pose: Pose) -> np.ndarray:
    """3x3 homography from ground points (east, north, 1) in metres to image pixels."""
    r = world_from_camera(pose).T  # world -> camera
    centre = np.array([pose.x, pose.y, pose.altitude])
    return intr.matrix @ np.column_stack([r[:, 0], r[:, 1], -r @ centre])


def image_to_ground(intr: Intrinsics, pose: Pose) -> np.ndarray:
    """3x3 homography from image pixels to ground (east, north) in metres."""
    return np.linalg.inv(ground_to_image(intr, pose))


def rays_to_ground(pose: Pose, rays_xy: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Where camera rays (normalized x/z, y/z, any shape [..., 2]) meet flat ground: east, north
    and a mask of the rays that point down (a lens may see the horizon)."""
    r = world_from_camera(pose)
    rays = np.concatenate([rays_xy, np.ones(rays_xy.shape[:-1] + (1,))], -1) @ r.T
    down = rays[..., 2] < -1e-3
    t = np.where(down, pose.altitude / np.where(down, -rays[..., 2], 1.0), 0.0)
    return pose.x + t * rays[..., 0], pose.y + t * rays[..., 1], down


def project(h: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """Apply a 3x3 homography to [N,2] points."""
    pts = np.asarray(pts, np.float64).reshape(-1, 2)
    q = np.column_stack([pts, np.ones(len(pts))]) @ h.T
    return q[:, :2] / q[:, 2:3]


def looks_at_ground(intr: Intrinsics, pose: Pose, margin_deg: float = 5.0) -> bool:
    """True when every image corner's ray points below the horizon (a finite ground footprint)."""
    r = world_from_camera(pose)
    k_inv = np.linalg.inv(intr.matrix)
    corners = np.array([[0, 0, 1], [intr.width, 0, 1], [intr.width, intr.height, 1], [0, intr.height, 1]], float)
    rays = (r @ (k_inv @ corners.T)).T
    rays /= np.linalg.norm(rays, axis=1, keepdims=True)
    return bool(np.all(rays[:, 2] < -math.sin(math.radians(margin_deg))))


def footprint(intr: Intrinsics, pose: Pose) -> np.ndarray | None:
    """Ground corners [4,2] (east, north) of the image, or None if the view reaches the horizon."""
    if not looks_at_ground(intr, pose):
        return None
    corners = np.array([[0, 0], [intr.width, 0], [intr.width, intr.height], [0, intr.height]], float)
    return project(image_to_ground(intr, pose), corners)
