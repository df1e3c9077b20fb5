"""modbus_rtu: request/response framing, register fields, and the driver against slaves on a pty."""

from __future__ import annotations

import asyncio

import pytest
from driver_fixtures import by_channel, pty, running, wait_until  # noqa: F401

from drivers.base import LinkLost
from drivers.modbus_frames import (FieldLayout, FieldSpec, Response, RtuResponseDecoder, build_request, crc16,
                                   encode_response, encode_value)
from drivers.modbus_rtu import ModbusBlock, ModbusField, ModbusOptions, ModbusRtuDriver
from edge_gateway.readings import Quality
from simulators.modbus_slave import ModbusSlaveSim, RegisterBank


def test_request_bytes_match_the_spec_example():
    # Modbus over serial line spec: slave 1, read 10 holding registers from 0 -> CRC 0xC5CD
    assert build_request(1, "holding", 0, 10) == bytes.fromhex("01030000000ac5cd")
    assert build_request(17, "input", 8, 1)[:6] == bytes.fromhex("110400080001")


def test_response_decoder_recovers_after_noise_and_bad_crc():
    good = encode_response(2, 3, [1, 2, 3])
    bad = good[:-1] + bytes([good[-1] ^ 1])
    d = RtuResponseDecoder(2, 3, 3)
    assert d.feed(b"\x02\x03\x05\x00" + bad + b"\x02") == []
    assert d.feed(good) == [Response(b"\x00\x01\x00\x02\x00\x03")]
    assert d.bad_frames >= 1


def test_exception_response():
    body = bytes((5, 0x83, 2))
    frame = body + crc16(body).to_bytes(2, "big")
    assert RtuResponseDecoder(5, 3, 4).feed(frame) == [Response(b"", 2)]
    body = bytes((5, 0x83, 0))
    d = RtuResponseDecoder(5, 3, 4)
    assert d.feed(body + crc16(body).to_bytes(2, "big")) == [] and d.bad_frames == 0 and d.skipped_bytes == 5


@pytest.mark.parametrize("type_,order,value", [("int16", "big", -123), ("uint16", "big", 65000),
                                                ("int32", "little", -70000), ("uint32", "big", 4_000_000_000),
                                                ("float32", "little", 4.25), ("float32", "big", -0.5)])
def test_field_roundtrip(type_, order, value):
    regs = encode_value(type_, order, value)
    layout = FieldLayout([FieldSpec("x", 1, type_, order, 2.0, "u")], 1 + len(regs))
    data = b"\x00\x00" + b"".join(r.to_bytes(2, "big") for r in regs)
    assert layout.decode(data) == [("x", value * 2.0, "u")]


def test_word_order_is_what_the_meter_sends():
    layout = FieldLayout([FieldSpec("big", 0, "uint32"), FieldSpec("little", 0, "uint32", "little")], 2)
    assert layout.decode(bytes.fromhex("00010002")) == [("big", 65538.0, ""), ("little", 131073.0, "")]


def test_options_validation():
    f = (ModbusField("v", 0),)
    with pytest.raises(ValueError, match="count"):
        ModbusBlock(slave=1, address=0, count=0, fields=f)
    with pytest.raises(ValueError, match="ends past"):
        ModbusBlock(slave=1, address=0, count=1, fields=(ModbusField("v", 0, "float32"),))
    with pytest.raises(ValueError, match="used twice"):
        ModbusOptions(port="x", blocks=(ModbusBlock(1, 0, 1, f), ModbusBlock(2, 0, 1, f)))


def _meters_options(port: str, dead_after: int = 5) -> ModbusOptions:
    return ModbusOptions(port=port, timeout_s=0.15, dead_after=dead_after, blocks=(
        ModbusBlock(slave=1, address=0, count=3, interval_s=0.05, name="energy", fields=(
            ModbusField("voltage", 0, "uint16", scale=0.1, unit="V", max=250),
            ModbusField("power_w", 1, "int32", unit="W"))),
        ModbusBlock(slave=2, address=10, count=3, function="input", interval_s=0.05, name="water", fields=(
            ModbusField("pressure_bar", 0, "float32", "little", unit="bar"),
            ModbusField("flow_lpm", 2, "uint16", scale=0.5, unit="l/min"))),
        ModbusBlock(slave=9, address=0, count=1, interval_s=0.05, name="dead",
                    fields=(ModbusField("ghost", 0),)),
        ModbusBlock(slave=2, address=500, count=1, interval_s=0.05, name="refused",
                    fields=(ModbusField("nothing", 0),)),
    ))


async def test_driver_against_slaves_on_a_pty(pty):  # noqa: F811
    bank = RegisterBank()
    bank.set_registers(1, "holding", 0, [2304] + encode_value("int32", "big", -1500))
    bank.set_registers(2, "input", 10, encode_value("float32", "little", 4.25) + [241])
    sim = ModbusSlaveSim(bank)
    sim.attach(pty)
    out = []
    driver = ModbusRtuDriver("meters", _meters_options(pty.slave_path), out.append)
    async with running(driver) as task:
        assert await wait_until(lambda: driver.blocks["dead"].timeouts >= 2 and len(out) >= 8)
        bank.set_registers(1, "holding", 0, [2600])
        assert await wait_until(lambda: any(r.value == 260.0 for r in out))
        assert not task.done()
    sim.detach()
    got = by_channel(out)
    assert got["voltage"][0].value == pytest.approx(230.4) and got["voltage"][0].unit == "V"
    assert got["voltage"][0].quality == Quality.GOOD and got["voltage"][-1].quality == Quality.BAD
    assert {r.value for r in got["power_w"]} == {-1500.0}
    assert {r.value for r in got["pressure_bar"]} == {4.25}
    assert {r.value for r in got["flow_lpm"]} == {120.5}
    assert "ghost" not in got and "nothing" not in got
    stats = driver.blocks
    assert stats["dead"].responses == 0 and stats["dead"].timeouts >= 2
    assert stats["refused"].exceptions >= 1 and stats["refused"].last_exception == 2
    assert stats["energy"].timeouts == 0 and stats["water"].timeouts == 0
    assert driver.stats.connects == 1


async def test_all_slaves_silent_raises_link_lost(pty):  # noqa: F811
    sim = ModbusSlaveSim(RegisterBank())
    sim.attach(pty)
    opts = ModbusOptions(port=pty.slave_path, timeout_s=0.05, dead_after=2,
                         blocks=(ModbusBlock(1, 0, 1, (ModbusField("v", 0),), interval_s=0.01),))
    driver = ModbusRtuDriver("m", opts, lambda r: None)
    with pytest.raises(LinkLost, match="no slave answered"):
        await asyncio.wait_for(driver.run(), 5)
    sim.detach()
    assert driver.blocks["1:holding:0"].timeouts == 2


async def test_crc_errors_are_counted_per_block(pty):  # noqa: F811
    bank = RegisterBank()
    bank.set_registers(1, "holding", 0, [7])
    sim = ModbusSlaveSim(bank)
    sim.corrupt = True
    sim.attach(pty)
    opts = ModbusOptions(port=pty.slave_path, timeout_s=0.1, dead_after=100,
                         blocks=(ModbusBlock(1, 0, 1, (ModbusField("v", 0),), interval_s=0.01, name="b"),))
    out = []
    driver = ModbusRtuDriver("m", opts, out.append)
    async with running(driver):
        assert await wait_until(lambda: driver.blocks["b"].bad_frames >= 2)
        sim.corrupt = False
        assert await wait_until(lambda: len(out) >= 1)
    sim.detach()
    assert out[0].value == 7.0 and driver.stats.malformed >= 2


async def test_a_late_reply_is_not_taken_for_the_next_blocks(pty):  # noqa: F811
    bank = RegisterBank()
    bank.set_registers(1, "holding", 0, [1111])
    bank.set_registers(1, "holding", 10, [2222])
    sim = ModbusSlaveSim(bank)
    sim.stall_s = 0.3
    sim.attach(pty)
    opts = ModbusOptions(port=pty.slave_path, timeout_s=0.2, dead_after=100, blocks=(
        ModbusBlock(1, 0, 1, (ModbusField("a", 0),), interval_s=0.05, name="A"),
        ModbusBlock(1, 10, 1, (ModbusField("b", 0),), interval_s=0.05, name="B")))
    out = []
    driver = ModbusRtuDriver("m", opts, out.append)
    async with running(driver):
        assert await wait_until(lambda: sum(r.channel == "a" for r in out) >= 2 and sum(r.channel == "b" for r in out) >= 2)
    sim.detach()
    got = by_channel(out)
    assert {r.value for r in got["a"]} == {1111.0} and {r.value for r in got["b"]} == {2222.0}
    a, b = driver.blocks["A"], driver.blocks["B"]
    assert (a.timeouts, a.late, b.timeouts, b.late) == (1, 1, 0, 0)


def _live_and_dead(port: str, live_interval_s: float, timeout_s: float, dead_after: int) -> ModbusOptions:
    return ModbusOptions(port=port, timeout_s=timeout_s, dead_after=dead_after, blocks=(
        ModbusBlock(1, 0, 1, (ModbusField("v", 0),), interval_s=live_interval_s, name="live"),
        ModbusBlock(9, 0, 1, (ModbusField("ghost", 0),), interval_s=0.01, name="dead")))


async def test_a_dead_meter_polled_often_does_not_drop_a_bus_whose_other_meter_answers(pty):  # noqa: F811
    """dead_after counts each block's own failures: a dead meter asked 10 times per live poll keeps the link."""
    bank = RegisterBank()
    bank.set_registers(1, "holding", 0, [2304])
    sim = ModbusSlaveSim(bank)
    sim.attach(pty)
    out = []
    driver = ModbusRtuDriver("meters", _live_and_dead(pty.slave_path, 60.0, 0.05, 2), out.append)
    async with running(driver) as task:
        # before, the bus was dropped at the 4th failure in a row (dead_after times the 2 blocks)
        assert await wait_until(lambda: driver.blocks["dead"].timeouts >= 10 or task.done())
        assert not task.done()
    sim.detach()
    assert [r.value for r in out] == [2304.0]
    live, dead = driver.blocks["live"], driver.blocks["dead"]
    assert (live.requests, live.responses, live.timeouts) == (1, 1, 0)
    assert dead.responses == 0 and dead.timeouts >= 10 and dead.requests in (dead.timeouts, dead.timeouts + 1)
    assert (driver.stats.connects, driver.stats.link_errors) == (1, 0)
    assert driver.stats.last_error == "block dead: no response within 0.05 s"  # still visible in status


async def test_the_bus_is_lost_once_every_block_failed_dead_after_times_in_a_row(pty):  # noqa: F811
    bank = RegisterBank()
    bank.set_registers(1, "holding", 0, [7])
    sim = ModbusSlaveSim(bank)
    sim.attach(pty)
    driver = ModbusRtuDriver("meters", _live_and_dead(pty.slave_path, 0.05, 0.2, 3), lambda r: None)
    task = asyncio.create_task(driver.run())
    try:
        assert await wait_until(lambda: driver.blocks["live"].responses >= 2)
        assert driver.blocks["live"].timeouts == 0
        sim.silent = True
        assert await wait_until(task.done, timeout=30)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        sim.detach()
    with pytest.raises(LinkLost) as lost:
        task.result()
    assert str(lost.value) == (f"{pty.slave_path}: no slave answered: each of the 2 blocks went unanswered "
                               "3 times in a row")
    assert driver.blocks["live"].timeouts == 3 and driver.blocks["dead"].timeouts >= 3
