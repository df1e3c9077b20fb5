"""Throughput of the analytics kernels: numba vs pure Python, and Numba compile times.

Prints one JSON object. Numba runs on 64 channels x 100k samples (channel-major
blocks interleaved per 1k samples); pure Python on 4 channels x 5k samples;
rates are per sample per CPU-second on one core, best of 5 (7 for the chain) runs: the VM is
shared, so the best run is the least disturbed one. The Python path is honestly pure: every
kernel *and* every helper it calls comes from the modules' pure twins
(``pure_module()``, ``Chain(pure=True)``), not ``.py_func`` wrappers around
compiled helpers. Compile times come from fresh subprocesses sharing an empty
NUMBA_CACHE_DIR (cold, then cached).

    .venv/bin/python bench/kernels.py
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

from edge_gateway.analytics import detectors as D
from edge_gateway.analytics import filters, quantiles, windows
from edge_gateway.analytics._pure import pure_twin
from edge_gateway.analytics.chain import Chain, DetectorSettings

WARM = ("from edge_gateway.analytics.chain import Chain, ChainSettings;"
        "Chain(ChainSettings(hampel_window=5, lowpass_alpha=0.5)).warm()")


def data(n_ch, per_ch, seed=0):
    rng = np.random.default_rng(seed)
    blk = 1000
    chan = np.repeat(np.tile(np.arange(n_ch), per_ch // blk), blk).astype(np.int64)
    ts = np.empty(chan.size)
    for c in range(n_ch):
        m = chan == c
        ts[m] = 1.4e9 + 60.0 * np.arange(m.sum())
    val = rng.normal(0, 1, chan.size).cumsum() * 0.01 + rng.normal(0, 1, chan.size)
    return chan, ts, val


def rate(fn, n, repeat=3):
    """Samples per CPU-second, best of ``repeat``: CPU time, not wall time, because the VM's host
    steals whole slices of wall time (up to a third of it in some runs)."""
    best = float("inf")
    for _ in range(repeat):
        t0 = time.process_time()
        fn()
        best = min(best, time.process_time() - t0)
    return n / best


def kernels(chan, ts, val, k, py):
    n = chan.size
    out, fl = np.empty(n), np.empty(n, np.bool_)
    agg = np.empty((n, 9))
    qs = np.empty((n, 5))
    if py:  # the same function from the module's pure twin (helpers pure too)
        f = lambda g: getattr(pure_twin(sys.modules[g.py_func.__module__]), g.py_func.__name__)  # noqa: E731
    else:
        f = lambda g: g  # noqa: E731
    st = lambda name: D.new_state(name, k)  # noqa: E731
    p = DetectorSettings().params()
    return {
        "novelty": lambda: f(D.novelty_score)(chan, ts, val, p, st("novelty"), out),
        "ewma": lambda: f(D.ewma_score)(chan, val, 0.02, 30.0, 2.0, st("ewma"), out),
        "robust": lambda: f(D.robust_score)(chan, val, 0.02, 3.0, 30.0, 0.03, 2.0, st("robust"), out),
        "rate": lambda: f(D.rate_score)(chan, ts, val, 0.05, 2.0, 30.0, 4.0, st("rate"), out),
        "cusum": lambda: f(D.cusum_score)(chan, val, 0.01, 3.0, 50.0, 0.5, 5.0, st("cusum"), out),
        "flatline": lambda: f(D.flat_score)(chan, val, 0.0, 10.0, 0.01, st("flatline"), out),
        "dropout": lambda: f(D.drop_score)(chan, ts, val, 10.0, 0.05, 3.0, st("dropout"), out),
        "hampel5": lambda: f(filters.hampel)(chan, val, 3.0, filters.new_hampel_state(k, 5), out, fl),
        "lowpass": lambda: f(filters.lowpass)(chan, val, 0.3, filters.new_lowpass_state(k), out),
        "deadband": lambda: f(filters.deadband)(chan, ts, val, 0.5, 300.0, filters.new_deadband_state(k), fl),
        "tumbling": lambda: f(windows.tumbling_update)(chan, ts, val, 600.0, windows.new_state(k), agg),
        "p2_window": lambda: f(quantiles.window_update)(chan, ts, val, 600.0, quantiles.new_window_state(k), qs),
    }


def compile_time(cache_dir):
    env = dict(os.environ, NUMBA_CACHE_DIR=cache_dir)
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", WARM], env=env, check=True)
    return time.perf_counter() - t0


def main() -> int:
    res = {}
    with tempfile.TemporaryDirectory() as d:
        res["compile_cold_s"] = round(compile_time(d), 2)
        res["compile_cached_s"] = round(compile_time(d), 2)
    Chain().warm()
    big = data(64, 100_000)
    small = data(4, 5_000, seed=1)
    for name, fn in kernels(*big, 64, False).items():
        fn()
        res[f"{name}_numba_samples_per_s"] = round(rate(fn, big[0].size, repeat=5))
    for name, fn in kernels(*small, 4, True).items():
        res[f"{name}_python_samples_per_s"] = round(rate(fn, small[0].size, repeat=1))
    res["chain_numba_samples_per_s"] = round(rate(lambda: Chain(capacity=64).process(*big), big[0].size, repeat=7))
    res["chain_python_samples_per_s"] = round(rate(lambda: Chain(capacity=4, pure=True).process(*small),
                                                   small[0].size, repeat=1))
    res["chain_speedup"] = round(res["chain_numba_samples_per_s"] / res["chain_python_samples_per_s"], 1)
    res["numba_batch"] = "64 channels x 100000 samples"
    res["python_batch"] = "4 channels x 5000 samples"
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
