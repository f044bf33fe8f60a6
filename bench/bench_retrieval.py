"""Retrieval that transfers: the old recipe against the new one, on imagery neither has seen.

    python bench/bench_retrieval.py [--out bench_out/retrieval] [--recipe configs/cpu_30min.yaml]
                                    [--skip-naip] [--ablation] [--skip-synthetic] [--skip-flight]

1. NAIP (../shared/data/naip, 5 m/px, three dates; skipped when absent). Both recipes train on the
   west 60 % and are evaluated on the east 40 %: satellite tiles of 2015 against drone views
   rendered from 2020 (cross-date) and from 2015 (same date).
   before: configs/cpu_small.yaml on make-pairs of one image (west 2009), as the project did;
   after:  the recipe on cross-date pairs of two dates (2009 tiles with 2015 views and the
           reverse, `make-pairs --drone-from`).
1b. (--ablation, runs last) What each change of the recipe bought: short runs of the recipe with one
   change undone at a time, on section 1's pairs.
2. Synthetic cross-season: train on summer maps, evaluate on an unseen map: summer tiles against
   autumn drone views (cross-season) and summer ones (same season). Neither recipe sees autumn:
   the new one runs with appearance randomisation on (appearance: 1.0), its only way to learn it.
3. The hard synthetic flight (bench_tracking's) without --start: time to the first ok fix with a
   model of each recipe trained on make-pairs of its grey map.
Every figure is printed next to its counterpart, from this one run. Runs are picked up where they
stopped (or re-evaluated when finished) if --out already holds them; use a fresh --out to retrain.
"""
from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
NAIP = ROOT.parent / "shared" / "data" / "naip"

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from skyloc.models.checkpoint import load_model  # noqa: E402
from skyloc.runtime.geo import crop_geotiff  # noqa: E402
from skyloc.synth.pairs import PairsConfig, make_pairs  # noqa: E402
from skyloc.train.config import TrainConfig  # noqa: E402
from skyloc.train.evaluate import default_flip, evaluate  # noqa: E402
from skyloc.train.trainer import train  # noqa: E402

OLD = ROOT / "configs" / "cpu_small.yaml"


def fit(recipe: Path, data: list[Path], out: Path, quiet: bool = False, **over) -> tuple[Path, float]:
    """Train (or pick up a run of the same --out that stopped or finished: its log keeps the time)."""
    cfg = TrainConfig.from_yaml(recipe, data=[str(d) for d in data], out=str(out), **over)
    r = train(cfg, resume=True)
    with open(out / "log.csv") as f:
        seconds = float(list(csv.DictReader(f))[-1]["seconds"])
    if not quiet:
        print(f"    {recipe.name} on {', '.join(d.name for d in data)}: {r['classes']} classes, {cfg.epochs} epochs, "
              f"{seconds / 60:.1f} min")
    return Path(r["checkpoint"]), seconds


def scores(ckpt: Path, data: Path, fixed: bool = True) -> dict:
    """Drone->satellite, full gallery, evaluated as `skyloc evaluate` does by default (flip averaging
    except for models trained on aligned pairs, which meet frames as the runtime embeds them).
    fixed=False: the learned descriptor alone, without fixed branches (the edge layout)."""
    model, state = load_model(ckpt)
    if not fixed:
        model.fixed_branches = list  # this instance only: no fixed branches
    r = next(r for r in evaluate(model, data, flip=default_flip(state))
             if r["task"] == "drone->satellite" and r["protocol"] == "full gallery")
    return {"R@1": r["R@1"], "AP": r["AP"], "chance": 100.0 / r["gallery"], "queries": r["queries"]}


def thumbnail_scores(data: Path) -> dict:
    """A training-free reference: each image's gradient magnitude at 8x8, correlated (R@1 only).
    It keeps the coarse layout (shores, field edges) and drops colour, which is what changes between
    dates; a learned descriptor should beat it."""
    def describe(path: Path) -> np.ndarray:
        g = cv2.resize(cv2.imread(str(path), cv2.IMREAD_GRAYSCALE).astype(np.float32), (64, 64),
                       interpolation=cv2.INTER_AREA)
        d = cv2.resize(np.hypot(cv2.Sobel(g, cv2.CV_32F, 1, 0), cv2.Sobel(g, cv2.CV_32F, 0, 1)), (8, 8),
                       interpolation=cv2.INTER_AREA).ravel()
        d -= d.mean()
        return d / (np.linalg.norm(d) + 1e-6)
    test = data / "test"
    names = sorted(p.name for p in (test / "gallery_satellite").iterdir())
    gallery = np.stack([describe(next((test / "gallery_satellite" / n).iterdir())) for n in names])
    queries = [(q, c.name) for c in sorted((test / "query_drone").iterdir()) for q in sorted(c.iterdir())]
    hits = sum(names[int(np.argmax(gallery @ describe(q)))] == c for q, c in queries)
    return {"R@1": 100.0 * hits / len(queries)}


def table(title: str, rows: dict) -> None:
    print(f"\n  {title}")
    print(f"  {'test set':<34}{'before R@1':>11}{'after R@1':>11}{'before AP':>11}{'after AP':>10}{'chance':>8}")
    for name, (b, a) in rows.items():
        print(f"  {name:<34}{b['R@1']:>10.1f}%{a['R@1']:>10.1f}%{b['AP']:>10.1f}%{a['AP']:>9.1f}%"
              f"{b['chance']:>7.1f}%")


def naip(out: Path, recipe: Path, folder: Path = NAIP) -> None:
    if not (folder / "naip_20150926.tif").is_file():
        print("== 1. NAIP: skipped (../shared/data/naip is absent) ==")
        return
    print("== 1. NAIP, train west 60 %, evaluate east 40 % (5 m/px, 330-420 m) ==")
    alt = (330.0, 420.0)
    d = {y: folder / f"naip_{y}.tif" for y in ("20090818", "20150926", "20200831")}
    west = {y: crop_geotiff(p, out / f"w{y[:4]}.tif", 0.0, 0.6) for y, p in d.items()}
    east = {y: crop_geotiff(p, out / f"e{y[:4]}.tif", 0.6, 1.0) for y, p in d.items()}
    # evaluation: the same places, 2015 tiles, drone views from 2020 (cross-date) or 2015 (same date)
    test = dict(classes=40, views=4, test_fraction=1.0, altitude=alt, seed=7)
    make_pairs(east["20150926"], out / "test_2020", PairsConfig(**test, drone_from=(str(east["20200831"]),)))
    make_pairs(east["20150926"], out / "test_2015", PairsConfig(**test))
    train_cfg = dict(classes=200, views=8, test_fraction=0.0, altitude=alt)
    make_pairs(west["20090818"], out / "one_date", PairsConfig(**train_cfg, seed=1))
    make_pairs(west["20090818"], out / "x2009_2015", PairsConfig(**train_cfg, seed=2, drone_from=(str(west["20150926"]),)))
    make_pairs(west["20150926"], out / "x2015_2009", PairsConfig(**train_cfg, seed=3, drone_from=(str(west["20090818"]),)))
    before, _ = fit(OLD, [out / "one_date"], out / "run_before")
    after, _ = fit(recipe, [out / "x2009_2015", out / "x2015_2009"], out / "run_after")
    table("drone->satellite, full gallery", {
        "cross-date: 2020 views / 2015 tiles": (scores(before, out / "test_2020"), scores(after, out / "test_2020")),
        "same date: 2015 views / 2015 tiles": (scores(before, out / "test_2015"), scores(after, out / "test_2015"))})
    learned = [scores(after, out / t, fixed=False) for t in ("test_2020", "test_2015")]
    print(f"  after, its learned part alone (without the edge layout): cross-date R@1 {learned[0]['R@1']:.1f} % / "
          f"AP {learned[0]['AP']:.1f} %, same date {learned[1]['R@1']:.1f} % / {learned[1]['AP']:.1f} %")
    print(f"  reference without training (8x8 gradient thumbnails, correlation): cross-date R@1 "
          f"{thumbnail_scores(out / 'test_2020')['R@1']:.1f} %, same date {thumbnail_scores(out / 'test_2015')['R@1']:.1f} %")


ABLATION = {  # one change of the recipe undone at a time (what each change bought)
    "the recipe": {},
    "without appearance randomisation": {"appearance": 0.0},
    "without per-image standardisation": {"model_kwargs": {"image_norm": False}},
    "without the layout branch": {"model_kwargs": {"layout_grid": 0}},
    "pairs not turned together": {"aligned": False},
    "SGD, step schedule, + classifier loss": {"optimizer": "sgd", "lr": 0.02, "backbone_lr": 0.01,
                                              "weight_decay": 5e-4, "schedule": "step", "milestones": [6],
                                              "ce_weight": 1.0},
    "grey": {"colour": "grey"},
}


def ablation(out: Path, recipe: Path, epochs: int = 8) -> None:
    """Short runs (the recipe's schedule squeezed into `epochs`) on section 1's pairs and test sets."""
    print(f"\n== 1b. what each change bought: {epochs}-epoch runs, NAIP cross-date pairs ==")
    if not (out / "test_2020").is_dir():
        print("  skipped: section 1 has not made the NAIP pairs in --out")
        return
    print(f"  {'variant':<40}{'cross-date R@1':>15}{'AP':>7}{'same-date R@1':>15}{'AP':>7}{'min':>6}")
    recipe_epochs = TrainConfig.from_yaml(recipe).epochs
    for name, over in ABLATION.items():
        slug = "abl_" + "".join(c if c.isalnum() else "_" for c in name)
        run = out / "run_after" if not over and recipe_epochs == epochs else out / slug  # section 1's run
        ckpt, seconds = fit(recipe, [out / "x2009_2015", out / "x2015_2009"], run, epochs=epochs, quiet=True, **over)
        rows = {name: True, "without the edge layout (same run)": False} if not over else {name: True}
        for label, fixed in rows.items():  # the edge layout is not learned: no run of its own
            x, s = scores(ckpt, out / "test_2020", fixed), scores(ckpt, out / "test_2015", fixed)
            print(f"  {label:<40}{x['R@1']:>14.1f}%{x['AP']:>6.1f}%{s['R@1']:>14.1f}%{s['AP']:>6.1f}%"
                  f"{seconds / 60:>6.1f}", flush=True)


def synthetic(out: Path, recipe: Path) -> None:
    from skyloc.synth.world import generate, write_geotiff

    print("\n== 2. synthetic: train on summer maps, evaluate on an unseen map in autumn ==")
    maps = [write_geotiff(generate(1536, 1.0, seed=s), out / f"summer{s}.tif") for s in (11, 12)]
    test_summer = write_geotiff(generate(1536, 1.0, seed=22, lat=47.45, lon=8.6), out / "test_summer.tif")
    test_autumn = write_geotiff(generate(1536, 1.0, seed=22, season="autumn", lat=47.45, lon=8.6), out / "test_autumn.tif")
    test = dict(classes=60, views=4, test_fraction=1.0, seed=9)
    make_pairs(test_summer, out / "syn_test_autumn", PairsConfig(**test, drone_from=(str(test_autumn),)))
    make_pairs(test_summer, out / "syn_test_summer", PairsConfig(**test))
    roots = []
    for i, m in enumerate(maps):
        make_pairs(m, out / f"syn_train{i}", PairsConfig(classes=160, views=8, test_fraction=0.0, seed=i))
        roots.append(out / f"syn_train{i}")
    before, _ = fit(OLD, roots[:1], out / "syn_before")
    after, _ = fit(recipe, roots, out / "syn_after", appearance=1.0)
    table("drone->satellite, full gallery", {
        "cross-season: autumn views / summer": (scores(before, out / "syn_test_autumn"), scores(after, out / "syn_test_autumn")),
        "same season: summer views / summer": (scores(before, out / "syn_test_summer"), scores(after, out / "syn_test_summer"))})


def flight(out: Path, recipe: Path) -> None:
    from skyloc.export.onnx_export import export_onnx
    from skyloc.onboard.replay import replay
    from skyloc.onboard.telemetry import load_telemetry
    from skyloc.runtime.cache import TileCache, build_cache
    from skyloc.runtime.embedder import OnnxEmbedder
    from skyloc.runtime.localizer import Localizer, LocalizerConfig
    from skyloc.synth.flight import FlightConfig, render_flight
    from skyloc.synth.world import generate, write_geotiff

    print("\n== 3. the hard synthetic flight without --start: time to the first ok fix ==")
    grey = write_geotiff(generate(1800, 0.5, seed=7, lat=52.2, lon=0.12), out / "campus_grey.tif", bands=1,
                         border=0.3, seed=7)
    autumn = write_geotiff(generate(1800, 0.5, seed=7, season="autumn", lat=52.2, lon=0.12), out / "campus_autumn.tif")
    results = {}
    for seed in (3, 8):  # two flights: the first fix depends on where the flight starts
        render_flight(autumn, out / f"flight{seed}.mp4", out / f"flight{seed}.csv",
                      FlightConfig(duration_s=45, fps=30, speed=10, altitude=190, altitude_jitter=5, pitch=0, hfov=60,
                                   width=852, height=480, seed=seed, route="turns", turn_deg=120, exposure=1.0,
                                   exposure_time=0.02, shake=0.03))
    make_pairs(grey, out / "campus_pairs", PairsConfig(altitude=(170.0, 210.0), nodata=255.0))
    for label, rec in (("before", OLD), ("after", recipe)):
        ckpt, _ = fit(rec, [out / "campus_pairs"], out / f"campus_{label}")
        export_onnx(load_model(ckpt)[0], out / f"campus_{label}.onnx")
        emb = OnnxEmbedder(out / f"campus_{label}.onnx")
        cache = TileCache.load(build_cache(grey, emb, out / f"campus_{label}.cache", [220.0], 0.75, nodata=255.0),
                               emb.meta)
        for seed in (3, 8):
            rep = replay(str(out / f"flight{seed}.mp4"), Localizer.open(emb, cache, config=LocalizerConfig(hfov_deg=60)),
                         load_telemetry(out / f"flight{seed}.csv")).report
            results[(label, seed)] = rep
    print(f"  {'flight':<10}{'first ok, before':>18}{'first ok, after':>17}{'ok share before':>17}{'after':>8}")
    for seed in (3, 8):
        b, a = results[("before", seed)], results[("after", seed)]

        def first(r):
            return "never" if r["time_to_first_ok_s"] is None else f"{r['time_to_first_ok_s']:.1f} s"
        print(f"  seed {seed:<5}{first(b):>18}{first(a):>17}{b['availability_ok']:>16.1%}{a['availability_ok']:>9.1%}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("bench_out/retrieval"))
    ap.add_argument("--recipe", type=Path, default=ROOT / "configs" / "cpu_30min.yaml")
    ap.add_argument("--naip", type=Path, default=NAIP, help="folder with naip_2009/2015/2020*.tif")
    ap.add_argument("--skip-naip", action="store_true")
    ap.add_argument("--ablation", action="store_true", help="1b, run last: 8-epoch runs undoing one change each (~30 min)")
    ap.add_argument("--skip-synthetic", action="store_true")
    ap.add_argument("--skip-flight", action="store_true")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if not args.skip_naip:
        naip(args.out, args.recipe, args.naip)
    if not args.skip_synthetic:
        synthetic(args.out, args.recipe)
    if not args.skip_flight:
        flight(args.out, args.recipe)
    if args.ablation:  # last: the longest part, each row printed as it finishes
        ablation(args.out, args.recipe)


if __name__ == "__main__":
    main()
