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
