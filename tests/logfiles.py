"""Small autopilot logs for tests: MAVLink .tlog and ArduPilot DataFlash .bin files, written byte by byte
from their documented formats, so the readers are tested against files that pymavlink itself parses."""
from __future__ import annotations

import os
import struct
from pathlib import Path

os.environ.setdefault("MAVLINK20", "1")
from pymavlink import mavutil  # noqa: E402

GPS_EPOCH = 315964800  # 1980-01-06


def write_tlog(path: Path, t0: float, seconds: float, lat0: float, lon0: float, positions: bool = True,
               rate: float = 4.0) -> Path:
    """A .tlog: (8-byte big-endian microseconds, MAVLink packet) records, as MAVProxy writes them.
    The vehicle flies north at 10 m/s at 80 m, heading 0; messages arrive 50 ms after they are sent."""
    mav = mavutil.mavlink.MAVLink(None, srcSystem=1, srcComponent=1)
    with open(path, "wb") as f:
        for i in range(int(seconds * rate)):
            boot_ms = 60_000 + int(i * 1000 / rate)
            recv = t0 + i / rate + 0.05
            lat = lat0 + (10.0 * i / rate) / 111_320.0
            msgs = [mavutil.mavlink.MAVLink_attitude_message(boot_ms, 0.02, -0.01, 0.0, 0, 0, 0)]
            if positions:
                msgs.append(mavutil.mavlink.MAVLink_global_position_int_message(
                    boot_ms, int(lat * 1e7), int(lon0 * 1e7), 500_000, 80_000, 1000, 0, 0, 0))
            for m in msgs:
                f.write(struct.pack(">Q", int(recv * 1e6)) + m.pack(mav))
    return path


_FMT = struct.Struct("<BB4s16s64s")  # FMT payload: type, length, name, format, columns


def _fmt(msg_id: int, name: str, fmt: str, cols: str, size: int) -> bytes:
    return bytes([0xA3, 0x95, 128]) + _FMT.pack(msg_id, size + 3, name.encode(), fmt.encode(), cols.encode())


def write_dataflash(path: Path, t0: float, seconds: float, lat0: float, lon0: float, triggers: int = 0,
                    positions: bool = True) -> Path:
    """An ArduPilot DataFlash .bin: FMT records, then GPS (with week/ms time), POS, ATT and CAM."""
    specs = {  # id, name, format, columns, struct
        "GPS": (130, "QBIHBLLf", "TimeUS,Status,GMS,GWk,NSats,Lat,Lng,Alt", "<QBIHBiif"),
        "POS": (131, "QLLff", "TimeUS,Lat,Lng,Alt,RelHomeAlt", "<Qiiff"),
        "ATT": (132, "Qfff", "TimeUS,Roll,Pitch,Yaw", "<Qfff"),
        "CAM": (133, "QLLf", "TimeUS,Lat,Lng,Alt", "<Qiif"),
    }
    out = bytearray()
    for name, (mid, fmt, cols, st) in specs.items():
        out += _fmt(mid, name, fmt, cols, struct.calcsize(st))

    def rec(name, *vals):
        mid, _, _, st = specs[name]
        out.extend(bytes([0xA3, 0x95, mid]) + struct.pack(st, *vals))

    step = 0.2
    for i in range(int(seconds / step)):
        tus = 30_000_000 + int(i * step * 1e6)
        utc = t0 + i * step
        gps = utc - GPS_EPOCH + 18
        week, ms = int(gps // 604800), int(round((gps % 604800) * 1000))
        lat = lat0 + (10.0 * i * step) / 111_320.0
        rec("GPS", tus, 3, ms, week, 12, int(lat * 1e7), int(lon0 * 1e7), 300.0)
        if positions:
            rec("POS", tus, int(lat * 1e7), int(lon0 * 1e7), 380.0, 80.0)
        rec("ATT", tus, 1.5, -0.5, 90.0)
        if triggers and i % max(1, int(seconds / step) // triggers) == 0 and i // max(1, int(seconds / step) // triggers) < triggers:
            rec("CAM", tus, int(lat * 1e7), int(lon0 * 1e7), 380.0)
    Path(path).write_bytes(bytes(out))
    return path


def _ulog_msg(kind: bytes, payload: bytes) -> bytes:
    return struct.pack("<HB", len(payload), kind[0]) + payload


def write_ulog(path: Path, t0: float, seconds: float, lat0: float, lon0: float) -> Path:
    """A PX4 ULog: header, formats, then vehicle_gps_position (UTC time), vehicle_global_position and
    vehicle_attitude (a quaternion heading 90 deg) at 5 Hz, the vehicle flying north at 10 m/s, 80 m up."""
    import math

    out = bytearray(b"ULog\x01\x12\x35" + bytes([1]) + struct.pack("<Q", 0))
    out += _ulog_msg(b"B", bytes(8) + bytes(8) + struct.pack("<3Q", 0, 0, 0))
    formats = {
        "vehicle_gps_position": ("uint64_t timestamp;uint64_t time_utc_usec;", "<QQ"),
        "vehicle_global_position": ("uint64_t timestamp;double lat;double lon;float alt;", "<Qddf"),
        "vehicle_attitude": ("uint64_t timestamp;float[4] q;", "<Q4f"),
        "home_position": ("uint64_t timestamp;float alt;", "<Qf"),
    }
    for name, (fields, _) in formats.items():
        out += _ulog_msg(b"F", f"{name}:{fields}".encode())
    for i, name in enumerate(formats):
        out += _ulog_msg(b"A", struct.pack("<BH", 0, i) + name.encode())
    boot0 = 5_000_000
    out += _ulog_msg(b"D", struct.pack("<H", 3) + struct.pack("<Qf", boot0, 300.0))
    q = (math.cos(math.pi / 4), 0.0, 0.0, math.sin(math.pi / 4))  # yaw 90 deg
    for k in range(int(seconds * 5)):
        boot = boot0 + k * 200_000
        lat = lat0 + (10.0 * k * 0.2) / 111_320.0
        out += _ulog_msg(b"D", struct.pack("<H", 0) + struct.pack("<QQ", boot, int((t0 + k * 0.2) * 1e6)))
        out += _ulog_msg(b"D", struct.pack("<H", 1) + struct.pack("<Qddf", boot, lat, lon0, 380.0))
        out += _ulog_msg(b"D", struct.pack("<H", 2) + struct.pack("<Q4f", boot, *q))
    Path(path).write_bytes(bytes(out))
    return path
