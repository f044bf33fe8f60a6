"""Telemetry as real drones give it: a biased compass, a barometer over hills, no yaw, bad values.

The localizer's heading and height are its own estimates; the telemetry is a prior whose errors
the map measures (skyloc.runtime.bias). These tests fly short synthetic flights with the telemetry
perturbed and check that tracking still earns "ok" honestly and learns the error.
"""
import csv
import math

import numpy as np
import pytest

from skyloc.errors import SkylocError
from skyloc.runtime.bias import TelemetryBias, wrap180
from skyloc.runtime.cache import TileCache
from skyloc.runtime.estimate import OK
from skyloc.runtime.localizer import Localizer, LocalizerConfig


@pytest.fixture(scope="module")
def flight(tmp_path_factory, heldout_map):
    """8 s over the held-out map at 10 fps, with a turn."""
    import cv2

    from skyloc.synth.flight import FlightConfig, render_flight

    d = tmp_path_factory.mktemp("bias")
    cfg = FlightConfig(duration_s=8, fps=10, speed=10, altitude=125, altitude_jitter=3, pitch=0, width=480,
                       height=320, route="turns", turn_deg=60, turn_rate=20, exposure=0.6, seed=9)
    render_flight(heldout_map, d / "f.mp4", d / "f.csv", cfg)
    cap = cv2.VideoCapture(str(d / "f.mp4"))
    frames = []
    while True:
        ok, f = cap.read()
        if not ok:
            break
        frames.append(cv2.cvtColor(f, cv2.COLOR_BGR2RGB))
    rows = list(csv.DictReader(open(d / "f.csv")))
    return frames, rows


def _fly(flight, heldout_cache, embedder, yaw=lambda r: float(r["yaw"]), alt=lambda r: float(r["alt"]),
         start=True, **cfg):
    frames, rows = flight
    cache = TileCache.load(heldout_cache, embedder.meta)
    s = (float(rows[0]["lat"]), float(rows[0]["lon"]), 40.0) if start else None
    loc = Localizer(embedder, cache, LocalizerConfig(**cfg), start=s)
    out = []
    for f, r in zip(frames, rows):
        est = loc.locate(f, float(r["time"]), yaw(r), alt(r))
        err = math.nan
        if est.has_position:
            x, y = cache.geodesy.from_latlon(float(r["lat"]), float(r["lon"]))
            err = math.hypot(est.x - x, est.y - y)
        out.append((est, err, r))
    return out


def _ok_honest(out):
    ok = [(e, err) for e, err, _ in out if e.status == OK]
    assert ok, [e.message for e, _, _ in out[::10]]
    assert all(err <= 3 * e.horizontal_accuracy and err < 25 for e, err in ok)
    return ok


@pytest.mark.parametrize("bias", [20.0, -45.0])
def test_a_compass_far_off_is_learned_not_refused(flight, heldout_cache, embedder, bias):
    out = _fly(flight, heldout_cache, embedder, yaw=lambda r: (float(r["yaw"]) + bias) % 360)
    ok = _ok_honest(out)
    assert len(ok) >= 0.6 * len(out)
    learned = [e.yaw_bias_deg for e, _ in ok]
    assert np.median(learned) == pytest.approx(-bias, abs=1.5)  # heading = telemetry yaw + bias estimate
    for e, _, r in out[-10:]:  # the heading used is the true one
        assert abs(wrap180(e.heading_deg - float(r["yaw"]))) < 2.0


def test_no_yaw_at_all_heading_from_the_map(flight, heldout_cache, embedder):
    out = _fly(flight, heldout_cache, embedder, yaw=lambda r: None)
    ok = _ok_honest(out)
    assert len(ok) >= 0.6 * len(out)
    assert "no yaw from telemetry" in out[0][0].message
    for e, _, r in out[-10:]:
        assert abs(wrap180(e.heading_deg - float(r["yaw"]))) < 2.0 and e.heading_sigma_deg < 3.0


@pytest.mark.parametrize("scale", [0.7, 1.3])
def test_an_altitude_off_by_30_percent_is_learned(flight, heldout_cache, embedder, scale):
    out = _fly(flight, heldout_cache, embedder, alt=lambda r: float(r["alt"]) * scale)
    ok = _ok_honest(out)
    assert len(ok) >= 0.6 * len(out)
    for e, _, r in out[-10:]:
        assert e.height_m == pytest.approx(float(r["alt"]), rel=0.04)
    assert np.median([e.height_scale for e, _ in ok]) == pytest.approx(1 / scale, rel=0.04)


def test_no_altitude_at_all_height_from_the_map(flight, heldout_cache, embedder):
    out = _fly(flight, heldout_cache, embedder, alt=lambda r: None, altitude_range_m=(40.0, 400.0))
    ok = _ok_honest(out)
    assert len(ok) >= 0.5 * len(out)
    for e, _, r in out[-5:]:
        assert e.height_m == pytest.approx(float(r["alt"]), rel=0.05)


def test_bad_telemetry_values_give_notes_not_errors(flight, heldout_cache, embedder):
    # NaN yaw, an altitude of 0 and below, a yaw that jumps by 180 deg for a while
    def yaw(r):
        i = int(round(float(r["time"]) * 10))
        if i % 7 == 3:
            return math.nan
        return (float(r["yaw"]) + (180.0 if 30 <= i < 45 else 0.0)) % 360

    def alt(r):
        i = int(round(float(r["time"]) * 10))
        return {5: 0.0, 6: -20.0}.get(i, float(r["alt"]))

    out = _fly(flight, heldout_cache, embedder, yaw=yaw, alt=alt)
    _ok_honest(out)
    assert "not above the ground" in out[5][0].message and "no yaw" in out[3][0].message
    for e, _, r in out[30:45]:  # the jump is carried by odometry: the heading used stays true
        assert abs(wrap180(e.heading_deg - float(r["yaw"]))) < 8.0


def test_bias_filter_widens_the_search_with_its_doubt():
    b = TelemetryBias()
    b.prior(0.0, 100.0, 150.0, "baro")
    hyps, rot, sc = b.hypotheses(8.0, 0.12)
    assert hyps == [(0.0, 1.0)] and rot >= 30 and 0.3 <= sc <= 0.4  # the compass prior: 10 deg 1-sigma
    b.registered(-12.0, 0.5, 1.1, 0.01)
    assert wrap180(b.heading - 88.0) == pytest.approx(0.0, abs=0.1) and b.height == pytest.approx(165.0, rel=0.01)
    hyps, rot, sc = b.hypotheses(8.0, 0.12)
    assert rot == 8.0 and sc == pytest.approx(0.12)  # learned: back to the registration's own tolerance
    none = TelemetryBias()
    none.prior(0.0, None, None, "none")
    hyps, rot, sc = none.hypotheses(8.0, 0.12)
    assert rot == 180.0 and len(hyps) > 3  # no yaw: the whole circle; no altitude: a grid of heights


def test_until_the_errors_are_measured_every_other_search_takes_the_telemetry_at_face_value():
    """Most compasses and barometers are within the registration's own tolerances; on a coarse map
    (NAIP, 5 m/px) the wide search's stricter threshold loses the few inliers there are, so the
    narrow search gets its turn, and the wide one the next."""
    b = TelemetryBias()
    b.prior(0.0, 100.0, 150.0, "baro")
    assert b.hypotheses(8.0, 0.12, at_face_value=True) == ([(0.0, 1.0)], 8.0, 0.12)
    hyps, rot, sc = b.hypotheses(8.0, 0.12, at_face_value=True, steps=True)
    assert (rot, sc) == (8.0, 0.12) and hyps[0] == (0.0, 1.0)  # the telemetry as it is comes first
    # ... then steps of twice the tolerance out to 3 sigma of the prior (10 deg, 10 %), each as narrow
    assert {h for h, _ in hyps} == {0.0, 16.0, -16.0, 32.0, -32.0}
    assert {round(k, 3) for _, k in hyps} == {1.0, 1.254, 0.797} and len(hyps) == 12
    assert b.hypotheses(8.0, 0.12)[1] >= 30  # the wide one is unchanged
    none = TelemetryBias()
    none.prior(0.0, None, 150.0, "baro")  # no yaw: nothing to take at face value for the heading
    hyps, rot, sc = none.hypotheses(8.0, 0.12, at_face_value=True, steps=True)
    assert rot == 180.0 and {h for h, _ in hyps} == {0.0} and sc == 0.12
    b.registered(-12.0, 0.5, 1.1, 0.01)  # measured: one search, the same either way
    assert b.hypotheses(8.0, 0.12, at_face_value=True) == b.hypotheses(8.0, 0.12)


def test_a_dem_turns_the_baro_altitude_into_height_over_hills(tmp_path):
    from skyloc.runtime.terrain import Terrain
    from skyloc.synth.world import generate, generate_terrain, write_dem, write_geotiff

    w = generate(512, 1.0, seed=5)
    z = generate_terrain(w, relief_m=60.0, seed=5)
    map_path = write_geotiff(w, tmp_path / "m.tif")
    dem = write_dem(w, z, tmp_path / "dem.tif")
    from skyloc.runtime.geo import GeoMap

    gm = GeoMap(map_path)
    t = Terrain(dem, gm.crs, gm.bounds)
    x, y = gm.pixel_to_xy(256, 256)
    assert t.elevation(x, y) == pytest.approx(float(z[256, 256]), abs=1.5)
    assert np.ptp(z) == pytest.approx(60.0, abs=0.5)
    # bad DEMs: no CRS, another place
    import rasterio
    from affine import Affine

    with rasterio.open(tmp_path / "nocrs.tif", "w", driver="GTiff", width=8, height=8, count=1, dtype="float32",
                       transform=Affine(1, 0, 0, 0, -1, 8)) as d:
        d.write(np.zeros((1, 8, 8), np.float32))
    with pytest.raises(SkylocError, match="no CRS"):
        Terrain(tmp_path / "nocrs.tif", gm.crs, gm.bounds)
    far = generate(64, 1.0, seed=1, lat=10.0, lon=10.0)
    write_dem(far, np.zeros((64, 64), np.float32), tmp_path / "far.tif", step=1)
    with pytest.raises(SkylocError, match="covers 0 %"):
        Terrain(tmp_path / "far.tif", gm.crs, gm.bounds)
    with pytest.raises(SkylocError, match="DEM not found"):
        Terrain(tmp_path / "missing.tif", gm.crs, gm.bounds)


def test_hilly_flight_with_a_barometer_and_a_dem(tmp_path, embedder):
    """Hills of 70 m under a flight 120 m above take-off: with the DEM the height follows the ground."""
    from skyloc.onboard.replay import replay
    from skyloc.onboard.telemetry import load_telemetry
    from skyloc.runtime.cache import build_cache
    from skyloc.synth.flight import FlightConfig, render_flight
    from skyloc.synth.world import generate, generate_terrain, write_dem, write_geotiff

    w = generate(1024, 1.0, seed=202, lat=46.9, lon=7.4)
    map_path = write_geotiff(w, tmp_path / "m.tif")
    dem = write_dem(w, generate_terrain(w, relief_m=70.0, seed=3, wavelength_m=300.0), tmp_path / "dem.tif")
    info = render_flight(map_path, tmp_path / "f.mp4", tmp_path / "f.csv",
                         FlightConfig(duration_s=10, fps=10, speed=15, altitude=120, altitude_jitter=0, pitch=0,
                                      width=480, height=320, route="turns", seed=2, dem=str(dem)))
    lo, hi = info["agl_range_m"]
    assert hi - lo > 4.0  # the ground does change under the flight
    cache = TileCache.load(build_cache(map_path, embedder, tmp_path / "c.cache", [138.6], overlap=0.75), embedder.meta)
    rows = list(csv.DictReader(open(tmp_path / "f.csv")))
    start = (float(rows[0]["lat"]), float(rows[0]["lon"]), 40.0)
    loc = Localizer(embedder, cache, LocalizerConfig(dem=str(dem)), start=start)
    res = replay(str(tmp_path / "f.mp4"), loc, load_telemetry(tmp_path / "f.csv"))
    ok = [r for r in res.rows if r.est.status == OK]
    assert len(ok) >= 0.5 * len(res.rows)
    assert all(r.error_m <= 3 * r.est.horizontal_accuracy for r in ok)
    agl = {int(round(float(r["time"]) * 10)): float(r["agl"]) for r in rows}
    errs = [abs(r.est.height_m / agl[r.frame] - 1) for r in ok]
    assert np.median(errs) < 0.03


def test_rangefinder_column_is_read(tmp_path):
    from skyloc.onboard.telemetry import load_telemetry

    p = tmp_path / "t.csv"
    p.write_text("time,lat,lon,alt,yaw,range\n0,47.0,8.0,100,10,95.5\n1,47.0,8.0,100,10,\n")
    tel = load_telemetry(p)
    assert tel.at(0.0).range == pytest.approx(95.5) and tel.at(1.0).range == pytest.approx(95.5)


def test_a_compass_that_comes_after_frames_without_yaw_starts_from_its_prior():
    """The daemon's first frames can come before the autopilot's ATTITUDE. In the NAIP SITL loop
    the heading then stayed at the whole circle after the compass came (never narrowed: no fix
    in a minute at 1000 m); it starts from the compass prior instead, unless the map measured
    the heading meanwhile."""
    b = TelemetryBias()
    b.prior(0.0, None, 150.0, "baro")
    assert b.heading_sigma == 180.0
    b.prior(0.1, 30.0, 150.0, "baro")
    assert b.heading_sigma == pytest.approx(10.0, abs=0.1) and b.heading == pytest.approx(30.0)
    measured = TelemetryBias()
    measured.prior(0.0, None, 150.0, "baro")
    measured.registered(40.0, 1.0, 1.0, 0.01)  # the map measured 40 deg without a compass
    measured.prior(0.1, 30.0, 150.0, "baro")
    assert measured.heading == pytest.approx(40.0, abs=0.1) and measured.heading_sigma < 2.0
