"""The `skyloc` command. Each command imports only what it needs: runtime commands never load torch."""
from __future__ import annotations

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
    from skyloc.models.checkpoint import load_model

    model, _ = load_model(ckpt)
    files = sorted(p for p in images.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png")) if images else None
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
    from skyloc.export.tensorrt_build import build_engine as build

    _logging(log_level)
    files = sorted(p for p in calib.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png")) if calib else None
    path = build(onnx_path, cache_dir=cache_dir, precision=precision, max_batch=max_batch, calib_images=files,
                 force=force)
    console.print(f"engine: {path}")


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
