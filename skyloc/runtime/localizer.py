"""The Localizer: camera frames (+ yaw, altitude) -> Estimates, by tracking as flying systems do.

Per frame, in order (each stage is a module with one job):

    bias            skyloc.runtime.bias            heading and height: telemetry as a prior, errors learned
    odometry        skyloc.runtime.odometry        ground motion since the previous frame
    prediction      skyloc.runtime.filter          the track moved by odometry (or dead-reckoned)
    registration    skyloc.runtime.registration    the frame on the map around the prediction
    relocalization  skyloc.runtime.relocalization  retrieval + strict registration, without a track
    filter          skyloc.runtime.filter          gated fusion of the registration
    estimate        skyloc.runtime.estimate        status (ok only when earned) and accuracy

A prior position (`start`, or the autopilot's GNSS before it is lost) starts the track; without
one, relocalization does. Registration runs at `registration_interval_s` (odometry keeps every
frame on time), sooner after a failure. Heading and height come from the localizer's own
estimate (`bias`): the telemetry's compass and altitude are priors whose errors the map
measures, so a compass 20 deg off, a barometer over hills or no yaw at all widen the search
instead of failing it.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from skyloc.errors import SkylocError
from skyloc.runtime.bias import BiasConfig, TelemetryBias
from skyloc.runtime.cache import TileCache
from skyloc.runtime.camera import Intrinsics, Pose
from skyloc.runtime.embedder import Embedder, create_embedder
from skyloc.runtime.estimate import LOW, NO_FIX, NO_FRAME, OK, Estimate, StatusConfig, TrackEvidence, decide_status
from skyloc.runtime.features import open_store
from skyloc.runtime.filter import FilterConfig, TrackFilter
from skyloc.runtime.odometry import OdometryConfig, OdometryStep, VisualOdometry
from skyloc.runtime.preprocess import check_frame
from skyloc.runtime.registration import MapRegistration, Registration, RegistrationConfig
from skyloc.runtime.relocalization import RelocalizationConfig, Relocalizer

log = logging.getLogger("skyloc.localizer")

MIN_HEIGHT_M = 2.0  # below this a camera sees too little of the map to localize (on the ground)

__all__ = ["Localizer", "LocalizerConfig", "Estimate", "OK", "LOW", "NO_FIX", "parse_start"]


@dataclass
class LocalizerConfig:
    hfov_deg: float = 60.0  # camera horizontal field of view (of a distortion-free lens)
    calibration: str | None = None  # calibration file (OpenCV, ROS camera_info, Kalibr): frames are undistorted
    camera_pitch_deg: float = 0.0  # camera tilt forward from nadir (gimbal/mount)
    attitude_sigma_deg: float = 0.5  # attitude (and its timing) error: shifts every fix by altitude * tan
    map_accuracy_m: float | None = None  # 1-sigma georeferencing error of the map (default: max(0.5 m, gsd / 2))
    registration_interval_s: float = 0.5
    register_above_sigma_m: float = 2.0  # ... and sooner (at retry_interval_s) while the track is less sure than this
    retry_interval_s: float = 0.2  # after a failed registration
    relocalization_interval_s: float = 1.0
    search_margin_m: float = 10.0  # beyond the filter's 3 sigma
    min_search_radius_m: float = 15.0
    max_search_radius_m: float = 250.0  # wider than this, retrieval narrows the search first
    altitude_range_m: tuple[float, float] | None = None  # heights to search when telemetry has none (default 30-1200 m)
    dem: str | None = None  # elevation model (GeoTIFF, any CRS): baro altitude above home -> height above the ground
    home_elevation_m: float | None = None  # elevation of the take-off point (default: the DEM at the start position)
    yaw_flip_ok: bool = False  # accept frames turned by 180 deg (nadir gimbals report an ambiguous yaw)
    gate_resets: int = 3  # verified registrations rejected by the gate in a row before the track restarts
    attitude_timing_s: float = 0.05  # 1-sigma of the attitude's time against the frame's: in a fast turn it is a heading error
    attitude_drift_deg_s: float = 1.0  # how fast the telemetry's roll/pitch error may change (an EKF without GNSS)
    bias: BiasConfig = field(default_factory=BiasConfig)
    odometry: OdometryConfig = field(default_factory=OdometryConfig)
    registration: RegistrationConfig = field(default_factory=RegistrationConfig)
    relocalization: RelocalizationConfig = field(default_factory=RelocalizationConfig)
    filter: FilterConfig = field(default_factory=FilterConfig)
    status: StatusConfig = field(default_factory=StatusConfig)


def _turn(v: tuple[float, float], deg: float) -> tuple[float, float]:
    """An (east, north) vector in axes turned anticlockwise by deg: map grid <-> true north."""
    a = math.radians(deg)
    return v[0] * math.cos(a) - v[1] * math.sin(a), v[0] * math.sin(a) + v[1] * math.cos(a)


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
    @classmethod
    def open(cls, model: str | Path | Embedder, cache: str | Path | TileCache, map_path: str | Path | None = None,
             config: LocalizerConfig | None = None, backend: str = "auto", engine_cache: str | Path | None = None,
             precision: str = "fp16", **options) -> "Localizer":
        """The one way to set a localizer up: the model (.onnx or .engine, or an embedder already
        open), a tile cache made with that model (refused otherwise; a path or one already
        loaded, which is checked too), the cache's map (default: the manifest's); `options` as
        for the constructor (start, map_nodata, map_bands)."""
        embedder = create_embedder(model, backend, engine_cache=engine_cache, precision=precision) \
            if isinstance(model, (str, Path)) else model
        if isinstance(cache, TileCache):
            cache.check_model(embedder.meta)
        else:
            cache = TileCache.load(cache, embedder.meta)
        return cls(embedder, cache, config, map_path=map_path, **options)

    def __init__(self, embedder: Embedder | None, cache: TileCache, config: LocalizerConfig | None = None,
                 map_path: str | Path | None = None, map_nodata: float | None = None,
                 map_bands: tuple[int, ...] | None = None, start: tuple[float, float, float] | None = None):
        from skyloc.runtime.geo import map_exists, open_map

        self.embedder, self.cache = embedder, cache
        self.cfg = config or LocalizerConfig()
        src = Path(map_path or cache.manifest["source_map"])
        if not map_exists(src):
            raise SkylocError(f"map {src} not found: registration needs the cache's map (pass --map)")
        nodata = map_nodata if map_nodata is not None else cache.manifest.get("nodata")
        bands = map_bands or (tuple(cache.manifest["bands"]) if cache.manifest.get("bands") else None)
        self.map = open_map(src, gsd=cache.manifest["gsd_m"], bands=bands, nodata=nodata,
                            on_bad=cache.manifest.get("on_bad", "refuse"))
        if self.cfg.yaw_flip_ok:
            self.cfg.registration.yaw_flip_ok = True
        self.map_sigma = self.cfg.map_accuracy_m if self.cfg.map_accuracy_m is not None else max(0.5, self.map.gsd / 2)
        self.odometry = VisualOdometry(self.cfg.odometry)
        self.filter = TrackFilter(self.cfg.filter)
        self.registration = MapRegistration(self.map, self.cfg.registration)
        self.registration.stored = open_store(Path(cache.path) / "map_features", self.map)
        for gsd, level in self.registration.stored.items():
            log.info("map features at %.2f m/px from %s (%d)", gsd, level.path, len(level.xy))
        self.relocalizer = Relocalizer(embedder, cache, self.registration, self.cfg.relocalization) \
            if embedder is not None else None
        if self.cfg.altitude_range_m:
            self.cfg.bias.no_height_range = tuple(float(v) for v in self.cfg.altitude_range_m)
        self.bias = TelemetryBias(self.cfg.bias)
        # telemetry headings are true bearings, the map is north-up on its grid
        left, bottom, right, top = self.map.bounds
        self.grid_rotation = self.cache.geodesy.grid_rotation(
            *self.cache.geodesy.to_latlon((left + right) / 2, (bottom + top) / 2))
        self.calibration = None
        if self.cfg.calibration:
            from skyloc.runtime.calibration import load_calibration

            self.calibration = load_calibration(self.cfg.calibration)
        self.terrain = None
        self.home_elevation = self.cfg.home_elevation_m
        if self.cfg.dem:
            from skyloc.runtime.terrain import Terrain

            self.terrain = Terrain(self.cfg.dem, self.map.crs, self.map.bounds)
            self.registration.terrain = self.terrain
        self.evidence = TrackEvidence()
        self.track_id = 0
        self.next_registration = -math.inf
        self.last_registration_try = -math.inf
        self._tries = 0  # registrations tried (face-value and wide searches alternate)
        self._attitude_ms = 0.0  # mean square of the telemetry's attitude error, measured on the map (deg^2)
        self._attitude_drift_ms = 0.0  # ... and of how fast it changes ((deg/s)^2)
        self._last_attitude_error: tuple[float, np.ndarray, float] | None = None  # (t, axis error, its sigma)
        self.next_relocalization = -math.inf
        self.rejections = 0
        self.start = start
        self.last_height: tuple[float, float] | None = None  # (t, height above ground used)
        self._last_tel_yaw: tuple[float, float] | None = None
        self.yaw_rate = 0.0  # deg/s, from the telemetry's yaw
        self._reloc_round = 0
        if start is not None:
            self._check_on_map(start[0], start[1], "the start position")
            self._home_from(*self.cache.geodesy.from_latlon(start[0], start[1]))

    def _home_from(self, x: float, y: float) -> None:
        """Without a configured home elevation, the DEM at the first known position (the start)."""
        if self.terrain is not None and self.home_elevation is None:
            z = self.terrain.elevation(x, y)
            if math.isfinite(z):
                self.home_elevation = z
                log.info("home elevation %.1f m from the DEM at the start position", z)

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
        self._home_from(x, y)
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
               vehicle_pitch_deg: float | None = None, range_m: float | None = None) -> Estimate:
        """Estimate the drone's position from one frame of a sequence.

        yaw_deg: the compass's camera heading (clockwise from north), a prior whose error is
        learned; altitude_m: the autopilot's altitude above home (above the ground on flat land;
        with a DEM it is turned into the height above the ground under the camera); range_m: a
        downward rangefinder's distance; pitch_deg: camera tilt forward from nadir (default: the
        configured mount tilt); roll_deg / vehicle_pitch_deg: vehicle attitude for cameras fixed
        to the airframe.
        """
        t = time.time() if t is None else float(t)
        lat_ms: dict[str, float] = {}
        t0 = time.perf_counter()
        frame = check_frame(frame_rgb)
        if self.calibration is not None:  # the lens's distortion out: every stage sees a pinhole
            undistort = self.calibration.undistorter(frame.shape[1], frame.shape[0])
            frame = undistort(frame)
            intr = Intrinsics(frame.shape[1], frame.shape[0], undistort.hfov_deg)
        else:
            intr = Intrinsics(frame.shape[1], frame.shape[0], self.cfg.hfov_deg)
        est = Estimate(t, NO_FIX, track_id=self.track_id)
        if self.start is not None and not self.filter.initialized:
            self.set_prior(t, *self.start, source="start position")
            self.start = None
        pose, notes = self._pose(t, yaw_deg, altitude_m, pitch_deg, roll_deg, vehicle_pitch_deg, range_m)
        est.telemetry_yaw = float(yaw_deg) % 360 if yaw_deg is not None and math.isfinite(yaw_deg) else math.nan
        est.telemetry_altitude = float(altitude_m) if altitude_m is not None and math.isfinite(altitude_m) else math.nan

        # 1. odometry ------------------------------------------------------------------------
        t1 = time.perf_counter()
        step, pose = self._odometry(frame, t, pose, intr, notes)
        lat_ms["odometry"] = (time.perf_counter() - t1) * 1e3

        # 2. prediction ----------------------------------------------------------------------
        if self.filter.initialized:
            self._advance(t, step, est, notes)

        # 3-5. registration (with a track) or relocalization (without), then the filter ----------
        t3 = time.perf_counter()
        if self.filter.initialized and self._registration_due(t):
            self.last_registration_try = t
            face_value = self._next_try_at_face_value()
            radius = self._search_radius(narrow=face_value)
            if radius <= self.cfg.max_search_radius_m:
                reg, used = self._register(frame, intr, pose, radius, self._hypotheses(face_value, steps=True))
                self._fuse(t, reg, used, est, notes)
            elif self.relocalizer is not None and t >= self.next_relocalization:
                self._relocalize(t, frame, intr, pose, est, notes,
                                 window=(float(self.filter.x[0]), float(self.filter.x[1]), radius))
        elif not self.filter.initialized and self.relocalizer is not None and t >= self.next_relocalization:
            self._relocalize(t, frame, intr, pose, est, notes)
        lat_ms["registration"] = (time.perf_counter() - t3) * 1e3

        # 6. estimate ------------------------------------------------------------------------
        pose = replace(pose, yaw=self.bias.heading, altitude=self.bias.height)
        self.odometry.retag(t, pose)  # the next frame's odometry starts from what this frame learned
        self.last_height = (t, pose.altitude)
        self._finish(est, t, pose, notes)
        lat_ms["total"] = (time.perf_counter() - t0) * 1e3
        est.latency_ms = {k: round(v, 2) for k, v in lat_ms.items()}
        return est

    def _pose(self, t, yaw, alt, tilt, roll, vpitch, range_m) -> tuple[Pose, list[str]]:
        """This frame's pose from the telemetry as a prior (bias stage): heading and height are
        the localizer's own estimates, the telemetry's errors learned from the map."""
        notes: list[str] = []
        yaw = (float(yaw) + self.grid_rotation) % 360.0 if yaw is not None and math.isfinite(yaw) else None
        if yaw is None:
            notes.append("no yaw from telemetry: heading from the map and odometry")
        else:  # how fast the telemetry says the camera turns: late attitude is a heading error then
            if self._last_tel_yaw is not None and 0 < t - self._last_tel_yaw[0] < 1.0:
                rate = ((yaw - self._last_tel_yaw[1] + 180.0) % 360.0 - 180.0) / (t - self._last_tel_yaw[0])
                self.yaw_rate = 0.5 * self.yaw_rate + 0.5 * rate if abs(rate) < 360 else self.yaw_rate
            self._last_tel_yaw = (t, yaw)
        roll_f, vp_f = float(roll or 0.0), float(vpitch or 0.0)
        tilt_f = self.cfg.camera_pitch_deg if tilt is None or not math.isfinite(tilt) else float(tilt)
        href, kind = None, "none"
        if range_m is not None and math.isfinite(range_m) and range_m > 0:
            href, kind = float(range_m) * math.cos(math.radians(roll_f)) * math.cos(math.radians(vp_f)), "rangefinder"
        elif alt is not None and math.isfinite(alt):
            href, kind = float(alt), "baro"
            if self.terrain is not None and self.filter.initialized:
                if self.home_elevation is None:
                    notes.append("DEM without the home elevation: give --home-elevation or --start")
                else:
                    ground = self.terrain.elevation(float(self.filter.x[0]), float(self.filter.x[1]))
                    if math.isfinite(ground):
                        href, kind = float(alt) + self.home_elevation - ground, "dem"
            if href < MIN_HEIGHT_M:
                notes.append(f"altitude {alt:.0f} m is not above the ground: ignored" if href <= 0 else
                             f"altitude {alt:.1f} m: too low to see the map (on the ground?)")
                href, kind = None, "none"
        elif alt is not None:
            notes.append("altitude is not a number: ignored")
        if kind == "none" and not any(n.startswith("altitude") for n in notes):
            notes.append("no altitude from telemetry: height from the map and odometry")
        dist = 0.0
        if self.filter.initialized and self.last_height is not None:
            dist = math.hypot(*self.filter.velocity) * max(0.0, t - self.last_height[0])
        prior = self.bias.prior(t, yaw, href, kind, dist)
        pose = Pose(altitude=prior.height_m, yaw=prior.heading_deg, tilt=tilt_f, pitch=vp_f, roll=roll_f)
        return pose, notes

    def _odometry(self, frame, t: float, pose: Pose, intr: Intrinsics, notes: list[str]):
        """Odometry: the motion since the last frame. Its visual turn carries the heading where
        the telemetry has none or its yaw jumped, and its visual scale change carries the height
        where there is no altitude; otherwise the telemetry's own changes are the better ones
        (a gyro-stabilised yaw and a baro over short times), and the map measures their errors."""
        step = self.odometry.step(frame, t, pose, intr)
        if step is not None and step.ok:
            turn = 0.0
            if self.bias.yaw_ref != "compass":
                turn = step.rotation_deg
            elif abs(step.rotation_deg) > max(self.cfg.odometry.max_rotation_deg, 2.0 * abs(step.visual_turn_deg)):
                # a jump in the telemetry, not a turn it reports late (that mismatch is about the turn's size)
                turn = step.rotation_deg
                notes.append(f"telemetry yaw jumped by {-step.rotation_deg:+.0f} deg: heading carried by odometry")
            self.bias.odometry(turn, step.scale if self.bias.height_ref == "none" else 1.0)
            pose = replace(pose, yaw=self.bias.heading, altitude=self.bias.height)
        return step, pose

    def predict(self, t: float, why: str, velocity: tuple[float, float] | None = None,
                velocity_sigma: float = 1.0) -> Estimate:
        """The track carried to time t without a frame (the camera dropped out): dead reckoning,
        the accuracy growing, never "ok" (odometry is interrupted). velocity: the autopilot's own
        (true east, north, m/s; its IMU keeps it through an outage, where the filter's would carry
        on at the last speed through a stop), fused with `velocity_sigma`: the prediction stays
        on the vehicle, so registration finds it again when the frames come back."""
        est = Estimate(t, NO_FIX, track_id=self.track_id, source=NO_FRAME)
        if self.filter.initialized and t > self.filter.t:
            if velocity is not None and all(math.isfinite(v) for v in velocity):
                # the velocity of now carries the track from its last time to now (a vehicle that
                # braked does not coast on at the speed the last frame showed)
                self.filter.velocity_update(_turn(velocity, -self.grid_rotation), velocity_sigma)  # true -> grid
            self.filter.predict(t)
            self.evidence.no_odometry(t, self.cfg.status.max_odometry_gap_s)
            self.odometry.reset()  # the next frame has nothing to compare with
        alt = self.last_height[1] if self.last_height else math.nan
        self._finish(est, t, Pose(altitude=alt), [why])
        return est

    def _advance(self, t: float, step: OdometryStep | None, est: Estimate, notes: list[str]) -> None:
        """Prediction: move the track by odometry, or dead-reckon when odometry has nothing."""
        gap = self.cfg.status.max_odometry_gap_s
        if step is not None and step.ok and step.t - step.dt >= self.filter.t - 1e-6:
            self.filter.predict(step.t - step.dt)
            # a heading or height still uncertain turns and scales every step the same way
            rc = self.cfg.registration
            self.filter.odometry(t, (step.dx, step.dy), math.hypot(step.sigma, self._attitude_step_sigma(step)),
                                 self.bias.odometry_doubt(rc.max_rotation_deg, rc.max_scale_error),
                                 self.bias.odometry_doubt(rc.max_rotation_deg, rc.max_scale_error, at_face_value=True))
            self.evidence.odometry(t, step.distance, gap)
            est.odometry, est.source = True, "odometry"
        else:
            self.filter.predict(t)
            self.evidence.no_odometry(t, gap)
            est.source = "prediction"
            if step is not None and not step.ok:
                notes.append(f"no odometry: {step.reason}")

    def _next_try_at_face_value(self) -> bool:
        """Until the map has measured the telemetry's errors, every other registration around a
        track takes the telemetry at face value (narrow in heading, height and place, as strict
        as ever); the others search as wide as the bias stage's doubt. Relocalization always
        searches wide: its places come from retrieval, and over hills the height a place's DEM
        gives (at the tile's centre) is 7-16 % off what the frame shows, which a face-value try
        refused for a second at a time (first fix after 11 s on the hilly world, 0.2 s wide)."""
        self._tries += 1
        return self._tries % 2 == 1

    def _hypotheses(self, face_value: bool = False, steps: bool = False):
        """(heading, height) hypotheses and tolerances of one search (`TelemetryBias.hypotheses`);
        steps: at face value, also the narrow steps either side (around a track, whose place
        each of them turns: `_centre_of`)."""
        rc = self.cfg.registration
        return self.bias.hypotheses(rc.max_rotation_deg, rc.max_scale_error, at_face_value=face_value, steps=steps)

    def _registration_due(self, t: float) -> bool:
        """Every registration_interval_s, and sooner while odometry has made the track unsure
        (a manoeuvre with an airframe-fixed camera): registration does not rest on the attitude."""
        if t >= self.next_registration:
            return True
        return self.filter.position_sigma > self.cfg.register_above_sigma_m and t >= self.last_registration_try + self.cfg.retry_interval_s

    def _search_radius(self, narrow: bool = False) -> float:
        """3 sigma of the track and a margin; narrow: as far as the track can be off if the
        telemetry's heading and height are right (the face-value search), not the bias stage's
        whole doubt that every odometry step carries until the map has measured them."""
        cov = self.filter.narrow_position_cov() if narrow else self.filter.position_cov
        sigma = math.sqrt(max(np.linalg.eigvalsh(cov)))
        return max(self.cfg.min_search_radius_m, 3.0 * sigma + self.cfg.search_margin_m)

    def _register(self, frame, intr: Intrinsics, pose: Pose, radius: float, search) -> tuple[Registration, Pose]:
        """Registration around the prediction, as wide in heading and height as `search` (the
        bias stage's uncertainty: whole circle without yaw; a grid of heights without altitude)."""
        at = pose.moved_to(float(self.filter.x[0]), float(self.filter.x[1]))
        hyps, rot_tol, scale_tol = search
        reg = self.registration.register(frame, intr, at, radius, hypotheses=hyps, rotation_tol_deg=rot_tol,
                                         scale_tol=scale_tol, centre_of=self._centre_of)
        return reg, at

    def _centre_of(self, heading_offset_deg: float, height_factor: float) -> tuple[float, float]:
        """Where the drone is if the heading is off by heading_offset_deg (clockwise) and the
        height by height_factor: the track flown since the last fix, turned and scaled about it."""
        d = _turn(tuple(self.filter.flown_since_fix()), -heading_offset_deg)  # clockwise on the map
        a = self.filter.anchor
        return float(a[0] + height_factor * d[0]), float(a[1] + height_factor * d[1])

    def _fix_sigma(self, reg: Registration, altitude: float, pose: Pose | None = None) -> float:
        """1-sigma per axis of a registration fix: matching, map georeferencing, attitude, and the
        heading's doubt where the camera looks away from nadir (a tilted view's offset turns with it)."""
        alt = altitude if math.isfinite(altitude) else 0.0
        if reg.pose_solved:  # the camera's pose came from the map: the telemetry's attitude is not in it
            return math.sqrt(reg.sigma**2 + self.map_sigma**2)
        tilt = 0.0 if pose is None else min(60.0, pose.off_nadir_deg)
        # an angle error e moves the ground point seen at a slant t by h (tan(t + e) - tan t) ~ h e / cos^2 t
        att = alt * math.tan(math.radians(self.attitude_sigma_deg)) / math.cos(math.radians(tilt)) ** 2
        turn = 0.0
        if pose is not None:
            turn = alt * math.tan(math.radians(tilt)) * math.radians(min(90.0, self._heading_doubt()))
        return math.sqrt(reg.sigma**2 + self.map_sigma**2 + att**2 + turn**2)

    def _fuse(self, t: float, reg: Registration, pose: Pose, est: Estimate, notes: list[str]) -> None:
        """Filter: a verified registration that agrees with the track is fused; one that does not
        is rejected, and after `gate_resets` such in a row the track restarts from the registration."""
        est.inliers = reg.inliers
        if not reg.ok:
            self.next_registration = t + self.cfg.retry_interval_s
            notes.append(f"registration: {reg.reason}")
            self._doubt(reg, pose)
            return
        self.next_registration = t + self.cfg.registration_interval_s
        sigma = self._fix_sigma(reg, pose.altitude * reg.scale, pose)
        if self.filter.update((reg.x, reg.y), sigma):
            self.rejections = 0
            self._learn(reg, pose)
            self.evidence.registered(t)
            est.registered, est.source = True, "registration"
            return
        self.rejections += 1
        notes.append(f"registration {math.hypot(reg.x - self.filter.x[0], reg.y - self.filter.x[1]):.0f} m from the "
                     f"track rejected ({self.rejections} in a row)")
        if self.rejections >= self.cfg.gate_resets:
            self._start_track(t, (reg.x, reg.y), sigma, "registrations that disagree with the old track")
            self._learn(reg, pose)
            self.evidence.registered(t)
            est.registered, est.source = True, "registration"

    def _attitude_step_sigma(self, step: OdometryStep) -> float:
        """What the telemetry's attitude leaves uncertain in one odometry step: each frame's points
        go to the ground with its own roll and pitch, so a change of their error between the two
        frames (its timing in a fast pitch-up, an EKF's drift) moves the step by height x angle,
        more at a slant. At a 30 deg lean a 0.2 deg change is 0.5 m at 110 m."""
        h = self.bias.height
        slant = 1.0 / max(0.25, math.cos(math.radians(min(60.0, step.tilt_deg)))) ** 2
        rate = step.tilt_change_deg / max(step.dt, 1e-3)
        drift = max(self.cfg.attitude_drift_deg_s, math.sqrt(self._attitude_drift_ms))
        angle = math.hypot(rate * self.cfg.attitude_timing_s, drift * step.dt)
        return h * math.radians(angle) * slant

    def _heading_doubt(self) -> float:
        """1-sigma of this frame's heading: the estimate's, and the attitude's timing in a turn."""
        return math.hypot(self.bias.heading_sigma, self.yaw_rate * self.cfg.attitude_timing_s)

    @property
    def attitude_sigma_deg(self) -> float:
        """The telemetry's attitude error as the map measured it: every pose solved on the map
        compares its optical axis with the telemetry's (an EKF without GNSS can be degrees off
        in a manoeuvre); never below the configured attitude_sigma_deg."""
        return max(self.cfg.attitude_sigma_deg, math.sqrt(self._attitude_ms))

    def _learn(self, reg: Registration, used: Pose) -> None:
        """A fused registration measured the heading and height (and, solved on the map, the
        attitude's error): the bias stage learns them."""
        if math.isfinite(reg.attitude_error_deg):  # a pose solved on the map, used or not
            # only what stands out of the solve's own noise (3 sigma) is the telemetry's error: a
            # high, narrow view measures an exact attitude as 1-3 deg off. Fast to rise, slow to
            # forget: the error comes back with the next manoeuvre
            noise = reg.attitude_error_sigma_deg if math.isfinite(reg.attitude_error_sigma_deg) else 0.0
            e2 = max(0.0, reg.attitude_error_deg - 3.0 * noise) ** 2
            self._attitude_ms = e2 if e2 > self._attitude_ms else 0.95 * self._attitude_ms + 0.05 * e2
            last = self._last_attitude_error
            self._last_attitude_error = (self.filter.t, reg.attitude_error_axis, noise)
            if last is not None and 0.05 <= self.filter.t - last[0] <= 1.5:  # how fast that error changes
                change = math.degrees(float(np.linalg.norm(reg.attitude_error_axis - last[1])))
                r2 = (max(0.0, change - 3.0 * math.hypot(noise, last[2])) / (self.filter.t - last[0])) ** 2
                self._attitude_drift_ms = r2 if r2 > self._attitude_drift_ms else 0.95 * self._attitude_drift_ms + 0.05 * r2
        scale = used.altitude * reg.scale / self.bias.height  # against the current estimate
        rot_sigma = math.hypot(reg.rotation_sigma_deg, self.yaw_rate * self.cfg.attitude_timing_s)
        self.bias.registered(reg.rotation_deg + (used.yaw - self.bias.heading + 180.0) % 360.0 - 180.0,
                             rot_sigma, scale, reg.scale_sigma)

    def _doubt(self, reg: Registration, used: Pose) -> None:
        """A match refused only for its rotation or scale widens the next search to cover it."""
        if reg.failed_check == "rotation":
            self.bias.doubt(rotation_deg=reg.rotation_deg + (used.yaw - self.bias.heading + 180.0) % 360.0 - 180.0)
        elif reg.failed_check == "scale":
            self.bias.doubt(scale=used.altitude * reg.scale / self.bias.height)

    def _height_at(self, alt_above_home: float | None):
        """Per place, the height over the DEM there (relocalization tries places far apart)."""
        if self.terrain is None or self.home_elevation is None or alt_above_home is None \
                or self.bias.height_ref not in ("baro", "dem"):
            return None
        home, terrain, c = self.home_elevation, self.terrain, self.bias.c if self.bias.height_ref == "dem" else 0.0

        def height(x: float, y: float) -> float | None:
            z = terrain.elevation(x, y)
            h = alt_above_home + home - z
            return h * math.exp(c) if math.isfinite(h) and h > 0 else None
        return height

    def _relocalize(self, t, frame, intr, pose, est: Estimate, notes: list[str], window=None) -> None:
        self.next_relocalization = t + self.cfg.relocalization_interval_s
        hyps, rot_tol, scale_tol = self._hypotheses()
        per_try = self.cfg.relocalization.heights_per_try
        if len(hyps) > per_try:  # a bounded try; the next tries take the next heights (round robin)
            k = self._reloc_round % len(hyps)
            hyps = (hyps[k:] + hyps[:k])[:per_try]
            self._reloc_round += per_try
        alt_home = est.telemetry_altitude if math.isfinite(est.telemetry_altitude) else None
        r = self.relocalizer.relocalize(frame, intr, pose, window, hypotheses=hyps, rotation_tol_deg=rot_tol,
                                        scale_tol=scale_tol, height_at=self._height_at(alt_home))
        if r.matches.indices.size:
            est.best_tiles, est.best_score = r.matches.indices[:5].tolist(), float(r.matches.scores[0])
        if r.registration is None:
            notes.append(f"relocalization: none of {r.tried} retrieved places verified")
            for reg, used in r.refused or []:
                self._doubt(reg, used)
            return
        reg = r.registration
        self._start_track(t, (reg.x, reg.y), self._fix_sigma(reg, r.pose.altitude * reg.scale, r.pose),
                          "relocalization")
        self._learn(reg, r.pose)
        self.odometry.reset()
        self.odometry.step(frame, t, replace(pose, yaw=self.bias.heading, altitude=self.bias.height), intr)
        self.evidence.registered(t)
        self.next_registration = t + self.cfg.retry_interval_s  # confirm it soon
        est.registered, est.source, est.inliers = True, "relocalization", reg.inliers

    def _finish(self, est: Estimate, t: float, pose: Pose, notes: list[str]) -> None:
        """Estimate: accuracy (filter + what cannot average away) and the status rules."""
        est.track_id = self.track_id
        b = self.bias
        est.heading_deg, est.heading_sigma_deg = (b.heading - self.grid_rotation) % 360.0, b.heading_sigma
        est.height_m, est.height_sigma = b.height, b.height_sigma
        est.yaw_bias_deg = b.yaw_bias if b.yaw_bias is not None else math.nan
        est.height_scale = b.height_scale if b.height_scale is not None else math.nan
        if not self.filter.initialized:
            est.status, est.message = NO_FIX, "; ".join(notes) or "no track: relocalizing"
            return
        alt = pose.altitude if math.isfinite(pose.altitude) else (self.last_height[1] if self.last_height else 0.0)
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
        est.vx, est.vy = _turn(self.filter.velocity, self.grid_rotation)  # map grid -> true east/north
        est.velocity_sigma = self.filter.speed_sigma()
        est.since_registration_s = t - self.evidence.last_registration_t
        est.confidence = float(max(0.0, 1.0 - accuracy / self.cfg.status.ok_max_accuracy_m)) * (1.0 if status == OK else 0.5)
        if why:
            notes.append(why)
        est.message = "; ".join(notes)
