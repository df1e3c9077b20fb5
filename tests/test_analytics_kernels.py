"""Kernels against hand-computed values and against the slow references in ``naive_kernels``."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from edge_gateway.analytics import detectors as D
from edge_gateway.analytics import ensemble as E
from edge_gateway.analytics import ewma, filters, quantiles, windows
from edge_gateway.analytics.chain import Chain, ChainSettings, Detector, DetectorSettings

from . import naive_kernels as N


def arr(*xs, dtype=np.float64):
    return np.array(xs, dtype=dtype)


@pytest.fixture
def batch():
    rng = np.random.default_rng(7)
    n = 600
    chan = rng.integers(0, 3, n).astype(np.int64)
    ts = 100.0 + np.cumsum(rng.choice([0.0, 1.0, 1.0, 1.0, 9.0], n))
    val = np.round(rng.normal(0, 1, n), 1)
    val[rng.integers(0, n, 10)] = 25.0
    val[rng.integers(0, n, 5)] = np.nan
    val[300:340] = 3.0
    return chan, ts, val


def test_tumbling_exact():
    out = np.zeros((4, 9))
    st = windows.new_state(1)
    m = windows.tumbling_update(arr(0, 0, 0, 0, dtype=np.int64), arr(0, 5, 12, 3), arr(1, 3, 7, 9), 10.0, st, out)
    assert m == 1
    assert out[0].tolist() == [0, 0, 2, 1, 3, 2, 1, 1, 3]
    assert st[0, windows.S_LATE] == 1


def test_tumbling_vs_naive(batch):
    chan, ts, val = batch
    out = np.zeros((len(chan), 9))
    m = windows.tumbling_update(chan, ts, val, 10.0, windows.new_state(3), out)
    np.testing.assert_allclose(out[:m], np.array(N.tumbling(chan.tolist(), ts, val, 10.0)), rtol=1e-9, atol=1e-9)


def test_hopping_exact():
    st = windows.new_hopping_state(1, 10.0, 5.0)
    out = np.zeros((10, 9))
    m = windows.hopping_update(arr(0, 0, 0, dtype=np.int64), arr(1, 6, 11), arr(2, 4, 6), 10.0, 5.0, st, out)
    assert m == 2
    assert out[0].tolist() == [0, -5, 1, 2, 2, 2, 0, 2, 2]
    assert out[1].tolist() == [0, 0, 2, 2, 4, 3, 1, 2, 4]
    m = windows.hopping_flush(100.0, 10.0, st, out)
    assert m == 2
    assert out[0, :3].tolist() == [0, 5, 2] and out[0, 5] == 5.0
    assert out[1, :3].tolist() == [0, 10, 1]


def test_a_flushed_window_is_never_reopened():
    """An idle flush closes a window for good: a reading for it later is late, not a second aggregate."""
    one = arr(0, dtype=np.int64)
    out = np.zeros((4, 9))
    st = windows.new_state(1)
    windows.tumbling_update(arr(0, 0, dtype=np.int64), arr(1, 2), arr(1, 3), 10.0, st, out)
    assert windows.tumbling_flush(np.inf, 10.0, st, out) == 1 and out[0, :3].tolist() == [0, 0, 2]
    assert windows.tumbling_update(one, arr(4), arr(9), 10.0, st, out) == 0
    assert windows.tumbling_flush(np.inf, 10.0, st, out) == 0 and st[0, windows.S_LATE] == 1
    windows.tumbling_update(one, arr(12), arr(5), 10.0, st, out)
    assert windows.tumbling_flush(np.inf, 10.0, st, out) == 1 and out[0, :4].tolist() == [0, 10, 1, 5]

    st = windows.new_hopping_state(1, 10.0, 5.0)
    windows.hopping_update(one, arr(6), arr(1), 10.0, 5.0, st, out)
    assert windows.hopping_flush(np.inf, 10.0, st, out) == 2
    assert windows.hopping_update(one, arr(7), arr(2), 10.0, 5.0, st, out) == 0
    assert windows.hopping_flush(np.inf, 10.0, st, out) == 0 and st[0, windows.S_LATE] == 1
    windows.hopping_update(one, arr(12), arr(3), 10.0, 5.0, st, out)
    assert windows.hopping_flush(np.inf, 10.0, st, out) == 1 and out[0, :4].tolist() == [0, 10, 1, 3]
    assert st[0, windows.S_LATE] == 2

    st = quantiles.new_window_state(1)
    out = np.zeros((4, 5))
    quantiles.window_update(one, arr(1), arr(4), 10.0, st, out)
    assert quantiles.window_flush(np.inf, 10.0, st, out) == 1
    assert quantiles.window_update(one, arr(3), arr(8), 10.0, st, out) == 0
    assert quantiles.window_flush(np.inf, 10.0, st, out) == 0


def test_hopping_vs_tumbling_when_hop_equals_window(batch):
    chan, ts, val = batch
    a, b = np.zeros((len(chan), 9)), np.zeros((len(chan), 9))
    ma = windows.tumbling_update(chan, ts, val, 10.0, windows.new_state(3), a)
    mb = windows.hopping_update(chan, ts, val, 10.0, 10.0, windows.new_hopping_state(3, 10.0, 10.0), b)
    np.testing.assert_array_equal(a[:ma], b[:mb])


def test_ewma_exact_and_naive(batch):
    score = np.zeros(3)
    ewma.ewma_zscore(arr(0, 0, 0, dtype=np.int64), arr(0, 2, 0), 0.5, 1.0, ewma.new_state(1), score)
    assert score.tolist() == [0.0, math.inf, 1.0 / math.sqrt(1.0)]
    chan, ts, val = batch
    score = np.zeros(len(chan))
    ewma.ewma_zscore(chan, val, 0.1, 5.0, ewma.new_state(3), score)
    np.testing.assert_allclose(score, N.ewma_z(chan, val, 0.1, 5.0), rtol=1e-12)


def test_squash():
    assert D.squash(0.0, 2.0) == 0.0 and D.squash(2.0, 2.0) == 0.5 and D.squash(math.inf, 1.0) == 1.0
    assert D.squash(math.nan, 1.0) == 0.0


def test_robust_exact():
    s = np.zeros(4)
    D.robust_score(np.zeros(4, np.int64), arr(10, 12, 10, 30), 0.5, 2.0, 1.0, 0.0, 1.0, D.new_state("robust", 1), s)
    # loc/spread: (10,0) -> z=inf, (11,1) -> z=1, (10.5, 1) -> z=19.5
    np.testing.assert_allclose(s, [0.0, 1.0, 0.5, 19.5 / 20.5])


def test_detectors_vs_naive(batch):
    chan, ts, val = batch
    n = len(chan)

    def run(fn, name, *args):
        out = np.zeros(n)
        fn(*args, D.new_state(name, 3), out)
        return out

    np.testing.assert_allclose(run(D.robust_score, "robust", chan, val, 0.05, 3.0, 5.0, 0.01, 2.0),
                               N.robust(chan, val, 0.05, 3.0, 5.0, 0.01, 2.0), rtol=1e-12)
    np.testing.assert_allclose(run(D.rate_score, "rate", chan, ts, val, 0.05, 3.0, 5.0, 2.0),
                               N.rate(chan, ts, val, 0.05, 3.0, 5.0, 2.0), rtol=1e-12)
    np.testing.assert_allclose(run(D.cusum_score, "cusum", chan, val, 0.05, 3.0, 5.0, 0.5, 4.0),
                               N.cusum(chan, val, 0.05, 3.0, 5.0, 0.5, 4.0), rtol=1e-12)
    np.testing.assert_allclose(run(D.flat_score, "flatline", chan, val, 0.0, 3.0, 0.05),
                               N.flatline(chan, val, 0.0, 3.0, 0.05), rtol=1e-12)
    np.testing.assert_allclose(run(D.drop_score, "dropout", chan, ts, val, 3.0, 0.1, 3.0),
                               N.dropout(chan, ts, val, 3.0, 0.1, 3.0), rtol=1e-12)
    ew = run(D.ewma_score, "ewma", chan, val, 0.1, 5.0, 2.0)
    np.testing.assert_allclose(ew, [N.squash(z, 2.0) for z in N.ewma_z(chan, val, 0.1, 5.0)], rtol=1e-12)
    rng = np.zeros(n)
    D.range_score(chan, val, -2.0, 2.0, rng)
    assert rng.tolist() == [float(x == x and abs(x) > 2.0) for x in val]


def test_cusum_ignores_a_short_loud_burst_but_not_a_level_that_stays():
    """A passing truck (+8 sigma for 3 readings) must not add up to an alarm; a +4 sigma level must."""
    rng = np.random.default_rng(5)
    x = rng.normal(0.0, 1.0, 1300)
    x[600:603] += 8.0
    x[1000:] += 4.0
    s = np.empty(x.size)
    D.cusum_score(np.zeros(x.size, np.int64), x, 0.01, 3.0, 300.0, 1.5, 10.0, D.new_state("cusum", 1), s)
    alarms = np.flatnonzero(s >= 0.5)
    assert alarms.size and 1000 <= alarms[0] < 1010, alarms[:5]


def test_cusum_fires_once_on_level_shift():
    x = np.r_[np.tile([0.0, 1.0], 50), np.full(20, 5.0)]
    s = np.zeros(x.size)
    D.cusum_score(np.zeros(x.size, np.int64), x, 0.1, 3.0, 30.0, 0.5, 10.0, D.new_state("cusum", 1), s)
    assert s[:100].max() < 0.5
    assert (s[100:] >= 0.5).sum() == 1


def test_flatline_and_dropout_exact():
    s = np.zeros(6)
    st = D.new_state("flatline", 1)
    D.flat_score(np.zeros(6, np.int64), arr(1, 2, 2, 2, 2, 3), 0.0, 2.0, 0.5, st, s)
    # repeat rate 0, 0, .5 before the run reaches 2; it stays .5 while the run lasts, and the two
    # repeats owed come in when it ends (1 - .5 * .5**2 = .875), before that reading's own update
    assert s.tolist() == [0, 0, 0, 0.5, 0.5, 0]
    assert st[0].tolist() == [3.0, 0.0, 0.4375, 6.0]
    s = np.zeros(5)
    D.drop_score(np.zeros(5, np.int64), arr(0, 1, 2, 12, 13), arr(1, 1, 1, 1, 1), 5.0, 0.0, 3.0,
                 D.new_state("dropout", 1), s)
    assert s.tolist() == [0, 0, 0, 0.5, 0]


def test_filters_exact_and_naive(batch):
    out, fl = np.zeros(7), np.zeros(7, np.bool_)
    filters.hampel(np.zeros(7, np.int64), arr(1, 2, 1, 2, 50, 1, 2), 3.0, filters.new_hampel_state(1, 4), out, fl)
    assert out.tolist() == [1, 2, 1, 2, 1.5, 1, 2] and fl.tolist() == [0, 0, 0, 0, 1, 0, 0]
    chan, ts, val = batch
    n = len(chan)
    out, fl = np.zeros(n), np.zeros(n, np.bool_)
    filters.hampel(chan, val, 3.0, filters.new_hampel_state(3, 5), out, fl)
    ref, rfl = N.hampel(chan, val, 5, 3.0)
    np.testing.assert_allclose(out, ref, rtol=1e-12)
    assert fl.tolist() == rfl
    out = np.zeros(n)
    filters.lowpass(chan, val, 0.3, filters.new_lowpass_state(3), out)
    np.testing.assert_allclose(out, N.lowpass(chan, val, 0.3), rtol=1e-12)
    emit = np.zeros(n, np.bool_)
    filters.deadband(chan, ts, val, 1.0, 20.0, filters.new_deadband_state(3), emit)
    assert emit.tolist() == N.deadband(chan, ts, val, 1.0, 20.0)
    emit = np.zeros(5, np.bool_)
    filters.deadband(np.zeros(5, np.int64), arr(0, 1, 2, 10, 12), arr(5, 5.5, 7, 7, 7), 1.0, 10.0,
                     filters.new_deadband_state(1), emit)
    assert emit.tolist() == [True, False, True, False, True]


def test_p2_small_exact_and_large_close():
    st = quantiles.new_state(1)
    quantiles.p2_update(np.zeros(3, np.int64), arr(5, 1, 3), st)
    out = np.zeros((1, 2))
    quantiles.p2_estimate(st, out)
    assert out.tolist() == [[3.0, 5.0]]
    x = np.random.default_rng(1).permutation(np.arange(1000.0))
    st = quantiles.new_state(1)
    quantiles.p2_update(np.zeros(1000, np.int64), x, st)
    quantiles.p2_estimate(st, out)
    assert abs(out[0, 0] - 499.5) < 15 and abs(out[0, 1] - 949.5) < 15
    assert st.shape == (1, quantiles.STATE_WIDTH) == (1, 1 + quantiles.Q_EXACT + 30)


def _window_quantiles(x, window_s=60.0):
    """(p50, p95) of one window holding ``x``, closed by a flush."""
    st = quantiles.new_window_state(1)
    out = np.zeros((len(x) + 1, 5))
    assert quantiles.window_update(np.zeros(len(x), np.int64), np.linspace(0.0, 1.0, len(x)), x, window_s, st, out) == 0
    assert quantiles.window_flush(np.inf, window_s, st, out) == 1 and out[0, 2] == len(x)
    return out[0, 3], out[0, 4]


def test_p2_exact_nearest_rank_up_to_q_exact():
    rng = np.random.default_rng(5)
    for n in range(1, quantiles.Q_EXACT + 1):
        for x in (rng.permutation(np.arange(1.0, n + 1)), rng.normal(0, 1, n), rng.integers(0, 4, n).astype(float)):
            want = np.quantile(x, [0.5, 0.95], method="inverted_cdf")
            assert _window_quantiles(x) == (want[0], want[1]) == (N.nearest_rank(x, 0.5), N.nearest_rank(x, 0.95))
            st = quantiles.new_state(1)
            quantiles.p2_update(np.zeros(n, np.int64), x, st)
            out = np.zeros((1, 2))
            quantiles.p2_estimate(st, out)
            assert out[0].tolist() == want.tolist()


def test_p2_handover_from_exact_buffer():
    """Readings 33..40: markers start from the buffer, so the estimate stays in [min, max] and near the exact rank."""
    rng = np.random.default_rng(11)
    for n in range(quantiles.Q_EXACT + 1, quantiles.Q_EXACT + 9):
        for _ in range(50):
            x = rng.permutation(np.arange(1.0, n + 1))
            p50, p95 = _window_quantiles(x)
            assert 1.0 <= p50 <= p95 <= n
            assert abs(p50 - N.nearest_rank(x, 0.5)) <= 3.0 and abs(p95 - N.nearest_rank(x, 0.95)) <= 3.0
            y = rng.normal(0, 1, n)
            p50, p95 = _window_quantiles(y)
            assert y.min() <= p50 <= p95 <= y.max()
            assert abs(p50 - N.nearest_rank(y, 0.5)) <= y.std() and abs(p95 - N.nearest_rank(y, 0.95)) <= 2 * y.std()


def test_p2_long_stream_tolerance():
    for seed in range(5):
        x = np.random.default_rng(seed).normal(10.0, 2.0, 5000)
        st = quantiles.new_state(1)
        quantiles.p2_update(np.zeros(x.size, np.int64), x, st)
        out = np.zeros((1, 2))
        quantiles.p2_estimate(st, out)
        np.testing.assert_allclose(out[0], np.quantile(x, [0.5, 0.95]), rtol=0, atol=0.1)  # 0.05 sigma
        np.testing.assert_allclose(_window_quantiles(x, 1e9), out[0], rtol=0, atol=0)


def test_window_quantiles():
    st = quantiles.new_window_state(2)
    out = np.zeros((10, 5))
    chan = arr(0, 0, 0, 1, 0, 1, dtype=np.int64)
    m = quantiles.window_update(chan, arr(1, 2, 3, 4, 11, 12), arr(4, 1, 9, 7, 2, 3), 10.0, st, out)
    assert m == 2 and out[0].tolist() == [0, 0, 3, 4, 9] and out[1].tolist() == [1, 0, 1, 7, 7]
    m = quantiles.window_flush(100.0, 10.0, st, out)
    assert m == 2 and out[0].tolist() == [0, 10, 1, 2, 2] and out[1].tolist() == [1, 10, 1, 3, 3]
    assert st[:, 0].tolist() == [10, 10] and st[:, 1].tolist() == [0, 0]  # closed: start kept, count 0
    x = np.arange(1.0, 8.0)
    assert N.nearest_rank(x, 0.5) == 4.0
    # textbook P² reported the median as p95 from the 5th reading on (review13 defect 5)
    for n in range(5, 9):
        assert _window_quantiles(np.arange(1.0, n + 1)) == (N.nearest_rank(range(1, n + 1), 0.5), n)
    assert _window_quantiles(np.arange(1.0, 21.0)) == (10.0, 19.0)
    assert _window_quantiles(arr(4, 3, 6, 5, 1, 2)) == (3.0, 6.0)


def test_events_hysteresis():
    st = E.new_event_state(1)
    out = np.zeros((8, 6))
    score = arr(0.1, 0.9, 0.2, 0.95, 0.1, 0.1, 0.0, 0.8)
    m = E.events_update(np.zeros(8, np.int64), np.arange(8.0), np.arange(8.0) * 10, score,
                        np.array([0, 1, 1, 2, 0, 0, 0, 3]), 0.5, 2.0, st, out)
    assert m == 1
    assert out[0].tolist() == [0, 1, 3, 0.95, 30, 2]
    assert st[0, E.E_OPEN] == 1 and st[0, E.E_START] == 7


def periodic(n=3000, seed=11, step=300.0):
    """Daily-periodic series with noise, a spike, a level shift and a flat stretch (5-minute samples)."""
    rng = np.random.default_rng(seed)
    ts = 1.4e9 + step * np.arange(n)
    val = 10 + 3 * np.sin(2 * np.pi * ts / 86400.0) + rng.normal(0, 0.3, n)
    val[1800] += 9.0
    val[2300:2400] += 2.0
    val[2600:2700] = val[2599]
    val[[50, 1900]] = np.nan
    return ts, val


NOV_CASES = [
    {},
    {"nov_weights": "1,0.5,1,0.25,0.5,0.75", "nov_decay": "0,1e-3,1e-4,3e-3,1e-5,1e-3", "nov_warmup": "100",
     "nov_season_warmup": "50", "nov_hold": "30", "nov_bypass": "1.05"},
    {"nov_season_norm": "1", "nov_bin_warmup": "2", "nov_season_bins": "96", "nov_season_alpha": "0.3",
     "nov_warmup": "20", "nov_half": "1"},
    {"nov_long_mode": "1", "nov_weights": "1,0,0,0.3,0.5,0.5", "nov_season_mature": "300", "nov_half_season": "0.1",
     "nov_half_vol": "0.2", "nov_season_smooth": "0.5", "nov_warmup": "50", "nov_season_warmup": "20"},
    {"nov_refract": "0"},
    {"nov_refract": "60", "nov_refract_damp": "0.8", "nov_hold": "20", "nov_warmup": "50", "nov_level": "0.1"},
    {"nov_season_floor": "3", "nov_shift_floor": "1"},
    {"nov_season_floor": "0.5", "nov_shift_floor": "0.3", "nov_weights": "1,0,0.5,0.3,0,0.5", "nov_warmup": "50",
     "nov_season_warmup": "20", "nov_hold": "20"},  # the vol EWMA kept for the shift floor alone
    {"nov_vol_season": "1"},
    {"nov_vol_season": "1", "nov_season_bins": "96", "nov_bin_warmup": "1", "nov_warmup": "50", "nov_hold": "20",
     "nov_shift_floor": "0"},
    {"nov_value_gate": "5"},
    {"nov_value_gate": "5", "nov_vol_season": "1"},
    {"nov_value_gate": "2", "nov_long_mode": "0", "nov_season_smooth": "0", "nov_shift_floor": "0",
     "nov_weights": "1,0,0,0.3,0,0", "nov_warmup": "50", "nov_hold": "20"},  # short and vol EWMAs for the gate alone
]


@pytest.mark.parametrize("case", NOV_CASES)
def test_novelty_vs_naive(case):
    ts, val = periodic()
    chan = (np.arange(val.size) % 2).astype(np.int64)  # two interleaved channels (odd/even samples)
    cfg = DetectorSettings().with_overrides(case)
    out = np.zeros(val.size)
    D.novelty_score(chan, ts, val, cfg.params(), D.new_state("novelty", 2), out)
    np.testing.assert_allclose(out, N.novelty(chan.tolist(), ts, val, cfg), rtol=1e-12, atol=0)
    assert ((out >= 0) & (out <= 1)).all() and (out >= cfg.nov_level).sum() >= 1


@pytest.mark.parametrize("on, vols", [
    (0.0, [0, 0, 0, 5, 2.5, 1.25, 0.625, 5.3125, 2.65625, 1.328125, 0.6640625, 5.33203125]),
    # the day-0 jump into bin 1 counts (bin 1 not seen yet), the profile's later jumps do not
    (1.0, [0, 0, 0, 5, 2.5, 1.25, 0.625, 0.3125, 0.15625, 0.078125, 0.0390625, 0.01953125]),
])
def test_novelty_vol_season_exact(on, vols):
    # two 12-hour phase bins, four readings in each, the value 0 in the first and 10 in the second: the
    # profile (alpha 1, no smoothing) learns both levels on day 0, so from day 1 each jump is the
    # profile's own step, 0 once it is taken out
    cfg = DetectorSettings().with_overrides({
        "nov_vol_season": str(on), "nov_season_bins": "2", "nov_season_alpha": "1", "nov_season_smooth": "0",
        "nov_bin_warmup": "1", "nov_vol_alpha": "0.5", "nov_shift_floor": "0", "nov_warmup": "1000"})
    n = len(vols) + 1
    k = np.arange(n)
    ts = 86400.0 * 16000 + 10800.0 * k
    val = np.where(k % 8 < 4, 0.0, 10.0)
    got = []
    for D_ in (D, D.pure_module()):
        st = D_.new_state("novelty", 1)
        out = np.zeros(n)
        seen = []
        for i in range(n):  # one reading at a time: the volatility EWMA after each
            D_.novelty_score(np.zeros(1, np.int64), ts[i:i + 1], val[i:i + 1], cfg.params(), st, out[i:i + 1])
            seen.append(st[0, D.NS_VOL])
        got.append(seen[1:])
    assert got[0] == vols and got[1] == vols
    assert np.allclose(N.novelty([0] * n, ts, val, cfg), 0.0)


def test_vol_season_fused_matches_novelty_score():
    # the fused kernel keeps the previous reading's bin mean across runs and batches: same scores as the
    # one-detector kernel (and the naive one) on two interleaved daily channels fed in uneven batches
    ts, val = periodic()
    chan = ((np.arange(val.size) // 7) % 2).astype(np.int64)  # runs of 7 readings per channel
    cfg = DetectorSettings(nov_vol_season=1.0, weights=(0, 0, 0, 0, 0, 0, 0, 1.0))
    ref = np.zeros(val.size)
    D.novelty_score(chan, ts, val, cfg.params(), D.new_state("novelty", 2), ref)
    np.testing.assert_allclose(ref, N.novelty(chan.tolist(), ts, val, cfg), rtol=1e-12, atol=0)
    det = Detector(cfg, capacity=2)
    got = np.concatenate([det.process(chan[a:b], ts[a:b], val[a:b])[0]
                          for a, b in zip([0, 5, 300, 1234], [5, 300, 1234, val.size])])
    np.testing.assert_array_equal(got, ref)
    off = np.zeros(val.size)
    D.novelty_score(chan, ts, val, DetectorSettings().params(), D.new_state("novelty", 2), off)
    assert not np.array_equal(off, ref)


@pytest.mark.parametrize("gate, want", [(0.0, [0, 0, 0, 0.2, 4 / 9, 5 / 23]), (4.0, [0, 0, 0, 0.05, 4 / 9, 5 / 92])])
def test_novelty_value_gate_exact(gate, want):
    # the value feature alone (half 1, warm-up 3, no hold), short and volatility EWMAs of alpha 0.5 kept for
    # the gate only. 5: range [0, 4] -> 1 / (1 + 4) = 0.2; short 3, vol 1, |5 - 3| = 2 = 0.5 x (4 x 1): x 0.25.
    # 9: 4 / (4 + 5); |9 - 4| = 5 >= 4 x 1, not gated. 11.5: 2.5 / (2.5 + 9) = 5 / 23; short 6.5, vol 2.5,
    # |11.5 - 6.5| = 5 = 0.5 x (4 x 2.5): x 0.25
    cfg = DetectorSettings().with_overrides({
        "nov_value_gate": str(gate), "nov_weights": "1,0,0,0,0,0", "nov_long_mode": "0", "nov_season_smooth": "0",
        "nov_shift_floor": "0", "nov_short_alpha": "0.5", "nov_vol_alpha": "0.5", "nov_warmup": "3",
        "nov_hold": "0", "nov_half": "1"})
    val = arr(0, 4, 4, 5, 9, 11.5)
    ts = np.arange(6.0)
    for D_ in (D, D.pure_module()):
        out = np.zeros(6)
        D_.novelty_score(np.zeros(6, np.int64), ts, val, cfg.params(), D_.new_state("novelty", 1), out)
        np.testing.assert_allclose(out, want, rtol=1e-15, atol=0)
    assert out[3] == want[3]
    np.testing.assert_allclose(N.novelty([0] * 6, ts, val, cfg), want, rtol=1e-15, atol=0)
    fused = Detector(dataclasses.replace(cfg, weights=(0, 0, 0, 0, 0, 0, 0, 1.0)), capacity=1)
    np.testing.assert_allclose(fused.process(np.zeros(6, np.int64), ts, val)[0], want, rtol=1e-15, atol=0)
    assert (D.spec_of(cfg.params())[D.SPEC_VALUE_GATE] is not None) == (gate > 0)


def test_novelty_exact():
    cfg = DetectorSettings().with_overrides({"nov_weights": "1,0,0,0,0,0", "nov_warmup": "3", "nov_hold": "1",
                                             "nov_level": "0.5", "nov_half": "1"})
    out = np.zeros(7)
    D.novelty_score(np.zeros(7, np.int64), np.arange(7.0), arr(0, 2, 1, 4, 9, 1, 8), cfg.params(),
                    D.new_state("novelty", 1), out)
    # range [0,2] before 4: z = 2/2 -> 1/(1+1); then muted one reading; 1 and 8 are inside [0, 9]
    assert out.tolist() == [0, 0, 0, 0.5, 0, 0, 0]


def test_fused_matches_composition(batch):
    chan, ts, val = batch
    s = DetectorSettings(range_lo=-5.0, range_hi=5.0, weights=(1.0, 0.8, 0.9, 0.7, 1.0, 0.6, 0.5, 0.95),
                         nov_warmup=20.0, guard_level=math.inf)
    det = Detector(s)
    fused, ev = det.process(chan, ts, val)
    n = len(chan)
    cols = np.zeros((n, D.N_DETECTORS))
    D.ewma_score(chan, val, s.ewma_alpha, s.ewma_warmup, s.ewma_half, D.new_state("ewma", 3), cols[:, 0])
    D.robust_score(chan, val, s.robust_eta, s.robust_clip, s.robust_warmup, s.robust_floor, s.robust_half,
                   D.new_state("robust", 3), cols[:, 1])
    D.rate_score(chan, ts, val, s.rate_eta, s.rate_clip, s.rate_warmup, s.rate_half, D.new_state("rate", 3),
                 cols[:, 2])
    D.cusum_score(chan, val, s.cusum_eta, s.cusum_clip, s.cusum_warmup, s.cusum_k, s.cusum_h,
                  D.new_state("cusum", 3), cols[:, 3])
    D.range_score(chan, val, s.range_lo, s.range_hi, cols[:, 4])
    D.flat_score(chan, val, s.flat_eps, s.flat_min_run, s.flat_alpha, D.new_state("flatline", 3), cols[:, 5])
    D.drop_score(chan, ts, val, s.drop_k, s.drop_eta, s.drop_clip, D.new_state("dropout", 3), cols[:, 6])
    D.novelty_score(chan, ts, val, s.params(), D.new_state("novelty", 3), cols[:, 7])
    comb, dom = np.zeros(n), np.zeros(n, np.int64)
    E.combine(cols, np.array(s.weights), comb, dom)
    np.testing.assert_array_equal(fused, comb)
    np.testing.assert_array_equal(det.last_dominant, dom)
    assert ((fused >= 0) & (fused <= 1)).all() and (dom == D.D_NOV).any()
    rows = np.zeros((n, 6))
    m = E.events_update(chan, ts, val, comb, dom, s.event_threshold, s.event_close_after, E.new_event_state(3),
                        rows)
    assert m == len(ev) > 0
    assert [[e[k] for k in E.EVENT_FIELDS[:5]] + [D.DETECTOR_NAMES.index(e["detector"])] for e in ev] == \
        rows[:m].tolist()


def test_zero_weight_detectors_are_skipped(batch):
    chan, ts, val = batch
    det = Detector(DetectorSettings())
    det.process(chan, ts, val)
    st = det.state()
    assert not st["ewma"].any() and not st["cusum"].any() and st["novelty"].any() and st["flatline"].any()



def test_a_stuck_stretch_alarms_throughout_and_a_channel_that_stays_flat_learns_it():
    """The repeat rate learns a run's repeats as they come until the run reaches min_run (10), then only
    when it ends: the first stuck stretch alarms at one level from its 10th repeat to its last, and the
    next one no longer reaches the event threshold (0.25)."""
    moving = lambda k, base: list(base + np.arange(k) * 0.37)  # noqa: E731
    x = np.array(moving(40, 0.0) + [5.0] * 300 + moving(10, 100.0) + [7.0] * 300)
    s = np.zeros(x.size)
    D.flat_score(np.zeros(x.size, np.int64), x, 0.0, 10.0, 0.01, D.new_state("flatline", 1), s)
    rate = 0.0
    for _ in range(9):  # repeats 1-9 of the first stretch
        rate += 0.01 * (1.0 - rate)
    first, second = s[40:340], s[350:650]
    assert (first[:10] == 0.0).all() and (first[10:] == 1.0 - rate).all()  # 290 readings, one level
    rate = 1.0 - (1.0 - rate) * 0.99 ** 290.0  # its 290 alarmed repeats, owed until it ended
    for _ in range(11):  # the reading that ended it, 9 moving ones, the next stretch's first
        rate += 0.01 * (0.0 - rate)
    for _ in range(9):
        rate += 0.01 * (1.0 - rate)
    assert (second[:10] == 0.0).all()
    np.testing.assert_allclose(second[10:], 1.0 - rate, rtol=1e-12, atol=0)
    assert first[10] > 0.9 and second[10:].max() < 0.25


def test_guards_open_events_at_weight_zero():
    """Stuck, dropout and range alarms reach the operator even though NAB weights them 0."""
    ts, val = periodic()
    ts = ts.copy()
    ts[2800:] += 86400.0  # a day-long gap
    s = DetectorSettings(range_hi=15.0, flat_eps=1e-9)
    assert s.weights[D.D_FLAT] == 0.0 and s.weights[D.D_DROP] == 0.0
    score, events = Detector(s).process(np.zeros(val.size, np.int64), ts, val)
    kinds = {e["detector"] for e in events}
    assert {"flatline", "dropout", "range"} <= kinds
    flat = [e for e in events if e["detector"] == "flatline"]
    assert ts[2600] < flat[0]["start"] <= ts[2700] and score[2600:2700].max() < s.event_threshold


def test_hold_lets_a_bigger_anomaly_through():
    rng = np.random.default_rng(4)
    val = rng.normal(0, 1, 2000)
    val[1000] = val[:1000].max() + 0.25  # just beyond the range: a small alarm (score ~0.4)
    val[1050] = 60.0
    ts = 60.0 * np.arange(2000)
    for bypass, expect in ((2.0, True), (math.inf, False)):
        s = DetectorSettings(nov_warmup=990.0, nov_hold=500.0, nov_bypass=bypass,
                             nov_weights=(1.0, 0.0, 0.0, 0.0, 0.0, 0.0))
        out, _ = Detector(s).process(np.zeros(2000, np.int64), ts, val)
        assert s.nov_level <= out[1000] < 0.5
        assert (out[1050] > 0.9) == expect and (out[1001:1050] == 0).all()


def test_event_buffer_resumes():
    ts, val = periodic()
    chan = (np.arange(val.size) % 3).astype(np.int64)
    s = DetectorSettings(nov_warmup=50.0, nov_hold=5.0, event_close_after=1.0)
    ref_score, ref_ev = Detector(s).process(chan, ts, val)
    d = Detector(s)
    d._rows = np.empty((1, 6))
    score, ev = d.process(chan, ts, val)
    np.testing.assert_array_equal(score, ref_score)
    assert ev == ref_ev and len(ev) > 3


def test_pure_twin_is_pure_and_equal(batch):
    chan, ts, val = batch
    P = D.pure_module()
    assert P is D.pure_module() and P is not D
    for name in ("novelty_step", "_range_novelty", "huber_step", "detect", "flat_step"):
        assert type(getattr(P, name)).__name__ == "function"
    s = DetectorSettings(nov_warmup=20.0, weights=(0.5, 0.5, 0.5, 0.5, 1.0, 0.5, 0.5, 1.0))
    a, ea = Detector(s).process(chan, ts, val)
    b, eb = Detector(s, pure=True).process(chan, ts, val)
    np.testing.assert_array_equal(a, b)
    assert ea == eb
    c = Chain(ChainSettings(hampel_window=5, lowpass_alpha=0.5, deadband=0.2), pure=True)
    o1 = c.process(chan, ts, val)
    o2 = Chain(c.settings).process(chan, ts, val)
    np.testing.assert_array_equal(o1.filtered, o2.filtered)
    np.testing.assert_array_equal(o1.emit, o2.emit)


def test_detector_state_roundtrip_and_batching(batch):
    chan, ts, val = batch
    whole, ev_whole = Detector().process(chan, ts, val)
    a = Detector(capacity=1)
    first, ev1 = a.process(chan[:250], ts[:250], val[:250])
    b = Detector()
    b.load_state({k: v.copy() for k, v in a.state().items()})
    rest, ev2 = b.process(chan[250:], ts[250:], val[250:])
    np.testing.assert_array_equal(whole, np.r_[first, rest])
    assert ev_whole == ev1 + ev2
    with pytest.raises(ValueError):
        b.load_state({k: np.zeros((1, 1)) for k in a.state()})


def test_chain_and_settings():
    c = Chain(ChainSettings(hampel_window=3, lowpass_alpha=0.5, deadband=0.5))
    c.warm()
    o = c.process(np.zeros(6, np.int64), np.arange(6.0), arr(1, 1, 1, 9, 1, 1))
    assert o.despiked.tolist() == [0, 0, 0, 1, 0, 0]
    assert o.filtered.tolist() == [1, 1, 1, 1, 1, 1]
    assert o.emit.tolist() == [True, False, False, False, False, False]
    c2 = Chain(c.settings)
    c2.load_state(c.state())
    assert c2.state().keys() == c.state().keys()
    s = DetectorSettings().with_overrides({"cusum_h": "7", "weights": "1,0,0,0,0,0,0"})
    assert s.cusum_h == 7.0 and s.weights == (1, 0, 0, 0, 0, 0, 0, 0)  # 7 entries: novelty weight 0
    assert s.only("rate").weights == (0, 0, 1, 0, 0, 0, 0, 0)
    assert s.with_overrides({"nov_weights": "1,1,1,1,1,1"}).nov_weights == (1.0,) * 6
    assert s.with_overrides({"suppress_n": "50"}).nov_hold == 50.0  # the old name of the mute
    with pytest.raises(ValueError):
        DetectorSettings().with_overrides({"nov_decay": "1,2"})
    with pytest.raises(ValueError):
        DetectorSettings().with_overrides({"nope": "1"})
    with pytest.raises(ValueError):
        DetectorSettings().only("nope")
