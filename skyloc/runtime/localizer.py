"""The Localizer: camera frame (+ yaw, altitude) -> Estimate, using an embedder and a tile cache.

Steps: derotate north-up by the autopilot's yaw -> pick the scale band by altitude -> embed ->
top-k match (inside a window around the track when there is one) -> score-weighted centre of the
agreeing top tiles -> optional SIFT+RANSAC refinement in the best tile -> Kalman filter with
outlier gating -> confidence and status.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from skyloc.runtime.cache import TileCache
from skyloc.runtime.embedder import Embedder
from skyloc.runtime.kalman import ConstantVelocityFilter
from skyloc.runtime.matcher import Matcher
from skyloc.runtime.preprocess import check_frame, preprocess, rotate_north_up
from skyloc.runtime.refine import Refiner

log = logging.getLogger("skyloc.localizer")

OK, LOW, NO_FIX = "ok", "low-confidence", "no-fix"


@dataclass
class Estimate:
    """One frame's position estimate (what goes to the autopilot)."""

    time: float
    status: str  # ok | low-confidence | no-fix
    lat: float = math.nan
    lon: float = math.nan
    x: float = math.nan  # metres in the cache CRS
    y: float = math.nan
    horizontal_accuracy: float = math.inf  # metres, 1 sigma
    confidence: float = 0.0
    vx: float = 0.0  # east velocity, m/s (filter)
    vy: float = 0.0  # north velocity, m/s
    best_tiles: list[int] = field(default_factory=list)
    best_score: float = 0.0
    refined: bool = False
    inliers: int = 0
    latency_ms: dict[str, float] = field(default_factory=dict)
    message: str = ""

    @property
    def has_position(self) -> bool:
        return self.status != NO_FIX and math.isfinite(self.lat)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class LocalizerConfig:
    top_k: int = 10
    hfov_deg: float = 60.0  # camera horizontal field of view
    camera_pitch_deg: float = 0.0  # camera tilt forward from nadir (gimbal/mount)
    refine: bool = True
    use_filter: bool = True
    ok_confidence: float = 0.6
    low_confidence: float = 0.3
    window_factor: float = 2.5  # search window radius in tile footprints around the track
    gate_chi2: float = 13.8  # 99.9 % for 2 dof
    lost_after: int = 4  # rejected fixes in a row before the track is declared lost
    accel: float = 3.0  # filter motion noise, m/s^2
    refine_candidates: int = 3  # distinct top places tried by the geometric check
    start_confidence: float = 0.9  # unverified retrieval confidence that may start a track
    track_confidence: float = 0.5  # unverified retrieval confidence that is "ok" on a verified track
    verified_track_s: float = 10.0  # how long a geometric check vouches for the track


class Localizer:
    def __init__(self, embedder: Embedder, cache: TileCache, config: LocalizerConfig | None = None,
                 map_path: str | Path | None = None, use_faiss: bool = False):
        self.embedder, self.cache = embedder, cache
        self.cfg = config or LocalizerConfig()
        self.matcher = Matcher(cache, use_faiss=use_faiss)
        self.filter = ConstantVelocityFilter(self.cfg.accel, self.cfg.gate_chi2)
        self.rejections = 0
        self.last_verified: float | None = None  # time of the last geometrically verified fix on track
        self.map = None
        self.refiner = None
        if self.cfg.refine:
            from skyloc.runtime.geo import GeoMap

            src = Path(map_path or cache.manifest["source_map"])
            if src.is_file():
                self.map = GeoMap(src, gsd=cache.manifest["gsd_m"])
                self.refiner = Refiner()
            else:
                log.warning("refinement off: map %s not found (pass --map)", src)

    def reset(self) -> None:
        self.filter.reset()
        self.rejections = 0
        self.last_verified = None

    # -- helpers --------------------------------------------------------------------------------
    def _band(self, ground_m: float | None) -> int | None:
        if ground_m is None:
            return None
        fps = np.asarray(self.cache.footprints_m)
        return int(np.argmin(np.abs(np.log(fps / ground_m))))

    def _retrieval_fix(self, matches, band_fp: float):
        """Score-weighted centre of the top tiles that agree with the best one."""
        tiles = self.cache.tiles
        idx, sc = matches.indices, matches.scores
        xy = np.stack([tiles["x"][idx], tiles["y"][idx]], axis=1).astype(np.float64)
        fp = float(tiles["footprint_m"][idx[0]])
        d = np.linalg.norm(xy - xy[0], axis=1)
        near = d <= fp
        w = np.exp((sc - sc[0]) / 0.02)
        centre = (xy[near] * w[near, None]).sum(0) / w[near].sum()
        agreement = float(w[near].sum() / w.sum())
        far = sc[d > 1.5 * fp]
        margin = float(sc[0] - (far.max() if far.size else sc[-1]))
        conf = 0.5 * min(1.0, max(0.0, margin) / 0.08) + 0.5 * agreement
        return centre, conf, fp

    # -- main -----------------------------------------------------------------------------------
    def locate(self, frame_rgb: np.ndarray, t: float | None = None, yaw_deg: float | None = None,
               altitude_m: float | None = None, pitch_deg: float | None = None) -> Estimate:
        """Estimate the drone's position from one frame.

        yaw_deg: heading (clockwise from north); altitude_m: above ground; pitch_deg: camera tilt
        forward from nadir (default: the configured mount tilt). The frame centre looks
        altitude*tan(pitch) ahead of the drone; that offset is removed from the fix.
        """
        t = time.time() if t is None else float(t)
        lat_ms: dict[str, float] = {}
        t0 = time.perf_counter()
        frame = check_frame(frame_rgb)
        h, w = frame.shape[:2]
        side = min(h, w)
        frame = frame[(h - side) // 2 : (h - side) // 2 + side, (w - side) // 2 : (w - side) // 2 + side]
        m_per_px = None
        if altitude_m is not None and altitude_m > 0:
            m_per_px = 2 * altitude_m * math.tan(math.radians(self.cfg.hfov_deg) / 2) / w
        query = rotate_north_up(frame, yaw_deg) if yaw_deg is not None else frame
        ground_m = query.shape[0] * m_per_px if m_per_px else None
        x = preprocess(query, self.embedder.meta.data_config)[None]
        lat_ms["preprocess"] = (time.perf_counter() - t0) * 1e3

        t1 = time.perf_counter()
        desc = self.embedder.embed_tensor(x)[0]
        lat_ms["embed"] = (time.perf_counter() - t1) * 1e3

        t2 = time.perf_counter()
        band = self._band(ground_m)
        band_fp = self.cache.footprints_m[band] if band is not None else self.cache.footprints_m[0]
        # Search only around the track while a geometric check confirmed it recently: an unverified
        # track searched only around itself could confirm itself forever at a wrong place.
        tracking = self.cfg.use_filter and self.filter.initialized and self._verified_recently(t)
        window = None
        if tracking:
            pred, cov = self.filter.peek(t)
            sigma = float(np.sqrt(max(np.linalg.eigvalsh(cov[:2, :2]))))
            radius = max(self.cfg.window_factor * band_fp, 3 * sigma)
            window = (float(pred[0]), float(pred[1]), radius)
        matches = self.matcher.search(desc, self.cfg.top_k, band=band, window=window)
        if matches.indices.size == 0 and window is not None:  # the window left the map: search all
            matches = self.matcher.search(desc, self.cfg.top_k, band=band)
        lat_ms["match"] = (time.perf_counter() - t2) * 1e3
        if matches.indices.size == 0:
            return self._finish(Estimate(t, NO_FIX, message="no tiles to match"), lat_ms, t0)

        centre, retrieval_conf, fp = self._retrieval_fix(matches, band_fp)
        sigma_fix = fp / 4.0
        est = Estimate(t, NO_FIX, best_tiles=matches.indices[:5].tolist(), best_score=float(matches.scores[0]))

        t3 = time.perf_counter()
        verified = False
        if self.refiner is not None:
            for cand in self._distinct(matches.indices, fp)[: self.cfg.refine_candidates]:
                r = self._refine_in(query, cand, fp, m_per_px)
                if r is not None:
                    centre = np.array([r.x, r.y])
                    sigma_fix = max(2.0 * self.cache.manifest["gsd_m"], 3.0 * 20 / max(r.inliers, 20))
                    est.refined, est.inliers, verified = True, r.inliers, True
                    break
        lat_ms["refine"] = (time.perf_counter() - t3) * 1e3
        pitch = self.cfg.camera_pitch_deg if pitch_deg is None else pitch_deg
        if altitude_m and pitch and yaw_deg is not None:
            ahead = altitude_m * math.tan(math.radians(pitch))
            centre = centre - ahead * np.array([math.sin(math.radians(yaw_deg)), math.cos(math.radians(yaw_deg))])

        t4 = time.perf_counter()
        # A geometric check (homography inliers) is what earns "ok"; retrieval alone caps at
        # low-confidence unless it agrees with an established track (see _filter).
        if verified:
            conf = 0.6 + 0.4 * min(1.0, (est.inliers - 20) / 60)
        else:
            conf = min(retrieval_conf, self.cfg.ok_confidence - 0.05)
        est.confidence = float(conf)
        status = OK if conf >= self.cfg.ok_confidence else LOW if conf >= self.cfg.low_confidence else NO_FIX
        if self.cfg.use_filter:
            status, centre, sigma_fix = self._filter(t, centre, sigma_fix, status, est, verified, retrieval_conf)
        lat_ms["filter"] = (time.perf_counter() - t4) * 1e3
        est.status = status
        if status != NO_FIX:
            est.x, est.y = float(centre[0]), float(centre[1])
            est.lat, est.lon = (float(v) for v in self.cache.geodesy.to_latlon(est.x, est.y))
            est.horizontal_accuracy = float(sigma_fix)
        return self._finish(est, lat_ms, t0)

    @staticmethod
    def _finish(est: Estimate, lat_ms: dict, t0: float) -> Estimate:
        lat_ms["total"] = (time.perf_counter() - t0) * 1e3
        est.latency_ms = {k: round(v, 2) for k, v in lat_ms.items()}
        return est

    def _distinct(self, indices: np.ndarray, fp: float) -> list[int]:
        """Top tiles at distinct places (more than one footprint apart), best first."""
        xy = np.stack([self.cache.tiles["x"][indices], self.cache.tiles["y"][indices]], axis=1)
        picked: list[int] = []
        for i, p in zip(indices, xy):
            if all(np.hypot(*(p - q)) > fp for q in xy[[list(indices).index(j) for j in picked]]):
                picked.append(int(i))
        return picked

    def _refine_in(self, query, tile_index: int, fp: float, m_per_px: float | None):
        tile = self.cache.tiles[tile_index]
        size = 1.6 * fp
        # the map patch at about the frame's (shrunk) scale, at most 512 px: SIFT cost grows with area
        px = int(min(512, max(256, size / (m_per_px or self.cache.manifest["gsd_m"]))))
        patch = self.map.read_window(float(tile["x"]), float(tile["y"]), size, px)
        origin = (float(tile["x"]) - size / 2, float(tile["y"]) + size / 2)
        r = self.refiner.refine(query, patch, origin, size / px, m_per_px)
        if r is not None and math.hypot(r.x - tile["x"], r.y - tile["y"]) <= fp:
            return r
        return None

    def _verified_recently(self, t: float) -> bool:
        return self.last_verified is not None and t - self.last_verified <= self.cfg.verified_track_s

    def _filter(self, t, centre, sigma, status, est, verified: bool, retrieval_conf: float):
        f = self.filter
        if not f.initialized:
            if verified or retrieval_conf >= self.cfg.start_confidence:  # only a sure fix starts a track
                f.init(t, centre, sigma)
                self.last_verified = t if verified else None
                est.message = "track started"
            return status, centre, sigma
        f.predict(t)
        if status != NO_FIX and f.update(centre, sigma):
            self.rejections = 0
            if verified:
                self.last_verified = t
            elif retrieval_conf >= self.cfg.track_confidence and self._verified_recently(t):
                status = OK  # consistent with a recently verified track and distinctive enough
        else:
            if status != NO_FIX:
                self.rejections += 1
                est.message = f"fix rejected by the filter gate ({self.rejections} in a row)"
                if self.rejections >= self.cfg.lost_after:
                    f.reset()
                    self.last_verified = None
                    self.rejections = 0
                    est.message = "track lost: searching the whole map"
                    return (NO_FIX, centre, sigma)
            # no usable measurement: report the prediction, never as "ok"
            status = LOW if f.position_sigma < 3 * est_footprint(self.cache) else NO_FIX
        est.vx, est.vy = float(f.x[2]), float(f.x[3])
        return status, f.x[:2].copy(), f.position_sigma


def est_footprint(cache: TileCache) -> float:
    return float(np.median(cache.footprints_m))
