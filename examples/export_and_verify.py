"""Export a checkpoint to ONNX and check ONNX Runtime against PyTorch.

    python examples/export_and_verify.py runs/area/run/last.pt model.onnx
"""
import argparse
import sys
from pathlib import Path

from skyloc.export.onnx_export import export_onnx
from skyloc.export.verify import verify
from skyloc.models.checkpoint import load_model


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("ckpt", type=Path)
    ap.add_argument("onnx", type=Path)
    args = ap.parse_args(argv)
    model, _ = load_model(args.ckpt)
    meta = export_onnx(model, args.onnx)
    report = verify(args.onnx, model)
    for row in report.rows:
        print(f"{row['check']:<32} max abs {row['max_abs']:.1e}  cosine {row['min_cosine']:.7f}")
    print(f"{meta.model_name} fingerprint {meta.fingerprint}: {'parity OK' if report.ok else 'parity FAILED'}")
    return report.ok


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
