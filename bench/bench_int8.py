"""INT8 against float32 on the CPU, side by side in one run (`skyloc quantize`).

    python bench/bench_int8.py [--out bench_out/int8] [--skip-naip] [--skip-flight] [--threads 2]

1. Speed: ms per embedding with ONNX Runtime on `--threads` cores, batch 1 (a camera frame) and
   batch 32 (building a cache), float and INT8 measured in alternating rounds (medians):
   the project's CPU model (mlr_convnext_atto at 128 px, trained on the hard flight's map) and
   the paper's (mlr_convnext_tiny at 256 px, untrained: speed does not depend on the weights),
   each quantized with the default operator set (Conv) and with Conv/MatMul/Gemm.
2. NAIP across dates (../shared/data/naip, skipped when absent): a model trained with
   configs/cpu_small.yaml on one date of the west 60 %, evaluated drone->satellite on the east
   40 % (2015 tiles, views rendered from 2020): R@1/AP of the float ONNX model and of its INT8
   copy, quantized on tiles of the 2015 east map.
3. The hard synthetic flight (bench_tracking's) replayed without --start with the float model and
   with the INT8 model on the float model's cache (accepted by the quantize check) and on a
   cache the INT8 model built itself: time to first fix, ok share, error, ms/frame.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
NAIP = ROOT.parent / "shared" / "data" / "naip"

from skyloc.errors import SkylocError  # noqa: E402
from skyloc.runtime.cache import TileCache, build_cache  # noqa: E402
from skyloc.runtime.embedder import OnnxEmbedder, embed_images  # noqa: E402
from skyloc.runtime.quantize import quantize_model  # noqa: E402


def session(path: Path, threads: int):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def speed(models: dict[str, Path], side: int, threads: int, rounds: int = 5) -> dict[str, dict[str, float]]:
    """Median ms per image, batch 1 and 32, the models taking turns round after round."""
    sessions = {k: session(p, threads) for k, p in models.items()}
    rng = np.random.default_rng(0)
    x1 = rng.normal(size=(1, 3, side, side)).astype(np.float32)
    x32 = rng.normal(size=(32, 3, side, side)).astype(np.float32)
    times = {k: {"b1": [], "b32": []} for k in models}
    for s in sessions.values():
        s.run(None, {"image": x1}), s.run(None, {"image": x32})
    for _ in range(rounds):
        for k, s in sessions.items():
            t0, n = time.perf_counter(), 0
            while time.perf_counter() - t0 < 0.6:
                s.run(None, {"image": x1})
                n += 1
            times[k]["b1"].append((time.perf_counter() - t0) / n * 1e3)
            t0 = time.perf_counter()
            s.run(None, {"image": x32})
            times[k]["b32"].append((time.perf_counter() - t0) / 32 * 1e3)
    return {k: {b: statistics.median(v) for b, v in t.items()} for k, t in times.items()}


def print_speed(title: str, res: dict, base: str = "float32") -> None:
    print(f"\n{title}")
    print(f"  {'model':<28}{'batch 1 ms':>11}{'x':>7}{'batch 32 ms/img':>17}{'x':>7}")
    for k, r in res.items():
        print(f"  {k:<28}{r['b1']:>11.2f}{res[base]['b1'] / r['b1']:>7.2f}{r['b32']:>17.2f}"
              f"{res[base]['b32'] / r['b32']:>7.2f}", flush=True)


def quantize_or_say(src: Path, out: Path, **kw):
    try:
        return quantize_model(src, out, **kw)
    except SkylocError as exc:
        print(f"  {out.name}: {exc}")
        return None


def speed_section(out: Path, campus: Path, campus_cache: Path, threads: int) -> None:
    from skyloc.export.onnx_export import export_onnx
    from skyloc.models import create_model

    print("== 1. ms per embedding, ONNX Runtime CPU ==", flush=True)
    atto = {"float32": campus}
    for ops in (("Conv",), ("Conv", "MatMul", "Gemm")):
        q = out / f"atto_{'_'.join(ops)}.int8.onnx"
        r = quantize_or_say(campus, q, cache=campus_cache, ops=ops)
        if r:
            atto[f"int8 {'/'.join(ops)}"] = q
            print(f"  atto int8 {'/'.join(ops)}: cosine median {r.cosine_median:.4f}, same place "
                  f"{r.same_place:.1%} (float, views moved 1 px: {r.float_nudged_same_place:.1%}), accepts float "
                  f"caches: {r.accepts_float_caches}")
    print_speed(f"mlr_convnext_atto, 128 px (the CPU model), {threads} threads", speed(atto, 128, threads))
    tiny_onnx = out / "mlr_convnext_tiny.onnx"
    if not tiny_onnx.is_file():
        export_onnx(create_model("mlr_convnext_tiny", pretrained=False, num_classes=10), tiny_onnx)
    tiny = {"float32": tiny_onnx}
    grey = campus_cache.parent / "campus_grey.tif"
    for ops in (("Conv",), ("Conv", "MatMul", "Gemm")):
        q = out / f"tiny_{'_'.join(ops)}.int8.onnx"
        r = quantize_or_say(tiny_onnx, q, map_path=grey, footprints_m=[220.0], nodata=255.0, ops=ops,
                            calibration_tiles=64, check_views=32)
        if r:
            tiny[f"int8 {'/'.join(ops)}"] = q
    print_speed(f"mlr_convnext_tiny, 256 px (the paper's size, untrained), {threads} threads",
                speed(tiny, 256, threads))


def naip_section(out: Path) -> None:
    from bench_retrieval import OLD, fit, scores
    from skyloc.export.onnx_export import export_onnx
    from skyloc.models.checkpoint import load_model
    from skyloc.runtime.geo import crop_geotiff
    from skyloc.runtime.preprocess import load_image
    from skyloc.synth.pairs import PairsConfig, make_pairs
    from skyloc.train.datasets import detect_layout, read_view
    from skyloc.train.metrics import retrieval_metrics

    if not (NAIP / "naip_20150926.tif").is_file():
        print("\n== 2. NAIP: skipped (../shared/data/naip is absent) ==")
        return
    print("\n== 2. NAIP across dates: R@1 drone->satellite, full gallery (east 40 %, 2020 views, 2015 tiles) ==",
          flush=True)
    alt = (330.0, 420.0)
    west09 = crop_geotiff(NAIP / "naip_20090818.tif", out / "w2009.tif", 0.0, 0.6)
    east15 = crop_geotiff(NAIP / "naip_20150926.tif", out / "e2015.tif", 0.6, 1.0)
    east20 = crop_geotiff(NAIP / "naip_20200831.tif", out / "e2020.tif", 0.6, 1.0)
    if not (out / "test_2020").is_dir():
        make_pairs(east15, out / "test_2020", PairsConfig(classes=40, views=4, test_fraction=1.0, altitude=alt,
                                                          seed=7, drone_from=(str(east20),)))
    if not (out / "one_date").is_dir():
        make_pairs(west09, out / "one_date", PairsConfig(classes=200, views=8, test_fraction=0.0, altitude=alt,
                                                         seed=1))
    ckpt, _ = fit(OLD, [out / "one_date"], out / "run_naip")
    flt = out / "naip.onnx"
    if not flt.is_file():
        export_onnx(load_model(ckpt)[0], flt)
    emb = OnnxEmbedder(flt)
    cache = out / "e2015.cache"
    if not (cache / "manifest.json").is_file():
        build_cache(east15, emb, cache, [375.0], overlap=0.75, map_features=False)
    q = out / "naip.int8.onnx"
    r = quantize_model(flt, q, cache=cache)
    print(f"  quantize check on the east 2015 cache: cosine median {r.cosine_median:.4f}, same place "
          f"{r.same_place:.1%} (float, views moved 1 px: {r.float_nudged_same_place:.1%}), accepts float caches: "
          f"{r.accepts_float_caches}")
    layout = detect_layout(out / "test_2020")
    qv, gv = read_view(layout.test["query_drone"], "query_drone"), read_view(layout.test["gallery_satellite"],
                                                                             "gallery_satellite")
    rows = {"PyTorch eager, flip-averaged (evaluate)": scores(ckpt, out / "test_2020")}
    for name, path in (("ONNX float32", flt), ("ONNX INT8", q)):
        e = OnnxEmbedder(path, providers=["CPUExecutionProvider"])
        qf = embed_images(e, [load_image(p) for p, _ in qv.items])
        gf = embed_images(e, [load_image(p) for p, _ in gv.items])
        rows[name] = retrieval_metrics(qf, [c for _, c in qv.items], gf, [c for _, c in gv.items])
    print(f"  {'model':<34}{'R@1':>7}{'AP':>7}")
    for name, m in rows.items():
        print(f"  {name:<34}{m['R@1']:>6.1f}%{m['AP']:>6.1f}%")
    print(f"  INT8 - float32: R@1 {rows['ONNX INT8']['R@1'] - rows['ONNX float32']['R@1']:+.1f} points "
          f"(aim: within 2)", flush=True)


def flight_section(out: Path, world: dict) -> None:
    from skyloc.onboard.replay import replay
    from skyloc.onboard.telemetry import load_telemetry
    from skyloc.runtime.localizer import Localizer, LocalizerConfig

    print("\n== 3. The hard synthetic flight without --start ==", flush=True)
    q = out / "campus.int8.onnx"
    r = quantize_model(world["emb"].path, q, cache=world["cache"].path)
    int8 = OnnxEmbedder(q)
    own = out / "campus_int8.cache"
    if not (own / "manifest.json").is_file():
        m = world["cache"].manifest
        build_cache(m["source_map"], int8, own, m["footprints_m"], overlap=m["overlap"], nodata=m["nodata"])
    runs = {"float32": (world["emb"], world["cache"]),
            "INT8, float cache": (int8, TileCache.load(world["cache"].path, int8.meta)) if r.accepts_float_caches
            else None,
            "INT8, its own cache": (int8, TileCache.load(own, int8.meta))}
    print(f"  {'model / cache':<24}{'1st ok s':>9}{'ok':>8}{'err med':>9}{'err max':>9}{'in 3x':>8}"
          f"{'ms/frame':>9}  model")
    for name, pair in runs.items():
        if pair is None:
            print(f"  {name:<24} refused: the quantize check did not accept the float cache")
            continue
        res = replay(str(world["video"]), Localizer(pair[0], pair[1], LocalizerConfig()),
                     load_telemetry(world["csv"]))
        rep = res.report
        first = rep["time_to_first_ok_s"]
        e = rep.get("error_ok", {})
        print(f"  {name:<24}{'never' if first is None else f'{first:.1f}':>9}{rep['availability_ok']:>8.1%}"
              f"{e.get('median_m', float('nan')):>9.2f}{e.get('max_m', float('nan')):>9.2f}"
              f"{rep.get('ok_within_3x_accuracy') or 0:>8.1%}{rep['latency_ms_median']:>9.1f}  {pair[0].meta.precision} "
              f"{pair[0].path.name}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("bench_out/int8"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--skip-naip", action="store_true")
    ap.add_argument("--skip-flight", action="store_true")
    ap.add_argument("--epochs", type=int, default=10, help="training epochs of the hard flight's model")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    from bench_telemetry import hard_world

    print("== the hard synthetic flight's world and model ==", flush=True)
    world = hard_world(args.out, args.epochs)
    speed_section(args.out, world["emb"].path, world["cache"].path, args.threads)
    if not args.skip_naip:
        naip_section(args.out)
    if not args.skip_flight:
        flight_section(args.out, world)


if __name__ == "__main__":
    main()
