"""INT8 models for CPU boards: static quantization with ONNX Runtime, calibrated on the user's map.

1. Calibration images are tiles of the map the model will fly over, at the cache's footprints,
   preprocessed the one shared way (`skyloc.runtime.preprocess`).
2. ONNX Runtime's pre-processing (shape inference, graph optimisation), then `quantize_static`:
   QOperator format, int8 weights per output channel, uint8 activations, MinMax ranges. Only
   Conv/MatMul/Gemm are quantized by default: the LayerNorm and GELU between a ConvNeXt's convs
   stay float, because quantizing them too made ONNX Runtime's CPU kernels slower and less exact.
3. A check on views of the map that neither model calibrated on (tiles shifted by up to a quarter
   of their side): the cosine between the two models' embeddings, and whether each view retrieves
   the same cache tile with both. Only when they agree does the INT8 model accept the caches of the
   float model (`ModelMeta.accepts_caches_of`); otherwise a cache must be built with the INT8 model.

No torch here: a board without a GPU can quantize its own model.
"""
from __future__ import annotations

import hashlib
import json
import logging
import shutil
import tempfile
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np

from skyloc.errors import SkylocError
from skyloc.runtime.cache import TilingPlan, TileCache, valid_share
from skyloc.runtime.embedder import OnnxEmbedder, embed_images
from skyloc.runtime.geo import GeoMap, open_map
from skyloc.runtime.metadata import ModelMeta, read_onnx_meta
from skyloc.runtime.preprocess import preprocess_batch

log = logging.getLogger("skyloc.quantize")

DEFAULT_OPS = ("Conv",)  # MatMul/Gemm of the head too: cosine 0.98 -> no use of float caches
METHODS = ("minmax", "entropy", "percentile")
# The INT8 model may use the float model's caches when its views retrieve the same place as the
# float model's for this share of views (or as often as the float model does for the same views
# moved by one input pixel, where that is less), and their embeddings' median cosine is at least this.
ACCEPT_AGREEMENT = 0.95
ACCEPT_COSINE = 0.98


@dataclass
class QuantizeReport:
    """What `skyloc quantize` wrote and measured."""

    out: str
    float_fingerprint: str
    int8_fingerprint: str
    calibration_tiles: int
    check_views: int
    cosine_median: float
    cosine_p05: float
    same_top1: float | None  # share of views retrieving the same cache tile (None: no cache given)
    same_place: float | None  # ... a tile of the same band within half a footprint of the float's
    float_nudged_same_place: float | None  # the float model's own agreement with the views moved by 1 px
    accepts_float_caches: bool
    ops: tuple[str, ...]
    method: str

    def to_dict(self) -> dict:
        return asdict(self)


def _onnx_fingerprint(proto) -> str:
    """Like `weights_fingerprint` for a float model: a hash of every initializer of the graph."""
    from onnx import numpy_helper

    h = hashlib.sha256()
    for init in sorted(proto.graph.initializer, key=lambda t: t.name):
        h.update(init.name.encode())
        h.update(numpy_helper.to_array(init).tobytes())
    return h.hexdigest()[:16]


def _views(gmap: GeoMap, tiles: np.ndarray, side_px: int, shifts: np.ndarray | None = None) -> list[np.ndarray]:
    """Map windows at the tiles, each moved by its shift (a share of its side, [N,2])."""
    out = []
    for i, t in enumerate(tiles):
        fp = float(t["footprint_m"])
        dx, dy = (shifts[i] * fp) if shifts is not None else (0.0, 0.0)
        out.append(gmap.read_window(float(t["x"]) + dx, float(t["y"]) + dy, fp, side_px))
    return out


def _same_place(tiles: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    """Share of views whose top tiles `a` and `b` are one place: the same band, and within half a
    footprint (neighbouring tiles overlap, a shifted view sits between them, and the localizer
    verifies candidates by registration: what must agree is the place retrieved)."""
    apart = np.hypot(tiles["x"][a] - tiles["x"][b], tiles["y"][a] - tiles["y"][b])
    return float(np.mean((apart <= 0.5 * tiles["footprint_m"][a]) & (tiles["band"][a] == tiles["band"][b])))


def _calibration_reader(batch: np.ndarray, input_name: str, batch_size: int = 8):
    from onnxruntime.quantization import CalibrationDataReader

    class _Reader(CalibrationDataReader):
        """Feeds the preprocessed calibration tiles to ONNX Runtime's calibrator."""

        def __init__(self):
            self.index = 0

        def get_next(self):
            if self.index >= len(batch):
                return None
            x = batch[self.index : self.index + batch_size]
            self.index += batch_size
            return {input_name: np.ascontiguousarray(x, dtype=np.float32)}

    return _Reader()


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def quantize_model(src: str | Path, out: str | Path, cache: str | Path | None = None,
                   map_path: str | Path | None = None, footprints_m: list[float] | None = None,
                   bands: tuple[int, ...] | None = None, nodata: float | None = None,
                   calibration_tiles: int = 256, check_views: int = 256, ops: tuple[str, ...] = DEFAULT_OPS,
                   method: str = "minmax", seed: int = 0,
                   progress: Callable[[str, int, int], None] | None = None) -> QuantizeReport:
    """Write an INT8 copy of the skyloc ONNX model `src` to `out`, calibrated on the map.

    The map comes from `cache` (its source map, bands, nodata and footprints) or from `map_path`
    with `footprints_m`. With a cache, the check also retrieves against it, and decides whether
    the INT8 model may use caches built with the float model.
    """
    try:
        import onnx
        from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
        from onnxruntime.quantization.shape_inference import quant_pre_process
    except ImportError as exc:
        raise SkylocError(f"skyloc quantize needs the onnx package ({exc.name} missing): "
                          "pip install onnx (or 'skyloc[export]')") from None

    src, out = Path(src), Path(out)
    meta = read_onnx_meta(src)
    if meta.precision != "fp32":
        raise SkylocError(f"{src} is already quantized ({meta.precision}, from model {meta.quantized_from}): "
                          "quantize the float model it came from")
    if method not in METHODS:
        raise SkylocError(f"unknown calibration method {method!r}; use one of {', '.join(METHODS)}")
    if out.resolve() == src.resolve():
        raise SkylocError(f"--out {out} is the float model itself: give another file name")
    present = {n.op_type for n in onnx.load(str(src), load_external_data=False).graph.node}
    unknown = [o for o in ops if o not in present]
    if unknown:
        raise SkylocError(f"{src} has no {', '.join(unknown)} operator to quantize; it has "
                          f"{', '.join(sorted(present))}")
    tile_cache = None
    if cache is not None:
        tile_cache = TileCache.load(cache, meta)  # a cache of another model is refused here
        m = tile_cache.manifest
        gmap = open_map(map_path or m["source_map"], bands=tuple(m["bands"]) if bands is None else bands,
                        nodata=m.get("nodata") if nodata is None else nodata, on_bad=m.get("on_bad", "refuse"))
        tiles = np.asarray(tile_cache.tiles)
    else:
        if map_path is None or not footprints_m:
            raise SkylocError("quantize needs the map to calibrate on: give --cache, or --map with --footprint")
        gmap = open_map(map_path, bands=bands, nodata=nodata)
        tiles = TilingPlan([float(f) for f in footprints_m]).tiles(gmap)
        tiles = tiles[valid_share(gmap, tiles) >= 0.5]
    if len(tiles) < 2:
        raise SkylocError(f"{gmap.path} has {len(tiles)} tile(s) of valid map: too few to calibrate on")
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(tiles))
    n_cal = min(calibration_tiles, max(1, len(tiles) // 2))
    cal_idx, check_idx = order[:n_cal], order[n_cal : n_cal + check_views]
    side_px = max(meta.data_config.height, meta.data_config.width)

    def read(idx: np.ndarray, what: str, shifts: np.ndarray | None = None) -> list[np.ndarray]:
        images: list[np.ndarray] = []
        for i in range(0, len(idx), 32):
            images += _views(gmap, tiles[idx[i : i + 32]], side_px, None if shifts is None else shifts[i : i + 32])
            if progress:
                progress(what, len(images), len(idx))
        return images

    calib = preprocess_batch(read(cal_idx, "calibration tiles"), meta.data_config)
    shifts = rng.uniform(-0.25, 0.25, (len(check_idx), 2))
    checks = read(check_idx, "check views", shifts)
    # the same views moved by one pixel of the model's input: how much the float model's own
    # answer changes for a difference that means nothing
    nudged = read(check_idx, "check views, moved 1 px", shifts + 1.0 / side_px)
    gmap.close()

    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="skyloc-quantize-", dir=out.parent) as tmp:
        pre, q = Path(tmp) / "pre.onnx", Path(tmp) / "int8.onnx"
        log.info("calibrating %s on %d tiles of %s (%s ranges, %s)", src.name, len(calib), gmap.path.name,
                 method, "/".join(ops))
        try:
            quant_pre_process(str(src), str(pre))
            quantize_static(
                str(pre), str(q), _calibration_reader(calib, "image"), quant_format=QuantFormat.QOperator,
                op_types_to_quantize=list(ops), per_channel=True, activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                calibrate_method={"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                                  "percentile": CalibrationMethod.Percentile}[method])
        except Exception as exc:  # ONNX Runtime raises many kinds; the first line names the cause
            raise SkylocError(f"ONNX Runtime cannot quantize {src}: {str(exc).strip().splitlines()[0]}") from None
        proto = onnx.load(str(q))
        int8_fp = _onnx_fingerprint(proto)
        int8_meta = replace(meta, fingerprint=int8_fp, precision="int8", quantized_from=meta.fingerprint)
        _stamp(proto, int8_meta, {})
        onnx.save(proto, str(q))
        try:
            int8 = OnnxEmbedder(q, providers=["CPUExecutionProvider"])
        except SkylocError as exc:
            raise SkylocError(f"ONNX Runtime quantized {src} but cannot run the result ({exc}); "
                              "try fewer operator types, e.g. --ops Conv") from None
        flt = OnnxEmbedder(src, providers=["CPUExecutionProvider"])
        e_float, e_int8 = _unit(embed_images(flt, checks)), _unit(embed_images(int8, checks))
        cos = (e_float * e_int8).sum(1)
        same_top1 = same_place = float_nudged = None
        if tile_cache is not None:
            gallery = _unit(np.asarray(tile_cache.embeddings, np.float32))
            top_f, top_q = np.argmax(e_float @ gallery.T, 1), np.argmax(e_int8 @ gallery.T, 1)
            top_n = np.argmax(_unit(embed_images(flt, nudged)) @ gallery.T, 1)
            same_top1 = float(np.mean(top_f == top_q))
            same_place, float_nudged = _same_place(tile_cache.tiles, top_f, top_q), \
                _same_place(tile_cache.tiles, top_f, top_n)
        # INT8 may change the places retrieved no more than a 1-px move changes the float model's
        # (and by at most 1 - ACCEPT_AGREEMENT where the float model is steadier than that)
        accepted = (same_place is not None and same_place >= min(ACCEPT_AGREEMENT, float_nudged)
                    and float(np.median(cos)) >= ACCEPT_COSINE)
        report = QuantizeReport(
            out=str(out), float_fingerprint=meta.fingerprint, int8_fingerprint=int8_fp,
            calibration_tiles=len(calib), check_views=len(checks), cosine_median=float(np.median(cos)),
            cosine_p05=float(np.percentile(cos, 5)), same_top1=same_top1, same_place=same_place,
            float_nudged_same_place=float_nudged, accepts_float_caches=accepted,
            ops=tuple(ops), method=method)
        if accepted:
            int8_meta = replace(int8_meta, accepts_caches_of=(meta.fingerprint,))
        _stamp(proto, int8_meta, {"skyloc.int8_check": json.dumps(report.to_dict())})
        onnx.save(proto, str(q))
        del int8
        shutil.move(str(q), str(out))
    return report


def _stamp(proto, meta: ModelMeta, extra: dict[str, str]) -> None:
    del proto.metadata_props[:]
    for key, value in {**meta.to_props(), **extra}.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.producer_name = "skyloc"
