"""Unplug/replug: the pty behind a configured symlink goes away and comes back.

The real driver runs under the real Supervisor. The device keeps its own clock:
sample ``k`` is due at ``k / RATE``; while unplugged (samples A..B-1) what it
measures is lost. Readings must resume, one LinkGap must be reported, and the
lost readings must be exactly the samples of the time away times the rate.
"""

from __future__ import annotations

import asyncio
import time

import pytest
from driver_fixtures import running, wait_until, write_all  # noqa: F401

from drivers.pms5003 import Pms5003Driver, Pms5003Options
from drivers.serial_line import LineOptions, SerialLineDriver
from edge_gateway.supervisor import Backoff, Supervisor
from simulators.pms5003 import scenario_frames
from simulators.pty_port import PtyPort
from simulators.serial_line import scenario_lines

RATE = 50.0
INTERVAL = 1.0 / RATE
N, A, B = 80, 30, 55  # unplugged for samples A..B-1
SEED = 3


def _device(kind: str, link: str, t0: float):
    if kind == "line":
        samples = list(scenario_lines(SEED, t0, INTERVAL, N, "kv", timestamps=True))
        driver = SerialLineDriver("dev", LineOptions(port=link, timestamp_field="ts"), None)
    else:
        samples = list(scenario_frames(SEED, t0, INTERVAL, N))
        driver = Pms5003Driver("dev", Pms5003Options(port=link), None)
    return samples, driver


@pytest.mark.parametrize("kind", ["line", "pms5003"])
async def test_replug_resumes_and_loses_exactly_the_time_away(tmp_path, kind):
    link = str(tmp_path / "dev.tty")
    t0 = round(time.time(), 3)
    samples, driver = _device(kind, link, t0)
    out, gaps = [], []
    driver.sink = out.append
    port = PtyPort(link, nonblocking=True)
    sup = Supervisor(gaps.append, Backoff(initial_s=0.05, max_s=0.2), seed=7)
    sup.start(driver)
    loop = asyncio.get_running_loop()
    try:
        assert await wait_until(lambda: driver.stats.connects == 1)
        start = loop.time()
        for k in range(N):
            await asyncio.sleep(max(0.0, start + k * INTERVAL - loop.time()))
            if k == A:
                assert await wait_until(lambda: len(out) == 3 * A)
                last_before = driver.stats.last_reading_ts
                port.close()
                unplugged_at = time.time()
            if A <= k < B:
                continue
            if k == B:
                replugged_at = time.time()
                port = PtyPort(link, nonblocking=True)
                assert await wait_until(lambda: driver.stats.connects == 2, timeout=10)
            write_all(port, samples[k])
        assert await wait_until(lambda: len(out) == 3 * (N - (B - A)), timeout=10)
        await asyncio.sleep(0.1)
    finally:
        await sup.stop()
        port.close()

    assert len(out) == 3 * (N - (B - A))
    if kind == "line":
        got = sorted({r.ts for r in out})
        sent = [round(t0 + k * INTERVAL, 6) for k in range(N)]
        assert got == sent[:A] + sent[B:]
        away_s = sent[B] - sent[A - 1] - INTERVAL
        lost = N - len(got)
        assert lost == round(away_s * RATE) == B - A
    assert len(gaps) == 1
    gap = gaps[0]
    assert gap.sensor == "dev" and gap.reason
    assert gap.start == last_before < unplugged_at
    assert gap.end >= replugged_at
    assert driver.stats.link_errors >= 1 and driver.stats.connects == 2
