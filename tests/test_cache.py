"""Tile cache: round trip, resume, shards, and refusing the wrong model or damaged files."""
import json
import shutil

import numpy as np
import pytest
import rasterio

from skyloc.errors import ModelMismatchError, SkylocError
from skyloc.runtime.cache import TILE_DTYPE, TileCache, build_cache, merge_caches
from skyloc.runtime.geo import GeoMap
from skyloc.runtime.metadata import ModelMeta


@pytest.fixture(scope="module")
def small_map(tmp_path_factory):
    from skyloc.synth.world import generate, write_geotiff

    return write_geotiff(generate(512, 1.0, seed=7), tmp_path_factory.mktemp("map") / "small.tif")


def test_round_trip(tmp_path, small_map, embedder):
    path = build_cache(small_map, embedder, tmp_path / "a.cache", [200, 300], overlap=0.5)
    cache = TileCache.load(path, embedder.meta)
    m = cache.manifest
    assert m["model_fingerprint"] == embedder.meta.fingerprint and m["embedding_dim"] == embedder.meta.embedding_dim
    assert m["footprints_m"] == [200.0, 300.0] and len(cache) == m["tiles"]
    assert m["crs"].startswith("EPSG:326") and m["gsd_m"] == 1.0 and len(m["source_sha256"]) == 64
    assert isinstance(cache.embeddings, np.memmap) and cache.embeddings.dtype == np.float16
    assert cache.tiles.dtype == TILE_DTYPE and set(np.unique(cache.tiles["band"])) == {0, 1}
    # the stored embedding of a tile is the embedding of that window of the map
    gm = GeoMap(small_map)
    t = cache.tiles[3]
    img = gm.read_window(t["x"], t["y"], float(t["footprint_m"]), embedder.meta.data_config.height)
    from skyloc.runtime.embedder import embed_images

    ref = embed_images(embedder, [img])[0]
    assert np.abs(cache.embeddings[3].astype(np.float32) - ref).max() < 2e-3
    lat, lon = gm.geodesy.to_latlon(t["x"], t["y"])
    assert (t["lat"], t["lon"]) == pytest.approx((lat, lon))


def test_interrupted_build_resumes_to_the_same_cache(tmp_path, small_map, embedder):
    full = TileCache.load(build_cache(small_map, embedder, tmp_path / "full.cache", [150], 0.5, batch_size=4))
    part = build_cache(small_map, embedder, tmp_path / "part.cache", [150], 0.5, batch_size=4, stop_after=8)
    with pytest.raises(SkylocError, match="interrupted build"):
        TileCache.load(part)
    assert json.loads((part / "progress.json").read_text())["done"] == 8
    resumed = TileCache.load(build_cache(small_map, embedder, part, [150], 0.5, batch_size=4))
    np.testing.assert_array_equal(np.asarray(resumed.embeddings), np.asarray(full.embeddings))


def test_shards_merge_into_the_full_cache(tmp_path, small_map, embedder):
    full = TileCache.load(build_cache(small_map, embedder, tmp_path / "full.cache", [150], 0.5))
    shards = [build_cache(small_map, embedder, tmp_path / f"s{i}.cache", [150], 0.5, shard=(i, 3)) for i in range(3)]
    with pytest.raises(SkylocError, match="pass all of them"):
        merge_caches(shards[:2], tmp_path / "bad.cache")
    merged = TileCache.load(merge_caches(shards[::-1], tmp_path / "merged.cache"), embedder.meta)
    np.testing.assert_array_equal(np.asarray(merged.embeddings), np.asarray(full.embeddings))
    np.testing.assert_array_equal(np.asarray(merged.tiles), np.asarray(full.tiles))


def test_cache_of_another_model_is_refused(tmp_path, small_map, embedder):
    path = build_cache(small_map, embedder, tmp_path / "c.cache", [200], 0.0)
    other = ModelMeta("mlr_convnext_atto", embedder.meta.embedding_dim, "0123456789abcdef", embedder.meta.data_config)
    with pytest.raises(ModelMismatchError, match="rebuild it with this model"):
        TileCache.load(path, other)
    wrong_dim = ModelMeta("mift_tiny", 1024, embedder.meta.fingerprint, embedder.meta.data_config)
    with pytest.raises(ModelMismatchError, match="1024-d"):
        TileCache.load(path, wrong_dim)


def test_damaged_caches_give_clear_errors(tmp_path, small_map, embedder):
    path = build_cache(small_map, embedder, tmp_path / "d.cache", [200], 0.0)
    with pytest.raises(SkylocError, match="tile cache not found"):
        TileCache.load(tmp_path / "nope.cache")
    trunc = tmp_path / "trunc.cache"
    shutil.copytree(path, trunc)
    emb = np.load(trunc / "embeddings.npy")
    np.save(trunc / "embeddings.npy", emb[:-2])
    with pytest.raises(SkylocError, match="truncated"):
        TileCache.load(trunc)
    broken = tmp_path / "broken.cache"
    shutil.copytree(path, broken)
    (broken / "embeddings.npy").write_bytes(b"garbage")
    with pytest.raises(SkylocError, match="missing or corrupt"):
        TileCache.load(broken)
    (broken / "manifest.json").write_text("{not json")
    with pytest.raises(SkylocError, match="manifest.json is corrupt"):
        TileCache.load(broken)


def test_maps_without_georeference_or_in_degrees(tmp_path, embedder):
    plain = tmp_path / "plain.tif"
    with rasterio.open(plain, "w", driver="GTiff", width=64, height=64, count=3, dtype="uint8") as dst:
        dst.write(np.zeros((3, 64, 64), np.uint8))
    with pytest.raises(SkylocError, match="no georeference"):
        build_cache(plain, embedder, tmp_path / "x.cache", [50])
    # a map in WGS84 degrees is reprojected to UTM on the fly (windowed WarpedVRT)
    from rasterio.transform import from_origin

    geo = tmp_path / "wgs84.tif"
    with rasterio.open(geo, "w", driver="GTiff", width=400, height=400, count=3, dtype="uint8", crs="EPSG:4326",
                       transform=from_origin(8.5, 47.4, 1e-5, 1e-5)) as dst:
        dst.write(np.random.default_rng(0).integers(0, 255, (3, 400, 400), dtype=np.uint8))
    gm = GeoMap(geo)
    assert gm.crs.to_string() == "EPSG:32632" and gm.gsd == pytest.approx(0.97, abs=0.1)
    cache = TileCache.load(build_cache(geo, embedder, tmp_path / "g.cache", [100], 0.0))
    assert len(cache) > 0 and 47.39 < float(cache.tiles["lat"][0]) < 47.4
