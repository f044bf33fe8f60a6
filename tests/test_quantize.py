"""INT8 models (`skyloc quantize`): calibrated on the map, checked against the float model's cache,
run by the localizer; caches of the other precision refused unless shown to match."""
import pytest

from skyloc.errors import ModelMismatchError, SkylocError
from skyloc.runtime.cache import TileCache, build_cache
from skyloc.runtime.embedder import create_embedder
from skyloc.runtime.estimate import OK
from skyloc.runtime.localizer import Localizer, LocalizerConfig
from skyloc.runtime.metadata import read_onnx_meta
from skyloc.runtime.quantize import quantize_model
from tests.conftest import replay_flight


@pytest.fixture(scope="module")
def int8(tmp_path_factory, onnx_model, heldout_cache):
    out = tmp_path_factory.mktemp("int8") / "mlr.int8.onnx"
    return out, quantize_model(onnx_model, out, cache=heldout_cache, calibration_tiles=64, check_views=96)


def test_int8_model_checked_on_the_cache_uses_it_and_finds_the_first_fix(int8, onnx_model, heldout_cache, flight):
    path, report = int8
    meta, float_meta = read_onnx_meta(path), read_onnx_meta(onnx_model)
    assert meta.precision == "int8" and meta.quantized_from == float_meta.fingerprint
    assert meta.fingerprint != float_meta.fingerprint
    # the check's rule: INT8 moves the retrieved places no more than a 1-px shift of the views moves
    # the float model's own (a fixed share failed NAIP's 0.9998-cosine model)
    assert report.cosine_median >= 0.98 and report.same_place >= report.float_nudged_same_place, report
    assert report.accepts_float_caches and meta.accepts_caches_of == (float_meta.fingerprint,)
    emb = create_embedder(path, backend="onnxruntime")  # the daemon's `backend: onnxruntime`
    res = replay_flight(flight, Localizer(emb, TileCache.load(heldout_cache, emb.meta), LocalizerConfig()))
    rep = res.report
    assert rep["ok"] > 0, rep
    first_ok = next(i for i, r in enumerate(res.rows) if r.est.status == OK)
    assert all(r.est.status != OK for r in res.rows[:first_ok])
    assert rep["error_ok"]["max_m"] < 5.0 and rep["ok_within_3x_accuracy"] == 1.0, rep


def test_unchecked_int8_model_refuses_the_float_models_cache(tmp_path, onnx_model, heldout_map, heldout_cache):
    out = tmp_path / "unchecked.onnx"
    report = quantize_model(onnx_model, out, map_path=heldout_map, footprints_m=[138.6], calibration_tiles=32,
                            check_views=16)
    assert report.same_place is None and not report.accepts_float_caches
    meta = read_onnx_meta(out)
    with pytest.raises(ModelMismatchError, match="did not show that their embeddings match") as err:
        TileCache.load(heldout_cache, meta)
    assert "\n" not in str(err.value)


def test_a_cache_of_the_int8_model_is_its_own(int8, onnx_model, heldout_map, tmp_path):
    path, _ = int8
    emb = create_embedder(path, backend="onnxruntime")
    cache = build_cache(heldout_map, emb, tmp_path / "int8.cache", [300], overlap=0.5, map_features=False)
    assert TileCache.load(cache, emb.meta).manifest["model_fingerprint"] == emb.meta.fingerprint
    with pytest.raises(ModelMismatchError, match="rebuild it with this model"):
        TileCache.load(cache, read_onnx_meta(onnx_model))  # the float model never accepts INT8 caches


def test_bad_input_gets_one_line_errors(int8, onnx_model, heldout_cache, tmp_path):
    path, _ = int8
    cases = [
        (dict(src=path, cache=heldout_cache), "already quantized"),
        (dict(src=onnx_model, cache=heldout_cache, ops=("Conv", "Einsum")), "no Einsum operator"),
        (dict(src=onnx_model), "needs the map to calibrate on"),
        (dict(src=onnx_model, out=onnx_model, cache=heldout_cache), "is the float model itself"),
    ]
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(onnx_model.read_bytes()[:5000])
    cases.append((dict(src=corrupt, cache=heldout_cache), "cannot load ONNX model"))
    for kwargs, message in cases:
        kwargs.setdefault("out", tmp_path / "out.onnx")
        with pytest.raises(SkylocError, match=message) as err:
            quantize_model(calibration_tiles=8, check_views=8, **kwargs)
        assert "\n" not in str(err.value)
