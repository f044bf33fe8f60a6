"""Refinement inside the best tile: local features (SIFT) + RANSAC homography with OpenCV.

Retrieval places the drone within a tile; matching the frame to the map pixels of that tile
moves the estimate to the frame centre's exact spot when enough inliers agree.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


@dataclass
class Refinement:
    x: float
    y: float
    inliers: int
    inlier_ratio: float
    scale: float  # map metres per query pixel, from the homography


class Refiner:
    def __init__(self, min_inliers: int = 20, min_ratio: float = 0.25, features: int = 1000, max_side: int = 384):
        self.sift = cv2.SIFT_create(nfeatures=features)
        self.max_side = max_side  # frames are matched at most this large: SIFT time grows with area
        self.matcher = cv2.BFMatcher(cv2.NORM_L2)
        self.min_inliers, self.min_ratio = min_inliers, min_ratio

    def refine(self, query_rgb: np.ndarray, map_rgb: np.ndarray, map_origin_xy: tuple[float, float],
               map_m_per_px: float, expected_m_per_px: float | None = None) -> Refinement | None:
        """Locate the query's centre in a north-up map patch whose top-left pixel is at map_origin_xy."""
        shrink = min(1.0, self.max_side / max(query_rgb.shape[:2]))
        if shrink < 1.0:
            query_rgb = cv2.resize(query_rgb, None, fx=shrink, fy=shrink, interpolation=cv2.INTER_AREA)
            if expected_m_per_px:
                expected_m_per_px /= shrink
        gq = cv2.cvtColor(query_rgb, cv2.COLOR_RGB2GRAY)
        gm = cv2.cvtColor(map_rgb, cv2.COLOR_RGB2GRAY)
        kq, dq = self.sift.detectAndCompute(gq, None)
        km, dm = self.sift.detectAndCompute(gm, None)
        if dq is None or dm is None or len(kq) < 8 or len(km) < 8:
            return None
        pairs = self.matcher.knnMatch(dq, dm, k=2)
        good = [m for m, n in (p for p in pairs if len(p) == 2) if m.distance < 0.8 * n.distance]
        if len(good) < self.min_inliers:
            return None
        src = np.float32([kq[m.queryIdx].pt for m in good])
        dst = np.float32([km[m.trainIdx].pt for m in good])
        h, mask = cv2.findHomography(src, dst, cv2.USAC_MAGSAC, 4.0, maxIters=2000, confidence=0.999)
        if h is None:
            return None
        inliers = int(mask.sum())
        ratio = inliers / len(good)
        if inliers < self.min_inliers or ratio < self.min_ratio:
            return None
        a = h[:2, :2] / h[2, 2]
        det = float(np.linalg.det(a))
        if det <= 0:  # a mirror image is never a valid view of the ground
            return None
        scale = float(np.sqrt(det)) * map_m_per_px
        if expected_m_per_px and not 0.6 < scale / expected_m_per_px < 1.6:
            return None
        cy, cx = query_rgb.shape[0] / 2.0, query_rgb.shape[1] / 2.0
        p = h @ np.array([cx, cy, 1.0])
        col, row = p[0] / p[2], p[1] / p[2]
        x = map_origin_xy[0] + col * map_m_per_px
        y = map_origin_xy[1] - row * map_m_per_px
        return Refinement(float(x), float(y), inliers, float(ratio), scale)
