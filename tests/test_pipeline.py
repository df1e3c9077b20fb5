"""The analytics stage in process: aggregates, events, idle flush, checkpoints, per-sensor detector settings."""

from __future__ import annotations

import dataclasses

import msgpack
import numpy as np

from edge_gateway import config, messages
from edge_gateway.analytics import windows
from edge_gateway.batcher import Batch, Batcher
from edge_gateway.pipeline import Pipeline
from edge_gateway.readings import Reading
from simulators import scenario as sc
from support import REPO

CFG = config.loads("""
gateway: {id: p-gw}
windows: {seconds: 10, grace_s: 2}
detector: {threshold: 0.9, params: {weights: [0, 1, 0, 0, 1, 1, 1, 0]}}
""")
TOPICS = messages.Topics("city", "p-gw")


def readings(n: int, spike_at: int | None = None) -> list[Reading]:
    rng = np.random.default_rng(5)
    vals = np.round(20 + rng.normal(0, 1, n), 2)
    if spike_at is not None:
        vals[spike_at] += 40
    return [Reading("s1", "temp", float(v), 1000.0 + k, "C") for k, v in enumerate(vals)]


def run(stream: list[Reading], cut: int | None = None, batch: int = 7):
    """Feed ``stream`` in batches; with ``cut``, restart from a checkpoint after that many readings."""
    batcher = Batcher()
    pipe = Pipeline(CFG, TOPICS, batcher)
    out = []
    for i in range(0, len(stream), batch):
        if cut is not None and i == cut:
            blob = pipe.checkpoint()
            batcher = Batcher()
            pipe = Pipeline(CFG, TOPICS, batcher)
            assert pipe.restore(blob) == 1
        for r in stream[i:i + batch]:
            batcher.add(r)
        out += pipe.process(batcher.drain(), now=0.0)
    return out, pipe, batcher


def test_aggregates_and_a_spike_event():
    out, _, _ = run(readings(95, spike_at=60))
    aggs = [m.fields for m in out if m.kind == messages.KIND_AGG]
    assert [a["start"] for a in aggs] == [1000.0 + 10 * k for k in range(9)]
    assert all(a["count"] == 10 and a["unit"] == "C" for a in aggs)
    assert aggs[6]["max"] == max(r.value for r in readings(95, spike_at=60)[60:70])
    events = [m.fields for m in out if m.kind == messages.KIND_EVENT]
    assert [(e["type"], e["state"], e["channel"], e["start"], e["detector"]) for e in events] == [
        ("anomaly", "open", "temp", 1060.0, "robust"), ("anomaly", "closed", "temp", 1060.0, "robust")]
    assert "end" not in events[0] and events[1]["end"] == 1060.0
    assert all(m.topic == "city/p-gw/event/s1" for m in out if m.kind == messages.KIND_EVENT)


def test_restart_through_a_checkpoint_changes_nothing():
    stream = readings(200, spike_at=150)
    whole, _, _ = run(stream)
    resumed, _, _ = run(stream, cut=98)
    assert [m.fields for m in resumed] == [m.fields for m in whole]


def quantile_stream() -> list[Reading]:
    """Window 1000: ten known readings; window 1010: 40 readings (past the exact buffer); then one to close it."""
    first = [7.0, 3.0, 9.0, 1.0, 5.0, 10.0, 2.0, 8.0, 6.0, 4.0]
    second = np.random.default_rng(3).permutation(np.arange(1.0, 41.0)).tolist()
    return ([Reading("s1", "temp", v, 1000.0 + k, "C") for k, v in enumerate(first)]
            + [Reading("s1", "temp", v, 1010.0 + k / 4, "C") for k, v in enumerate(second)]
            + [Reading("s1", "temp", 0.0, 1020.0, "C")])


def test_aggregates_carry_window_p50_p95():
    out, _, _ = run(quantile_stream())
    a, b = [m.fields for m in out if m.kind == messages.KIND_AGG]
    assert (a["start"], a["count"], a["p50"], a["p95"]) == (1000.0, 10, 5.0, 10.0)
    assert (b["start"], b["count"]) == (1010.0, 40)
    assert type(b["p50"]) is float and abs(b["p50"] - 20.0) <= 3.0 and abs(b["p95"] - 38.0) <= 3.0
    for cut in (7, 14, 35, 49):  # mid-window in both windows, before and after the P² start
        resumed, _, _ = run(quantile_stream(), cut=cut)
        assert [m.fields for m in resumed] == [m.fields for m in out]


def test_a_checkpoint_without_quantiles_still_loads():
    """A checkpoint from before p50/p95: the window open at the restart has none, later ones do."""
    stream = quantile_stream()
    batcher = Batcher()
    pipe = Pipeline(CFG, TOPICS, batcher)
    assert feed(pipe, batcher, stream[:14]) and pipe.engine.state()["q"].shape[0] == 1
    data = msgpack.unpackb(pipe.checkpoint())
    del data["arrays"]["win.q"]
    batcher = Batcher()
    pipe = Pipeline(CFG, TOPICS, batcher)
    assert pipe.restore(msgpack.packb(data)) == 1
    out = [m.fields for m in feed(pipe, batcher, stream[14:]) if m.kind == messages.KIND_AGG]
    assert [(a["start"], a["count"]) for a in out] == [(1010.0, 40)]
    assert "p50" not in out[0] and "p95" not in out[0]
    batcher.add(Reading("s1", "temp", 0.0, 1030.0, "C"))
    (last,) = pipe.process(batcher.drain(), now=0.0)
    assert (last.fields["start"], last.fields["count"], last.fields["p50"], last.fields["p95"]) == (1020.0, 1, 0.0, 0.0)


def test_idle_channel_window_closes_after_window_plus_grace():
    batcher = Batcher()
    pipe = Pipeline(CFG, TOPICS, batcher)
    for r in readings(5):
        batcher.add(r)
    assert pipe.process(batcher.drain(), now=100.0) == []
    assert pipe.process(batcher.drain(), now=111.9) == []
    (closed,) = pipe.process(batcher.drain(), now=112.0)
    assert closed.fields["count"] == 5 and closed.fields["start"] == 1000.0


def test_a_reading_after_the_idle_flush_does_not_make_a_second_aggregate():
    batcher = Batcher()
    pipe = Pipeline(CFG, TOPICS, batcher)
    stream = readings(4)
    for r in stream[:3]:
        batcher.add(r)
    assert pipe.process(batcher.drain(), now=100.0) == []
    (closed,) = pipe.process(batcher.drain(), now=112.0)
    assert (closed.fields["start"], closed.fields["count"]) == (1000.0, 3)
    batcher.add(stream[3])
    assert pipe.process(batcher.drain(), now=113.0) == []
    assert pipe.process(batcher.drain(), now=200.0) == []
    assert pipe.engine.state()["win"][0, windows.S_LATE] == 1


def test_a_channel_sending_only_nan_is_idle_for_its_window():
    batcher = Batcher()
    pipe = Pipeline(CFG, TOPICS, batcher)
    batcher.add(readings(1)[0])
    assert pipe.process(batcher.drain(), now=100.0) == []
    out = []
    for k in range(1, 13):
        batcher.add(Reading("s1", "temp", float("nan"), 1000.0 + k, "C"))
        out.append(pipe.process(batcher.drain(), now=100.0 + k))
    assert out[:11] == [[]] * 11
    assert [(m.fields["start"], m.fields["count"]) for m in out[11]] == [(1000.0, 1)]


TWO = """
gateway: {id: p-gw}
windows: {seconds: 10, grace_s: 2}
sensors:
  - {id: s1, driver: serial_line, options: {port: /dev/null}}
  - {id: s2, driver: serial_line, options: {port: /dev/null}}
detector:
  threshold: 0.9
  params: {weights: [0, 1, 0, 0, 1, 1, 1, 0]}
"""
S2_QUIET = "  sensors:\n    s2/temp: {params: {weights: [0, 0, 0, 0, 1, 1, 1, 0]}}\n"


def two_sensors(n: int, spike_at: int) -> list[Reading]:
    """``s1`` and ``s2`` read the same series, spike included."""
    return sorted(readings(n, spike_at) + [dataclasses.replace(r, sensor="s2") for r in readings(n, spike_at)],
                  key=lambda r: r.ts)


def test_an_infinite_reading_is_missing_and_the_channel_keeps_detecting():
    def stream(bad: float) -> list[Reading]:
        rs = readings(95, spike_at=60)
        rs[30] = dataclasses.replace(rs[30], value=bad)
        return rs

    nan_out, _, _ = run(stream(float("nan")))
    for bad in (float("inf"), float("-inf")):
        out, _, _ = run(stream(bad))
        assert [(m.topic, m.fields) for m in out] == [(m.topic, m.fields) for m in nan_out]
    aggs = [m.fields for m in nan_out if m.kind == messages.KIND_AGG]
    assert [a["count"] for a in aggs] == [10, 10, 10, 9, 10, 10, 10, 10, 10]
    assert [(m.fields["state"], m.fields["start"], m.fields["detector"]) for m in nan_out
            if m.kind == messages.KIND_EVENT] == [("open", 1060.0, "robust"), ("closed", 1060.0, "robust")]


def feed(pipe: Pipeline, batcher: Batcher, stream: list[Reading], batch: int = 7) -> list[messages.Message]:
    out = []
    for i in range(0, len(stream), batch):
        for r in stream[i:i + batch]:
            batcher.add(r)
        out += pipe.process(batcher.drain(), now=0.0)
    return out


def anomalies(out: list[messages.Message]) -> list[tuple]:
    """Closed anomaly events (each also announced while open when it outlived its batch)."""
    return [(m.fields["sensor"], m.fields["channel"], m.fields["start"], m.fields["detector"])
            for m in out if m.kind == messages.KIND_EVENT and m.fields["state"] == "closed"]


def test_a_channel_override_scores_that_channel_apart():
    cfg = config.loads(TWO + S2_QUIET)
    batcher = Batcher()
    pipe = Pipeline(cfg, TOPICS, batcher)
    out = feed(pipe, batcher, two_sensors(95, spike_at=60))
    assert anomalies(out) == [("s1", "temp", 1060.0, "robust")]
    assert pipe.settings_of(0).weights == (0.0, 1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 0.0)
    assert pipe.settings_of(1).weights == (0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 0.0)
    assert pipe.settings_of(1).event_threshold == 0.9


def test_each_detector_holds_rows_for_its_own_channels_only():
    """Review 16, bounds #10: a group tuned apart held a row for every channel (7.2 MB a group at 4,096)."""
    batcher = Batcher()
    pipe = Pipeline(config.loads(TWO + S2_QUIET), TOPICS, batcher)
    for i in range(500):
        batcher.index_of("s1", f"c{i}")
    batcher.index_of("s2", "temp")
    pipe.process(batcher.drain(), now=0.0)
    default, apart = pipe.detectors.detectors
    assert (default.n_channels, apart.n_channels) == (500, 1)
    assert {a.shape[0] for a in apart.state().values()} == {1}
    assert pipe.detectors.state()["novelty"].shape[0] == 501  # the checkpoint: a row per channel, as before


def test_a_detector_table_without_rows_in_the_checkpoint_makes_the_detectors_relearn():
    """A damaged checkpoint (a 0-d table) falls back like a table of another layout; it raised TypeError
    out of restore(), and the daemon then failed at every start (review 17, detector groups #1)."""
    import zlib

    cfg = config.loads(TWO + S2_QUIET)
    pipe = Pipeline(cfg, TOPICS, batcher := Batcher())
    feed(pipe, batcher, two_sensors(20, spike_at=15))
    data = msgpack.unpackb(pipe.checkpoint())
    data["arrays"]["det.events"] = [[], zlib.compress(np.float64(1.0).tobytes(), 1)]
    fresh = Pipeline(cfg, TOPICS, Batcher())
    assert fresh.restore(msgpack.packb(data)) == 2
    assert not fresh.detectors.state()["novelty"].any()  # relearning from zero


def test_restart_with_overrides_changes_nothing():
    cfg = config.loads(TWO + S2_QUIET)
    stream = two_sensors(200, spike_at=150)

    def run_through(cut: int | None) -> list[dict]:
        batcher = Batcher()
        pipe = Pipeline(cfg, TOPICS, batcher)
        first = feed(pipe, batcher, stream[:cut])
        if cut is not None:
            blob = pipe.checkpoint()
            batcher = Batcher()
            pipe = Pipeline(cfg, TOPICS, batcher)
            assert pipe.restore(blob) == 2
        return [m.fields for m in first + feed(pipe, batcher, stream[cut:] if cut else [])]

    whole = run_through(None)
    assert [(f["sensor"], f["state"], f["start"]) for f in whole if f.get("type") == "anomaly"] == [
        ("s1", "open", 1150.0), ("s1", "closed", 1150.0)]
    assert run_through(196) == whole


def test_dropping_an_override_keeps_what_the_channel_learned():
    """s2 learns under its override; without it, its next spike is scored at once (no new warm-up)."""
    batcher = Batcher()
    pipe = Pipeline(config.loads(TWO + "  sensors:\n    s2: {threshold: 1.0}\n"), TOPICS, batcher)
    stream = two_sensors(95, spike_at=60)
    assert anomalies(feed(pipe, batcher, stream[:100])) == []
    pipe.set_detector(config.loads(TWO).detector)
    assert anomalies(feed(pipe, batcher, stream[100:])) == [("s1", "temp", 1060.0, "robust"),
                                                            ("s2", "temp", 1060.0, "robust")]


def test_the_demo_noise_meter_reports_a_drift_inside_its_daily_range():
    """configs/demo.yaml on noise-1 as bench/reduction.py runs it: a day of learning, a clean hour, then
    the city block's +12 dB drift over 60 s, which stays inside the channel's day of 55 +- 8 dB."""
    scen = sc.load(str(REPO / "simulators" / "scenarios" / "city_block.yaml"))
    spec = scen.sensor("noise-1")
    (drift,) = [f for f in spec.faults if f.kind == "drift"]
    at = 90000 + drift.at
    spec = dataclasses.replace(spec, faults=(dataclasses.replace(drift, at=at),))
    t0 = 1_700_000_000.0
    n = at + 300
    vals = sc.values(spec, scen.seed, t0, 0, n)
    batcher = Batcher()
    pipe = Pipeline(config.load(REPO / "configs" / "demo.yaml"), TOPICS, batcher)
    chans = [batcher.index_of("noise-1", name, "dB(A)") for name in vals]
    chan = np.tile(np.array(chans, dtype=np.int64), n)
    ts = np.repeat(t0 + np.arange(n, dtype=np.float64), len(chans))
    val = np.stack(list(vals.values()), axis=1).ravel()
    out = []
    for i in range(0, chan.shape[0], 1200):
        out += pipe.process(Batch(chan[i:i + 1200], ts[i:i + 1200], val[i:i + 1200]), now=float(ts[i]))
    closed = [m.fields for m in out if m.kind == messages.KIND_EVENT and m.fields["state"] == "closed"]
    events = [(e["channel"], e["start"] - t0, e["end"] - t0, e["detector"]) for e in closed]
    # one event for the drift: novelty 14 s into the ramp (since the round-2 novelty defaults), then
    # CUSUM alarms at +22, +50 and +66 keep it open (event_close_after 30 on this sensor)
    assert [e for e in events if e[1] >= 86400] == [("noise_db", at + 14.0, at + 66.0, "novelty")]
    assert [e for e in events if e[3] == "cusum" and e[1] < 86400] == []
    assert pipe.settings_of(chans[0]).cusum_h == 10.0
