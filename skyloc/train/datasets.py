"""Dataset layouts (University-1652, SUES-200, plain folders) and the cross-view pair dataset."""
from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from skyloc.errors import SkylocError
from skyloc.runtime.preprocess import DataConfig, image_files, is_grey, load_image
from skyloc.train.appearance import randomise_appearance
from skyloc.train.predict import to_tensor

SUES_HEIGHTS = ("150", "200", "250", "300")


@dataclass
class ViewSet:
    """Images of one view grouped by class name (a place)."""

    root: Path
    items: list[tuple[Path, str]]

    @property
    def classes(self) -> list[str]:
        return sorted({c for _, c in self.items})

    def by_class(self) -> dict[str, list[Path]]:
        out: dict[str, list[Path]] = {}
        for p, c in self.items:
            out.setdefault(c, []).append(p)
        return out


def read_view(folder: Path, what: str) -> ViewSet:
    """A folder of class sub-folders of images; a clear error naming the missing folder."""
    if not folder.is_dir():
        raise SkylocError(f"missing folder {folder} ({what}); see README 'Datasets' for the layouts")
    items = [(p, d.name) for d in sorted(folder.iterdir()) if d.is_dir()
             for p in image_files(d, allow_empty=True)]
    if not items:
        raise SkylocError(f"{folder} ({what}) has no images in class sub-folders")
    return ViewSet(folder, items)


@dataclass
class Layout:
    """Where the train and test views of a dataset live."""

    kind: str
    train_drone: Path | None
    train_satellite: Path | None
    test: dict[str, Path]  # query_drone, gallery_satellite, query_satellite, gallery_drone


def detect_layout(root: str | Path, height: str | None = None) -> Layout:
    """University-1652 (train/, test/), SUES-200 (Training/H, Testing/H) or plain (drone/, satellite/)."""
    root = Path(root)
    if not root.is_dir():
        raise SkylocError(f"dataset folder not found: {root}")
    test_names = ("query_drone", "gallery_satellite", "query_satellite", "gallery_drone")
    if (root / "train").is_dir() or (root / "test").is_dir():
        train = root / "train"
        test = {n: root / "test" / n for n in test_names if (root / "test" / n).is_dir()}
        return Layout("university-1652", train / "drone", train / "satellite", test)
    if (root / "Training").is_dir() or (root / "Testing").is_dir():
        h = height or SUES_HEIGHTS[-1]
        if h not in SUES_HEIGHTS:
            raise SkylocError(f"SUES-200 height {h!r} unknown; use one of {', '.join(SUES_HEIGHTS)}")
        test = {n: root / "Testing" / h / n for n in test_names if (root / "Testing" / h / n).is_dir()}
        return Layout(f"sues-200@{h}m", root / "Training" / h / "drone", root / "Training" / h / "satellite", test)
    if (root / "drone").is_dir() or (root / "satellite").is_dir():
        # a plain folder: every image of a class is a positive, both ways
        test = {n: root / ("drone" if n.endswith("drone") else "satellite") for n in test_names}
        return Layout("folder", root / "drone", root / "satellite", {k: v for k, v in test.items() if v.is_dir()})
    raise SkylocError(f"{root} is not a known layout: expected train/ and test/ (University-1652), "
                      "Training/<height>/ (SUES-200) or drone/ + satellite/ (folder)")


def training_views(roots: list[str | Path], height: str | None = None) -> tuple[ViewSet, ViewSet]:
    """Drone and satellite views of several dataset roots in one set. With several roots, classes
    are renamed `<root index>/<class>` so that class 0001 of one map never meets class 0001 of
    another (and a sampler can tell the roots apart)."""
    drone_items, sat_items = [], []
    for i, root in enumerate(roots):
        layout = detect_layout(root, height)
        d = read_view(layout.train_drone, f"training drone views of {root}")
        s = read_view(layout.train_satellite, f"training satellite views of {root}")
        tag = (lambda c, i=i: f"{i}/{c}") if len(roots) > 1 else (lambda c: c)
        drone_items += [(p, tag(c)) for p, c in d.items]
        sat_items += [(p, tag(c)) for p, c in s.items]
    drone = ViewSet(Path(str(roots[0])), drone_items)
    sat = ViewSet(Path(str(roots[0])), sat_items)
    return drone, sat


def source_of(cls: str) -> str:
    """The dataset root a class came from (see training_views)."""
    return cls.split("/", 1)[0] if "/" in cls else "0"


def source_balanced_weights(dataset: "PairDataset") -> torch.Tensor:
    """One weight per item so that every root is drawn equally often, whatever its size."""
    counts: dict[str, int] = {}
    for c in dataset.classes:
        counts[source_of(c)] = counts.get(source_of(c), 0) + 1
    per_class = torch.tensor([1.0 / counts[source_of(c)] for c in dataset.classes])
    return per_class.repeat(dataset.k_sat)


def detect_colour(satellite: ViewSet, samples: int = 24) -> str:
    """"grey" when the satellite views are grey (a panchromatic or single-band map), else "rgb"."""
    files = [p for p, _ in satellite.items]
    step = max(1, len(files) // samples)
    return "grey" if all(is_grey(load_image(p)) for p in files[::step][:samples]) else "rgb"


def turn_together(images: list[np.ndarray], rng: random.Random) -> list[np.ndarray]:
    """The same 90-degree turn and mirror for every view of a pair: new layouts to learn from while
    the views stay aligned with each other, as a derotated frame is with its north-up map tile."""
    k, mirror = rng.randint(0, 3), rng.random() < 0.5
    out = [np.rot90(img, k) for img in images]
    return [np.ascontiguousarray(img[:, ::-1] if mirror else img) for img in out]


def augment(img: np.ndarray, rng: random.Random, size: int, rotate: float = 0.0, erase: float = 0.0,
            appearance: float = 0.0, flip: bool = True) -> np.ndarray:
    """Pad-and-crop, flip (unless the pair is turned together), small rotation, appearance
    randomisation (skyloc.train.appearance), brightness/contrast and random erasing."""
    img = cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA)
    pad = size // 16
    img = cv2.copyMakeBorder(img, pad, pad, pad, pad, cv2.BORDER_REFLECT)
    x, y = rng.randint(0, 2 * pad), rng.randint(0, 2 * pad)
    img = img[y : y + size, x : x + size]
    if flip and rng.random() < 0.5:
        img = img[:, ::-1]
    if rotate:
        m = cv2.getRotationMatrix2D((size / 2, size / 2), rng.uniform(-rotate, rotate), 1.0)
        img = cv2.warpAffine(np.ascontiguousarray(img), m, (size, size), borderMode=cv2.BORDER_REFLECT)
    img = randomise_appearance(np.ascontiguousarray(img), rng, appearance)
    f = img.astype(np.float32)
    f = f * rng.uniform(0.8, 1.2) + rng.uniform(-20, 20)
    f = (f - f.mean()) * rng.uniform(0.8, 1.2) + f.mean()
    img = np.clip(f, 0, 255).astype(np.uint8)
    if erase and rng.random() < erase:
        h, w = rng.randint(size // 8, size // 3), rng.randint(size // 8, size // 3)
        y, x = rng.randint(0, size - h), rng.randint(0, size - w)
        img = img.copy()
        img[y : y + h, x : x + w] = np.asarray([rng.randint(0, 255) for _ in range(3)], np.uint8)
    return np.ascontiguousarray(img)


class PairDataset(Dataset):
    """One item per (class, satellite augmentation): an augmented satellite tile, a random drone
    view of the same place, and the class index. `k_sat` repeats each class k times per epoch
    (MIFT's k satellite augmentations) to balance the one satellite image against many drone views.

    `aligned`: the pair is turned and mirrored together (views of a map, north-up as the runtime
    derotates frames); off, each view is flipped on its own (University-1652: views circle a building).
    Each item draws its view and augmentation from torch's generator, which the DataLoader seeds per
    worker from the run's seed: every epoch sees new views, reproducibly.
    """

    def __init__(self, drone: ViewSet, satellite: ViewSet, cfg: DataConfig, k_sat: int = 1,
                 appearance: float = 0.0, aligned: bool = False):
        d, s = drone.by_class(), satellite.by_class()
        self.classes = sorted(set(d) & set(s))
        if not self.classes:
            raise SkylocError(f"no class appears in both {drone.root} and {satellite.root}")
        self.class_index = {c: i for i, c in enumerate(self.classes)}
        self.drone, self.satellite = d, s
        self.cfg, self.k_sat, self.appearance, self.aligned = cfg, k_sat, appearance, aligned

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.classes) * self.k_sat

    def __getitem__(self, i: int):
        cls = self.classes[i % len(self.classes)]
        # not seeded by (epoch, i): persistent workers never see the main process's epoch counter,
        # so every epoch repeated the first one's views (2 of 8 views per place ever used)
        rng = random.Random(int(torch.randint(2**62, ())))
        size = self.cfg.height
        sat, drone = load_image(rng.choice(self.satellite[cls])), load_image(rng.choice(self.drone[cls]))
        if self.aligned:
            sat, drone = turn_together([sat, drone], rng)
        sat = augment(sat, rng, size, rotate=5.0 if self.aligned else 10.0, appearance=self.appearance,
                      flip=not self.aligned)
        drone = augment(drone, rng, size, erase=0.3, appearance=self.appearance, flip=not self.aligned)
        return to_tensor(sat, self.cfg), to_tensor(drone, self.cfg), torch.tensor(self.class_index[cls])
