"""A closed loop with ArduPilot SITL: the real flight code flies a mission on skyloc's positions.

`skyloc sitl` starts the user's ArduCopter SITL binary, renders the camera from the simulator's
true state (SIM_STATE) over a map, runs the real daemon (the same code that flies, with its
config) against the autopilot's second serial port, and flies a mission from a ground-station
connection: take-off on GPS, the switch to EKF source set 2 (skyloc), GPS off, a box, a camera
cut, landing. Only the parameters the README tells users to set (`ARDUPILOT_PARAMS`) are set on
the autopilot; the simulator's own (SIM_*) only to switch its GPS off.

Written: report.json, track.png (truth, EKF, skyloc), errors.png, the daemon's frame log, and the
autopilot's own DataFlash log (SITL writes it under logs/ of the working folder).
"""
from __future__ import annotations

import json
import logging
import math
import os
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from skyloc.errors import SkylocError
from skyloc.onboard.sources import Frame, Source

os.environ.setdefault("MAVLINK20", "1")
from pymavlink import mavutil  # noqa: E402

log = logging.getLogger("skyloc.sitl")
M = mavutil.mavlink

# What the README tells ArduPilot users to set, per skyloc output (the harness sets exactly these).
ARDUPILOT_PARAMS = {
    "odometry": {
        "SERIAL1_PROTOCOL": 2,  # MAVLink 2 on the companion's port
        "VISO_TYPE": 1,  # MAVLink
        "VISO_POS_M_NSE": 0.5,  # floor of the position error skyloc sends (m)
        "VISO_VEL_M_NSE": 0.5,  # ArduPilot's noise for ODOMETRY velocities (skyloc sends them only while ok)
        "VISO_DELAY_MS": 10,  # the link's delay alone: skyloc predicts each position to its send time
        "VISO_QUAL_MIN": 1,  # quality 1-100 fused; skyloc's -1 (dead reckoning without frames) never is
        "EK3_SRC2_POSXY": 6,  # source set 2: ExternalNav position
        "EK3_SRC2_VELXY": 0,  # ... no ExternalNav velocity (6 with VISO_VEL_M_NSE >= 0.5 also flies)
        "EK3_SRC2_POSZ": 1,  # ... baro height
        "EK3_SRC2_VELZ": 0,
        "EK3_SRC2_YAW": 1,  # ... compass (6 with mavlink.send_heading: skyloc's heading)
    },
    "gps_input": {
        "SERIAL1_PROTOCOL": 2,
        "GPS2_TYPE": 14,  # MAVLink GPS in the second slot; the real GPS stays GPS1
        "GPS_AUTO_SWITCH": 1,  # use the best GPS: skyloc's once the real one has no fix
        "GPS_PRIMARY": 0,
        "EK3_SRC1_POSXY": 3,  # both GPS slots are "GPS" to the EKF
        "EK3_SRC1_VELXY": 3,
        "EK3_SRC1_POSZ": 1,
        "EK3_SRC2_POSXY": 3,  # source set 2, switched to when the real GPS is lost: GPS position ...
        "EK3_SRC2_VELXY": 0,  # ... without GPS velocity (skyloc's is too noisy for the EKF's fixed gate)
        "EK3_SRC2_POSZ": 1,  # ... baro height
        "EK3_SRC2_VELZ": 0,
        "EK3_SRC2_YAW": 1,  # ... compass
        "EK3_SRC_OPTIONS": 0,  # not "fuse all velocities" (the default, 1): set 1's GPS velocity stays out of set 2
    },
}

# On top, for compass-free flight on skyloc's heading (`mavlink.send_heading: true`)
HEADING_PARAMS = {"EK3_SRC2_YAW": 6, "VISO_YAW_M_NSE": 0.05}


def ekf_position_noise(map_gsd_m: float | None) -> float:
    """EK3_POSNE_M_NSE for flying on ODOMETRY: half the map's pixel, at least ArduPilot's 0.5 m.

    Once a GPS has reported an accuracy, EKF3 fuses ExternalNav positions with that GPS's last
    accuracy floored at EK3_POSNE_M_NSE (AP_NavEKF3_PosVelFusion.cpp, FuseVelPosNED: the
    gpsPosAccuracy branch comes before the ExternalNav one, and the value goes stale when the GPS
    stops), not with the covariance skyloc sends. At the default 0.5 m it gated out skyloc's
    5 m steps over a 5 m/px map (NAIP at 1000 m: position test ratio 1.2-1.7 for seconds, EKF
    error spikes of 18-30 m). Half a map pixel is what skyloc's fixes scatter by there."""
    return max(0.5, round(0.5 * map_gsd_m, 1)) if map_gsd_m else 0.5


def autopilot_params(output: str, send_heading: bool = False, map_gsd_m: float | None = None) -> dict:
    params = dict(ARDUPILOT_PARAMS[output])
    if output == "odometry":
        params["EK3_POSNE_M_NSE"] = ekf_position_noise(map_gsd_m)
    if send_heading and output == "odometry":
        params.update(HEADING_PARAMS)
    return params


@dataclass
class SitlConfig:
    binary: Path
    out: Path
    home: tuple[float, float, float, float]  # lat, lon, alt AMSL (m), heading (deg)
    output: str = "odometry"
    altitude: float = 110.0  # take-off and box height above home (m)
    box_m: float = 300.0
    speed: float = 8.0  # m/s along the box
    camera_cut_s: float = 10.0  # camera cut on the second leg (0: none)
    send_heading: bool = False  # skyloc's heading in ODOMETRY, EK3_SRC2_YAW = 6 (HEADING_PARAMS on top)
    mission: str = "box"  # box: the square and back home; leg: one straight leg north, then land there
    map_gsd_m: float | None = None  # the cache's map resolution: sets EK3_POSNE_M_NSE (ekf_position_noise)
    defaults: list[Path] = field(default_factory=list)  # SITL parameter files (the airframe)
    speedup: float = 1.0
    timeout_s: float = 900.0


def find_defaults(binary: Path) -> list[Path]:
    """ArduPilot's copter.parm beside a binary built in its tree (build/sitl/bin/arducopter)."""
    for up in binary.resolve().parents:
        p = up / "Tools" / "autotest" / "default_params" / "copter.parm"
        if p.is_file():
            return [p]
    return []


class SimState:
    """The simulator's true state (SIM_STATE), shared between the ground station and the camera."""

    def __init__(self):
        self.lock = threading.Lock()
        self.sample = None  # (wall time, lat, lon, alt AMSL, roll, pitch, yaw) degrees and metres
        self.history: list[tuple] = []

    def update(self, msg, now: float) -> None:
        s = (now, msg.lat_int / 1e7, msg.lon_int / 1e7, float(msg.alt), math.degrees(msg.roll),
             math.degrees(msg.pitch), math.degrees(msg.yaw) % 360.0)
        with self.lock:
            self.sample = s
            self.history.append(s)


class SimCamera(Source):
    """A nadir camera fixed to the airframe (or on a stabilising gimbal: `gimbal`), rendered from
    SIM_STATE over `camera_map` at `fps`; `cut` (a threading.Event) stops the frames (a camera cut)."""

    live = True

    def __init__(self, state: SimState, camera_map, home_alt: float, fps: float = 10.0, width: int = 640,
                 height: int = 360, hfov: float = 60.0, cut: threading.Event | None = None, gimbal: bool = False,
                 lens=None):
        from skyloc.runtime.geo import GeoMap

        self.state, self.home_alt, self.fps = state, home_alt, fps
        self.gmap = camera_map if isinstance(camera_map, GeoMap) else GeoMap(camera_map)
        self.image = self.gmap.read_all()
        t = self.gmap.transform
        self.pix_to_ground = np.array([[t.a, 0, t.c], [0, t.e, t.f], [0, 0, 1]], dtype=np.float64)
        self.size, self.hfov, self.gimbal = (width, height), hfov, gimbal
        self.lens = lens.scaled(width, height) if lens is not None else None  # a Calibration: render through it
        self.cut = cut or threading.Event()
        left, bottom, right, top = self.gmap.bounds
        self.grid_rotation = self.gmap.geodesy.grid_rotation(
            *self.gmap.geodesy.to_latlon((left + right) / 2, (bottom + top) / 2))
        self.index = 0
        self.next_t = time.time()
        self.rng = np.random.default_rng(0)

    def read(self) -> Frame | None:
        import cv2

        from skyloc.runtime.camera import Intrinsics, Pose, ground_to_image, looks_at_ground, rays_to_ground

        while True:
            delay = self.next_t - time.time()
            if delay > 0:
                time.sleep(delay)
            self.next_t = max(self.next_t + 1.0 / self.fps, time.time())
            with self.state.lock:
                s = self.state.sample
            if s is None or self.cut.is_set():
                continue
            shot, lat, lon, alt, roll, pitch, yaw = s
            x, y = self.gmap.geodesy.from_latlon(lat, lon)
            intr = Intrinsics(*self.size, self.hfov)
            if self.gimbal:  # a stabilised camera looks straight down whatever the airframe does
                roll = pitch = 0.0
            pose = Pose(x, y, max(1.0, alt - self.home_alt), (yaw + self.grid_rotation) % 360, tilt=0.0, pitch=pitch,
                        roll=roll)
            if pose.altitude < 5.0 or not looks_at_ground(intr, pose):
                img = np.zeros((self.size[1], self.size[0], 3), np.uint8)  # on the ground: nothing to see
            elif self.lens is not None:
                gx, gy, down = rays_to_ground(pose, self.lens.pixel_rays())
                p = self.pix_to_ground
                px = np.where(down, (gx - p[0, 2]) / p[0, 0], -1e6).astype(np.float32)
                py = np.where(down, (gy - p[1, 2]) / p[1, 1], -1e6).astype(np.float32)
                img = cv2.remap(self.image, px, py, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
            else:
                h = ground_to_image(intr, pose) @ self.pix_to_ground
                img = cv2.warpPerspective(self.image, h, self.size, flags=cv2.INTER_LINEAR)
                img = np.clip(img.astype(np.float32) + self.rng.normal(0, 2.0, img.shape), 0, 255).astype(np.uint8)
            self.index += 1
            return Frame(img, self.index, time.time(), capture=shot)


class GroundStation:
    """The mission side: a MAVLink connection to SITL's first port, as a GCS would fly it."""

    def __init__(self, url: str, state: SimState):
        self.conn = mavutil.mavlink_connection(url, source_system=255, source_component=190)
        self.state = state
        self.records: dict[str, list] = {"ekf": [], "status": [], "mode": [], "ekf_flags": [], "attitude": []}
        self.params: dict[str, float] = {}
        self.acks: dict[int, int] = {}
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.mode = ""
        self.armed = False
        self.thread: threading.Thread | None = None

    def start(self, timeout: float = 30.0) -> "GroundStation":
        if self.conn.wait_heartbeat(timeout=timeout) is None:
            raise SkylocError("SITL did not answer on its first port: check the binary and that no other SITL runs")
        self.thread = threading.Thread(target=self._rx, name="gcs", daemon=True)
        self.thread.start()
        for msg_id, hz in ((M.MAVLINK_MSG_ID_SIM_STATE, 50), (M.MAVLINK_MSG_ID_ATTITUDE, 50),
                           (M.MAVLINK_MSG_ID_GLOBAL_POSITION_INT, 10),
                           (M.MAVLINK_MSG_ID_EKF_STATUS_REPORT, 2), (M.MAVLINK_MSG_ID_GPS_RAW_INT, 2)):
            self.command(M.MAV_CMD_SET_MESSAGE_INTERVAL, msg_id, 1e6 / hz)
        return self

    def _rx(self) -> None:
        while not self._stop.is_set():
            m = self.conn.recv_match(blocking=True, timeout=0.2)
            if m is None:
                continue
            now, kind = time.time(), m.get_type()
            if kind == "SIM_STATE":
                self.state.update(m, now)
            elif kind == "ATTITUDE":
                self.records["attitude"].append((now, m.time_boot_ms, math.degrees(m.roll), math.degrees(m.pitch),
                                                 math.degrees(m.yaw) % 360))
            elif kind == "GLOBAL_POSITION_INT":
                self.records["ekf"].append((now, m.lat / 1e7, m.lon / 1e7, m.relative_alt / 1000.0))
            elif kind == "STATUSTEXT":
                self.records["status"].append((now, m.text))
                log.info("autopilot: %s", m.text)
            elif kind == "HEARTBEAT" and m.get_srcSystem() == 1 and m.autopilot != M.MAV_AUTOPILOT_INVALID:
                mode = mavutil.mode_string_v10(m)
                self.armed = bool(m.base_mode & M.MAV_MODE_FLAG_SAFETY_ARMED)
                if mode != self.mode:
                    self.records["mode"].append((now, mode))
                    self.mode = mode
            elif kind == "EKF_STATUS_REPORT":
                self.records["ekf_flags"].append((now, m.flags, m.pos_horiz_variance, m.velocity_variance))
            elif kind == "PARAM_VALUE":
                self.params[m.param_id] = m.param_value
            elif kind == "COMMAND_ACK":
                self.acks[m.command] = m.result

    def close(self) -> None:
        self._stop.set()
        if self.thread:
            self.thread.join(timeout=2)
        self.conn.close()

    def command(self, cmd: int, *params: float) -> None:
        p = list(params) + [0.0] * (7 - len(params))
        self.acks.pop(cmd, None)
        self.conn.mav.command_long_send(1, 1, cmd, 0, *p)

    def command_ok(self, cmd: int, *params: float, timeout: float = 5.0, retries: int = 1) -> bool:
        for _ in range(max(1, retries)):
            self.command(cmd, *params)
            end = time.time() + timeout
            while time.time() < end:
                if self.acks.get(cmd) is not None:
                    if self.acks[cmd] == M.MAV_RESULT_ACCEPTED:
                        return True
                    break
                time.sleep(0.05)
            time.sleep(0.5)
        return False

    def set_param(self, name: str, value: float, timeout: float = 5.0) -> None:
        for _ in range(3):
            self.conn.mav.param_set_send(1, 1, name.encode(), float(value), M.MAV_PARAM_TYPE_REAL32)
            end = time.time() + timeout / 3
            while time.time() < end:
                v = self.params.get(name)
                if v is not None and abs(v - value) < 1e-3:
                    return
                time.sleep(0.05)
        raise SkylocError(f"SITL did not take parameter {name}={value}: check the name for this firmware version")

    def set_mode(self, mode: str, timeout: float = 10.0) -> None:
        mapping = self.conn.mode_mapping()
        if mode not in mapping:
            raise SkylocError(f"unknown flight mode {mode}")
        end = time.time() + timeout
        while time.time() < end and self.mode != mode:
            self.conn.set_mode(mapping[mode])
            time.sleep(0.5)
        if self.mode != mode:
            raise SkylocError(f"the autopilot did not enter {mode}")

    def position(self) -> tuple[float, float, float] | None:
        e = self.records["ekf"]
        return e[-1][1:] if e else None

    def goto(self, lat: float, lon: float, alt: float) -> None:
        self.conn.mav.set_position_target_global_int_send(
            0, 1, 1, M.MAV_FRAME_GLOBAL_RELATIVE_ALT_INT, 0b0000111111111000, int(lat * 1e7), int(lon * 1e7), alt,
            0, 0, 0, 0, 0, 0, 0, 0)


def _offset(lat: float, lon: float, north: float, east: float) -> tuple[float, float]:
    return lat + north / 111_320.0, lon + east / (111_320.0 * math.cos(math.radians(lat)))


def _dist(a, b) -> float:
    return math.hypot((a[0] - b[0]) * 111_320.0, (a[1] - b[1]) * 111_320.0 * math.cos(math.radians(a[0])))


def run_sitl(cfg: SitlConfig, daemon_config, camera_map, progress=print) -> dict:
    """Fly the mission; return the report (and write it with the plots to cfg.out)."""
    from skyloc.onboard.daemon import Daemon

    out = cfg.out
    out.mkdir(parents=True, exist_ok=True)
    if not cfg.binary.is_file() or not os.access(cfg.binary, os.X_OK):
        raise SkylocError(f"SITL binary {cfg.binary} not found or not executable: build ArduCopter's SITL "
                          "(./waf configure --board sitl && ./waf copter) and pass build/sitl/bin/arducopter")
    defaults = cfg.defaults or find_defaults(cfg.binary)
    if not defaults:
        raise SkylocError("no SITL parameter defaults: pass --sitl-defaults .../Tools/autotest/default_params/copter.parm")
    lat0, lon0, alt0, hdg0 = cfg.home
    work = out / "sitl"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    # the parameters the README tells users to set, as a parameter file loaded at boot (VISO_TYPE,
    # SERIALn_PROTOCOL and GPSn_TYPE take effect only after a reboot when set over MAVLink)
    user_params = work / "skyloc.parm"
    params = autopilot_params(cfg.output, cfg.send_heading, cfg.map_gsd_m)
    user_params.write_text("".join(f"{k} {v}\n" for k, v in params.items()))
    cmd = [str(cfg.binary), "--model", "quad", "--speedup", str(cfg.speedup), "-I0", "-w",
           "--defaults", ",".join(str(p) for p in [*defaults, user_params]), "--home", f"{lat0},{lon0},{alt0},{hdg0}"]
    sitl_log = open(work / "sitl.out", "w")
    proc = subprocess.Popen(cmd, cwd=work, stdout=sitl_log, stderr=subprocess.STDOUT)
    state = SimState()
    gcs = daemon = dthread = None
    cut = threading.Event()
    t_gps_off = None
    events: list[tuple[float, str]] = []

    def event(text: str) -> None:
        events.append((time.time(), text))
        progress(f"  {text}")

    try:
        time.sleep(2.0)
        gcs = GroundStation("tcp:127.0.0.1:5760", state).start()
        event("SITL up")
        for name, value in params.items():  # they were loaded at boot: check
            gcs.conn.mav.param_request_read_send(1, 1, name.encode(), -1)
        _wait(lambda: all(n in gcs.params for n in params), 10, "the parameters")
        wrong = {n: gcs.params[n] for n, v in params.items() if abs(gcs.params[n] - v) > 1e-3}
        if wrong:
            raise SkylocError(f"SITL did not take the parameter file: {wrong}")
        gcs.set_param("WPNAV_SPEED", cfg.speed * 100)  # the mission's speed (cm/s), not a skyloc setting
        climb, descent = (5.0, 3.0) if cfg.altitude > 300 else (2.5, 1.5)  # ... and its climb and descent (m/s)
        if cfg.altitude > 300:  # a high mission (NAIP at 1000 m) climbs and lands faster than the defaults
            gcs.set_param("WPNAV_SPEED_UP", climb * 100)
            gcs.set_param("WPNAV_SPEED_DN", descent * 100)
            gcs.set_param("LAND_SPEED_HIGH", descent * 100)
        # the daemon: the user's config, its camera the simulator's, its link SITL's second port
        daemon_config.source = "sim://camera"
        daemon_config.mavlink.url = "tcp:127.0.0.1:5762"
        daemon_config.mavlink.outputs = [cfg.output]
        daemon_config.mavlink.send_heading = cfg.send_heading
        if cfg.output == "gps_input":
            daemon_config.mavlink.gps_id = 1  # GPS2_TYPE = 14: skyloc is the second GPS
        daemon_config.status_file = str(out / "status.json")
        daemon_config.log.dir = str(out)
        daemon_config.camera.latency_ms = 0.0  # the sim camera stamps each frame with its capture time
        lens = None
        if daemon_config.camera.calibration:  # the simulated camera has the lens the daemon is told of
            from skyloc.runtime.calibration import load_calibration

            lens = load_calibration(daemon_config.camera.calibration)
        opener = lambda uri: SimCamera(state, camera_map, alt0, fps=min(10.0, daemon_config.max_fps),  # noqa: E731
                                       hfov=daemon_config.camera.hfov_deg, cut=cut,
                                       gimbal=daemon_config.camera.gimbal, lens=lens)
        daemon = Daemon(daemon_config, opener=opener)
        dthread = threading.Thread(target=daemon.run, name="daemon", daemon=True)
        dthread.start()
        event("daemon running")
        end = time.time() + 120
        while time.time() < end:  # EKF and GPS ready: arming in GUIDED is accepted
            try:
                gcs.set_mode("GUIDED", timeout=3)
                if gcs.command_ok(M.MAV_CMD_COMPONENT_ARM_DISARM, 1, timeout=3):
                    break
            except SkylocError:
                pass
            time.sleep(2)
        else:
            prearm = sorted({t for _, t in gcs.records["status"] if "PreArm" in t or "Arm" in t})
            raise SkylocError("SITL never became ready to arm: " + "; ".join(prearm[-4:] or ["no reason given"]))
        event("armed")
        gcs.command_ok(M.MAV_CMD_NAV_TAKEOFF, 0, 0, 0, 0, 0, 0, cfg.altitude, retries=3)
        _wait(lambda: (gcs.position() or (0, 0, 0))[2] > cfg.altitude - 3, cfg.altitude / climb + 60, "take-off")
        event(f"at {cfg.altitude:.0f} m on GPS")
        _wait(lambda: daemon.last is not None and daemon.last.status == "ok", 60, "skyloc's first ok fix")
        event("skyloc ok")
        if not gcs.command_ok(42007, 2, retries=3):  # MAV_CMD_SET_EKF_SOURCE_SET
            raise SkylocError("the autopilot refused EKF source set 2")
        event("EKF source set 2 (ExternalNav)" if cfg.output == "odometry" else "EKF source set 2 (GPS without velocity)")
        time.sleep(3.0)
        gcs.set_param("SIM_GPS_DISABLE", 1)
        t_gps_off = time.time()
        event("GPS off")
        time.sleep(5.0)
        corners = [(cfg.box_m, 0), (cfg.box_m, cfg.box_m), (0, cfg.box_m), (0, 0)] if cfg.mission == "box" \
            else [(cfg.box_m, 0)]
        t_cut = None
        for k, (n, e) in enumerate(corners):
            target = _offset(lat0, lon0, n, e)
            gcs.goto(*target, cfg.altitude)
            leg_end = time.time() + cfg.box_m / cfg.speed * 2.5 + 30
            while time.time() < leg_end:
                p = gcs.position()
                if k == 1 and cfg.camera_cut_s and t_cut is None and p and _dist(p, target) < 0.5 * cfg.box_m:
                    cut.set()
                    t_cut = time.time()
                    event(f"camera cut for {cfg.camera_cut_s:.0f} s")
                    # the camera comes back on time whatever the mission does meanwhile (a failsafe)
                    restore = threading.Timer(cfg.camera_cut_s, lambda: (cut.clear(), event("camera back")))
                    restore.daemon = True
                    restore.start()
                if gcs.mode != "GUIDED":
                    raise _Aborted(f"the autopilot left GUIDED for {gcs.mode}")
                if p and _dist(p, target) < 3.0:
                    break
                gcs.goto(*target, cfg.altitude)
                time.sleep(0.5)
            else:
                raise _Aborted(f"corner {k + 1} not reached")
            event(f"corner {k + 1} of {len(corners)}")
        gcs.set_mode("LAND")
        _wait(lambda: not gcs.armed, cfg.altitude / descent + 120, "landing")
        event("landed and disarmed")
        completed, why = True, ""
    except _Aborted as exc:
        completed, why = False, str(exc)
        event(f"mission aborted: {why}")
        if gcs is not None and _wait(lambda: not gcs.armed, cfg.altitude / 1.5 + 120, "landing", raise_=False):
            event("landed and disarmed (after the abort)")  # what the failsafe did is in the report
    finally:
        if daemon is not None:
            daemon.stop_event.set()
            dthread.join(timeout=10)
        if gcs is not None:
            gcs.close()
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        sitl_log.close()
    return _report(cfg, state, gcs, daemon, events, t_gps_off, completed, why, out)


class _Aborted(Exception):
    pass


def _wait(cond, timeout: float, what: str, raise_: bool = True) -> bool:
    end = time.time() + timeout
    while time.time() < end:
        if cond():
            return True
        time.sleep(0.2)
    if raise_:
        raise _Aborted(f"timed out waiting for {what}")
    return False


def _report(cfg: SitlConfig, state: SimState, gcs: GroundStation, daemon, events, t_gps_off, completed: bool,
            why: str, out: Path) -> dict:
    """EKF and skyloc against the simulator's truth while on skyloc (GPS off until landing)."""
    import csv

    truth = np.array([s[:3] for s in state.history]) if state.history else np.zeros((0, 3))
    rep: dict = {"output": cfg.output, "completed": completed, "abort_reason": why,
                 "events": [(round(t - events[0][0], 1), e) for t, e in events] if events else []}
    statustexts = [(t, s) for t, s in gcs.records["status"]] if gcs else []
    rep["failsafes"] = [s for _, s in statustexts if "failsafe" in s.lower() or "variance" in s.lower()]
    land_t = next((t for t, e in events if e.startswith("landed")), time.time())
    if t_gps_off is None or truth.size == 0:
        return rep

    def truth_at(t):
        i = np.clip(np.searchsorted(truth[:, 0], t), 1, len(truth) - 1)
        return truth[i, 1], truth[i, 2]

    heights = np.array([(s[0], s[3] - cfg.home[2]) for s in state.history])
    # when each failsafe text came and how high the vehicle was (on the ground the camera sees too little)
    rep["failsafe_events"] = [{"text": s, "after_gps_off_s": round(t - t_gps_off, 1),
                               "height_m": round(float(np.interp(t, heights[:, 0], heights[:, 1])), 1)}
                              for t, s in statustexts if s in rep["failsafes"]]

    ekf = [(t, la, lo) for t, la, lo, _ in gcs.records["ekf"] if t_gps_off <= t <= land_t]
    ekf_err = np.array([_dist((la, lo), truth_at(t)) for t, la, lo in ekf])
    rep["ekf_error_m"] = _stats(ekf_err)
    frames = sorted(out.glob("frames-*.csv"))
    sky = []
    if frames:
        for r in csv.DictReader(open(frames[-1])):
            if r["lat"] in ("nan", "") or not (t_gps_off <= float(r["frame_time"]) <= land_t):
                continue
            t = float(r["frame_time"])
            e = _dist((float(r["lat"]), float(r["lon"])), truth_at(t))
            sky.append((t, float(r["lat"]), float(r["lon"]), r["status"], float(r["accuracy_m"]), e))
    ok = [s for s in sky if s[3] == "ok"]
    rep["skyloc_frames"] = len(sky)
    rep["skyloc_ok_share"] = len(ok) / len(sky) if sky else 0.0
    rep["skyloc_ok_error_m"] = _stats(np.array([s[5] for s in ok]))
    rep["skyloc_ok_within_3x"] = float(np.mean([s[5] <= 3 * s[4] for s in ok])) if ok else None
    cut = [t for t, e in events if e.startswith("camera cut")]
    if cut:
        back = [t for t, e in events if e == "camera back"]
        t0, t1 = cut[0], (back[0] if back else cut[0] + cfg.camera_cut_s)
        during = ekf_err[[t0 <= t <= t1 for t, _, _ in ekf]] if ekf else np.zeros(0)
        after = ekf_err[[t1 <= t <= t1 + 30 for t, _, _ in ekf]] if ekf else np.zeros(0)
        fs = [t - t0 for t, s in statustexts if t >= t0 and ("failsafe" in s.lower() or "EKF variance" in s)]
        rep["camera_cut"] = {"ekf_error_max_m": float(during.max()) if during.size else None,
                             "ekf_error_30s_after_max_m": float(after.max()) if after.size else None,
                             "ekf_error_30s_after_end_m": float(after[-1]) if after.size else None,
                             "failsafe_after_s": fs[0] if fs else None,
                             "statustext": [s for t, s in statustexts if t0 - 1 <= t <= t1 + 5],
                             "skyloc_ok_again_s": next((s[0] - t1 for s in ok if s[0] > t1), None)}
    home = (cfg.home[0], cfg.home[1])
    rep["landed_from_home_m"] = _dist(truth_at(land_t), home)
    (out / "report.json").write_text(json.dumps(rep, indent=2, default=float))
    with open(out / "truth.csv", "w") as f:  # the simulator's state and the autopilot's attitude, for analysis
        f.write("kind,time,a,b,c,d,e,f\n")
        for s in state.history:
            f.write("sim," + ",".join(f"{v:.7f}" for v in s) + "\n")
        for s in gcs.records["attitude"]:
            f.write("att," + ",".join(f"{v:.4f}" for v in s) + ",\n")
        for s in gcs.records["ekf"]:
            f.write("ekf," + ",".join(f"{v:.7f}" for v in s) + ",,\n")
    _plot(out, truth, ekf, sky, t_gps_off, land_t, ekf_err, cfg)
    return rep


def _stats(e: np.ndarray) -> dict | None:
    if e.size == 0:
        return None
    return {"median": float(np.median(e)), "p95": float(np.percentile(e, 95)), "max": float(e.max()),
            "count": int(e.size)}


def _plot(out: Path, truth, ekf, sky, t0, t1, ekf_err, cfg: SitlConfig) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lat0, lon0 = cfg.home[:2]

    def ne(lat, lon):
        return (np.asarray(lat) - lat0) * 111_320.0, (np.asarray(lon) - lon0) * 111_320.0 * math.cos(math.radians(lat0))

    fig, ax = plt.subplots(figsize=(7, 7))
    m = (truth[:, 0] >= t0) & (truth[:, 0] <= t1)
    n, e = ne(truth[m, 1], truth[m, 2])
    ax.plot(e, n, "k-", lw=1.5, label="truth (simulator)")
    if ekf:
        n, e = ne([x[1] for x in ekf], [x[2] for x in ekf])
        ax.plot(e, n, "-", color="tab:blue", lw=1, label="autopilot EKF")
    for status, c in (("ok", "tab:green"), ("low-confidence", "tab:orange")):
        pts = [(s[1], s[2]) for s in sky if s[3] == status]
        if pts:
            n, e = ne(*zip(*pts))
            ax.scatter(e, n, s=4, c=c, label=f"skyloc {status}", zorder=3)
    ax.set_aspect("equal")
    ax.set_xlabel("east of home (m)")
    ax.set_ylabel("north of home (m)")
    ax.set_title(f"ArduCopter SITL on skyloc ({cfg.output}), GPS off")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "track.png", dpi=100)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(9, 4))
    if ekf:
        ax.plot([x[0] - t0 for x in ekf], ekf_err, color="tab:blue", lw=1, label="EKF error")
    ok = [s for s in sky if s[3] == "ok"]
    if ok:
        ax.scatter([s[0] - t0 for s in ok], [s[5] for s in ok], s=3, c="tab:green", label="skyloc ok error")
        ax.plot([s[0] - t0 for s in ok], [3 * s[4] for s in ok], color="tab:green", lw=0.5, alpha=0.5,
                label="3 x skyloc's accuracy")
    ax.set_xlabel("seconds since GPS off")
    ax.set_ylabel("m")
    ax.set_title("error against the simulator's truth")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "errors.png", dpi=100)
    plt.close(fig)
