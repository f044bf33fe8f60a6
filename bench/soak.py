"""Soak: the onboard daemon for N minutes against a looping 10 Hz synthetic camera and an autopilot
peer, with faults injected on a schedule. Prints memory, frames, errors, ok share, accuracy, what
the autopilot received and how steadily, how each fault was survived, and restarts (must be 0).

    python bench/soak.py [--minutes 30] [--out bench_out/soak] [--outputs gps_input,odometry]

Set-up (built when --model is not given, ~2 min): a synthetic 0.5 m/px world, a one-minute
circular flight (so the looped video is seamless) at 120 m, a small model trained with
configs/cpu_small.yaml, its tile cache. The daemon runs in this process under a supervisor that
restarts it if it ever dies (counted). The peer (skyloc.onboard.peer) behaves as ArduPilot does.

Faults, at fixed shares of the run: the camera gone for 5 s (reads fail, reopening fails), corrupt
frames, an exception inside one frame's localization, the autopilot gone for 10 s, and the
autopilot's telemetry stopping for 10 s (heartbeats continue).
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import os
import socket
import sys
import threading
import time
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from skyloc.onboard.config import DaemonConfig  # noqa: E402
from skyloc.onboard.daemon import Daemon, limit_malloc_arenas  # noqa: E402
from skyloc.onboard.peer import AutopilotPeer, LoopedFlight, PeerProcess  # noqa: E402
from skyloc.onboard.sources import Frame, LoopSource, Source  # noqa: E402
from skyloc.onboard.telemetry import load_telemetry  # noqa: E402
from skyloc.runtime.geo import Geodesy, utm_crs_for  # noqa: E402

ARDUPILOT_GPS_GAP_S = 0.245  # a GPS_INPUT gap beyond this and ArduPilot calls the GPS unhealthy


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    return math.nan


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class FaultyCamera(Source):
    """The looping camera, with faults switched on from outside. Reopening hands out the same
    recording (its timeline keeps running, as the world does while a camera is unplugged)."""

    live = True

    def __init__(self, loop: LoopSource, faults: "Faults"):
        self.loop, self.faults = loop, faults

    def read(self) -> Frame | None:
        if self.faults.camera_gone():
            return None
        f = self.loop.read()
        if self.faults.take_corrupt():
            return Frame(None, f.index, f.timestamp)
        return f


class Faults:
    def __init__(self):
        self._lock = threading.Lock()
        self.camera_until = 0.0
        self.corrupt = 0
        self.raise_next = False
        self.log: list[dict] = []

    def camera_gone(self) -> bool:
        return time.time() < self.camera_until

    def take_corrupt(self) -> bool:
        with self._lock:
            if self.corrupt > 0:
                self.corrupt -= 1
                return True
        return False

    def take_raise(self) -> bool:
        with self._lock:
            r, self.raise_next = self.raise_next, False
        return r


def prepare(out: Path, model: Path | None, minutes: float) -> dict:
    """The world, the looping flight, a model and its cache."""
    from skyloc.runtime.cache import build_cache
    from skyloc.runtime.embedder import OnnxEmbedder
    from skyloc.synth.flight import FlightConfig, render_flight
    from skyloc.synth.world import generate, write_geotiff

    out.mkdir(parents=True, exist_ok=True)
    world = write_geotiff(generate(1024, 0.5, seed=12, lat=46.5, lon=7.0), out / "world.tif")
    fcfg = FlightConfig(duration_s=60, fps=10, speed=9, altitude=120, altitude_jitter=3, pitch=0, width=480, height=320,
                        route="circle", exposure=0.5, exposure_time=0.01, seed=4)
    render_flight(world, out / "loop.mp4", out / "loop.csv", fcfg)
    if model is None:
        from skyloc.export.onnx_export import export_onnx
        from skyloc.models.checkpoint import load_model
        from skyloc.synth.pairs import PairsConfig, make_pairs
        from skyloc.train.config import TrainConfig
        from skyloc.train.trainer import train

        make_pairs(world, out / "pairs", PairsConfig(classes=120, views=8, test_fraction=0.0, altitude=(100.0, 140.0)))
        r = train(TrainConfig.from_yaml(ROOT / "configs" / "cpu_small.yaml", data=str(out / "pairs"),
                                        out=str(out / "run")), resume=False)
        model = out / "model.onnx"
        export_onnx(load_model(r["checkpoint"])[0], model)
    emb = OnnxEmbedder(model)
    cache = build_cache(world, emb, out / "world.cache", [140.0], overlap=0.75)
    return {"world": world, "video": out / "loop.mp4", "telemetry": out / "loop.csv", "model": Path(model),
            "cache": cache}


def _busy(parent: int) -> None:
    """Other work on the companion computer: one core's worth of pure computation, until the soak
    that started it is gone (however it ended)."""
    import os

    x = 0
    while os.getppid() == parent:
        for _ in range(100_000):
            x = (x * 1103515245 + 12345) % 2147483648


def run_soak(minutes: float, out: Path, model: Path | None = None, outputs=("gps_input", "odometry"),
             warmup_s: float | None = None, quiet: bool = False, load: int = 0, peer_in_process: bool = False) -> dict:
    say = (lambda *a: None) if quiet else print
    limit_malloc_arenas()  # as `skyloc run` does before its threads start
    t_setup = time.time()
    files = prepare(out, model, minutes)
    tel = load_telemetry(files["telemetry"])
    port = free_port()
    start = tel.at(0.0)
    cfg_path = out / "skyloc.yaml"
    cfg_path.write_text(yaml.safe_dump({
        "model": str(files["model"]), "cache": str(files["cache"]), "source": f"loop://{files['video']}",
        "max_fps": 10, "camera": {"hfov_deg": 60},
        # where the loop was when the camera started; the daemon's first frame comes seconds later
        # (model load, first inference: 4 s idle, 6-7 s beside --load 2, 9 m/s), hence 150 m
        "localizer": {"start": [start.lat, start.lon, 150.0], "gnss_prior": False},
        "mavlink": {"url": f"udpout:127.0.0.1:{port}", "outputs": list(outputs), "gps_rate_hz": 10,
                    "odometry_rate_hz": 10},
        "log": {"dir": str(out / "logs"), "level": "warning"}, "status_file": str(out / "status.json")}))
    cfg = DaemonConfig.load(cfg_path)
    loop = LoopSource(files["video"])
    faults = Faults()
    peer_box: dict = {}

    # the autopilot's own attitude and altitude for the frame on screen now; the peer runs in a
    # process of its own, as an autopilot does (in this one it would share the daemon's GIL)
    vehicle = LoopedFlight(files["telemetry"], loop.t0, (loop.frames or 1) / loop.fps)
    keep = {"SET_GPS_GLOBAL_ORIGIN", "STATUSTEXT"}
    Peer = (lambda *a, **kw: AutopilotPeer(*a, **kw)) if peer_in_process else PeerProcess
    peer_box["peer"] = Peer(port, vehicle, keep=keep).start()
    import multiprocessing as mp

    workers = [mp.get_context("spawn").Process(target=_busy, args=(os.getpid(),), daemon=True) for _ in range(load)]
    for w in workers:
        w.start()
    duration = minutes * 60.0
    warmup_s = min(60.0, 0.2 * duration) if warmup_s is None else warmup_s
    say(f"set-up {time.time() - t_setup:.0f} s; soaking {minutes:g} min, outputs {', '.join(outputs)}, "
        f"warm-up {warmup_s:.0f} s")

    restarts, errors_total, frames_total = -1, 0, 0
    stop = threading.Event()
    daemons: list[Daemon] = []

    def supervisor():  # what systemd would do: start it, and start it again if it ever dies
        nonlocal restarts
        while not stop.is_set():
            restarts += 1
            d = Daemon(cfg, opener=lambda uri: FaultyCamera(loop, faults))
            real = d.localizer.locate

            def locate(*a, **kw):
                if faults.take_raise():
                    raise RuntimeError("injected fault: an exception inside one frame")
                return real(*a, **kw)

            d.localizer.locate = locate
            daemons.append(d)
            try:
                d.run()
            except Exception as exc:  # a crash: counted, then restarted
                print(f"daemon died: {exc!r}")
            if stop.is_set():
                break

    t0 = time.time()
    rss = [(0.0, rss_mb())]
    sup = threading.Thread(target=supervisor, name="supervisor", daemon=True)
    sup.start()
    schedule = [(0.20, "camera gone 5 s"), (0.35, "5 corrupt frames"), (0.45, "exception in one frame"),
                (0.55, "autopilot gone 10 s"), (0.75, "telemetry stops 10 s")]
    windows: list[tuple[str, float, float]] = []
    pending = list(schedule)
    last_print = 0.0
    while time.time() - t0 < duration:
        now = time.time()
        el = now - t0
        if pending and el >= pending[0][0] * duration:
            _, name = pending.pop(0)
            if name.startswith("camera"):
                faults.camera_until = now + 5.0
                windows.append((name, now, now + 5.0))
            elif name.startswith("5 corrupt"):
                faults.corrupt = 5
                windows.append((name, now, now + 0.6))
            elif name.startswith("exception"):
                faults.raise_next = True
                windows.append((name, now, now + 0.2))
            elif name.startswith("autopilot"):
                peer_box["peer"].stop()
                windows.append((name, now, now + 10.0))
                threading.Timer(10.0, lambda: peer_box.__setitem__(
                    "peer2", Peer(port, vehicle, keep=keep).start())).start()
            elif name.startswith("telemetry"):
                p = peer_box.get("peer2", peer_box["peer"])
                p.telemetry_on = False
                windows.append((name, now, now + 10.0))
                threading.Timer(10.0, lambda p=p: setattr(p, "telemetry_on", True)).start()
        if now - rss[-1][0] - t0 >= 1.0:
            rss.append((el, rss_mb()))
        if not quiet and el - last_print >= 60:
            last_print = el
            d = daemons[-1]
            print(f"  {el / 60:5.1f} min: {d.frames} frames, {d.errors} errors, RSS {rss[-1][1]:.0f} MB, "
                  f"state {d.state}")
        time.sleep(0.1)
    stop.set()
    for w in workers:
        w.terminate()
    sent_at = {k: list(v) for d in daemons if d.link is not None for k, v in d.link.stats.sent_at.items()}
    for d in daemons:
        d.stop_event.set()
    sup.join(timeout=10)
    time.sleep(0.3)
    peers = [peer_box["peer"]] + ([peer_box["peer2"]] if "peer2" in peer_box else [])
    for p in peers:
        if p.conn is not None:
            p.stop()
    loop.close()
    frames_total = sum(d.frames for d in daemons)
    errors_total = sum(d.errors for d in daemons)
    return report(out, t0, duration, warmup_s, rss, windows, peers, files, tel, loop, frames_total, errors_total,
                  restarts, outputs, say, sent_at, load)


def _gaps(peers, kind: str, exclude: list[tuple[float, float]]) -> np.ndarray:
    """Gaps between arrivals of `kind`, leaving out gaps that overlap an excluded window."""
    out = []
    for p in peers:
        t = np.array(p.times.get(kind, []))
        for a, b in zip(t[:-1], t[1:]):
            if not any(a < e1 and b > e0 for e0, e1 in exclude):
                out.append(b - a)
    return np.array(out)


def _stats(g: np.ndarray) -> dict:
    return {"p50": float(np.percentile(g, 50) * 1e3), "p99": float(np.percentile(g, 99) * 1e3),
            "p999": float(np.percentile(g, 99.9) * 1e3), "max": float(g.max() * 1e3),
            "over_150ms": int((g > 0.150).sum()), "over_245ms": int((g > ARDUPILOT_GPS_GAP_S).sum()), "count": int(g.size)}


def report(out, t0, duration, warmup_s, rss, windows, peers, files, tel, loop, frames, errors, restarts, outputs,
           say, sent_at=None, load=0) -> dict:
    rows = []
    for f in sorted((out / "logs").glob("frames-*.csv")):
        rows += list(csv.DictReader(open(f)))
    rows = [r for r in rows if float(r["wall_time"]) >= t0]
    geo = Geodesy(utm_crs_for(tel.at(0).lat, tel.at(0).lon))
    ok = [r for r in rows if r["status"] == "ok"]
    errs, within = [], []
    for r in ok:
        s = tel.at(loop.lap_time(float(r["frame_time"])))  # the truth when the frame was shown
        ex, ey = geo.from_latlon(float(r["lat"]), float(r["lon"]))
        tx, ty = geo.from_latlon(s.lat, s.lon)
        errs.append(math.hypot(ex - tx, ey - ty))
        within.append(errs[-1] <= 3 * float(r["accuracy_m"]))
    peer_gone = [(a, b + 1.0) for n, a, b in windows if n.startswith("autopilot")]
    no_position = [(a, b + 3.0) for n, a, b in windows if n.startswith("camera")]  # prediction ends after 2 s
    res = {"minutes": duration / 60, "load_processes": load, "peer_in_process": isinstance(peers[0], AutopilotPeer), "frames": frames, "errors": errors, "restarts": restarts,
           "ok_share": len(ok) / max(1, len(rows)), "ok_error_median_m": float(np.median(errs)) if errs else None,
           "ok_error_max_m": float(np.max(errs)) if errs else None,
           "ok_within_3x_accuracy": float(np.mean(within)) if within else None}
    r_start = rss[0][1]
    r_warm = next((m for t, m in rss if t >= warmup_s), rss[-1][1])
    r_end = rss[-1][1]
    res.update(rss_start_mb=r_start, rss_warm_mb=r_warm, rss_end_mb=r_end, rss_growth_after_warmup=(r_end - r_warm) / r_warm,
               rss_mb_per_minute=[round(m, 1) for t, m in rss if int(t) % 60 == 0])
    res["messages"] = {}
    for kind in ("HEARTBEAT", "GPS_INPUT", "ODOMETRY", "SET_GPS_GLOBAL_ORIGIN", "STATUSTEXT"):
        n = sum(len(p.times.get(kind, [])) for p in peers)
        rates = [p.rate(kind) for p in peers if p.rate(kind)]
        if n:
            res["messages"][kind] = {"count": n, "rate_hz": float(np.mean(rates)) if rates else None}
    for kind, excl in (("GPS_INPUT", peer_gone), ("ODOMETRY", peer_gone + no_position)):
        g = _gaps(peers, kind, excl)
        if g.size:
            res[f"{kind}_gap_ms"] = _stats(g)
        sent = np.array(sorted((sent_at or {}).get(kind, [])))
        if sent.size > 1:  # the sender's own clock: what the autopilot saw, less the link and the receiver
            d = np.array([b - a for a, b in zip(sent[:-1], sent[1:]) if not any(a < e1 and b > e0 for e0, e1 in excl)])
            if d.size:
                res[f"{kind}_sent_gap_ms"] = _stats(d)
    # each fault: did the daemon keep going, and when was it ok again?
    survived = []
    for name, a, b in windows:
        after = [r for r in rows if float(r["wall_time"]) > b]
        back = next((float(r["wall_time"]) - b for r in after if r["status"] == "ok"), None)
        survived.append({"fault": name, "at_s": round(a - t0, 1), "frames_after": len(after),
                         "ok_again_after_s": None if back is None else round(back, 1)})
    res["faults"] = survived
    (out / "soak.json").write_text(json.dumps(res, indent=2))
    plot(out, t0, rss, rows, peers, windows)
    say(f"\nsoak: {res['minutes']:g} min, {frames} frames, {errors} errors (injected), restarts {restarts}")
    say(f"  RSS start / after warm-up / end: {r_start:.0f} / {r_warm:.0f} / {r_end:.0f} MB "
        f"(growth after warm-up {100 * res['rss_growth_after_warmup']:+.1f} %, goal < 5 %)")
    say(f"  ok share {100 * res['ok_share']:.1f} %, ok error median {res['ok_error_median_m'] or math.nan:.2f} m, "
        f"max {res['ok_error_max_m'] or math.nan:.2f} m, ok within 3x accuracy "
        f"{100 * (res['ok_within_3x_accuracy'] or 0):.1f} %")
    for kind, m in res["messages"].items():
        say(f"  {kind:<22} {m['count']:>7} at the peer" + (f", {m['rate_hz']:.2f} Hz" if m["rate_hz"] else ""))
    for kind in ("GPS_INPUT", "ODOMETRY"):
        g = res.get(f"{kind}_gap_ms")
        if g:
            say(f"  {kind:<22} gaps at the peer p50 / p99 / p99.9 / max {g['p50']:.0f} / {g['p99']:.0f} / "
                f"{g['p999']:.0f} / {g['max']:.0f} ms ({g['over_150ms']} over 150 ms, {g['over_245ms']} over 245 ms; "
                f"the autopilot's own outage left out"
                f"{', and the camera outage: no position to send' if kind == 'ODOMETRY' else ''})")
        g = res.get(f"{kind}_sent_gap_ms")
        if g:
            say(f"  {kind:<22} gaps as sent       {g['p50']:.0f} / {g['p99']:.0f} / {g['p999']:.0f} / {g['max']:.0f} ms")
    for f in survived:
        say(f"  fault at {f['at_s']:>6.1f} s  {f['fault']:<24} {f['frames_after']:>6} frames after, ok again after "
            f"{'-' if f['ok_again_after_s'] is None else str(f['ok_again_after_s']) + ' s'}")
    say(f"  plot: {out / 'soak.png'}")
    return res


def plot(out, t0, rss, rows, peers, windows) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(3, 1, figsize=(10, 7), sharex=True)
    for kind, c in (("GPS_INPUT", "tab:blue"), ("ODOMETRY", "tab:orange")):
        for p in peers:
            t = np.array(p.times.get(kind, []))
            if t.size > 1:
                axes[0].plot((t[1:] - t0) / 60, np.diff(t) * 1e3, ".", ms=2, color=c, label=kind)
    axes[0].axhline(245, color="red", lw=0.8, label="245 ms (ArduPilot GPS health)")
    axes[0].set_yscale("log")
    axes[0].set_ylabel("gap at the peer (ms)")
    handles, labels = axes[0].get_legend_handles_labels()
    uniq = dict(zip(labels, handles))
    axes[0].legend(uniq.values(), uniq.keys(), fontsize=7, loc="upper right")
    axes[1].plot([t / 60 for t, _ in rss], [m for _, m in rss], color="tab:purple")
    axes[1].set_ylabel("RSS (MB)")
    code = {"ok": 2, "low-confidence": 1, "no-fix": 0}
    axes[2].plot([(float(r["wall_time"]) - t0) / 60 for r in rows], [code.get(r["status"], 0) for r in rows],
                 lw=0.6, color="tab:green")
    axes[2].set_yticks([0, 1, 2], ["no-fix", "low", "ok"])
    axes[2].set_xlabel("minutes")
    for ax in axes:
        for name, a, b in windows:
            ax.axvspan((a - t0) / 60, (b - t0) / 60, color="grey", alpha=0.25)
    axes[0].set_title("skyloc soak: cadence at the autopilot, memory, status (grey: injected faults)")
    fig.tight_layout()
    fig.savefig(out / "soak.png", dpi=100)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--out", type=Path, default=Path("bench_out/soak"))
    ap.add_argument("--model", type=Path, default=None, help="an exported model (default: train a small one)")
    ap.add_argument("--outputs", default="gps_input,odometry")
    ap.add_argument("--load", type=int, default=0, help="CPU-bound worker processes beside the daemon for the "
                    "whole run (other work on the companion computer)")
    ap.add_argument("--peer-in-process", action="store_true", help="run the autopilot peer on a thread of this "
                    "process (its receive times then share the daemon's GIL: how the gaps used to be measured)")
    args = ap.parse_args()
    res = run_soak(args.minutes, args.out, args.model, tuple(args.outputs.split(",")), load=args.load,
                   peer_in_process=args.peer_in_process)
    sys.exit(0 if res["restarts"] == 0 else 1)


if __name__ == "__main__":
    main()
