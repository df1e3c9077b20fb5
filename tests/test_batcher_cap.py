"""A device names its own channels (SenML); one sensor must not be able to grow the gateway without end."""

from __future__ import annotations

import logging

from drivers.base import DriverStats
from edge_gateway.batcher import Batcher
from edge_gateway.metrics import Telemetry, _collector
from edge_gateway.readings import Reading


def test_channels_over_the_cap_are_dropped_counted_and_logged_once(caplog):
    b = Batcher(max_channels_per_sensor=3)
    with caplog.at_level(logging.WARNING, logger="edge_gateway.batcher"):
        for i in range(6):
            b.add(Reading("node", f"c{i}", float(i), 100.0 + i))
        b.add(Reading("node", "c1", 9.0, 110.0))  # a known channel still passes
        b.add(Reading("other", "x", 1.0, 111.0))  # the cap is per sensor
    assert [(k.sensor, k.channel) for k in b.keys] == [("node", "c0"), ("node", "c1"), ("node", "c2"),
                                                        ("other", "x")]
    assert b.refused == {"node": 3}
    batch = b.drain()
    assert batch.chan.tolist() == [0, 1, 2, 1, 3]
    assert batch.val.tolist() == [0.0, 1.0, 2.0, 9.0, 1.0]
    assert [r.getMessage() for r in caplog.records] == [
        "sensor node: more than 3 channels; readings of new channels are dropped until channels silent for "
        "3600 s make room (first: 'c3')"]


def test_refused_channels_are_in_the_sensors_status():
    class D:
        sensor_id = "node"
        name = "coap"
        stats = DriverStats()

    counters = {"node": {"channels_refused": 7, "channels_forgotten": 2}}
    out = Telemetry(lambda: 10.0, sensor_counters=lambda: counters).sensors([D()], 0.0)
    assert (out["node"]["channels_refused"], out["node"]["channels_forgotten"]) == (7, 2)
    families = {f.name: f for f in _collector(lambda: {"gateway": "gw", "sensors": out}).collect()}
    assert {tuple(s.labels.values()): s.value for s in families["edge_gateway_sensor_channels"].samples} == {
        ("gw", "node", "refused"): 7.0, ("gw", "node", "forgotten"): 2.0}
