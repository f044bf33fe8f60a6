"""Recorded telemetry for replay: CSV (time, lat, lon, alt, yaw), DJI SRT subtitles, GPX tracks."""
from __future__ import annotations

import csv
import math
import re
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


class TelemetryTrack:
    """Samples sorted by time; `at(t)` interpolates (yaw on the circle)."""

    def __init__(self, samples: list[TelemetrySample], source: str):
        if not samples:
            raise SkylocError(f"{source} holds no telemetry samples")
        samples = sorted(samples, key=lambda s: s.time)
        self.source = source
        self.t = np.array([s.time for s in samples])
        self.lat = np.array([s.lat for s in samples])
        self.lon = np.array([s.lon for s in samples])
        self.alt = np.array([s.alt for s in samples])
        self.roll = np.array([s.roll for s in samples])
        self.pitch = np.array([s.pitch for s in samples])
        yaw = np.array([s.yaw for s in samples])
        if np.all(np.isnan(yaw)) and len(samples) > 1:  # GPX/SRT without yaw: the track's bearing
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
                               interp(self.pitch))


def load_telemetry(path: str | Path) -> TelemetryTrack:
    p = Path(path)
    if not p.is_file():
        raise SkylocError(f"telemetry file not found: {p}")
    suffix = p.suffix.lower()
    try:
        if suffix == ".csv":
            return TelemetryTrack(_csv(p), str(p))
        if suffix == ".srt":
            return TelemetryTrack(_srt(p), str(p))
        if suffix == ".gpx":
            return TelemetryTrack(_gpx(p), str(p))
    except (ValueError, KeyError, ET.ParseError) as exc:
        raise SkylocError(f"cannot parse telemetry {p}: {exc}") from None
    raise SkylocError(f"unknown telemetry format {p.suffix!r}: use .csv (time,lat,lon,alt,yaw), .srt (DJI) or .gpx")


def _csv(p: Path) -> list[TelemetrySample]:
    with open(p, newline="") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or "time" not in reader.fieldnames:
            raise ValueError("the CSV needs a header with at least 'time' (and lat, lon, alt, yaw)")

        def num(row, k):
            v = row.get(k, "")
            return float(v) if v not in ("", None) else math.nan

        return [TelemetrySample(float(r["time"]), num(r, "lat"), num(r, "lon"), num(r, "alt"), num(r, "yaw"))
                for r in reader]


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
