"""Camera calibration: lens distortion taken out once, at the frame's entry to the localizer.

A calibrated frame is remapped to a distortion-free pinhole image of the same size, with square
pixels, the principal point at the centre and the focal length chosen so that every output pixel
sees the scene (no black corners). Every later stage (odometry, registration, the footprint,
retrieval) then works on the pinhole geometry of `skyloc.runtime.camera`, with that image's
field of view. The remap tables are made once per frame size.

Models: "pinhole" (OpenCV's radial-tangential k1, k2, p1, p2[, k3[, k4, k5, k6]]: ROS
plumb_bob / rational_polynomial, Kalibr radtan) and "fisheye" (equidistant k1..k4: OpenCV's
cv2.fisheye, ROS equidistant, Kalibr equidistant). Files: OpenCV FileStorage YAML/JSON/XML
(camera_matrix, distortion_coefficients, image_width, image_height, as calibrateCamera samples
write them), ROS camera_info YAML, and Kalibr camchain YAML (its first camera, or `camera=`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from skyloc.errors import ConfigError, SkylocError

MODELS = ("pinhole", "fisheye")
_ROS_MODELS = {"plumb_bob": "pinhole", "rational_polynomial": "pinhole", "radtan": "pinhole",
               "equidistant": "fisheye", "fisheye": "fisheye", "pinhole": "pinhole"}


@dataclass(frozen=True)
class Calibration:
    """A lens: camera matrix K and distortion D for images of width x height."""

    model: str
    width: int
    height: int
    K: np.ndarray
    D: np.ndarray
    source: str = ""
    _cache: dict = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self):
        if self.model not in MODELS:
            raise SkylocError(f"{self.source}: unknown distortion model {self.model!r}; use pinhole or fisheye")
        if self.model == "fisheye" and self.D.size != 4:
            raise SkylocError(f"{self.source}: the fisheye (equidistant) model takes 4 coefficients, got {self.D.size}")
        if self.model == "pinhole" and self.D.size not in (4, 5, 8, 12, 14):
            raise SkylocError(f"{self.source}: the pinhole model takes 4, 5, 8, 12 or 14 coefficients, got {self.D.size}")
        if self.width <= 0 or self.height <= 0 or self.K[0, 0] <= 0 or self.K[1, 1] <= 0:
            raise SkylocError(f"{self.source}: the calibration needs a positive image size and focal length")

    def scaled(self, width: int, height: int) -> "Calibration":
        """The same lens for frames resized to width x height; another aspect ratio is refused."""
        if (width, height) == (self.width, self.height):
            return self
        if abs(width * self.height - height * self.width) > max(width, height):  # > 1 px of aspect
            raise ConfigError(f"calibration {self.source} is for {self.width}x{self.height} images but the frames "
                              f"are {width}x{height} (another aspect ratio: a crop, not a resize): calibrate "
                              "this camera mode")
        sx, sy = width / self.width, height / self.height
        # pixel centres sit at whole coordinates: an edge at -0.5 stays at -0.5
        s = np.array([[sx, 0.0, (sx - 1.0) / 2.0], [0.0, sy, (sy - 1.0) / 2.0], [0.0, 0.0, 1.0]])
        return Calibration(self.model, int(width), int(height), s @ self.K, self.D, self.source)

    def undistort_points(self, pts: np.ndarray) -> np.ndarray:
        """Pixel coordinates [N,2] -> normalized pinhole coordinates (x/z, y/z) [N,2]."""
        p = np.asarray(pts, np.float64).reshape(-1, 1, 2)
        if self.model == "fisheye":
            out = cv2.fisheye.undistortPoints(p, self.K, self.D)
        else:
            out = cv2.undistortPoints(p, self.K, self.D, None, None, None,
                                      (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 40, 1e-9))
        return out.reshape(-1, 2)

    def distort_points(self, xy: np.ndarray) -> np.ndarray:
        """Normalized pinhole coordinates [N,2] -> pixel coordinates of this lens [N,2]."""
        p = np.asarray(xy, np.float64).reshape(-1, 1, 2)
        if self.model == "fisheye":
            return cv2.fisheye.distortPoints(p, self.K, self.D).reshape(-1, 2)
        pts3 = np.concatenate([p.reshape(-1, 2), np.ones((p.shape[0], 1))], 1)
        out, _ = cv2.projectPoints(pts3, np.zeros(3), np.zeros(3), self.K, self.D)
        return out.reshape(-1, 2)

    def pixel_rays(self) -> np.ndarray:
        """Normalized ray (x/z, y/z) of every pixel centre [height, width, 2] (renders a lens)."""
        if "rays" not in self._cache:
            us, vs = np.meshgrid(np.arange(self.width, dtype=np.float64), np.arange(self.height, dtype=np.float64))
            xy = self.undistort_points(np.stack([us, vs], -1).reshape(-1, 2))
            self._cache["rays"] = xy.reshape(self.height, self.width, 2)
        return self._cache["rays"]

    def undistorter(self, width: int, height: int) -> "Undistorter":
        key = (int(width), int(height))
        if key not in self._cache:
            self._cache[key] = Undistorter(self.scaled(*key))
        return self._cache[key]


class Undistorter:
    """Remap tables from a calibrated lens to the centred pinhole image of the same size."""

    def __init__(self, cal: Calibration, samples: int = 64):
        w, h = cal.width, cal.height
        # the widest centred pinhole view inside the lens's image: its half-extents are the nearest
        # the image border comes to the centre, in normalized coordinates, on each side
        # (K is in OpenCV's pixel convention: integer coordinates at pixel centres)
        t = np.linspace(0.0, 1.0, samples)
        left = np.stack([np.full_like(t, -0.5), t * h - 0.5], 1)
        right = np.stack([np.full_like(t, w - 0.5), t * h - 0.5], 1)
        top = np.stack([t * w - 0.5, np.full_like(t, -0.5)], 1)
        bottom = np.stack([t * w - 0.5, np.full_like(t, h - 0.5)], 1)
        half_x = min(-cal.undistort_points(left)[:, 0].max(), cal.undistort_points(right)[:, 0].min())
        half_y = min(-cal.undistort_points(top)[:, 1].max(), cal.undistort_points(bottom)[:, 1].min())
        if not (half_x > 0 and half_y > 0):
            raise SkylocError(f"calibration {cal.source}: the lens model folds over inside the image (check the "
                              "distortion coefficients and model)")
        f = max((w / 2.0) / half_x, (h / 2.0) / half_y)  # square pixels, every output pixel valid
        self.K = np.array([[f, 0.0, w / 2.0], [0.0, f, h / 2.0], [0.0, 0.0, 1.0]])
        self.hfov_deg = math.degrees(2.0 * math.atan((w / 2.0) / f))
        self.size = (w, h)
        # output pixel -> normalized ray (the output's centre is the lens's optical axis, as in
        # `skyloc.runtime.camera`, where a pixel's centre is at index + 0.5) -> input pixel
        us, vs = np.meshgrid(np.arange(w, dtype=np.float64) + 0.5, np.arange(h, dtype=np.float64) + 0.5)
        xy = np.stack([(us - w / 2.0) / f, (vs - h / 2.0) / f], -1).reshape(-1, 2)
        src = cal.distort_points(xy).reshape(h, w, 2)
        self.map1, self.map2 = cv2.convertMaps(src[..., 0].astype(np.float32), src[..., 1].astype(np.float32),
                                               cv2.CV_16SC2)

    def __call__(self, frame: np.ndarray) -> np.ndarray:
        return cv2.remap(frame, self.map1, self.map2, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def _matrix(v, what: str, path: Path) -> np.ndarray:
    a = np.asarray(v.get("data", v) if isinstance(v, dict) else v, np.float64).ravel()
    if what == "K":
        if a.size != 9:
            raise SkylocError(f"{path}: the camera matrix needs 9 numbers, got {a.size}")
        return a.reshape(3, 3)
    return a


def _opencv_storage(path: Path) -> Calibration:
    fs = cv2.FileStorage(str(path), cv2.FILE_STORAGE_READ)
    try:
        if not fs.isOpened():
            raise SkylocError(f"cannot read calibration {path} (OpenCV FileStorage YAML/JSON/XML expected)")

        def node(*names):
            for n in names:
                nd = fs.getNode(n)
                if not nd.empty():
                    return nd
            return None

        k, d = node("camera_matrix", "K", "cameraMatrix"), node("distortion_coefficients", "D", "distCoeffs",
                                                                  "dist_coeffs")
        w, h = node("image_width", "width"), node("image_height", "height")
        if k is None or d is None or w is None or h is None:
            raise SkylocError(f"{path} lacks camera_matrix, distortion_coefficients, image_width or image_height")
        m = node("distortion_model", "model")
        model = _ROS_MODELS.get((m.string() if m is not None and m.isString() else "pinhole").lower(), "?")
        if node("fisheye") is not None and node("fisheye").real():
            model = "fisheye"
        return Calibration(model, int(w.real()), int(h.real()), np.asarray(k.mat(), np.float64).reshape(3, 3),
                           np.asarray(d.mat(), np.float64).ravel(), str(path))
    finally:
        fs.release()


def load_calibration(path: str | Path, camera: str | None = None) -> Calibration:
    """Read a calibration file: OpenCV FileStorage, ROS camera_info YAML or a Kalibr camchain."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise SkylocError(f"calibration file not found: {path}")
    text = path.read_text(errors="replace")
    if text.lstrip().startswith("%YAML:") or "!!opencv-matrix" in text or path.suffix.lower() in (".xml",) \
            or '"camera_matrix"' in text and path.suffix.lower() == ".json" and "opencv" in text:
        return _opencv_storage(path)
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise SkylocError(f"calibration {path} is not valid YAML/JSON: {str(exc).splitlines()[0]}") from None
    if not isinstance(doc, dict):
        raise SkylocError(f"calibration {path} holds no calibration (OpenCV, ROS camera_info or Kalibr expected)")
    try:
        if "camera_matrix" in doc:  # ROS camera_info (or OpenCV JSON without its tags)
            model = _ROS_MODELS.get(str(doc.get("distortion_model", "plumb_bob")).lower())
            if model is None:
                raise SkylocError(f"{path}: distortion_model {doc['distortion_model']!r} is not supported "
                                  "(plumb_bob, rational_polynomial, equidistant)")
            return Calibration(model, int(doc["image_width"]), int(doc["image_height"]),
                               _matrix(doc["camera_matrix"], "K", path), _matrix(doc["distortion_coefficients"], "D", path),
                               str(path))
        cams = {k: v for k, v in doc.items() if isinstance(v, dict) and "intrinsics" in v}
        if cams:  # Kalibr camchain
            name = camera or sorted(cams)[0]
            if name not in cams:
                raise SkylocError(f"{path} has no camera {name!r}; it has {', '.join(sorted(cams))}")
            c = cams[name]
            if str(c.get("camera_model", "pinhole")) != "pinhole":
                raise SkylocError(f"{path}: Kalibr camera_model {c['camera_model']!r} is not supported (pinhole)")
            model = _ROS_MODELS.get(str(c.get("distortion_model", "radtan")).lower())
            if model is None:
                raise SkylocError(f"{path}: Kalibr distortion_model {c['distortion_model']!r} is not supported "
                                  "(radtan, equidistant)")
            fu, fv, pu, pv = (float(v) for v in c["intrinsics"])
            w, h = (int(v) for v in c["resolution"])
            return Calibration(model, w, h, np.array([[fu, 0, pu], [0, fv, pv], [0, 0, 1.0]]),
                               np.asarray(c["distortion_coeffs"], np.float64), str(path))
    except (KeyError, TypeError, ValueError) as exc:
        raise SkylocError(f"calibration {path} is missing or has a bad field ({exc})") from None
    raise SkylocError(f"calibration {path}: not an OpenCV, ROS camera_info or Kalibr file (no camera_matrix or "
                      "intrinsics)")


def write_calibration(cal: Calibration, path: str | Path) -> Path:
    """Write an OpenCV FileStorage YAML, as cv2's calibration samples do."""
    path = Path(path)
    fs = cv2.FileStorage(str(path), cv2.FILE_STORAGE_WRITE)
    fs.write("image_width", cal.width)
    fs.write("image_height", cal.height)
    fs.write("camera_matrix", cal.K)
    fs.write("distortion_coefficients", cal.D.reshape(1, -1))
    fs.write("distortion_model", "equidistant" if cal.model == "fisheye" else "plumb_bob")
    fs.release()
    return path
