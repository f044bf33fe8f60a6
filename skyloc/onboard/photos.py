"""A folder of geotagged photos as a flight: each photo's pose and time from its own metadata.

EXIF (GPS position, DateTimeOriginal, focal length) and DJI's XMP (RelativeAltitude,
GimbalYawDegree, GimbalPitchDegree, FlightYawDegree, ...) are read with Pillow. A time in the file
name (e.g. `2018080501004480Z.jpg`, UTC with hundredths) wins over EXIF's, which has no time zone.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from skyloc.errors import SkylocError
from skyloc.onboard.telemetry import TelemetrySample, TelemetryTrack
from skyloc.runtime.preprocess import image_files

_NAME_TIME = re.compile(r"(20\d{2})(\d{2})(\d{2})[_-]?(\d{2})(\d{2})(\d{2})(\d{0,3})(Z?)")


@dataclass
class PhotoPose:
    path: Path
    time: float = math.nan  # UTC Unix seconds
    lat: float = math.nan
    lon: float = math.nan
    alt: float = math.nan  # metres above the take-off point (DJI RelativeAltitude)
    yaw: float = math.nan  # camera heading, degrees clockwise from north
    tilt: float = math.nan  # camera tilt forward from nadir
    roll: float = 0.0
    hfov: float = math.nan  # from the 35 mm equivalent focal length
    yaw_ambiguous: bool = False  # gimbal pointing straight down: its yaw and roll axes coincide


def time_from_name(name: str) -> float | None:
    """UTC time in a file name like 2018080501004480Z.jpg or IMG_20240501_101530.jpg."""
    m = _NAME_TIME.search(name)
    if not m:
        return None
    y, mo, d, h, mi, s, frac, _ = m.groups()
    try:
        t = datetime(int(y), int(mo), int(d), int(h), int(mi), int(s), tzinfo=timezone.utc).timestamp()
    except ValueError:
        return None
    return t + (int(frac) / 10 ** len(frac) if frac else 0.0)


def _xmp_description(img) -> dict:
    try:
        xmp = img.getxmp()
    except Exception:  # no XMP, or defusedxml missing
        return {}
    desc = xmp.get("xmpmeta", {}).get("RDF", {}).get("Description", {}) if isinstance(xmp, dict) else {}
    if isinstance(desc, list):
        merged: dict = {}
        for d in desc:
            merged.update(d if isinstance(d, dict) else {})
        desc = merged
    return desc if isinstance(desc, dict) else {}


def _num(d: dict, key: str) -> float:
    try:
        return float(d[key])
    except (KeyError, TypeError, ValueError):
        return math.nan


def read_photo_pose(path: str | Path) -> PhotoPose:
    """The pose a photo carries: EXIF GPS and time, DJI XMP altitude and gimbal angles, FOV."""
    from PIL import ExifTags, Image, UnidentifiedImageError

    path = Path(path)
    try:
        img = Image.open(path)
    except (OSError, UnidentifiedImageError) as exc:
        raise SkylocError(f"cannot read photo {path}: {exc}") from None
    with img:
        exif = img.getexif()
        gps = exif.get_ifd(ExifTags.IFD.GPSInfo)
        sub = exif.get_ifd(ExifTags.IFD.Exif)
        xmp = _xmp_description(img)
    pose = PhotoPose(path)
    try:
        lat = [float(v) for v in gps[ExifTags.GPS.GPSLatitude]]
        lon = [float(v) for v in gps[ExifTags.GPS.GPSLongitude]]
        pose.lat = (lat[0] + lat[1] / 60 + lat[2] / 3600) * (-1 if gps.get(ExifTags.GPS.GPSLatitudeRef) == "S" else 1)
        pose.lon = (lon[0] + lon[1] / 60 + lon[2] / 3600) * (-1 if gps.get(ExifTags.GPS.GPSLongitudeRef) == "W" else 1)
    except (KeyError, TypeError, IndexError, ZeroDivisionError):
        pass
    pose.alt = _num(xmp, "RelativeAltitude")
    gimbal_yaw, flight_yaw = _num(xmp, "GimbalYawDegree"), _num(xmp, "FlightYawDegree")
    yaw = gimbal_yaw if math.isfinite(gimbal_yaw) else flight_yaw
    pose.yaw = yaw % 360 if math.isfinite(yaw) else math.nan
    gimbal_pitch = _num(xmp, "GimbalPitchDegree")
    if math.isfinite(gimbal_pitch):
        pose.tilt = max(0.0, 90.0 + gimbal_pitch)  # -90 is straight down
        pose.yaw_ambiguous = abs(gimbal_pitch + 90.0) < 5.0
    f35 = sub.get(ExifTags.Base.FocalLengthIn35mmFilm)
    if f35:
        pose.hfov = math.degrees(2 * math.atan(17.3 / float(f35)))  # 4:3 sensor: 34.6 mm of the 43.3 mm diagonal
    t = time_from_name(path.name)
    if t is None:
        stamp = sub.get(ExifTags.Base.DateTimeOriginal) or exif.get(ExifTags.Base.DateTime)
        if stamp:
            offset = sub.get(ExifTags.Base.OffsetTimeOriginal) or "+00:00"
            frac = str(sub.get(ExifTags.Base.SubsecTimeOriginal) or "0")
            try:
                t = datetime.strptime(f"{stamp}{offset}", "%Y:%m:%d %H:%M:%S%z").timestamp() + float(f"0.{frac}")
            except ValueError:
                t = None
    pose.time = t if t is not None else math.nan
    return pose


def photo_times(files: list[Path]) -> list[float] | None:
    """Each photo's UTC time (file name, else EXIF); None when any photo has none."""
    times = []
    for f in files:
        t = time_from_name(f.name)
        if t is None:
            t = read_photo_pose(f).time
        if not math.isfinite(t):
            return None
        times.append(t)
    return times


def photo_track(folder: Path, times: list[float]) -> tuple[TelemetryTrack, list[PhotoPose]]:
    """The flight the photos describe: a telemetry track keyed on each photo's own time."""
    files = image_files(folder)
    poses = [read_photo_pose(f) for f in files]
    for p in poses:
        if not math.isfinite(p.alt):
            raise SkylocError(f"{p.path.name} has no altitude above ground in its metadata (DJI XMP RelativeAltitude):"
                              " pass --telemetry with the flight log (times from the file names or --time-offset)")
        if not math.isfinite(p.yaw):
            raise SkylocError(f"{p.path.name} has no camera heading in its metadata (XMP GimbalYawDegree or "
                              "FlightYawDegree): pass --telemetry with the flight log")
    samples = [TelemetrySample(t, p.lat, p.lon, p.alt, p.yaw, tilt=p.tilt if math.isfinite(p.tilt) else math.nan)
               for t, p in zip(times, poses)]
    return TelemetryTrack(samples, str(folder), absolute=True), poses
