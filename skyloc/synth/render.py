"""Drone-camera views of a north-up map: a pinhole camera at altitude with yaw, tilt and roll.

Ground plane -> image is the homography of `skyloc.runtime.camera` (the same geometry the
localizer inverts); composed with map pixel -> ground it warps the map straight into the camera
image. Lighting, blur and noise make the views less clean.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from skyloc.runtime import camera as geometry


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
    roll: float = 0.0  # vehicle roll, degrees (right side down)

    @property
    def intrinsics(self) -> geometry.Intrinsics:
        return geometry.Intrinsics(self.width, self.height, self.hfov)

    @property
    def pose(self) -> geometry.Pose:
        return geometry.Pose(self.x, self.y, self.altitude, self.yaw, tilt=self.pitch, roll=self.roll)

    def footprint_m(self) -> float:
        """Ground width seen across the image centre line at nadir."""
        return 2.0 * self.altitude * np.tan(np.radians(self.hfov) / 2.0)


def ground_to_image(cam: Camera) -> np.ndarray:
    """3x3 homography from ground (x, y, 1) in metres to image pixels."""
    return geometry.ground_to_image(cam.intrinsics, cam.pose)


def render_view(map_rgb: np.ndarray, transform, cam: Camera) -> np.ndarray:
    """Warp the map into the camera. `transform` is the map's affine (a,b,c,d,e,f), north-up."""
    a, _, c, _, e, f = transform[:6]
    pix_to_ground = np.array([[a, 0, c], [0, e, f], [0, 0, 1]], dtype=np.float64)
    h = ground_to_image(cam) @ pix_to_ground
    return cv2.warpPerspective(map_rgb, h, (cam.width, cam.height), flags=cv2.INTER_LINEAR,
                               borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0))


def render_view_terrain(map_rgb: np.ndarray, transform, cam: Camera, elevation: np.ndarray,
                        camera_z: float) -> np.ndarray:
    """Warp the map into a camera over hills: each pixel's ray meets the terrain (`elevation`,
    metres per map pixel) by fixed-point iteration from the camera at height `camera_z` (same
    datum). cam.altitude is ignored; the view has the relief displacement real frames have."""
    a, _, c, _, e, f = transform[:6]
    r = geometry.world_from_camera(cam.pose)
    us, vs = np.meshgrid(np.arange(cam.width, dtype=np.float64) + 0.5, np.arange(cam.height, dtype=np.float64) + 0.5)
    rays = np.stack([us, vs, np.ones_like(us)], -1) @ np.linalg.inv(cam.intrinsics.matrix).T @ r.T
    if np.any(rays[..., 2] >= -1e-3):
        raise ValueError("the camera sees the horizon: terrain rendering needs a downward view")
    col0, row0 = (cam.x - c) / a, (cam.y - f) / e
    z = np.full(us.shape, float(cv2.getRectSubPix(elevation, (1, 1), (col0, row0))[0, 0]), np.float32)
    for _ in range(6):
        t = (camera_z - z) / -rays[..., 2]
        px = ((cam.x + t * rays[..., 0] - c) / a).astype(np.float32)
        py = ((cam.y + t * rays[..., 1] - f) / e).astype(np.float32)
        z = cv2.remap(elevation, px, py, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    return cv2.remap(map_rgb, px, py, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0))


def render_view_lens(map_rgb: np.ndarray, transform, cam: Camera, lens) -> np.ndarray:
    """Warp the map into a camera with lens distortion (`lens`: a `runtime.calibration.Calibration`
    of cam.width x cam.height; cam.hfov is not used): each pixel's ray, as the lens bends it,
    meets the flat ground. Rays at or above the horizon (a wide fisheye) stay black."""
    a, _, c, _, e, f = transform[:6]
    gx, gy, down = geometry.rays_to_ground(cam.pose, lens.pixel_rays())
    px = np.where(down, (gx - c) / a, -1e6).astype(np.float32)
    py = np.where(down, (gy - f) / e, -1e6).astype(np.float32)
    return cv2.remap(map_rgb, px, py, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0))


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


def motion_blur(img: np.ndarray, dx: float, dy: float) -> np.ndarray:
    """Blur along an image-space motion of (dx, dy) pixels during the exposure."""
    length = float(np.hypot(dx, dy))
    if length < 1.0:
        return img
    n = int(np.ceil(length)) | 1
    k = np.zeros((n, n), np.float32)
    c = n // 2
    for t in np.linspace(-0.5, 0.5, 4 * n):
        k[int(round(c + t * dy)), int(round(c + t * dx))] = 1.0
    return cv2.filter2D(img, -1, k / k.sum(), borderType=cv2.BORDER_REFLECT)
