"""Replay a recorded flight through the onboard pipeline: track, errors, plots, optional MAVLink.

Writes track.csv, track.geojson, track.kml, report.json and, with ground truth, error plots.
"""
from __future__ import annotations

import csv
import json
import logging
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np

from skyloc.errors import SkylocError
from skyloc.onboard.config import CameraConfig
from skyloc.onboard.pipeline import FrameLoop, LoggedTelemetry, RecordedFrames, Step
from skyloc.onboard.sources import FolderSource, LatestFrame, Source, open_source, video_start_time
from skyloc.onboard.telemetry import TelemetryTrack, utc_text
from skyloc.runtime.estimate import LOW, NO_FIX, OK, Estimate
from skyloc.runtime.localizer import Localizer, LocalizerConfig

log = logging.getLogger("skyloc.replay")


@dataclass
class ReplayRow:
    frame: int
    est: Estimate
    time: float = math.nan  # the frame's time in the recording (the estimate's is the loop's clock)
    truth_lat: float = math.nan
    truth_lon: float = math.nan
    error_m: float = math.nan
    yaw: float = math.nan
    alt: float = math.nan


@dataclass
class ReplayResult:
    rows: list[ReplayRow] = field(default_factory=list)
    report: dict = field(default_factory=dict)
    files: dict = field(default_factory=dict)


def error_report(rows: list[ReplayRow], footprint_m: float) -> dict:
    """Availability, errors, calibration (ok fixes within 3x their reported accuracy), latency."""
    n = len(rows)
    status = np.array([r.est.status for r in rows])
    err = np.array([r.error_m for r in rows])
    acc = np.array([r.est.horizontal_accuracy for r in rows])
    t = np.array([r.est.time for r in rows])
    ok = status == OK
    rep = {"frames": n, "ok": int(ok.sum()), "low_confidence": int((status == LOW).sum()),
           "no_fix": int((status == NO_FIX).sum()), "availability_ok": float(ok.mean()) if n else 0.0,
           "footprint_m": footprint_m,
           "registrations": int(sum(r.est.registered for r in rows)),
           "odometry_frames": int(sum(r.est.odometry for r in rows)),
           "track_starts": int(len({r.est.track_id for r in rows if r.est.track_id})),
           "time_to_first_ok_s": float(t[ok][0] - t[0]) if ok.any() else None}
    lat = np.array([r.est.latency_ms.get("total", math.nan) for r in rows if r.est.latency_ms])
    first = int(np.argmax(ok)) if ok.any() else None
    rep["availability_after_first_ok"] = float(ok[first:].mean()) if first is not None else 0.0
    # what the map taught about the telemetry (median over ok fixes)
    yb = np.array([r.est.yaw_bias_deg for r in rows if r.est.status == OK], dtype=float)
    hs = np.array([r.est.height_scale for r in rows if r.est.status == OK], dtype=float)
    hm = np.array([r.est.height_m for r in rows if r.est.status == OK], dtype=float)
    rep["compass_error_deg"] = float(-np.nanmedian(yb)) if np.isfinite(yb).any() else None
    rep["height_over_telemetry"] = float(np.nanmedian(hs)) if np.isfinite(hs).any() else None
    rep["height_m_median"] = float(np.nanmedian(hm)) if np.isfinite(hm).any() else None
    rep["latency_ms_median"] = float(np.nanmedian(lat)) if lat.size else math.nan
    rep["latency_ms_p90"] = float(np.nanpercentile(lat, 90)) if lat.size else math.nan
    rep["latency_ms_max"] = float(np.nanmax(lat)) if lat.size else math.nan
    if np.isfinite(err).any():
        for name, mask in (("ok", ok & np.isfinite(err)), ("all", np.isfinite(err))):
            e = err[mask]
            if e.size:
                rep[f"error_{name}"] = {
                    "median_m": float(np.median(e)), "p90_m": float(np.percentile(e, 90)), "max_m": float(e.max()),
                    "within_5m": float(np.mean(e <= 5)), "within_10m": float(np.mean(e <= 10)),
                    "within_25m": float(np.mean(e <= 25)), "count": int(e.size)}
        graded = ok & np.isfinite(err)
        rep["ok_within_3x_accuracy"] = float(np.mean(err[graded] <= 3 * acc[graded])) if graded.any() else None
        rep["ok_over_25m"] = int((graded & (err > 25)).sum())
        far = graded & (err > footprint_m)
        rep["ok_far_off"] = int(far.sum())
        rep["ok_far_off_share"] = float(far.sum() / max(1, ok.sum()))
    return rep


def report_table(rep: dict, title: str = "replay report"):
    """The error report as a rich table (the CLI and the demo print it)."""
    from rich.table import Table

    t = Table("figure", "value", title=title)
    t.add_row("frames", str(rep["frames"]))
    t.add_row("ok / low-confidence / no-fix", f"{rep['ok']} / {rep['low_confidence']} / {rep['no_fix']}")
    t.add_row("availability of ok fixes", f"{rep['availability_ok']:.1%}")
    first = rep.get("time_to_first_ok_s")
    t.add_row("time to the first ok fix", "never" if first is None else f"{first:.1f} s")
    t.add_row("registrations / odometry frames", f"{rep.get('registrations', 0)} / {rep.get('odometry_frames', 0)}")
    for key, label in (("error_ok", "ok fixes"), ("error_all", "all fixes")):
        e = rep.get(key)
        if e:
            t.add_row(f"error {label}: median/p90/max", f"{e['median_m']:.1f} / {e['p90_m']:.1f} / {e['max_m']:.1f} m")
            t.add_row(f"{label} within 5 / 10 / 25 m", f"{e['within_5m']:.0%} / {e['within_10m']:.0%} / {e['within_25m']:.0%}")
    if rep.get("ok_within_3x_accuracy") is not None:
        t.add_row("ok within 3x reported accuracy", f"{rep['ok_within_3x_accuracy']:.1%}")
        t.add_row("ok fixes more than 25 m off", str(rep["ok_over_25m"]))
    if rep.get("compass_error_deg") is not None:
        t.add_row("compass error measured on the map", f"{rep['compass_error_deg']:+.1f} deg (telemetry yaw - heading)")
    if rep.get("height_over_telemetry") is not None:
        t.add_row("height / telemetry's height", f"{rep['height_over_telemetry']:.3f}")
    t.add_row("ms per frame: median / p90 / max",
              f"{rep['latency_ms_median']:.0f} / {rep['latency_ms_p90']:.0f} / {rep['latency_ms_max']:.0f} ms")
    return t


@dataclass
class FlightInput:
    """A recorded flight ready to replay: its frames and the telemetry time of each frame."""

    source: Source
    telemetry: TelemetryTrack | None
    to_telemetry_time: Callable[[float], float]  # frame timestamp -> telemetry time
    photos: list = field(default_factory=list)  # PhotoPose per frame for photo folders

    @property
    def is_folder(self) -> bool:
        return isinstance(self.source, FolderSource)

    def localizer_config(self, base: LocalizerConfig | None = None, hfov_deg: float | None = None) -> LocalizerConfig:
        """`base` with what the recording decides, the same for every caller: photos
        are frames seconds apart, each registered on its own, so one strictly verified
        registration is the evidence (as for `localize`), where a video needs a second to confirm
        the track; their EXIF gives the field of view (unless `hfov_deg`); a nadir gimbal's yaw
        may be reported turned by 180 deg."""
        if hfov_deg is None:
            fovs = [p.hfov for p in self.photos if p.hfov == p.hfov]
            hfov_deg = float(np.median(fovs)) if fovs else 60.0
        base = base or LocalizerConfig()
        return replace(base, hfov_deg=hfov_deg, yaw_flip_ok=base.yaw_flip_ok or any(p.yaw_ambiguous for p in self.photos),
                       status=replace(base.status, confirmations=1 if self.is_folder else 2))


def open_flight(video: str, telemetry: TelemetryTrack | None = None, time_offset: float = 0.0,
                video_start: float | None = None, topics=None) -> FlightInput:
    """Open a video, a photo folder or a ROS bag and line its frames up with the telemetry.

    Logs (.tlog/.bin/.ulg) are on UTC: a video is placed by its container's creation time (or
    `video_start`), photos by their own times (file name, EXIF) or, without any, by the log's
    camera triggers. A photo folder without a log is its own telemetry (EXIF/XMP poses). A bag
    (`skyloc.onboard.bags`, `topics` a `BagTopics`) is its own telemetry unless one is given; its
    stamps are UTC. `time_offset` (seconds) is added to every frame time before the telemetry is
    looked up.
    """
    from skyloc.onboard.bags import is_bag, open_bag
    from skyloc.onboard.photos import photo_times, photo_track
    from skyloc.runtime.preprocess import image_files

    path = Path(video[7:] if video.startswith("file://") else video)
    if is_bag(path):
        source, recorded = open_bag(path, topics)
        telemetry = telemetry or recorded
        if telemetry is not None and not telemetry.absolute:  # a CSV in seconds from the first frame
            first = source.first_time()
            return FlightInput(source, telemetry, lambda t: t - first + time_offset)
        return FlightInput(source, telemetry, lambda t: t + time_offset)
    if path.is_dir():
        files = image_files(path)
        times = photo_times(files)
        photos: list = []
        if telemetry is None:
            if times is None or len(set(times)) < len(times):
                times = [float(i) for i in range(len(files))]  # no usable times: one photo a second
            telemetry, photos = photo_track(path, times)
        elif telemetry.absolute and times is None:
            if len(telemetry.triggers) != len(files):
                raise SkylocError(f"{path}: the photos carry no time (file name or EXIF) and {telemetry.source} has "
                                  f"{len(telemetry.triggers)} camera triggers for {len(files)} photos: name the photos "
                                  "by their UTC time (YYYYMMDDhhmmss) or pass --time-offset")
            times = list(telemetry.triggers)
        source = FolderSource(path, times=times)
        return FlightInput(source, telemetry, lambda t: t + time_offset, photos)
    source = open_source(video)
    start = 0.0
    if telemetry is not None and telemetry.absolute:
        start = video_start if video_start is not None else video_start_time(path)
        if start is None:
            source.close()
            raise SkylocError(f"{video} has no creation time to line it up with {telemetry.source} (UTC): pass "
                              "--video-start 2024-05-01T10:15:30Z (when recording started) or convert the log")
    return FlightInput(source, telemetry, lambda t: start + t + time_offset)


def check_coverage(flight: FlightInput, first: float, last: float) -> None:
    """A log that does not cover the frames is a user error, not a silent run without truth."""
    tel = flight.telemetry
    if tel is None:
        return
    a, b = flight.to_telemetry_time(first), flight.to_telemetry_time(last)
    if not (tel.covers(a) or tel.covers(b)):
        when = (f"{utc_text(a)}-{utc_text(b)[11:]} UTC" if tel.absolute else f"{a:.1f}-{b:.1f} s")
        raise SkylocError(f"{tel.source} covers {tel.describe_span()} but the frames fall at {when}: wrong log, or "
                          "pass --time-offset SECONDS (or --video-start) to line them up")


def replay(flight: FlightInput | str, localizer: Localizer, telemetry: TelemetryTrack | None = None,
           out_dir: str | Path | None = None, mavlink=None, realtime: bool = False, progress=None,
           max_frames: int | None = None, time_offset: float = 0.0, video_start: float | None = None,
           yaw_offset_deg: float = 0.0, drop_yaw: bool = False, camera: CameraConfig | None = None,
           max_fps: float | None = None) -> ReplayResult:
    """The daemon's loop (`FrameLoop`) fed by a recording and its log instead of a camera and an
    autopilot: every frame as fast as the CPU allows, or with `realtime` the recording at its
    own pace through the daemon's newest-frame queue (frames the CPU cannot keep up with are
    dropped as in flight, `max_fps` as in the daemon's config). `flight`: an opened flight or a
    video / photo folder path (opened with `telemetry`, `time_offset`, `video_start`). `camera`:
    the daemon config's camera section (mount yaw, gimbal, latency). yaw_offset_deg / drop_yaw:
    fly the recording with a compass that is off, or with none."""
    if not isinstance(flight, FlightInput):
        flight = open_flight(str(flight), telemetry, time_offset, video_start)
    camera = camera or CameraConfig()
    res = ReplayResult()
    geod = localizer.cache.geodesy
    source = flight.source
    last_time = source.last_time()

    def collect(step: Step) -> None:
        if step.frame is None:  # a camera outage's prediction: not a frame of the recording
            return
        if not res.rows:
            check_coverage(flight, step.frame.timestamp, last_time or step.frame.timestamp)
        est, s = step.estimate, step.sample
        row = ReplayRow(step.frame.index, est, step.frame.timestamp,
                        yaw=step.pose.yaw_deg if step.pose.yaw_deg is not None else math.nan,
                        alt=step.pose.altitude_m if step.pose.altitude_m is not None else math.nan)
        if s is not None and math.isfinite(s.lat):
            row.truth_lat, row.truth_lon = s.lat, s.lon
            if est.has_position:
                tx, ty = geod.from_latlon(s.lat, s.lon)
                row.error_m = float(math.hypot(est.x - tx, est.y - ty))
        res.rows.append(row)
        if progress:
            progress(row)

    if realtime:
        frames = LatestFrame(getattr(source, "name", "the recording"), opener=lambda _uri: source)
        if max_frames is not None:
            log.warning("max_frames is ignored with realtime")
    else:
        frames = RecordedFrames(source, max_frames)
    logged = LoggedTelemetry(flight.telemetry, flight.to_telemetry_time, yaw_offset_deg, drop_yaw)
    loop = FrameLoop(localizer, camera, logged, frames, [collect], link=mavlink, max_fps=max_fps if realtime else None,
                     gnss_prior=False)
    try:
        loop.run()
    finally:
        frames.close()
    res.report = error_report(res.rows, float(np.median(localizer.cache.footprints_m)))
    res.report["frames_dropped"] = int(frames.dropped)  # realtime: frames the CPU could not keep up with
    if out_dir is not None:
        res.files = write_outputs(res, Path(out_dir), localizer)
    return res


def write_outputs(res: ReplayResult, out: Path, localizer: Localizer) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    files = {"csv": out / "track.csv", "geojson": out / "track.geojson", "kml": out / "track.kml",
             "report": out / "report.json"}
    with open(files["csv"], "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["frame", "time", "status", "lat", "lon", "horizontal_accuracy_m", "confidence", "source",
                    "registered", "odometry", "inliers", "truth_lat", "truth_lon", "error_m", "telemetry_yaw",
                    "heading", "heading_sigma", "telemetry_alt", "height", "latency_ms", "message"])
        for r in res.rows:
            e = r.est
            w.writerow([r.frame, f"{r.time:.3f}", e.status, f"{e.lat:.8f}", f"{e.lon:.8f}",
                        f"{e.horizontal_accuracy:.2f}", f"{e.confidence:.3f}", e.source, int(e.registered),
                        int(e.odometry), e.inliers, f"{r.truth_lat:.8f}", f"{r.truth_lon:.8f}", f"{r.error_m:.2f}",
                        f"{e.telemetry_yaw:.2f}", f"{e.heading_deg:.2f}", f"{e.heading_sigma_deg:.2f}",
                        f"{e.telemetry_altitude:.2f}", f"{e.height_m:.2f}",
                        f"{e.latency_ms.get('total', math.nan):.1f}", e.message])
    feats = [{"type": "Feature", "geometry": {"type": "Point", "coordinates": [r.est.lon, r.est.lat]},
              "properties": {"frame": r.frame, "time": r.time, "status": r.est.status,
                             "accuracy_m": r.est.horizontal_accuracy, "error_m": None if math.isnan(r.error_m) else r.error_m}}
             for r in res.rows if r.est.has_position]
    ok_line = [[r.est.lon, r.est.lat] for r in res.rows if r.est.status == OK]
    if len(ok_line) > 1:
        feats.append({"type": "Feature", "geometry": {"type": "LineString", "coordinates": ok_line},
                      "properties": {"name": "ok fixes"}})
    truth = [[r.truth_lon, r.truth_lat] for r in res.rows if math.isfinite(r.truth_lat)]
    if len(truth) > 1:
        feats.append({"type": "Feature", "geometry": {"type": "LineString", "coordinates": truth},
                      "properties": {"name": "ground truth"}})
    files["geojson"].write_text(json.dumps({"type": "FeatureCollection", "features": feats}))
    coords = " ".join(f"{lon:.8f},{lat:.8f},0" for lon, lat in ok_line)
    truth_coords = " ".join(f"{lon:.8f},{lat:.8f},0" for lon, lat in truth)
    files["kml"].write_text(
        '<?xml version="1.0" encoding="UTF-8"?>\n<kml xmlns="http://www.opengis.net/kml/2.2"><Document>'
        '<name>skyloc replay</name>'
        f'<Placemark><name>estimated (ok fixes)</name><LineString><coordinates>{coords}</coordinates></LineString></Placemark>'
        + (f'<Placemark><name>ground truth</name><LineString><coordinates>{truth_coords}</coordinates></LineString></Placemark>'
           if truth else "") + "</Document></kml>\n")
    files["report"].write_text(json.dumps(res.report, indent=2))
    files.update(plot_replay(res, out, localizer))
    return {k: str(v) for k, v in files.items()}


def plot_replay(res: ReplayResult, out: Path, localizer: Localizer) -> dict:
    """track.png (estimates over the map, coloured by status) and errors.png (error/confidence vs time)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    geod = localizer.cache.geodesy
    colours = {OK: "tab:green", "low-confidence": "tab:orange"}
    files = {}
    fig, ax = plt.subplots(figsize=(7, 7))
    pts = [(geod.from_latlon(r.est.lat, r.est.lon), r.est.status) for r in res.rows if r.est.has_position]
    truth = np.array([geod.from_latlon(r.truth_lat, r.truth_lon) for r in res.rows if math.isfinite(r.truth_lat)])
    allxy = np.array([p for p, _ in pts] + list(truth)) if pts or truth.size else np.zeros((0, 2))
    if localizer.map is not None and allxy.size:
        pad = max(20.0, 0.15 * float(np.ptp(allxy, axis=0).max()))  # a margin in scale with the flight
        x0, y0 = allxy.min(0) - pad
        x1, y1 = allxy.max(0) + pad
        side = max(x1 - x0, y1 - y0)
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        img = localizer.map.read_window(cx, cy, side, 800)
        ax.imshow(img, extent=(cx - side / 2, cx + side / 2, cy - side / 2, cy + side / 2), alpha=0.8)
    if truth.size:
        ax.plot(truth[:, 0], truth[:, 1], "-", color="white", lw=2.5, zorder=2)
        ax.plot(truth[:, 0], truth[:, 1], "-", color="black", lw=0.8, label="ground truth", zorder=2)
    for status, c in colours.items():
        xy = np.array([p for p, s in pts if s == status])
        if xy.size:
            ax.scatter(xy[:, 0], xy[:, 1], s=6 if len(pts) > 200 else 30, c=c, label=status, linewidths=0, zorder=3)
    ax.ticklabel_format(useOffset=False, style="plain")
    ax.set_title("skyloc replay: estimated track")
    ax.set_xlabel("east (m)")
    ax.set_ylabel("north (m)")
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    files["track_plot"] = out / "track.png"
    fig.savefig(files["track_plot"], dpi=100)
    plt.close(fig)

    fig, (a1, a2) = plt.subplots(2, 1, figsize=(9, 5.5), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    t = np.array([r.est.time for r in res.rows])
    t = t - t[0] if t.size else t  # seconds from the first frame (live replays stamp wall-clock times)
    err = np.array([r.error_m for r in res.rows])
    acc = np.array([r.est.horizontal_accuracy for r in res.rows])
    status = np.array([r.est.status for r in res.rows])
    has = np.isfinite(acc)
    a1.fill_between(t, 0, np.where(has, 3 * acc, np.nan), color="tab:blue", alpha=0.15, step="mid",
                    label="3 x reported accuracy")
    for s_, c in colours.items():
        m = status == s_
        a1.scatter(t[m], err[m], s=6, c=c, label=f"error ({s_})")
    a1.set_yscale("log")
    finite = err[np.isfinite(err)]
    a1.set_ylim(max(0.01, 0.5 * float(finite.min())) if finite.size else 0.1,
                max(1.0, 2 * float(np.nanmax(np.where(has, 3 * acc, np.nan))) if has.any() else 100.0))
    a1.set_ylabel("error (m)")
    a1.set_title("skyloc replay: error against reported accuracy")
    a1.legend(fontsize=8, loc="upper right")
    reg = np.array([r.est.registered for r in res.rows])
    odo = np.array([r.est.odometry for r in res.rows])
    a2.vlines(t[reg], 1.0, 2.0, color="tab:green", lw=0.8, label="verified registration")
    a2.vlines(t[~odo], 0.0, 1.0, color="tab:red", lw=0.8, label="no odometry")
    a2.set_yticks([])
    a2.set_ylim(0, 2)
    a2.set_xlabel("time from the first frame (s)")
    a2.legend(fontsize=7, loc="upper right", ncol=2)
    fig.tight_layout()
    files["error_plot"] = out / "errors.png"
    fig.savefig(files["error_plot"], dpi=100)
    plt.close(fig)

    # what the map taught about the telemetry: heading and height used against what it said
    fig, (b1, b2) = plt.subplots(2, 1, figsize=(9, 5.5), sharex=True)
    tel_yaw = np.array([r.est.telemetry_yaw for r in res.rows])
    heading = np.array([r.est.heading_deg for r in res.rows])
    hsig = np.array([r.est.heading_sigma_deg for r in res.rows])
    diff = (tel_yaw - heading + 180.0) % 360.0 - 180.0
    if np.isfinite(diff).any():
        b1.fill_between(t, diff - 3 * hsig, diff + 3 * hsig, color="tab:blue", alpha=0.15, label="3 sigma")
        b1.plot(t, diff, color="tab:blue", lw=1, label="telemetry yaw - heading used (compass error)")
        b1.set_ylim(np.nanmin(diff) - 10, np.nanmax(diff) + 10)
    else:
        b1.plot(t, heading, color="tab:blue", lw=1, label="heading used (no yaw in the telemetry)")
    b1.axhline(0, color="grey", lw=0.5)
    b1.set_ylabel("deg")
    b1.legend(fontsize=8, loc="upper right")
    b1.set_title("skyloc replay: heading and height learned from the map")
    tel_alt = np.array([r.est.telemetry_altitude for r in res.rows])
    height = np.array([r.est.height_m for r in res.rows])
    if np.isfinite(tel_alt).any():
        b2.plot(t, tel_alt, color="grey", lw=1, label="telemetry altitude")
    b2.plot(t, height, color="tab:green", lw=1, label="height above the ground used")
    b2.set_ylabel("m")
    b2.set_xlabel("time from the first frame (s)")
    b2.legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    files["telemetry_plot"] = out / "telemetry.png"
    fig.savefig(files["telemetry_plot"], dpi=100)
    plt.close(fig)
    return files
