"""Replay: telemetry formats, the track files, the error report and the plots."""
import json
import math

import pytest

from skyloc.errors import SkylocError
from skyloc.runtime.cache import TileCache
from skyloc.runtime.localizer import Localizer, LocalizerConfig
from skyloc.onboard.replay import replay
from skyloc.onboard.telemetry import load_telemetry


def test_csv_srt_gpx_telemetry(tmp_path):
    (tmp_path / "t.csv").write_text("time,lat,lon,alt,yaw\n0,47.0,8.0,100,350\n1,47.001,8.0,110,10\n")
    tr = load_telemetry(tmp_path / "t.csv")
    s = tr.at(0.5)
    assert s.lat == pytest.approx(47.0005) and s.alt == pytest.approx(105)
    assert s.yaw == pytest.approx(0.0, abs=1e-6) or s.yaw == pytest.approx(360.0)  # through north, not 180
    (tmp_path / "d.srt").write_text(
        "1\n00:00:00,000 --> 00:00:00,033\n<font size=\"28\">FrameCnt: 1 [iso : 100] [latitude: 47.100000] "
        "[longitude: 8.200000] [rel_alt: 120.5 abs_alt: 560.1] [gb_yaw: -90.0]</font>\n\n"
        "2\n00:00:01,000 --> 00:00:01,033\n[latitude: 47.100100] [longitude: 8.200000] [rel_alt: 121.0 abs_alt: 561]\n")
    srt = load_telemetry(tmp_path / "d.srt")
    assert srt.at(0).lat == pytest.approx(47.1) and srt.at(0).alt == pytest.approx(120.5)
    assert srt.at(0).yaw == pytest.approx(270.0)
    (tmp_path / "t.gpx").write_text(
        '<?xml version="1.0"?><gpx xmlns="http://www.topografix.com/GPX/1/1"><trk><trkseg>'
        '<trkpt lat="47.0" lon="8.0"><ele>400</ele><time>2024-05-01T10:00:00Z</time></trkpt>'
        '<trkpt lat="47.0" lon="8.001"><ele>450</ele><time>2024-05-01T10:00:02Z</time></trkpt>'
        "</trkseg></trk></gpx>")
    gpx = load_telemetry(tmp_path / "t.gpx")
    assert gpx.at(2).alt == pytest.approx(50.0) and gpx.at(1).yaw == pytest.approx(90.0, abs=0.5)  # heading east
    with pytest.raises(SkylocError, match="unknown telemetry format"):
        (tmp_path / "t.txt").write_text("x")
        load_telemetry(tmp_path / "t.txt")
    (tmp_path / "bad.csv").write_text("a,b\n1,2\n")
    with pytest.raises(SkylocError, match="needs a header"):
        load_telemetry(tmp_path / "bad.csv")


def test_replay_writes_track_report_and_plots(tmp_path, heldout_map, heldout_cache, embedder):
    from skyloc.synth.flight import FlightConfig, render_flight

    render_flight(heldout_map, tmp_path / "f.mp4", tmp_path / "f.csv", FlightConfig(duration_s=10, fps=2, altitude=125))
    loc = Localizer(embedder, TileCache.load(heldout_cache, embedder.meta), LocalizerConfig())
    res = replay(str(tmp_path / "f.mp4"), loc, load_telemetry(tmp_path / "f.csv"), tmp_path / "out")
    rep = res.report
    assert rep["frames"] == 20 and rep["ok"] + rep["low_confidence"] + rep["no_fix"] == 20
    assert rep["ok"] >= 10, rep
    assert rep["error_ok"]["median_m"] < 15 and rep["ok_far_off"] == 0, rep
    for name in ("track.csv", "track.geojson", "track.kml", "report.json", "track.png", "errors.png"):
        assert (tmp_path / "out" / name).stat().st_size > 100, name
    gj = json.loads((tmp_path / "out" / "track.geojson").read_text())
    assert any(f["properties"].get("name") == "ground truth" for f in gj["features"])
    assert json.loads((tmp_path / "out" / "report.json").read_text())["frames"] == 20
    lines = (tmp_path / "out" / "track.csv").read_text().splitlines()
    assert len(lines) == 21 and lines[0].startswith("frame,time,status")
    assert not math.isnan(res.rows[-1].error_m) or res.rows[-1].est.status == "no-fix"
