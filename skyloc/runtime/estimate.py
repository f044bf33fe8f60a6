"""The estimate stage: what a frame's position is worth, and the rules that say "ok".

"ok" is earned, never assumed: a geometrically verified map registration within a bounded time
and distance, confirmed by a second one after the track (re)started, with visual odometry
continuous since, and an accuracy inside the bound. Anything else with a track is
"low-confidence"; no track is "no-fix". The reported horizontal accuracy is the filter's root-
mean-square error plus what no number of fixes can average away (map georeferencing and
attitude errors), so that it covers the true error.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

OK, LOW, NO_FIX = "ok", "low-confidence", "no-fix"
NO_FRAME = "no frame"  # Estimate.source of a prediction made without a camera frame (an outage)


@dataclass
class Estimate:
    """One frame's position estimate (what goes to the autopilot)."""

    time: float
    status: str  # ok | low-confidence | no-fix
    lat: float = math.nan
    lon: float = math.nan
    x: float = math.nan  # metres east in the map CRS
    y: float = math.nan  # metres north
    horizontal_accuracy: float = math.inf  # metres, root-mean-square horizontal error
    confidence: float = 0.0
    vx: float = 0.0  # east velocity, m/s (filter), true east (not the map grid's)
    vy: float = 0.0  # north velocity, m/s, true north
    velocity_sigma: float = math.inf  # 1-sigma per axis of vx, vy (m/s)
    cov_xx: float = math.nan  # position covariance (m^2), for outputs that carry one
    cov_xy: float = math.nan
    cov_yy: float = math.nan
    source: str = ""  # what moved the estimate: registration | odometry | prediction | relocalization | no frame
    registered: bool = False  # a verified map registration was fused on this frame
    odometry: bool = False  # visual odometry measured this frame's motion
    inliers: int = 0
    since_registration_s: float = math.inf
    track_id: int = 0  # increments whenever the track (re)starts: outputs signal a position reset
    best_tiles: list[int] = field(default_factory=list)
    best_score: float = 0.0
    latency_ms: dict[str, float] = field(default_factory=dict)
    message: str = ""
    # what the localizer believes of the camera (bias stage), against what telemetry said
    heading_deg: float = math.nan  # camera heading used, clockwise from north
    heading_sigma_deg: float = math.nan
    height_m: float = math.nan  # height above the ground used
    height_sigma: float = math.nan  # 1-sigma of log(height)
    yaw_bias_deg: float = math.nan  # compass error measured on the map (heading - telemetry yaw)
    height_scale: float = math.nan  # height over the telemetry's reference height, measured on the map
    telemetry_yaw: float = math.nan
    telemetry_altitude: float = math.nan

    @property
    def has_position(self) -> bool:
        return self.status != NO_FIX and math.isfinite(self.lat)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class StatusConfig:
    ok_max_age_s: float = 5.0  # a verified registration vouches for the track this long...
    ok_max_distance_m: float = 150.0  # ... and this far
    ok_max_accuracy_m: float = 25.0  # an ok fix never claims worse than this
    max_odometry_gap_s: float = 0.6  # longer without odometry breaks the chain from the last registration
    confirmations: int = 2  # verified registrations that must agree after the track (re)starts
    lost_accuracy_m: float = 300.0  # beyond this the track is dropped and relocalization takes over


@dataclass
class TrackEvidence:
    """What the track has to show for itself since its last verified registration."""

    started: bool = False
    confirmations: int = 0  # verified registrations fused since the track (re)started
    last_registration_t: float = -math.inf
    distance_since_m: float = 0.0
    last_odometry_t: float = -math.inf
    chain_broken: bool = True  # an odometry gap happened after the last registration

    def registered(self, t: float) -> None:
        self.confirmations += 1
        self.last_registration_t = t
        self.distance_since_m = 0.0
        self.last_odometry_t = t
        self.chain_broken = False

    def odometry(self, t: float, distance: float, gap_limit: float) -> None:
        if t - self.last_odometry_t > gap_limit:
            self.chain_broken = True
        self.last_odometry_t = t
        self.distance_since_m += distance

    def no_odometry(self, t: float, gap_limit: float) -> None:
        if t - self.last_odometry_t > gap_limit:
            self.chain_broken = True


def decide_status(ev: TrackEvidence, t: float, accuracy: float, cfg: StatusConfig) -> tuple[str, str]:
    """(status, reason) for a frame at time t with the track's reported accuracy."""
    if not ev.started:
        return NO_FIX, "no track"
    if ev.confirmations < cfg.confirmations:
        return LOW, f"track not confirmed yet ({ev.confirmations}/{cfg.confirmations} registrations)"
    if ev.chain_broken:
        return LOW, "odometry interrupted since the last registration"
    age = t - ev.last_registration_t
    if age > cfg.ok_max_age_s:
        return LOW, f"no registration for {age:.1f} s"
    if ev.distance_since_m > cfg.ok_max_distance_m:
        return LOW, f"{ev.distance_since_m:.0f} m flown since the last registration"
    if accuracy > cfg.ok_max_accuracy_m:
        return LOW, f"accuracy {accuracy:.0f} m"
    return OK, ""
