"""Review 4, L3: a reading's timestamp must be a time in epoch seconds before any kernel sees it.

The window and phase-of-day kernels floor timestamps to integers: beyond about 5e20 s Numba's int64 wraps
where Python's int does not, and a NaN or infinite stamp makes the pure-Python path raise while Numba
goes on with garbage. The daemon's batcher, the one sink of every driver, drops such readings, counts
them per sensor and logs the first of each sensor.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest

from edge_gateway.batcher import EPOCH_RANGE_S, Batcher
from edge_gateway.readings import Reading

BAD = [math.nan, math.inf, -math.inf, 0.0, -0.0, -1.0, -1e24, 1e11, 1.7e12, 1e24, 1e300]
GOOD = [1e-3, 1.0, 86400.0, 1.7e9, 99_999_999_999.0]


def test_epoch_range_is_the_serial_line_bound():
    from drivers.serial_line import LATEST_EPOCH_S

    assert EPOCH_RANGE_S == (0.0, LATEST_EPOCH_S)


@pytest.mark.parametrize("ts", BAD)
def test_a_reading_stamped_outside_the_epoch_range_is_dropped_and_counted(ts, caplog):
    b = Batcher()
    b.add(Reading("s", "x", 1.0, 1.7e9, "C"))
    with caplog.at_level(logging.WARNING, logger="edge_gateway.batcher"):
        b.add(Reading("s", "x", 2.0, ts, "C"))
        b.add(Reading("s", "y", 3.0, ts, "C"))  # no channel of its own either
        b.add(Reading("t", "x", 4.0, ts, "C"))
    b.add(Reading("s", "x", 5.0, 1.7e9 + 1, "C"))
    batch = b.drain()
    assert batch.val.tolist() == [1.0, 5.0] and batch.ts.tolist() == [1.7e9, 1.7e9 + 1]
    assert [k.channel for k in b.keys] == ["x"]
    assert b.bad_time == {"s": 2, "t": 1}
    assert b.total == 2
    logged = [r.getMessage() for r in caplog.records]
    assert len(logged) == 2  # once per sensor
    assert "sensor s: reading of 'y'" not in logged[0] and "sensor s" in logged[0] and "bad_time" in logged[0]
    assert "sensor t" in logged[1]


def test_a_reading_stamped_inside_the_epoch_range_passes():
    b = Batcher()
    for ts in GOOD:
        b.add(Reading("s", "x", 1.0, ts, "C"))
    assert b.drain().ts.tolist() == GOOD and b.bad_time == {}


def test_the_pipeline_never_sees_a_stamp_that_would_wrap():
    """Through the batcher, a far-future stamp that the future filter would let pass (three in a row with the
    same lead look like the gateway's clock being behind) no longer reaches the windows."""
    from edge_gateway import config, messages
    from edge_gateway.pipeline import Pipeline

    cfg = config.loads("gateway: {id: g}\nwindows: {seconds: 10}\n")
    b = Batcher()
    p = Pipeline(cfg, messages.Topics("c", "g"), b)
    for k in range(6):
        b.add(Reading("s", "x", float(k), 1e24 + k, "C"))
    for k in range(30):
        b.add(Reading("s", "x", float(k), 1.7e9 + k, "C"))
    msgs = p.process(b.drain(), now=1.7e9 + 30)
    starts = [m.fields["start"] for m in msgs if "start" in m.fields]
    assert starts and all(1.7e9 <= s < 1.7e9 + 30 for s in starts)
    assert b.bad_time == {"s": 6}
    assert np.isfinite(starts).all()


def test_bad_times_reach_the_status_json_prometheus_and_the_sensor_notes(tmp_path):
    from edge_gateway import config
    from edge_gateway.cmd_status import sensor_notes
    from edge_gateway.daemon import Gateway
    from edge_gateway.metrics import _collector

    cfg = config.loads(f"gateway: {{id: gw, state_dir: {tmp_path / 'state'}}}\n")
    gw = Gateway(cfg)
    gw.batcher.add(Reading("node", "x", 1.0, 1.7e12, "u"))  # milliseconds
    gw.batcher.add(Reading("node", "x", 1.0, 0.0, "u"))
    gw.batcher.add(Reading("line", "x", 1.0, 1.7e9, "u"))
    assert gw._sensor_counters() == {"node": {"bad_time": 2}}
    st = {"bad_time": 2}
    assert sensor_notes(st) == ["warning: 2 readings dropped, stamped outside epoch seconds 0 to 1e11 "
                                "(the sensor's clock not set, or milliseconds)"]
    families = {f.name: f for f in _collector(lambda: {"gateway": "gw", "sensors": {"node": st}}).collect()}
    assert {tuple(s.labels.values()): s.value for s in families["edge_gateway_sensor_errors"].samples
            if s.labels["kind"] == "bad_time"} == {("gw", "node", "bad_time"): 2.0}
