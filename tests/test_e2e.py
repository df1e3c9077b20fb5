"""The walking skeleton end to end: pty simulator -> gateway subprocess -> Mosquitto -> subscriber."""

from __future__ import annotations

import math
import textwrap

import numpy as np

from drivers.serial_line import LineDecoder
from edge_gateway.analytics import quantiles
from edge_gateway.analytics.chain import Detector
from edge_gateway.config import DetectorSection
from edge_gateway.detector_groups import detector_settings
from simulators.serial_line import scenario_lines
from uplink_support import committed_first_seq
from support import GatewayProcess, Process, Subscriber, wait_for

SEED, T0, RATE, COUNT, WINDOW = 7, 1_700_000_000.0, 100.0, 500, 1.0
SPIKES = ((260, "pm25", 60.0), (420, "noise_db", -30.0))
THRESHOLD = 0.9
WEIGHTS = (0.0, 1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 0.0)  # robust z-score and the guards: 500 samples is no NAB warm-up


def expected_from_scenario():
    """Aggregates and anomaly events recomputed from the simulator's own scenario, without the gateway.

    The detector runs in this process over all readings at once; the gateway sees
    them in many small batches: the kernels are streaming, so events must be equal.
    """
    dec = LineDecoder(timestamp_field="ts")
    samples = [s for line in scenario_lines(SEED, T0, 1 / RATE, COUNT, timestamps=True, spikes=SPIKES) for s in dec.feed(line)[0]]
    aggs = {}
    names = ("pm25", "pm10", "noise_db")
    for name in names:
        by_window: dict[float, list[float]] = {}
        for ch, v, ts in samples:
            if ch == name:
                by_window.setdefault(math.floor(ts / WINDOW) * WINDOW, []).append(v)
        aggs[name] = by_window
    det = Detector(detector_settings(DetectorSection(threshold=THRESHOLD, params={"weights": list(WEIGHTS)})))
    chan = np.array([names.index(ch) for ch, _, _ in samples], dtype=np.int64)
    _, found = det.process(chan, np.array([ts for *_, ts in samples]), np.array([v for _, v, _ in samples]))
    events = [(names[e["channel"]], e["start"], e["end"], e["peak_value"], e["detector"]) for e in found]
    return aggs, events


def window_quantiles(vals: list[float]) -> tuple[float, float]:
    """p50/p95 of one window as the gateway's streaming sketch computes them (order matters past 32 readings)."""
    st = quantiles.new_state(1)
    quantiles.p2_update(np.zeros(len(vals), np.int64), np.array(vals), st)
    out = np.zeros((1, 2))
    quantiles.p2_estimate(st, out)
    return float(out[0, 0]), float(out[0, 1])


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
        detector: {{threshold: {THRESHOLD}, params: {{weights: {list(WEIGHTS)}}}}}
        """))
    gw = GatewayProcess(cfg, tmp_path / "gateway.log").start()
    sim = None
    try:
        gw.wait_ready()
        sim = Process(["-m", "simulators.serial_line", "--seed", str(SEED), "--rate", str(RATE), "--count",
                       str(COUNT), "--timestamps", "--t0", str(T0), "--link", str(link), "--batch", "10", "--wait-open", "--backpressure",
                       *[f"--spike={k}:{ch}:{m}" for k, ch, m in SPIKES]])
        assert sim.first_line == str(link)
        expected_aggs, expected_events = expected_from_scenario()
        n_aggs = sum(len(w) for w in expected_aggs.values())
        n_events = len(expected_events)
        assert [(ch, v) for ch, _, _, v, _ in sorted(expected_events)] == [("noise_db", 14.0), ("pm25", 70.1)]
        assert n_aggs == 15
        wait_for(lambda: len(sub.of("agg")) >= n_aggs
                 and sum(e["state"] == "closed" for e in sub.of("event")) >= n_events, 30,
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
        assert (a["p50"], a["p95"]) == window_quantiles(vals) and a["min"] <= a["p50"] <= a["p95"] <= a["max"]
    assert {a["channel"] for a in aggs if a["channel"] == "pm25"} and all(
        a["unit"] == ("ug/m3" if a["channel"] == "pm25" else "") for a in aggs)
    assert sorted((a["channel"], a["start"]) for a in aggs) == sorted(
        (ch, start) for ch, w in expected_aggs.items() for start in w)

    events = sub.of("event")
    assert {e["type"] for e in events} <= {"anomaly"}
    closed = [e for e in events if e["state"] == "closed"]
    assert sorted((e["channel"], e["start"], e["end"], e["peak_value"], e["detector"]) for e in closed) == sorted(
        expected_events)
    # an event that outlived the batch it opened in was announced once, before it closed
    opened = [e for e in events if e["state"] == "open"]
    announced = [(e["channel"], e["start"]) for e in opened]
    assert len(announced) == len(set(announced)) and set(announced) <= {(ch, start) for ch, start, *_ in expected_events}
    assert all(o["seq"] < c["seq"] for o in opened for c in closed if (c["channel"], c["start"]) == (o["channel"], o["start"]))
    n_events = len(events)

    seqs = [m.data["seq"] for m in sub.snapshot() if "/agg/" in m.topic or "/event/" in m.topic]
    first = committed_first_seq(tmp_path / "state" / "queue.db")  # a new queue's seqs start at the clock in ms
    assert sorted(set(seqs)) == list(range(first, first + n_aggs + n_events)) and first > 1_000_000_000_000
    status = [m for m in sub.snapshot() if m.topic == "city/e2e-gw/status"]
    assert status[0].data["state"] == "online" and status[-1].data["state"] == "offline"
