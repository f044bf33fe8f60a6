"""The onboard daemon: capture, inference and MAVLink on their own threads.

It keeps running through a camera that drops out, corrupt frames, an error on one frame and a
MAVLink peer that goes away; it stops cleanly on SIGTERM/SIGINT or when a file source ends.
"""
from __future__ import annotations

import csv
import hashlib
import json
import logging
import math
import os
import signal
import threading
import time
from pathlib import Path

from skyloc.runtime.cache import TileCache
from skyloc.onboard.config import DaemonConfig
from skyloc.runtime.embedder import create_embedder
from skyloc.onboard.sources import LatestFrame
from skyloc.runtime.estimate import NO_FIX, Estimate
from skyloc.runtime.bias import BiasConfig
from skyloc.runtime.localizer import Localizer, LocalizerConfig
from skyloc.runtime.relocalization import RelocalizationConfig

log = logging.getLogger("skyloc.daemon")


class Daemon:
    """`opener(uri) -> Source` replaces how the camera is opened (bench set-ups and fault injection)."""

    telemetry_timeout_s = 1.0  # older autopilot telemetry counts as missing, not as current

    def __init__(self, cfg: DaemonConfig, opener=None):
        self.cfg = cfg
        self.opener = opener
        self.stop_event = threading.Event()
        self.frames = 0
        self.errors = 0
        self.last: Estimate | None = None
        self.state = "starting"
        self._camera_lost = False
        log.info("loading model %s (backend %s)", cfg.model, cfg.backend)
        self.embedder = create_embedder(cfg.model, cfg.backend, engine_cache=cfg.engine_cache, precision=cfg.precision)
        self.cache = TileCache.load(cfg.cache, self.embedder.meta)
        ls = cfg.localizer
        self.localizer = Localizer(
            self.embedder, self.cache,
            LocalizerConfig(hfov_deg=cfg.camera.hfov_deg, camera_pitch_deg=cfg.camera.pitch_deg,
                            registration_interval_s=ls.registration_interval_s,
                            attitude_sigma_deg=ls.attitude_sigma_deg, altitude_range_m=ls.altitude_range_m,
                            dem=ls.dem, home_elevation_m=ls.home_elevation_m,
                            bias=BiasConfig(compass_sigma_deg=ls.compass_sigma_deg),
                            relocalization=RelocalizationConfig(top_k=ls.top_k)),
            map_path=cfg.map, use_faiss=ls.faiss, map_nodata=cfg.map_nodata, start=ls.start)
        self.link = None
        if cfg.mavlink is not None:
            from skyloc.onboard.mavlink import MavlinkLink

            m = cfg.mavlink
            key = None
            if m.signing_key:
                key = bytes.fromhex(m.signing_key) if _is_hex32(m.signing_key) else hashlib.sha256(m.signing_key.encode()).digest()
            self.link = MavlinkLink(m.url, m.outputs, m.gps_rate_hz, m.system_id, m.component_id, m.origin, key,
                                    baud=m.baud, odometry_rate_hz=m.odometry_rate_hz,
                                    request_streams=m.request_streams, send_heading=m.send_heading,
                                    gps_id=m.gps_id)
            self.link.mount_yaw_deg = cfg.camera.mount_yaw_deg
            self.link.compass_warn_deg = ls.compass_warn_deg
            self.link.start()
        self.log_dir = Path(cfg.log.dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self._csv_file = None
        if cfg.log.frames_csv:
            path = self.log_dir / f"frames-{time.strftime('%Y%m%d-%H%M%S')}.csv"
            self._csv_file = open(path, "w", newline="")
            self._csv = csv.writer(self._csv_file)
            self._csv.writerow(["wall_time", "frame_time", "frame", "status", "lat", "lon", "accuracy_m", "confidence",
                                "source", "yaw", "alt", "heading", "heading_sigma", "height", "yaw_bias",
                                "height_scale", "latency_ms", "message"])

    def install_signal_handlers(self) -> None:
        def handler(signum, _frame):
            log.info("signal %d: shutting down", signum)
            self.stop_event.set()

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)

    def write_status(self, camera: LatestFrame | None) -> None:
        e = self.last
        status = {
            "state": self.state, "time": time.time(), "frames": self.frames, "errors": self.errors,
            "camera_connected": bool(camera and camera.connected), "frames_dropped": camera.dropped if camera else 0,
            "estimate": None if e is None else {"status": e.status, "lat": e.lat if e.has_position else None,
                                                "lon": e.lon if e.has_position else None,
                                                "accuracy_m": e.horizontal_accuracy if e.has_position else None,
                                                "confidence": e.confidence, "latency_ms": e.latency_ms.get("total"),
                                                **_bias_fields(e)},
            "mavlink": None if self.link is None else {"autopilot_alive": self.link.stats.autopilot_alive,
                                                       "autopilot": self.link.stats.autopilot,
                                                       "sent": self.link.stats.sent,
                                                       "missing_streams": self.link.stats.missing_streams,
                                                       "link_losses": self.link.stats.link_losses},
        }
        p = Path(self.cfg.status_file)
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_suffix(".tmp")
        tmp.write_text(json.dumps(status))
        os.replace(tmp, p)

    def run(self) -> int:
        camera = LatestFrame(self.cfg.source, opener=self.opener) if self.opener else LatestFrame(self.cfg.source)
        self.state = "running"
        period = 1.0 / self.cfg.max_fps
        log.info("running: source %s, %d tiles, outputs %s", self.cfg.source, len(self.cache),
                 self.cfg.mavlink.outputs if self.cfg.mavlink else "none")
        try:
            while not self.stop_event.is_set():
                t_start = time.time()
                frame = camera.get(timeout=1.0)
                if frame is None:
                    if camera.ended:
                        log.info("source %s ended", self.cfg.source)
                        self.state = "source ended"
                        break
                    if not self._camera_lost:
                        self._camera_lost = True
                        log.warning("no camera frame for 1 s: outputs stop carrying a position")
                        if self.link is not None:
                            self.link.statustext("skyloc: camera lost", 4)
                    self._publish(self._outage_prediction(), None, None)
                    self.write_status(camera)
                    continue
                self.frames += 1
                now = time.time()
                if self._camera_lost:
                    self._camera_lost = False
                    log.info("camera frames again")
                    if self.link is not None:
                        self.link.statustext("skyloc: camera back", 6)
                # the time the frame shows: it may have waited in the queue, and the camera's own
                # pipeline (exposure, readout, encoding) takes latency_ms before it arrives
                shot = frame.capture or (frame.arrival or now) - self.cfg.camera.latency_ms / 1000.0
                tel = self.link.telemetry if self.link else None
                if tel is not None and now - tel.updated > self.telemetry_timeout_s:
                    tel = None  # the autopilot stopped streaming: stale attitude is no attitude
                yaw = roll = pitch = alt = rng = None
                if tel is not None:
                    yaw, roll, pitch, alt = tel.at(shot)
                    if self.cfg.camera.gimbal:  # the gimbal takes out the airframe's roll and pitch
                        roll = pitch = 0.0
                    if tel.range_m is not None and now - tel.range_time < self.telemetry_timeout_s:
                        rng = tel.range_m
                    if yaw is not None:
                        yaw = (yaw + self.cfg.camera.mount_yaw_deg) % 360
                self._gnss_prior(now)
                if frame.image is None:
                    est = self.localizer.predict(shot, "corrupt frame")
                else:
                    try:
                        est = self.localizer.locate(frame.image, shot, yaw, alt, roll_deg=roll, vehicle_pitch_deg=pitch,
                                                    range_m=rng)
                    except Exception as exc:  # one bad frame must not stop the daemon
                        self.errors += 1
                        log.error("frame %d failed: %s", frame.index, exc)
                        est = self._prediction_after_error(f"error: {exc}")
                self._publish(est, yaw, alt)
                self.write_status(camera)
                self.stop_event.wait(max(0.0, period - (time.time() - t_start)))
        finally:
            self.state = "stopped" if self.state == "running" else self.state
            camera.close()
            self.write_status(camera)
            if self.link is not None:
                self.link.close()
            if self._csv_file:
                self._csv_file.close()
        log.info("stopped after %d frames (%d errors)", self.frames, self.errors)
        return 0

    def _outage_prediction(self) -> Estimate:
        """No frame: the track carried on the autopilot's own velocity while its estimator has a
        position (an autopilot that reports none, e.g. a ground peer or an EKF never aided, sends a
        velocity of 0 that means nothing)."""
        now = time.time()
        tel = self.link.telemetry if self.link is not None else None
        v = tel.velocity if tel is not None and tel.lat is not None \
            and now - tel.velocity_time < self.telemetry_timeout_s else None
        return self.localizer.predict(now, "no camera frame", velocity=v,
                                      velocity_sigma=self.cfg.localizer.autopilot_velocity_sigma)

    def _prediction_after_error(self, why: str) -> Estimate:
        try:
            return self.localizer.predict(time.time(), why)
        except Exception:  # the localizer itself is broken: say so, with no position
            return Estimate(time.time(), NO_FIX, message=why)

    def _gnss_prior(self, now: float) -> None:
        """While skyloc has no confirmed track, the autopilot's own GNSS fix starts one. The raw
        receiver fix (GPS_RAW_INT) is used, never the EKF's output, and only while skyloc's own
        GPS_INPUT carries no fix, so skyloc's output is never fed back to itself as a prior."""
        if not self.cfg.localizer.gnss_prior or self.link is None:
            return
        fix = self.link.gnss_fix(now)
        if fix is None:
            return
        lat, lon, acc = fix
        if self.localizer.set_prior(now, lat, lon, radius_m=max(15.0, 3.0 * acc), source="autopilot GNSS"):
            log.info("track started from the autopilot's GNSS fix (+-%.0f m)", acc)

    def _publish(self, est: Estimate, yaw, alt) -> None:
        if self.link is not None:
            self.link.publish(est)
        if self.last is None or est.status != self.last.status:
            log.info("status %s%s", est.status, f" ({est.message})" if est.message else "")
        self.last = est
        if self._csv_file:
            self._csv.writerow([f"{time.time():.3f}", f"{est.time:.3f}", self.frames, est.status, f"{est.lat:.8f}",
                                f"{est.lon:.8f}", f"{est.horizontal_accuracy:.1f}", f"{est.confidence:.3f}", est.source,
                                "" if yaw is None else f"{yaw:.1f}", "" if alt is None else f"{alt:.1f}",
                                *(f"{v:.3f}" if v is not None else "" for v in _bias_fields(est).values()),
                                f"{est.latency_ms.get('total', math.nan):.1f}", est.message])
            self._csv_file.flush()


def _bias_fields(e: Estimate) -> dict:
    """What the localizer learned of the camera: heading and height used, compass error, height scale."""
    def num(v):
        return float(v) if v is not None and math.isfinite(v) else None
    return {"heading_deg": num(e.heading_deg), "heading_sigma_deg": num(e.heading_sigma_deg),
            "height_m": num(e.height_m), "yaw_bias_deg": num(e.yaw_bias_deg), "height_scale": num(e.height_scale)}


def _is_hex32(s: str) -> bool:
    try:
        return len(bytes.fromhex(s)) == 32
    except ValueError:
        return False


class JsonLogFormatter(logging.Formatter):
    """One JSON object per line (journald, Loki, jq-friendly)."""

    def format(self, record: logging.LogRecord) -> str:
        return json.dumps({"time": round(record.created, 3), "level": record.levelname.lower(),
                           "logger": record.name, "message": record.getMessage()})


def limit_malloc_arenas(arenas: int = 2) -> bool:
    """Fewer glibc malloc arenas before the threads start: the capture, inference and MAVLink
    threads each got an arena of their own, ~60 MB more resident memory in the soak (same as
    MALLOC_ARENA_MAX=2). A no-op where the C library is not glibc."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(-8, arenas))  # M_ARENA_MAX
    except (OSError, AttributeError):
        return False


def run_daemon(config_path: str | Path) -> int:
    limit_malloc_arenas()
    cfg = DaemonConfig.load(config_path)
    logger = logging.getLogger("skyloc")
    logger.setLevel(cfg.log.level.upper())
    if cfg.log.format == "json":
        handler = logging.StreamHandler()
        handler.setFormatter(JsonLogFormatter())
        logger.handlers[:] = [handler]
        logger.propagate = False
    daemon = Daemon(cfg)
    daemon.install_signal_handlers()
    return daemon.run()
