"""The systemd notify protocol against real Unix datagram sockets, and the loop-driven watchdog."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import pytest

from edge_gateway import sdnotify
from ops_support import NotifyReceiver, write_config
from support import GatewayProcess, wait_for


def test_address_forms_and_watchdog_interval():
    assert sdnotify.socket_address("/run/systemd/notify") == "/run/systemd/notify"
    assert sdnotify.socket_address("@abc") == b"\0abc"
    assert sdnotify.watchdog_interval({}) is None
    assert sdnotify.watchdog_interval({"WATCHDOG_USEC": "30000000"}) == 15.0
    assert sdnotify.watchdog_interval({"WATCHDOG_USEC": "0"}) is None
    assert sdnotify.watchdog_interval({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": str(os.getpid())}) == 1.0
    assert sdnotify.watchdog_interval({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "1"}, pid=2) is None
    n = sdnotify.Notifier({})
    assert not n.enabled and n("READY=1") is False


@pytest.mark.parametrize("form", ["path", "abstract"])
def test_datagrams_reach_path_and_abstract_sockets(tmp_path, form):
    if form == "path":
        address = env_value = str(tmp_path / "notify.sock")
    else:
        name = f"edge-gateway-test-{os.getpid()}-{time.monotonic_ns()}"
        address, env_value = b"\0" + name.encode(), "@" + name
    rx = NotifyReceiver(address)
    n = sdnotify.Notifier({"NOTIFY_SOCKET": env_value})
    try:
        assert n.send("READY=1") and n("STATUS=warming analytics kernels")
        wait_for(lambda: len(rx.got) == 2, 5, what="two datagrams")
        assert rx.messages() == ["READY=1", "STATUS=warming analytics kernels"]
    finally:
        n.close()
        rx.close()


def test_daemon_ready_after_warm_watchdog_pings_and_stopping(tmp_path):
    """The real daemon under a fake systemd: STATUS, READY=1 once the control socket is up, pings, STOPPING."""
    rx = NotifyReceiver(str(tmp_path / "notify.sock"))
    cfg = write_config(tmp_path)
    gw = GatewayProcess(cfg, tmp_path / "gw.log", env={"NOTIFY_SOCKET": str(tmp_path / "notify.sock"),
                                                       "WATCHDOG_USEC": "200000"}).start()
    try:
        wait_for(lambda: "READY=1" in rx.messages(), 60, what=f"READY=1: {gw.log_text()[-1500:]}")
        ready_at = rx.messages().index("READY=1")
        assert "STATUS=warming analytics kernels" in rx.messages()[:ready_at]
        assert "kernels ready" in gw.log_text()  # READY=1 only after the kernels are warm
        assert (tmp_path / "state" / "control.sock").exists()
        t_ready = rx.got[ready_at][0]
        wait_for(lambda: sum(1 for t, m in rx.got if m == "WATCHDOG=1" and t > t_ready) >= 5, 10,
                 what="watchdog pings")
    finally:
        rc = gw.stop()
        rx.close()
    assert rc == 0
    assert "STOPPING=1" in rx.messages()
    assert any(m.startswith("WATCHDOG=1") for m in rx.messages()[:ready_at]), "pings start before READY too"


async def _run_in_process(tmp_path):
    """daemon.run on this loop under a fake systemd with a 0.1 s watchdog, once it has sent READY=1."""
    from edge_gateway import daemon
    from edge_gateway.config import load

    rx = NotifyReceiver(str(tmp_path / "notify.sock"))
    notifier = sdnotify.Notifier({"NOTIFY_SOCKET": str(tmp_path / "notify.sock"), "WATCHDOG_USEC": "100000"})
    run = asyncio.create_task(daemon.run(load(write_config(tmp_path)), notifier))
    for _ in range(1200):
        if "READY=1" in rx.messages() or run.done():
            break
        await asyncio.sleep(0.05)
    assert "READY=1" in rx.messages()
    return rx, notifier, run


async def test_a_blocked_event_loop_stops_the_watchdog_pings(tmp_path, monkeypatch):
    """daemon.run in-process; a task owned by this test blocks the loop for 1.5 s: no ping in that time."""
    rx, notifier, run = await _run_in_process(tmp_path)
    assert notifier.interval == 0.05
    blocked: list[float] = []
    try:
        await asyncio.sleep(0.3)
        start = time.monotonic()
        time.sleep(1.5)  # the hang: a blocking call on the event loop
        blocked[:] = [start, time.monotonic()]
        await asyncio.sleep(0.5)
    finally:
        os.kill(os.getpid(), signal.SIGTERM)  # daemon.run's handler: request_stop
        assert await asyncio.wait_for(run, 30) == 0
        notifier.close()
        rx.close()
    pings = [t for t, m in rx.got if m == "WATCHDOG=1"]
    start, end = blocked
    during = [t for t in pings if start + 0.02 < t < end - 0.02]
    assert during == [], f"{len(during)} pings while the loop was blocked"
    assert sum(1 for t in pings if start - 0.3 < t < start) >= 2, "pings before the hang"
    assert sum(1 for t in pings if t > end) >= 2, "pings again once the loop runs"


async def test_a_stuck_pipeline_round_withholds_the_watchdog_pings(tmp_path, monkeypatch, caplog):
    """daemon.run in-process; one round awaits an event this test owns while the loop keeps turning: the stuck
    await is logged, the pings stop once the round is stuck for STUCK_AFTER_S, and resume after it."""
    from edge_gateway import daemon, stall

    monkeypatch.setattr(stall, "STALL_AFTER_S", 0.5)
    monkeypatch.setattr(stall, "STUCK_AFTER_S", 1.0)
    release, hang = asyncio.Event(), {"on": False}
    real_tick = daemon.Gateway.tick

    async def tick_that_can_hang(self):
        if hang["on"]:
            hang["on"] = False
            await release.wait()
        await real_tick(self)

    monkeypatch.setattr(daemon.Gateway, "tick", tick_that_can_hang)
    rx, notifier, run = await _run_in_process(tmp_path)
    try:
        await asyncio.sleep(0.5)
        hang["on"] = True
        t0 = time.monotonic()
        await asyncio.sleep(2.5)
        released = time.monotonic()
        release.set()
        await asyncio.sleep(1.5)  # the monitor looks once a second
    finally:
        os.kill(os.getpid(), signal.SIGTERM)
        assert await asyncio.wait_for(run, 30) == 0
        notifier.close()
        rx.close()
    pings = [t for t, m in rx.got if m == "WATCHDOG=1"]
    assert [t for t in pings if t0 + 1.3 < t < released - 0.02] == [], "pings while the round was stuck"
    assert sum(1 for t in pings if t0 < t < t0 + 0.9) >= 5, "pings go on while a round is merely slow"
    assert sum(1 for t in pings if t > released + 0.1) >= 3, "pings again once rounds complete"
    logs = [r.getMessage() for r in caplog.records]
    stuck = [m for m in logs if "has not completed a round" in m]
    assert len(stuck) == 1 and "in tick_that_can_hang" in stuck[0], stuck
    assert logs.count("systemd watchdog: pings withheld, the daemon is stuck") == 1
    assert logs.count("pipeline running again") == 1
