"""`make demo` (``python -m edge_gateway.demo``): a hang-up or SIGTERM stops everything it started.

Review 15 (operations) #5: an SSH session that dropped left the gateway and Mosquitto running,
with nothing left to stop them.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
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
    with open(log, "wb") as out:
        demo = subprocess.Popen([sys.executable, "-m", "edge_gateway.demo", "--run-dir", str(tmp_path / "run"),
                                 "--seconds", "600"], cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"}, start_new_session=True)
    try:
        wait_for(lambda: "demo: gateway running after" in log.read_text(), 180, 0.2, "the demo's gateway")
        wait_for(lambda: "  agg   #" in log.read_text(), 60, 0.2, "an aggregate")
        started = group_members(demo.pid)
        assert len(started) == 4 and sum("edge_gateway run" in c for c in started) == 1, started
        demo.send_signal(signal.SIGHUP)
        rc = demo.wait(90)
        text = log.read_text()
        assert rc == 0, text[-3000:]
        assert "result: OK, every published aggregate arrived" in text, text[-3000:]
        assert group_members(demo.pid) == []
    finally:
        try:
            os.killpg(demo.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
