"""The Modbus RTU slave simulator: saturated registers and the specification's exceptions and resync
(review 15, simulators #2 and #13), over a real pty, checked with the driver's own response decoder."""

from __future__ import annotations

import asyncio
import os
import time

import pytest

from drivers.modbus_frames import Response, RtuResponseDecoder, build_request, crc16
from simulators import scenario as sc
from simulators.city import City
from simulators.modbus_slave import ModbusSlaveSim, RegisterBank
from simulators.pty_port import PtyPort


def frame(body: bytes) -> bytes:
    return body + crc16(body).to_bytes(2, "big")


# 2: values outside the register type saturate instead of killing the simulator
def test_out_of_range_values_saturate():
    bank = RegisterBank()
    cases = [({"type": "uint16", "scale": 0.1}, -30.0, [0]), ({"type": "uint16", "scale": 0.1}, 7000.0, [0xFFFF]),
             ({"type": "uint16"}, 65535.4, [0xFFFF]), ({"type": "int16"}, -40000.0, [0x8000]),
             ({"type": "int32"}, 3e9, [0x7FFF, 0xFFFF]), ({"type": "uint32", "word_order": "little"}, -1.0, [0, 0]),
             ({"type": "float32"}, -1e39, [0xFF7F, 0xFFFF]), ({"type": "uint16"}, float("nan"), [0xFFFF]),
             ({"type": "int16"}, -12.0, [0xFFF4])]
    for i, (wire, value, words) in enumerate(cases):
        bank.set_value({"slave": 1, "address": 10 * i, **wire}, value)
        assert bank.read(1, 3, 10 * i, len(words)) == words, (wire, value)
    assert bank.saturated == 8


async def test_a_spike_below_zero_on_a_uint16_channel_does_not_stop_the_city(tmp_path):
    scen = sc.loads("""
seed: 2
sensors:
  - id: meters
    kind: modbus
    rate_hz: 100.0
    channels:
      - {name: voltage, baseline: 230.0, noise: 0.5, slave: 1, address: 0, type: uint16, scale: 0.1}
    faults:
      - {kind: spike, channel: voltage, at: 3, magnitude: -300.0}
""")
    city = City(scen, str(tmp_path), 1_700_000_000.0, 4)
    jobs = await city.start()
    try:
        await asyncio.wait_for(asyncio.gather(*jobs), 5)
        assert city.sent == {"meters": 4} and city.banks["meters"].saturated == 1
        assert city.banks["meters"].read(1, 3, 0, 1) == [0]
    finally:
        await city.close()


async def _ask(port: PtyPort, request: bytes, size: int, timeout: float = 1.0) -> bytes:
    """Write ``request`` as a master would and collect ``size`` reply bytes (fewer: what came in ``timeout``)."""
    os.write(port.slave, request)
    out = b""
    deadline = time.monotonic() + timeout
    while len(out) < size and time.monotonic() < deadline:
        await asyncio.sleep(0.005)
        try:
            out += os.read(port.slave, 4096)
        except BlockingIOError:
            pass
    return out


@pytest.fixture
async def slave():
    bank = RegisterBank()
    bank.set_registers(1, "holding", 0, [10, 20, 30])
    sim = ModbusSlaveSim(bank)
    port = PtyPort(nonblocking=True)
    os.set_blocking(port.slave, False)
    sim.attach(port)
    yield sim, port
    sim.close()


# 13: unknown function -> exception 1; count 0 or > 125 -> exception 3; the driver decodes them
async def test_exceptions_as_the_specification_says(slave):
    sim, port = slave
    reply = await _ask(port, frame(bytes([1, 0x41, 0, 0])), 5)
    assert reply == bytes.fromhex("01c101b050")
    assert RtuResponseDecoder(1, 0x41, 0).feed(reply) == [Response(b"", 1)]
    for count in (0, 126, 0xFFFF):
        reply = await _ask(port, frame(bytes([1, 3, 0, 0]) + count.to_bytes(2, "big")), 5)
        assert RtuResponseDecoder(1, 3, 1).feed(reply) == [Response(b"", 3)], count
    assert await _ask(port, frame(bytes([1, 4, 0, 0, 0, 125])), 5) == frame(bytes.fromhex("018402"))  # no input regs
    assert await _ask(port, frame(bytes([1, 6, 0, 0, 0, 5])), 5) == bytes.fromhex("01860183a0")
    reply = await _ask(port, build_request(1, "holding", 0, 3), 11)
    assert RtuResponseDecoder(1, 3, 3).feed(reply) == [Response(bytes.fromhex("000a0014001e"))]
    assert sim.requests == 7


# 13: a stray byte or a damaged request costs only itself
async def test_resync_after_garbage(slave):
    sim, port = slave
    one = build_request(1, "holding", 0, 1)
    ten = bytes.fromhex("010302000a3843")
    assert await _ask(port, b"\x00" + one, 7) == ten
    bad = one[:-1] + b"\x00"
    assert await _ask(port, bad + build_request(1, "holding", 1, 1), 7) == frame(bytes.fromhex("01030200 14"))
    assert await _ask(port, b"\x00", 1, timeout=0.05) == b""
    assert await _ask(port, one, 7) == ten  # the first request after a lone stray byte is answered
    assert await _ask(port, b"\xff\x01\x03", 1, timeout=0.05) == b""
    assert await _ask(port, one, 7) == ten
    assert await _ask(port, build_request(0, "holding", 0, 1) + one, 7) == ten  # broadcast: silence, then ten
    assert sim.requests == 6
    assert sim.feed(b"\x01\x03\x00" + one[:4]) == [] and sim.feed(one[4:]) == [one]  # split, after a stale piece
