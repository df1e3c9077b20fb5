"""Time in the window path: readings stamped far in the future, and fractional window/hop lengths.

Review 13 (analytics), sections 3 and 6: one reading a day ahead stalled a channel's aggregates for a
day, and 0.1 s windows put in-order readings into the wrong window or counted them late.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import example, given, settings, strategies as st

from drivers.base import DriverStats
from edge_gateway import config, messages
from edge_gateway.analytics import quantiles, windows
from edge_gateway.analytics._pure import pure_twin
from edge_gateway.analytics.engine import Engine
from edge_gateway.batcher import Batch, Batcher, ChannelKey, FutureFilter
from edge_gateway.metrics import Telemetry
from edge_gateway.pipeline import Pipeline
from edge_gateway.readings import Reading
from support import Clock

CFG = config.loads("""
gateway: {id: p-gw}
windows: {seconds: 10, grace_s: 2}
""")
TOPICS = messages.Topics("city", "p-gw")
W_PURE = pure_twin(windows)
Q_PURE = pure_twin(quantiles)



def aggs(out: list[messages.Message]) -> list[tuple[float, int]]:
    return [(m.fields["start"], m.fields["count"]) for m in out if m.kind == messages.KIND_AGG]


def one_batch(ts: list[float], chan: list[int] | None = None) -> Batch:
    chan = [0] * len(ts) if chan is None else chan
    return Batch(np.array(chan, dtype=np.int64), np.array(ts, dtype=np.float64), np.ones(len(ts)))


# --- section 3: a reading stamped a day ahead -------------------------------------------------------


def test_a_reading_a_day_ahead_is_dropped_and_the_channel_keeps_its_aggregates():
    """The review's repro: 200 readings 1 s apart, reading 25 stamped +1 day, a batch every 5 readings."""
    clock = Clock(0.0)
    batcher = Batcher()
    pipe = Pipeline(CFG, TOPICS, batcher, wall_clock=clock)
    out = []
    for k in range(200):
        ts = 1000.0 + k + (86400.0 if k == 25 else 0.0)
        batcher.add(Reading("s1", "temp", 20.0 + k % 3, ts, "C"))
        if k % 5 == 4:
            clock.t = 1000.0 + k
            out += pipe.process(batcher.drain(), now=clock.t)
    clock.t = 1211.0
    out += pipe.process(batcher.drain(), now=clock.t)  # idle flush of the last window
    assert aggs(out) == [(1000.0, 10), (1010.0, 10), (1020.0, 9)] + [(1030.0 + 10 * j, 10) for j in range(17)]
    assert pipe.channel_counters() == {("s1", "temp"): {"late": 0, "future": 1}}


def test_late_and_future_drops_are_in_the_status_document_and_survive_a_restart():
    clock = Clock(1000.0)
    batcher = Batcher()
    pipe = Pipeline(CFG, TOPICS, batcher, wall_clock=clock)
    for k in range(5):
        batcher.add(Reading("s1", "temp", 1.0, 1000.0 + k, "C"))
    batcher.add(Reading("s1", "temp", 2.0, 995.0, "C"))  # older than the open window 1000: late
    batcher.add(Reading("s1", "temp", 3.0, 1000.0 + 601.0, "C"))  # 601 s ahead: future
    batcher.add(Reading("s1", "hum", 40.0, 1003.0, "%"))
    batcher.add(Reading("s2", "temp", 5.0, 1003.0, "C"))
    assert pipe.process(batcher.drain(), now=1000.0) == []
    want = {("s1", "temp"): {"late": 1, "future": 1}, ("s1", "hum"): {"late": 0, "future": 0},
            ("s2", "temp"): {"late": 0, "future": 0}}
    assert pipe.channel_counters() == want

    class Driver:
        def __init__(self, sensor_id: str) -> None:
            self.sensor_id, self.stats, self.name = sensor_id, DriverStats(), "fake"

    doc = Telemetry(clock, channel_counters=pipe.channel_counters).sensors([Driver("s1"), Driver("s2")], 0.0)
    assert (doc["s1"]["late"], doc["s1"]["future"]) == (1, 1)
    assert doc["s1"]["channel_drops"] == {"temp": {"late": 1, "future": 1}}
    assert (doc["s2"]["late"], doc["s2"]["future"], doc["s2"]["channel_drops"]) == (0, 0, {})

    restored = Pipeline(CFG, TOPICS, Batcher(), wall_clock=clock)
    assert restored.restore(pipe.checkpoint()) == 3
    assert restored.channel_counters() == want


def test_a_gateway_clock_behind_the_sensors_is_overruled_by_three_readings_in_a_row():
    """A Pi without RTC, an hour behind until NTP syncs: the first two readings are dropped, then the
    channel's readings pass; after the sync a lone glitch is dropped again."""
    clock = Clock(1000.0)
    batcher = Batcher()
    pipe = Pipeline(CFG, TOPICS, batcher, wall_clock=clock)
    out = []
    for k in range(30):
        batcher.add(Reading("s1", "temp", float(k), 4600.0 + k, "C"))
        if k % 4 == 3:
            out += pipe.process(batcher.drain(), now=1000.0 + k)
    assert aggs(out) == [(4600.0, 8), (4610.0, 10)]
    assert pipe.channel_counters()[("s1", "temp")] == {"late": 0, "future": 2}

    clock.t = 4630.0  # NTP synced
    for k in range(30, 60):
        ts = 4600.0 + k + (86400.0 if k == 45 else 0.0)
        batcher.add(Reading("s1", "temp", float(k), ts, "C"))
        if k % 4 == 3:
            out += pipe.process(batcher.drain(), now=4600.0 + k)
    assert aggs(out)[2:] == [(4620.0, 10), (4630.0, 10), (4640.0, 9)]
    assert pipe.channel_counters()[("s1", "temp")] == {"late": 0, "future": 3}


FUTURE_TS = [0.0, 5000.0, 5001.0, 5002.0, 5003.0, 10.0, 5004.0, 5005.0, 5006.0, 9000.0, 9001.0, 20000.0]
FUTURE_KEEP = [True, False, False, True, True, True, False, False, True, False, False, False]


@pytest.mark.parametrize("split", [1, 2, 5, 12])
def test_future_readings_need_three_in_a_row_each_near_the_last(split):
    """Runs of readings ahead (tolerance 600 s, clock at 0): a reading in range ends a run; a jump of more
    than the tolerance starts a new one. Another channel, always in range, is interleaved. Batch
    boundaries change nothing: the run carries over."""
    f = FutureFilter(600.0)
    got_ts, got_chan = [], []
    ts = [t for x in FUTURE_TS for t in (x, 1.0)]
    chan = [c for _ in FUTURE_TS for c in (0, 1)]
    step = 2 * split
    for i in range(0, len(ts), step):
        b = f.admit(one_batch(ts[i:i + step], chan[i:i + step]), now=0.0)
        got_ts += b.ts.tolist()
        got_chan += b.chan.tolist()
    assert [t for t, c in zip(got_ts, got_chan) if c == 0] == [t for t, k in zip(FUTURE_TS, FUTURE_KEEP) if k]
    assert [t for t, c in zip(got_ts, got_chan) if c == 1] == [1.0] * len(FUTURE_TS)
    assert f.dropped.tolist() == [7.0, 0.0]


def test_a_batch_with_nothing_ahead_passes_untouched():
    f = FutureFilter(600.0)
    b = one_batch([0.0, 599.0, 600.0])
    assert f.admit(b, now=0.0) is b and f.dropped.tolist() == [0.0]
    assert f.admit(one_batch([600.5]), now=0.0).ts.size == 0 and f.dropped.tolist() == [1.0]


@pytest.mark.parametrize("bad", [0.0, -1.0, math.nan, math.inf])
def test_the_future_tolerance_must_be_finite_and_positive(bad):
    with pytest.raises(ValueError, match="future tolerance"):
        FutureFilter(bad)


def test_a_restart_keeps_a_run_of_future_readings():
    clock = Clock(0.0)
    batcher = Batcher()
    pipe = Pipeline(CFG, TOPICS, batcher, wall_clock=clock)
    for k in range(2):
        batcher.add(Reading("s1", "temp", 1.0, 5000.0 + k, "C"))
    pipe.process(batcher.drain(), now=0.0)
    batcher = Batcher()
    resumed = Pipeline(CFG, TOPICS, batcher, wall_clock=clock)
    resumed.restore(pipe.checkpoint())
    batcher.add(Reading("s1", "temp", 1.0, 5002.0, "C"))
    resumed.process(batcher.drain(), now=0.0)
    assert resumed.engine.open_mask().tolist() == [True]
    assert resumed.channel_counters()[("s1", "temp")] == {"late": 0, "future": 2}


# --- section 6: fractional window and hop lengths ---------------------------------------------------


@pytest.mark.parametrize("mod", [windows, W_PURE], ids=["numba", "pure"])
def test_tumbling_tenth_of_a_second(mod):
    """The review's repro: w = 0.1, readings every 0.05 s from 0 to 0.95: ten windows of two readings."""
    ts = np.round(np.arange(0.0, 1.0, 0.05), 2)
    state, out = mod.new_state(1), np.zeros((ts.size + 1, windows.AGG_WIDTH))
    m = mod.tumbling_update(np.zeros(ts.size, np.int64), ts, np.ones(ts.size), 0.1, state, out)
    m += mod.tumbling_flush(np.inf, 0.1, state, out[m:])
    assert [(r[1], r[2]) for r in out[:m].tolist()] == [(k / 10, 2.0) for k in range(10)]
    assert state[0, windows.S_LATE] == 0


@pytest.mark.parametrize("mod", [windows, W_PURE], ids=["numba", "pure"])
def test_hopping_three_tenths_every_tenth(mod):
    """The review's repro: window 0.3 s, hop 0.1 s, 40 in-order readings every 0.05 s: none late, and
    every window holds exactly the readings of its decimal span."""
    ts = np.round(np.arange(0.0, 2.0, 0.05), 2)
    state = mod.new_hopping_state(1, 0.3, 0.1)
    out = np.zeros((ts.size * 3 + 3, windows.AGG_WIDTH))
    m = mod.hopping_update(np.zeros(ts.size, np.int64), ts, np.ones(ts.size), 0.3, 0.1, state, out)
    m += mod.hopping_flush(np.inf, 0.3, state, out[m:])
    want = [(-0.2, 2.0), (-0.1, 4.0)] + [(b / 10, 6.0) for b in range(18)] + [(1.8, 4.0), (1.9, 2.0)]
    assert [(r[1], r[2]) for r in out[:m].tolist()] == want
    assert state[0, windows.S_LATE] == 0
    assert windows.hopping_slots(0.3, 0.1) == 3


def test_window_quantiles_join_tenth_of_a_second_windows():
    eng = Engine(0.1)
    eng.ensure_channels(1)
    ts = np.round(np.arange(0.0, 1.0, 0.05), 2)
    rows = eng.process(np.zeros(ts.size, np.int64), ts, np.arange(ts.size, dtype=np.float64))
    rows = np.vstack([rows, eng.flush_channels(np.zeros(1, np.int64))])
    assert rows[:, 1].tolist() == [k / 10 for k in range(10)] and rows[:, 2].tolist() == [2.0] * 10
    assert rows[:, -2].tolist() == [2.0 * k for k in range(10)]  # p50 present: the tables agree on starts


def test_aggregate_messages_of_tenth_of_a_second_windows_end_where_the_next_begins():
    """``end`` is the next window's start (0.3), not ``start + 0.1`` (0.30000000000000004)."""
    eng = Engine(0.1)
    eng.ensure_channels(1)
    ts = np.round(np.arange(0.0, 1.0, 0.05), 2)
    rows = eng.process(np.zeros(ts.size, np.int64), ts, np.ones(ts.size))
    rows = np.vstack([rows, eng.flush_channels(np.zeros(1, np.int64))])
    out = messages.aggregates(rows, [ChannelKey("s1", "temp", "C")], 0.1, TOPICS, "p-gw")
    assert [(m.fields["start"], m.fields["end"]) for m in out] == [(k / 10, (k + 1) / 10) for k in range(10)]
    assert windows.window_ends([1_700_000_000.0], 10.0) == [1_700_000_010.0]


def naive_windows(ticks: list[int], chan: list[int], val: list[float], w: int, h: int) -> dict:
    """Exact decimal windows, in whole milliseconds: ``(channel, b) -> values`` of every window
    ``[b * h, b * h + w)`` holding a reading."""
    got: dict[tuple[int, int], list[float]] = {}
    for k, c, x in zip(ticks, chan, val):
        for b in range(-(-(k - w + 1) // h), k // h + 1):
            got.setdefault((c, b), []).append(x)
    return got


def run_kernel(mod, ts, chan, val, w: float, h: float | None) -> tuple[np.ndarray, float]:
    n_ch = int(chan.max()) + 1 if chan.size else 1
    if h is None:
        state, out = mod.new_state(n_ch), np.zeros((chan.size + n_ch, windows.AGG_WIDTH))
        m = mod.tumbling_update(chan, ts, val, w, state, out)
        m += mod.tumbling_flush(np.inf, w, state, out[m:])
        return out[:m], state[:, windows.S_LATE].sum()
    k = windows.hopping_slots(w, h)
    state, out = mod.new_hopping_state(n_ch, w, h), np.zeros(((chan.size + n_ch) * k, windows.AGG_WIDTH))
    m = mod.hopping_update(chan, ts, val, w, h, state, out)
    m += mod.hopping_flush(np.inf, w, state, out[m:])
    return out[:m], state[:, windows.S_LATE].sum()


@st.composite
def decimal_streams(draw):
    """Window and hop in whole ms (hop None: tumbling); in-order readings on a ms grid, often on boundaries."""
    w = draw(st.integers(1, 2500))
    h = draw(st.one_of(st.none(), st.integers(max(1, w // 8), 2 * w)))
    n = draw(st.integers(1, 60))
    step = w if h is None else h
    steps = draw(st.lists(st.one_of(st.sampled_from([0, 1, step, w, 2 * step]), st.integers(0, 3 * w)),
                          min_size=n, max_size=n))
    base = draw(st.sampled_from([0, 1_700_000_000_000, 1_700_000_000_000 + 37]))
    ticks = (base + np.cumsum(steps)).tolist()
    chan = draw(st.lists(st.integers(0, 2), min_size=n, max_size=n))
    return w, h, ticks, chan


@settings(max_examples=60, deadline=None, derandomize=True)
@given(decimal_streams())
@example((100, None, [0, 50, 100, 150, 200, 250, 300, 350, 400], [0] * 9))
@example((300, 100, [0, 50, 100, 150, 200, 250, 300, 350, 400, 450, 500, 550, 600], [0] * 13))
def test_windows_match_exact_decimal_windows(stream):
    """Tumbling and hopping windows (Numba and pure Python) against exact windows in integer ms: the
    same windows, each with the same readings, the decimal start rounded once, nothing late."""
    w, h, ticks, chan_l = stream
    ts = np.array([k / 1000 for k in ticks])
    chan = np.array(chan_l, dtype=np.int64)
    val = np.arange(len(ticks), dtype=np.float64)
    want = naive_windows(ticks, chan_l, val.tolist(), w, w if h is None else h)
    hop = w if h is None else h
    for mod in (windows, W_PURE):
        rows, late = run_kernel(mod, ts, chan, val, w / 1000, None if h is None else h / 1000)
        assert late == 0
        got = {}
        for r in rows.tolist():
            b = round(Fraction(r[1]) * 1000 / hop)
            assert r[1] == b * hop / 1000
            got[(int(r[0]), b)] = (r[2], r[3], r[4], r[7], r[8])
        assert got == {key: (len(xs), min(xs), max(xs), xs[0], xs[-1]) for key, xs in want.items()}
    if h is None:
        for q in (quantiles, Q_PURE):
            state, out = q.new_window_state(int(chan.max()) + 1), np.zeros((len(ticks) + 3, 5))
            m = q.window_update(chan, ts, val, w / 1000, state, out)
            m += q.window_flush(np.inf, w / 1000, state, out[m:])
            assert sorted((r[0], r[1], r[2]) for r in out[:m].tolist()) == sorted(
                (float(c), b * w / 1000, float(len(xs))) for (c, b), xs in want.items())
