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

from skyloc.onboard.config import DaemonConfig
from skyloc.onboard.pipeline import AutopilotTelemetry, FrameLoop, Step
from skyloc.onboard.sources import LatestFrame
from skyloc.runtime.estimate import Estimate

log = logging.getLogger("skyloc.daemon")


def open_link(cfg: DaemonConfig):
    """The MAVLink link the config asks for (None without a `mavlink` section), started."""
    if cfg.mavlink is None:
        return None
    from skyloc.onboard.mavlink import MavlinkLink

    m = cfg.mavlink
    key = None
    if m.signing_key:
        key = bytes.fromhex(m.signing_key) if _is_hex32(m.signing_key) else hashlib.sha256(m.signing_key.encode()).digest()
    link = MavlinkLink(m.url, m.outputs, m.gps_rate_hz, m.system_id, m.component_id, m.origin, key,
                       baud=m.baud, odometry_rate_hz=m.odometry_rate_hz, request_streams=m.request_streams,
                       send_heading=m.send_heading, gps_id=m.gps_id)
    link.mount_yaw_deg = cfg.camera.mount_yaw_deg
    link.compass_warn_deg = cfg.localizer.compass_warn_deg
    return link.start()


class Daemon:
    """The camera and the autopilot around `FrameLoop`, with the frame log and the status file.
    `opener(uri) -> Source` replaces how the camera is opened (bench set-ups and fault injection);
    `frames` replaces the camera's newest-frame queue altogether (anything with LatestFrame's face);
    `outputs` see every `Step` after the daemon's own log and status."""

    def __init__(self, cfg: DaemonConfig, opener=None, frames=None, outputs=()):
        self.cfg = cfg
        self.opener = opener
        self._frames = frames
        self._outputs = list(outputs)
        self.stop_event = threading.Event()
        self.last: Estimate | None = None
        self.state = "starting"
        log.info("loading model %s (backend %s)", cfg.model, cfg.backend)
        self.localizer = cfg.open_localizer()
        self.embedder, self.cache = self.localizer.embedder, self.localizer.cache
        self.link = open_link(cfg)
        self.loop: FrameLoop | None = None
        self.camera = None  # LatestFrame, or the frames given
        self.log_dir = Path(cfg.log.dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.frame_log = FrameLog(self.log_dir / f"frames-{time.strftime('%Y%m%d-%H%M%S')}.csv") \
            if cfg.log.frames_csv else None

    @property
    def frames(self) -> int:
        return self.loop.frame_count if self.loop else 0

    @property
    def errors(self) -> int:
        return self.loop.errors if self.loop else 0

    def install_signal_handlers(self) -> None:
        def handler(signum, _frame):
            log.info("signal %d: shutting down", signum)
            self.stop_event.set()

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)

    def write_status(self) -> None:
        e, camera = self.last, self.camera
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
        self.camera = self._frames or (LatestFrame(self.cfg.source, opener=self.opener) if self.opener
                                       else LatestFrame(self.cfg.source))
        self.loop = FrameLoop(self.localizer, self.cfg.camera, AutopilotTelemetry(self.link), self.camera,
                              [self._observe, *self._outputs], link=self.link, max_fps=self.cfg.max_fps,
                              gnss_prior=self.cfg.localizer.gnss_prior,
                              velocity_sigma=self.cfg.localizer.autopilot_velocity_sigma, stop=self.stop_event)
        self.state = "running"
        log.info("running: source %s, %d tiles, outputs %s", self.cfg.source, len(self.cache),
                 self.cfg.mavlink.outputs if self.cfg.mavlink else "none")
        try:
            self.loop.run()
            if self.loop.ended:
                log.info("source %s ended", self.cfg.source)
                self.state = "source ended"
        finally:
            self.state = "stopped" if self.state == "running" else self.state
            self.camera.close()
            self.write_status()
            if self.link is not None:
                self.link.close()
            if self.frame_log:
                self.frame_log.close()
        log.info("stopped after %d frames (%d errors)", self.frames, self.errors)
        return 0

    def _observe(self, step: Step) -> None:
        est = step.estimate
        if self.last is None or est.status != self.last.status:
            log.info("status %s%s", est.status, f" ({est.message})" if est.message else "")
        self.last = est
        if self.frame_log:
            self.frame_log.write(step, self.frames)
        self.write_status()


class FrameLog:
    """The per-frame CSV log: what was estimated, from which telemetry, and what was learned."""

    columns = ["wall_time", "frame_time", "frame", "status", "lat", "lon", "accuracy_m", "confidence",
               "source", "yaw", "alt", "heading", "heading_sigma", "height", "yaw_bias",
               "height_scale", "latency_ms", "message"]

    def __init__(self, path: Path):
        self.path = path
        self._file = open(path, "w", newline="")
        self._csv = csv.writer(self._file)
        self._csv.writerow(self.columns)

    def write(self, step: Step, frame_count: int) -> None:
        est, yaw, alt = step.estimate, step.pose.yaw_deg, step.pose.altitude_m
        self._csv.writerow([f"{time.time():.3f}", f"{est.time:.3f}", frame_count, est.status, f"{est.lat:.8f}",
                            f"{est.lon:.8f}", f"{est.horizontal_accuracy:.1f}", f"{est.confidence:.3f}", est.source,
                            "" if yaw is None else f"{yaw:.1f}", "" if alt is None else f"{alt:.1f}",
                            *(f"{v:.3f}" if v is not None else "" for v in _bias_fields(est).values()),
                            f"{est.latency_ms.get('total', math.nan):.1f}", est.message])
        self._file.flush()

    def close(self) -> None:
        self._file.close()


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
