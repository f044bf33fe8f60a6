"""Video sources named by URI (jetson-inference style).

    path/to/video.mp4 | file://path     a video file (replayed at its own pace, every frame)
    path/to/folder/                      a folder of images, in name order
    loop://path/to/video.mp4             a recording played forever as a live camera (bench set-ups)
    v4l2:///dev/video0                   a V4L2 camera
    csi://0                              a Jetson CSI camera (GStreamer nvarguscamerasrc)
    rtsp://host/stream                   an RTSP stream
    gst://<pipeline ending in appsink>   a raw GStreamer pipeline

Live sources hand the localizer the newest frame (`LatestFrame`): stale frames are dropped,
not queued, and a lost camera is reopened.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from skyloc.errors import SkylocError
from skyloc.runtime.preprocess import image_files

log = logging.getLogger("skyloc.sources")


@dataclass
class Frame:
    image: np.ndarray | None  # RGB uint8, or None for a frame that could not be decoded
    index: int
    timestamp: float  # seconds: media time for files, wall clock for live sources
    arrival: float = 0.0  # wall clock when the capture thread got it
    capture: float | None = None  # when the exposure was, where the source knows it (None: unknown)


class Source:
    live = False

    def read(self) -> Frame | None:
        """The next frame, or None at the end of the source."""
        raise NotImplementedError

    def close(self) -> None:
        pass

    def last_time(self) -> float | None:
        """Timestamp of the last frame of a recording (None for live sources or when unknown)."""
        return None

    def __iter__(self):
        while True:
            f = self.read()
            if f is None:
                return
            yield f


class CaptureSource(Source):
    """Anything OpenCV's VideoCapture opens (files, V4L2, RTSP, GStreamer pipelines)."""

    def __init__(self, target, live: bool, backend: int = cv2.CAP_ANY, name: str = ""):
        self.target, self.backend, self.live, self.name = target, backend, live, name or str(target)
        self.cap = None
        self.index = 0
        self.open()

    def open(self) -> None:
        self.cap = cv2.VideoCapture(self.target, self.backend)
        if not self.cap.isOpened():
            raise SkylocError(f"cannot open video source {self.name}: check the URI, the device and "
                              "that OpenCV has the backend (GStreamer for csi:// and gst://)")
        self.fps = self.cap.get(cv2.CAP_PROP_FPS) or 0.0
        self.frame_count = int(self.cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)

    def last_time(self) -> float | None:
        if self.live or not self.fps or self.frame_count <= 0:
            return None
        return (self.frame_count - 1) / self.fps

    def read(self) -> Frame | None:
        ok, bgr = self.cap.read()
        if not ok:
            return None
        ts = time.time() if self.live else (self.cap.get(cv2.CAP_PROP_POS_MSEC) / 1e3 or self.index / (self.fps or 1))
        self.index += 1
        return Frame(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), self.index - 1, ts)

    def close(self) -> None:
        if self.cap is not None:
            self.cap.release()


class FolderSource(Source):
    """Images in name order; a file that does not decode yields a Frame with image=None.

    Frame times are `times` (e.g. each photo's UTC time) when given, else index / fps.
    """

    def __init__(self, folder: Path, fps: float = 5.0, times: list[float] | None = None):
        self.files = image_files(folder)
        if times is not None and len(times) != len(self.files):
            raise ValueError("one time per image")
        self.fps, self.index, self.times = fps, 0, times

    def read(self) -> Frame | None:
        if self.index >= len(self.files):
            return None
        p = self.files[self.index]
        bgr = cv2.imread(str(p), cv2.IMREAD_COLOR)
        img = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB) if bgr is not None else None
        if img is None:
            log.warning("skipping corrupt image %s", p)
        self.index += 1
        return Frame(img, self.index - 1, self._time(self.index - 1))

    def _time(self, i: int) -> float:
        return self.times[i] if self.times is not None else i / self.fps

    def last_time(self) -> float | None:
        return self._time(len(self.files) - 1)


class LoopSource(Source):
    """A recording played over and over at its own frame rate on the wall clock, like a live camera:
    the frame handed out is the one due now (late readers skip frames, as with a real camera)."""

    live = True

    def __init__(self, path: Path, fps: float | None = None):
        self.path = Path(path)
        if not self.path.is_file():
            raise SkylocError(f"video source not found: {path} (loop:// needs a video file)")
        self.cap = cv2.VideoCapture(str(self.path))
        if not self.cap.isOpened():
            raise SkylocError(f"cannot open video {path} for loop://")
        self.fps = fps or self.cap.get(cv2.CAP_PROP_FPS) or 10.0
        self.frames = int(self.cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        self.t0 = time.time()
        self.pos = 0  # frames read in total (over all laps)
        self.index = 0

    def read(self) -> Frame | None:
        due = int((time.time() - self.t0) * self.fps)
        if due < self.pos:  # early: wait for the frame's time
            time.sleep((self.pos - due) / self.fps)
            due = self.pos
        while self.pos < due:  # late: skip what a camera would have overwritten
            self._next(grab_only=True)
        bgr = self._next()
        self.index += 1
        img = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB) if bgr is not None else None
        shot = self.t0 + (self.pos - 1) / self.fps  # when the frame handed out was due: its exposure
        return Frame(img, self.index - 1, shot, capture=shot)

    def _next(self, grab_only: bool = False):
        ok = self.cap.grab()
        if not ok:  # end of the lap: start over
            self.cap.release()
            self.cap = cv2.VideoCapture(str(self.path))
            ok = self.cap.grab()
        self.pos += 1
        if grab_only or not ok:
            return None
        ok, bgr = self.cap.retrieve()
        return bgr if ok else None

    def lap_time(self, t: float) -> float:
        """Seconds into the recording of the frame shown at wall time t."""
        n = self.frames or 1
        return ((t - self.t0) * self.fps % n) / self.fps

    def close(self) -> None:
        self.cap.release()


def csi_pipeline(sensor: int, width: int = 1280, height: int = 720, fps: int = 30) -> str:
    return (f"nvarguscamerasrc sensor-id={sensor} ! video/x-raw(memory:NVMM),width={width},height={height},"
            f"framerate={fps}/1 ! nvvidconv ! video/x-raw,format=BGRx ! videoconvert ! video/x-raw,format=BGR ! "
            "appsink drop=true max-buffers=1")


def video_start_time(path: str | Path) -> float | None:
    """UTC start of a video file from its container's creation_time (MP4/MOV/MKV), or None."""
    try:
        import av
    except ImportError:
        return None
    from datetime import datetime

    try:
        with av.open(str(path)) as c:
            stamp = c.metadata.get("creation_time") or next(
                (s.metadata.get("creation_time") for s in c.streams if s.metadata.get("creation_time")), None)
    except Exception:  # not a container PyAV reads: no time, not an error here
        return None
    if not stamp:
        return None
    try:
        t = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    except ValueError:
        return None
    if t.tzinfo is None:
        from datetime import timezone

        t = t.replace(tzinfo=timezone.utc)
    return t.timestamp() if t.year > 1970 else None


def open_source(uri: str) -> Source:
    """Open a source by URI (see the module docstring)."""
    if uri.startswith("csi://"):
        return CaptureSource(csi_pipeline(int(uri[6:] or 0)), True, cv2.CAP_GSTREAMER, uri)
    if uri.startswith("gst://"):
        return CaptureSource(uri[6:], True, cv2.CAP_GSTREAMER, uri)
    if uri.startswith("v4l2://"):
        dev = uri[7:]
        return CaptureSource(dev, True, cv2.CAP_V4L2, uri)
    if uri.startswith(("rtsp://", "rtsps://", "http://", "https://")):
        return CaptureSource(uri, True, cv2.CAP_FFMPEG, uri)
    if uri.startswith("loop://"):
        return LoopSource(Path(uri[7:]))
    path = Path(uri[7:] if uri.startswith("file://") else uri)
    if path.is_dir():
        return FolderSource(path)
    if not path.is_file():
        raise SkylocError(f"video source not found: {uri} (a file, a folder, v4l2://, csi://, rtsp:// or gst://)")
    return CaptureSource(str(path), False, cv2.CAP_ANY, uri)


class LatestFrame:
    """Runs a live source on its own thread and keeps only the newest frame.

    The localizer takes whatever is newest when it is ready; frames in between are dropped. When
    the camera stops delivering, the source is reopened with a growing back-off.
    """

    def __init__(self, uri: str, reconnect_s: float = 1.0, opener=open_source):
        self.uri, self.reconnect_s, self.opener = uri, reconnect_s, opener
        self._lock = threading.Condition()
        self._frame: Frame | None = None
        self._seq = 0
        self._stop = threading.Event()
        self.dropped = 0
        self.reconnects = 0
        self.connected = False
        self.source = opener(uri)
        self.connected = True
        self.ended = False
        self._thread = threading.Thread(target=self._run, name="capture", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        backoff = self.reconnect_s
        start, first = time.time(), None
        while not self._stop.is_set():
            try:
                f = self.source.read()
            except Exception as exc:  # a driver error is a dropped camera, not a crash
                log.warning("camera %s error: %s", self.uri, exc)
                f = None
            if f is None:
                self.connected = False
                if not self.source.live:
                    self.ended = True
                    with self._lock:
                        self._lock.notify_all()
                    return
                self.source.close()
                log.warning("camera %s lost; reconnecting in %.1f s", self.uri, backoff)
                if self._stop.wait(backoff):
                    return
                try:
                    self.source = self.opener(self.uri)
                    self.connected, backoff = True, self.reconnect_s
                    self.reconnects += 1
                    log.info("camera %s reconnected", self.uri)
                except SkylocError:
                    backoff = min(backoff * 2, 10.0)
                continue
            if not self.source.live:  # a recording plays at its own pace, like a camera would
                first = f.timestamp if first is None else first
                shot = start + f.timestamp - first  # ... and knows when each frame was shot
                if self._stop.wait(max(0.0, shot - time.time())):
                    return
                f.capture = shot
            f.arrival = time.time()
            with self._lock:
                if self._frame is not None:
                    self.dropped += 1
                self._frame = f
                self._seq += 1
                self._lock.notify_all()

    def get(self, timeout: float = 1.0) -> Frame | None:
        """The newest frame not handed out before, or None after `timeout` (or at the end)."""
        with self._lock:
            if self._frame is None and not self.ended:
                self._lock.wait(timeout)
            f, self._frame = self._frame, None
            return f

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self.source.close()
