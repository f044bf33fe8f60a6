"""`skyloc demo` end to end, shortened (make demo runs the full-length one)."""
import socket

from rich.console import Console


def test_demo_runs_end_to_end(tmp_path):
    from skyloc.demo import run_demo

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # 3 epochs (15 steps): a 1-epoch model never found this flight's start, a field with little on it
    # (the worlds' colours used to change from run to run, which hid that)
    out = run_demo(tmp_path, epochs=3, classes=40, flight_s=12, port=port, console=Console(file=open(tmp_path / "log", "w")))
    assert out["parity_ok"]
    rep = out["report"]
    # 12 s at 5 fps, replayed as it would fly: frames that came while one was localized are dropped
    # (the first, a relocalization over the whole map, takes a few seconds)
    assert rep["frames"] + rep["frames_dropped"] == 60 and rep["frames"] >= 20, rep
    assert rep["ok"] >= 0.5 * rep["frames"] and rep["ok_within_3x_accuracy"] == 1.0, rep  # found, then tracked
    assert "within 3x reported accuracy" in (tmp_path / "log").read_text()
    assert out["gps_msgs"] >= 20 and out["gps_rate_hz"] >= 8.0  # 10 Hz while the flight replays in real time
    peer = out["peer"]
    assert peer.of("SET_GPS_GLOBAL_ORIGIN") and len(peer.of("ODOMETRY")) >= 20
    assert (tmp_path / "replay" / "track.png").is_file() and (tmp_path / "replay" / "errors.png").is_file()
    assert "GPS_INPUT at the peer" in (tmp_path / "log").read_text()
