"""Synthetic flights: a route over a map, rendered to a video with a telemetry CSV (ground truth).

Two kinds of route: `wander` (a smooth random walk that turns back at the edges) and `turns`
(straight legs joined by coordinated turns, the first of at least `turn_deg`). The video can look
like a real camera's: a white balance of its own, exposure that drifts and jumps (auto exposure),
motion blur along the flight direction and the odd shaken frame, sensor noise and compression.
"""
from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from skyloc.errors import SkylocError
from skyloc.runtime.geo import GeoMap
from skyloc.synth.render import Camera, motion_blur, photometric, render_view, render_view_lens, render_view_terrain


@dataclass
class FlightConfig:
    duration_s: float = 60.0
    fps: float = 2.0
    speed: float = 12.0  # m/s
    altitude: float = 150.0
    altitude_jitter: float = 10.0
    pitch: float = 5.0  # camera tilt forward from nadir
    hfov: float = 60.0
    width: int = 320
    height: int = 320
    seed: int = 0
    route: str = "wander"  # wander | turns | circle (one lap per duration: a video that loops seamlessly)
    turn_deg: float = 120.0  # turns: the first turn's size (the heading changes at least this much)
    turn_rate: float = 12.0  # deg/s in a turn
    exposure: float = 0.0  # 0: per-frame random photometrics (training-like); > 0: a camera's drifting exposure
    exposure_time: float = 0.0  # s: motion blur along the flight (0: none)
    shake: float = 0.0  # share of frames blurred by vibration
    lens: str | None = None  # a calibration file (OpenCV, ROS camera_info, Kalibr): frames are rendered
    #                          through that lens (its size is width x height; hfov is then unused)
    dem: str | None = None  # hills (GeoTIFF in the map's CRS, e.g. write_dem): the drone holds `altitude`
    #                         above the take-off point, as a barometer reports it; the CSV's alt is that
    #                         (agl holds the true height above the ground)


def _wander(n: int, dt: float, cfg: FlightConfig, rng: np.random.Generator, lo, hi) -> np.ndarray:
    pos = lo + (hi - lo) * rng.uniform(0.3, 0.7, 2)
    heading = rng.uniform(0, 2 * np.pi)
    out = []
    for _ in range(n):
        out.append(pos.copy())
        heading += rng.normal(0, 0.08 * math.sqrt(2.0 * dt))
        nxt = pos + cfg.speed * dt * np.array([np.sin(heading), np.cos(heading)])
        if np.any(nxt < lo) or np.any(nxt > hi):  # turn back towards the centre
            centre = (lo + hi) / 2
            heading = np.arctan2(*(centre - pos)) + rng.normal(0, 0.3)
            nxt = pos + cfg.speed * dt * np.array([np.sin(heading), np.cos(heading)])
        pos = np.clip(nxt, lo, hi)
    return np.asarray(out)


def _turns(n: int, dt: float, cfg: FlightConfig, rng: np.random.Generator, lo, hi) -> np.ndarray:
    """Straight legs and turns at `turn_rate`; the whole path is centred in the allowed box."""
    t = np.arange(n) * dt
    T = n * dt
    turns = [(0.25 * T, rng.choice([-1, 1]) * cfg.turn_deg), (0.62 * T, rng.choice([-1, 1]) * rng.uniform(50, 100))]
    rate = np.zeros(n)
    for start, angle in turns:
        dur = abs(angle) / cfg.turn_rate
        rate[(t >= start) & (t < start + dur)] = math.copysign(math.radians(cfg.turn_rate), angle)
    heading = rng.uniform(0, 2 * np.pi) + np.cumsum(rate) * dt + 0.05 * np.sin(2 * np.pi * t / 9.0)
    step = cfg.speed * dt * np.column_stack([np.sin(heading), np.cos(heading)])
    xy = np.cumsum(step, axis=0) - step[0]
    span = xy.max(0) - xy.min(0)
    if np.any(span > hi - lo):
        raise SkylocError(f"the route ({span[0]:.0f} x {span[1]:.0f} m) does not fit the map at this altitude: "
                          "use a larger map, a shorter --duration or a lower --speed")
    return xy - (xy.min(0) + xy.max(0)) / 2 + (lo + hi) / 2


def _circle(n: int, dt: float, cfg: FlightConfig, rng: np.random.Generator, lo, hi) -> np.ndarray:
    """One lap of a circle in the duration, so the last frame leads straight into the first."""
    radius = cfg.speed * n * dt / (2 * np.pi)
    if 2 * radius > float(min(hi - lo)):
        raise SkylocError(f"a circle of {radius:.0f} m radius does not fit the map: use a shorter --duration or "
                          "a lower --speed")
    a = rng.uniform(0, 2 * np.pi) + 2 * np.pi * np.arange(n) / n
    return (lo + hi) / 2 + radius * np.column_stack([np.cos(a), np.sin(a)])


def route(bounds, cfg: FlightConfig, rng: np.random.Generator, margin: float) -> np.ndarray:
    """Route [T,2] (x, y metres) inside bounds, sampled at cfg.fps."""
    left, bottom, right, top = bounds
    lo = np.array([left + margin, bottom + margin])
    hi = np.array([right - margin, top - margin])
    if np.any(hi <= lo):
        raise SkylocError("map too small for a flight at this altitude: use a larger map")
    n = int(round(cfg.duration_s * cfg.fps))
    if cfg.route == "turns":
        return _turns(n, 1.0 / cfg.fps, cfg, rng, lo, hi)
    if cfg.route == "wander":
        return _wander(n, 1.0 / cfg.fps, cfg, rng, lo, hi)
    if cfg.route == "circle":
        return _circle(n, 1.0 / cfg.fps, cfg, rng, lo, hi)
    raise SkylocError(f"unknown route {cfg.route!r}: use wander, turns or circle")


class CameraLook:
    """How a real camera renders a flight: fixed white balance, drifting and jumping exposure."""

    def __init__(self, cfg: FlightConfig, n: int, rng: np.random.Generator):
        self.cfg, self.rng = cfg, rng
        s = cfg.exposure
        self.cast = (1 + rng.normal(0, 0.06 * s, 3)).astype(np.float32)
        self.contrast = float(rng.uniform(0.85, 1.1))
        self.haze = float(rng.uniform(0.0, 0.12 * s))
        t = np.arange(n) / cfg.fps
        drift = sum(rng.uniform(0.05, 0.12) * s * np.sin(2 * np.pi * t / rng.uniform(6, 20) + rng.uniform(0, 6))
                    for _ in range(2))
        steps = np.zeros(n)
        for when in rng.uniform(0.1, 0.9, 3) * t[-1] if n > 1 else []:
            steps[t >= when] += rng.choice([-1, 1]) * rng.uniform(0.15, 0.3) * s  # auto exposure jumps
        self.log_gain = drift + steps

    def __call__(self, img: np.ndarray, i: int, blur_px: float) -> np.ndarray:
        x = img.astype(np.float32)
        x = (x - 128) * self.contrast + 128
        x = x * self.cast * math.exp(self.log_gain[i])
        x = x * (1 - self.haze) + 210 * self.haze
        out = np.clip(x, 0, 255).astype(np.uint8)
        if blur_px > 0:
            out = motion_blur(out, 0.0, blur_px)  # the ground streaks towards the bottom of the frame
        if self.cfg.shake and self.rng.random() < self.cfg.shake:
            a = self.rng.uniform(0, 2 * np.pi)
            r = self.rng.uniform(3, 7)
            out = motion_blur(out, r * math.cos(a), r * math.sin(a))
        noise = self.rng.normal(0, 2.5, out.shape).astype(np.float32)
        return np.clip(out.astype(np.float32) + noise, 0, 255).astype(np.uint8)


def render_flight(map_path: str | Path, video_path: str | Path, telemetry_path: str | Path,
                  cfg: FlightConfig = FlightConfig(), progress=None) -> dict:
    """Write an MP4 of the flight and a telemetry CSV (time, lat, lon, alt, yaw) with ground truth."""
    gmap = GeoMap(map_path)
    image = gmap.read_all()
    transform = (gmap.transform.a, 0.0, gmap.transform.c, 0.0, gmap.transform.e, gmap.transform.f)
    rng = np.random.default_rng(cfg.seed)
    footprint = cfg.altitude * 1.2 * math.hypot(1.0, cfg.height / cfg.width) * math.tan(math.radians(cfg.hfov) / 2)
    lens = None
    if cfg.lens:
        from skyloc.runtime.calibration import load_calibration

        lens = load_calibration(cfg.lens).scaled(cfg.width, cfg.height)
        footprint = cfg.altitude * 1.2 * float(np.linalg.norm(lens.pixel_rays(), axis=-1).max())
    margin = footprint + cfg.altitude * math.tan(math.radians(cfg.pitch)) + 20
    xy = route(gmap.bounds, cfg, rng, margin)
    video_path, telemetry_path = Path(video_path), Path(telemetry_path)
    video_path.parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(video_path), cv2.VideoWriter_fourcc(*"mp4v"), cfg.fps, (cfg.width, cfg.height))
    if not writer.isOpened():
        raise SkylocError(f"cannot write video {video_path}: OpenCV has no mp4v encoder here")
    look = CameraLook(cfg, len(xy), rng) if cfg.exposure > 0 else None
    elevation = home = None
    if cfg.dem:
        from skyloc.runtime.terrain import Terrain

        terrain = Terrain(cfg.dem, gmap.crs, gmap.bounds)
        cols, rows_ = np.meshgrid(np.arange(image.shape[1]) + 0.5, np.arange(image.shape[0]) + 0.5)
        xs, ys = transform[2] + cols * transform[0], transform[5] + rows_ * transform[4]
        elevation = np.vectorize(terrain.elevation)(xs[::8, ::8], ys[::8, ::8]).astype(np.float32)
        elevation = cv2.resize(np.nan_to_num(elevation, nan=float(np.nanmean(elevation))),
                               (image.shape[1], image.shape[0]), interpolation=cv2.INTER_LINEAR)
        home = terrain.elevation(*xy[0])
    rows = []
    c = gmap.geodesy.to_latlon(*xy[0])
    grid_rotation = gmap.geodesy.grid_rotation(*c)  # the CSV's yaw is a true bearing, as a compass gives
    for i, (x, y) in enumerate(xy):
        nxt = xy[(i + 1) % len(xy)] if cfg.route == "circle" else xy[i + 1] if i + 1 < len(xy) else xy[i] + (xy[i] - xy[i - 1])
        yaw = float(np.degrees(np.arctan2(nxt[0] - x, nxt[1] - y)) % 360)
        alt = cfg.altitude + cfg.altitude_jitter * np.sin(i / max(1, len(xy)) * 2 * np.pi)  # periodic: loops too
        cam = Camera(x, y, alt, yaw, cfg.pitch, cfg.hfov, cfg.width, cfg.height)
        agl = alt
        if elevation is not None:
            ground = float(cv2.getRectSubPix(elevation, (1, 1), ((x - transform[2]) / transform[0],
                                                                 (y - transform[5]) / transform[4]))[0, 0])
            agl = alt + home - ground
            cam = Camera(x, y, agl, yaw, cfg.pitch, cfg.hfov, cfg.width, cfg.height)
            view = render_view_terrain(image, transform, cam, elevation, home + alt)
        elif lens is not None:
            view = render_view_lens(image, transform, cam, lens)
        else:
            view = render_view(image, transform, cam)
        if look is None:
            frame = photometric(view, rng, strength=0.7)
        else:
            frame = look(view, i, cfg.speed * cfg.exposure_time / cam.intrinsics.nadir_gsd(agl))
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
        lat, lon = gmap.geodesy.to_latlon(x, y)
        rows.append({"time": f"{i / cfg.fps:.3f}", "lat": f"{lat:.8f}", "lon": f"{lon:.8f}",
                     "alt": f"{alt:.2f}", "yaw": f"{(yaw - grid_rotation) % 360:.2f}", **({"agl": f"{agl:.2f}"} if elevation is not None else {})})
        if progress:
            progress(1)
    writer.release()
    with open(telemetry_path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    gmap.close()
    yaws = np.unwrap(np.radians([float(r["yaw"]) for r in rows]))
    out = {"frames": len(rows), "video": str(video_path), "telemetry": str(telemetry_path),
           "yaw_change_deg": float(np.degrees(yaws.max() - yaws.min()))}
    if elevation is not None:
        agls = [float(r["agl"]) for r in rows]
        out.update(home_elevation_m=float(home), agl_range_m=(min(agls), max(agls)))
    return out
