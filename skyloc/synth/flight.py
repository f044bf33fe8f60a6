"""Synthetic flights: a smooth route over a map, rendered to a video with a telemetry CSV."""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from skyloc.errors import SkylocError
from skyloc.runtime.geo import GeoMap
from skyloc.synth.render import Camera, photometric, render_view


@dataclass
class FlightConfig:
    duration_s: float = 60.0
    fps: float = 2.0
    speed: float = 12.0  # m/s
    altitude: float = 150.0
    altitude_jitter: float = 10.0
    pitch: float = 5.0
    hfov: float = 60.0
    frame_px: int = 320
    seed: int = 0


def route(bounds, cfg: FlightConfig, rng: np.random.Generator, margin: float) -> np.ndarray:
    """Smooth random route [T,2] (x, y metres) inside bounds, sampled at cfg.fps."""
    left, bottom, right, top = bounds
    lo = np.array([left + margin, bottom + margin])
    hi = np.array([right - margin, top - margin])
    if np.any(hi <= lo):
        raise SkylocError("map too small for a flight at this altitude: use a larger map")
    n = int(cfg.duration_s * cfg.fps)
    pos = lo + (hi - lo) * rng.uniform(0.3, 0.7, 2)
    heading = rng.uniform(0, 2 * np.pi)
    out = []
    dt = 1.0 / cfg.fps
    for _ in range(n):
        out.append(pos.copy())
        heading += rng.normal(0, 0.08)
        step = cfg.speed * dt * np.array([np.sin(heading), np.cos(heading)])
        nxt = pos + step
        if np.any(nxt < lo) or np.any(nxt > hi):  # turn back towards the centre
            centre = (lo + hi) / 2
            heading = np.arctan2(*(centre - pos)) + rng.normal(0, 0.3)
            nxt = pos + cfg.speed * dt * np.array([np.sin(heading), np.cos(heading)])
        pos = np.clip(nxt, lo, hi)
    return np.asarray(out)


def render_flight(map_path: str | Path, video_path: str | Path, telemetry_path: str | Path,
                  cfg: FlightConfig = FlightConfig(), progress=None) -> dict:
    """Write an MP4 of the flight and a telemetry CSV (time, lat, lon, alt, yaw) with ground truth."""
    gmap = GeoMap(map_path)
    image = gmap.read_all()
    transform = (gmap.transform.a, 0.0, gmap.transform.c, 0.0, gmap.transform.e, gmap.transform.f)
    rng = np.random.default_rng(cfg.seed)
    margin = cfg.altitude * 1.2 + 50
    xy = route(gmap.bounds, cfg, rng, margin)
    video_path, telemetry_path = Path(video_path), Path(telemetry_path)
    video_path.parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(video_path), cv2.VideoWriter_fourcc(*"mp4v"), cfg.fps, (cfg.frame_px, cfg.frame_px))
    if not writer.isOpened():
        raise SkylocError(f"cannot write video {video_path}: OpenCV has no mp4v encoder here")
    rows = []
    for i, (x, y) in enumerate(xy):
        nxt = xy[min(i + 1, len(xy) - 1)] if i + 1 < len(xy) else xy[i] + (xy[i] - xy[i - 1])
        yaw = float(np.degrees(np.arctan2(nxt[0] - x, nxt[1] - y)) % 360)
        alt = cfg.altitude + cfg.altitude_jitter * np.sin(i / max(1, len(xy)) * 2 * np.pi)
        cam = Camera(x, y, alt, yaw, cfg.pitch, cfg.hfov, cfg.frame_px, cfg.frame_px)
        frame = photometric(render_view(image, transform, cam), rng, strength=0.7)
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
        lat, lon = gmap.geodesy.to_latlon(x, y)
        rows.append({"time": f"{i / cfg.fps:.3f}", "lat": f"{lat:.8f}", "lon": f"{lon:.8f}",
                     "alt": f"{alt:.2f}", "yaw": f"{yaw:.2f}"})
        if progress:
            progress(1)
    writer.release()
    with open(telemetry_path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    gmap.close()
    return {"frames": len(rows), "video": str(video_path), "telemetry": str(telemetry_path)}
