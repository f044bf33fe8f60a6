"""Adapt a model to the area you will fly: training pairs from your own GeoTIFF, then training.

    python examples/train_on_your_orthophoto.py area.tif runs/area --epochs 10
"""
import argparse
from pathlib import Path

from skyloc.synth.pairs import PairsConfig, make_pairs
from skyloc.train.config import TrainConfig
from skyloc.train.trainer import train


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("map", type=Path, help="georeferenced orthophoto (GeoTIFF)")
    ap.add_argument("out", type=Path, help="folder for pairs and the training run")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--classes", type=int, default=160)
    ap.add_argument("--model", default="mlr_convnext_atto", help="mlr_convnext_tiny on a GPU")
    args = ap.parse_args(argv)
    summary = make_pairs(args.map, args.out / "pairs", PairsConfig(classes=args.classes, views=8, test_fraction=0.2))
    print(f"pairs: {summary['train']} training places, {summary['test']} test places")
    cfg = TrainConfig(model=args.model, data=str(args.out / "pairs"), out=str(args.out / "run"), epochs=args.epochs,
                      batch_size=16, k_sat=2, lr=0.02, backbone_lr=0.01, loss="infonce", temperature=0.1,
                      milestones=[max(1, args.epochs * 2 // 3)], workers=0)
    result = train(cfg, resume=False)
    print(f"checkpoint: {result['checkpoint']} (loss {result['loss'][0]:.2f} -> {result['loss'][-1]:.2f})")
    return result["checkpoint"]


if __name__ == "__main__":
    main()
