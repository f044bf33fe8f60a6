"""Relocalization: find the frame on the map without a usable track.

Retrieval proposes places: the frame, turned north-up with the yaw, is embedded by the network
and matched against the tile cache (at the scale band the altitude picks, inside a window when
a rough position is known). Registration then verifies the best distinct places, strictly,
because nothing else vouches for them. Retrieval alone never produces a position.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

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


@dataclass
class Relocalization:
    registration: Registration | None
    matches: Matches
    tried: int


class Relocalizer:
    def __init__(self, embedder: Embedder, cache: TileCache, registration: MapRegistration | None,
                 config: RelocalizationConfig | None = None, use_faiss: bool = False):
        self.embedder, self.cache, self.registration = embedder, cache, registration
        self.cfg = config or RelocalizationConfig()
        self.matcher = Matcher(cache, use_faiss=use_faiss)

    def band(self, ground_m: float | None) -> int | None:
        """The cache's scale band whose tile footprint is closest to what the frame covers."""
        if ground_m is None:
            return None
        fps = np.asarray(self.cache.footprints_m)
        return int(np.argmin(np.abs(np.log(fps / ground_m))))

    def query(self, frame: np.ndarray, intr: Intrinsics, pose: Pose,
              window: tuple[float, float, float] | None = None) -> Matches:
        """Retrieval: the frame's centre square turned north-up, embedded, matched in the cache."""
        h, w = frame.shape[:2]
        side = min(h, w)
        square = frame[(h - side) // 2:(h - side) // 2 + side, (w - side) // 2:(w - side) // 2 + side]
        query = rotate_north_up(square, pose.yaw) if math.isfinite(pose.yaw) else square
        ground_m = None
        if math.isfinite(pose.altitude) and pose.altitude > 0:
            ground_m = query.shape[0] * intr.nadir_gsd(pose.altitude) * intr.width / w
        desc = self.embedder.embed_tensor(preprocess(query, self.embedder.meta.data_config)[None])[0]
        band = self.band(ground_m)
        matches = self.matcher.search(desc, self.cfg.top_k, band=band, window=window)
        if matches.indices.size == 0 and window is not None:
            matches = self.matcher.search(desc, self.cfg.top_k, band=band)
        return matches

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
                   window: tuple[float, float, float] | None = None) -> Relocalization:
        """Retrieval proposes places, registration verifies them (strictly); the first verified wins."""
        matches = self.query(frame, intr, pose, window)
        if self.registration is None or matches.indices.size == 0:
            return Relocalization(None, matches, 0)
        tried = 0
        for i in self.distinct(matches)[: self.cfg.candidates]:
            tile = self.cache.tiles[i]
            radius = self.cfg.radius_footprints * float(tile["footprint_m"])
            tried += 1
            reg = self.registration.register(frame, intr, pose.moved_to(float(tile["x"]), float(tile["y"])), radius,
                                             strict=True)
            if reg.ok:
                return Relocalization(reg, matches, tried)
        return Relocalization(None, matches, tried)
