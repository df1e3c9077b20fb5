"""The stall monitor names what blocks the event loop, once per stall, and says when it runs again."""

import asyncio
import logging
import signal
import time

from edge_gateway.stall import StallMonitor
from ops_support import serial_sensor, write_config
from support import GatewayProcess, free_port


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


def test_watchdog_abort_leaves_every_threads_stack_in_the_log(tmp_path):
    """systemd's watchdog ends a hung gateway with SIGABRT; the journal then holds where each thread was,
    which the stall monitor cannot give when native code holds the GIL."""
    cfg = write_config(tmp_path, broker_port=free_port(), sensors=serial_sensor("air-1", tmp_path / "none.tty"))
    gw = GatewayProcess(cfg, tmp_path / "gw.log").start()
    gw.wait_ready()
    rc = gw.stop(signal.SIGABRT, timeout=20)
    text = gw.log_text()
    assert rc == -signal.SIGABRT, text[-2000:]
    assert "Fatal Python error: Aborted" in text, text[-2000:]
    dump = text[text.index("Fatal Python error: Aborted"):]
    assert "Thread 0x" in dump and "(most recent call first)" in dump, dump
    assert "stall.py" in dump, "the stall monitor's thread is in the dump"
    assert "edge_gateway/cmd_run.py" in dump, "the main thread is in the dump"


async def _await_for_ever(never: asyncio.Event) -> None:
    await never.wait()


async def test_a_stuck_round_names_its_await_once_and_turns_unhealthy(caplog):
    """The loop turns but the rounds stop: one report with the chain of awaits, then unhealthy, then healthy."""
    from edge_gateway.stall import ProgressMonitor

    caplog.set_level(logging.WARNING, logger="edge_gateway.stall")
    loop = asyncio.get_running_loop()
    rounds = {"last": None}
    mon = ProgressMonitor(loop, lambda: rounds["last"], after=0.3, stuck=0.6, period=0.05).start()
    never = asyncio.Event()
    stuck = loop.create_task(_await_for_ever(never), name="stuck-round")
    try:
        await asyncio.sleep(0.5)
        assert mon.stalls == 0 and mon.healthy(), "no round yet (warm-up): never a stall"
        rounds["last"] = loop.time()
        await asyncio.sleep(0.45)
        assert mon.stalls == 1 and mon.healthy()
        await asyncio.sleep(0.3)
        assert mon.stalls == 1 and not mon.healthy()
        rounds["last"] = loop.time()
        await asyncio.sleep(0.15)
        assert mon.healthy()
    finally:
        mon.stop()
        never.set()
        await stuck
    reports = [r.getMessage() for r in caplog.records if "has not completed a round" in r.getMessage()]
    assert len(reports) == 1
    assert "task stuck-round:" in reports[0] and "in _await_for_ever" in reports[0], reports[0]
    assert [r.getMessage() for r in caplog.records if r.getMessage() == "pipeline running again"] == [
        "pipeline running again"]
