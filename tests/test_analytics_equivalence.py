"""Compiled kernels and their ``.py_func`` give the same outputs on random multi-channel batches."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from edge_gateway.analytics import detectors as D
from edge_gateway.analytics import ensemble as E
from edge_gateway.analytics import ewma, filters, quantiles, windows
from edge_gateway.analytics.chain import DetectorSettings

SETTINGS = settings(max_examples=40, deadline=None)


@st.composite
def batches(draw, max_n=80):
    n_ch = draw(st.integers(1, 3))
    n = draw(st.integers(0, max_n))
    chan = np.array(draw(st.lists(st.integers(0, n_ch - 1), min_size=n, max_size=n)), dtype=np.int64)
    steps = draw(st.lists(st.sampled_from([0.0, 0.5, 1.0, 1.0, 1.0, 7.0]), min_size=n, max_size=n))
    ts = 1000.0 + np.cumsum(np.array(steps, dtype=np.float64))
    pool = st.one_of(st.floats(-50, 50, allow_nan=False), st.sampled_from([0.0, 1.0, 1.0, np.nan]))
    val = np.array(draw(st.lists(pool, min_size=n, max_size=n)), dtype=np.float64)
    return n_ch, chan, ts, val


def both(fn, make_state_args, *args):
    """Run compiled and pure-python on fresh copies; return both (outputs, states)."""
    results = []
    for f in (fn, fn.py_func):
        a = [x.copy() if isinstance(x, np.ndarray) else x for x in make_state_args()]
        r = f(*args, *a)
        results.append((r, a))
    return results


def check(fn, make, *args):
    (r1, a1), (r2, a2) = both(fn, make, *args)
    assert r1 == r2
    for x, y in zip(a1, a2):
        if isinstance(x, np.ndarray):
            np.testing.assert_allclose(x, y, rtol=1e-12, atol=0, equal_nan=True)


@SETTINGS
@given(batches())
def test_tumbling(b):
    k, chan, ts, val = b
    check(windows.tumbling_update, lambda: [windows.new_state(k), np.zeros((len(chan), 9))], chan, ts, val, 4.0)


@SETTINGS
@given(batches())
def test_hopping(b):
    k, chan, ts, val = b
    check(windows.hopping_update,
          lambda: [windows.new_hopping_state(k, 6.0, 2.0), np.zeros((3 * len(chan), 9))],
          chan, ts, val, 6.0, 2.0)


@SETTINGS
@given(batches())
def test_ewma(b):
    k, chan, ts, val = b
    check(ewma.ewma_zscore, lambda: [ewma.new_state(k), np.zeros(len(chan))], chan, val, 0.1, 3.0)


@SETTINGS
@given(batches())
def test_detectors(b):
    k, chan, ts, val = b
    n = len(chan)
    z = lambda name: lambda: [D.new_state(name, k), np.zeros(n)]  # noqa: E731
    check(D.ewma_score, z("ewma"), chan, val, 0.1, 3.0, 2.0)
    check(D.robust_score, z("robust"), chan, val, 0.05, 3.0, 3.0, 0.01, 2.0)
    check(D.rate_score, z("rate"), chan, ts, val, 0.05, 3.0, 3.0, 2.0)
    check(D.cusum_score, z("cusum"), chan, val, 0.05, 3.0, 3.0, 0.5, 4.0)
    check(D.flat_score, z("flatline"), chan, val, 0.0, 2.0, 0.1)
    check(D.drop_score, z("dropout"), chan, ts, val, 3.0, 0.1, 3.0)
    check(D.range_score, lambda: [np.zeros(n)], chan, val, -10.0, 10.0)


@SETTINGS
@given(batches())
def test_filters(b):
    k, chan, ts, val = b
    n = len(chan)
    check(filters.hampel, lambda: [filters.new_hampel_state(k, 5), np.zeros(n), np.zeros(n, np.bool_)],
          chan, val, 3.0)
    check(filters.lowpass, lambda: [filters.new_lowpass_state(k), np.zeros(n)], chan, val, 0.3)
    check(filters.deadband, lambda: [filters.new_deadband_state(k), np.zeros(n, np.bool_)],
          chan, ts, val, 1.0, 5.0)


@SETTINGS
@given(batches(max_n=120))
def test_quantiles(b):
    k, chan, ts, val = b
    check(quantiles.p2_update, lambda: [quantiles.new_state(k)], chan, val)
    check(quantiles.window_update, lambda: [quantiles.new_window_state(k), np.zeros((len(chan), 5))],
          chan, ts, val, 20.0)
    one = np.zeros_like(chan)  # one channel: past the exact buffer into the P² steps
    check(quantiles.p2_update, lambda: [quantiles.new_state(1)], one, val)
    check(quantiles.window_update, lambda: [quantiles.new_window_state(1), np.zeros((len(chan), 5))],
          one, ts, val, 60.0)


def check_pure(fn, make, *args):
    """Compiled kernel vs the same kernel from the module's pure-Python twin (helpers pure too)."""
    twin = getattr(D.pure_module(), fn.py_func.__name__)
    results = []
    for f in (fn, twin):
        a = [x.copy() if isinstance(x, np.ndarray) else x for x in make()]
        results.append((f(*args, *a), a))
    (r1, a1), (r2, a2) = results
    assert r1 == r2
    for x, y in zip(a1, a2):
        np.testing.assert_allclose(x, y, rtol=1e-12, atol=0, equal_nan=True)


NOVELTY = [
    DetectorSettings(nov_warmup=5.0, nov_season_warmup=3.0, nov_hold=4.0, nov_season_bins=96.0,
                     nov_weights=(1.0, 0.5, 1.0, 0.25, 0.5, 0.75), nov_decay=(0.0, 1e-3, 1e-4, 3e-3, 1e-5, 1e-3)),
    DetectorSettings(nov_warmup=3.0, nov_season_norm=1.0, nov_bin_warmup=1.0, nov_season_bins=96.0,
                     nov_season_warmup=2.0, nov_half=1.0, nov_bypass=1.1),
    DetectorSettings(nov_warmup=4.0, nov_season_warmup=2.0, nov_bin_warmup=1.0, nov_season_bins=96.0,
                     nov_long_mode=1.0, nov_season_mature=10.0, nov_half_season=0.1, nov_half_vol=0.2,
                     nov_season_smooth=0.5, nov_weights=(1.0, 0.0, 0.0, 0.3, 0.5, 0.5)),
    DetectorSettings(nov_warmup=4.0, nov_season_warmup=2.0, nov_bin_warmup=1.0, nov_season_bins=96.0,
                     nov_season_floor=1.5, nov_shift_floor=0.5, nov_weights=(1.0, 0.0, 0.5, 0.3, 0.0, 0.5)),
    DetectorSettings(nov_warmup=4.0, nov_season_warmup=2.0, nov_bin_warmup=1.0, nov_season_bins=96.0,
                     nov_vol_season=1.0),
    DetectorSettings(nov_warmup=4.0, nov_season_warmup=2.0, nov_bin_warmup=1.0, nov_season_bins=96.0,
                     nov_vol_season=1.0, nov_value_gate=5.0),
    DetectorSettings(nov_warmup=3.0, nov_value_gate=2.0, nov_long_mode=0.0, nov_season_smooth=0.0,
                     nov_shift_floor=0.0, nov_weights=(1.0, 0.0, 0.0, 0.0, 0.0, 0.0)),  # short, vol for the gate only
]


@SETTINGS
@given(batches(), st.sampled_from(NOVELTY), st.sampled_from([1.0, 3600.0]))
def test_novelty(b, cfg, scale):
    k, chan, ts, val = b
    ts = ts * scale  # also cross day boundaries for the phase bins
    make = lambda: [D.new_state("novelty", k), np.zeros(len(chan))]  # noqa: E731
    check(D.novelty_score, make, chan, ts, val, cfg.params())
    check_pure(D.novelty_score, make, chan, ts, val, cfg.params())


# hypothesis draws subnormal values (5e-324): a spread learnt from them divides into inf, which both paths
# score alike; only the pure one, on NumPy scalars, warns about it
@pytest.mark.filterwarnings("ignore:overflow encountered in scalar divide:RuntimeWarning")
@SETTINGS
@given(batches(), st.sampled_from([0.5, 2.0]), st.sampled_from([0.3, 1.0]), st.sampled_from([0.0, 1.0]),
       st.sampled_from([0.0, 3.0]))
def test_fused_detect(b, glevel, close_after, vol_season, value_gate):
    k, chan, ts, val = b
    n = len(chan)
    if vol_season:
        ts = ts * 600.0  # cross phase bins (and days)
    s = DetectorSettings(range_lo=-20.0, range_hi=20.0, flat_min_run=2.0, nov_warmup=3.0, guard_level=glevel,
                         event_close_after=close_after, weights=(1.0, 0.9, 0.8, 0.7, 1.0, 0.5, 0.6, 0.9),
                         nov_vol_season=vol_season, nov_bin_warmup=1.0 if vol_season else 5.0,
                         nov_value_gate=value_gate)

    def make():
        return [*(D.new_state(name, k) for name in
                  ("ewma", "robust", "rate", "cusum", "flatline", "dropout", "novelty")),
                E.new_event_state(k), np.zeros(n), np.zeros(n, np.int8), np.zeros((max(n, 1), 6))]

    check(E.detect, make, chan, ts, val, s.params(), 0)
    check_pure(E.detect, make, chan, ts, val, s.params(), 0)
    check(E.events_update, lambda: [E.new_event_state(k), np.zeros((n, 6))],
          chan, ts, val, np.abs(np.nan_to_num(val)) / 50.0, np.zeros(n, np.int64), 0.5, 2.0)


def test_numba_disable_jit_takes_the_pure_python_path_with_the_same_messages():
    """Review 15 (analytics) #12: with Numba's own switch, NUMBA_DISABLE_JIT=1, `edge_gateway.pipeline` did not
    import (no ``py_func``) and the detector failed on its branch hint. It now runs as where Numba is missing."""
    import os
    import subprocess
    import sys

    from support import REPO

    code = """if True:
        import hashlib, math, sys
        from edge_gateway import config, messages
        from edge_gateway.analytics import _jit
        from edge_gateway.batcher import Batcher
        from edge_gateway.pipeline import Pipeline
        from edge_gateway.readings import Reading
        cfg = config.loads("gateway: {id: g}\\nwindows: {seconds: 10}\\n"
                           "detector: {params: {weights: [0, 0, 0, 0, 1, 1, 1, 1], nov_warmup: 50}}\\n")
        b = Batcher()
        p = Pipeline(cfg, messages.Topics("c", "g"), b)
        out = []
        for k in range(800):
            b.add(Reading("s", "x", 20.0 + math.sin(k / 9.0) + (30.0 if k == 600 else 0.0), 1000.0 + k, "C"))
            if k % 50 == 49:
                out += [repr(sorted(m.fields.items())) for m in p.process(b.drain(), now=1000.0 + k)]
        print(_jit.HAVE_NUMBA, len(out), hashlib.sha256("\\n".join(out).encode()).hexdigest())
    """
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_DISABLE_JIT"}
    runs = [subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300,
                           env={**env, **extra}) for extra in ({}, {"NUMBA_DISABLE_JIT": "1"})]
    for r in runs:
        assert r.returncode == 0, r.stderr[-2000:]
    (jit, n, digest), (pure, n2, digest2) = (r.stdout.split() for r in runs)
    assert (jit, pure) == ("True", "False") and (n2, digest2) == (n, digest)
    assert n == "80"  # 79 closed windows and the spike at reading 600, closed
