"""Relocalization: find the frame on the map without a usable track.

Retrieval proposes places: the frame, turned north-up with the heading, is embedded by the
network and matched against the tile cache (at the scale band the height picks, inside a window
when a rough position is known). With an uncertain heading (no yaw, a compass that disagrees)
the frame is embedded turned to several headings and the places of all of them compete.
Registration then verifies the best distinct places, strictly, as wide in heading and height as
the estimate's uncertainty, because nothing else vouches for them. Retrieval alone never
produces a position.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Callable

import numpy as np

from skyloc.runtime.cache import TileCache
from skyloc.runtime.camera import Intrinsics, Pose
from skyloc.runtime.embedder import Embedder
from skyloc.runtime.matcher import Matcher, Matches
from skyloc.runtime.preprocess import preprocess, rotate_north_up
from skyloc.runtime.registration import MapRegistration, Registration


@dataclass
class RelocalizationConfig:
    top_k: int = 10
    candidates: int = 3  # distinct places verified per attempt (each costs a registration)
    radius_footprints: float = 1.0  # search radius around a retrieved tile's centre, in tile footprints
    heading_step_deg: float = 45.0  # an uncertain heading is queried at headings this far apart
    heights_per_try: int = 2  # without altitude, heights tried per attempt (the next attempts try the next)
    search: str = "auto"  # exact | index | auto: the cache's index for bands it wins on (skyloc.runtime.matcher)


@dataclass
class Relocalization:
    registration: Registration | None
    matches: Matches
    tried: int
    pose: Pose | None = None  # the pose the verified registration was made with
    refused: list = None  # (registration, pose) refused only for their rotation or scale


class Relocalizer:
    def __init__(self, embedder: Embedder, cache: TileCache, registration: MapRegistration | None,
                 config: RelocalizationConfig | None = None):
        self.embedder, self.cache, self.registration = embedder, cache, registration
        self.cfg = config or RelocalizationConfig()
        self.matcher = Matcher(cache, self.cfg.search)

    def band(self, ground_m: float | None) -> int | None:
        """The cache's scale band whose tile footprint is closest to what the frame covers."""
        if ground_m is None:
            return None
        fps = np.asarray(self.cache.footprints_m)
        return int(np.argmin(np.abs(np.log(fps / ground_m))))

    def query(self, frame: np.ndarray, intr: Intrinsics, pose: Pose,
              window: tuple[float, float, float] | None = None, headings: list[float] | None = None) -> Matches:
        """Retrieval: the frame's centre square turned north-up, embedded, matched in the cache;
        with several `headings`, one embedding each (one batch) and the best score of each tile."""
        h, w = frame.shape[:2]
        side = min(h, w)
        square = frame[(h - side) // 2:(h - side) // 2 + side, (w - side) // 2:(w - side) // 2 + side]
        heads = headings if headings else [pose.yaw]
        queries = [rotate_north_up(square, yaw) if math.isfinite(yaw) else square for yaw in heads]
        ground_m = None
        if math.isfinite(pose.altitude) and pose.altitude > 0:
            ground_m = queries[0].shape[0] * intr.nadir_gsd(pose.altitude) * intr.width / w
        cfgd = self.embedder.meta.data_config
        descs = self.embedder.embed_tensor(np.stack([preprocess(q, cfgd) for q in queries]))
        band = self.band(ground_m)
        found = []
        for desc in descs:
            matches = self.matcher.search(desc, self.cfg.top_k, band=band, window=window)
            if matches.indices.size == 0 and window is not None:
                matches = self.matcher.search(desc, self.cfg.top_k, band=band)
            found.append(matches)
        if len(found) == 1:
            return found[0]
        best: dict[int, float] = {}
        for m in found:
            for i, sc in zip(m.indices.tolist(), m.scores.tolist()):
                best[i] = max(sc, best.get(i, -math.inf))
        order = sorted(best, key=best.get, reverse=True)[: self.cfg.top_k]
        return Matches(np.array(order, dtype=np.int64), np.array([best[i] for i in order], dtype=np.float32),
                       sum(m.searched for m in found))

    def distinct(self, matches: Matches) -> list[int]:
        """Top tiles at distinct places (more than one footprint apart), best first."""
        tiles = self.cache.tiles
        picked: list[int] = []
        for i in matches.indices:
            p = np.array([tiles["x"][i], tiles["y"][i]])
            fp = float(tiles["footprint_m"][i])
            if all(math.hypot(*(p - np.array([tiles["x"][j], tiles["y"][j]]))) > fp for j in picked):
                picked.append(int(i))
        return picked

    def relocalize(self, frame: np.ndarray, intr: Intrinsics, pose: Pose,
                   window: tuple[float, float, float] | None = None, hypotheses=None,
                   rotation_tol_deg: float | None = None, scale_tol: float | None = None,
                   height_at: Callable[[float, float], float | None] | None = None) -> Relocalization:
        """Retrieval proposes places, registration verifies them (strictly); the first verified wins.

        hypotheses / rotation_tol_deg / scale_tol: how uncertain heading and height are (see
        MapRegistration.register); height_at(x, y): the height at a place (a DEM), else pose's."""
        if self.registration is not None:  # a frame without texture cannot verify anything: skip retrieval
            ff = self.registration.frame_features(frame, intr, pose)
            if ff is None or ff[2] is None or len(ff[2][0]) < 2 * self.registration.cfg.min_inliers:
                return Relocalization(None, Matches(np.zeros(0, np.int64), np.zeros(0, np.float32), 0), 0)
        headings = None
        step = self.cfg.heading_step_deg
        if rotation_tol_deg is not None and rotation_tol_deg >= 180.0:  # no heading at all: the whole circle
            headings = [(pose.yaw + i * step) % 360 for i in range(int(round(360.0 / step)))]
        elif rotation_tol_deg is not None and rotation_tol_deg >= 0.75 * step:  # the estimate and around it
            k = int(math.floor(rotation_tol_deg / step + 0.25))
            headings = [(pose.yaw + i * step) % 360 for i in range(-k, k + 1)]
        matches = self.query(frame, intr, pose, window, headings)
        if self.registration is None or matches.indices.size == 0:
            return Relocalization(None, matches, 0)
        tried = 0
        refused = []
        for i in self.distinct(matches)[: self.cfg.candidates]:
            tile = self.cache.tiles[i]
            radius = self.cfg.radius_footprints * float(tile["footprint_m"])
            tried += 1
            at = pose.moved_to(float(tile["x"]), float(tile["y"]))
            if height_at is not None and (h := height_at(at.x, at.y)) is not None:
                at = replace(at, altitude=h)
            reg = self.registration.register(frame, intr, at, radius, strict=True, hypotheses=hypotheses,
                                             rotation_tol_deg=rotation_tol_deg, scale_tol=scale_tol)
            if reg.ok:
                return Relocalization(reg, matches, tried, at, refused)
            if reg.failed_check:
                refused.append((reg, at))
        return Relocalization(None, matches, tried, None, refused)
