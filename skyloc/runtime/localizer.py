"""The Localizer: camera frames (+ yaw, altitude) -> Estimates, by tracking as flying systems do.

Per frame, in order (each stage is a module with one job):

    odometry        skyloc.runtime.odometry        ground motion since the previous frame
    prediction      skyloc.runtime.filter          the track moved by odometry (or dead-reckoned)
    registration    skyloc.runtime.registration    the frame on the map around the prediction
    relocalization  skyloc.runtime.relocalization  retrieval + strict registration, without a track
    filter          skyloc.runtime.filter          gated fusion of the registration
    estimate        skyloc.runtime.estimate        status (ok only when earned) and accuracy

A prior position (`start`, or the autopilot's GNSS before it is lost) starts the track; without
one, relocalization does. Registration runs at `registration_interval_s` (odometry keeps every
frame on time), sooner after a failure.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from skyloc.errors import SkylocError
from skyloc.runtime.cache import TileCache
from skyloc.runtime.camera import Intrinsics, Pose
from skyloc.runtime.embedder import Embedder
from skyloc.runtime.estimate import LOW, NO_FIX, OK, Estimate, StatusConfig, TrackEvidence, decide_status
from skyloc.runtime.filter import FilterConfig, TrackFilter
from skyloc.runtime.odometry import OdometryConfig, OdometryStep, VisualOdometry
from skyloc.runtime.preprocess import check_frame
from skyloc.runtime.registration import MapRegistration, Registration, RegistrationConfig
from skyloc.runtime.relocalization import RelocalizationConfig, Relocalizer

log = logging.getLogger("skyloc.localizer")

__all__ = ["Localizer", "LocalizerConfig", "Estimate", "OK", "LOW", "NO_FIX", "parse_start"]


@dataclass
class LocalizerConfig:
    hfov_deg: float = 60.0  # camera horizontal field of view
    camera_pitch_deg: float = 0.0  # camera tilt forward from nadir (gimbal/mount)
    attitude_sigma_deg: float = 0.5  # attitude (and its timing) error: shifts every fix by altitude * tan
    map_accuracy_m: float | None = None  # 1-sigma georeferencing error of the map (default: max(0.5 m, gsd / 2))
    registration_interval_s: float = 0.5
    retry_interval_s: float = 0.2  # after a failed registration
    relocalization_interval_s: float = 1.0
    search_margin_m: float = 10.0  # beyond the filter's 3 sigma
    min_search_radius_m: float = 15.0
    max_search_radius_m: float = 250.0  # wider than this, retrieval narrows the search first
    altitude_range_m: tuple[float, float] | None = None  # altitudes to try when telemetry has none
    yaw_flip_ok: bool = False  # accept frames turned by 180 deg (nadir gimbals report an ambiguous yaw)
    gate_resets: int = 3  # verified registrations rejected by the gate in a row before the track restarts
    odometry: OdometryConfig = field(default_factory=OdometryConfig)
    registration: RegistrationConfig = field(default_factory=RegistrationConfig)
    relocalization: RelocalizationConfig = field(default_factory=RelocalizationConfig)
    filter: FilterConfig = field(default_factory=FilterConfig)
    status: StatusConfig = field(default_factory=StatusConfig)


def parse_start(text: str | None) -> tuple[float, float, float] | None:
    """`LAT,LON[,RADIUS_M]` -> (lat, lon, radius); the radius defaults to 50 m."""
    if text is None or str(text).strip() == "":
        return None
    try:
        vals = [float(v) for v in str(text).split(",")]
    except ValueError:
        vals = []
    if len(vals) not in (2, 3) or not (-90 <= vals[0] <= 90 and -180 <= vals[1] <= 180) or (len(vals) == 3 and vals[2] <= 0):
        raise SkylocError(f"--start {text!r}: give LAT,LON or LAT,LON,RADIUS_M in degrees and metres, "
                          "e.g. 47.3977,8.5456,50")
    return vals[0], vals[1], vals[2] if len(vals) == 3 else 50.0


class Localizer:
    def __init__(self, embedder: Embedder | None, cache: TileCache, config: LocalizerConfig | None = None,
                 map_path: str | Path | None = None, use_faiss: bool = False, map_nodata: float | None = None,
                 map_bands: tuple[int, ...] | None = None, start: tuple[float, float, float] | None = None):
        from skyloc.runtime.geo import GeoMap

        self.embedder, self.cache = embedder, cache
        self.cfg = config or LocalizerConfig()
        src = Path(map_path or cache.manifest["source_map"])
        if not src.is_file():
            raise SkylocError(f"map {src} not found: registration needs the cache's GeoTIFF (pass --map)")
        nodata = map_nodata if map_nodata is not None else cache.manifest.get("nodata")
        bands = map_bands or (tuple(cache.manifest["bands"]) if cache.manifest.get("bands") else None)
        self.map = GeoMap(src, gsd=cache.manifest["gsd_m"], bands=bands, nodata=nodata)
        if self.cfg.yaw_flip_ok:
            self.cfg.registration.yaw_flip_ok = True
        self.map_sigma = self.cfg.map_accuracy_m if self.cfg.map_accuracy_m is not None else max(0.5, self.map.gsd / 2)
        self.odometry = VisualOdometry(self.cfg.odometry)
        self.filter = TrackFilter(self.cfg.filter)
        self.registration = MapRegistration(self.map, self.cfg.registration)
        self.relocalizer = Relocalizer(embedder, cache, self.registration, self.cfg.relocalization, use_faiss) \
            if embedder is not None else None
        self.evidence = TrackEvidence()
        self.track_id = 0
        self.next_registration = -math.inf
        self.next_relocalization = -math.inf
        self.rejections = 0
        self.last_altitude: tuple[float, float] | None = None  # (t, altitude)
        self.last_yaw: tuple[float, float] | None = None  # (t, yaw actually used, visual corrections included)
        self.start = start
        if start is not None:
            self._check_on_map(start[0], start[1], "the start position")

    # -- track management -----------------------------------------------------------------------
    def reset(self) -> None:
        """Forget the track (the next frames relocalize, or restart from `start`)."""
        self.filter.reset()
        self.odometry.reset()
        self.evidence = TrackEvidence()
        self.rejections = 0
        self.next_registration = self.next_relocalization = -math.inf

    def _check_on_map(self, lat: float, lon: float, what: str) -> None:
        x, y = self.cache.geodesy.from_latlon(lat, lon)
        left, bottom, right, top = self.map.bounds
        if not (left <= x <= right and bottom <= y <= top):
            raise SkylocError(f"{what} {lat:.6f},{lon:.6f} is outside the map {self.map.path.name} "
                              f"(it covers {self._bounds_text()}): check the coordinates or the map")

    def _bounds_text(self) -> str:
        left, bottom, right, top = self.map.bounds
        g = self.cache.geodesy
        (la0, lo0), (la1, lo1) = g.to_latlon(left, bottom), g.to_latlon(right, top)
        return f"lat {la0:.5f}..{la1:.5f}, lon {lo0:.5f}..{lo1:.5f}"

    def set_prior(self, t: float, lat: float, lon: float, radius_m: float, source: str = "prior") -> bool:
        """A known position (a `start`, or the autopilot's GNSS before it is lost): it starts the
        track when there is none and keeps steering it until skyloc's own registrations confirm
        it; after that it is ignored. A prior never makes a fix "ok". True when a track started."""
        x, y = self.cache.geodesy.from_latlon(lat, lon)
        if not self.filter.initialized:
            self._start_track(t, (x, y), radius_m / 3.0, source)
            return True
        if self.evidence.confirmations == 0:
            self.filter.predict(t)
            self.filter.update((x, y), radius_m / 3.0, gate=False)
        return False

    def _start_track(self, t: float, xy, sigma: float, why: str, velocity=(0.0, 0.0)) -> None:
        self.filter.init(t, xy, sigma, velocity)
        self.evidence = TrackEvidence(started=True)
        self.track_id += 1
        self.rejections = 0
        self.next_registration = -math.inf
        log.info("track %d started at %.1f, %.1f (+-%.0f m) from %s", self.track_id, xy[0], xy[1], sigma, why)

    # -- the pipeline ---------------------------------------------------------------------------
    def locate(self, frame_rgb: np.ndarray, t: float | None = None, yaw_deg: float | None = None,
               altitude_m: float | None = None, pitch_deg: float | None = None, roll_deg: float | None = None,
               vehicle_pitch_deg: float | None = None) -> Estimate:
        """Estimate the drone's position from one frame of a sequence.

        yaw_deg: camera heading (clockwise from north); altitude_m: above ground; pitch_deg: camera
        tilt forward from nadir (default: the configured mount tilt); roll_deg / vehicle_pitch_deg:
        vehicle attitude for cameras fixed to the airframe.
        """
        t = time.time() if t is None else float(t)
        lat_ms: dict[str, float] = {}
        t0 = time.perf_counter()
        frame = check_frame(frame_rgb)
        intr = Intrinsics(frame.shape[1], frame.shape[0], self.cfg.hfov_deg)
        pose, note = self._pose(t, yaw_deg, altitude_m, pitch_deg, roll_deg, vehicle_pitch_deg)
        est = Estimate(t, NO_FIX, track_id=self.track_id)
        notes = [note] if note else []
        if self.start is not None and not self.filter.initialized:
            self.set_prior(t, *self.start, source="start position")
            self.start = None

        # 1. odometry ------------------------------------------------------------------------
        t1 = time.perf_counter()
        step, pose = self._odometry(frame, t, pose, intr, notes)
        lat_ms["odometry"] = (time.perf_counter() - t1) * 1e3

        # 2. prediction ----------------------------------------------------------------------
        if self.filter.initialized:
            self._advance(t, step, est, notes)

        # 3-5. registration (with a track) or relocalization (without), then the filter ----------
        t3 = time.perf_counter()
        if self.filter.initialized and t >= self.next_registration:
            radius = self._search_radius(t)
            if radius <= self.cfg.max_search_radius_m:
                reg = self._register(frame, intr, pose, radius)
                self._fuse(t, reg, pose, est, notes)
            elif self.relocalizer is not None and t >= self.next_relocalization:
                self._relocalize(t, frame, intr, pose, est, notes,
                                 window=(float(self.filter.x[0]), float(self.filter.x[1]), radius))
        elif not self.filter.initialized and self.relocalizer is not None and t >= self.next_relocalization:
            self._relocalize(t, frame, intr, pose, est, notes)
        lat_ms["registration"] = (time.perf_counter() - t3) * 1e3

        # 6. estimate ------------------------------------------------------------------------
        self._finish(est, t, pose, notes)
        lat_ms["total"] = (time.perf_counter() - t0) * 1e3
        est.latency_ms = {k: round(v, 2) for k, v in lat_ms.items()}
        return est

    def _odometry(self, frame, t: float, pose: Pose, intr: Intrinsics, notes: list[str]):
        """Odometry: the motion since the last frame, and the heading this frame really has (the
        visual turn replaces a telemetry yaw that jumped, or stands in when there is none)."""
        from_vision = not math.isfinite(pose.yaw) and self.last_yaw is not None and t - self.last_yaw[0] < 10.0
        if from_vision:
            pose = replace(pose, yaw=self.last_yaw[1])
        step = None
        if math.isfinite(pose.altitude) and math.isfinite(pose.yaw):
            step = self.odometry.step(frame, t, pose, intr, trust_yaw=not from_vision)
        if step is not None and step.ok and step.yaw_correction_deg:
            if not from_vision:
                notes.append(f"telemetry yaw off by {step.yaw_correction_deg:+.0f} deg: using the visual heading")
            pose = replace(pose, yaw=(pose.yaw + step.yaw_correction_deg) % 360)
        if from_vision:
            notes.append("no yaw from telemetry: heading carried by odometry" if step is not None and step.ok
                         else "no yaw from telemetry")
        if math.isfinite(pose.yaw) and (step is None or step.ok or not from_vision):
            self.last_yaw = (t, pose.yaw)
        return step, pose

    def predict(self, t: float, why: str) -> Estimate:
        """The track carried to time t without a frame (the camera dropped out): dead reckoning
        with the filter's velocity, the accuracy growing, never "ok" (odometry is interrupted)."""
        est = Estimate(t, NO_FIX, track_id=self.track_id, source="prediction")
        if self.filter.initialized and t > self.filter.t:
            self.filter.predict(t)
            self.evidence.no_odometry(t, self.cfg.status.max_odometry_gap_s)
            self.odometry.reset()  # the next frame has nothing to compare with
        alt = self.last_altitude[1] if self.last_altitude else math.nan
        self._finish(est, t, Pose(altitude=alt), [why])
        return est

    def _pose(self, t, yaw, alt, tilt, roll, vpitch) -> tuple[Pose, str]:
        note = ""
        if alt is not None and math.isfinite(alt) and alt > 0:
            self.last_altitude = (t, float(alt))
        elif self.last_altitude is not None and t - self.last_altitude[0] < 5.0:
            alt = self.last_altitude[1]
            note = "no altitude: using the last one"
        else:
            alt = math.nan
            note = ("no altitude: searching the altitude range" if self.cfg.altitude_range_m else
                    "no altitude: set localizer altitude_range_m or send altitude telemetry")
        pose = Pose(altitude=float(alt), yaw=float(yaw) % 360 if yaw is not None and math.isfinite(yaw) else math.nan,
                    tilt=self.cfg.camera_pitch_deg if tilt is None else float(tilt),
                    pitch=float(vpitch or 0.0), roll=float(roll or 0.0))
        if not math.isfinite(pose.yaw):
            note = (note + "; " if note else "") + "no yaw"
        return pose, note

    def _advance(self, t: float, step: OdometryStep | None, est: Estimate, notes: list[str]) -> None:
        """Prediction: move the track by odometry, or dead-reckon when odometry has nothing."""
        gap = self.cfg.status.max_odometry_gap_s
        if step is not None and step.ok and step.t - step.dt >= self.filter.t - 1e-6:
            self.filter.predict(step.t - step.dt)
            self.filter.odometry(t, (step.dx, step.dy), step.sigma)
            self.evidence.odometry(t, step.distance, gap)
            est.odometry, est.source = True, "odometry"
        else:
            self.filter.predict(t)
            self.evidence.no_odometry(t, gap)
            est.source = "prediction"
            if step is not None and not step.ok:
                notes.append(f"no odometry: {step.reason}")

    def _search_radius(self, t: float) -> float:
        cov = self.filter.position_cov
        sigma = math.sqrt(max(np.linalg.eigvalsh(cov)))
        return max(self.cfg.min_search_radius_m, 3.0 * sigma + self.cfg.search_margin_m)

    def _register(self, frame, intr: Intrinsics, pose: Pose, radius: float) -> Registration:
        if not math.isfinite(pose.yaw):
            return Registration(False, reason="no yaw to turn the frame north-up")
        at = pose.moved_to(float(self.filter.x[0]), float(self.filter.x[1]))
        if math.isfinite(pose.altitude):
            return self.registration.register(frame, intr, at, radius)
        if not self.cfg.altitude_range_m:
            return Registration(False, reason="no altitude to scale the frame")
        lo, hi = self.cfg.altitude_range_m  # try altitudes ~25 % apart; keep the best verified one
        best = Registration(False, reason="no altitude in the range fits")
        for alt in np.geomspace(lo, hi, max(2, int(math.ceil(math.log(hi / lo) / math.log(1.25))) + 1)):
            r = self.registration.register(frame, intr, Pose(at.x, at.y, float(alt), at.yaw, at.tilt, at.pitch, at.roll),
                                           radius, strict=True)
            if r.ok and r.inliers > best.inliers:
                best = r
        return best

    def _fix_sigma(self, reg: Registration, altitude: float) -> float:
        """1-sigma per axis of a registration fix: matching, map georeferencing and attitude."""
        att = (altitude if math.isfinite(altitude) else 0.0) * math.tan(math.radians(self.cfg.attitude_sigma_deg))
        return math.sqrt(reg.sigma**2 + self.map_sigma**2 + att**2)

    def _fuse(self, t: float, reg: Registration, pose: Pose, est: Estimate, notes: list[str]) -> None:
        """Filter: a verified registration that agrees with the track is fused; one that does not
        is rejected, and after `gate_resets` such in a row the track restarts from the registration."""
        est.inliers = reg.inliers
        if not reg.ok:
            self.next_registration = t + self.cfg.retry_interval_s
            notes.append(f"registration: {reg.reason}")
            return
        self.next_registration = t + self.cfg.registration_interval_s
        sigma = self._fix_sigma(reg, pose.altitude)
        if self.filter.update((reg.x, reg.y), sigma):
            self.rejections = 0
            self.evidence.registered(t)
            est.registered, est.source = True, "registration"
            return
        self.rejections += 1
        notes.append(f"registration {math.hypot(reg.x - self.filter.x[0], reg.y - self.filter.x[1]):.0f} m from the "
                     f"track rejected ({self.rejections} in a row)")
        if self.rejections >= self.cfg.gate_resets:
            self._start_track(t, (reg.x, reg.y), sigma, "registrations that disagree with the old track")
            self.evidence.registered(t)
            est.registered, est.source = True, "registration"

    def _relocalize(self, t, frame, intr, pose, est: Estimate, notes: list[str], window=None) -> None:
        self.next_relocalization = t + self.cfg.relocalization_interval_s
        if not (math.isfinite(pose.altitude) and math.isfinite(pose.yaw)):
            notes.append("relocalization needs the altitude and the yaw")
            return
        r = self.relocalizer.relocalize(frame, intr, pose, window)
        if r.matches.indices.size:
            est.best_tiles, est.best_score = r.matches.indices[:5].tolist(), float(r.matches.scores[0])
        if r.registration is None:
            notes.append(f"relocalization: none of {r.tried} retrieved places verified")
            return
        reg = r.registration
        self._start_track(t, (reg.x, reg.y), self._fix_sigma(reg, pose.altitude), "relocalization")
        self.odometry.reset()
        self.odometry.step(frame, t, pose, intr)  # odometry continues from this frame
        self.evidence.registered(t)
        self.next_registration = t + self.cfg.retry_interval_s  # confirm it soon
        est.registered, est.source, est.inliers = True, "relocalization", reg.inliers

    def _finish(self, est: Estimate, t: float, pose: Pose, notes: list[str]) -> None:
        """Estimate: accuracy (filter + what cannot average away) and the status rules."""
        est.track_id = self.track_id
        if not self.filter.initialized:
            est.status, est.message = NO_FIX, "; ".join(notes) or "no track: relocalizing"
            return
        alt = pose.altitude if math.isfinite(pose.altitude) else (self.last_altitude[1] if self.last_altitude else 0.0)
        floor = self.map_sigma**2 + (alt * math.tan(math.radians(self.cfg.attitude_sigma_deg))) ** 2
        cov = self.filter.position_cov
        accuracy = math.sqrt(float(np.trace(cov)) + 2.0 * floor)
        if accuracy > self.cfg.status.lost_accuracy_m:
            notes.append(f"track lost (accuracy {accuracy:.0f} m): relocalizing")
            self.reset()
            est.status, est.message = NO_FIX, "; ".join(notes)
            return
        status, why = decide_status(self.evidence, t, accuracy, self.cfg.status)
        x, y = float(self.filter.x[0]), float(self.filter.x[1])
        est.status = status
        est.x, est.y = x, y
        est.lat, est.lon = (float(v) for v in self.cache.geodesy.to_latlon(x, y))
        est.horizontal_accuracy = accuracy
        est.cov_xx, est.cov_xy, est.cov_yy = (float(cov[0, 0] + floor), float(cov[0, 1]), float(cov[1, 1] + floor))
        est.vx, est.vy = self.filter.velocity
        est.since_registration_s = t - self.evidence.last_registration_t
        est.confidence = float(max(0.0, 1.0 - accuracy / self.cfg.status.ok_max_accuracy_m)) * (1.0 if status == OK else 0.5)
        if why:
            notes.append(why)
        est.message = "; ".join(notes)
