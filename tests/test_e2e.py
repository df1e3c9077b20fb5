"""The walking skeleton end to end: pty simulator -> gateway subprocess -> Mosquitto -> subscriber."""

from __future__ import annotations

import math
import textwrap

import numpy as np

from drivers.serial_line import LineDecoder
from edge_gateway.analytics import ewma
from simulators.serial_line import scenario_lines
from support import GatewayProcess, Process, Subscriber, wait_for

SEED, T0, RATE, COUNT, WINDOW = 7, 1_700_000_000.0, 100.0, 500, 1.0
THRESHOLD, ALPHA, WARMUP = 3.0, 0.1, 20


def expected_from_scenario():
    """Aggregates and anomaly flags recomputed from the simulator's own scenario, without the gateway."""
    dec = LineDecoder(timestamp_field="ts")
    samples = [s for line in scenario_lines(SEED, T0, 1 / RATE, COUNT, timestamps=True) for s in dec.feed(line)[0]]
    aggs, events = {}, {}
    for name in ("pm25", "pm10", "noise_db"):
        pts = [(ts, v) for ch, v, ts in samples if ch == name]
        by_window: dict[float, list[float]] = {}
        for ts, v in pts:
            by_window.setdefault(math.floor(ts / WINDOW) * WINDOW, []).append(v)
        aggs[name] = by_window
        vals = np.array([v for _, v in pts])
        score = np.empty(len(vals))
        ewma.ewma_zscore.py_func(np.zeros(len(vals), dtype=np.int64), vals, ALPHA, float(WARMUP),
                                 ewma.new_state(1), score)
        events[name] = [pts[i] for i in np.nonzero(score > THRESHOLD)[0]]
    return aggs, events


def test_serial_reading_reaches_broker_exactly(broker, tmp_path):
    sub = Subscriber(broker.port, "city/e2e-gw/#").start()
    link = tmp_path / "air-1.tty"
    cfg = tmp_path / "gw.yaml"
    cfg.write_text(textwrap.dedent(f"""\
        gateway: {{id: e2e-gw, topic_prefix: city, state_dir: {tmp_path}/state, batch_interval_s: 0.05}}
        broker: {{host: 127.0.0.1, port: {broker.port}, keepalive_s: 5}}
        sensors:
          - id: air-1
            driver: serial_line
            options: {{port: {link}, format: kv, timestamp_field: ts, units: {{pm25: ug/m3}}}}
        windows: {{seconds: {WINDOW}, grace_s: 0.5}}
        detector: {{ewma_alpha: {ALPHA}, threshold: {THRESHOLD}, warmup: {WARMUP}}}
        """))
    gw = GatewayProcess(cfg, tmp_path / "gateway.log").start()
    sim = None
    try:
        gw.wait_ready()
        sim = Process(["-m", "simulators.serial_line", "--seed", str(SEED), "--rate", str(RATE), "--count",
                       str(COUNT), "--timestamps", "--t0", str(T0), "--link", str(link), "--batch", "10", "--wait-open"])
        assert sim.first_line == str(link)
        expected_aggs, expected_events = expected_from_scenario()
        n_aggs = sum(len(w) for w in expected_aggs.values())
        n_events = sum(len(e) for e in expected_events.values())
        assert n_aggs == 15
        wait_for(lambda: len(sub.of("agg")) >= n_aggs and len(sub.of("event")) >= n_events, 30,
                 what=f"{n_aggs} aggregates: {gw.log_text()[-2000:]}")
    finally:
        if sim:
            sim.stop()
        rc = gw.stop()
    assert rc == 0, gw.log_text()
    wait_for(lambda: any(m.data["state"] == "offline" for m in sub.snapshot() if m.topic.endswith("/status")),
             5, what="offline status")
    sub.stop()

    aggs = sub.of("agg")
    assert len(aggs) == n_aggs
    for a in aggs:
        assert a["gw"] == "e2e-gw" and a["sensor"] == "air-1"
        vals = expected_aggs[a["channel"]][a["start"]]
        assert a["end"] == a["start"] + WINDOW
        assert a["count"] == len(vals)
        assert (a["min"], a["max"], a["first"], a["last"]) == (min(vals), max(vals), vals[0], vals[-1])
        assert a["mean"] == np.float64(np.mean(vals)) or math.isclose(a["mean"], np.mean(vals), rel_tol=1e-12)
        assert math.isclose(a["std"], np.std(vals), rel_tol=1e-9, abs_tol=1e-12)
    assert {a["channel"] for a in aggs if a["channel"] == "pm25"} and all(
        a["unit"] == ("ug/m3" if a["channel"] == "pm25" else "") for a in aggs)
    assert sorted((a["channel"], a["start"]) for a in aggs) == sorted(
        (ch, start) for ch, w in expected_aggs.items() for start in w)

    events = sub.of("event")
    assert {e["type"] for e in events} <= {"anomaly"}
    assert sorted((e["channel"], e["start"], e["peak_value"]) for e in events) == sorted(
        (ch, ts, v) for ch, pts in expected_events.items() for ts, v in pts)

    seqs = [m.data["seq"] for m in sub.snapshot() if "/agg/" in m.topic or "/event/" in m.topic]
    assert sorted(set(seqs)) == list(range(1, n_aggs + n_events + 1))
    status = [m for m in sub.snapshot() if m.topic == "city/e2e-gw/status"]
    assert status[0].data["state"] == "online" and status[-1].data["state"] == "offline"
