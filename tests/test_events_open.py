"""Anomaly events are announced when they open, not only when they close: a sensor stuck for hours is
reported while it is stuck. Exactly one ``open`` message per event, kept across a restart."""

from __future__ import annotations

import msgpack
import numpy as np

from edge_gateway import config, messages
from edge_gateway.batcher import Batcher
from edge_gateway.pipeline import Pipeline
from edge_gateway.readings import Reading

CFG = config.loads("""
gateway: {id: p-gw}
windows: {seconds: 60, grace_s: 2}
detector: {params: {weights: [0, 0, 0, 0, 1, 1, 1, 0], flat_min_run: 10}}
""")
TOPICS = messages.Topics("city", "p-gw")
STUCK_FROM, STUCK_TO = 100, 500  # readings [100, 500) repeat reading 100's value


def stuck_stream(n: int = 600) -> list[Reading]:
    vals = np.round(20 + np.random.default_rng(3).normal(0, 1, n), 3)
    vals[STUCK_FROM:STUCK_TO] = vals[STUCK_FROM]
    return [Reading("s1", "temp", float(v), 1000.0 + k, "C") for k, v in enumerate(vals)]


def run(stream: list[Reading], batch: int = 10, cut: int | None = None, drop_announced: bool = False):
    """Per batch, the anomaly messages it produced; with ``cut``, restart from a checkpoint there."""
    batcher = Batcher()
    pipe = Pipeline(CFG, TOPICS, batcher)
    per_batch = []
    for i in range(0, len(stream), batch):
        if i == cut:
            blob = pipe.checkpoint()
            if drop_announced:  # a checkpoint written before open events were announced
                data = msgpack.unpackb(blob)
                del data["arrays"]["announced"]
                blob = msgpack.packb(data)
            batcher = Batcher()
            pipe = Pipeline(CFG, TOPICS, batcher)
            assert pipe.restore(blob) == 1
        for r in stream[i:i + batch]:
            batcher.add(r)
        per_batch.append([m.fields for m in pipe.process(batcher.drain(), now=0.0)
                          if m.kind == messages.KIND_EVENT])
    return per_batch


def test_a_stuck_sensor_is_announced_while_stuck_and_closed_once_it_recovers():
    per_batch = run(stuck_stream())
    found = [(k, e["state"], e["start"], e.get("end"), e["detector"]) for k, evs in enumerate(per_batch) for e in evs]
    # the 10th repeat (reading 110) opens it, in the batch of readings 110-119; it stays open while the
    # sensor is stuck (last stuck reading 499) and closes 5 moving readings later, at reading 504
    assert found == [(11, "open", 1110.0, None, "flatline"), (50, "closed", 1110.0, 1499.0, "flatline")]
    assert per_batch[11][0]["peak_value"] == stuck_stream()[STUCK_FROM].value


def test_an_event_that_opens_and_closes_within_a_batch_is_sent_closed_only():
    evs = [e for b in run(stuck_stream(), batch=600) for e in b]
    assert [(e["state"], e["start"], e["end"]) for e in evs] == [("closed", 1110.0, 1499.0)]


def test_a_restart_while_open_does_not_announce_it_again():
    whole = run(stuck_stream())
    assert run(stuck_stream(), cut=300) == whole


def test_a_checkpoint_without_the_announced_column_announces_once_more():
    resumed = run(stuck_stream(), cut=300, drop_announced=True)
    found = [(k, e["state"], e["start"]) for k, evs in enumerate(resumed) for e in evs]
    assert found == [(11, "open", 1110.0), (30, "open", 1110.0), (50, "closed", 1110.0)]


# --- review 15 (analytics) #1, #3, #4, #10, #14: restarts, silence, clocks that step back -------------


def steady(n: int, t0: float, seed: int, channels: int = 2) -> list[Reading]:
    """``channels`` noisy 1 Hz channels: no guard has a reason to fire."""
    vals = np.round(20 + np.random.default_rng(seed).normal(0, 1, (n, channels)), 3)
    return [Reading("s1", f"c{j}", float(vals[k, j]), t0 + k, "C") for k in range(n) for j in range(channels)]


def events_of(out: list[messages.Message]) -> list[tuple]:
    return [(m.fields["channel"], m.fields["state"], m.fields["start"], m.fields.get("end"), m.fields["detector"])
            for m in out if m.kind == messages.KIND_EVENT]


def feed(pipe: Pipeline, batcher: Batcher, stream: list[Reading], batch: int = 20) -> list[tuple]:
    found = []
    for i in range(0, len(stream), batch):
        for r in stream[i:i + batch]:
            batcher.add(r)
        found += events_of(pipe.process(batcher.drain(), now=stream[min(i + batch, len(stream)) - 1].ts))
    return found


def test_a_restart_is_not_a_dropout_of_every_channel_but_a_real_gap_after_it_still_is():
    """#1: the gateway's own two minutes of downtime opened a ``dropout`` event on every channel."""
    before, after = steady(600, 1000.0, 1), steady(300, 1720.0, 2)  # readings resume 120 s after the last
    gap = [r for r in steady(200, 2020.0 + 60.0, 3)]  # then both channels fall silent for a minute
    uninterrupted = Pipeline(CFG, TOPICS, b := Batcher())
    assert [e[:2] + e[4:] for e in feed(uninterrupted, b, before + after)] == [("c0", "closed", "dropout"),
                                                                            ("c1", "closed", "dropout")]
    pipe = Pipeline(CFG, TOPICS, b1 := Batcher())
    assert feed(pipe, b1, before) == []
    resumed = Pipeline(CFG, TOPICS, b2 := Batcher())
    assert resumed.restore(pipe.checkpoint()) == 2
    assert feed(resumed, b2, after) == []
    assert [e[:3] + e[4:] for e in feed(resumed, b2, gap)] == [("c0", "closed", 2080.0, "dropout"),
                                                               ("c1", "closed", 2080.0, "dropout")]


def test_an_event_on_a_channel_that_goes_silent_or_sends_only_nan_is_closed():
    """#3: a sensor that died during an anomaly left its event open for good."""
    stream = stuck_stream()[:300]  # the flatline event opens at 1110 and is still open at the last reading, 1299
    opened, closed = ("temp", "open", 1110.0, None, "flatline"), ("temp", "closed", 1110.0, 1299.0, "flatline")
    pipe = Pipeline(CFG, TOPICS, batcher := Batcher())
    assert feed(pipe, batcher, stream) == [opened]
    assert events_of(pipe.process(batcher.drain(), now=1299.0 + 61.9)) == []  # windows.seconds + grace_s: 62
    assert events_of(pipe.process(batcher.drain(), now=1299.0 + 62.0)) == [closed]
    assert events_of(pipe.process(batcher.drain(), now=1299.0 + 600.0)) == []  # closed once
    nan = [Reading("s1", "temp", float("nan"), 1300.0 + k, "C") for k in range(100)]  # arriving as stamped
    pipe = Pipeline(CFG, TOPICS, batcher := Batcher())
    assert feed(pipe, batcher, stream + nan, batch=1) == [opened, closed]
    assert pipe.process(batcher.drain(), now=1399.0) == []


def test_a_reading_stamped_earlier_never_moves_an_event_end_before_its_start():
    """#4: a spike at 1050, then one stamped 1040: the event was closed with end 1040 < start 1050."""
    from edge_gateway.analytics import detectors
    from edge_gateway.analytics._pure import pure_twin
    from edge_gateway.analytics.chain import Detector, DetectorSettings

    ts = np.array([1000.0 + k for k in range(50)] + [1050.0, 1040.0, 1051.0, 1052.0, 1053.0, 1054.0, 1055.0])
    val = np.array([20.0 + 0.1 * (k % 7) for k in range(50)] + [100.0, 100.0, 20.0, 20.1, 20.2, 20.3, 20.4])
    chan = np.zeros(ts.size, np.int64)
    for pure in (False, True):
        det = Detector(DetectorSettings(range_hi=50.0, weights=(0, 0, 0, 0, 1, 0, 0, 0)), pure=pure)
        _, closed = det.process(chan, ts, val)
        assert [(e["start"], e["end"], e["detector"]) for e in closed] == [(1050.0, 1050.0, "range")]
    for mod in (detectors, pure_twin(detectors)):
        state, out = np.zeros((1, detectors.EVENT_WIDTH)), np.zeros((4, 6))
        score = (val > 50.0).astype(np.float64)
        m = mod.events_update(chan, ts, val, score, np.zeros(ts.size), 0.5, 5.0, state, out)
        assert out[:m, 1:3].tolist() == [[1050.0, 1050.0]]


def test_a_checkpoint_whose_detector_tables_do_not_fit_closes_the_events_it_announced(caplog):
    """#10: the restore swallowed the error; the event announced open before the restart was never closed."""
    stream = stuck_stream()
    pipe = Pipeline(CFG, TOPICS, batcher := Batcher())
    assert feed(pipe, batcher, stream[:300]) == [("temp", "open", 1110.0, None, "flatline")]
    data = msgpack.unpackb(pipe.checkpoint())
    del data["arrays"]["det.novelty"]  # as if an upgrade had changed its layout
    resumed = Pipeline(CFG, TOPICS, b2 := Batcher())
    with caplog.at_level("WARNING", logger="edge_gateway.pipeline"):
        assert resumed.restore(msgpack.packb(data)) == 1
    assert [r.getMessage() for r in caplog.records] == [
        "detector state not restored (state 'novelty' missing (saved by an older version?)): detectors start "
        "learning again; 1 announced event(s) closed"]
    found = feed(resumed, b2, stream[300:])
    # closed at once; the still-stuck sensor is a new event for the fresh detectors (10 repeats: 1310)
    assert found == [("temp", "closed", 1110.0, 1110.0, "none"), ("temp", "open", 1310.0, None, "flatline"),
                     ("temp", "closed", 1310.0, 1499.0, "flatline")]


def test_the_deadband_heartbeat_survives_a_clock_stepped_back():
    """#14: after the clock stepped back a day, a channel that did not move was silent for a day."""
    from edge_gateway.analytics import filters
    from edge_gateway.analytics._pure import pure_twin

    ts = np.array([0.0, 30.0, 60.0, 90.0, -86400.0, -86370.0, -86340.0, -86280.0])
    for mod in (filters, pure_twin(filters)):
        state, emit = np.zeros((1, 3)), np.zeros(ts.size, dtype=np.bool_)
        mod.deadband(np.zeros(ts.size, np.int64), ts, np.ones(ts.size), 0.5, 60.0, state, emit)
        assert emit.tolist() == [True, False, True, False, True, False, True, True]


def test_a_slowly_read_sensor_is_not_silent_between_its_readings():
    """Review of the stop's change #2: a sensor read every 30 s with 10 s windows had each normal gap close its
    open event, so one sustained fault became an open/closed pair per reading."""
    cfg = config.loads("gateway: {id: p-gw}\nwindows: {seconds: 10, grace_s: 1}\ndetector: {params: {range_hi: 100}}\n")
    for period in (1.0, 30.0):
        pipe = Pipeline(cfg, TOPICS, batcher := Batcher(), wall_clock=lambda: 1e12)
        found, t = [], 1000.0
        for k in range(40):  # readings 10..29 above range_hi
            batcher.add(Reading("bins-1", "fill", 150.0 if 10 <= k < 30 else 50.0, t, "%"))
            for r in range(int(period)):  # a round a second, as the daemon runs
                found += [(m.fields["state"], m.fields["start"], m.fields.get("end"))
                          for m in pipe.process(batcher.drain(), now=t + r) if m.kind == messages.KIND_EVENT]
            t += period
        first, last = 1000.0 + 10 * period, 1000.0 + 29 * period
        assert found == [("open", first, None), ("closed", first, last)], (period, found)
