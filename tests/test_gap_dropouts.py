"""An unplugged sensor is reported once, as a ``link_gap``, not also as a dropout of each of its channels.

Field walkthrough: every unplug of a sensor produced its ``link_gap`` and, when it was back, a
``dropout`` anomaly (open and closed) on every channel of it, the detector seeing the hole in the
stamps; ``status`` keeps the last 10 events, so those rows pushed the link_gap out of sight. The
daemon re-anchors the dropout clock of the sensor's channels when the supervisor reports the gap, as
it does for all channels on a step of its own clock. A sensor that only goes silent, its link up, still
gets its dropout.

End to end: the gateway as a subprocess, two serial sensors on ptys behind stable links written by
this test (stamps from the devices: ``ts``), a real Mosquitto and a subscriber. Then the order inside
one gateway: the gap is reported, and the clocks re-anchored, before the new link's first reading.
"""

from __future__ import annotations

import asyncio
import textwrap
import time

from driver_fixtures import wait_until, write_all

from edge_gateway import config, messages
from edge_gateway.daemon import Gateway
from edge_gateway.readings import Reading
from edge_gateway.supervisor import LinkGap
from ops_support import status_json
from simulators.pty_port import PtyPort
from simulators.serial_line import scenario_lines
from support import GatewayProcess, Subscriber, wait_for

INTERVAL = 0.05  # 20 readings a second: a dropout opens at a gap of 20 typical intervals (drop_k 10, guard 0.5)
N, A, B = 150, 60, 120  # samples A..B-1 never sent: 3 s missing from both sensors' stamps
WEIGHTS = [0, 0, 0, 0, 0, 0, 1, 0]  # only dropout scores; the guards (range, flatline, dropout) always run


def _config(tmp_path, port: int, unplugged: str, silent: str) -> str:
    return textwrap.dedent(f"""\
        gateway: {{id: gap-gw, topic_prefix: city, state_dir: {tmp_path}/state, batch_interval_s: 0.05}}
        broker: {{host: 127.0.0.1, port: {port}, keepalive_s: 5}}
        sensors:
          - id: unplugged
            driver: serial_line
            options: {{port: {unplugged}, format: kv, timestamp_field: ts}}
          - id: silent
            driver: serial_line
            options: {{port: {silent}, format: kv, timestamp_field: ts}}
        windows: {{seconds: 1, grace_s: 0.5}}
        detector: {{threshold: 0.9, params: {{weights: {WEIGHTS}}}}}
        """)


def _write(ports_lines, ks) -> None:
    """Sample ``k`` of each sensor, one every INTERVAL (the devices' own pace)."""
    start = time.monotonic()
    for i, k in enumerate(ks):
        time.sleep(max(0.0, start + i * INTERVAL - time.monotonic()))
        for port, lines in ports_lines:
            port.write(lines[k])


def test_an_unplug_longer_than_the_dropout_threshold_is_one_link_gap_and_a_silence_is_a_dropout(broker, tmp_path):
    t0 = round(time.time(), 3)
    lines_u = list(scenario_lines(3, t0, INTERVAL, N, "kv", timestamps=True))
    lines_s = list(scenario_lines(5, t0, INTERVAL, N, "kv", timestamps=True))
    link_u, link_s = str(tmp_path / "unplugged.tty"), str(tmp_path / "silent.tty")
    cfg = tmp_path / "gw.yaml"
    cfg.write_text(_config(tmp_path, broker.port, link_u, link_s))
    sub = Subscriber(broker.port, "city/gap-gw/#").start()
    port_u, port_s = PtyPort(link_u), PtyPort(link_s)
    gw = GatewayProcess(cfg, tmp_path / "gateway.log").start()
    sock = tmp_path / "state" / "control.sock"
    try:
        gw.wait_ready()
        assert port_u.wait_opened(timeout=30) and port_s.wait_opened(timeout=30)
        _write([(port_u, lines_u), (port_s, lines_s)], range(A))
        port_u.close()  # unplugged; the other sensor, its link up, just sends nothing for as long
        unplugged_at = time.time()
        time.sleep((B - A) * INTERVAL)
        port_u = PtyPort(link_u)  # replugged: the gateway reopens it at its next retry
        assert port_u.wait_opened(timeout=30), gw.log_text()[-3000:]
        _write([(port_u, lines_u), (port_s, lines_s)], range(B, N))
        last_window = int(float(lines_u[N - 1].split(b",")[0][3:]))  # windows of 1 s: the last one's start
        # the silent sensor's dropout, and the last windows of both (closed idle): every reading scored
        wait_for(lambda: any(e["sensor"] == "silent" and e["type"] == "anomaly" and e["state"] == "closed"
                             for e in sub.of("event"))
                 and {a["sensor"] for a in sub.of("agg") if a["start"] == last_window} == {"unplugged", "silent"},
                 30, what=f"the silent sensor's dropout and the last windows: {gw.log_text()[-3000:]}")
        status = status_json(sock)
    finally:
        port_u.close()
        port_s.close()
        rc = gw.stop()
        sub.stop()
    assert rc == 0, gw.log_text()[-3000:]

    events = sub.of("event")
    mine = [e for e in events if e["sensor"] == "unplugged"]
    assert [e["type"] for e in mine] == ["link_gap"], mine  # no dropout on pm25, pm10 or noise_db
    gap = mine[0]
    sent = [float(ln.split(b",")[0][3:]) for ln in lines_u]
    assert gap["start"] <= unplugged_at <= gap["end"] and gap["reason"]
    # the silent sensor: its link never went down, and each of its channels had its dropout, open then closed
    silent = [e for e in events if e["sensor"] == "silent"]
    assert {e["type"] for e in silent} == {"anomaly"}
    assert {e["detector"] for e in silent} == {"dropout"}
    closed = sorted(e["channel"] for e in silent if e["state"] == "closed")
    assert closed == ["noise_db", "pm10", "pm25"], silent
    assert all(e["start"] == sent[B] for e in silent)  # the first reading after the hole in the stamps
    # status's recent events keep the link_gap
    recent = [(e["sensor"], e["type"]) for e in status["last_events"]]
    assert ("unplugged", "link_gap") in recent and ("unplugged", "anomaly") not in recent
    su = status["sensors"]["unplugged"]
    assert (su["connects"], su["link_errors"] >= 1) == (2, True)
    assert status["sensors"]["silent"]["connects"] == 1


async def test_the_gap_is_reported_and_the_dropout_clocks_reanchored_before_the_first_reading_of_the_new_link(tmp_path):
    """The order inside one gateway (the real Gateway, Supervisor, driver and Pipeline; the test runs the
    rounds): every reading of the old link scored, then the gap, then the new link's readings."""
    link = str(tmp_path / "dev.tty")
    cfg = config.loads(textwrap.dedent(f"""\
        gateway: {{id: gw, state_dir: {tmp_path}/state, batch_interval_s: 0.05}}
        sensors:
          - {{id: dev, driver: serial_line, options: {{port: {link}, format: kv, timestamp_field: ts}}}}
        windows: {{seconds: 1, grace_s: 0.5}}
        detector: {{threshold: 0.9, params: {{weights: {WEIGHTS}}}}}
        """))
    gw = Gateway(cfg)
    driver = gw.drivers[0]
    order: list = []
    sink, resume = driver.sink, gw.pipeline.resume_sensor
    driver.sink = lambda r: (order.append(("reading", r.ts)), sink(r))
    gw.pipeline.resume_sensor = lambda s: (order.append(("resume", s, gw.batcher.pending())), resume(s))[1]
    t0 = round(time.time(), 3)
    lines = list(scenario_lines(3, t0, INTERVAL, N, "kv", timestamps=True))
    sent = [float(ln.split(b",")[0][3:]) for ln in lines]

    async def rounds():
        while True:
            await gw.tick()
            await asyncio.sleep(cfg.gateway.batch_interval_s)

    await gw.queue.open()
    port = PtyPort(link, nonblocking=True)
    ticking = asyncio.create_task(rounds())
    gw.supervisor.start(driver)
    try:
        assert await wait_until(lambda: driver.stats.connects == 1)
        for k in range(A):
            write_all(port, lines[k])
        assert await wait_until(lambda: driver.stats.readings == 3 * A)
        port.close()
        assert await wait_until(lambda: driver.stats.link_errors == 1)
        port = PtyPort(link, nonblocking=True)
        assert await wait_until(lambda: driver.stats.connects == 2, timeout=10)
        for k in range(B, N):
            write_all(port, lines[k])
        assert await wait_until(lambda: driver.stats.readings == 3 * (A + N - B))
        await asyncio.sleep(0.3)
    finally:
        await gw.supervisor.stop()
        ticking.cancel()
        await asyncio.gather(ticking, return_exceptions=True)
        port.close()
    try:
        rows = [messages.decode(r.payload) for r in await gw.queue.peek(0, 10_000)]
    finally:
        await gw.queue.close()
    at = order.index(("resume", "dev", 0))  # once, with no reading of the old link left unscored
    assert [o[0] for o in order].count("resume") == 1
    assert order[:at] == [("reading", sent[k]) for k in range(A) for _ in range(3)]
    assert order[at + 1:] == [("reading", sent[k]) for k in range(B, N) for _ in range(3)]
    assert [r["type"] for r in rows if "type" in r] == ["link_gap"]


async def test_a_link_gap_is_queued_before_what_the_new_link_raises_in_the_same_round(tmp_path):
    """The gap ends before the new link's first reading, so its ``link_gap`` goes first in the round that
    also carries what that reading raised (it went after them, the order of the queue saying the gap
    came later). The real Gateway, Pipeline and queue; the test plays the supervisor and the driver."""
    cfg = config.loads(textwrap.dedent(f"""\
        gateway: {{id: gw, state_dir: {tmp_path}/state}}
        sensors:
          - {{id: dev, driver: serial_line, options: {{port: {tmp_path}/dev.tty, format: kv}}}}
        windows: {{seconds: 60, grace_s: 2}}
        detector: {{params: {{range_hi: 100}}}}
        """))
    gw = Gateway(cfg)
    sink = gw.drivers[0].sink
    await gw.queue.open()
    try:
        for k in range(5):  # the old link
            sink(Reading("dev", "v", 10.0 + k, 1000.0 + k))
        await gw.tick()
        gw._on_gap(LinkGap("dev", 1004.0, 1010.0, "unplugged"))
        sink(Reading("dev", "v", 500.0, 1010.5))  # the new link's first reading: beyond range_hi
        await gw.tick()
        rows = [messages.decode(r.payload) for r in await gw.queue.peek(0, 100)]
    finally:
        await gw.queue.close()
    assert [(r["type"], r.get("state"), r["start"]) for r in rows] == [
        ("link_gap", None, 1004.0), ("anomaly", "open", 1010.5)]
    assert rows[1]["seq"] == rows[0]["seq"] + 1
