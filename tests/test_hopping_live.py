"""Hopping windows in the running pipeline (``windows.hop_s``): config, aggregates, checkpoints, crash marks.

The kernels are checked against naive code in test_analytics_kernels.py; here a live :class:`Pipeline` is
driven as the daemon drives it, and every aggregate it publishes is compared with a naive model that
spells the window rules out reading by reading.
"""

from __future__ import annotations

import math
import zlib

import msgpack
import numpy as np
import pytest

from edge_gateway import config, messages, reload
from edge_gateway.analytics import hopping, quantiles, windows
from edge_gateway.analytics._pure import pure_twin
from edge_gateway.analytics.engine import REWIND_AFTER, Engine
from edge_gateway.batcher import Batcher
from edge_gateway.pipeline import Pipeline
from edge_gateway.readings import Reading

TOPICS = messages.Topics("city", "gw")
BASE = """
gateway: {id: gw}
windows: {seconds: %s, grace_s: 2%s}
detector: {threshold: 0.9, params: {weights: [0, 1, 0, 0, 1, 1, 1, 0]}}
"""


def cfg(seconds, hop=None):
    return config.loads(BASE % (seconds, "" if hop is None else f", hop_s: {hop}"))


# --- config ---------------------------------------------------------------------------------------------

def test_hop_s_loads_and_defaults_to_tumbling():
    assert cfg(10, 2.5).windows.hop_s == 2.5
    assert cfg(10).windows.hop_s is None
    assert config.loads("gateway: {id: g}\nwindows: {seconds: 10, hop_s: null}\n").windows.hop_s is None
    assert cfg(60, 1).windows.hop_s == 1.0  # 60 windows overlap: the most allowed
    assert cfg(21, 0.35).windows.hop_s == 0.35  # seconds / 60 itself, though 21 / 0.35 is 60.00000000000001


def test_hopping_aggregates_say_their_hop_and_tumbling_ones_do_not():
    def aggs(conf):
        b = Batcher()
        p = Pipeline(conf, TOPICS, b, wall_clock=lambda: 2e9)
        for t in np.arange(1000.0, 1031.0):
            b.add(Reading("s0", "t", 1.0, float(t), "C"))
        return [(m.fields["start"], m.fields.get("hop")) for m in p.process(b.drain(), now=0.0)
                if m.kind == messages.KIND_AGG]

    assert aggs(cfg(10, 5)) == [(995.0, 5.0), (1000.0, 5.0), (1005.0, 5.0), (1010.0, 5.0), (1015.0, 5.0),
                                (1020.0, 5.0)]
    assert aggs(cfg(10)) == [(1000.0, None), (1010.0, None), (1020.0, None)]


@pytest.mark.parametrize("hop,why", [
    ("0", "must be positive (leave it out, or set it to seconds, for tumbling windows)"),
    ("-2", "must be positive (leave it out, or set it to seconds, for tumbling windows)"),
    ("12", "must be at most seconds (10): windows would leave gaps"),
    ("0.1", "must be at least seconds / 60 (0.166667): at most 60 windows may overlap"),
    ("'2'", "expected a number, got a string '2'"),
    (".nan", "expected a finite number, got .nan"),
])
def test_a_bad_hop_s_is_an_error_at_its_line(hop, why):
    with pytest.raises(config.ConfigError) as exc:
        config.loads(f"gateway: {{id: g}}\nwindows:\n  seconds: 10\n  hop_s: {hop}\n", "site.yaml")
    assert str(exc.value) == f"site.yaml:4:10: windows.hop_s: {why}"


def test_a_hop_that_does_not_divide_seconds_is_a_warning():
    """Its windows have no subset that tiles time, so the queue cannot roll them up in an outage."""
    def warned(seconds, hop):
        return [text for key, text in config.warnings_of(cfg(seconds, hop)) if key == "windows.hop_s"]

    assert warned(10, 3) == ["3 does not divide seconds (10): in a long broker outage the queue cannot thin these "
                             "windows to ones that tile time, so it drops the oldest instead of rolling them up "
                             "(docs/uplink.md)"]
    assert warned(10, 2.5) == warned(10, 10) == warned(0.3, 0.1) == warned(21, 0.35) == []


def test_changing_hop_s_needs_a_restart():
    p = reload.plan(cfg(10), cfg(10, 2))
    assert not p.ok and p.restart_required == ("windows",)
    assert p.restart_changes == (("windows.hop_s", None, 2.0),)


# --- the naive model -----------------------------------------------------------------------------------

class Naive:
    """Hopping windows spelled out: window b is [b * hop, b * hop + w); a reading joins every window holding
    it whose end is past the channel's newest time (its newest reading, or the end of its newest window
    closed); a reading with such a closed window is counted late once. A reading first closes the
    channel's windows ending at or before it, oldest first; an idle flush closes all, channel by channel."""

    def __init__(self, w: float, hop: float) -> None:
        self.w, self.hop = w, hop
        self.open: dict[int, dict[float, list[float]]] = {}
        self.newest: dict[int, float] = {}
        self.late: dict[int, int] = {}
        self.rows: list[tuple[int, float, list[float]]] = []

    def _close(self, c: int, limit: float) -> None:
        wins = self.open.setdefault(c, {})
        for s in sorted(s for s in wins if s + self.w <= limit):
            self.rows.append((c, s, wins.pop(s)))
            self.newest[c] = max(self.newest.get(c, -math.inf), s + self.w)

    def add(self, c: int, t: float, x: float) -> None:
        if math.isnan(x):
            return
        self._close(c, t)
        newest = self.newest[c] = max(self.newest.get(c, -math.inf), t)
        late = False
        b = math.floor(t / self.hop)
        while b * self.hop + self.w > t:
            if b * self.hop + self.w <= newest:
                late = True
            else:
                self.open[c].setdefault(b * self.hop, []).append(x)
            b -= 1
        if late:
            self.late[c] = self.late.get(c, 0) + 1

    def flush(self, channels) -> None:
        for c in channels:
            self._close(c, math.inf)


def quantile(xs: list[float], p: float) -> float:
    """p50/p95 as the tumbling windows compute them: exact nearest rank up to ``Q_EXACT`` readings, then P²."""
    if len(xs) <= quantiles.Q_EXACT:
        return sorted(xs)[math.ceil(p * len(xs)) - 1]
    st = quantiles.new_state(1)
    quantiles.p2_update(np.zeros(len(xs), np.int64), np.array(xs), st)
    out = np.zeros((1, 2))
    quantiles.p2_estimate(st, out)
    return float(out[0, 0 if p == 0.5 else 1])


def expected(naive: Naive, keys: list[tuple[str, str, str]]) -> list[dict]:
    out = []
    for c, s, xs in naive.rows:
        sensor, channel, unit = keys[c]
        out.append({"gw": "gw", "sensor": sensor, "channel": channel, "unit": unit, "start": s, "end": s + naive.w,
                    "count": len(xs), "min": min(xs), "max": max(xs), "mean": float(np.mean(xs)),
                    "std": float(np.std(xs)), "first": xs[0], "last": xs[-1], "hop": naive.hop,
                    "p50": quantile(xs, 0.5), "p95": quantile(xs, 0.95)})
    return out


def stream() -> list[list[Reading]]:
    """Batches of two sensors: ``a/t`` at 4 Hz (40 readings a 10 s window: past the exact quantile buffer),
    ``b/h`` irregular with missing values, a reading out of order inside its open windows, one late for
    some of its windows and one late for all."""
    rng = np.random.default_rng(11)
    a = [Reading("a", "t", float(np.round(rng.normal(20, 2), 2)), 1000.0 + k / 4, "C") for k in range(200)]
    bt = np.round(1000.0 + np.cumsum(rng.uniform(0.2, 1.9, 40)), 3)
    b = [Reading("b", "h", float(np.round(rng.normal(50, 5), 1)), float(t), "%") for t in bt]
    b[7] = Reading("b", "h", math.nan, b[7].ts, "%")
    b.insert(12, Reading("b", "h", 1.5, b[11].ts - 0.4, "%"))  # out of order, its windows still open
    b.insert(25, Reading("b", "h", 99.0, b[24].ts - 3.1, "%"))  # some of its windows closed: late, folded elsewhere
    b.insert(30, Reading("b", "h", -7.0, b[29].ts - 15.0, "%"))  # every window closed: late
    merged = sorted(a + b, key=lambda r: r.ts)
    for src in (b[12], b[25], b[30]):  # out of order as they arrive: right after the reading they follow
        merged.remove(src)
        merged.insert(merged.index(b[b.index(src) - 1]) + 1, src)
    return [merged[i:i + 9] for i in range(0, len(merged), 9)]


def drive(conf, batches, cut: int | None = None, marks_too: bool = False):
    """Feed the batches (``now`` 0), then an idle round that flushes every open window; with ``cut``, restart
    from a checkpoint taken before batch ``cut``. Returns the messages and the last pipeline."""
    b = Batcher()
    p = Pipeline(conf, TOPICS, b, wall_clock=lambda: 2e9)
    out = []
    for i, batch in enumerate(batches):
        if i == cut:
            blob, marks = p.checkpoint(), p.take_marks()
            p = Pipeline(conf, TOPICS, b := Batcher(), wall_clock=lambda: 2e9)
            assert p.restore(blob, marks if marks_too else None) > 0
        for r in batch:
            b.add(r)
        out += p.process(b.drain(), now=0.0)
    early = p.process(b.drain(), now=conf.windows.seconds + conf.windows.grace_s - 0.5)
    assert not [m for m in early if m.kind == messages.KIND_AGG]  # an idle window waits seconds + grace_s
    out += p.process(b.drain(), now=conf.windows.seconds + conf.windows.grace_s)
    return out, p, b


def naive_run(w, hop, batches) -> tuple[Naive, list[tuple[str, str, str]]]:
    naive, keys = Naive(w, hop), []
    for batch in batches:
        for r in batch:
            k = (r.sensor, r.channel, r.unit)
            if k not in keys:
                keys.append(k)
            naive.add(keys.index(k), r.ts, r.value)
    naive.flush(range(len(keys)))
    return naive, keys


def assert_same(got: list[dict], want: list[dict]) -> None:
    assert [(g["sensor"], g["start"]) for g in got] == [(w["sensor"], w["start"]) for w in want]
    for g, w in zip(got, want):
        assert g.keys() == w.keys()
        assert {k: g[k] for k in g if k not in ("mean", "std")} == {k: w[k] for k in w if k not in ("mean", "std")}
        assert g["mean"] == pytest.approx(w["mean"], rel=1e-12, abs=1e-12)
        assert g["std"] == pytest.approx(w["std"], rel=1e-12, abs=1e-12)


@pytest.mark.parametrize("w,hop", [(10, 2.5), (5, 2), (4, 1)])
def test_a_live_pipeline_sends_exactly_the_naive_hopping_aggregates(w, hop):
    batches = stream()
    out, p, _ = drive(cfg(w, hop), batches)
    naive, keys = naive_run(w, hop, batches)
    got = [m.fields for m in out if m.kind == messages.KIND_AGG]
    assert len(got) == len(naive.rows) > 40
    assert any(len(xs) > quantiles.Q_EXACT for _, _, xs in naive.rows) == (w == 10)  # P² past the exact buffer
    assert_same(got, expected(naive, keys))
    assert all(m.topic == f"city/gw/agg/{m.fields['sensor']}" for m in out if m.kind == messages.KIND_AGG)
    late = p.channel_counters()
    assert late[("b", "h")]["late"] == naive.late.get(1, 0) >= 2 and late[("a", "t")]["late"] == 0
    assert not p.engine.open_mask().any()


def test_hop_s_equal_to_seconds_is_tumbling_byte_for_byte():
    batches = stream()
    tumbling, p1, _ = drive(cfg(10), batches)
    same, p2, _ = drive(cfg(10, 10), batches)
    assert [messages.encode(m.fields, 1) for m in same] == [messages.encode(m.fields, 1) for m in tumbling]
    assert p2.engine.hop_s is None and "hop_s" not in msgpack.unpackb(p2.checkpoint())
    assert p1.take_marks() == p2.take_marks()


@pytest.mark.parametrize("cut", [1, 5, 6, 17, 30])
def test_a_checkpoint_round_trip_mid_window_sends_the_same_bytes(cut):
    conf, batches = cfg(10, 2.5), stream()
    whole, _, _ = drive(conf, batches)
    resumed, _, _ = drive(conf, batches, cut=cut)
    assert [messages.encode(m.fields, 1) for m in resumed] == [messages.encode(m.fields, 1) for m in whole]
    resumed, _, _ = drive(conf, batches, cut=cut, marks_too=True)  # marks of what was sent: nothing dropped
    assert [messages.encode(m.fields, 1) for m in resumed] == [messages.encode(m.fields, 1) for m in whole]


def test_the_checkpoint_holds_the_hopping_tables_and_their_geometry():
    _, p, _ = drive(cfg(10, 2.5), stream()[:4])
    data = msgpack.unpackb(p.checkpoint())
    assert (data["window_s"], data["hop_s"]) == (10.0, 2.5)
    assert {"win.hop", "win.hopq", "win.behind", "win.rewinds"} <= set(data["arrays"])
    assert not {"win.win", "win.q"} & set(data["arrays"])


# --- crash marks ------------------------------------------------------------------------------------------

def reading(k: int) -> Reading:
    return Reading("s0", "t", 20.0 + (k % 3) * 0.1, float(k), "C")


def crash_and_resume(conf, ckpt_after: int, crash_after: int, with_marks: bool = True):
    """As test_crash_marks: ticks of 5 readings from 1000, a checkpoint after the tick starting at
    ``ckpt_after``, everything up to reading ``crash_after`` committed with its marks, then a new pipeline."""
    b = Batcher()
    p = Pipeline(conf, TOPICS, b, wall_clock=lambda: 2e9)
    committed, blob, marks = [], None, None
    for tick, k0 in enumerate(range(1000, crash_after + 1, 5)):
        for k in range(k0, k0 + 5):
            b.add(reading(k))
        out = p.process(b.drain(), now=float(tick))
        if out:
            committed += out
            marks = p.take_marks() or marks
        if k0 == ckpt_after:
            blob = p.checkpoint()
    p2 = Pipeline(conf, TOPICS, b2 := Batcher(), wall_clock=lambda: 2e9)
    assert p2.restore(blob, marks if with_marks else None) == 1
    after = []
    for tick, k0 in enumerate(range(crash_after + 1, 1120, 5)):
        for k in range(k0, min(k0 + 5, 1120)):
            b2.add(reading(k))
        after += p2.process(b2.drain(), now=100.0 + tick)
    after += p2.process(b2.drain(), now=200.0)
    return [m.fields for m in committed if m.kind == messages.KIND_AGG], [
        m.fields for m in after if m.kind == messages.KIND_AGG]


@pytest.mark.parametrize("ckpt_after", [1040, 1045, 1050])
def test_after_a_crash_no_hopping_window_is_sent_twice(ckpt_after):
    committed, after = crash_and_resume(cfg(10, 2), ckpt_after, 1069)
    starts = [f["start"] for f in committed + after]
    assert len(starts) == len(set(starts))
    # reading 1069 closed the windows up to [1058, 1068); [1060, 1070) was open at the crash and gets no reading
    # after it, the next ones only the readings from 1070 on
    assert [f["start"] for f in committed][-1] == 1058.0 and 1060.0 not in starts
    assert [(f["start"], f["count"]) for f in after[:5]] == [(1062.0, 2), (1064.0, 4), (1066.0, 6), (1068.0, 8),
                                                             (1070.0, 10)]
    assert sorted(starts) == [s for s in np.arange(992.0, 1120.0, 2.0).tolist() if s != 1060.0]


def test_without_the_marks_the_crash_sends_hopping_windows_twice():
    """The test above can fail: this is what the marks guard against."""
    committed, after = crash_and_resume(cfg(10, 2), 1045, 1069, with_marks=False)
    sent = {f["start"] for f in committed}
    assert sorted(f["start"] for f in after if f["start"] in sent) == [1040.0, 1042.0, 1044.0, 1046.0, 1048.0]


# --- restarts with other windows ----------------------------------------------------------------------------

def checkpoint_after(conf, last: int):
    p = Pipeline(conf, TOPICS, b := Batcher(), wall_clock=lambda: 2e9)
    for k in range(1000, last + 1):
        b.add(reading(k))
    out = p.process(b.drain(), now=0.0)
    return p, out, p.checkpoint(), p.take_marks()


def resume(conf, blob, marks, first: int, last: int):
    p = Pipeline(conf, TOPICS, b := Batcher(), wall_clock=lambda: 2e9)
    assert p.restore(blob, marks) == 1
    for k in range(first, last + 1):
        b.add(reading(k))
    out = p.process(b.drain(), now=1.0)
    return p, [(m.fields["start"], m.fields["end"], m.fields["count"]) for m in out if m.kind == messages.KIND_AGG]


def test_tumbling_to_hopping_carries_the_open_window_over_and_counts_nothing_late(caplog):
    _, _, blob, marks = checkpoint_after(cfg(10), 1061)
    with caplog.at_level("INFO"):
        p, aggs = resume(cfg(10, 5), blob, marks, 1062, 1080)
    # the tumbling window [1060, 1070) open at the restart is a window of the new grid too: it goes on there,
    # sent once with all 10 readings; [1055, 1065), new, holds the readings from the restart on
    assert aggs == [(1055.0, 1065.0, 3), (1060.0, 1070.0, 10), (1065.0, 1075.0, 10), (1070.0, 1080.0, 10)]
    assert p.engine.late_counts().tolist() == [0.0]
    assert ("windows changed from 10 s windows to 10 s windows every 5 s: of the windows open at the restart, "
            "1 go on on the new grid, 0 closed on the old grid, 0 already sent dropped") in caplog.text


def test_hopping_to_another_hop_and_back_to_tumbling():
    hp, _, blob, marks = checkpoint_after(cfg(10, 5), 1061)
    assert hp.engine.open_mask().tolist() == [True]
    p, aggs = resume(cfg(10, 2), blob, marks, 1062, 1072)
    # open at the restart: [1055, 1065), not on the 2 s grid, closed with its 5 s grid end; [1060, 1070) goes on
    assert aggs[0] == (1055.0, 1065.0, 7)
    assert aggs[1:] == [(1054.0, 1064.0, 2), (1056.0, 1066.0, 4), (1058.0, 1068.0, 6), (1060.0, 1070.0, 10),
                        (1062.0, 1072.0, 10)]
    blob, marks = p.checkpoint(), p.take_marks()
    p, aggs = resume(cfg(10), blob, marks, 1073, 1090)
    assert aggs[:4] == [(1064.0, 1074.0, 9), (1066.0, 1076.0, 7), (1068.0, 1078.0, 5), (1072.0, 1082.0, 1)]
    assert aggs[4:] == [(1070.0, 1080.0, 10), (1080.0, 1090.0, 10)] and p.engine.late_counts().tolist() == [0.0]


def test_a_checkpoint_from_before_behind_and_rewinds_still_loads():
    conf = cfg(10, 2.5)
    _, _, blob, _ = checkpoint_after(conf, 1031)
    data = msgpack.unpackb(blob)
    del data["arrays"]["win.behind"], data["arrays"]["win.rewinds"]
    _, aggs = resume(conf, msgpack.packb(data), None, 1032, 1040)
    assert aggs == [(1022.5, 1032.5, 10), (1025.0, 1035.0, 10), (1027.5, 1037.5, 10), (1030.0, 1040.0, 10)]


def test_hopping_tables_of_another_shape_are_dropped_with_a_warning(caplog):
    _, _, blob, _ = checkpoint_after(cfg(10, 2.5), 1031)
    data = msgpack.unpackb(blob)
    other = windows.new_hopping_state(1, 10.0, 5.0)  # 2 slots, not the 4 that 10 s every 2.5 s needs
    data["arrays"]["win.hop"] = [list(other.shape), zlib.compress(other.tobytes())]
    with caplog.at_level("WARNING"):
        _, aggs = resume(cfg(10, 2.5), msgpack.packb(data), None, 1032, 1045)
    assert "window state not restored (hopping tables of 2 slots, not 4)" in caplog.text
    # the windows open at the restart are lost; the new ones hold the readings from 1032 on
    assert aggs == [(1022.5, 1032.5, 1), (1025.0, 1035.0, 3), (1027.5, 1037.5, 6), (1030.0, 1040.0, 8),
                    (1032.5, 1042.5, 10), (1035.0, 1045.0, 10)]


# --- time going back, idle channels -----------------------------------------------------------------------

@pytest.mark.parametrize("hop", [None, 2.5])
def test_a_rewind_in_progress_and_the_rewind_count_survive_a_restart(hop):
    """Review: ``Engine.state()`` saved neither the late readings in a row toward a rewind nor the rewinds."""
    conf = cfg(10, hop)
    p = Pipeline(conf, TOPICS, b := Batcher(), wall_clock=lambda: 2e9)

    def feed(pipe, batcher, *ts):
        for t in ts:
            batcher.add(Reading("s0", "t", 1.0, t, "C"))
        return pipe.process(batcher.drain(), now=0.0)

    feed(p, b, *np.arange(5000.0, 5030.0))
    feed(p, b, 1000.0, 1001.0, 1002.0)  # a clock step back: 3 late, far behind
    assert p.rewind_counts() == {"s0": 1}
    feed(p, b, *np.arange(1003.0, 1030.0))
    feed(p, b, 100.0, 101.0)  # two toward the next rewind
    blob = p.checkpoint()
    p2 = Pipeline(conf, TOPICS, b2 := Batcher(), wall_clock=lambda: 2e9)
    assert p2.restore(blob) == 1
    assert p2.rewind_counts() == {"s0": 1}
    out = feed(p2, b2, 102.0)  # the third in a row
    assert p2.rewind_counts() == {"s0": 2} and p2.engine.rewound.tolist() == [0]
    assert [m.fields["start"] for m in out if m.kind == messages.KIND_AGG]  # the open windows closed
    starts = [m.fields["start"] for m in feed(p2, b2, *np.arange(103.0, 120.0)) if m.kind == messages.KIND_AGG]
    assert starts and min(starts) >= 92.5  # windows afresh at the new time


def test_an_idle_hopping_channel_is_flushed_then_forgotten():
    conf = cfg(10, 5)
    p = Pipeline(conf, TOPICS, b := Batcher(), wall_clock=lambda: 2e9)
    for k in range(10):
        b.add(Reading("old", "t", float(k), 1000.0 + k, "C"))
        b.add(Reading("keep", "t", float(k), 1000.0 + k, "C"))
    p.process(b.drain(), now=0.0)
    b.add(Reading("keep", "t", 1.0, 1011.0, "C"))
    out = p.process(b.drain(), now=12.0)  # "old" idle for seconds + grace_s: its open windows closed
    assert [(m.fields["sensor"], m.fields["start"], m.fields["count"]) for m in out if m.kind == messages.KIND_AGG] == [
        ("keep", 1000.0, 10), ("old", 1000.0, 10), ("old", 1005.0, 5)]
    assert p.engine.open_mask().tolist() == [False, True]
    assert [k.sensor for k in p.forget_idle({"old"}, now=100.0, idle_s=50.0)] == ["old"]
    assert p.engine.n_channels == 1 and p.engine.open_mask().tolist() == [True]
    b.add(Reading("keep", "t", 2.0, 1016.0, "C"))
    out = p.process(b.drain(), now=101.0)
    assert [(m.fields["sensor"], m.fields["start"], m.fields["count"]) for m in out if m.kind == messages.KIND_AGG] == [
        ("keep", 1005.0, 6)]


# --- the quantile kernel ------------------------------------------------------------------------------------

def test_the_hopping_quantile_kernel_and_its_pure_twin_agree_with_the_window_contents():
    rng = np.random.default_rng(4)
    n = 600
    chan = rng.integers(0, 3, n).astype(np.int64)
    ts = 100.0 + np.sort(rng.uniform(0, 60, n))
    ts[rng.integers(0, n, 12)] -= 7.0  # some late
    val = rng.normal(0, 1, n)
    val[rng.integers(0, n, 10)] = np.nan
    eng = Engine(6.0, hop_s=1.5)
    eng.ensure_channels(3)
    rows = np.concatenate([eng.process(chan, ts, val), eng.flush_channels(np.arange(3))])
    assert not np.isnan(rows[:, 9:]).any()  # every window has its quantiles
    outs = []
    for mod in (hopping, pure_twin(hopping)):
        st = mod.new_state(3, 6.0, 1.5)
        out = np.zeros((n * 4 + 12, 5))
        m = mod.window_update(chan, ts, val, 6.0, 1.5, st, out)
        m += mod.window_flush(np.inf, st, out[m:])
        outs.append(out[:m])
    np.testing.assert_array_equal(outs[0], outs[1])
    np.testing.assert_array_equal(outs[0][:, :3], rows[:, :3])  # the same windows, as many readings
    naive = Naive(6.0, 1.5)
    for c, t, x in zip(chan.tolist(), ts.tolist(), val.tolist()):
        naive.add(c, t, x)
    naive.flush(range(3))
    want = [(c, s, len(xs), quantile(xs, 0.5), quantile(xs, 0.95)) for c, s, xs in naive.rows]
    assert [tuple(r) for r in outs[0].tolist()] == want
    assert eng.late_counts().tolist() == [float(naive.late.get(c, 0)) for c in range(3)]
    assert REWIND_AFTER == 3


def test_the_daemons_status_says_which_windows_it_runs(tmp_path):
    from edge_gateway.daemon import Gateway

    conf = config.loads(f"gateway: {{id: gw, state_dir: {tmp_path}}}\nwindows: {{seconds: 10, hop_s: 5}}\n")
    assert Gateway(conf).snapshot()["windows"] == {"seconds": 10.0, "hop_s": 5.0, "grace_s": 2.0}
