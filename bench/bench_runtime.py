"""Per-frame latency by stage on ONNX Runtime (CPU), and ONNX Runtime vs PyTorch eager.

    python bench/bench_runtime.py [--frames 30] [--threads 2]

Target on a 2-core CPU: ONNX Runtime at least 1.5x faster than PyTorch eager for the small
variant. Both backends run the same model on the same inputs in this one process, alternately.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from timing import median_ms  # noqa: E402
from skyloc.export.onnx_export import export_onnx  # noqa: E402
from skyloc.models import create_model  # noqa: E402
from skyloc.runtime.cache import TileCache, build_cache  # noqa: E402
from skyloc.runtime.embedder import OnnxEmbedder  # noqa: E402
from skyloc.onboard.replay import replay  # noqa: E402
from skyloc.onboard.telemetry import load_telemetry  # noqa: E402
from skyloc.runtime.localizer import Localizer, LocalizerConfig  # noqa: E402
from skyloc.synth.flight import FlightConfig, render_flight  # noqa: E402
from skyloc.synth.world import generate, write_geotiff  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--frames", type=int, default=100)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--models", default="mlr_convnext_atto,mift_tiny")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        print(f"ONNX Runtime vs PyTorch eager, batch 1, {args.threads} threads, median of {args.frames} (ms)")
        print(f"{'model':>20} {'input':>7} {'pytorch':>9} {'onnxrt':>9} {'ratio':>7}")
        sessions = {}
        for name in args.models.split(","):
            torch.manual_seed(0)
            model = create_model(name, num_classes=100).eval()
            export_onnx(model, tmp / f"{name}.onnx")
            sess = OnnxEmbedder(tmp / f"{name}.onnx", providers=["CPUExecutionProvider"], threads=args.threads)
            sessions[name] = sess
            x = torch.randn(1, *model.data_config.input_size)
            xn = x.numpy()
            with torch.inference_mode():
                pt = median_ms(lambda: model.embed(x), args.frames)
            ort = median_ms(lambda: sess.embed_tensor(xn), args.frames)
            print(f"{name:>20} {model.data_config.height:>7} {pt:>9.2f} {ort:>9.2f} {pt / ort:>6.2f}x")

        name = args.models.split(",")[0]
        emb = sessions[name]
        world = generate(1536, 1.0, seed=5)
        map_path = write_geotiff(world, tmp / "map.tif")
        t0 = time.perf_counter()
        cache_dir = build_cache(map_path, emb, tmp / "map.cache", [170.0], overlap=0.75)
        build_s = time.perf_counter() - t0
        cache = TileCache.load(cache_dir, emb.meta)
        fcfg = FlightConfig(duration_s=args.frames / 10, fps=10, speed=12, altitude=147, pitch=0, width=640, height=480,
                            route="turns", seed=2)
        render_flight(map_path, tmp / "f.mp4", tmp / "f.csv", fcfg)
        tel = load_telemetry(tmp / "f.csv")
        first = tel.at(0.0)
        print(f"\nper-frame latency by stage, {name}, ONNX Runtime CPU, 640x480 frames at 10 fps, {len(cache)} tiles "
              f"(cache built in {build_s:.1f} s = {len(cache) / build_s:.0f} tiles/s)")
        for label, start in (("tracking (--start)", (first.lat, first.lon, 50.0)), ("relocalizing first", None)):
            loc = Localizer.open(emb, cache, config=LocalizerConfig(), start=start)
            res = replay(str(tmp / "f.mp4"), loc, tel)
            by = {"odometry only": [], "with registration": [], "with relocalization": []}
            for r in res.rows:
                e = r.est
                kind = ("with relocalization" if "relocaliz" in (e.source + e.message) and e.latency_ms["registration"] > 1
                        else "with registration" if e.latency_ms["registration"] > 1 else "odometry only")
                by[kind].append(e.latency_ms)
            print(f"  {label}:")
            for kind, rows in by.items():
                if rows:
                    print(f"    {kind:<22} {len(rows):>4} frames: total {statistics.median(r['total'] for r in rows):6.1f} ms"
                          f" (odometry {statistics.median(r['odometry'] for r in rows):5.1f}, "
                          f"registration {statistics.median(r['registration'] for r in rows):6.1f})")


if __name__ == "__main__":
    main()
