"""The daemon's YAML config, validated with pydantic: an error names the field and the file."""
from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field

from skyloc.configfile import read_yaml, validate


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CameraConfig(_Strict):
    hfov_deg: float = Field(60.0, gt=1, lt=179, description="horizontal field of view of the camera")
    calibration: Optional[str] = Field(None, description="lens calibration file (OpenCV FileStorage, ROS "
                                       "camera_info or Kalibr camchain YAML): frames are undistorted, hfov_deg unused")
    mount_yaw_deg: float = Field(0.0, description="camera yaw relative to the airframe's nose")
    pitch_deg: float = Field(0.0, ge=0, lt=60, description="camera tilt forward from nadir (gimbal setting)")
    gimbal: bool = Field(False, description="a stabilising gimbal holds the camera at pitch_deg whatever the "
                         "airframe's roll and pitch (they are not applied); false: the camera is fixed to the airframe")
    latency_ms: float = Field(0.0, ge=0, le=2000, description="exposure to arrival: a frame shows the scene this "
                              "long before it arrives, and gets the attitude of that moment")


class LocalizerSettings(_Strict):
    start: Optional[tuple[float, float, float]] = Field(
        None, description="[lat, lon, radius_m]: where the flight starts; the track begins there")
    gnss_prior: bool = Field(True, description="start (and restart) the track from the autopilot's own GNSS fix "
                             "(GPS_RAW_INT, 3D) while skyloc has no track of its own")
    registration_interval_s: float = Field(0.5, gt=0, description="map registration rate while tracking")
    attitude_sigma_deg: float = Field(0.5, ge=0, description="attitude and timing error of the telemetry")
    autopilot_velocity_sigma: float = Field(1.0, gt=0, description="1-sigma (m/s) of the autopilot's velocity "
                                            "that carries the track through a camera outage")
    altitude_range_m: Optional[tuple[float, float]] = Field(None, description="heights to search without altitude "
                                                            "telemetry (default 30-1200 m)")
    dem: Optional[str] = Field(None, description="elevation model GeoTIFF (any CRS): altitude above home -> height "
                               "above the ground under the camera")
    home_elevation_m: Optional[float] = Field(None, description="elevation of the take-off point, in the DEM's "
                                              "datum (default: the DEM at the start position)")
    compass_sigma_deg: float = Field(10.0, gt=0, le=180, description="how far off the compass may be before the map "
                                     "has measured it (1-sigma)")
    compass_warn_deg: float = Field(10.0, gt=0, description="STATUSTEXT when the compass disagrees with the map by more")
    top_k: int = Field(10, ge=1, description="retrieval candidates during relocalization")
    search: Literal["auto", "exact", "index"] = Field("auto", description="whole-map search: exact, or the "
                                                      "cache's index (`skyloc index`); auto: the index on bands of "
                                                      ">= 250k tiles")


class MavlinkConfig(_Strict):
    url: str = Field("udpout:127.0.0.1:14550", description="pymavlink connection string, e.g. /dev/ttyTHS1")
    baud: int = 921600
    outputs: list[Literal["gps_input", "odometry", "vision_position", "global_position"]] = ["gps_input"]
    gps_rate_hz: float = Field(10.0, ge=5.0, description=">= 5: ArduPilot marks GPS_INPUT unhealthy under 4 Hz")
    odometry_rate_hz: float = Field(10.0, ge=4.0, description=">= 4: ArduPilot drops ExternalNav after 300 ms")
    system_id: int = Field(1, ge=1, le=255)
    component_id: int = Field(191, ge=1, le=255)
    signing_key: Optional[str] = Field(None, description="hex or passphrase for MAVLink 2 signing")
    gps_id: int = Field(0, ge=0, le=1, description="GPS_INPUT's GPS slot: 0 for GPS1_TYPE=14, 1 for GPS2_TYPE=14 "
                        "(the real GPS stays GPS1)")
    request_streams: bool = Field(True, description="ask the autopilot for ATTITUDE, GLOBAL_POSITION_INT, GPS_RAW_INT "
                                  "and DISTANCE_SENSOR (a stock autopilot streams nothing to a new link)")
    send_heading: bool = Field(False, description="ODOMETRY carries skyloc's own heading while it is measured well "
                               "(ArduPilot EK3_SRCn_YAW = 6, compass-free flight); else ATTITUDE's yaw")
    origin: Optional[tuple[float, float, float]] = Field(
        None, description="lat, lon, alt (m AMSL) of the EKF origin sent with SET_GPS_GLOBAL_ORIGIN "
        "(default: the first ok fix; an origin the autopilot already has wins)")


class LogConfig(_Strict):
    dir: str = "skyloc-logs"
    frames_csv: bool = True
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["text", "json"] = Field("text", description="json: one JSON object per log line")


class DaemonConfig(_Strict):
    model: str = Field(..., description=".onnx or .engine file")
    backend: Literal["auto", "onnxruntime", "tensorrt"] = "auto"
    precision: Literal["fp32", "fp16", "int8"] = "fp16"
    engine_cache: str = Field("engines", description="writable folder for TensorRT engines built on first start")
    cache: str = Field(..., description="tile cache directory")
    map: Optional[str] = Field(None, description="the cache's GeoTIFF, for registration (default: manifest path)")
    map_nodata: Optional[float] = Field(None, description="map value meaning no data (default: as the cache was built)")
    source: str = Field(..., description="video URI: file, folder, v4l2://, csi://, rtsp://, gst://")
    max_fps: float = Field(5.0, gt=0)
    camera: CameraConfig = CameraConfig()
    localizer: LocalizerSettings = LocalizerSettings()
    mavlink: Optional[MavlinkConfig] = MavlinkConfig()
    log: LogConfig = LogConfig()
    status_file: str = Field("skyloc-status.json", description="health/status JSON, rewritten every frame")

    def localizer_config(self):
        """The localizer's settings this file gives."""
        from skyloc.runtime.bias import BiasConfig
        from skyloc.runtime.localizer import LocalizerConfig
        from skyloc.runtime.relocalization import RelocalizationConfig

        ls = self.localizer
        fields = dict(hfov_deg=self.camera.hfov_deg, camera_pitch_deg=self.camera.pitch_deg,
                      calibration=self.camera.calibration,
                      registration_interval_s=ls.registration_interval_s,
                      attitude_sigma_deg=ls.attitude_sigma_deg, altitude_range_m=ls.altitude_range_m,
                      dem=ls.dem, home_elevation_m=ls.home_elevation_m,
                      bias=BiasConfig(compass_sigma_deg=ls.compass_sigma_deg),
                      relocalization=RelocalizationConfig(top_k=ls.top_k, search=ls.search))
        return LocalizerConfig(**fields)

    def open_localizer(self, config=None):
        """The localizer this file describes: its model, cache, map and settings (`config`: this
        file's `localizer_config()` as a replay's recording changed it)."""
        from skyloc.runtime.localizer import Localizer

        return Localizer.open(self.model, self.cache, self.map, config or self.localizer_config(),
                              backend=self.backend, engine_cache=self.engine_cache, precision=self.precision,
                              map_nodata=self.map_nodata, start=self.localizer.start)

    @classmethod
    def load(cls, path: str | Path) -> "DaemonConfig":
        p = Path(path)
        cfg = validate(cls, read_yaml(p, "see configs/skyloc.example.yaml"), str(p))
        base = p.resolve().parent  # relative paths in the file are relative to the file
        for name in ("model", "cache", "map", "engine_cache", "status_file"):
            v = getattr(cfg, name)
            if v and "://" not in v and not Path(v).is_absolute():
                setattr(cfg, name, str(base / v))
        if cfg.localizer.dem and not Path(cfg.localizer.dem).is_absolute():
            cfg.localizer.dem = str(base / cfg.localizer.dem)
        if cfg.camera.calibration and not Path(cfg.camera.calibration).is_absolute():
            cfg.camera.calibration = str(base / cfg.camera.calibration)
        if "://" not in cfg.source and not Path(cfg.source).is_absolute():
            cfg.source = str(base / cfg.source)
        if not Path(cfg.log.dir).is_absolute():
            cfg.log.dir = str(base / cfg.log.dir)
        return cfg
