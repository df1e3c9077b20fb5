"""Helpers shared by the driver and simulator tests: bounded waits, running a driver, ptys."""

from __future__ import annotations

import asyncio
import contextlib
import time

import pytest

from drivers.base import Driver
from simulators.pty_port import PtyPort


async def wait_until(cond, timeout: float = 5.0, step: float = 0.01) -> bool:
    """Poll ``cond()`` until true or ``timeout`` seconds passed; returns its last value."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            return bool(cond())
        await asyncio.sleep(step)
    return True


@contextlib.asynccontextmanager
async def running(driver: Driver):
    """Run ``driver.run()`` as a task for the body; cancel it and let it close its link after."""
    task = asyncio.create_task(driver.run())
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task


def by_channel(readings) -> dict[str, list]:
    out: dict[str, list] = {}
    for r in readings:
        out.setdefault(r.channel, []).append(r)
    return out


@pytest.fixture
def pty():
    """A fresh pty pair whose master the test writes to; closed after the test."""
    port = PtyPort(nonblocking=True)
    yield port
    port.close()


def write_all(port: PtyPort, data: bytes) -> None:
    """Write every byte to a nonblocking pty (the tests write far less than its buffer)."""
    view = memoryview(data)
    for _ in range(10_000):
        if not view:
            return
        n = port.try_write(view)
        view = view[n:]
        if n == 0:
            time.sleep(0.001)
    raise AssertionError("pty buffer stayed full")
