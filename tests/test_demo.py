"""`make demo` (``python -m edge_gateway.demo``): a hang-up or SIGTERM stops everything it started, in order.

Review 15 (operations) #5: an SSH session that dropped left the gateway and Mosquitto running,
with nothing left to stop them.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from support import REPO, wait_for


def group_members(pgid: int) -> list[str]:
    """Command lines of the live (not zombie) processes of process group ``pgid``."""
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) == pgid and fields[0] != "Z":
                out.append((d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"))
        except (OSError, IndexError, ValueError):
            continue
    return out


def test_a_hang_up_stops_the_demo_and_everything_it_started(tmp_path):
    """The demo runs until it is hung up; then it stops the gateway cleanly, prints its summary with every
    published aggregate received (exit 0), and leaves no process of its group behind."""
    log = tmp_path / "demo.log"
    conf = tmp_path / "run" / "mosquitto.conf"
    with open(log, "wb") as out:
        demo = subprocess.Popen([sys.executable, "-m", "edge_gateway.demo", "--run-dir", str(tmp_path / "run"),
                                 "--seconds", "600"], cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"}, start_new_session=True)
    try:
        wait_for(lambda: "demo: gateway running after" in log.read_text(), 180, 0.2, "the demo's gateway")
        wait_for(lambda: "  agg   #" in log.read_text(), 60, 0.2, "an aggregate")
        started = group_members(demo.pid)
        assert len(started) == 3 and sum("edge_gateway run" in c for c in started) == 1, started
        assert len(brokers(conf)) == 1  # in a session of its own, out of reach of the terminal's Ctrl-C
        demo.send_signal(signal.SIGHUP)
        rc = demo.wait(90)
        text = log.read_text()
        assert rc == 0, text[-3000:]
        assert "result: OK, every published aggregate arrived" in text, text[-3000:]
        assert group_members(demo.pid) == [] and brokers(conf) == []
        # stopped in order, the gateway before the broker: a clean DISCONNECT, so no will and no warning
        assert "(the will:" not in text and "the broker closed the connection" not in text, text[-3000:]
        assert "  status offline\n" in text, text[-3000:]
    finally:
        try:
            os.killpg(demo.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        for pid in brokers(conf):
            os.kill(pid, signal.SIGKILL)


def brokers(conf: Path) -> list[int]:
    """PIDs of the live broker processes started with config file ``conf``."""
    out = []
    for d in Path("/proc").iterdir():
        try:
            if d.name.isdigit() and str(conf).encode() in (d / "cmdline").read_bytes() \
                    and (d / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
                out.append(int(d.name))
        except (OSError, IndexError):
            continue
    return out


def test_events_and_status_read_as_sentences():
    from edge_gateway.demo import event_text, status_text

    t = 1_796_153_464.1
    hm = time.strftime("%H:%M:%S", time.localtime(t))
    hm2 = time.strftime("%H:%M:%S", time.localtime(t + 29))
    assert event_text({"sensor": "bins-1", "type": "anomaly", "state": "open", "peak_value": 36.9,
                       "peak_score": 0.8116331197509925, "channel": "bin2_fill", "unit": "%", "detector": "flatline",
                       "start": t}) == f"bins-1/bin2_fill anomaly open   {hm}  peak 36.9 %  score 0.81  (flatline)"
    assert event_text({"sensor": "bins-1", "type": "anomaly", "state": "closed", "peak_value": 36.9, "peak_score": 0.7,
                       "channel": "bin2_fill", "unit": "%", "detector": "flatline", "start": t, "end": t + 29}) == \
        f"bins-1/bin2_fill anomaly closed {hm}-{hm2}  peak 36.9 %  score 0.70  (flatline)"
    assert event_text({"gw": "g", "seq": 9, "sensor": "air-1", "type": "link_gap", "start": t, "end": t + 29,
                       "reason": "/dev/x: the port closed"}) == f"air-1 link_gap {hm}-{hm2} (29.0 s): /dev/x: the port closed"
    assert event_text({"sensor": "gateway", "type": "clock_step", "step_s": 3600.0, "at": t}) == \
        f"gateway clock_step: step_s 3600.0, at {hm}"
    assert status_text({"gw": "g", "seq": 5, "state": "online", "uptime_s": 88.5,
                        "counts": {"readings": 1080, "aggregates": 113, "events": 1},
                        "queue": {"depth": 0}, "link": "up"}) == \
        "online, up 88 s, 1080 readings, 113 aggregates, 1 events, queue 0, link up"
    assert status_text({"gw": "g", "seq": 7, "state": "online"}) == "online"
    assert status_text({"gw": "g", "seq": -1, "state": "offline"}) == \
        "offline (the will: the broker lost the gateway's connection)"
