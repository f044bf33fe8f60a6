"""Drone-camera views of a north-up map: a pinhole camera at altitude with yaw, pitch and FOV.

Ground plane -> image is a homography H = K [r1 r2 t]; composed with map pixel -> ground it
warps the map straight into the camera image. Lighting, blur and noise make the views less clean.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


@dataclass
class Camera:
    x: float  # ground position of the drone, metres in the map CRS (east)
    y: float  # north
    altitude: float = 150.0  # metres above ground
    yaw: float = 0.0  # heading, degrees clockwise from north
    pitch: float = 0.0  # optical axis tilt forward from nadir, degrees
    hfov: float = 60.0  # horizontal field of view, degrees
    width: int = 384
    height: int = 384

    def footprint_m(self) -> float:
        """Ground width seen across the image centre line at nadir."""
        return 2.0 * self.altitude * np.tan(np.radians(self.hfov) / 2.0)


def ground_to_image(cam: Camera) -> np.ndarray:
    """3x3 homography from ground (x, y, 1) in metres to image pixels."""
    f = (cam.width / 2.0) / np.tan(np.radians(cam.hfov) / 2.0)
    k = np.array([[f, 0, cam.width / 2.0], [0, f, cam.height / 2.0], [0, 0, 1]])
    psi, theta = np.radians(cam.yaw), np.radians(cam.pitch)
    heading = np.array([np.sin(psi), np.cos(psi), 0.0])
    right = np.array([np.cos(psi), -np.sin(psi), 0.0])
    forward = np.cos(theta) * np.array([0.0, 0.0, -1.0]) + np.sin(theta) * heading  # optical axis
    down = np.cross(forward, right)  # image y axis
    r = np.stack([right, down, forward])  # world -> camera
    centre = np.array([cam.x, cam.y, cam.altitude])
    return k @ np.column_stack([r[:, 0], r[:, 1], -r @ centre])


def render_view(map_rgb: np.ndarray, transform, cam: Camera) -> np.ndarray:
    """Warp the map into the camera. `transform` is the map's affine (a,b,c,d,e,f), north-up."""
    a, _, c, _, e, f = transform[:6]
    pix_to_ground = np.array([[a, 0, c], [0, e, f], [0, 0, 1]], dtype=np.float64)
    h = ground_to_image(cam) @ pix_to_ground
    return cv2.warpPerspective(map_rgb, h, (cam.width, cam.height), flags=cv2.INTER_LINEAR,
                               borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0))


def north_up_tile(map_rgb: np.ndarray, transform, x: float, y: float, size_m: float, out_px: int) -> np.ndarray:
    """A north-up square of size_m metres centred at (x, y): the 'satellite' view of a place."""
    a, _, c, _, e, f = transform[:6]
    col, row = (x - c) / a, (y - f) / e
    side = size_m / a
    s = out_px / side
    m = np.array([[s, 0, -(col - side / 2) * s], [0, s, -(row - side / 2) * s]], dtype=np.float64)
    interp = cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR
    return cv2.warpAffine(map_rgb, m, (out_px, out_px), flags=interp, borderMode=cv2.BORDER_CONSTANT)


def photometric(img: np.ndarray, rng: np.random.Generator, strength: float = 1.0) -> np.ndarray:
    """Camera and lighting differences: exposure, contrast, colour cast, haze, blur, noise, JPEG."""
    x = img.astype(np.float32)
    x = (x - 128) * rng.uniform(1 - 0.25 * strength, 1 + 0.15 * strength) + 128
    x = x * rng.uniform(1 - 0.2 * strength, 1 + 0.2 * strength)
    x = x * (1 + rng.normal(0, 0.05 * strength, 3)).astype(np.float32)
    haze = rng.uniform(0, 0.2 * strength)
    x = x * (1 - haze) + 200 * haze
    sigma = rng.uniform(0, 1.2 * strength)
    if sigma > 0.3:
        x = cv2.GaussianBlur(x, (0, 0), sigma)
    x += rng.normal(0, 3 * strength, x.shape).astype(np.float32)
    out = np.clip(x, 0, 255).astype(np.uint8)
    ok, buf = cv2.imencode(".jpg", out, [cv2.IMWRITE_JPEG_QUALITY, int(rng.uniform(70, 95))])
    return cv2.imdecode(buf, cv2.IMREAD_UNCHANGED) if ok else out
