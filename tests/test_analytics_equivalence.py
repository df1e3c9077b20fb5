"""Compiled kernels and their pure-Python twins give bit-identical outputs on random multi-channel batches.

The twins come from :func:`edge_gateway.analytics._pure.pure_twin`: a kernel's ``.py_func`` alone would
still call its module's *compiled* helpers. Batches have timestamps that go back or repeat, NaN values and
extreme finite ones (+-1e300, +-1e308, whose differences overflow), and are compared bit for bit (see
:func:`same`): the two paths run the same IEEE operations in the same order (no fastmath, no FMA
contraction), so they agree to the last bit; only which NaN a NaN is may differ. Timestamps stay within the epoch range the ways in admit
(:data:`edge_gateway.batcher.EPOCH_RANGE_S`): beyond it ``math.floor`` wraps in Numba and not in Python.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from edge_gateway.analytics import detectors as D
from edge_gateway.analytics import ensemble as E
from edge_gateway.analytics import ewma, filters, quantiles, windows
from edge_gateway.analytics._jit import HAVE_NUMBA
from edge_gateway.analytics._pure import pure_twin
from edge_gateway.analytics.chain import Chain, ChainSettings, Detector, DetectorSettings

SETTINGS = settings(max_examples=60, deadline=None)

# overflow of extreme values: both paths compute the same inf/NaN, only NumPy scalars (the pure one) warn
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")

EXTREME = [1e300, -1e300, 1e308, -1e308, 5e-324, -0.0]
VALUES = st.one_of(st.floats(-50, 50, allow_nan=False), st.sampled_from([0.0, 1.0, 1.0, np.nan]),
                   st.sampled_from(EXTREME))


@st.composite
def batches(draw, max_n=80, values=VALUES):
    n_ch = draw(st.integers(1, 3))
    n = draw(st.integers(0, max_n))
    chan = np.array(draw(st.lists(st.integers(0, n_ch - 1), min_size=n, max_size=n)), dtype=np.int64)
    # steps back (a clock corrected, a reading delivered late) and repeated stamps, as well as forward ones
    steps = draw(st.lists(st.sampled_from([0.0, 0.5, 1.0, 1.0, 1.0, 7.0, -0.5, -3.0, -40.0]),
                          min_size=n, max_size=n))
    ts = 1000.0 + np.cumsum(np.array(steps, dtype=np.float64))
    val = np.array(draw(st.lists(values, min_size=n, max_size=n)), dtype=np.float64)
    return n_ch, chan, ts, val


def bits(a):
    a = np.asarray(a)
    return a.view(np.int64) if a.dtype == np.float64 else a


def same(x, y) -> bool:
    """Bit-identical, except that any NaN equals any NaN: arrays of the same shape, NaN at the same places and
    the same bits elsewhere (so 0.0 is not -0.0); tuples of such; or equal scalars.

    A NaN's sign and payload are not part of the result: IEEE 754 leaves unspecified which operand's NaN an
    operation with two NaN operands returns, and compilers swap the operands of ``+`` and ``*`` freely (x86
    returns the first one). NumPy's scalar ``sc + eta * nan2`` and Numba's give ``nan`` with different signs.
    """
    if isinstance(x, tuple):
        return isinstance(y, tuple) and len(x) == len(y) and all(same(a, b) for a, b in zip(x, y))
    if isinstance(x, (np.ndarray, float, np.floating)):
        x, y = np.asarray(x), np.asarray(y)
        if x.shape != y.shape or x.dtype != y.dtype:
            return False
        if x.dtype != np.float64:
            return bool(np.array_equal(x, y))
        nx, ny = np.isnan(x), np.isnan(y)
        return bool(np.array_equal(nx, ny) and np.array_equal(bits(x)[~nx], bits(y)[~ny]))
    return x == y


def twin_of(fn):
    """``fn`` as its module's pure twin has it (every helper it calls plain Python too)."""
    import sys

    return getattr(pure_twin(sys.modules[fn.py_func.__module__]), fn.py_func.__name__)


def check(fn, make, *args):
    """Compiled ``fn`` and its pure twin on fresh copies of ``make()``: same return value, same outputs."""
    results = []
    for f in (fn, twin_of(fn)):
        a = [x.copy() if isinstance(x, np.ndarray) else x for x in make()]
        results.append((f(*args, *a), a))
    (r1, a1), (r2, a2) = results
    assert same(r1, r2), (r1, r2)
    for k, (x, y) in enumerate(zip(a1, a2)):
        assert same(x, y), f"argument {k} differs:\n{x}\n{y}"


def test_twins_are_pure():
    """The comparison is with plain Python: no twin function is a Numba dispatcher."""
    for mod in (windows, quantiles, filters, ewma, D):
        twin = pure_twin(mod)
        for name in dir(twin):
            assert type(getattr(twin, name)).__module__.split(".")[0] != "numba", (mod.__name__, name)
    if HAVE_NUMBA:
        assert type(windows.tumbling_update).__module__.split(".")[0] == "numba"


@SETTINGS
@given(batches())
def test_tumbling(b):
    k, chan, ts, val = b
    check(windows.tumbling_update, lambda: [windows.new_state(k), np.zeros((len(chan), 9))], chan, ts, val, 4.0)
    check(windows.tumbling_update, lambda: [windows.new_state(k), np.zeros((len(chan), 9))], chan, ts, val, 0.3)
    check(windows.tumbling_flush, lambda: [windows.new_state(k), np.zeros((k, 9))], 1e4, 4.0)


@SETTINGS
@given(batches())
def test_hopping(b):
    k, chan, ts, val = b
    check(windows.hopping_update,
          lambda: [windows.new_hopping_state(k, 6.0, 2.0), np.zeros((3 * len(chan), 9))],
          chan, ts, val, 6.0, 2.0)
    n = windows.hopping_slots(1.0, 0.3)
    check(windows.hopping_update,
          lambda: [windows.new_hopping_state(k, 1.0, 0.3), np.zeros((n * len(chan), 9))],
          chan, ts, val, 1.0, 0.3)


def _extreme_window(module, *, hopping):
    chan = np.zeros(3, np.int64)
    ts = np.array([0.0, 1.0, 61.0])
    val = np.array([1e308, -1e308, 0.0])
    if hopping:
        state, out = module.new_hopping_state(1, 60.0, 30.0), np.zeros((6, 9))
        m = module.hopping_update(chan, ts, val, 60.0, 30.0, state, out)
        m += module.hopping_flush(1e9, 60.0, state, out[m:])
    else:
        state, out = module.new_state(1), np.zeros((3, 9))
        m = module.tumbling_update(chan, ts, val, 60.0, state, out)
    return out[:m]


@pytest.mark.parametrize("hopping", [False, True])
def test_window_of_extreme_finite_values_has_a_nan_std_on_both_paths(hopping):
    """Review 4, M1: two finite readings of +-1e308 overflow Welford's M2 to -inf. Numba's sqrt gave NaN (a std
    that messages drop), Python's ``math.sqrt`` raised ``ValueError: math domain error`` out of
    ``Engine.process`` where Numba is missing (or NUMBA_DISABLE_JIT=1)."""
    pure = _extreme_window(pure_twin(windows), hopping=hopping)
    jit = _extreme_window(windows, hopping=hopping)
    assert same(pure, jit)
    first = pure[np.flatnonzero(pure[:, 2] == 2.0)[0]]
    assert math.isnan(first[windows.AGG_FIELDS.index("std")])
    assert first[windows.AGG_FIELDS.index("min")] == -1e308 and first[windows.AGG_FIELDS.index("max")] == 1e308


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
    for w in (4, 5):
        check(filters.hampel, lambda: [filters.new_hampel_state(k, w), np.zeros(n), np.zeros(n, np.bool_)],
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

    def estimate():
        s = quantiles.new_state(1)
        quantiles.p2_update(one, val, s)
        return [s, np.zeros((1, 2))]

    check(quantiles.p2_estimate, estimate)


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
    check(E.events_update, lambda: [E.new_event_state(k), np.zeros((n, 6))],
          chan, ts, val, np.abs(np.nan_to_num(val)) / 50.0, np.zeros(n, np.int64), 0.5, 2.0)


_SHORT = dict(nov_warmup=5.0, nov_season_warmup=3.0, nov_bin_warmup=1.0, ewma_warmup=3.0, robust_warmup=3.0,
              rate_warmup=3.0, cusum_warmup=3.0, flat_min_run=3.0, nov_hold=4.0)
DETECTOR_SETTINGS = {
    # what the daemon runs by default: detect_spec specialised to the shipped settings' spec
    "shipped": DetectorSettings(),
    # the same spec, with warm-ups a short batch gets past
    "shipped, short warm-ups": dataclasses.replace(DetectorSettings(), **_SHORT),
    # every detector weighted, the range guard on, every novelty feature and option on
    "all weighted": DetectorSettings(**_SHORT, weights=(1.0,) * 8, range_lo=-20.0, range_hi=20.0,
                                     nov_weights=(1.0, 0.5, 1.0, 0.25, 0.5, 0.75), nov_refract=10.0,
                                     nov_vol_season=1.0, nov_value_gate=2.0, nov_season_bins=96.0,
                                     nov_spread_floor=0.1, guard_level=0.9, event_close_after=2.0),
    # novelty off, the statistical detectors on, other options off
    "statistical": DetectorSettings(**_SHORT, weights=(0.9, 0.8, 0.7, 1.0, 0.0, 0.5, 0.0, 0.0),
                                    nov_long_mode=0.0, nov_season_smooth=0.0, nov_season_mature=0.0,
                                    nov_season_norm=0.0, nov_season_floor=0.0, nov_shift_floor=0.0),
    **{f"novelty {i}": dataclasses.replace(s, ewma_warmup=3.0, flat_min_run=3.0) for i, s in enumerate(NOVELTY[:4])},
}


def _run_detector(s, chan, ts, val, cuts, pure, chain=None):
    d = Chain(chain, capacity=1, pure=pure) if chain else Detector(s, capacity=1, pure=pure)
    out = []
    for a, b in zip(cuts[:-1], cuts[1:]):
        if chain:
            r = d.process(chan[a:b], ts[a:b], val[a:b])
            out.append((r.score, r.filtered, r.despiked, r.emit, d.detector.last_dominant, repr(r.events)))
        else:
            score, events = d.process(chan[a:b], ts[a:b], val[a:b])
            out.append((score, d.last_dominant, repr(events)))
    return out, d.state()


@settings(max_examples=50, deadline=None)
@given(batches(max_n=160), st.sampled_from(sorted(DETECTOR_SETTINGS)), st.sampled_from([1.0, 900.0]),
       st.lists(st.integers(0, 160), max_size=3), st.sampled_from([None, "deadband", "filters"]))
def test_detector_compiled_and_pure_are_identical(b, name, scale, cuts, chain):
    """``Detector(s)`` (``detect_spec`` compiled for ``spec_of(s)``, what the daemon runs) and
    ``Detector(s, pure=True)`` give the same scores, dominant detectors, events and state, bit for bit,
    over batches cut anywhere; and so do the chains (the default one runs its deadband inside the
    detector's pass, a chain with filters runs them after it)."""
    k, chan, ts, val = b
    ts = 1.7e9 + (ts - 1000.0) * scale  # epoch times; scaled up, across phase bins and days
    s = DETECTOR_SETTINGS[name]
    cuts = [0, *sorted(min(c, len(chan)) for c in cuts), len(chan)]
    cs = None
    if chain == "deadband":
        cs = ChainSettings(deadband=0.5, heartbeat_s=5.0, detector=s)
    elif chain == "filters":
        cs = ChainSettings(hampel_window=4, lowpass_alpha=0.5, deadband=0.5, heartbeat_s=5.0, detector=s)
    jit, jit_state = _run_detector(s, chan, ts, val, cuts, False, cs)
    pure, pure_state = _run_detector(s, chan, ts, val, cuts, True, cs)
    assert len(jit) == len(pure)
    for x, y in zip(jit, pure):
        assert same(x, y), (x, y)
    assert jit_state.keys() == pure_state.keys()
    for key in jit_state:
        assert same(jit_state[key], pure_state[key]), key


def test_detector_runs_the_specialised_kernel():
    """The property above compares the daemon's path: ``detect_spec`` with a spec that switches parts off."""
    assert D.spec_of(DetectorSettings().params()) != D.SPEC_RUNTIME
    assert None in D.spec_of(DetectorSettings().params())


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
