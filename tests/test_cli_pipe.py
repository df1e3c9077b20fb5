"""Every command piped into a reader that has gone (``edge-gateway status | head -3``, ``... | true``).

Python ignores SIGPIPE, so without care the interpreter's own flush of stdout at exit reports the closed
pipe as "Exception ignored ... BrokenPipeError" and exits 120, whatever the command meant to say.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def _run_into_closed_pipe(*args: str) -> subprocess.CompletedProcess:
    r, w = os.pipe()
    os.close(r)  # the reader is gone before the first write
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}  # buffered, as in a shell
    env["PYTHONPATH"] = str(REPO)
    try:
        return subprocess.run([sys.executable, "-m", "edge_gateway", *args], stdout=w, stderr=subprocess.PIPE,
                              env=env, cwd=REPO, timeout=60)
    finally:
        os.close(w)


@pytest.mark.parametrize("args", [
    ("--help",),
    ("config", "--help"),
    ("config", "validate", "configs/demo.yaml"),
    ("config", "get", "configs/demo.yaml", "broker.host"),
])
def test_a_closed_pipe_is_quiet_and_keeps_the_status(args):
    p = _run_into_closed_pipe(*args)
    assert (p.returncode, p.stderr) == (0, b"")


def test_a_failing_command_keeps_its_status_and_its_message(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("gateway:\n  id: x\nbroker:\n  port: seventy\n")
    p = _run_into_closed_pipe("config", "validate", str(bad))
    assert (p.returncode, p.stderr.decode()) == (
        2, f"edge-gateway: {bad}:4:9: broker.port: expected an integer, got a string 'seventy'\n")
