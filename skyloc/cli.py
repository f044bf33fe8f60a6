"""The `skyloc` command. Each command imports only what it needs: runtime commands never load torch."""
from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from skyloc.errors import SkylocError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="skyloc: drone localization without GNSS by cross-view retrieval.")
console = Console()

# The same flags on every tool (jetson-inference style).
ModelOpt = typer.Option(..., "--model", "-m", help="Exported model: .onnx or TensorRT .engine")
CacheOpt = typer.Option(..., "--cache", "-c", help="Tile cache directory (skyloc build-cache)")
BackendOpt = typer.Option("auto", "--backend", help="auto | onnxruntime | tensorrt")
LogOpt = typer.Option("info", "--log-level", help="debug | info | warning")
BandsOpt = typer.Option(None, "--bands", help="Map bands to use, from 1: one (grey) or three (R,G,B); default: "
                        "the colour bands, or the only one")
NodataOpt = typer.Option(None, "--nodata", help="Map value that means 'no data' where the file does not say "
                         "(e.g. 255 for a white border)")
CalibrationOpt = typer.Option(None, "--calibration", help="Lens calibration (OpenCV FileStorage, ROS camera_info or "
                              "Kalibr camchain YAML): frames are undistorted first; --hfov is then unused")
StartOpt = typer.Option(None, "--start", help="Prior position LAT,LON[,RADIUS_M] (default radius 50 m): the track "
                        "starts there instead of searching the whole map")


def _logging(level: str) -> None:
    from rich.logging import RichHandler

    logging.basicConfig(level=level.upper(), format="%(message)s", datefmt="%H:%M:%S",
                        handlers=[RichHandler(console=Console(stderr=True), show_path=False)], force=True)


@app.command()
def models() -> None:
    """List the registered networks with parameters and GMACs (compare with the papers)."""
    from skyloc.models import create_model, list_models
    from skyloc.models.profile import profile_model

    table = Table("model", "input", "params (M)", "backbone (M)", "GMACs", "descriptor")
    for name in list_models():
        p = profile_model(create_model(name, num_classes=701))
        table.add_row(name, p["input"], f"{p['params_m']:.2f}", f"{p['backbone_params_m']:.2f}",
                      f"{p['gmacs']:.2f}", str(p["embed_dim"]))
    console.print(table)
    console.print("701 classes (University-1652 train). Papers: ConvNeXt-T ~28M/4.5 GMACs at 224 px; "
                  "CrossFormer-S 30.7M/4.9 GMACs at 224 px.")


@app.command()
def export(
    ckpt: Path = typer.Argument(..., help="Checkpoint from `skyloc train`"),
    out: Path = typer.Option(..., "--out", "-o", help="ONNX file to write"),
    opset: int = typer.Option(17, help="ONNX opset (<= 17 for JetPack 5 / TensorRT 8.5)"),
    model_name: Optional[str] = typer.Option(None, "--model-name", help="Refuse a checkpoint of another model"),
) -> None:
    """Export a checkpoint's `embed` to ONNX with metadata (dynamic batch)."""
    from skyloc.export.onnx_export import export_onnx
    from skyloc.models.checkpoint import load_model

    model, _ = load_model(ckpt, expect_model=model_name)
    meta = export_onnx(model, out, opset=opset)
    console.print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB): {meta.model_name}, "
                  f"input {list(meta.data_config.input_size)}, embedding {meta.embedding_dim}, "
                  f"fingerprint {meta.fingerprint}, opset {opset}")


@app.command()
def verify(
    onnx_path: Path = typer.Argument(..., help="ONNX file from `skyloc export`"),
    ckpt: Path = typer.Argument(..., help="The checkpoint it was exported from"),
    images: Optional[Path] = typer.Option(None, "--images", help="Folder of image files for the user-level check"),
) -> None:
    """Compare ONNX Runtime with PyTorch; exit 1 when over tolerance."""
    from skyloc.export.verify import COSINE_TOL, MAX_ABS_TOL, verify as run_verify
    from skyloc.runtime.preprocess import image_files
    from skyloc.models.checkpoint import load_model

    model, _ = load_model(ckpt)
    files = image_files(images) if images else None
    report = run_verify(onnx_path, model, image_files=files)
    table = Table("check", "max abs error", "min cosine", "ok")
    for r in report.rows:
        table.add_row(r["check"], f"{r['max_abs']:.2e}", f"{r['min_cosine']:.7f}", "yes" if r["ok"] else "NO")
    console.print(table)
    console.print(f"top-{report.topk} rankings identical for {report.ranking_agreement:.0%} of gallery queries "
                  f"(tolerances: max abs <= {MAX_ABS_TOL:g}, cosine >= {COSINE_TOL})")
    if not report.ok:
        console.print("[red]parity check FAILED[/red]")
        raise typer.Exit(1)
    console.print("[green]parity OK[/green]")


@app.command("build-engine")
def build_engine(
    onnx_path: Path = typer.Argument(..., help="ONNX file from `skyloc export`"),
    precision: str = typer.Option("fp16", help="fp32 | fp16 | int8"),
    max_batch: int = typer.Option(8, help="Largest batch of the optimization profile"),
    calib: Optional[Path] = typer.Option(None, help="Folder of calibration images (INT8)"),
    cache_dir: Optional[Path] = typer.Option(None, help="Engine cache folder (default: beside the ONNX)"),
    force: bool = typer.Option(False, help="Rebuild even if a cached engine matches"),
    log_level: str = LogOpt,
) -> None:
    """Build a TensorRT engine on this GPU, cached by TensorRT version + GPU + ONNX hash."""
    from skyloc.runtime.engine import build_engine as build
    from skyloc.runtime.preprocess import image_files

    _logging(log_level)
    files = image_files(calib) if calib else None
    path = build(onnx_path, cache_dir=cache_dir, precision=precision, max_batch=max_batch, calib_images=files,
                 force=force)
    console.print(f"engine: {path}")


@app.command()
def quantize(
    onnx_path: Path = typer.Argument(..., help="Float ONNX model from `skyloc export`"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="INT8 model to write (default: MODEL.int8.onnx)"),
    cache: Optional[Path] = typer.Option(None, "--cache", "-c", help="Tile cache of your map, built with this "
                                         "model: calibrates on its map and checks retrieval against it"),
    map_path: Optional[Path] = typer.Option(None, "--map", help="Map to calibrate on (without --cache, or where "
                                            "the cache's map has moved)"),
    footprint: str = typer.Option("170", help="Tile footprints in metres, with --map and no --cache"),
    tiles: int = typer.Option(256, help="Calibration tiles"),
    ops: str = typer.Option("Conv", help="Operator types to quantize (ONNX names), e.g. Conv,MatMul,Gemm"),
    method: str = typer.Option("minmax", help="Calibration ranges: minmax | entropy | percentile"),
    bands: Optional[str] = BandsOpt,
    nodata: Optional[float] = NodataOpt,
    log_level: str = LogOpt,
) -> None:
    """Static INT8 quantization with ONNX Runtime, calibrated on tiles of your map (CPU boards)."""
    from rich.progress import Progress

    from skyloc.runtime.geo import parse_bands
    from skyloc.runtime.quantize import ACCEPT_AGREEMENT, ACCEPT_COSINE, quantize_model

    _logging(log_level)
    out = out or onnx_path.with_name(onnx_path.stem + ".int8.onnx")
    op_types = tuple(o.strip() for o in ops.split(",") if o.strip())
    if not op_types:
        raise SkylocError(f"--ops {ops!r}: name at least one operator type, e.g. Conv")
    with Progress(console=console) as p:
        tasks: dict[str, int] = {}

        def progress(what: str, done: int, total: int) -> None:
            if what not in tasks:
                tasks[what] = p.add_task(what, total=total)
            p.update(tasks[what], completed=done, total=total)

        rep = quantize_model(onnx_path, out, cache=cache, map_path=map_path,
                             footprints_m=_parse_footprints(footprint), bands=parse_bands(bands), nodata=nodata,
                             calibration_tiles=tiles, ops=op_types, method=method, progress=progress)
    console.print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB), fingerprint {rep.int8_fingerprint}, "
                  f"quantized from {rep.float_fingerprint} on {rep.calibration_tiles} tiles")
    same = ("not checked (no --cache)" if rep.same_top1 is None
            else f"same place {rep.same_place:.1%} (same tile {rep.same_top1:.1%}); the float model itself "
                 f"for the views moved by 1 px: {rep.float_nudged_same_place:.1%}")
    console.print(f"check on {rep.check_views} views of the map: cosine to the float model median "
                  f"{rep.cosine_median:.4f}, 5th percentile {rep.cosine_p05:.4f}; retrieval in the cache: {same}")
    if rep.accepts_float_caches:
        console.print(f"[green]it may use caches built with the float model[/green] "
                      f"(same place as often as a 1-px move, or >= {ACCEPT_AGREEMENT:.0%}; median cosine >= "
                      f"{ACCEPT_COSINE})")
    else:
        console.print("[yellow]it refuses caches of the float model[/yellow]: build its own with "
                      f"`skyloc build-cache MAP -m {out} -o AREA.cache`"
                      + ("" if cache else ", or quantize with --cache to check the float model's"))


def _parse_footprints(text: str) -> list[float]:
    try:
        vals = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise SkylocError(f"--footprint {text!r}: give metres, comma-separated (e.g. 150,250)") from None
    if not vals or min(vals) <= 0:
        raise SkylocError(f"--footprint {text!r}: give positive metres")
    return vals


@app.command("synth-map")
def synth_map(
    out: Path = typer.Argument(..., help="GeoTIFF to write"),
    size: int = typer.Option(2048, help="pixels per side"),
    gsd: float = typer.Option(1.0, help="metres per pixel"),
    seed: int = typer.Option(0, help="layout seed"),
    season: str = typer.Option("summer", help="summer | autumn (same layout, other colours)"),
    lat: float = typer.Option(47.4, help="centre latitude"),
    lon: float = typer.Option(8.5, help="centre longitude"),
    bands: int = typer.Option(3, "--bands", help="3 (RGB) or 1 (grey, like a panchromatic orthophoto)"),
    border: float = typer.Option(0.0, help="share of the extent painted as an undeclared constant border (0..0.8)"),
    border_value: int = typer.Option(255, help="the border's value (255: white)"),
) -> None:
    """Write a procedural georeferenced orthophoto (roads, buildings, fields, trees, water)."""
    from skyloc.synth.world import generate, write_geotiff

    if not 0 <= border <= 0.8:
        raise SkylocError(f"--border {border}: give a share of the extent from 0 to 0.8")
    path = write_geotiff(generate(size, gsd, seed, season, lat, lon), out, bands=bands, border=border,
                         border_value=border_value, seed=seed)
    console.print(f"wrote {path}: {size}x{size} px, {size * gsd / 1000:.2f} km, {gsd} m/px, seed {seed}, {season}, "
                  f"{'grey' if bands == 1 else 'RGB'}" + (f", {border:.0%} border of {border_value}" if border else ""))


@app.command("synth-flight")
def synth_flight(
    map_path: Path = typer.Argument(..., help="GeoTIFF to fly over"),
    video: Path = typer.Argument(..., help="MP4 to write"),
    telemetry: Path = typer.Option(..., "--telemetry", help="CSV to write (time, lat, lon, alt, yaw)"),
    duration: float = typer.Option(60.0, help="seconds"),
    fps: float = typer.Option(2.0),
    altitude: float = typer.Option(150.0, help="metres above ground"),
    speed: float = typer.Option(12.0, help="m/s"),
    pitch: float = typer.Option(5.0, help="camera tilt forward from nadir (deg)"),
    hfov: float = typer.Option(60.0),
    size: int = typer.Option(320, help="frame pixels per side (square frames)"),
    width: Optional[int] = typer.Option(None, help="frame width in pixels (with --height; overrides --size)"),
    height: Optional[int] = typer.Option(None, help="frame height in pixels"),
    route: str = typer.Option("wander", help="wander (random walk) | turns (straight legs and turns)"),
    turn: float = typer.Option(120.0, help="turns: the first turn (deg)"),
    exposure: float = typer.Option(0.0, help="0: random look per frame; >0: a camera's drifting, jumping exposure"),
    exposure_time: float = typer.Option(0.0, help="s: motion blur along the flight (e.g. 0.02)"),
    shake: float = typer.Option(0.0, help="share of frames blurred by vibration"),
    seed: int = typer.Option(0),
    lens: Optional[Path] = typer.Option(None, help="Render through this lens calibration (OpenCV/ROS/Kalibr "
                                        "YAML; scaled to the frame size; --hfov unused)"),
) -> None:
    """Render a flight over a map: a video and its telemetry with ground truth (for replay)."""
    from rich.progress import Progress

    from skyloc.synth.flight import FlightConfig, render_flight

    cfg = FlightConfig(duration_s=duration, fps=fps, speed=speed, altitude=altitude, pitch=pitch, hfov=hfov,
                       width=width or size, height=height or size, seed=seed, route=route, turn_deg=turn,
                       exposure=exposure, exposure_time=exposure_time, shake=shake,
                       lens=str(lens) if lens else None)
    with Progress(console=console, transient=True) as p:
        task = p.add_task("rendering", total=int(round(duration * fps)))
        r = render_flight(map_path, video, telemetry, cfg, progress=lambda n: p.advance(task, n))
    console.print(f"wrote {r['video']} ({r['frames']} frames of {cfg.width}x{cfg.height} at {fps} fps, heading "
                  f"turns {r['yaw_change_deg']:.0f} deg) and {r['telemetry']}; replay with --pitch {pitch} "
                  + (f"--calibration {lens}" if lens else f"--hfov {hfov}"))


@app.command("make-pairs")
def make_pairs_cmd(
    map_path: Path = typer.Argument(..., help="Georeferenced orthophoto (GeoTIFF)"),
    out_dir: Path = typer.Argument(..., help="Folder for the University-1652-style layout"),
    classes: int = typer.Option(200, help="places to sample"),
    views: int = typer.Option(12, help="drone views per place"),
    test_fraction: float = typer.Option(0.3, help="share of places for test/ (disjoint)"),
    altitude: str = typer.Option("120,180", help="min,max drone altitude (m)"),
    yaw_range: float = typer.Option(15.0, help="+- heading error after derotation (deg)"),
    pitch_max: float = typer.Option(15.0, help="largest camera tilt from nadir (deg)"),
    hfov: float = typer.Option(60.0, help="camera horizontal FOV (deg)"),
    seed: int = typer.Option(0),
    bands: Optional[str] = BandsOpt,
    nodata: Optional[float] = NodataOpt,
    drone_from: Optional[list[Path]] = typer.Option(None, "--drone-from", help="Co-registered images of the same "
                                                    "area from other dates: drone views are rendered from these "
                                                    "(cross-date pairs); repeat for several"),
) -> None:
    """Cut satellite tiles and render drone views of the same places, with a locations CSV."""
    from rich.progress import Progress

    from skyloc.runtime.geo import parse_bands
    from skyloc.synth.pairs import PairsConfig, make_pairs

    try:
        lo, hi = (float(v) for v in altitude.split(","))
    except ValueError:
        raise SkylocError(f"--altitude {altitude!r}: give min,max in metres, e.g. 120,180") from None
    cfg = PairsConfig(classes=classes, views=views, test_fraction=test_fraction, altitude=(lo, hi),
                      yaw_range=yaw_range, pitch_max=pitch_max, hfov=hfov, seed=seed, bands=parse_bands(bands),
                      nodata=nodata, drone_from=tuple(str(p) for p in drone_from or ()))
    with Progress(console=console) as p:
        task = p.add_task("places", total=classes)
        s = make_pairs(map_path, out_dir, cfg, progress=lambda n: p.advance(task, n))
    console.print(f"{out_dir}: {s['train']} train + {s['test']} test places ({s['colour']}), up to {s['views']} drone "
                  f"views each, tiles {s['tile_m']:.0f} m; skipped as mostly nodata: {s['skipped_places']} places, "
                  f"{s['skipped_views']} views; locations in {out_dir / 'locations.csv'}")


@app.command()
def train(
    model: Optional[str] = typer.Option(None, "--model", help="Registered model name (skyloc models)"),
    data: Optional[list[Path]] = typer.Option(None, "--data", help="Dataset root (University-1652 / SUES-200 / "
                                              "folder / make-pairs); repeat for several, kept apart and balanced"),
    config: Optional[Path] = typer.Option(None, "--config", help="YAML recipe (configs/)"),
    out: Optional[Path] = typer.Option(None, "--out", help="Run folder (checkpoints, logs)"),
    epochs: Optional[int] = typer.Option(None, help="Override the recipe's epochs"),
    batch_size: Optional[int] = typer.Option(None, help="Classes per batch"),
    aligned: Optional[bool] = typer.Option(None, "--aligned/--not-aligned", help="Turn both views of a pair "
                                           "together (map pairs) or flip each alone (University-1652)"),
    height: Optional[str] = typer.Option(None, help="SUES-200 height"),
    loss: Optional[str] = typer.Option(None, help="triplet | infonce"),
    backbone_weights: Optional[Path] = typer.Option(None, help="Local ImageNet weights (offline)"),
    pretrained: Optional[bool] = typer.Option(None, "--pretrained/--no-pretrained", help="ImageNet weights via timm"),
    max_steps: Optional[int] = typer.Option(None, help="Cap steps per epoch (smoke runs)"),
    workers: Optional[int] = typer.Option(None, help="Data loader workers"),
    resume: bool = typer.Option(True, "--resume/--restart", help="Continue from OUT/last.pt if present"),
) -> None:
    """Train a network (CE per branch + cross-view triplet or InfoNCE). Multi-GPU: torchrun."""
    from skyloc.train.config import TrainConfig
    from skyloc.train.trainer import train as run_train

    overrides = dict(model=model, data=[str(d) for d in data] if data else None, out=str(out) if out else None,
                     epochs=epochs,
                     batch_size=batch_size, aligned=aligned, height=height, loss=loss, pretrained=pretrained,
                     max_steps=max_steps,
                     backbone_weights=str(backbone_weights) if backbone_weights else None, workers=workers)
    if config:
        cfg = TrainConfig.from_yaml(config, **overrides)
    else:
        cfg = TrainConfig.parse({k: v for k, v in overrides.items() if v is not None}, "command line")
    r = run_train(cfg, resume=resume, console=console)
    if r["loss"]:
        console.print(f"checkpoint {r['checkpoint']}: {r['classes']} classes, loss {r['loss'][0]:.3f} -> "
                      f"{r['loss'][-1]:.3f}, {r['seconds']:.0f} s, log {Path(cfg.out) / 'log.csv'}")
    else:
        console.print(f"{r['checkpoint']} already finished all {cfg.epochs} epochs")


@app.command()
def evaluate(
    ckpt: Path = typer.Argument(..., help="Checkpoint"),
    data: list[Path] = typer.Option(..., "--data", help="Dataset root: University-1652 (test/), SUES-200 "
                                    "(Testing/<h>/) or a plain {drone,satellite}/<class>/ folder; repeat to compare "
                                    "test sets side by side (e.g. same-date and cross-date)"),
    height: Optional[str] = typer.Option(None, help="SUES-200 height; 'all' for every height"),
    robustness: bool = typer.Option(False, "--robustness", help="Rotation and shift sweeps"),
    figure: Optional[Path] = typer.Option(None, "--figure", help="Write a top-5 retrieval figure (PNG)"),
    flip: Optional[bool] = typer.Option(None, "--flip/--no-flip", help="Average each descriptor with its mirror's "
                                        "(University-1652 protocol); default: on, except for models trained on "
                                        "aligned pairs, which are evaluated as the runtime embeds frames"),
    device: str = typer.Option("cpu", help="cpu | cuda"),
    as_json: bool = typer.Option(False, "--json", help="Print the results as JSON (for scripts and CI)"),
) -> None:
    """R@1/5/10, R@1%, AP for drone->satellite and satellite->drone, both protocols; with several
    --data, a last table puts the test sets side by side (what a change of season or sensor costs)."""
    import json

    from skyloc.models.checkpoint import load_model
    from skyloc.train.datasets import SUES_HEIGHTS
    from skyloc.train.evaluate import default_flip, evaluate as run_eval, result_tables, retrieval_figure, \
        robustness as run_rob

    model, state = load_model(ckpt)
    flip = default_flip(state) if flip is None else flip
    heights = list(SUES_HEIGHTS) if height == "all" else [height]
    rows = [dict(r, data=str(d), height=h, flip=flip) for d in data for h in heights
            for r in run_eval(model, d, device, flip=flip, height=h)]
    rob = [dict(r, data=str(d)) for d in data for r in run_rob(model, d, device)] if robustness else []
    if as_json:
        print(json.dumps({"checkpoint": str(ckpt), "data": [str(d) for d in data], "results": rows,
                          "robustness": rob}, indent=2))
        return
    for table in result_tables(rows, rob, data):
        console.print(table)
    if figure:
        for i, d in enumerate(data):
            path = figure if i == 0 else figure.with_name(f"{figure.stem}_{d.name}{figure.suffix}")
            console.print(f"figure: {retrieval_figure(model, d, path, device=device)}")


@app.command("build-cache")
def build_cache_cmd(
    map_path: str = typer.Argument(..., help="The area's map: a GeoTIFF/COG/VRT, a GDAL /vsis3/ or /vsicurl/ "
                                   "address, or a mosaic (a folder of GeoTIFFs, or a .txt of paths)"),
    model: Path = ModelOpt,
    out: Path = typer.Option(..., "--out", "-o", help="Cache directory to write (AREA.cache)"),
    footprint: str = typer.Option("170", help="Tile footprints in metres, one per scale band: 120,170,250"),
    overlap: float = typer.Option(0.75, help="Overlap between neighbouring tiles (0..0.95)"),
    batch_size: int = typer.Option(32),
    shard: Optional[str] = typer.Option(None, help="I/N: build only shard I of N (merge with merge-cache)"),
    backend: str = BackendOpt,
    bands: Optional[str] = BandsOpt,
    nodata: Optional[float] = NodataOpt,
    min_valid: float = typer.Option(0.5, help="skip tiles with less than this share of valid map"),
    map_features: bool = typer.Option(True, help="Also store the map's registration features, so that "
                                      "relocalization does not detect them in flight (skyloc map-features)"),
    on_bad: str = typer.Option("refuse", "--on-bad", help="A mosaic member that is missing or cannot be read: "
                               "refuse (stop and name it) or skip (map around it)"),
    ray: Optional[str] = typer.Option(None, "--ray", metavar="ADDRESS", help="Build on a Ray cluster: local "
                                      "(start one here), auto (the one `ray start` joined) or HOST:PORT; "
                                      "needs pip install skyloc\\[scale]"),
    parts: Optional[int] = typer.Option(None, help="with --ray: parts to cut the map into (default: ~4096 "
                                        "tiles each)"),
    index: Optional[bool] = typer.Option(None, "--index/--no-index", help="Also build the approximate index "
                                         "(skyloc index); default: when a band has >= 250k tiles"),
) -> None:
    """Embed every tile of a map into a cache (windowed reads, resumable, shardable, or on Ray)."""
    from skyloc.runtime.geo import parse_bands
    from rich.progress import Progress

    from skyloc.runtime.cache import build_cache, describe_cache, parse_shard
    from skyloc.runtime.embedder import create_embedder

    sh = parse_shard(shard)
    if not 0 <= overlap < 0.95:
        raise SkylocError(f"--overlap {overlap}: use a value from 0 to 0.95")
    if ray is not None:
        from skyloc.ray_build import build_cache_ray

        if sh:
            raise SkylocError("--shard and --ray: Ray cuts the map into parts itself; give one of them")
        with Progress(console=console) as p:
            task = p.add_task("tiles (Ray)", total=None)
            feats = p.add_task("map features", total=None, visible=False)
            path = build_cache_ray(map_path, model, out, _parse_footprints(footprint), overlap, batch_size,
                                   address=ray, backend=backend, bands=parse_bands(bands), nodata=nodata,
                                   min_valid=min_valid, on_bad=on_bad, map_features=map_features, parts=parts,
                                   progress=lambda d, n: p.update(task, completed=d, total=n),
                                   feature_progress=lambda d, n: p.update(feats, completed=d, total=n, visible=True))
        _index_after_build(path, index)
        console.print(describe_cache(path))
        return
    emb = create_embedder(model, backend)
    with Progress(console=console) as p:
        task = p.add_task("tiles", total=None)
        feats = p.add_task("map features", total=None, visible=False)
        path = build_cache(map_path, emb, out, _parse_footprints(footprint), overlap, batch_size, sh,
                           progress=lambda d, n: p.update(task, completed=d, total=n), bands=parse_bands(bands),
                           nodata=nodata, min_valid=min_valid, map_features=map_features,
                           feature_progress=lambda d, n: p.update(feats, completed=d, total=n, visible=True),
                           on_bad=on_bad)
    if (path / "manifest.json").is_file():  # a shard in progress has none yet
        if not sh:  # a shard's index would not survive merge-cache: index the merged cache
            _index_after_build(path, index)
        console.print(describe_cache(path))


def _index_after_build(path: Path, wanted: Optional[bool]) -> None:
    """The index for whole-map search, built with the cache when asked or when a band is large."""
    import numpy as np
    from rich.progress import Progress

    from skyloc.runtime.cache import TileCache
    from skyloc.runtime.index import INDEX_MIN_TILES, build_index

    cache = TileCache.load(path)
    if wanted is None:
        wanted = int(np.bincount(np.asarray(cache.tiles["band"])).max()) >= INDEX_MIN_TILES
    if wanted:
        with Progress(console=console) as p:
            task = p.add_task("index", total=len(cache))
            build_index(cache, progress=lambda d, n: p.update(task, completed=d))


@app.command("map-features")
def map_features_cmd(
    cache: Path = typer.Argument(..., help="Tile cache directory (skyloc build-cache)"),
    map_path: Optional[Path] = typer.Option(None, "--map", help="The cache's map, where it has moved (default: "
                                            "the manifest's)"),
    gsd: Optional[str] = typer.Option(None, help="Working resolutions in m/px, e.g. 0.5,0.71 (default: the "
                                      "map's own, where frames finer than the map are registered; the localizer "
                                      "logs any other it needs)"),
) -> None:
    """Store the map's registration features in a tile cache (done by build-cache unless
    --no-map-features; run this after merge-cache or on an older cache)."""
    import json

    from rich.progress import Progress

    from skyloc.runtime.cache import describe_cache
    from skyloc.runtime.features import build_map_features
    from skyloc.runtime.geo import map_exists, open_map

    mf = cache / "manifest.json"
    if not mf.is_file():
        raise SkylocError(f"{cache} is not a finished tile cache (no manifest.json): build it with skyloc build-cache")
    m = json.loads(mf.read_text())
    src = map_path or Path(m["source_map"])
    if not map_exists(src):
        raise SkylocError(f"map {src} not found: pass the cache's map with --map")
    gmap = open_map(src, gsd=m["gsd_m"], bands=tuple(m["bands"]) if m.get("bands") else None,
                    nodata=m.get("nodata"), on_bad=m.get("on_bad", "refuse"))
    try:
        gsds = [float(v) for v in gsd.split(",") if v.strip()] if gsd else None
    except ValueError:
        raise SkylocError(f"--gsd {gsd!r}: give metres per pixel, comma-separated (e.g. 0.5,0.71)") from None
    if gsds is not None and (not gsds or min(gsds) <= 0):
        raise SkylocError(f"--gsd {gsd!r}: give positive metres per pixel (e.g. 0.5,0.71)")
    with Progress(console=console) as p:
        task = p.add_task("map features", total=None)
        build_map_features(cache, gmap, gsds, progress=lambda d, n: p.update(task, completed=d, total=n))
    console.print(describe_cache(cache))


@app.command("merge-cache")
def merge_cache_cmd(
    shards: list[Path] = typer.Argument(..., help="Shard caches (all N of them)"),
    out: Path = typer.Option(..., "--out", "-o"),
) -> None:
    """Merge shard caches built with --shard I/N into one cache."""
    from skyloc.runtime.cache import merge_caches

    path = merge_caches(shards, out)
    console.print(f"merged {len(shards)} shards into {path}; store the map's features with "
                  f"`skyloc map-features {path}` (and index a large one with `skyloc index {path}`)")


@app.command("index")
def index_cmd(
    cache: Path = typer.Argument(..., help="Tile cache directory (skyloc build-cache)"),
    nlist: Optional[int] = typer.Option(None, help="Inverted lists (default about 4 sqrt(tiles), at most 4096)"),
    pq: Optional[int] = typer.Option(None, help="PQ sub-quantizers, bytes a tile (default: descriptor size / 8)"),
    nprobe: int = typer.Option(32, help="Lists searched a query (more: better recall, slower)"),
) -> None:
    """Build the cache's approximate index (FAISS IVF-PQ), used for bands of >= 250k tiles."""
    from rich.progress import Progress

    from skyloc.runtime.cache import TileCache, describe_cache
    from skyloc.runtime.index import build_index

    if nlist is not None and nlist < 1 or nprobe < 1:
        raise SkylocError("--nlist and --nprobe must be at least 1")
    tc = TileCache.load(cache)
    with Progress(console=console) as p:
        task = p.add_task("index", total=len(tc))
        build_index(tc, nlist=nlist, pq_m=pq, nprobe=nprobe, progress=lambda d, n: p.update(task, completed=d))
    console.print(describe_cache(cache))


DemOpt = typer.Option(None, "--dem", help="Elevation model GeoTIFF (any CRS): the altitude above home becomes the "
                      "height above the ground under the camera")
HomeElevationOpt = typer.Option(None, help="Elevation of the take-off point in the DEM's datum (default: the DEM "
                                "at --start)")
CompassSigmaOpt = typer.Option(10.0, help="How far off the compass may be before the map measures it (1-sigma, deg)")


def _bias_config(compass_sigma: float):
    from skyloc.runtime.bias import BiasConfig

    if not 0 < compass_sigma <= 180:
        raise SkylocError(f"--compass-sigma {compass_sigma}: give degrees in (0, 180]")
    return BiasConfig(compass_sigma_deg=compass_sigma)


def _open_localizer(model: Path, cache: Path, backend: str, map_path: Optional[Path], hfov: float, pitch: float = 0.0,
                    start: Optional[str] = None, nodata: Optional[float] = None, bands: Optional[str] = None,
                    **config):
    from skyloc.runtime.geo import parse_bands
    from skyloc.runtime.localizer import Localizer, LocalizerConfig, parse_start

    cfg = LocalizerConfig(hfov_deg=hfov, camera_pitch_deg=pitch, **config)
    return Localizer.open(model, cache, map_path, cfg, backend=backend, map_nodata=nodata,
                          map_bands=parse_bands(bands), start=parse_start(start))


@app.command()
def localize(
    image: Path = typer.Argument(..., help="A nadir camera frame"),
    model: Path = ModelOpt,
    cache: Path = CacheOpt,
    yaw: Optional[float] = typer.Option(None, help="Camera heading when the frame was taken (deg from north)"),
    alt: Optional[float] = typer.Option(None, help="Altitude above home (m); above the ground without --dem"),
    hfov: float = typer.Option(60.0, help="Camera horizontal FOV (deg)"),
    pitch: float = typer.Option(0.0, help="Camera tilt forward from nadir (deg)"),
    start: Optional[str] = StartOpt,
    map_path: Optional[Path] = typer.Option(None, "--map", help="The cache's GeoTIFF (default: the manifest's)"),
    nodata: Optional[float] = NodataOpt,
    dem: Optional[Path] = DemOpt,
    home_elevation: Optional[float] = HomeElevationOpt,
    compass_sigma: float = CompassSigmaOpt,
    backend: str = BackendOpt,
    as_json: bool = typer.Option(False, "--json", help="Print the estimate as JSON"),
    calibration: Optional[Path] = CalibrationOpt,
) -> None:
    """One frame -> position: registration around --start, or retrieval + strict registration."""
    import json

    from skyloc.runtime.estimate import StatusConfig
    from skyloc.runtime.preprocess import load_image

    # one frame cannot be confirmed by a second: a strictly verified registration is the evidence
    loc = _open_localizer(model, cache, backend, map_path, hfov, pitch, start, nodata,
                          dem=str(dem) if dem else None, home_elevation_m=home_elevation,
                          bias=_bias_config(compass_sigma), status=StatusConfig(confirmations=1),
                          calibration=str(calibration) if calibration else None)
    est = loc.locate(load_image(image), 0.0, yaw_deg=yaw, altitude_m=alt)
    if as_json:
        console.print_json(json.dumps(est.to_dict(), default=float))
        return
    if est.has_position:
        console.print(f"{est.status}: lat {est.lat:.7f} lon {est.lon:.7f} +- {est.horizontal_accuracy:.1f} m, "
                      f"{'verified registration, ' + str(est.inliers) + ' inliers' if est.registered else est.message}, "
                      f"{est.latency_ms['total']:.0f} ms")
    else:
        console.print(f"no fix: {est.message}")


@app.command()
def replay(
    video: str = typer.Argument(..., help="Video file, a folder of photos/frames (URI), or a ROS bag"),
    model: Optional[Path] = typer.Option(None, "--model", "-m", help="Exported model: .onnx or TensorRT .engine "
                                         "(default: the --config's)"),
    cache: Optional[Path] = typer.Option(None, "--cache", "-c", help="Tile cache directory (default: the --config's)"),
    config: Optional[Path] = typer.Option(None, "--config", help="The daemon YAML you fly with: its camera (FOV, "
                                          "tilt, mount yaw, gimbal, latency), localizer settings, model and cache"),
    telemetry: Optional[Path] = typer.Option(None, help="CSV (time,lat,lon,alt,yaw), DJI .srt, .gpx, or an autopilot "
                                             "log: .tlog, .bin (ArduPilot), .ulg (PX4). A photo folder without one "
                                             "uses each photo's EXIF/XMP pose"),
    out: Path = typer.Option(Path("replay_out"), "--out", "-o", help="Folder for track, report and plots"),
    start: Optional[str] = StartOpt,
    time_offset: float = typer.Option(0.0, help="Seconds added to every frame time before the telemetry is read "
                                      "(camera clock or trigger delay)"),
    video_start: Optional[str] = typer.Option(None, help="UTC start of the video (ISO 8601) when its file has no "
                                              "creation time; needed to line a video up with a log"),
    realtime: bool = typer.Option(False, "--realtime", help="Play the recording at its own pace through the "
                                  "daemon's newest-frame queue: frames the CPU cannot keep up with are dropped as "
                                  "in flight (always on with --mavlink)"),
    mavlink: Optional[str] = typer.Option(None, help="Also stream estimates to this peer (e.g. udpout:127.0.0.1:14550)"),
    outputs: str = typer.Option("gps_input", help="MAVLink outputs, comma-separated"),
    map_path: Optional[Path] = typer.Option(None, "--map", help="The cache's GeoTIFF (default: the manifest's)"),
    nodata: Optional[float] = NodataOpt,
    hfov: Optional[float] = typer.Option(None, help="Camera horizontal FOV (deg); default: the --config's, else the "
                                         "photos' EXIF, else 60"),
    pitch: Optional[float] = typer.Option(None, help="Camera tilt forward from nadir (deg), unless the telemetry has "
                                          "it; default: the --config's, else 0"),
    registration_interval: Optional[float] = typer.Option(None, help="Seconds between map registrations while "
                                                          "tracking (default 0.5)"),
    max_frames: Optional[int] = typer.Option(None, help="Stop after this many frames"),
    dem: Optional[Path] = DemOpt,
    home_elevation: Optional[float] = HomeElevationOpt,
    compass_sigma: Optional[float] = typer.Option(None, help="How far off the compass may be before the map "
                                                  "measures it (1-sigma, deg; default 10)"),
    yaw_offset: float = typer.Option(0.0, help="Degrees added to the recorded yaw: replay with a compass that is off"),
    drop_yaw: bool = typer.Option(False, help="Replay as if the telemetry had no yaw (heading from the map)"),
    backend: Optional[str] = typer.Option(None, "--backend", help="auto | onnxruntime | tensorrt (default: the "
                                          "--config's, else auto)"),
    image_topic: Optional[str] = typer.Option(None, help="ROS bag: the camera topic (Image or CompressedImage; "
                                              "default: the busiest)"),
    fix_topic: Optional[str] = typer.Option(None, help="ROS bag: the NavSatFix topic (truth)"),
    attitude_topic: Optional[str] = typer.Option(None, help="ROS bag: Imu, Odometry or px4_msgs VehicleAttitude"),
    range_topic: Optional[str] = typer.Option(None, help="ROS bag: a downward sensor_msgs/Range"),
    altitude_topic: Optional[str] = typer.Option(None, help="ROS bag: height above home, std_msgs/Float64 "
                                                 "(default: a topic named rel_alt, as MAVROS's)"),
    calibration: Optional[Path] = CalibrationOpt,
) -> None:
    """Run a recorded flight through the daemon's own loop: track (CSV/GeoJSON/KML), errors, calibration, plots.
    VIDEO may be a ROS 1 bag (.bag) or a ROS 2 bag (its folder, .db3 or .mcap): its camera and telemetry."""
    from rich.progress import Progress

    from skyloc.onboard.replay import open_flight, replay as run_replay, report_table
    from skyloc.onboard.telemetry import load_telemetry

    cfg = _replay_config(config, model, cache, video, map_path, nodata, hfov, pitch, registration_interval, dem,
                         home_elevation, compass_sigma, start, backend, calibration)
    tel = load_telemetry(telemetry) if telemetry else None
    from skyloc.onboard.bags import BagTopics

    topics = BagTopics(image_topic, fix_topic, attitude_topic, range_topic, altitude_topic)
    # checks the inputs before the model loads
    flight = open_flight(video, tel, time_offset, _parse_utc(video_start), topics=topics)
    loc = cfg.open_localizer(flight.localizer_config(cfg.localizer_config(), cfg.camera.hfov_deg if hfov or config else None))
    link = None
    if mavlink:
        from skyloc.onboard.mavlink import MavlinkLink

        link = MavlinkLink(mavlink, tuple(o.strip() for o in outputs.split(","))).start()
    try:
        with Progress(console=console) as p:
            task = p.add_task("frames", total=None)
            res = run_replay(flight, loc, out_dir=out, mavlink=link, realtime=realtime or link is not None,
                             progress=lambda r: p.advance(task), max_frames=max_frames, yaw_offset_deg=yaw_offset,
                             drop_yaw=drop_yaw, camera=cfg.camera, max_fps=cfg.max_fps if config else None)
    finally:
        if link:
            link.close()
    console.print(report_table(res.report))
    console.print("wrote " + ", ".join(res.files.values()))


def _replay_config(config, model, cache, video, map_path, nodata, hfov, pitch, registration_interval, dem,
                   home_elevation, compass_sigma, start, backend, calibration=None):
    """The daemon config replay runs with: the user's flight config (or its defaults), with the
    command line's options on top, so a replay runs what would fly."""
    from skyloc.onboard.config import DaemonConfig

    if config is not None:
        cfg = DaemonConfig.load(config)
    else:
        if model is None or cache is None:
            raise SkylocError("replay needs --model and --cache, or --config with the daemon YAML you fly with")
        cfg = DaemonConfig(model=str(model), cache=str(cache), source=video, mavlink=None)
    for name, value in (("model", model), ("cache", cache), ("map", map_path), ("map_nodata", nodata),
                        ("backend", backend)):
        if value is not None:
            setattr(cfg, name, str(value) if isinstance(value, Path) else value)
    for name, value in (("hfov_deg", hfov), ("pitch_deg", pitch),
                        ("calibration", str(calibration) if calibration else None)):
        if value is not None:
            setattr(cfg.camera, name, value)
    ls = cfg.localizer
    for name, value in (("registration_interval_s", registration_interval), ("dem", str(dem) if dem else None),
                        ("home_elevation_m", home_elevation), ("compass_sigma_deg", compass_sigma)):
        if value is not None:
            setattr(ls, name, value)
    if start is not None:
        from skyloc.runtime.localizer import parse_start

        ls.start = parse_start(start)
    if not 0 < ls.compass_sigma_deg <= 180:
        raise SkylocError(f"--compass-sigma {ls.compass_sigma_deg}: give degrees in (0, 180]")
    return cfg


def _parse_utc(text: Optional[str]) -> Optional[float]:
    if not text:
        return None
    from datetime import datetime, timezone

    try:
        t = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise SkylocError(f"--video-start {text!r}: give an ISO 8601 time, e.g. 2024-05-01T10:15:30Z") from None
    return (t if t.tzinfo else t.replace(tzinfo=timezone.utc)).timestamp()


@app.command()
def run(config: Path = typer.Option(..., "--config", help="Daemon YAML (configs/skyloc.example.yaml)")) -> None:
    """The onboard daemon: camera -> estimates -> MAVLink, until SIGTERM."""
    from skyloc.onboard.daemon import run_daemon

    _logging("info")
    raise typer.Exit(run_daemon(config))


@app.command()
def sitl(
    sitl_binary: Optional[Path] = typer.Option(None, "--sitl", envvar="SKYLOC_SITL",
                                               help="ArduCopter SITL binary (build/sitl/bin/arducopter)"),
    config: Optional[Path] = typer.Option(None, "--config", help="Daemon YAML to fly with (its source and link are "
                                          "replaced by the simulator's); default: one made from --model/--cache"),
    model: Optional[Path] = typer.Option(None, "--model", "-m", help="Exported model (without --config)"),
    cache: Optional[Path] = typer.Option(None, "--cache", "-c", help="Tile cache of your map; default: a synthetic "
                                         "world made here"),
    camera_map: Optional[Path] = typer.Option(None, help="What the camera sees (another season/date of the map); "
                                              "default: the cache's map"),
    output: str = typer.Option("odometry", help="odometry (ExternalNav) or gps_input (GPS2_TYPE=14)"),
    altitude: float = typer.Option(110.0, help="Flight height above home (m)"),
    box: float = typer.Option(300.0, help="Side of the square flown (m)"),
    speed: float = typer.Option(8.0, help="Speed along the box (m/s)"),
    camera_cut: float = typer.Option(10.0, help="Seconds of camera cut on the second leg (0: none)"),
    home: Optional[str] = typer.Option(None, help="LAT,LON,ALT_AMSL of home (default: the map's centre, 50 m)"),
    sitl_defaults: Optional[list[Path]] = typer.Option(None, help="SITL parameter files (default: copter.parm of the "
                                                       "binary's ArduPilot tree)"),
    send_heading: bool = typer.Option(False, help="ODOMETRY carries skyloc's heading; EK3_SRC2_YAW=6"),
    gimbal: bool = typer.Option(False, help="The camera on a stabilising gimbal (camera.gimbal), not fixed to the "
                                "airframe"),
    out: Path = typer.Option(Path("sitl_out"), "--out", "-o"),
    calibration: Optional[Path] = CalibrationOpt,
) -> None:
    """A closed loop with ArduPilot SITL: take-off on GPS, switch to skyloc, GPS off, a box, a camera cut, land."""
    from skyloc.onboard.config import DaemonConfig, MavlinkConfig
    from skyloc.onboard.sitl import ARDUPILOT_PARAMS, SitlConfig, autopilot_params, run_sitl
    from skyloc.runtime.geo import GeoMap

    if sitl_binary is None:
        raise SkylocError("no SITL binary: pass --sitl build/sitl/bin/arducopter or set SKYLOC_SITL")
    if output not in ARDUPILOT_PARAMS:
        raise SkylocError(f"--output {output!r}: choose odometry or gps_input")
    _logging("warning")
    out.mkdir(parents=True, exist_ok=True)
    if config is not None:
        cfg = DaemonConfig.load(config)
    else:
        if model is None:
            raise SkylocError("pass --config skyloc.yaml, or --model (and --cache) to fly with")
        dem = None
        if cache is None:
            cache, camera_map, dem = _sitl_world(model, out, altitude)
        cfg = DaemonConfig(model=str(model), cache=str(cache), source="sim://camera", max_fps=10,
                           mavlink=MavlinkConfig(outputs=[output]))
        cfg.localizer.dem = str(dem) if dem else None
    if gimbal:
        cfg.camera.gimbal = True
    if calibration:  # the simulated camera renders through this lens, and the daemon undistorts it
        cfg.camera.calibration = str(calibration)
    mf = Path(cfg.cache) / "manifest.json"
    if not mf.is_file():
        raise SkylocError(f"{cfg.cache} has no manifest.json: not a tile cache (skyloc build-cache)")
    map_path = Path(cfg.map or json.loads(mf.read_text())["source_map"])
    gm = GeoMap(camera_map or map_path)
    map_gsd = GeoMap(map_path).gsd if camera_map else gm.gsd
    left, bottom, right, top = gm.bounds
    if home:
        vals = [float(v) for v in home.split(",")]
        lat0, lon0, alt0 = vals[0], vals[1], vals[2] if len(vals) > 2 else 50.0
    else:
        lat0, lon0 = gm.geodesy.to_latlon((left + right) / 2 - box / 2, (bottom + top) / 2 - box / 2)
        alt0 = 50.0
    scfg = SitlConfig(binary=sitl_binary, out=out, home=(lat0, lon0, alt0, 0.0), output=output, altitude=altitude,
                      box_m=box, speed=speed, camera_cut_s=camera_cut, defaults=list(sitl_defaults or []),
                      send_heading=send_heading, map_gsd_m=map_gsd)
    console.print(f"SITL {sitl_binary}, output {output}, home {lat0:.6f},{lon0:.6f}, box {box:.0f} m at "
                  f"{altitude:.0f} m, {speed:.0f} m/s; parameters set: "
                  + ", ".join(f"{k}={v}" for k, v in autopilot_params(output, send_heading, map_gsd).items()))
    rep = run_sitl(scfg, cfg, camera_map or map_path, progress=console.print)
    console.print_json(json.dumps({k: v for k, v in rep.items() if k != "events"}, default=float))
    console.print(f"wrote {out}/report.json, track.png, errors.png, frames-*.csv; autopilot log in {out}/sitl/logs")


def _sitl_world(model: Path, out: Path, altitude: float):
    """A synthetic world for the SITL loop: the cache's map in summer, the camera's in autumn, and
    its elevation model (flat: with a DEM every fix solves the camera's pose on the map, so an
    autopilot's attitude error does not move it; see the README's SITL section)."""
    import numpy as np

    from skyloc.runtime.cache import build_cache
    from skyloc.runtime.embedder import create_embedder
    from skyloc.synth.world import generate, write_dem, write_geotiff

    world = out / "world"
    summer = world / "map_summer.tif"
    autumn = world / "camera_autumn.tif"
    dem = world / "dem.tif"
    cache = world / "map.cache"
    if not cache.is_dir() or not dem.is_file():
        w = generate(2000, 0.5, seed=21, season="summer", lat=52.2, lon=0.12)
        write_geotiff(w, summer)
        write_geotiff(generate(2000, 0.5, seed=21, season="autumn", lat=52.2, lon=0.12), autumn)
        write_dem(w, np.zeros(w.image.shape[:2], np.float32), dem)
    if not cache.is_dir():
        emb = create_embedder(model, "auto")
        build_cache(summer, emb, cache, [1.15 * altitude], overlap=0.75)
    return cache, autumn, dem


@app.command()
def demo(
    out: Path = typer.Option(Path("demo_out"), "--out", "-o"),
    epochs: int = typer.Option(10, help="Training epochs (CPU)"),
    flight_s: float = typer.Option(60.0, help="Flight length (s)"),
) -> None:
    """Everything end to end on a synthetic world: train, export, verify, cache, fly, replay, MAVLink."""
    from skyloc.demo import run_demo

    _logging("warning")
    run_demo(out, epochs=epochs, flight_s=flight_s, console=console)


def main() -> None:
    """Entry point: user errors print one line, not a traceback."""
    try:
        app()
    except SkylocError as exc:
        Console(stderr=True).print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
