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

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from timing import median_ms  # noqa: E402
from skyloc.export.onnx_export import export_onnx  # noqa: E402
from skyloc.models import create_model  # noqa: E402
from skyloc.runtime.cache import TileCache, build_cache  # noqa: E402
from skyloc.runtime.embedder import OnnxEmbedder  # noqa: E402
from skyloc.runtime.localizer import Localizer, LocalizerConfig  # noqa: E402
from skyloc.synth.render import Camera, render_view  # noqa: E402
from skyloc.synth.world import generate, write_geotiff  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--frames", type=int, default=30)
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
        tr = (world.transform[0], 0.0, world.transform[2], 0.0, world.transform[4], world.transform[5])
        rng = np.random.default_rng(0)
        c = world.image.shape[0] / 2
        frames = []
        for i in range(args.frames):
            x, y = tr[2] + (c + rng.uniform(-400, 400)), tr[5] - (c + rng.uniform(-400, 400))
            yaw = rng.uniform(0, 360)
            frames.append((render_view(world.image, tr, Camera(x, y, 147, yaw, width=640, height=480)), yaw))
        print(f"\nper-frame latency by stage, {name}, ONNX Runtime CPU, 640x480 frames, {len(cache)} tiles "
              f"(cache built in {build_s:.1f} s = {len(cache) / build_s:.0f} tiles/s)")
        for refine, use_filter in ((False, False), (True, False), (True, True)):
            loc = Localizer(emb, cache, LocalizerConfig(refine=refine, use_filter=use_filter))
            stages: dict[str, list[float]] = {}
            for i, (f, yaw) in enumerate(frames):
                est = loc.locate(f, i * 0.5, yaw, 147)
                for k, v in est.latency_ms.items():
                    stages.setdefault(k, []).append(v)
            label = f"refine={'on' if refine else 'off'} filter={'on' if use_filter else 'off'}"
            print(f"  {label:<24} " + "  ".join(f"{k} {statistics.median(v):6.2f}" for k, v in stages.items()))


if __name__ == "__main__":
    main()
