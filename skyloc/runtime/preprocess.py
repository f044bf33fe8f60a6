"""The one image preprocessing of skyloc.

Training evaluation, export verification and the runtime all call `preprocess` so the same
image file yields the same network input everywhere (tests/test_parity.py proves it).
"""
from __future__ import annotations

import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np

from skyloc.errors import SkylocError

IMAGE_EXT = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"})
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_INTERPOLATION = {
    "bicubic": cv2.INTER_CUBIC,
    "bilinear": cv2.INTER_LINEAR,
    "area": cv2.INTER_AREA,
    "nearest": cv2.INTER_NEAREST,
}


@dataclass(frozen=True)
class DataConfig:
    """What a model expects of its input; travels with the model, the ONNX file and the engine."""

    input_size: tuple[int, int, int] = (3, 256, 256)
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    interpolation: str = "bicubic"
    colour: str = "rgb"  # "grey": trained on grey imagery; every input is turned grey the same way
    extra: dict = field(default_factory=dict, compare=False)

    @property
    def height(self) -> int:
        return int(self.input_size[1])

    @property
    def width(self) -> int:
        return int(self.input_size[2])

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("extra")
        d["input_size"] = list(self.input_size)
        d["mean"] = list(self.mean)
        d["std"] = list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "DataConfig":
        return cls(
            input_size=tuple(int(v) for v in d["input_size"]),
            mean=tuple(float(v) for v in d["mean"]),
            std=tuple(float(v) for v in d["std"]),
            interpolation=str(d.get("interpolation", "bicubic")),
            colour=str(d.get("colour", "rgb")),
        )


def image_files(folder: str | Path, allow_empty: bool = False) -> list[Path]:
    """The images in a folder, in name order (the one listing every tool uses)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise SkylocError(f"image folder {folder} not found")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXT and p.is_file())
    if not files and not allow_empty:
        raise SkylocError(f"image folder {folder} has no images ({', '.join(sorted(IMAGE_EXT))})")
    return files


def is_grey(image: np.ndarray, tolerance: int = 3) -> bool:
    """True for an RGB image whose three channels are (nearly) equal: a grey map or a grey view of one."""
    if image.ndim == 2 or image.shape[2] == 1:
        return True
    a = image.astype(np.int16)
    return bool(np.abs(a[..., 0] - a[..., 1]).max() <= tolerance and np.abs(a[..., 1] - a[..., 2]).max() <= tolerance)


def load_image(path: str | Path) -> np.ndarray:
    """Read an image file as RGB uint8 [H,W,3]; a clear error for missing or corrupt files."""
    p = Path(path)
    if not p.is_file():
        raise SkylocError(f"image not found: {p} (check the path)")
    data = np.fromfile(str(p), dtype=np.uint8)
    img = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if img is None:
        raise SkylocError(f"cannot decode image {p}: the file is corrupt or not an image")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def check_frame(frame: object) -> np.ndarray:
    """Validate a camera frame: uint8 [H,W,3] (or grey [H,W], expanded). Raises SkylocError."""
    if not isinstance(frame, np.ndarray):
        raise SkylocError(f"frame must be a numpy uint8 image, got {type(frame).__name__}")
    if frame.dtype != np.uint8:
        raise SkylocError(f"frame must be uint8, got {frame.dtype} (convert with .astype(np.uint8))")
    if frame.ndim == 2:
        frame = cv2.cvtColor(frame, cv2.COLOR_GRAY2RGB)
    if frame.ndim != 3 or frame.shape[2] != 3 or min(frame.shape[:2]) < 8:
        raise SkylocError(f"frame must be an [H,W,3] image of at least 8x8 pixels, got shape {frame.shape}")
    return frame


def resize(image: np.ndarray, height: int, width: int, interpolation: str = "bicubic") -> np.ndarray:
    """Resize an image with the named interpolation (the model's data config names it)."""
    if interpolation not in _INTERPOLATION:
        raise SkylocError(f"unknown interpolation {interpolation!r}; use one of {sorted(_INTERPOLATION)}")
    if image.shape[0] == height and image.shape[1] == width:
        return image
    return cv2.resize(image, (width, height), interpolation=_INTERPOLATION[interpolation])


def preprocess(image_rgb: np.ndarray, cfg: DataConfig) -> np.ndarray:
    """RGB uint8 [H,W,3] -> normalised float32 [3,h,w] as the network expects (grey models: the
    luminance in all three channels, so colour frames meet grey maps on the model's terms)."""
    img = resize(check_frame(image_rgb), cfg.height, cfg.width, cfg.interpolation)
    if cfg.colour == "grey":
        img = cv2.cvtColor(to_grey(img), cv2.COLOR_GRAY2RGB)
    x = img.astype(np.float32) * (1.0 / 255.0)
    x -= np.asarray(cfg.mean, dtype=np.float32)
    x /= np.asarray(cfg.std, dtype=np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def preprocess_batch(images: list[np.ndarray], cfg: DataConfig) -> np.ndarray:
    """A list of RGB images -> float32 [B,3,h,w]."""
    return np.stack([preprocess(im, cfg) for im in images]).astype(np.float32, copy=False)


def to_grey(image: np.ndarray) -> np.ndarray:
    """RGB (or already grey) uint8 -> grey uint8 [H,W]: the one colour-to-grey conversion."""
    if image.ndim == 2:
        return image
    if image.shape[2] == 1:
        return image[..., 0]
    return cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)


_CLAHE = threading.local()


def normalize_contrast(grey: np.ndarray, tiles: int = 4, clip: float = 2.0) -> np.ndarray:
    """Local contrast normalisation (CLAHE) so that exposure, season and sensor differences
    change the features less: odometry and registration both match on these images."""
    c = getattr(_CLAHE, "clahe", None)
    if c is None or c.getTilesGridSize() != (tiles, tiles) or c.getClipLimit() != clip:
        c = _CLAHE.clahe = cv2.createCLAHE(clipLimit=clip, tileGridSize=(tiles, tiles))
    return c.apply(grey)


def flatten_illumination(grey: np.ndarray, sigma_frac: float = 1 / 16) -> np.ndarray:
    """Remove slow brightness changes (vignetting, exposure gradients, haze) and stretch what is
    left to 8 bits: a high-pass for trackers, whose static lens patterns would look like no motion."""
    g = grey.astype(np.float32)
    hp = g - cv2.GaussianBlur(g, (0, 0), max(2.0, sigma_frac * max(grey.shape)))
    spread = float(np.percentile(np.abs(hp), 99)) + 1e-3
    return np.clip(128.0 + hp * (100.0 / spread), 0, 255).astype(np.uint8)


def rotate_north_up(image: np.ndarray, yaw_deg: float) -> np.ndarray:
    """Rotate a nadir frame taken with heading `yaw_deg` (clockwise from north) to north-up.

    Tiles are north-up and the papers show retrieval degrades under rotation. The largest
    axis-aligned square inside the rotated frame is kept so no black corners reach the network.
    """
    h, w = image.shape[:2]
    if abs(yaw_deg) < 1e-6:
        return image
    # The top of the frame points along the heading, so north lies `yaw` degrees anticlockwise
    # of the top; turning the image clockwise by the heading brings it up (cv2: anticlockwise > 0).
    m = cv2.getRotationMatrix2D((w / 2.0, h / 2.0), -float(yaw_deg), 1.0)
    rotated = cv2.warpAffine(image, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    side = inscribed_square_side(min(h, w), yaw_deg)
    y0, x0 = (h - side) // 2, (w - side) // 2
    return rotated[y0 : y0 + side, x0 : x0 + side]


def inscribed_square_side(side: int, angle_deg: float) -> int:
    """Side of the largest axis-aligned square inside a square of `side` rotated by `angle_deg`."""
    a = np.deg2rad(angle_deg % 90.0)
    return max(8, int(side / (np.cos(a) + np.sin(a))))
