"""The stall monitor names what blocks the event loop, once per stall, and says when it runs again."""

import asyncio
import logging
import time

from edge_gateway.stall import StallMonitor


def _block_the_loop_for(seconds: float) -> None:
    time.sleep(seconds)


async def _blocked_twice(monitor: StallMonitor) -> None:
    await asyncio.sleep(0.3)
    _block_the_loop_for(1.0)
    await asyncio.sleep(0.5)
    _block_the_loop_for(1.0)
    await asyncio.sleep(0.5)


def test_each_stall_logs_the_blocking_stack_once_and_the_recovery(caplog):
    caplog.set_level(logging.WARNING, logger="edge_gateway.stall")

    async def main():
        monitor = StallMonitor(asyncio.get_running_loop(), after=0.4, period=0.05).start()
        try:
            await asyncio.sleep(0.3)
            assert monitor.stalls == 0
            await _blocked_twice(monitor)
        finally:
            monitor.stop()
        return monitor.stalls

    assert asyncio.run(main()) == 2
    msgs = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert [lvl for lvl, _ in msgs] == ["ERROR", "WARNING", "ERROR", "WARNING"]
    for lvl, text in msgs[::2]:
        assert text.startswith("event loop blocked for ")
        assert "in _block_the_loop_for" in text and "in _blocked_twice" in text
        assert "thread stall-monitor" in text
    assert msgs[1][1] == msgs[3][1] == "event loop running again"


def test_a_busy_but_turning_loop_is_not_a_stall(caplog):
    caplog.set_level(logging.WARNING, logger="edge_gateway.stall")

    async def main():
        monitor = StallMonitor(asyncio.get_running_loop(), after=0.4, period=0.05).start()
        try:
            for _ in range(30):
                _block_the_loop_for(0.03)
                await asyncio.sleep(0)
        finally:
            monitor.stop()
        return monitor.stalls

    assert asyncio.run(main()) == 0
    assert caplog.records == []
