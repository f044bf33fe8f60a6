"""Build a tile cache on a Ray cluster: the map cut into parts, one embedding actor per GPU (or
per CPU where there are none), parts merged into the cache a single machine would build.

    skyloc build-cache REGION/ -m model.onnx -o region.cache --ray auto

Every part is an ordinary shard cache (`build_cache(shard=(i, n))`) written under
`OUT/parts/`; a finished part is never built again and an interrupted one resumes from its last
batch, so a build whose driver is killed picks up where it stopped when run again. Workers read
the map and the model at the paths the driver gives and write the parts under OUT: on more than
one machine these must be on a shared file system (or the map on object storage, /vsis3/...).
Ray is an optional extra (`pip install "skyloc[scale]"`); the onboard runtime never needs it.
"""
from __future__ import annotations

import json
import logging
import math
import shutil
import socket
from pathlib import Path

from skyloc.errors import SkylocError

log = logging.getLogger("skyloc.ray")

PART_TILES = 4096  # tiles per part: the unit of work, of progress and of what a restart redoes


def connect(address: str):
    """Join the cluster at `address` ("local": start one in this process; "auto": the cluster this
    machine belongs to, from `ray start`; "HOST:PORT" or "ray://HOST:PORT"). One-line errors."""
    try:
        import ray
    except ImportError:
        raise SkylocError('--ray needs Ray: pip install "skyloc[scale]"') from None
    if address not in ("local", "auto"):
        hostport = address.split("://", 1)[-1]
        host, _, port = hostport.rpartition(":")
        if not host or not port.isdigit():
            raise SkylocError(f"--ray {address!r}: give local, auto, HOST:PORT or ray://HOST:PORT")
        try:  # Ray itself retries for a minute before it gives up on a dead address
            socket.create_connection((host, int(port)), timeout=5).close()
        except OSError as exc:
            raise SkylocError(f"Ray cluster at {address} does not answer ({exc.strerror or exc}): start it "
                              "with `ray start --head`, or use --ray local") from None
    if ray.is_initialized():  # this process has joined one already (tests, notebooks)
        return ray
    try:
        ray.init(address=address, log_to_driver=False,
                 logging_level=logging.WARNING, include_dashboard=False)
    except ConnectionError as exc:
        raise SkylocError(f"no Ray cluster at {address}: {str(exc).splitlines()[0]} (start one with "
                          "`ray start --head`, or use --ray local)") from None
    return ray


class _PartBuilder:
    """A Ray actor: one embedder and one open map, building parts one after another."""

    def __init__(self, model: str, backend: str, threads: int, map_args: dict):
        from skyloc.runtime.embedder import create_embedder
        from skyloc.runtime.geo import open_map

        self.embedder = create_embedder(model, backend, threads=threads)
        self.map = open_map(**map_args)

    def build(self, parts_dir: str, i: int, n: int, build_args: dict) -> tuple[int, int]:
        from skyloc.runtime.cache import build_cache

        out = Path(parts_dir) / f"part{i:05d}.cache"
        build_cache(self.map, self.embedder, out, shard=(i, n), map_features=False, **build_args)
        return i, int(json.loads((out / "manifest.json").read_text())["tiles"])


def build_cache_ray(map_path: str, model: str | Path, out: str | Path, footprints_m: list[float],
                    overlap: float = 0.5, batch_size: int = 32, address: str = "local",
                    backend: str = "auto", bands: tuple[int, ...] | None = None, nodata: float | None = None,
                    min_valid: float = 0.5, on_bad: str = "refuse", map_features: bool = True,
                    parts: int | None = None, progress=None, feature_progress=None) -> Path:
    """The cache `build_cache` would write, built by a Ray cluster (see the module's docstring)."""
    from skyloc.runtime.cache import merge_caches, plan_tiles
    from skyloc.runtime.geo import map_exists, open_map

    local = not str(map_path).startswith("/vsi")
    map_path = str(Path(map_path).resolve()) if local else str(map_path)
    if local and not map_exists(map_path):
        raise SkylocError(f"map not found: {map_path}")
    model = str(Path(model).resolve())
    if not Path(model).is_file():
        raise SkylocError(f"model not found: {model} (export one with `skyloc export`)")
    out = Path(out).resolve()
    map_args = {"path": map_path, "bands": bands, "nodata": nodata, "on_bad": on_bad}
    gmap = open_map(**map_args)
    footprints_m = [float(f) for f in footprints_m]
    tiles, _ = plan_tiles(gmap, footprints_m, overlap, min_valid)
    n = parts or max(1, math.ceil(len(tiles) / PART_TILES))
    n = min(n, len(tiles))
    build_args = {"footprints_m": footprints_m, "overlap": overlap, "batch_size": batch_size,
                  "bands": bands, "nodata": nodata, "min_valid": min_valid}
    plan = {"map": map_path, "map_sha256": gmap.sha256, "model": model, "parts": n, "tiles": len(tiles),
            **{k: v for k, v in build_args.items() if k != "batch_size"}, "bands": list(bands) if bands else None}
    parts_dir = out / "parts"
    if (out / "manifest.json").is_file():
        shutil.rmtree(out)  # a finished cache is rebuilt from scratch when asked again, as build_cache does
    plan_file = parts_dir / "plan.json"
    if plan_file.is_file() and json.loads(plan_file.read_text()) != plan:
        log.info("%s was started with other settings; starting over", parts_dir)
        shutil.rmtree(parts_dir)
    parts_dir.mkdir(parents=True, exist_ok=True)
    plan_file.write_text(json.dumps(plan, indent=1))
    sizes = [len(tiles) * (i + 1) // n - len(tiles) * i // n for i in range(n)]
    done = [i for i in range(n) if (parts_dir / f"part{i:05d}.cache" / "manifest.json").is_file()]
    todo = [i for i in range(n) if i not in set(done)]
    finished = sum(sizes[i] for i in done)
    if done:
        log.info("resuming %s: %d of %d parts already built", out, len(done), n)
    if progress:
        progress(finished, len(tiles))
    if todo:
        ray = connect(address)
        from ray.util import ActorPool

        res = ray.cluster_resources()
        gpus, cpus = int(res.get("GPU", 0)), max(1, int(res.get("CPU", 1)))
        workers = min(len(todo), gpus or cpus)
        opts = {"num_gpus": 1, "num_cpus": 1} if gpus else {"num_cpus": 1}
        Actor = ray.remote(**opts)(_PartBuilder)
        # one ORT thread per CPU worker: the workers, not the threads, fill the cores
        actors = [Actor.remote(model, backend, 0 if gpus else 1, map_args) for _ in range(workers)]
        log.info("Ray: %d %s workers for %d parts of %d tiles", workers, "GPU" if gpus else "CPU", len(todo), len(tiles))
        pool = ActorPool(actors)
        try:
            for i, count in pool.map_unordered(lambda a, i: a.build.remote(str(parts_dir), i, n, build_args), todo):
                finished += count
                if progress:
                    progress(finished, len(tiles))
        except ray.exceptions.RayTaskError as exc:
            cause = exc.cause if isinstance(getattr(exc, "cause", None), Exception) else exc
            raise SkylocError(f"a Ray worker failed: {str(cause).splitlines()[0]}") from None
        finally:
            for a in actors:
                ray.kill(a)
    shards = [parts_dir / f"part{i:05d}.cache" for i in range(n)]
    merged = merge_caches(shards, out)
    shutil.rmtree(parts_dir)
    manifest = json.loads((merged / "manifest.json").read_text())
    manifest["built_with"] = f"ray, {n} parts"
    (merged / "manifest.json").write_text(json.dumps(manifest, indent=2))
    if map_features:
        from skyloc.runtime.features import build_map_features

        build_map_features(merged, gmap, progress=feature_progress)
    gmap.close()
    return merged
