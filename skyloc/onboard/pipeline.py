"""One path for a frame, flown or replayed.

    frames (camera | recording) -> telemetry at the frame's time (autopilot | log)
        -> camera pose (mount yaw, gimbal, tilt) -> Localizer.locate -> outputs (MAVLink, logs, report)

`FrameLoop` is the daemon's loop. The daemon feeds it the newest camera frame (`LatestFrame`) and
the autopilot's telemetry; replay feeds it every frame of a recording (`RecordedFrames`, or the
recording at its own pace through `LatestFrame` with `realtime`) and the flight's log
(`LoggedTelemetry`). Everything between (the pose rules, corrupt frames, errors, a camera that
stops) is this module's, once.
"""
from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass
from typing import Callable, Protocol

from skyloc.errors import ConfigError
from skyloc.onboard.config import CameraConfig
from skyloc.onboard.sources import Frame, Source
from skyloc.onboard.telemetry import TelemetrySample, TelemetryTrack
from skyloc.runtime.estimate import NO_FIX, Estimate
from skyloc.runtime.localizer import Localizer

log = logging.getLogger("skyloc.pipeline")


@dataclass
class CameraPose:
    """What the telemetry says of the camera when the frame was taken; None: not known."""

    yaw_deg: float | None = None  # camera heading (the vehicle's yaw plus the mount's)
    altitude_m: float | None = None  # above home (the DEM turns it into height above the ground)
    roll_deg: float | None = None  # airframe attitude, for a camera fixed to it
    vehicle_pitch_deg: float | None = None
    pitch_deg: float | None = None  # camera tilt from nadir a gimbal reports (None: the configured one)
    range_m: float | None = None  # downward rangefinder


def _finite(v) -> float | None:
    return float(v) if v is not None and math.isfinite(v) else None


def camera_pose(sample: TelemetrySample | None, camera: CameraConfig) -> CameraPose:
    """The one rule from telemetry to the camera's pose: the mount's yaw is added to the
    vehicle's, a gimbal takes out the airframe's roll and pitch, a reported tilt wins over the
    configured one."""
    if sample is None:
        return CameraPose()
    yaw = _finite(sample.yaw)
    if yaw is not None:
        yaw = (yaw + camera.mount_yaw_deg) % 360.0
    roll, pitch = (0.0, 0.0) if camera.gimbal else (_finite(sample.roll), _finite(sample.pitch))
    return CameraPose(yaw, _finite(sample.alt), roll, pitch, _finite(sample.tilt), _finite(sample.range))


class TelemetryFeed(Protocol):
    """Where the telemetry of a frame comes from: the autopilot live, or a flight's log."""

    def sample(self, frame: Frame, shot: float, now: float) -> TelemetrySample | None: ...

    def velocity(self, now: float) -> tuple[float, float] | None: ...

    def gnss_fix(self, now: float) -> tuple[float, float, float] | None: ...


class AutopilotTelemetry:
    """The autopilot's stream (MAVLink), at the frame's capture time on this clock."""

    timeout_s = 1.0  # older telemetry counts as missing, not as current

    def __init__(self, link):
        self.link = link

    def sample(self, frame: Frame, shot: float, now: float) -> TelemetrySample | None:
        tel = self.link.telemetry if self.link is not None else None
        if tel is None or now - tel.updated > self.timeout_s:
            return None  # the autopilot stopped streaming: stale attitude is no attitude
        s = tel.sample(shot)
        if tel.range_m is not None and now - tel.range_time < self.timeout_s:
            s.range = tel.range_m
        return s

    def velocity(self, now: float) -> tuple[float, float] | None:
        """The autopilot's own velocity while fresh and its estimator has a position."""
        tel = self.link.telemetry if self.link is not None else None
        return tel.aided_velocity(now, self.timeout_s) if tel is not None else None

    def gnss_fix(self, now: float) -> tuple[float, float, float] | None:
        return self.link.gnss_fix(now) if self.link is not None else None


class LoggedTelemetry:
    """A flight's log, looked up at the frame's recorded time. `yaw_offset_deg` / `drop_yaw`:
    replay with a compass that is off, or with none (what would my drone's do?)."""

    def __init__(self, track: TelemetryTrack | None, to_telemetry_time: Callable[[float], float] = float,
                 yaw_offset_deg: float = 0.0, drop_yaw: bool = False):
        self.track, self.to_telemetry_time = track, to_telemetry_time
        self.yaw_offset_deg, self.drop_yaw = yaw_offset_deg, drop_yaw

    def sample(self, frame: Frame, shot: float, now: float) -> TelemetrySample | None:
        if self.track is None:
            return None
        t = self.to_telemetry_time(frame.timestamp)
        if not self.track.covers(t):
            return None
        s = self.track.at(t)
        if self.drop_yaw:
            s.yaw = math.nan
        elif math.isfinite(s.yaw):
            s.yaw = (s.yaw + self.yaw_offset_deg) % 360.0
        return s

    def velocity(self, now: float) -> tuple[float, float] | None:
        return None  # a log's velocity is ground truth: never fed to the localizer

    def gnss_fix(self, now: float) -> tuple[float, float, float] | None:
        return None  # nor its positions


class RecordedFrames:
    """Every frame of a recording in turn, as fast as they are asked for (replay without
    `realtime`); the same face as `LatestFrame`."""

    connected = True
    dropped = 0

    def __init__(self, source: Source, max_frames: int | None = None):
        self.source, self.max_frames = source, max_frames
        self.ended = False
        self._frames = iter(source)

    def get(self, timeout: float = 1.0) -> Frame | None:
        f = None if self.ended else next(self._frames, None)
        if f is None or (self.max_frames is not None and f.index >= self.max_frames):
            self.ended = True
            return None
        f.capture = f.timestamp if f.capture is None else f.capture  # a recording knows when it was shot
        return f

    def close(self) -> None:
        self.source.close()


@dataclass
class Step:
    """One frame through the pipeline, as the outputs see it."""

    frame: Frame | None  # None: a prediction made without a frame (camera outage)
    sample: TelemetrySample | None
    pose: CameraPose
    estimate: Estimate


class FrameLoop:
    """The daemon's loop: newest frame -> telemetry at its capture time -> pose -> estimate ->
    outputs, until the frames end or `stop` is set. A corrupt frame or an error on one frame is a
    prediction, not a stop; no frame for a second is a camera outage (predictions that do not
    refresh the outputs' fix, and a STATUSTEXT)."""

    def __init__(self, localizer: Localizer, camera: CameraConfig, telemetry: TelemetryFeed, frames,
                 outputs: list[Callable[[Step], None]], link=None, max_fps: float | None = None,
                 gnss_prior: bool = True, velocity_sigma: float = 1.0, stop: threading.Event | None = None):
        self.localizer, self.camera, self.telemetry, self.frames = localizer, camera, telemetry, frames
        self.outputs, self.link, self.max_fps = outputs, link, max_fps
        self.gnss_prior, self.velocity_sigma = gnss_prior, velocity_sigma
        self.stop = stop or threading.Event()
        self.frame_count = 0
        self.errors = 0
        self.camera_lost = False
        self.ended = False

    def run(self) -> None:
        period = 1.0 / self.max_fps if self.max_fps else 0.0
        while not self.stop.is_set():
            t_start = time.time()
            frame = self.frames.get(timeout=1.0)
            if frame is None:
                if self.frames.ended:
                    self.ended = True
                    return
                self._outage()
                continue
            self.frame_count += 1
            if self.camera_lost:
                self.camera_lost = False
                log.info("camera frames again")
                self._statustext("skyloc: camera back", 6)
            self._emit(self.step(frame))
            if period:
                self.stop.wait(max(0.0, period - (time.time() - t_start)))

    def step(self, frame: Frame) -> Step:
        """One frame: its capture time (the source's, else its arrival minus the camera's
        latency: it may have waited in the queue, and exposure, readout and encoding come first),
        the telemetry of that moment, the estimate."""
        now = time.time()
        shot = frame.capture if frame.capture is not None else (frame.arrival or now) - self.camera.latency_ms / 1e3
        sample = self.telemetry.sample(frame, shot, now)
        pose = camera_pose(sample, self.camera)
        self._prior_from_gnss(now)
        if frame.image is None:
            est = self.localizer.predict(shot, "corrupt frame")
        else:
            try:
                est = self.localizer.locate(frame.image, shot, pose.yaw_deg, pose.altitude_m, pitch_deg=pose.pitch_deg,
                                            roll_deg=pose.roll_deg, vehicle_pitch_deg=pose.vehicle_pitch_deg,
                                            range_m=pose.range_m)
            except ConfigError:  # every frame would fail the same way: stop, with the one-line reason
                raise
            except Exception as exc:  # one bad frame must not stop the daemon
                self.errors += 1
                log.error("frame %d failed: %s", frame.index, exc)
                est = self._prediction(shot, f"error: {exc}")
        return Step(frame, sample, pose, est)

    def _outage(self) -> None:
        """No frame: the track carried on the autopilot's own velocity, never as a fix."""
        if not self.camera_lost:
            self.camera_lost = True
            log.warning("no camera frame for 1 s: outputs stop carrying a position")
            self._statustext("skyloc: camera lost", 4)
        now = time.time()
        est = self.localizer.predict(now, "no camera frame", velocity=self.telemetry.velocity(now),
                                     velocity_sigma=self.velocity_sigma)
        self._emit(Step(None, None, CameraPose(), est))

    def _prediction(self, t: float, why: str) -> Estimate:
        try:
            return self.localizer.predict(t, why)
        except Exception:  # the localizer itself is broken: say so, with no position
            return Estimate(t, NO_FIX, message=why)

    def _prior_from_gnss(self, now: float) -> None:
        """While skyloc has no confirmed track, the autopilot's own GNSS fix starts one. The raw
        receiver fix (GPS_RAW_INT) is used, never the EKF's output, and only while skyloc's own
        GPS_INPUT carries no fix, so skyloc's output is never fed back to itself as a prior."""
        if not self.gnss_prior:
            return
        fix = self.telemetry.gnss_fix(now)
        if fix is None:
            return
        lat, lon, acc = fix
        if self.localizer.set_prior(now, lat, lon, radius_m=max(15.0, 3.0 * acc), source="autopilot GNSS"):
            log.info("track started from the autopilot's GNSS fix (+-%.0f m)", acc)

    def _emit(self, step: Step) -> None:
        if self.link is not None:
            self.link.publish(step.estimate)
        for out in self.outputs:
            out(step)

    def _statustext(self, text: str, severity: int) -> None:
        if self.link is not None:
            self.link.statustext(text, severity)
