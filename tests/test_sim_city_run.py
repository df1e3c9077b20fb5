"""The city simulator in-process: pacing, endpoints at start, failed starts, CLI errors, IPv6 CoAP
(review 15, simulators #1, #3, #6, #8, #11)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import socket
from pathlib import Path

import pytest
from aiocoap import GET, Context, Message

from simulators import city as city_mod
from simulators import scenario as sc
from simulators.city import City, encode_line
from simulators.coap_node import CoapNode, free_udp_port

SCENARIO = Path(__file__).resolve().parent.parent / "simulators" / "scenarios" / "city_block.yaml"
PAST = 1_700_000_000.0


def _line_sensor(rate_hz: float) -> sc.Scenario:
    return sc.loads(f"""
seed: 9
sensors:
  - {{id: air, kind: line, rate_hz: {rate_hz}, format: kv, channels: [{{name: pm25, baseline: 12.0, noise: 1.0}}]}}
""")


# 1: a t0 in the past sets values and timestamps only; sample k is sent k intervals after the start
async def test_a_past_t0_is_paced_from_the_start_of_the_run(tmp_path):
    city = City(_line_sensor(20.0), str(tmp_path), PAST, 5)
    jobs = await city.start()
    loop = asyncio.get_running_loop()
    t_start = loop.time()
    first_seen: list[float] = []  # when city.sent first showed k+1 samples

    async def probe() -> None:
        while True:
            while len(first_seen) < city.sent.get("air", 0):
                first_seen.append(loop.time())
            await asyncio.sleep(0)

    p = asyncio.ensure_future(probe())
    try:
        await asyncio.wait_for(asyncio.gather(*jobs), 5)
        await asyncio.sleep(0.01)
    finally:
        p.cancel()
        await city.close()
    assert len(first_seen) == 5
    assert [round(t - t_start, 2) >= round(k * 0.05, 2) for k, t in enumerate(first_seen)] == [True] * 5


# 1: overdue samples still yield to the loop, so one sensor can never starve the others
async def test_overdue_samples_yield_to_the_loop(tmp_path):
    city = City(_line_sensor(1e5), str(tmp_path), PAST, 300)
    jobs = await city.start()
    ticks = 0

    async def probe() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    p = asyncio.ensure_future(probe())
    try:
        await asyncio.wait_for(asyncio.gather(*jobs), 5)
    finally:
        p.cancel()
        await city.close()
    assert city.sent == {"air": 300} and ticks >= 299


# 3: every pty and link exists once start() returns, and stays up after the last sample until close()
async def test_start_opens_every_endpoint(tmp_path):
    scen = sc.load(str(SCENARIO))
    scen = dataclasses.replace(scen, sensors=tuple(dataclasses.replace(s, rate_hz=50.0) for s in scen.sensors))
    city = City(scen, str(tmp_path), PAST, 3, coap_port=free_udp_port())
    jobs = await city.start()
    ttys = [where for kind, _, where in city.endpoints if kind != "coap"]
    try:
        assert ttys == [str(tmp_path / f"{s}.tty") for s in ("air-1", "noise-1", "pm-1", "meters")]
        assert all(os.readlink(p).startswith("/dev/pts/") for p in ttys)
        fd = os.open(ttys[0], os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)
        try:
            await asyncio.wait_for(asyncio.gather(*jobs), 10)
            data = b""
            for _ in range(100):  # the pty hands bytes to its slave side a moment after the write
                with contextlib.suppress(BlockingIOError):
                    data += os.read(fd, 4096)
                if data.count(b"\n") == 3:
                    break
                await asyncio.sleep(0.01)
        finally:
            os.close(fd)
    finally:
        await city.close()
    s = scen.sensor("air-1")
    vals = sc.values(s, scen.seed, PAST, 0, 3)
    names = [c.name for c in s.channels]
    assert data == b"".join(encode_line(s, names, [float(vals[n][k]) for n in names], round(PAST + k * 0.02, 6))
                            for k in range(3))
    assert not any(os.path.lexists(p) for p in ttys)


# 6: a start that fails part-way closes what it had opened (links, the first CoAP node's socket)
async def test_a_failed_start_leaves_nothing_open(tmp_path):
    port = free_udp_port()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as blocker:
        blocker.bind(("127.0.0.1", port + 1))  # the second CoAP node's port is taken
        city = City(sc.load(str(SCENARIO)), str(tmp_path), PAST, 1, coap_port=port)
        with pytest.raises(OSError, match="in use"):
            jobs = await city.start()
            for j in jobs:
                j.close()
        await city.close()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", port))  # the first node's socket was closed
    assert not list(tmp_path.glob("*.tty"))


# 6: a busy or impossible CoAP port is one line on stderr and an exit code, not a traceback
def test_city_cli_port_errors(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        city_mod.main([str(SCENARIO), "--run-dir", str(tmp_path / "b"), "--count", "1", "--linger", "0",
                       "--coap-port", "65535"])
    assert exc.value.code == 2
    assert "--coap-port: the CoAP node of traffic-1 would be on port 65536" in capsys.readouterr().err
    port = free_udp_port()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as blocker:
        blocker.bind(("127.0.0.1", port + 1))
        rc = city_mod.main([str(SCENARIO), "--run-dir", str(tmp_path / "a"), "--count", "1", "--linger", "0",
                            "--coap-port", str(port)])
    err = capsys.readouterr().err
    assert rc == 1 and err.count("\n") == 1 and "CoAP node of traffic-1" in err and "in use" in err
    assert not list((tmp_path / "a").glob("*.tty"))


# 8: a bad scenario or run directory is one line on stderr and an exit code, not a traceback
def test_city_cli_bad_scenario_or_run_dir(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    for text, message in (("seed: 1\nsensors: [{id: a\n", "not valid YAML"), ("seed: -1\n", "seed: must be >= 0"),
                          ("sensors: [5]\n", "sensors[0]: expected a mapping")):
        bad.write_text(text)
        assert city_mod.main([str(bad), "--run-dir", str(tmp_path / "c"), "--count", "1"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err, err
    rc = city_mod.main([str(SCENARIO), "--run-dir", "/proc/nope", "--count", "1", "--coap-port", str(free_udp_port())])
    err = capsys.readouterr().err
    assert rc == 1 and err.count("\n") == 1 and "/proc/nope" in err


# 11: an IPv6 node advertises a URI with brackets, and port 0 picks a free IPv6 port
async def test_coap_node_on_ipv6_loopback():
    node = CoapNode("::1")
    node.add("/t").publish(b"21.5", 0)
    await node.start()
    ctx = await Context.create_client_context()
    try:
        assert node.uri == f"coap://[::1]:{node.port}"
        resp = await asyncio.wait_for(ctx.request(Message(code=GET, uri=node.uri + "/t")).response, 5)
        assert resp.payload == b"21.5"
    finally:
        await ctx.shutdown()
        await node.stop()
