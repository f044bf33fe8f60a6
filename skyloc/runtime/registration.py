"""Map registration: where exactly a frame lies on the map, near a predicted position.

The frame is warped north-up onto the ground at a working resolution with its own attitude and
altitude (so yaw, scale and tilt are already undone), the map window that the prediction allows
is read at the same resolution, and local features on contrast-normalised grey images (colour
frames and grey maps meet there) are matched. A similarity fitted with RANSAC must then pass
checks before the result counts: enough inliers and a high enough share, rotation and scale
close to what telemetry said, inliers spread over the frame, the position inside the search
area, and no second, different place that fits almost as well. Only such a verified
registration earns an "ok" position.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field, replace

import cv2
import numpy as np

from skyloc.runtime.camera import Intrinsics, Pose, footprint, image_to_ground, project, world_from_camera
from skyloc.runtime.features import MapFeatures, StoredLevel, describe, make_detector
from skyloc.runtime.geo import GeoMap
from skyloc.runtime.preprocess import to_grey

log = logging.getLogger("skyloc.registration")


@dataclass
class RegistrationConfig:
    features: str = "sift"  # RootSIFT on contrast-normalised grey
    max_features: int = 4000
    ratio: float = 0.9  # Lowe's ratio test (among the pairs geometry allows, so it can be loose)
    min_inliers: int = 12
    min_inlier_ratio: float = 0.1
    max_log10_nfa: float = -3.0  # a-contrario: expected chance agreements of this many inliers, at most
    max_rotation_deg: float = 8.0  # after the north-up warp: what is left is telemetry yaw error
    split_rotation_deg: float = 12.0  # wider heading searches run as narrow ones 2 x max_rotation_deg apart ...
    split_max_features: int = 800  # ... for frames with fewer features than this (`split_headings`)
    max_scale_error: float = 0.12  # after the warp to the map's resolution: altitude error
    ransac_px: float = 2.5
    min_spread: float = 0.15  # inliers' convex hull, as a share of the frame's area on the ground
    ambiguity: float = 0.6  # a second place with this share of the inliers makes the result ambiguous
    min_frame_px: int = 170  # the warped frame's shorter side at the working resolution, at least (frames coarse
    # on the map are worked finer than it: NAIP at 1000 m, 140 px -> 170 px took the first fix from never to 7 s;
    # 200 px lost one of 11 brighton photos)
    max_window_px: int = 2048  # largest map window side read for one registration
    sigma_floor_px: float = 0.5  # registration accuracy cannot beat this share of a working pixel
    max_angle_deg: float = 30.0  # keypoint orientations of a match may differ this much (both north-up)
    max_size_ratio: float = 1.8  # keypoint sizes of a match may differ this much (both at one scale)
    yaw_flip_ok: bool = False  # also accept the frame turned by 180 deg (gimbal yaw at nadir is ambiguous)
    pnp: bool = True  # solve the camera's pose on the map (attitude-free position) when it is well determined
    pnp_min_inliers: int = 40
    pnp_min_tilt_deg: float = 3.0  # without a DEM, solve the pose only for cameras tilted this much (airframe-fixed)
    pnp_sigma_floor: float = 0.005  # a solved pose's 1-sigma is at least this share of the height: the halves'
    # spread misses a bias the solve shares with them (24 leaning views at 120 m: errors up to 1.7 m, spread 0.2-0.5 m)


@dataclass
class Registration:
    ok: bool
    x: float = math.nan  # the drone's ground position (nadir), map CRS metres
    y: float = math.nan
    sigma: float = math.inf  # 1-sigma per axis, metres (image matching only; attitude error comes on top)
    inliers: int = 0
    matches: int = 0
    inlier_ratio: float = 0.0
    rotation_deg: float = 0.0
    scale: float = 1.0
    spread: float = 0.0
    work_gsd: float = 0.0
    corners: np.ndarray | None = field(default=None, repr=False)  # frame footprint on the map [4,2]
    reason: str = ""
    failed_check: str = ""  # rotation | scale: a good match refused only for disagreeing with the pose
    rotation_sigma_deg: float = 2.0  # how well rotation_deg measures the heading (1-sigma)
    pose_solved: bool = False  # the position came from the camera pose solved on the map (PnP)
    tilt_correction_m: float = 0.0  # how far that moved it from where the telemetry's attitude put it
    attitude_error_deg: float = math.nan  # angle between the solved optical axis and the telemetry's
    attitude_error_axis: np.ndarray | None = None  # solved minus telemetry optical axis (world, radians)
    attitude_error_sigma_deg: float = math.nan  # ... and its 1-sigma (the solved tilt's own uncertainty)
    inlier_src: np.ndarray | None = field(default=None, repr=False)  # inlier matches (warped frame px)
    inlier_dst: np.ndarray | None = field(default=None, repr=False)  # ... and map window px
    scale_sigma: float = 0.03  # how well scale measures log(height)


def wrap_deg(deg: float) -> float:
    """An angle in (-180, 180]."""
    return -((-deg + 180.0) % 360.0 - 180.0)


def split_headings(hyps: list[tuple[float, float]], rot_tol: float, step_tol: float):
    """A wide heading search as narrow ones: each (heading, height) hypothesis becomes headings
    2 * step_tol apart out to rot_tol either side (the whole circle at 180), nearest first, for
    the caller to search each a little wider than step_tol (neighbours overlap). A frame coarse
    on the map has few features, and a wide search lets so many wrong pairs compete that the
    ratio test drops the true ones (NAIP at 1000 m, at the true place: 3-7 inliers over the whole
    circle, 14-30 in 16 deg steps); the a-contrario penalty already counts the narrow tests
    (rot_tol / step_tol of them). Returns the hypotheses and, for each new heading, the one it
    came from."""
    step = 2.0 * step_tol
    n = int(math.ceil((rot_tol - step_tol) / step - 1e-9))
    offsets = [0.0] + [s * i * step for i in range(1, n + 1) for s in (1.0, -1.0)]
    out, origin = [], {}
    for dh, k in hyps:
        seen = set()
        for o in offsets:
            h = wrap_deg(dh + o)
            key = round(h % 360.0, 6)
            if key in seen:  # the whole circle: +180 and -180 are one heading
                continue
            seen.add(key)
            out.append((h, k))
            origin.setdefault(h, dh)
    return out, origin


def log10_nfa(n: int, k: int, p: float) -> float:
    """log10 of the expected number of places where k of n random matches would agree by chance
    (a-contrario test, as in ORSA): p is the chance that one random match agrees with a place."""
    if k <= 0 or n <= 0 or p <= 0:
        return 0.0
    p = min(p, 1.0)
    terms = [math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) + i * math.log(p)
             + (n - i) * math.log1p(-p) if p < 1 else 0.0 for i in range(k, n + 1)]
    top = max(terms)
    log_tail = top + math.log(sum(math.exp(t - top) for t in terms))
    return (log_tail + math.log(1.0 / p)) / math.log(10)


class MapRegistration:
    """Registers frames against one map (GeoMap) around a predicted position."""

    def __init__(self, gmap: GeoMap, config: RegistrationConfig | None = None):
        self.map = gmap
        self.cfg = config or RegistrationConfig()
        self.detector = make_detector(self.cfg.features, self.cfg.max_features)
        self.tile_detector = make_detector(self.cfg.features, 0)
        self._map_features: dict[float, MapFeatures] = {}
        self.stored: dict[float, StoredLevel] = {}  # map features read from the cache's store, by GSD
        self._frame_cache: tuple | None = None
        self.terrain = None  # a DEM (skyloc.runtime.terrain.Terrain): the pose is solved on the real ground

    def map_features(self, gsd: float) -> MapFeatures:
        key = round(gsd, 4)
        if key not in self._map_features:
            if key not in self.stored:
                log.info("map features at %.4f m/px are not stored with the cache: detected in flight as needed "
                         "(store them with `skyloc map-features CACHE --gsd %.4f`)", gsd, gsd)
            self._map_features[key] = MapFeatures(self.map, gsd, self.tile_detector, self.stored.get(key))
        return self._map_features[key]

    def work_gsd(self, intr: Intrinsics, pose: Pose) -> float:
        """Working resolution: the map's, unless the frame is coarser; finer when the frame would be
        tiny. Quantised to quarter octaves of the map's GSD so map features are reused across frames."""
        frame_gsd = intr.nadir_gsd(pose.altitude)
        g = max(self.map.gsd, frame_gsd)
        short_m = min(intr.width, intr.height) * frame_gsd
        if short_m / g < self.cfg.min_frame_px:  # small frames: work finer (down to the frame's own GSD)
            g = max(frame_gsd, short_m / self.cfg.min_frame_px)
        level = math.floor(4 * math.log2(g / self.map.gsd) + 1e-6)
        return self.map.gsd * 2.0 ** (level / 4)

    def warp_frame(self, frame: np.ndarray, intr: Intrinsics, pose: Pose, gsd: float):
        """The frame on the ground, north-up at `gsd` m/px: (grey image, valid mask, origin) where
        origin is the ground offset (east, north) of pixel (0, 0) from the drone's nadir point."""
        h, w = frame.shape[:2]
        grey = to_grey(frame)
        shrink = min(1.0, 1.5 * intr.nadir_gsd(pose.altitude) / gsd * (w / intr.width))
        if shrink < 1.0:  # pre-shrink to about the working scale: warping a big image aliases
            grey = cv2.resize(grey, (max(8, round(w * shrink)), max(8, round(h * shrink))), interpolation=cv2.INTER_AREA)
        intr_s = intr.scaled(grey.shape[1], grey.shape[0])
        nadir_pose = pose.moved_to(0.0, 0.0)
        corners = footprint(intr_s, nadir_pose)
        if corners is None:
            return None
        e0, n1 = corners[:, 0].min(), corners[:, 1].max()
        wpx = int(math.ceil((corners[:, 0].max() - e0) / gsd))
        hpx = int(math.ceil((n1 - corners[:, 1].min()) / gsd))
        if wpx < 16 or hpx < 16 or wpx * hpx > 4_000_000:
            return None
        ground_to_work = np.array([[1 / gsd, 0, -e0 / gsd], [0, -1 / gsd, n1 / gsd], [0, 0, 1]])
        h_img = ground_to_work @ image_to_ground(intr_s, nadir_pose)
        warped = cv2.warpPerspective(grey, h_img, (wpx, hpx), flags=cv2.INTER_LINEAR)
        mask = cv2.warpPerspective(np.full(grey.shape, 255, np.uint8), h_img, (wpx, hpx), flags=cv2.INTER_NEAREST)
        mask = cv2.erode(mask, np.ones((5, 5), np.uint8)) > 0
        return warped, mask, (float(e0), float(n1)), h_img, intr_s

    def _features(self, grey: np.ndarray, mask: np.ndarray):
        """The frame's keypoints (xy [N,2], angle deg [N], size [N]) and RootSIFT descriptors."""
        return describe(grey, mask, self.detector)

    def _match(self, f, m, target: np.ndarray, reach_px: float, extra_deg: float = 0.0, extra_scale: float = 0.0):
        """Ratio-test matches among the pairs that geometry allows.

        Both images are north-up at one scale, so a frame keypoint can only match a map keypoint
        of similar orientation and size that lies within `reach_px` of its `target` (where it
        lands if the drone is at the centre of the search area). Frame keypoints are bucketed by
        target cell, and in big buckets (relocalization's wide reach) by orientation and size too,
        so descriptor distances are computed only for pairs that can pass.
        """
        fxy, fang, fsize, fdesc = f
        mxy, mang, msize, mdesc = m
        cfg = self.cfg
        angle_lim = min(180.0, cfg.max_angle_deg + extra_deg)
        cos_max = math.cos(math.radians(angle_lim))
        log_size = math.log(cfg.max_size_ratio) + math.log1p(extra_scale)
        cell = max(reach_px, 24.0)
        mkeys = np.floor(mxy / cell).astype(np.int64)
        fkeys = np.floor(target / cell).astype(np.int64)
        # orientation bins at least angle_lim wide: a pair can only join neighbouring bins
        n_bins = int(360.0 // angle_lim) if angle_lim <= 60.0 else 0
        fbin = (np.floor(fang % 360.0 / (360.0 / n_bins)).astype(np.int64) % n_bins) if n_bins else None
        mbin = (np.floor(mang % 360.0 / (360.0 / n_bins)).astype(np.int64) % n_bins) if n_bins else None
        fa, ma = np.radians(fang), np.radians(mang)
        fcs = np.column_stack([np.cos(fa), np.sin(fa)]).astype(np.float32)  # cos(a - b) = [cos a, sin a] . [cos b, sin b]
        mcs = np.column_stack([np.cos(ma), np.sin(ma)]).astype(np.float32)
        fl, ml = np.log(np.maximum(fsize, 1e-3)).astype(np.float32), np.log(np.maximum(msize, 1e-3)).astype(np.float32)
        reach2 = np.float32(reach_px * reach_px)
        src, dst = [], []

        def pairs(fi: np.ndarray, mj: np.ndarray, origin: np.ndarray) -> None:
            # float32 about the bucket's corner: exact enough for a distance test, 10x cheaper than float64
            t = (target[fi] - origin).astype(np.float32)
            q = (mxy[mj] - origin).astype(np.float32)
            q_t2, qq, mcs_j, ml_j, mdesc_j = -2.0 * q.T, (q * q).sum(1), mcs[mj], ml[mj], mdesc[mj]
            # rows in chunks of about 2M pairs: the masks stay in cache (a wide relocalization,
            # 1300 x 32000 pairs, runs 2.5x faster than in one pass over 170 MB arrays)
            step = max(1, 2_000_000 // len(mj))
            for a in range(0, len(fi), step):
                c, tc = fi[a:a + step], t[a:a + step]
                d = tc @ q_t2  # |t - q|^2 = |t|^2 + |q|^2 - 2 t.q, in place
                d += (tc * tc).sum(1)[:, None]
                d += qq[None, :]
                bad = d > reach2
                if cos_max > -1.0:
                    bad |= (fcs[c] @ mcs_j.T) < cos_max
                bad |= np.abs(fl[c, None] - ml_j[None, :]) > log_size
                sim = fdesc[c] @ mdesc_j.T  # RootSIFT rows have unit length: distance^2 = 2 - 2 sim
                np.putmask(sim, bad, -2.0)
                rows = np.arange(len(c))
                best = sim.argmax(axis=1)
                s1 = sim[rows, best].copy()
                sim[rows, best] = -2.0
                second = sim.max(axis=1) if sim.shape[1] > 1 else np.full(len(c), -2.0, np.float32)
                d1 = np.sqrt(np.maximum(0.0, 2.0 - 2.0 * s1))
                d2 = np.sqrt(np.maximum(0.0, 2.0 - 2.0 * second))
                keep = (s1 > -2.0) & np.where(second > -2.0, d1 < cfg.ratio * d2, d1 < 0.5)
                src.append(fxy[c[keep]])
                dst.append(mxy[mj[best[keep]]])

        # size bins as wide as the size tolerance: a pair can only join neighbouring bins
        fsb = np.floor(fl / log_size).astype(np.int64)
        msb = np.floor(ml / log_size).astype(np.int64)
        for key in set(map(tuple, fkeys)):
            fi = np.flatnonzero((fkeys[:, 0] == key[0]) & (fkeys[:, 1] == key[1]))
            mj = np.flatnonzero((np.abs(mkeys[:, 0] - key[0]) <= 1) & (np.abs(mkeys[:, 1] - key[1]) <= 1))
            if len(mj) == 0:
                continue
            origin = np.array(key, np.float64) * cell
            if len(fi) * len(mj) < 200_000:
                pairs(fi, mj, origin)
                continue
            fo = fbin[fi] if n_bins else np.zeros(len(fi), np.int64)
            for b, sb in set(zip(fo.tolist(), fsb[fi].tolist())):
                fib = fi[(fo == b) & (fsb[fi] == sb)]
                near = np.abs(msb[mj] - sb) <= 1
                if n_bins:
                    d = (mbin[mj] - b) % n_bins
                    near &= (d <= 1) | (d == n_bins - 1)
                if near.any():
                    pairs(fib, mj[near], origin)
        if not src:
            return np.zeros((0, 2), np.float32), np.zeros((0, 2), np.float32)
        return np.concatenate(src).astype(np.float32), np.concatenate(dst).astype(np.float32)

    def frame_features(self, frame: np.ndarray, intr: Intrinsics, pose: Pose):
        """The frame warped north-up at the working resolution and its features; the last few are
        kept, since relocalization registers one frame at several places (and the warp does not
        depend on where the drone is)."""
        gsd = self.work_gsd(intr, pose)
        key = (id(frame), frame.shape, round(gsd, 6), round(pose.altitude, 4), round(pose.yaw, 4), pose.tilt,
               pose.pitch, pose.roll, intr)
        if self._frame_cache is not None and self._frame_cache[0] == key and self._frame_cache[1] is frame:
            return self._frame_cache[2]
        warped = self.warp_frame(frame, intr, pose, gsd)
        out = None if warped is None else (gsd, warped, self._features(warped[0], warped[1]))
        self._frame_cache = (key, frame, out)
        return out

    def register(self, frame: np.ndarray, intr: Intrinsics, pose: Pose, search_radius_m: float,
                 strict: bool = False, hypotheses: list[tuple[float, float]] | None = None,
                 rotation_tol_deg: float | None = None, scale_tol: float | None = None,
                 centre_of=None) -> Registration:
        """Find the frame on the map within `search_radius_m` of (pose.x, pose.y).

        strict=True (relocalization, no track to agree with) asks for twice the inliers.
        hypotheses: (heading offset deg, height factor) pairs to try when the pose's heading or
        height is uncertain; each is checked within rotation_tol_deg / scale_tol (default: the
        config's). Heading offsets turn the frame's features about the nadir point (the frame is
        warped and described once); each height factor warps the frame at that height, so its
        features meet the map's at their own scale. The a-contrario threshold is tightened by the
        number of hypotheses and the width of the tolerances. The result's rotation_deg is the
        true heading minus pose.yaw and its scale the true height over pose.altitude.
        centre_of(heading offset, height factor) -> (x, y): where each hypothesis puts the drone
        (a track flown by odometry turns and scales with them); default (pose.x, pose.y).
        """
        cfg = self.cfg
        if not (math.isfinite(pose.altitude) and pose.altitude > 0):
            return Registration(False, reason="no altitude")
        hyps = hypotheses or [(0.0, 1.0)]
        rot_tol = cfg.max_rotation_deg if rotation_tol_deg is None else max(cfg.max_rotation_deg, rotation_tol_deg)
        sc_tol = cfg.max_scale_error if scale_tol is None else max(cfg.max_scale_error, scale_tol)
        # more hypotheses and wider tolerances are more chances to agree by chance: the a-contrario
        # threshold counts them as tests
        penalty = math.log10(len(hyps) * max(1.0, rot_tol / cfg.max_rotation_deg)
                             * max(1.0, math.log1p(sc_tol) / math.log1p(cfg.max_scale_error)))
        wide_rot, origin = rot_tol, {}
        # counted at the first height tried, whose warp the search then reuses (frame_features' cache)
        first = replace(pose, altitude=pose.altitude * hyps[0][1])
        if rot_tol > cfg.split_rotation_deg and self._few_features(frame, intr, first):
            hyps, origin = split_headings(hyps, rot_tol, cfg.max_rotation_deg)
            rot_tol = 1.25 * cfg.max_rotation_deg  # neighbouring steps overlap: a heading between two is in both
        best: Registration | None = None
        for k in dict.fromkeys(k for _, k in hyps):  # one warp per height, in the given order
            at = replace(pose, altitude=pose.altitude * k)
            for dh in [h for h, kk in hyps if kk == k]:
                here = at if centre_of is None else at.moved_to(*centre_of(dh, k))
                r = self._register_at(frame, intr, here, search_radius_m, strict, dh, rot_tol, sc_tol, penalty)
                r.scale *= k
                if r.failed_check == "rotation" and abs(wrap_deg(r.rotation_deg - origin.get(dh, dh))) <= wide_rot:
                    r.failed_check = ""  # outside this narrow step, inside the search: a neighbour step's
                if r.ok:  # hypotheses come likeliest first, and the threshold already counts them all
                    return r
                if best is None or r.inliers > best.inliers:
                    best = r
        return best

    def _few_features(self, frame, intr: Intrinsics, pose: Pose) -> bool:
        """A frame with few features (coarse on the map: NAIP at 1000 m has 500-650, a 0.5 m/px
        map at 190 m 1000-2600) searches a wide heading as narrow steps (`split_headings`); a
        well-textured one keeps the one wide search, which finds it as well and costs a step's time."""
        ff = self.frame_features(frame, intr, pose)
        return ff is not None and ff[2] is not None and len(ff[2][0]) < self.cfg.split_max_features

    def _register_at(self, frame, intr: Intrinsics, pose: Pose, search_radius_m: float, strict: bool, dh: float,
                     rot_tol: float, sc_tol: float, penalty: float) -> Registration:
        cfg = self.cfg
        fail = lambda reason, **kw: Registration(False, reason=reason, **kw)  # noqa: E731
        ff = self.frame_features(frame, intr, pose)
        if ff is None:
            return fail("the camera does not see a usable patch of ground")
        gsd, (fimg, fmask, (e0, n1), h_img, intr_s), f = ff
        half = search_radius_m + 0.5 * math.hypot(fimg.shape[1], fimg.shape[0]) * gsd \
            * (1 + max(0.0, sc_tol - cfg.max_scale_error))
        side_px = int(math.ceil(2 * half / gsd))
        if side_px > cfg.max_window_px:
            return fail(f"search area too large ({2 * half:.0f} m at {gsd:.2f} m/px)", work_gsd=gsd)
        wx0, wy1 = pose.x - half, pose.y + half
        mf = self.map_features(gsd).window(wx0, wy1, side_px, side_px)
        if mf is None:
            return fail("the search area is outside the map or has no texture", work_gsd=gsd)
        if f is None or len(f[0]) < 8 or len(mf[0]) < 8:
            return fail("too few features (low texture)", work_gsd=gsd)
        nadir = np.array([-e0 / gsd, n1 / gsd])
        r = self._register_one(f, fimg, fmask, nadir, gsd, mf, pose, wx0, wy1, search_radius_m, strict,
                               dh, rot_tol, sc_tol, penalty)
        if r.ok and cfg.pnp and r.inlier_src is not None:
            self._solve_pose(r, h_img, intr_s, nadir, dh, wx0, wy1, gsd, pose)
        return r

    def _solve_pose(self, r: Registration, h_img, intr_s: Intrinsics, nadir, dh: float, wx0: float, wy1: float,
                    gsd: float, pose: Pose) -> None:
        """The camera's pose from the map itself (PnP on the inliers, the ground flat): its position
        no longer rests on the telemetry's roll and pitch, which in a tilted, fast-moving vehicle are
        degrees off (metres on the ground at 100 m). Kept when it is well determined: its spread over
        halves of the inliers is the position's 1-sigma. Tilt and translation are told apart by the
        perspective within the frame, so narrow lenses and few inliers leave the similarity's answer."""
        src, dst = r.inlier_src, r.inlier_dst
        if len(src) < self.cfg.pnp_min_inliers:
            return
        # over hills a sloped ground looks like a tilted camera: without the DEM the solved pose
        # would trade one for the other, so a camera the telemetry calls level keeps the
        # similarity's (slope-robust) answer. The pose is still solved: where it disagrees (a
        # telemetry that calls a leaning vehicle level, as an EKF after a failsafe did in SITL:
        # 15 m at 9 deg), the fix's sigma covers the disagreement, since one of the two is wrong.
        tilt = pose.off_nadir_deg
        keep_similarity = self.terrain is None and tilt < self.cfg.pnp_min_tilt_deg
        if dh:  # undo the heading hypothesis' turn of the frame features about the nadir point
            a = math.radians(-dh)
            rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
            src = (src - nadir) @ rot.T + nadir
        img = project(np.linalg.inv(h_img), src)  # warped frame -> (shrunk) image pixels
        ox, oy = r.x, r.y  # a local origin keeps the numbers small
        ge, gn = wx0 + dst[:, 0] * gsd, wy1 - dst[:, 1] * gsd
        up = np.zeros(len(dst))
        if self.terrain is not None:  # the points' own heights over the ground under the drone
            up = self.terrain.elevations(ge, gn) - self.terrain.elevation(r.x, r.y)
            if not np.isfinite(up).all():
                return
        ground = np.column_stack([ge - ox, gn - oy, up])
        k = intr_s.matrix
        # initial guess: the pose that was used, at the similarity's position and height
        guess = replace(pose, x=0.0, y=0.0, altitude=pose.altitude * r.scale)
        r_wc = world_from_camera(guess)
        rvec0, _ = cv2.Rodrigues(r_wc.T)
        tvec0 = -r_wc.T @ np.array([0.0, 0.0, guess.altitude])

        def solve(idx):
            ok, rv, tv = cv2.solvePnP(ground[idx], img[idx], k, None, rvec0.copy(), tvec0.copy().reshape(3, 1),
                                      useExtrinsicGuess=True, flags=cv2.SOLVEPNP_ITERATIVE)
            if not ok:
                return None
            rm, _ = cv2.Rodrigues(rv)
            return (-rm.T @ tv).ravel(), rv
        full = solve(np.arange(len(src)))
        if full is None:
            return
        centre, rv = full
        rng = np.random.default_rng(len(src))
        halves = []
        for _ in range(4):
            idx = rng.permutation(len(src))[: len(src) // 2]
            h = solve(idx)
            if h is not None:
                halves.append(h[0])
        if len(halves) < 3:
            return
        spread = float(np.sqrt(np.mean(np.sum((np.array(halves)[:, :2] - centre[:2]) ** 2, axis=1)) / 2.0))
        proj, _ = cv2.projectPoints(ground, rv, -cv2.Rodrigues(rv)[0] @ centre.reshape(3, 1), k, None)
        rms = float(np.sqrt(np.mean(np.sum((proj.reshape(-1, 2) - img) ** 2, axis=1))))
        height = float(centre[2])
        moved = math.hypot(centre[0], centre[1])
        if not (rms < 3.0 and height > 0 and abs(height / (pose.altitude * r.scale) - 1) < 0.15
                and moved < 0.5 * height and spread < max(2.0 * r.sigma, 0.02 * height)):
            return
        r.tilt_correction_m = moved
        axis_solved = cv2.Rodrigues(rv)[0].T[:, 2]  # camera z in world axes
        axis_used = r_wc[:, 2]
        # the telemetry's attitude error as the image shows it (over unmodelled hills, slope too:
        # a conservative doubt for the fixes and odometry steps that rest on the attitude)
        r.attitude_error_deg = math.degrees(math.acos(float(np.clip(axis_solved @ axis_used, -1.0, 1.0))))
        r.attitude_error_axis = axis_solved - axis_used
        # what the solve leaves uncertain of that axis: a tilt and a shift trade one for the other
        # (degrees of tilt for metres of spread at this height), so a high, narrow view measures
        # the attitude coarsely (1000 m up with 5 m/px: 1-3 deg of noise on an exact attitude)
        r.attitude_error_sigma_deg = math.degrees(math.atan2(math.sqrt(2.0) * spread, height))
        if keep_similarity:
            r.sigma = math.hypot(r.sigma, moved)
            return
        r.x, r.y = ox + float(centre[0]), oy + float(centre[1])
        r.scale = height / pose.altitude  # the height the pose solved, not the similarity's (tilt-blind) scale
        # the halves' spread: what the solved tilt leaves uncertain, and at least the bias they share
        r.sigma = math.hypot(r.sigma, max(spread, self.cfg.pnp_sigma_floor * height))
        r.pose_solved = True


    def _register_one(self, f, fimg, fmask, nadir, gsd, mf, pose: Pose, wx0, wy1, search_radius_m, strict,
                      dh: float, rot_tol: float, sc_tol: float, nfa_penalty: float) -> Registration:
        """One heading hypothesis: the frame features turned by dh (deg clockwise) about the nadir
        point, matched, fitted and checked (heights are warped by the caller, `register`)."""
        cfg = self.cfg
        fail = lambda reason, **kw: Registration(False, reason=reason, **kw)  # noqa: E731
        fxy, fang, fsize, fdesc = f
        if dh:
            # a camera turned clockwise by dh sees the ground turned anticlockwise: its north-up
            # warp must turn clockwise on the map (image y points down, so +dh is clockwise here)
            a = math.radians(dh)
            rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
            fxy = ((fxy - nadir) @ rot.T + nadir).astype(np.float32)
            fang = ((fang + dh) % 360.0).astype(np.float32)
        extra_deg = max(0.0, rot_tol - cfg.max_rotation_deg)
        extra_scale = max(0.0, sc_tol - cfg.max_scale_error)
        radius_px = float(np.max(np.linalg.norm(fxy - nadir, axis=1))) if len(fxy) else 0.0
        centre_px = np.array([(pose.x - wx0) / gsd, (wy1 - pose.y) / gsd])
        reach_px = search_radius_m / gsd + 3 + radius_px * (math.radians(extra_deg) + extra_scale)
        # where each frame keypoint lands on the map window if the drone is at the search centre
        ff = (fxy, fang, fsize, fdesc)
        src, dst = self._match(ff, mf, centre_px - (nadir - fxy), reach_px, extra_deg, extra_scale)
        flipped = False
        if cfg.yaw_flip_ok:  # the frame turned by 180 deg about its nadir point
            turned = (fxy, (fang + 180.0) % 360.0, fsize, fdesc)
            fsrc, fdst = self._match(turned, mf, centre_px + (nadir - fxy), reach_px, extra_deg, extra_scale)
            if len(fsrc) > len(src):
                src, dst, flipped = fsrc, fdst, True
        if len(src) < cfg.min_inliers:
            return fail(f"too few matches ({len(src)})", matches=len(src), work_gsd=gsd)
        best = self._fit(src, dst)
        if best is None:
            return fail("no consistent placement", matches=len(src), work_gsd=gsd)
        m, inl = best
        n_in = int(inl.sum())
        ratio = n_in / len(src)
        s = float(math.hypot(m[0, 0], m[1, 0]))
        rot = float(math.degrees(math.atan2(m[1, 0], m[0, 0])))
        p = m[:, :2] @ nadir + m[:, 2]
        x, y = wx0 + p[0] * gsd, wy1 - p[1] * gsd
        fcorners = np.array([[0, 0], [fimg.shape[1], 0], [fimg.shape[1], fimg.shape[0]], [0, fimg.shape[0]]], float)
        if dh:
            fcorners = (fcorners - nadir) @ np.array([[math.cos(math.radians(dh)), -math.sin(math.radians(dh))],
                                                      [math.sin(math.radians(dh)), math.cos(math.radians(dh))]]).T + nadir
        mc = fcorners @ m[:, :2].T + m[:, 2]
        corners = np.column_stack([wx0 + mc[:, 0] * gsd, wy1 - mc[:, 1] * gsd])
        hull = cv2.convexHull(src[inl].astype(np.float32))
        spread = float(cv2.contourArea(hull) / max(1.0, fmask.sum()))
        resid = np.linalg.norm(src[inl] @ m[:, :2].T + m[:, 2] - dst[inl], axis=1)
        sigma = gsd * max(cfg.sigma_floor_px, 2.0 * float(np.sqrt(np.mean(resid ** 2))) / math.sqrt(n_in))
        rot_resid = rot if not flipped else wrap_deg(rot + 180.0)
        r = Registration(False, float(x), float(y), float(sigma), n_in, len(src), float(ratio),
                         float(dh + rot_resid), float(s), spread, gsd, corners)
        if not flipped:
            r.inlier_src, r.inlier_dst = src[inl], dst[inl]
        # how well this placement measures heading and height (for the bias filter)
        if radius_px > 0:
            r.rotation_sigma_deg = float(max(0.3, math.degrees(float(np.sqrt(np.mean(resid ** 2))) / max(1.0, 0.5 * radius_px))
                                             / math.sqrt(n_in) * 3.0))
            r.scale_sigma = float(max(0.003, math.radians(r.rotation_sigma_deg)))
        need = cfg.min_inliers * (2 if strict else 1)
        area_px = math.pi * reach_px ** 2
        lnfa = log10_nfa(len(src), n_in, math.pi * cfg.ransac_px ** 2 / area_px) + nfa_penalty
        if n_in < need or ratio < cfg.min_inlier_ratio or lnfa > cfg.max_log10_nfa - (3 if strict else 0):
            r.reason = f"weak match ({n_in} inliers of {len(src)}, {ratio:.0%}, log10 NFA {lnfa:.1f})"
        elif abs(rot_resid) > rot_tol:
            r.reason = f"rotation {dh + rot_resid:+.1f} deg disagrees with the heading"
            r.failed_check = "rotation"
        elif abs(s - 1.0) > sc_tol:
            r.reason = f"scale {s:.2f} disagrees with the height"
            r.failed_check = "scale"
        elif spread < cfg.min_spread:
            r.reason = f"inliers cover only {spread:.0%} of the frame"
        elif math.hypot(x - pose.x, y - pose.y) > search_radius_m + 3 * gsd:
            r.reason = "outside the search area"
        else:
            second = self._fit(src[~inl], dst[~inl])
            if second is not None:
                m2, inl2 = second
                p2 = m2[:, :2] @ nadir + m2[:, 2]
                moved = math.hypot(*(p2 - p)) * gsd
                if inl2.sum() >= max(cfg.min_inliers, cfg.ambiguity * n_in) and moved > 5 * gsd:
                    r.reason = f"ambiguous: a second place {moved:.0f} m away fits with {int(inl2.sum())} inliers"
                    return r
            r.ok = True
        return r

    def _fit(self, src: np.ndarray, dst: np.ndarray):
        if len(src) < max(4, self.cfg.min_inliers // 2):
            return None
        m, inl = cv2.estimateAffinePartial2D(src, dst, method=cv2.RANSAC, ransacReprojThreshold=self.cfg.ransac_px,
                                             maxIters=2000, confidence=0.999, refineIters=10)
        if m is None or inl is None:
            return None
        return m, inl.ravel().astype(bool)
