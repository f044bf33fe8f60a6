"""Recorded telemetry for replay: CSV (time, lat, lon, alt, yaw), DJI SRT subtitles, GPX tracks,
and autopilot logs: ArduPilot/PX4 telemetry logs (.tlog) and ArduPilot DataFlash logs (.bin),
both read with pymavlink, and PX4 ULog (.ulg) with pyulog.

CSV, SRT and GPX times are seconds from the video's start. Autopilot logs are on UTC (absolute
Unix seconds): replay aligns them to the video by its creation time or the photos' own times,
plus a `--time-offset` the user gives.
"""
from __future__ import annotations

import csv
import math
import re
import struct
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np

from skyloc.errors import SkylocError


@dataclass
class TelemetrySample:
    time: float
    lat: float = math.nan
    lon: float = math.nan
    alt: float = math.nan  # metres above ground (take-off)
    yaw: float = math.nan  # degrees clockwise from north (the camera's heading)
    roll: float = math.nan  # vehicle roll, degrees (for cameras fixed to the airframe)
    pitch: float = math.nan  # vehicle pitch, degrees
    tilt: float = math.nan  # camera tilt forward from nadir (a gimbal's setting), degrees
    range: float = math.nan  # downward rangefinder distance, metres


class TelemetryTrack:
    """Samples sorted by time; `at(t)` interpolates each quantity over the samples that have it
    (yaw on the circle). `absolute`: times are UTC Unix seconds (logs), else seconds into the video."""

    def __init__(self, samples: list[TelemetrySample], source: str, absolute: bool = False,
                 triggers: list[float] | None = None, yaw_from_track: bool = False):
        if not samples:
            raise SkylocError(f"{source} holds no telemetry samples")
        samples = sorted(samples, key=lambda s: s.time)
        self.source, self.absolute = source, absolute
        self.triggers = triggers or []  # camera trigger times (CAM/TRIG in DataFlash logs)
        self.tilt = np.array([s.tilt for s in samples], dtype=np.float64)
        self.range = np.array([s.range for s in samples], dtype=np.float64)
        self.t = np.array([s.time for s in samples], dtype=np.float64)
        self.lat = np.array([s.lat for s in samples], dtype=np.float64)
        self.lon = np.array([s.lon for s in samples], dtype=np.float64)
        self.alt = np.array([s.alt for s in samples], dtype=np.float64)
        self.roll = np.array([s.roll for s in samples], dtype=np.float64)
        self.pitch = np.array([s.pitch for s in samples], dtype=np.float64)
        yaw = np.array([s.yaw for s in samples], dtype=np.float64)
        if yaw_from_track and np.all(np.isnan(yaw)) and len(samples) > 1:  # GPX/SRT without yaw: the track's bearing
            dlat = np.gradient(self.lat)
            dlon = np.gradient(self.lon) * np.cos(np.radians(self.lat))
            yaw = np.degrees(np.arctan2(dlon, dlat)) % 360
        self.yaw = yaw

    def at(self, t: float) -> TelemetrySample:
        def interp(v):
            ok = ~np.isnan(v)
            return float(np.interp(t, self.t[ok], v[ok])) if ok.any() else math.nan

        yaw_ok = ~np.isnan(self.yaw)
        yaw = math.nan
        if yaw_ok.any():
            r = np.radians(self.yaw[yaw_ok])
            s, c = np.interp(t, self.t[yaw_ok], np.sin(r)), np.interp(t, self.t[yaw_ok], np.cos(r))
            yaw = math.degrees(math.atan2(s, c)) % 360
        return TelemetrySample(t, interp(self.lat), interp(self.lon), interp(self.alt), yaw, interp(self.roll),
                               interp(self.pitch), interp(self.tilt), interp(self.range))

    @property
    def span(self) -> tuple[float, float]:
        """First and last time with a position."""
        ok = ~np.isnan(self.lat)
        t = self.t[ok] if ok.any() else self.t
        return float(t[0]), float(t[-1])

    def covers(self, t: float, slack: float = 1.0) -> bool:
        lo, hi = self.span
        return lo - slack <= t <= hi + slack

    def describe_span(self) -> str:
        lo, hi = self.span
        if not self.absolute:
            return f"{lo:.1f}-{hi:.1f} s"
        return f"{utc_text(lo)}-{utc_text(hi)[11:]} UTC"


def utc_text(t: float) -> str:
    from datetime import timezone

    return datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f")[:22]


FORMATS = ".csv (time,lat,lon,alt,yaw), .srt (DJI), .gpx, .tlog (MAVLink), .bin (ArduPilot DataFlash) or .ulg (PX4)"


def load_telemetry(path: str | Path) -> TelemetryTrack:
    p = Path(path)
    if not p.is_file():
        raise SkylocError(f"telemetry file not found: {p}")
    suffix = p.suffix.lower()
    try:
        if suffix == ".csv":
            return TelemetryTrack(_csv(p), str(p))
        if suffix == ".srt":
            return TelemetryTrack(_srt(p), str(p), yaw_from_track=True)
        if suffix == ".gpx":
            return TelemetryTrack(_gpx(p), str(p), yaw_from_track=True)
        if suffix == ".tlog":
            return _tlog(p)
        if suffix in (".bin", ".log"):
            return _dataflash(p)
        if suffix == ".ulg":
            return _ulog(p)
    except (ValueError, KeyError, ET.ParseError, struct.error, IndexError) as exc:
        raise SkylocError(f"cannot parse telemetry {p}: {exc}") from None
    raise SkylocError(f"unknown telemetry format {p.suffix!r}: use {FORMATS}")


def _need_positions(samples: list[TelemetrySample], p: Path, what: str) -> None:
    if not any(math.isfinite(s.lat) for s in samples):
        raise SkylocError(f"{p} has no position messages ({what}): it cannot place the frames; "
                          "log them (ArduPilot: SRx_POSITION / LOG_BITMASK) or give a CSV")


def _tlog(p: Path) -> TelemetryTrack:
    """MAVLink telemetry log: GLOBAL_POSITION_INT (position, altitude above home), ATTITUDE.

    Times come from the autopilot's own clock (time_boot_ms), put on UTC by the smallest delay
    between it and the log's receive times: receive times alone jitter by the link's latency.
    """
    from pymavlink import mavutil

    try:
        conn = mavutil.mavlink_connection(str(p), dialect="ardupilotmega")
    except Exception as exc:
        raise SkylocError(f"cannot open {p} as a MAVLink log: {exc}") from None
    raw: list[tuple[str, float, float, object]] = []
    while True:
        try:
            msg = conn.recv_match(type=["GLOBAL_POSITION_INT", "ATTITUDE", "DISTANCE_SENSOR", "RANGEFINDER"])
        except Exception as exc:  # a truncated or damaged log: keep what was read
            raise SkylocError(f"{p} is damaged after {len(raw)} messages ({exc})") from None
        if msg is None:
            break
        if msg.get_type() == "RANGEFINDER":  # no boot time: placed by the log's receive time below
            raw.append((msg.get_type(), float(msg._timestamp), math.nan, msg))
            continue
        if msg.get_type() == "DISTANCE_SENSOR" and msg.orientation != 25:  # 25: MAV_SENSOR_ROTATION_PITCH_270, down
            continue
        raw.append((msg.get_type(), float(msg._timestamp), msg.time_boot_ms / 1000.0, msg))
    conn.close()
    if not raw:
        raise SkylocError(f"{p} has no GLOBAL_POSITION_INT or ATTITUDE messages: not a flight's telemetry log")
    # one offset per boot (time_boot_ms restarts when the autopilot reboots)
    offsets, session, boots = [], [], []
    last_boot = -1.0
    for _, recv, boot, _ in raw:
        if not math.isfinite(boot):
            boots.append(len(offsets))
            continue
        if boot < last_boot - 1.0:
            offsets.append(float(np.percentile(session, 1)))
            session = []
        session.append(recv - boot)
        boots.append(len(offsets))
        last_boot = boot
    offsets.append(float(np.percentile(session, 1)))
    samples = []
    for (kind, recv, boot, m), b in zip(raw, boots):
        t = boot + offsets[b] if math.isfinite(boot) else recv
        if kind == "RANGEFINDER":
            samples.append(TelemetrySample(t, range=float(m.distance)))
        elif kind == "DISTANCE_SENSOR":
            samples.append(TelemetrySample(t, range=m.current_distance / 100.0))
        elif kind == "GLOBAL_POSITION_INT":
            if m.lat == 0 and m.lon == 0:
                continue
            samples.append(TelemetrySample(t, m.lat / 1e7, m.lon / 1e7, m.relative_alt / 1000.0))
        else:
            samples.append(TelemetrySample(t, yaw=math.degrees(m.yaw) % 360, roll=math.degrees(m.roll),
                                           pitch=math.degrees(m.pitch)))
    _need_positions(samples, p, "GLOBAL_POSITION_INT")
    return TelemetryTrack(samples, str(p), absolute=True)


def _dataflash(p: Path) -> TelemetryTrack:
    """ArduPilot DataFlash log: POS (or GPS) position, ATT attitude, CAM/TRIG camera triggers.

    pymavlink's DFReader puts every message on UTC from the GPS week and time of week.
    """
    from pymavlink import DFReader

    try:
        log = DFReader.DFReader_binary(str(p), zero_time_base=False)
    except Exception as exc:
        raise SkylocError(f"cannot open {p} as an ArduPilot DataFlash log: {exc}") from None
    samples, triggers, gps = [], [], []
    home_alt = None
    while True:
        m = log.recv_match(type=["POS", "GPS", "ATT", "CAM", "TRIG", "RFND"])
        if m is None:
            break
        kind, t = m.get_type(), float(m._timestamp)
        if t < 1e9:  # no GPS time yet: the log's clock is not UTC
            continue
        if kind == "POS":
            alt = getattr(m, "RelHomeAlt", math.nan)
            samples.append(TelemetrySample(t, m.Lat, m.Lng, alt))
        elif kind == "GPS" and getattr(m, "Status", 3) >= 3:
            home_alt = m.Alt if home_alt is None else home_alt
            gps.append(TelemetrySample(t, m.Lat, m.Lng, m.Alt - home_alt))
        elif kind == "ATT":
            samples.append(TelemetrySample(t, yaw=m.Yaw % 360, roll=m.Roll, pitch=m.Pitch))
        elif kind in ("CAM", "TRIG"):
            triggers.append(t)
        elif kind == "RFND" and getattr(m, "Instance", 0) == 0 and getattr(m, "Stat", 4) == 4:  # 4: good data
            samples.append(TelemetrySample(t, range=float(m.Dist)))
    if not any(math.isfinite(s.lat) for s in samples):  # no POS: fall back on the GPS itself
        samples += gps
    _need_positions(samples, p, "POS or GPS")
    return TelemetryTrack(samples, str(p), absolute=True, triggers=sorted(triggers))


def _ulog(p: Path) -> TelemetryTrack:
    """PX4 ULog: vehicle_global_position, vehicle_attitude; UTC from vehicle_gps_position."""
    from pyulog import ULog

    try:
        log = ULog(str(p), ["vehicle_global_position", "vehicle_attitude", "vehicle_gps_position", "home_position"])
    except Exception as exc:
        raise SkylocError(f"cannot open {p} as a PX4 ULog: {exc}") from None
    topics = {d.name: d.data for d in log.data_list}
    gps = topics.get("vehicle_gps_position")
    if gps is None or not np.any(gps.get("time_utc_usec", np.zeros(1)) > 0):
        raise SkylocError(f"{p} has no GPS UTC time (vehicle_gps_position): cannot align it to a video")
    ok = gps["time_utc_usec"] > 0
    offset = float(np.median(gps["time_utc_usec"][ok] - gps["timestamp"][ok])) / 1e6
    samples = []
    pos = topics.get("vehicle_global_position")
    if pos is not None:
        home = topics.get("home_position")
        home_alt = float(home["alt"][0]) if home is not None and len(home["alt"]) else float(pos["alt"][0])
        for t, lat, lon, alt in zip(pos["timestamp"], pos["lat"], pos["lon"], pos["alt"]):
            samples.append(TelemetrySample(t / 1e6 + offset, float(lat), float(lon), float(alt) - home_alt))
    att = topics.get("vehicle_attitude")
    if att is not None:
        q0, q1, q2, q3 = (att[f"q[{i}]"] for i in range(4))
        roll = np.degrees(np.arctan2(2 * (q0 * q1 + q2 * q3), 1 - 2 * (q1**2 + q2**2)))
        pitch = np.degrees(np.arcsin(np.clip(2 * (q0 * q2 - q3 * q1), -1, 1)))
        yaw = np.degrees(np.arctan2(2 * (q0 * q3 + q1 * q2), 1 - 2 * (q2**2 + q3**2))) % 360
        for t, r, pt, y in zip(att["timestamp"], roll, pitch, yaw):
            samples.append(TelemetrySample(t / 1e6 + offset, yaw=float(y), roll=float(r), pitch=float(pt)))
    _need_positions(samples, p, "vehicle_global_position")
    return TelemetryTrack(samples, str(p), absolute=True)


def _csv(p: Path) -> list[TelemetrySample]:
    with open(p, newline="") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or "time" not in reader.fieldnames:
            raise ValueError("the CSV needs a header with at least 'time' (and lat, lon, alt, yaw)")

        def num(row, k):
            v = row.get(k, "")
            return float(v) if v not in ("", None) else math.nan

        return [TelemetrySample(float(r["time"]), num(r, "lat"), num(r, "lon"), num(r, "alt"), num(r, "yaw"),
                                range=num(r, "range")) for r in reader]


_SRT_TIME = re.compile(r"(\d+):(\d+):(\d+)[,.](\d+)\s*-->")
_SRT_FIELDS = {
    "lat": re.compile(r"latitude\s*:\s*(-?[\d.]+)"),
    "lon": re.compile(r"longitude\s*:\s*(-?[\d.]+)"),
    "alt": re.compile(r"rel_alt\s*:\s*(-?[\d.]+)"),
    "yaw": re.compile(r"(?:gb_yaw|yaw)\s*:\s*(-?[\d.]+)"),
}
_SRT_GPS = re.compile(r"GPS\s*\(\s*(-?[\d.]+)\s*,\s*(-?[\d.]+)\s*,\s*(-?[\d.]+)\s*\)")


def _srt(p: Path) -> list[TelemetrySample]:
    """DJI subtitle telemetry: new style `[latitude: ..] [longitude: ..] [rel_alt: ..]` or GPS(lon,lat,alt)."""
    out = []
    for block in re.split(r"\n\s*\n", p.read_text(errors="replace")):
        m = _SRT_TIME.search(block)
        if not m:
            continue
        h, mi, s, ms = (int(v) for v in m.groups())
        t = h * 3600 + mi * 60 + s + ms / 1000
        vals = {k: float(r.search(block).group(1)) if r.search(block) else math.nan for k, r in _SRT_FIELDS.items()}
        g = _SRT_GPS.search(block)
        if g and math.isnan(vals["lat"]):
            vals["lon"], vals["lat"], vals["alt"] = (float(v) for v in g.groups())
        yaw = vals["yaw"] % 360 if not math.isnan(vals["yaw"]) else math.nan
        out.append(TelemetrySample(t, vals["lat"], vals["lon"], vals["alt"], yaw))
    return out


def _gpx(p: Path) -> list[TelemetrySample]:
    root = ET.parse(p).getroot()
    ns = {"g": root.tag.split("}")[0].strip("{")} if root.tag.startswith("{") else {}
    q = ".//g:trkpt" if ns else ".//trkpt"
    pts = root.findall(q, ns)
    out, t0, ground = [], None, None
    for pt in pts:
        te = pt.find("g:time" if ns else "time", ns)
        ee = pt.find("g:ele" if ns else "ele", ns)
        if te is None:
            raise ValueError("a GPX track point has no <time>")
        ts = datetime.fromisoformat(te.text.replace("Z", "+00:00")).timestamp()
        t0 = ts if t0 is None else t0
        ele = float(ee.text) if ee is not None else math.nan
        ground = ele if ground is None else ground
        out.append(TelemetrySample(ts - t0, float(pt.get("lat")), float(pt.get("lon")), ele - ground, math.nan))
    return out
