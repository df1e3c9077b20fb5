"""The daemon's start-up against real parts: what is compiled before READY=1, a stop during the warm-up,
a second instance on the same state directory, and one task per sensor.

Numba's own cache log (``NUMBA_DEBUG_CACHE=1``, printed into the gateway's log) shows when each
specialization of the detector kernel is looked up. Where a test needs a compile that really takes
time, the gateway gets a copy of the shared Numba cache without the detector kernel, so nothing it
compiles there is kept.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import drivers
from edge_gateway import config
from edge_gateway.supervisor import Supervisor
from ops_support import NotifyReceiver, cli, polled_status, serial_sensor, status_json, write_config
from support import REPO, GatewayProcess, Process, wait_for

DETECTOR_KERNEL = "detect_spec"  # the Numba kernel specialized per detector settings


class Notifications(NotifyReceiver):
    """The notify socket at ``path``, and the environment that points the daemon at it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        super().__init__(str(path))

    def env(self, watchdog_usec: int = 0) -> dict:
        env = {"NOTIFY_SOCKET": str(self.path)}
        if watchdog_usec:
            env["WATCHDOG_USEC"] = str(watchdog_usec)
        return env


def numba_cache_copy(dest: Path, *, without: str = "") -> Path:
    """A copy of the session's shared Numba cache (conftest), less the files of kernel ``without``."""
    shutil.copytree(os.environ["NUMBA_CACHE_DIR"], dest)
    if without:
        for f in dest.glob(f"*/*.{without}-*"):
            f.unlink()
    return dest


def detector_lookups(log: str) -> list[int]:
    """Positions in ``log`` of Numba cache lines about the detector kernel (one per new specialization)."""
    out, pos = [], 0
    for line in log.splitlines(keepends=True):
        if line.startswith("[cache]") and DETECTOR_KERNEL in line:
            out.append(pos)
        pos += len(line)
    return out


def simulator(link: Path, seed: int = 1, rate: int = 20) -> Process:
    return Process(["-m", "simulators.serial_line", "--rate", str(rate), "--link", str(link), "--seed", str(seed)])


def test_every_detector_variant_is_compiled_before_ready(tmp_path):
    """A sensor with its own detector settings, and one channel with its own: both are looked up in Numba's
    cache during the warm-up, none once the gateway runs (there it would block the event loop, for
    minutes on a Pi with a cold cache, and the watchdog would abort it in the middle of the compile)."""
    links = [tmp_path / "air-1.tty", tmp_path / "air-2.tty"]
    sims = [simulator(ln, seed=i) for i, ln in enumerate(links)]
    cfg = write_config(tmp_path, sensors=serial_sensor("air-1", links[0]).rstrip(" ") + serial_sensor("air-2", links[1]),
                       extra="""\
        detector:
          sensors:
            air-2: {params: {weights: [0, 0, 0, 0.5, 1, 0, 0, 1], cusum_k: 1.5}}
            air-1/pm10: {params: {range_hi: 1000}}
        """)
    rx = Notifications(tmp_path / "notify.sock")
    gw = GatewayProcess(cfg, tmp_path / "gw.log", env={**rx.env(), "NUMBA_DEBUG_CACHE": "1"}).start()
    sock = tmp_path / "state" / "control.sock"
    try:
        gw.wait_ready(timeout=180)  # the first run on a cold cache compiles three variants
        # after the windows, the filters and each of the three detector variants: more time to start, so a
        # slow Pi's cold compile outlives TimeoutStartSec only while it makes progress. READY=1 follows the
        # "running" log line that wait_ready watches, and reaches the receiver's thread a moment later.
        sent = wait_for(lambda: (m := rx.messages()) and "READY=1" in m and m, 10, 0.02, "READY=1")
        extend = [i for i, m in enumerate(sent) if m == "EXTEND_TIMEOUT_USEC=300000000"]
        assert len(extend) == 5 and max(extend) < sent.index("READY=1"), sent
        wait_for(lambda: all(status_json(sock)["sensors"][s]["readings"] >= 20 for s in ("air-1", "air-2")),
                 20, 0.1, "readings of both sensors")
        wait_for(lambda: polled_status(sock)["counts"]["aggregates"] >= 6, 20, 0.1, "aggregates")
    finally:
        for sim in sims:
            sim.stop()
        rc = gw.stop()
        rx.close()
    log = gw.log_text()
    assert rc == 0, log[-3000:]
    ready = log.index("running:")
    lookups = detector_lookups(log)
    assert lookups and max(lookups) < ready, "a detector kernel was looked up after READY:\n" + log[ready:][:3000]
    assert "event loop blocked" not in log


def test_sigterm_during_the_warm_up_stops_at_once_without_ready(tmp_path):
    """The detector kernel compiles from nothing (seconds here, minutes on a Pi): SIGTERM one second into the
    warm-up ends the daemon within seconds, exit 0, no READY=1, the queue closed cleanly."""
    rx = Notifications(tmp_path / "notify.sock")
    cache = numba_cache_copy(tmp_path / "numba", without=DETECTOR_KERNEL)
    cfg = write_config(tmp_path)
    gw = GatewayProcess(cfg, tmp_path / "gw.log", env={**rx.env(), "NUMBA_CACHE_DIR": str(cache)}).start()
    try:
        wait_for(lambda: "STATUS=warming analytics kernels" in rx.messages(), 30, what="the warm-up")
        time.sleep(1.0)
        assert "READY=1" not in rx.messages() and "kernels ready" not in gw.log_text(), "the warm-up was too short"
        t0 = time.monotonic()
        gw.proc.send_signal(signal.SIGTERM)
        rc = gw.proc.wait(30)
        took = time.monotonic() - t0
    finally:
        gw.stop()
        rx.close()
    log = gw.log_text()
    assert rc == 0, log[-3000:]
    assert took < 5.0, f"{took:.1f} s from SIGTERM to exit\n{log[-3000:]}"
    assert "READY=1" not in rx.messages() and "STOPPING=1" in rx.messages()
    assert "stopped before the gateway was ready" in log and "running:" not in log
    db = sqlite3.connect(tmp_path / "state" / "queue.db")
    try:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    finally:
        db.close()
    assert not (tmp_path / "state" / "queue.db-wal").exists(), "the queue was not closed"


def test_a_second_gateway_on_the_same_state_directory_exits_at_once(tmp_path, broker):
    """`edge-gateway run` on the live config: one line and exit 1 before it opens the queue or the link; the
    live gateway keeps its one MQTT connection. The lock goes with the gateway that held it."""
    cfg = write_config(tmp_path, broker_port=broker.port)
    sock = tmp_path / "state" / "control.sock"
    other_version = tmp_path / "state" / "numba-cache" / "0123456789abcdef"
    other_version.mkdir(parents=True)
    gw = GatewayProcess(cfg, tmp_path / "gw.log").start()
    try:
        gw.wait_ready()
        assert not other_version.exists(), "the lock holder removes other code versions' kernels"
        wait_for(lambda: polled_status(sock)["link"] == "up", 20, 0.1, "link up")
        connects = status_json(sock)["uplink"]["connects"]
        other_version.mkdir()  # e.g. the live gateway is the older version, the second run an upgrade
        env = {k: v for k, v in os.environ.items() if k != "NUMBA_CACHE_DIR"}
        second = subprocess.run([sys.executable, "-m", "edge_gateway", "run", str(cfg)], cwd=REPO, env=env,
                                capture_output=True, text=True, timeout=60)
        assert other_version.exists(), "a refused run deleted kernels of a code version it does not run"
        out = second.stdout + second.stderr
        assert second.returncode == 1, out
        assert "Traceback" not in out, out
        lines = out.strip().splitlines()
        assert len(lines) == 1 and "another edge-gateway" in lines[0] and "gateway.lock" in lines[0], out
        assert f"pid {gw.proc.pid}" in lines[0]
        time.sleep(1.0)
        s = status_json(sock)
        assert s["link"] == "up" and s["uplink"]["connects"] == connects, "the live link was taken over"
    finally:
        rc = gw.stop()
    assert rc == 0, gw.log_text()[-3000:]
    with open(tmp_path / "state" / "gateway.lock", "rb+") as f:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)  # released at exit


async def test_the_supervisor_never_runs_two_tasks_for_one_sensor(tmp_path):
    """Starting a sensor that already runs is refused; stopping it leaves no task reading its device."""
    sim = simulator(tmp_path / "air-1.tty")
    sensor = config.loads(f"gateway: {{id: g}}\nsensors:\n{serial_sensor('air-1', tmp_path / 'air-1.tty')}"
                          ).sensors[0]
    readings = []
    driver = drivers.get(sensor.driver)(sensor.id, sensor.options, readings.append)
    sup = Supervisor(lambda gap: None)

    def driver_tasks():
        return [t for t in asyncio.all_tasks() if t.get_name() == "driver:air-1" and not t.done()]

    try:
        sup.start(driver)
        sup.start(driver)
        assert len(driver_tasks()) == 1
        for _ in range(100):
            if readings:
                break
            await asyncio.sleep(0.05)
        assert readings and driver.stats.connects == 1
        await sup.stop("air-1")
        assert driver_tasks() == []
        sup.start(driver)  # stopped: it may start again
        assert len(driver_tasks()) == 1
        await sup.stop()
        assert driver_tasks() == []
    finally:
        await sup.stop()
        sim.stop()


async def test_a_state_directory_of_another_gateway_is_refused(tmp_path):
    """Review 15 (walkthrough) #2: a config pointed at the demo's state dir restored 19 of the demo's
    channels and published them, with the demo's sequence numbers, under its own id."""
    from edge_gateway import messages
    from edge_gateway.queue import DurableQueue

    cfg = write_config(tmp_path, gw_id="cabinet-air-01")
    q = DurableQueue(tmp_path / "state" / "queue.db", messages.encode)
    await q.open()
    assert await q.claim("demo-01") is None  # the first gateway to open it owns it
    assert await q.append([messages.event(messages.Topics("city", "demo-01"), "demo-01", "s", "x")]) == [1]
    await q.close()
    out = cli("run", cfg, timeout=60)
    text = out.stdout + out.stderr
    assert out.returncode == 2 and "Traceback" not in text, text
    assert (f"state directory {tmp_path}/state belongs to gateway 'demo-01', not 'cabinet-air-01': give this "
            "gateway its own gateway.state_dir, or move that folder away to start afresh (its unsent messages "
            "go with it)") in text
    q = DurableQueue(tmp_path / "state" / "queue.db", messages.encode)
    await q.open()
    assert (q.depth, q.last_seq, await q.claim("demo-01")) == (1, 1, None)  # untouched, still the demo's
    await q.close()


async def test_no_more_start_time_is_asked_for_once_a_stop_is():
    """EXTEND_TIMEOUT_USEC extends the timeout of the unit's current state: after SIGTERM that is the stop's."""
    from edge_gateway.daemon import Gateway

    sent: list[str] = []
    gw = Gateway(config.loads("gateway: {id: g}\n"), notify=sent.append)
    gw._warm_progress()
    gw.request_stop()
    gw._warm_progress()
    assert sent == ["EXTEND_TIMEOUT_USEC=300000000"]
