"""Timing helper shared by the benchmarks."""
import statistics
import time


def median_ms(fn, repeat: int) -> float:
    """Median wall time of `fn()` in milliseconds over `repeat` runs, after one warm-up run."""
    fn()
    ts = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts) * 1e3
