"""ROS recordings for replay: ROS 1 bags (.bag), ROS 2 bags (a folder with metadata.yaml, or its
.db3 / .mcap file), read with rosbags. A bag holds the camera and the telemetry on one clock:

    images    sensor_msgs/Image (rgb8, bgr8, rgba8, bgra8, mono8, mono16, bayer_*, yuv422) or
              sensor_msgs/CompressedImage (JPEG, PNG)
    position  sensor_msgs/NavSatFix: truth for the report
    altitude  std_msgs/Float64 or Float32: the height above home (MAVROS's
              /mavros/global_position/rel_alt); without one, the NavSatFix altitude above the
              first fix (right only for a recording that starts on the ground)
    attitude  sensor_msgs/Imu or nav_msgs/Odometry orientation (REP 103: ENU world, FLU body), or
              px4_msgs/VehicleAttitude (NED world, FRD body)
    height    sensor_msgs/Range (a downward rangefinder)

Each message is placed at its header stamp (the capture, for a camera driver that stamps its
frames), or at the bag's receive time where the stamp is zero.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from skyloc.errors import SkylocError
from skyloc.onboard.sources import Frame, Source
from skyloc.onboard.telemetry import TelemetrySample, TelemetryTrack

log = logging.getLogger("skyloc.bags")

BAG_SUFFIXES = (".bag", ".db3", ".mcap")
ROLES = {  # role -> message types that fill it, in order of preference
    "image": ("sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage"),
    "fix": ("sensor_msgs/msg/NavSatFix",),
    "attitude": ("px4_msgs/msg/VehicleAttitude", "sensor_msgs/msg/Imu", "nav_msgs/msg/Odometry"),
    "range": ("sensor_msgs/msg/Range",),
    # the height above home, as MAVROS publishes it (/mavros/global_position/rel_alt)
    "altitude": ("std_msgs/msg/Float64", "std_msgs/msg/Float32"),
}
# ENU world -> NED world, and FRD body -> FLU body (both their own inverse)
_ENU_TO_NED = np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, -1.0]])
_FRD_TO_FLU = np.diag([1.0, -1.0, -1.0])


def is_bag(path: str | Path) -> bool:
    p = Path(path)
    return p.suffix.lower() in BAG_SUFFIXES or (p.is_dir() and (p / "metadata.yaml").is_file())


@dataclass
class BagTopics:
    """The topics a replay reads; None: the bag's only (or busiest) topic of the role's types."""

    image: str | None = None
    fix: str | None = None
    attitude: str | None = None
    range: str | None = None
    altitude: str | None = None


def _reader(path: Path):
    from rosbags.highlevel import AnyReader
    from rosbags.typesys import Stores, get_typestore

    if not path.exists():
        raise SkylocError(f"bag not found: {path}")
    # a ROS 2 bag is its folder; its .db3/.mcap file is accepted where metadata.yaml sits beside it
    target = path.parent if path.suffix.lower() in (".db3", ".mcap") and (path.parent / "metadata.yaml").is_file() \
        else path
    reader = AnyReader([target], default_typestore=get_typestore(Stores.ROS2_HUMBLE))
    try:
        reader.open()
    except Exception as exc:  # rosbags raises its own errors per format; the message names the cause
        raise SkylocError(f"cannot read bag {path}: {str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__} "
                          "(a corrupt or unfinished recording? ROS 2: give the bag's folder)") from None
    return reader


def _topic_list(reader) -> str:
    return ", ".join(f"{c.topic} ({c.msgtype}, {c.msgcount})" for c in sorted(reader.connections, key=lambda c: c.topic)) \
        or "none"


def _pick(reader, role: str, wanted: str | None, path: Path):
    """The connection of a role: the named topic, or the busiest topic of the role's types."""
    types = ROLES[role]
    if wanted is not None:
        conns = [c for c in reader.connections if c.topic == wanted]
        if not conns:
            raise SkylocError(f"{path} has no topic {wanted}; its topics: {_topic_list(reader)}")
        if conns[0].msgtype not in types:
            raise SkylocError(f"topic {wanted} of {path} is {conns[0].msgtype}; --{role}-topic takes "
                              f"{' or '.join(types)}")
        return conns[0]
    for msgtype in types:
        conns = [c for c in reader.connections if c.msgtype == msgtype]
        if role == "altitude":  # a bare number: only a topic named as MAVROS names it, unless chosen
            conns = [c for c in conns if c.topic.rstrip("/").endswith("rel_alt")]
        if conns:
            best = max(conns, key=lambda c: c.msgcount)
            if len(conns) > 1:
                log.info("%s: %d %s topics, using %s (the busiest; choose with --%s-topic)", path.name, len(conns),
                         msgtype, best.topic, role)
            return best
    return None


def _stamp(msg, receive_ns: int) -> float:
    header = getattr(msg, "header", None)
    if header is not None:
        t = header.stamp.sec + header.stamp.nanosec * 1e-9
        if t > 0:
            return t
    return receive_ns * 1e-9


def image_to_rgb(msg, msgtype: str) -> np.ndarray | None:
    """A ROS image message as RGB uint8; None for a frame that does not decode."""
    if msgtype.endswith("CompressedImage"):
        bgr = cv2.imdecode(np.frombuffer(bytes(msg.data), np.uint8), cv2.IMREAD_COLOR)
        return None if bgr is None else cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    enc = msg.encoding.lower()
    h, w, step = int(msg.height), int(msg.width), int(msg.step)
    data = np.frombuffer(bytes(msg.data), np.uint8)
    if h == 0 or w == 0 or data.size < h * step:
        return None
    rows = data[: h * step].reshape(h, step)
    if enc in ("mono16", "16uc1"):
        grey = rows[:, : 2 * w].copy().view(">u2" if msg.is_bigendian else "<u2").reshape(h, w)
        return cv2.cvtColor((grey >> 8).astype(np.uint8), cv2.COLOR_GRAY2RGB)
    channels = {"rgb8": 3, "bgr8": 3, "8uc3": 3, "rgba8": 4, "bgra8": 4, "8uc4": 4, "mono8": 1, "8uc1": 1,
                "yuv422": 2, "uyvy": 2, "yuyv": 2, "yuv422_yuy2": 2}
    if enc.startswith("bayer_") and enc.endswith("8"):
        raw = rows[:, :w]
        code = {"rg": cv2.COLOR_BayerRG2RGB, "bg": cv2.COLOR_BayerBG2RGB, "gb": cv2.COLOR_BayerGB2RGB,
                "gr": cv2.COLOR_BayerGR2RGB}[enc[6:8]]
        # OpenCV names Bayer patterns by the second row's first two pixels
        code = {cv2.COLOR_BayerRG2RGB: cv2.COLOR_BayerBG2RGB, cv2.COLOR_BayerBG2RGB: cv2.COLOR_BayerRG2RGB,
                cv2.COLOR_BayerGB2RGB: cv2.COLOR_BayerGR2RGB, cv2.COLOR_BayerGR2RGB: cv2.COLOR_BayerGB2RGB}[code]
        return cv2.cvtColor(np.ascontiguousarray(raw), code)
    if enc not in channels:
        raise SkylocError(f"image encoding {msg.encoding!r} is not supported (rgb8, bgr8, rgba8, bgra8, mono8, "
                          "mono16, bayer_*8, yuv422, or a CompressedImage topic)")
    c = channels[enc]
    img = np.ascontiguousarray(rows[:, : w * c].reshape(h, w, c) if c > 1 else rows[:, :w])
    if c == 1:
        return cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)
    if c == 2:
        return cv2.cvtColor(img, cv2.COLOR_YUV2RGB_UYVY if enc in ("yuv422", "uyvy") else cv2.COLOR_YUV2RGB_YUYV)
    if enc in ("bgr8", "8uc3"):
        return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    if enc in ("bgra8", "8uc4"):
        return cv2.cvtColor(img, cv2.COLOR_BGRA2RGB)
    if enc == "rgba8":
        return cv2.cvtColor(img, cv2.COLOR_RGBA2RGB)
    return img


def _quat_matrix(w: float, x: float, y: float, z: float) -> np.ndarray:
    n = math.sqrt(w * w + x * x + y * y + z * z) or 1.0
    w, x, y, z = w / n, x / n, y / n, z / n
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
                     [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
                     [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)]])


def attitude_deg(msg, msgtype: str) -> tuple[float, float, float]:
    """(roll, pitch, heading) in degrees, aerospace convention (NED, FRD), from an attitude message."""
    if msgtype == "px4_msgs/msg/VehicleAttitude":
        r = _quat_matrix(*[float(v) for v in msg.q])  # FRD body -> NED
    else:
        q = msg.pose.pose.orientation if msgtype == "nav_msgs/msg/Odometry" else msg.orientation
        r = _ENU_TO_NED @ _quat_matrix(q.w, q.x, q.y, q.z) @ _FRD_TO_FLU
    roll = math.degrees(math.atan2(r[2, 1], r[2, 2]))
    pitch = math.degrees(-math.asin(max(-1.0, min(1.0, r[2, 0]))))
    heading = math.degrees(math.atan2(r[1, 0], r[0, 0])) % 360.0
    return roll, pitch, heading


def _telemetry(reader, conns: dict, path: Path) -> TelemetryTrack | None:
    wanted = [c for c in conns.values() if c is not None]
    if not wanted:
        return None
    samples: list[TelemetrySample] = []
    home_alt = math.nan
    for conn, receive_ns, raw in reader.messages(connections=wanted):
        msg = reader.deserialize(raw, conn.msgtype)
        t = _stamp(msg, receive_ns)
        if conn is conns["fix"]:
            if msg.status.status < 0 or not (math.isfinite(msg.latitude) and math.isfinite(msg.longitude)):
                continue  # NavSatStatus.STATUS_NO_FIX
            if math.isnan(home_alt) and math.isfinite(msg.altitude):
                home_alt = float(msg.altitude)
            alt = math.nan if conns["altitude"] is not None else float(msg.altitude) - home_alt
            samples.append(TelemetrySample(t, float(msg.latitude), float(msg.longitude), alt))
        elif conn is conns["altitude"]:  # std_msgs carry no header: the receive time
            samples.append(TelemetrySample(receive_ns * 1e-9, alt=float(msg.data)))
        elif conn is conns["attitude"]:
            roll, pitch, heading = attitude_deg(msg, conn.msgtype)
            samples.append(TelemetrySample(t, yaw=heading, roll=roll, pitch=pitch))
        else:
            if msg.min_range <= msg.range <= msg.max_range:
                samples.append(TelemetrySample(t, range=float(msg.range)))
    if not samples:
        return None
    return TelemetryTrack(samples, str(path), absolute=True)


class BagSource(Source):
    """The image topic of a bag, frame by frame, each at its capture stamp."""

    def __init__(self, path: Path, reader, conn):
        self.path, self.reader, self.conn, self.name = path, reader, conn, str(path)
        self._messages = reader.messages(connections=[conn])
        self._index = 0
        self._last = reader.end_time * 1e-9 if reader.end_time else None
        self._pending = self.read()  # the first frame, read ahead for its time

    def read(self) -> Frame | None:
        if getattr(self, "_pending", None) is not None:
            frame, self._pending = self._pending, None
            return frame
        try:
            conn, receive_ns, raw = next(self._messages)
        except StopIteration:
            return None
        except Exception as exc:  # a bag cut short: the frames so far stand, the replay ends here
            log.warning("%s ends early at frame %d: %s", self.path.name, self._index, exc)
            return None
        i, self._index = self._index, self._index + 1
        try:
            msg = self.reader.deserialize(raw, conn.msgtype)
        except Exception:
            return Frame(None, i, receive_ns * 1e-9, capture=receive_ns * 1e-9)
        t = _stamp(msg, receive_ns)
        return Frame(image_to_rgb(msg, conn.msgtype), i, t, capture=t)

    def first_time(self) -> float:
        return self._pending.timestamp if self._pending is not None else 0.0

    def last_time(self) -> float | None:
        return self._last

    def close(self) -> None:
        self.reader.close()


def open_bag(path: str | Path, topics: BagTopics | None = None) -> tuple[BagSource, TelemetryTrack | None]:
    """The bag's camera as a source, and its telemetry (None where it has none of the topics)."""
    path, topics = Path(path), topics or BagTopics()
    reader = _reader(path)
    try:
        image = _pick(reader, "image", topics.image, path)
        if image is None:
            raise SkylocError(f"{path} has no image topic (sensor_msgs/Image or CompressedImage); its topics: "
                              f"{_topic_list(reader)}")
        conns = {role: _pick(reader, role, getattr(topics, role), path)
                 for role in ("fix", "attitude", "range", "altitude")}
        telemetry = _telemetry(reader, conns, path)
    except SkylocError:
        reader.close()
        raise
    log.info("%s: images %s (%d), position %s, attitude %s, range %s, altitude %s", path.name, image.topic,
             image.msgcount, *(conns[r].topic if conns[r] else "-" for r in ("fix", "attitude", "range", "altitude")))
    if conns["fix"] is not None and conns["altitude"] is None:
        log.warning("%s has no relative altitude topic (std_msgs/Float64, e.g. /mavros/global_position/rel_alt): "
                    "the height is the NavSatFix altitude above the first fix, right only if the recording "
                    "starts on the ground", path.name)
    return BagSource(path, reader, image), telemetry
