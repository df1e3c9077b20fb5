"""serial_line: kv, CSV with configured columns and JSON lines, decoder alone and over a real pty."""

from __future__ import annotations

import pytest
from driver_fixtures import by_channel, pty, running, wait_until, write_all  # noqa: F401

from drivers.serial_line import LineDecoder, LineOptions, SerialLineDriver
from simulators.serial_line import DEFAULT_CHANNELS, scenario_lines
from simulators.signals import channel_values

T0 = 1_700_000_000.0
SEED = 11
INTERVAL = 0.1
N = 40


def test_kv_line():
    d = LineDecoder("kv")
    assert d.feed(b"pm25=12.5,pm10=20.1,noise_db=48.2\n") == [[("pm25", 12.5, None), ("pm10", 20.1, None),
                                                              ("noise_db", 48.2, None)]]


def test_csv_with_columns_and_timestamp():
    d = LineDecoder("csv", ("ts", "a", "b"), timestamp_field="ts")
    assert d.feed(b"1700000000.5,1,-2.5\r\n") == [[("a", 1.0, 1700000000.5), ("b", -2.5, 1700000000.5)]]
    assert d.feed(b"1,2\n") == [] and d.malformed == 1
    assert d.feed(b"1_7,1,2\n") == [] and d.malformed == 2


def test_digit_grouping_is_not_a_number():
    d = LineDecoder("kv")
    assert d.feed(b"pm2_5=1_2\npm2_5=12\n") == [[("pm2_5", 12.0, None)]] and d.malformed == 1


def test_json_lines():
    d = LineDecoder("json", timestamp_field="ts")
    assert d.feed(b'{"ts": 5, "t": 21.5, "rh": 40}\n') == [[("t", 21.5, 5.0), ("rh", 40.0, 5.0)]]
    assert d.feed(b'{"t": "warm"}\n[1, 2]\n{"t": true}\n') == []
    assert d.malformed == 3


def test_split_lines_and_garbage_are_counted():
    d = LineDecoder("kv")
    assert d.feed(b"a=1,b=") == []
    assert d.feed(b"2\nnot a line\n\n") == [[("a", 1.0, None), ("b", 2.0, None)]]
    assert d.malformed == 1


def test_overlong_line_is_dropped_whole():
    d = LineDecoder("kv", max_line=16)
    assert d.feed(b"a=" + b"1" * 40) == []
    assert d.feed(b"1\nb=2\n") == [[("b", 2.0, None)]]
    assert d.malformed == 1


def test_options_reject_csv_without_columns():
    with pytest.raises(ValueError, match="columns"):
        LineOptions(port="/dev/null", format="csv")


@pytest.mark.parametrize("fmt", ["kv", "csv", "json"])
async def test_driver_reads_the_simulator_exactly(pty, fmt):  # noqa: F811
    names = [c.name for c in DEFAULT_CHANNELS]
    columns = ("ts", *names) if fmt == "csv" else ()
    opts = LineOptions(port=pty.slave_path, format=fmt, columns=columns, timestamp_field="ts",
                       units={"pm25": "ug/m3"})
    out = []
    driver = SerialLineDriver("air-1", opts, out.append)
    async with running(driver):
        assert await wait_until(lambda: driver.stats.connects == 1)
        write_all(pty, b"".join(scenario_lines(SEED, T0, INTERVAL, N, fmt, timestamps=True)))
        assert await wait_until(lambda: len(out) == 3 * N)
    got = by_channel(out)
    for sig in DEFAULT_CHANNELS:
        expected = channel_values(sig, SEED, T0, INTERVAL, N)
        assert [r.value for r in got[sig.name]] == [float(v) for v in expected]
        assert [r.ts for r in got[sig.name]] == [round(T0 + k * INTERVAL, 6) for k in range(N)]
    assert {r.unit for r in got["pm25"]} == {"ug/m3"}
    assert {r.sensor for r in out} == {"air-1"}
    assert driver.stats.malformed == 0 and driver.stats.readings == 3 * N


async def test_the_driver_locks_its_port_while_it_reads(pty):  # noqa: F811
    """A probe or record on the same port would take bytes from the gateway (review 17 walkthrough #3)."""
    import serial

    driver = SerialLineDriver("air-1", LineOptions(port=pty.slave_path), lambda r: None)
    async with running(driver):
        assert await wait_until(lambda: driver.stats.connects == 1)
        with pytest.raises(serial.SerialException, match="Could not exclusively lock port"):
            serial.serial_for_url(pty.slave_path, exclusive=True)
    serial.serial_for_url(pty.slave_path, exclusive=True).close()  # released with the driver
