"""pms5003: the frame decoder (resync, checksum, length) and the driver over a real pty."""

from __future__ import annotations

import pytest
from driver_fixtures import by_channel, pty, running, wait_until, write_all  # noqa: F401

from drivers import pms5003
from drivers.pms5003 import Pms5003Decoder, Pms5003Driver, Pms5003Frame, Pms5003Options, encode_frame
from edge_gateway.readings import Quality
from simulators.pms5003 import corrupt, frame_bytes, frame_words, main, scenario_frames, scenario_values

# Written out by hand from the datasheet layout; checksum 0x024E = sum of the first 30 bytes.
FRAME = bytes.fromhex("424d001c00050008000a00050008000a03e8012c0050000a000200010000024e")
WORDS = (5, 8, 10, 5, 8, 10, 1000, 300, 80, 10, 2, 1, 0)


def test_known_frame():
    d = Pms5003Decoder()
    (frame,) = d.feed(FRAME)
    assert frame == Pms5003Frame(*WORDS)
    assert (frame.pm1_0, frame.pm2_5, frame.pm10, frame.n0_3) == (5, 8, 10, 1000)
    assert encode_frame(WORDS) == FRAME


def test_resync_after_garbage_bad_checksum_and_bad_length():
    bad_sum = corrupt(FRAME)
    bad_len = FRAME[:3] + b"\x1d" + FRAME[4:]
    d = Pms5003Decoder()
    frames = d.feed(b"\x00BM\x42" + bad_sum + b"junk" + bad_len + FRAME + b"B")
    assert frames == [Pms5003Frame(*WORDS)]
    assert d.bad_frames == 3  # the stray "BM", the bad checksum, the bad length
    assert d.feed(b"M" + FRAME[2:]) == [Pms5003Frame(*WORDS)]


def test_one_bad_frame_per_corrupt_frame_whose_data_holds_bm():
    """A count of 0x424D particles puts "BM" inside the frame: tried as a header, not counted bad again."""
    bm = encode_frame((5, 8, 10, 5, 8, 10, 0x424D, 0x1C, 300, 0x42, 0x4D00, 1, 0))  # "BM\0\x1c", "BM\0\0"
    bad = bm[:-1] + bytes([bm[-1] ^ 1])  # the checksum broken, the data kept
    assert bad.count(b"BM") == 3
    stream = b"\x00B" + FRAME + bad + FRAME + bad + bad + FRAME[:20] + FRAME + b"B"
    whole = Pms5003Decoder()
    assert whole.feed(stream) == [Pms5003Frame(*WORDS)] * 3
    assert (whole.frames, whole.bad_frames) == (3, 4)  # 3 corrupt frames and the truncated one
    for a in range(len(stream)):
        d = Pms5003Decoder()
        assert d.feed(stream[:a]) + d.feed(stream[a:]) == [Pms5003Frame(*WORDS)] * 3
        assert d.bad_frames == 4, a


def test_frame_split_across_reads():
    d = Pms5003Decoder()
    stream = FRAME * 3
    got = []
    for i in range(len(stream)):
        got += d.feed(stream[i:i + 1])
    assert got == [Pms5003Frame(*WORDS)] * 3 and d.bad_frames == 0


def test_buffer_stays_bounded_on_endless_headers():
    d = Pms5003Decoder()
    for _ in range(100):
        d.feed(b"BM\x00\x1c" + b"\x00" * 20)
    assert len(d._buf) <= 4096


def test_channel_options():
    assert [c[1] for c in Pms5003Options(port="x").channels()] == ["pm1_0", "pm2_5", "pm10"]
    chans = Pms5003Options(port="x", cf1=True, counts=True).channels()
    assert len(chans) == 12 and chans[-1] == (11, "n10", "1/0.1L")


async def test_driver_reads_the_simulator_exactly(pty):  # noqa: F811
    seed, t0, interval, n = 5, 1_700_000_000.0, 1.0, 30
    out = []
    driver = Pms5003Driver("pm-1", Pms5003Options(port=pty.slave_path, counts=True), out.append)
    stream = b"".join(scenario_frames(seed, t0, interval, n))
    stream = stream[:64] + corrupt(stream[64:96]) + b"\x42\x42\x4d" + stream[96:]
    async with running(driver):
        assert await wait_until(lambda: driver.stats.connects == 1)
        for i in range(0, len(stream), 77):
            write_all(pty, stream[i:i + 77])
        assert await wait_until(lambda: len(out) == 9 * (n - 1))
    got = by_channel(out)
    expected = scenario_values(seed, t0, interval, n)
    keep = [k for k in range(n) if k != 2]
    for col, name in enumerate(("pm1_0", "pm2_5", "pm10")):
        assert [r.value for r in got[name]] == [float(expected[k][col]) for k in keep]
        assert {r.unit for r in got[name]} == {"ug/m3"}
    assert [r.value for r in got["n10"]] == [float(frame_words(*expected[k])[11]) for k in keep]
    assert driver.stats.malformed >= 1


async def test_out_of_range_mass_is_bad_quality(pty):  # noqa: F811
    out = []
    driver = Pms5003Driver("pm-1", Pms5003Options(port=pty.slave_path), out.append)
    async with running(driver):
        assert await wait_until(lambda: driver.stats.connects == 1)
        write_all(pty, frame_bytes(5, 1500, 20))
        assert await wait_until(lambda: len(out) == 3)
    assert [(r.channel, r.quality) for r in out] == [("pm1_0", Quality.GOOD), ("pm2_5", Quality.BAD),
                                                     ("pm10", Quality.GOOD)]


def test_options_validate():
    with pytest.raises(ValueError, match="baudrate"):
        Pms5003Options(port="x", baudrate=0)
    for bad in (0, -1, float("nan")):
        with pytest.raises(ValueError, match="frame_interval_s"):
            Pms5003Options(port="x", frame_interval_s=bad)


async def test_frames_read_together_get_the_times_they_were_sent(pty):  # noqa: F811
    """Frames that queued up while the loop was busy are dated back one frame interval each, not all stamped now."""
    clock = {"now": 1000.0}
    out = []
    driver = Pms5003Driver("pm-1", Pms5003Options(port=pty.slave_path), out.append, clock=lambda: clock["now"])
    async with running(driver):
        assert await wait_until(lambda: driver.stats.connects == 1)
        for now, values in ((1000.5, (1,)), (1010.0, (2, 3, 4, 5)), (1011.0, (6, 7, 8, 9))):
            clock["now"] = now
            write_all(pty, b"".join(frame_bytes(0, v, 0) for v in values))
            assert await wait_until(lambda: len(out) == 3 * values[-1])
    got = {r.value: r.ts for r in by_channel(out)["pm2_5"]}
    assert got == {1.0: 1000.5, 2.0: 1007.0, 3.0: 1008.0, 4.0: 1009.0, 5.0: 1010.0,
                   # one second after the last read: spread over it, not dated before it
                   6.0: 1010.25, 7.0: 1010.5, 8.0: 1010.75, 9.0: 1011.0}
    assert driver.stats.last_reading_ts == 1011.0


def test_frame_times():
    assert pms5003.frame_times(1, 50.0, 40.0, 1.0) == [50.0]
    assert pms5003.frame_times(3, 50.0, 40.0, 2.0) == [46.0, 48.0, 50.0]
    assert pms5003.frame_times(2, 50.0, 49.0, 2.0) == [49.5, 50.0]
    assert pms5003.frame_times(2, 50.0, 60.0, 1.0) == [49.0, 50.0]  # the wall clock went back: the interval only


@pytest.mark.parametrize("rate", ["0", "-1", "inf", "nan"])
def test_simulator_refuses_a_rate_that_is_not_positive(rate, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--rate", rate, "--count", "1"])
    assert exc.value.code == 2
    err = capsys.readouterr()
    assert "--rate: must be a positive number of frames per second" in err.err and err.out == ""


async def test_frames_of_the_first_read_are_dated_after_the_port_opened(pty):  # noqa: F811
    """pyserial empties the input on open, so frames queued in the first read came after it, even on a reconnect
    long after the previous connection's last reading."""
    clock = {"now": 1000.0}
    out = []
    driver = Pms5003Driver("pm-1", Pms5003Options(port=pty.slave_path), out.append, clock=lambda: clock["now"])
    for opened, read, first in ((1000.0, 1000.4, 1), (2000.0, 2000.4, 6)):
        clock["now"] = opened
        async with running(driver):
            assert await wait_until(lambda: driver.stats.connects == (1 if first == 1 else 2))
            clock["now"] = read
            write_all(pty, b"".join(frame_bytes(0, v, 0) for v in range(first, first + 5)))
            assert await wait_until(lambda: len(out) == 3 * (first + 4))
    got = {r.value: r.ts for r in by_channel(out)["pm2_5"]}
    assert got == pytest.approx({1.0: 1000.08, 2.0: 1000.16, 3.0: 1000.24, 4.0: 1000.32, 5.0: 1000.4,
                                 6.0: 2000.08, 7.0: 2000.16, 8.0: 2000.24, 9.0: 2000.32, 10.0: 2000.4})
