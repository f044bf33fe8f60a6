"""`skyloc demo`: the whole product on a synthetic world, on a CPU, in minutes.

synthetic maps -> training pairs -> short CPU training (small MLR) -> ONNX export -> parity check
-> tile cache of a *different* map -> rendered flight video with telemetry -> replay streaming
GPS_INPUT over MAVLink to a local pymavlink peer -> summary and plots.
"""
from __future__ import annotations

import time
from pathlib import Path

from rich.console import Console
from rich.progress import Progress


# The CPU training recipe of the demo (configs/cpu_small.yaml is the same recipe as a file).
DEMO_TRAINING = dict(model="mlr_convnext_atto", batch_size=16, k_sat=2, lr=0.02, backbone_lr=0.01, loss="infonce",
                     temperature=0.1, amp=False, workers=2)


def run_demo(out: Path, epochs: int = 10, classes: int = 160, flight_s: float = 60.0, port: int = 14561,
             console: Console | None = None) -> dict:
    from skyloc.export.onnx_export import export_onnx
    from skyloc.export.verify import verify
    from skyloc.models.checkpoint import load_model
    from skyloc.runtime.cache import TileCache, build_cache
    from skyloc.runtime.embedder import OnnxEmbedder
    from skyloc.runtime.localizer import Localizer, LocalizerConfig
    from skyloc.onboard.mavlink import MavlinkLink
    from skyloc.onboard.peer import AutopilotPeer
    from skyloc.onboard.replay import replay, report_table
    from skyloc.onboard.telemetry import load_telemetry
    from skyloc.synth.flight import FlightConfig, render_flight
    from skyloc.synth.pairs import PairsConfig, make_pairs
    from skyloc.synth.world import generate, write_geotiff
    from skyloc.train.config import TrainConfig
    from skyloc.train.evaluate import evaluate
    from skyloc.train.trainer import train

    console = console or Console()
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}

    def step(name):
        console.rule(f"[bold]{name}")
        timings[name] = time.time()

    def done(name):
        timings[name] = time.time() - timings[name]

    step("1. synthetic worlds")
    train_map = write_geotiff(generate(1536, 1.0, seed=11), out / "train_map.tif")
    fly_map = write_geotiff(generate(1536, 1.0, seed=22, lat=47.45, lon=8.6), out / "flight_map.tif")
    console.print(f"training map {train_map}, held-out flight map {fly_map} (1.5 km x 1.5 km, 1 m/px)")
    done("1. synthetic worlds")

    step("2. training pairs")
    cfg = PairsConfig(classes=classes, views=8, test_fraction=0.0, seed=1)
    with Progress(console=console, transient=True) as p:
        task = p.add_task("rendering", total=cfg.classes)
        summary = make_pairs(train_map, out / "pairs", cfg, progress=lambda n: p.advance(task, n))
    held = make_pairs(fly_map, out / "pairs_heldout", PairsConfig(classes=60, views=4, test_fraction=1.0, seed=2))
    console.print(f"{summary['train']} training places x {cfg.views} drone views; "
                  f"{held['test']} held-out places on the other map")
    done("2. training pairs")

    step("3. training (mlr_convnext_atto, CPU)")
    tcfg = TrainConfig(**{**DEMO_TRAINING, "data": str(out / "pairs"), "out": str(out / "run"), "epochs": epochs,
                          "milestones": [max(1, epochs * 2 // 3)]})
    result = train(tcfg, resume=False, console=console)
    console.print(f"loss {result['loss'][0]:.3f} -> {result['loss'][-1]:.3f} in {result['seconds']:.0f} s")
    model, _ = load_model(result["checkpoint"])
    rows = evaluate(model, out / "pairs_heldout")
    r1 = next(r for r in rows if r["task"] == "drone->satellite" and r["protocol"] == "full gallery")
    console.print(f"held-out map, drone->satellite: R@1 {r1['R@1']:.1f}% AP {r1['AP']:.1f}% "
                  f"(chance {100 / r1['gallery']:.1f}%)")
    done("3. training (mlr_convnext_atto, CPU)")

    step("4. export + verify")
    onnx_path = out / "model.onnx"
    meta = export_onnx(model, onnx_path)
    report = verify(onnx_path, model)
    worst = max(r["max_abs"] for r in report.rows)
    console.print(f"{onnx_path}: fingerprint {meta.fingerprint}; ORT vs PyTorch max abs {worst:.1e}, "
                  f"rankings agree {report.ranking_agreement:.0%} -> {'OK' if report.ok else 'FAILED'}")
    done("4. export + verify")

    step("5. tile cache of the flight map")
    embedder = OnnxEmbedder(onnx_path)
    with Progress(console=console, transient=True) as p:
        task = p.add_task("embedding tiles", total=None)
        cache_dir = build_cache(fly_map, embedder, out / "flight_map.cache", [173.2], overlap=0.75,
                                progress=lambda d, n: p.update(task, completed=d, total=n))
    cache = TileCache.load(cache_dir, embedder.meta)
    console.print(f"{len(cache)} tiles of 173 m (75 % overlap) in {cache_dir}")
    done("5. tile cache of the flight map")

    step("6. synthetic flight")
    fcfg = FlightConfig(duration_s=flight_s, fps=5.0, seed=3, width=480, height=320, route="turns", pitch=0.0,
                        exposure=0.6, exposure_time=0.02)
    flight = render_flight(fly_map, out / "flight.mp4", out / "flight.csv", fcfg)
    console.print(f"{flight['frames']} frames of {fcfg.width}x{fcfg.height} at {fcfg.fps} fps, {fcfg.altitude:.0f} m, "
                  f"{fcfg.speed} m/s, heading turns {flight['yaw_change_deg']:.0f} deg; no start position: "
                  "retrieval finds the first fix")
    done("6. synthetic flight")

    step("7. replay + MAVLink to a local autopilot peer")
    tel = load_telemetry(out / "flight.csv")
    t0 = [time.time()]

    def vehicle():  # the autopilot knows its attitude and altitude, not its position (no GNSS)
        s = tel.at(min(time.time() - t0[0], flight_s))
        return s.yaw, 0.0, 0.0, s.alt, 0.0, 0.0

    peer = AutopilotPeer(port, vehicle).start()
    link = MavlinkLink(f"udpout:127.0.0.1:{port}", outputs=("gps_input", "odometry"), gps_rate_hz=10.0).start()
    localizer = Localizer.open(embedder, cache, config=LocalizerConfig(camera_pitch_deg=fcfg.pitch, hfov_deg=fcfg.hfov))
    with Progress(console=console, transient=True) as p:
        task = p.add_task("replaying", total=flight["frames"])
        t0[0] = time.time()
        res = replay(str(out / "flight.mp4"), localizer, tel, out / "replay",
                     mavlink=link, realtime=True, progress=lambda r: p.advance(task))
    time.sleep(0.5)
    link.close()
    peer.stop()
    done("7. replay + MAVLink to a local autopilot peer")

    rep = res.report
    gps = peer.of("GPS_INPUT")
    rate = peer.rate("GPS_INPUT")
    fix3 = sum(m.fix_type == 3 for m in gps)
    odo_gaps = peer.gaps("ODOMETRY")
    table = report_table(rep, "skyloc demo: held-out synthetic flight")
    table.add_row("GPS_INPUT at the peer", f"{len(gps)} msgs, {rate:.1f} Hz, {fix3} fix_type 3")
    table.add_row("ODOMETRY at the peer", f"{len(peer.of('ODOMETRY'))} msgs, {peer.rate('ODOMETRY'):.1f} Hz, "
                  f"max gap {odo_gaps.max() * 1000 if odo_gaps.size else 0:.0f} ms, origin "
                  f"{'confirmed' if link.stats.origin_confirmed else 'not set'}")
    console.print(table)
    console.print(f"plots: {res.files['track_plot']}, {res.files['error_plot']}")
    console.print("time per step: " + ", ".join(f"{k.split('. ')[1]} {v:.0f}s" for k, v in timings.items()))
    return {"report": rep, "gps_rate_hz": rate, "gps_msgs": len(gps), "peer": peer,
            "retrieval": r1, "parity_ok": report.ok, "files": res.files, "timings": timings}
