"""Gateway crashes: SIGKILLed 10 times during the flow and restarted; no committed seq goes missing.

After each kill the queue file is read (``meta.last_seq``): every seq committed
up to then must reach the persistent-session subscriber eventually, and seqs
keep increasing across restarts.
"""

from __future__ import annotations

import random
import signal
import time

import pytest

from support import GatewayProcess, Process, Subscriber, wait_for
from uplink_support import committed_first_seq, committed_last_seq, gateway_config, seq_report, simulator_args


@pytest.mark.slow
def test_ten_gateway_kills_lose_no_committed_message(broker, tmp_path):
    rng = random.Random(7031)
    sub = Subscriber(broker.port, "city/kill-gw/#", client_id="kill-sub").start()
    cfg = gateway_config(tmp_path, broker.port, "kill-gw", window=0.2)
    db = tmp_path / "state" / "queue.db"
    sim = None
    committed = []
    gw = None
    try:
        for i in range(11):
            gw = GatewayProcess(cfg, tmp_path / f"gateway-{i}.log").start()
            gw.wait_ready()
            if sim is None:
                sim = Process(simulator_args(tmp_path / "air-1.tty", rate=150, count=150 * 120))
                # the first kill must find something committed, however slow the simulator's start
                wait_for(lambda: committed_last_seq(db) >= committed_first_seq(db), 60, 0.05, "the first commit")
            if i == 10:
                break
            time.sleep(rng.uniform(0.5, 2.0))
            gw.stop(signal.SIGKILL)
            committed.append(committed_last_seq(db))
        time.sleep(1.5)
    finally:
        if sim:
            sim.stop()
        rc = gw.stop() if gw else None
    assert rc == 0, gw.log_text()[-3000:]
    final = committed_last_seq(db)
    first = committed_first_seq(db)
    wait_for(lambda: seq_report(sub, first)["max"] >= final, 15, what=f"seq {final} at the subscriber")
    rep = seq_report(sub, first)
    sub.stop()
    print(f"committed after each kill: {committed}; final {final}; duplicates {rep['duplicates']}")
    assert committed == sorted(committed) and committed[-1] > committed[0] >= first > 1_000_000_000_000
    assert rep["missing"] == [] and rep["max"] == final
    assert rep["in_order"], rep["disorder"][:10]
