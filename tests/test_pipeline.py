"""The analytics stage in process: aggregates, events, idle flush, and a restart through a checkpoint."""

from __future__ import annotations

import numpy as np

from edge_gateway import config, messages
from edge_gateway.batcher import Batcher
from edge_gateway.pipeline import Pipeline
from edge_gateway.readings import Reading

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
    assert [(e["type"], e["channel"], e["start"], e["detector"]) for e in events] == [
        ("anomaly", "temp", 1060.0, "robust")]
    assert all(m.topic == "city/p-gw/event/s1" for m in out if m.kind == messages.KIND_EVENT)


def test_restart_through_a_checkpoint_changes_nothing():
    stream = readings(200, spike_at=150)
    whole, _, _ = run(stream)
    resumed, _, _ = run(stream, cut=98)
    assert [m.fields for m in resumed] == [m.fields for m in whole]


def test_idle_channel_window_closes_after_window_plus_grace():
    batcher = Batcher()
    pipe = Pipeline(CFG, TOPICS, batcher)
    for r in readings(5):
        batcher.add(r)
    assert pipe.process(batcher.drain(), now=100.0) == []
    assert pipe.process(batcher.drain(), now=111.9) == []
    (closed,) = pipe.process(batcher.drain(), now=112.0)
    assert closed.fields["count"] == 5 and closed.fields["start"] == 1000.0
