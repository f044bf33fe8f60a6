"""Appearance randomisation: what changes between a map and a flight over the same ground.

Dates, seasons, sensors and weather change how a place looks, not where things are. Each effect
here stands for a gap seen in real imagery: colour or grey sensors, sensor response and white
balance, gamma and exposure, haze, cloud shadows, blur, noise and JPEG, and season-like hue and
saturation shifts. `randomise_appearance` applies a random subset; training applies it to both
views so that the network learns the layout that stays the same.
"""
from __future__ import annotations

import random

import cv2
import numpy as np

from skyloc.runtime.preprocess import to_grey


def _grey(img: np.ndarray, rng: random.Random) -> np.ndarray:
    return cv2.cvtColor(to_grey(img), cv2.COLOR_GRAY2RGB)  # the runtime's conversion: grey maps look the same


def _sensor(img: np.ndarray, rng: random.Random) -> np.ndarray:
    """Per-channel gain (white balance) and a response curve (gamma) per channel."""
    x = img.astype(np.float32) / 255.0
    gains = np.array([rng.uniform(0.8, 1.2) for _ in range(3)], np.float32)
    gammas = np.array([rng.uniform(0.85, 1.15) for _ in range(3)], np.float32)
    return np.clip(255.0 * np.power(np.clip(x * gains, 0, 1), gammas), 0, 255).astype(np.uint8)


def _exposure(img: np.ndarray, rng: random.Random) -> np.ndarray:
    x = img.astype(np.float32) / 255.0
    x = np.power(x, rng.uniform(0.6, 1.6)) * rng.uniform(0.6, 1.4)
    return np.clip(255.0 * x, 0, 255).astype(np.uint8)


def _haze(img: np.ndarray, rng: random.Random) -> np.ndarray:
    a = rng.uniform(0.1, 0.45)
    veil = np.array([rng.uniform(180, 240)] * 3, np.float32) * np.array([1.0, 1.0, rng.uniform(1.0, 1.1)], np.float32)
    return np.clip(img.astype(np.float32) * (1 - a) + veil * a, 0, 255).astype(np.uint8)


def _shadows(img: np.ndarray, rng: random.Random) -> np.ndarray:
    """Soft dark blobs (cloud shadows) over part of the image."""
    h, w = img.shape[:2]
    m = np.zeros((h, w), np.float32)
    for _ in range(rng.randint(1, 3)):
        c = (rng.randint(0, w), rng.randint(0, h))
        axes = (rng.randint(w // 8, w // 2), rng.randint(h // 8, h // 2))
        cv2.ellipse(m, c, axes, rng.uniform(0, 180), 0, 360, 1.0, -1)
    m = cv2.GaussianBlur(m, (0, 0), max(h, w) / 12)
    dark = 1.0 - rng.uniform(0.3, 0.6) * np.clip(m, 0, 1)
    return np.clip(img.astype(np.float32) * dark[..., None], 0, 255).astype(np.uint8)


def _blur(img: np.ndarray, rng: random.Random) -> np.ndarray:
    if rng.random() < 0.5:
        return cv2.GaussianBlur(img, (0, 0), rng.uniform(0.6, 1.8))
    n = rng.choice([3, 5, 7])
    k = np.zeros((n, n), np.float32)
    k[n // 2, :] = 1.0 / n
    k = cv2.warpAffine(k, cv2.getRotationMatrix2D((n / 2 - 0.5, n / 2 - 0.5), rng.uniform(0, 180), 1.0), (n, n))
    return cv2.filter2D(img, -1, k / max(k.sum(), 1e-6))


def _noise_jpeg(img: np.ndarray, rng: random.Random) -> np.ndarray:
    x = img.astype(np.float32) + np.random.default_rng(rng.randrange(1 << 30)).normal(0, rng.uniform(2, 8), img.shape)
    out = np.clip(x, 0, 255).astype(np.uint8)
    ok, buf = cv2.imencode(".jpg", out, [cv2.IMWRITE_JPEG_QUALITY, rng.randint(30, 85)])
    return cv2.imdecode(buf, cv2.IMREAD_UNCHANGED) if ok else out


def _season(img: np.ndarray, rng: random.Random) -> np.ndarray:
    """Hue rotation and saturation change, stronger on green (vegetation turns yellow or brown)."""
    hsv = cv2.cvtColor(img, cv2.COLOR_RGB2HSV).astype(np.int16)
    green = ((hsv[..., 0] > 25) & (hsv[..., 0] < 95)).astype(np.int16)
    hsv[..., 0] = (hsv[..., 0] + rng.randint(-8, 8) + green * rng.randint(-25, 5)) % 180
    hsv[..., 1] = np.clip(hsv[..., 1] * rng.uniform(0.5, 1.4), 0, 255)
    return cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2RGB)


EFFECTS = {"grey": (_grey, 0.15), "sensor": (_sensor, 0.5), "exposure": (_exposure, 0.5), "haze": (_haze, 0.25),
           "shadows": (_shadows, 0.25), "blur": (_blur, 0.3), "noise_jpeg": (_noise_jpeg, 0.3),
           "season": (_season, 0.5)}


def randomise_appearance(img: np.ndarray, rng: random.Random, strength: float = 1.0) -> np.ndarray:
    """Apply each effect with its probability times `strength` (0 = unchanged), in a random order."""
    if strength <= 0:
        return img
    names = list(EFFECTS)
    rng.shuffle(names)
    for name in names:
        fn, p = EFFECTS[name]
        if rng.random() < p * strength:
            img = fn(np.ascontiguousarray(img), rng)
    return img
