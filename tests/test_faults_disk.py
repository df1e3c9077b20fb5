"""A size-limited queue during an outage: roll up, then drop by policy, and report the exact count.

The gateway runs against a broker that is down while the flow fills a small
queue (``max_bytes``); when the broker returns, the subscriber must account
for every seq: delivered (alone or inside a rolled-up message's
``merged_seqs``) or counted in the ``dropped`` event.
"""

from __future__ import annotations

import json
import signal
import time

from support import Broker, GatewayProcess, Process, Subscriber, wait_for
from uplink_support import committed_first_seq, committed_last_seq, gateway_config, seq_report, simulator_args


def test_small_queue_rolls_up_drops_and_reports_exact_count(tmp_path):
    broker = Broker(tmp_path / "broker").start()
    sub = Subscriber(broker.port, "city/full-gw/#", client_id="full-sub").start()
    broker.stop(signal.SIGTERM)
    cfg = gateway_config(tmp_path, broker.port, "full-gw", window=0.1,
                         queue="max_bytes: 4096, high_water: 0.5, rollup_factor: 2")
    gw = GatewayProcess(cfg, tmp_path / "gateway.log").start()
    sim = None
    db = tmp_path / "state" / "queue.db"
    try:
        gw.wait_ready()
        first = committed_first_seq(db)
        sim = Process(simulator_args(tmp_path / "air-1.tty", rate=300, count=300 * 5))
        wait_for(lambda: sim.proc.poll() is not None, 30, what="simulator done")
        time.sleep(0.8)
        assert gw.proc.poll() is None  # still running
        broker.start()
        time.sleep(0.5)
        wait_for(lambda: any(d.get("type") == "dropped" for d in sub.of("event")), 20, what="dropped event")
        target = committed_last_seq(db)
        wait_for(lambda: seq_report(sub, first)["max"] >= target, 20, what=f"seq {target}")
    finally:
        if sim:
            sim.stop()
        rc = gw.stop()
    assert rc == 0, gw.log_text()[-2000:]
    final = committed_last_seq(db)
    wait_for(lambda: seq_report(sub, first)["max"] >= final, 10, what="final")
    rep = seq_report(sub, first)
    sub.stop()
    broker.close()
    reports = [d for d in sub.of("event") if d.get("type") == "dropped"]
    dropped = sum(d["count"] for d in reports)
    status = json.loads((tmp_path / "state" / "last-run.json").read_text())["uplink"]
    assert status["rolled_up"] > 0  # resolution was lost before anything was dropped
    assert dropped > 0 and len(rep["missing"]) == dropped  # exact: every gap is counted
    assert status["dropped"]["count"] == dropped and status["dropped_unreported"] == 0
    lo, hi = min(r["first_seq"] for r in reports), max(r["last_seq"] for r in reports)
    assert all(lo <= s <= hi for s in rep["missing"])
    assert sum(d["agg"] for d in reports) > 0
    for d in sub.of("agg"):
        if "merged_seqs" in d:
            assert d["seq"] == d["merged_seqs"][0] and d["seq_last"] == d["merged_seqs"][-1]
