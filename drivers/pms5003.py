"""Plantower PMS5003 particulate sensor: 32-byte binary frames on a 9600-baud UART.

Frame layout (all words big-endian)::

    0x42 0x4D | length=28 | 13 data words | checksum = sum of the first 30 bytes

Data words: PM1.0/PM2.5/PM10 at CF=1, PM1.0/PM2.5/PM10 atmospheric, particle
counts above 0.3/0.5/1.0/2.5/5.0/10 um per 0.1 L, reserved.

:class:`Pms5003Decoder` is pure and never raises on input: garbage is skipped
with ``bytes.find`` for the next ``BM`` header, and a header whose length or
checksum is wrong is counted as a bad frame and resynchronised one byte later,
so a corrupted frame costs that frame only. A ``BM`` inside a frame whose
checksum failed (a count of 0x424D particles) is tried too, since a frame may
start there, but is not counted bad again: one corrupt frame, one bad frame.

Frames carry no time. When several arrive in one read (the loop was busy and
they queued up in the kernel), the last is stamped with the read time and each
earlier one ``frame_interval_s`` before the next, the sensor's pace; but never
at or before the previous read's time, since they were not there yet, so when the
pace is unknown or wrong they are spread evenly after it instead. The datasheet
pace in active mode is 2.3 s when the air is steady and 0.2-0.8 s when it is
changing fast, so the default of 1 s is only an estimate.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import NamedTuple

from edge_gateway.readings import Quality, Reading

from .serial_port import StreamDriver

HEADER = b"BM"
FRAME_LEN = 32
LENGTH_FIELD = 28
_BODY = struct.Struct(">H13HH")
_MAX_BUFFER = 4096


class Pms5003Frame(NamedTuple):
    pm1_0_cf1: int
    pm2_5_cf1: int
    pm10_cf1: int
    pm1_0: int
    pm2_5: int
    pm10: int
    n0_3: int
    n0_5: int
    n1_0: int
    n2_5: int
    n5_0: int
    n10: int
    reserved: int


ATMOSPHERIC = ("pm1_0", "pm2_5", "pm10")
CF1 = ("pm1_0_cf1", "pm2_5_cf1", "pm10_cf1")
COUNTS = ("n0_3", "n0_5", "n1_0", "n2_5", "n5_0", "n10")
MASS_UNIT = "ug/m3"
COUNT_UNIT = "1/0.1L"
MAX_MASS = 1000  # the datasheet's maximum range; above it the value is not physical


def encode_frame(frame: Pms5003Frame | tuple[int, ...]) -> bytes:
    """The 32 bytes a sensor sends for ``frame`` (used by the simulator and tests)."""
    body = HEADER + struct.pack(">H13H", LENGTH_FIELD, *frame)
    return body + struct.pack(">H", sum(body) & 0xFFFF)


class Pms5003Decoder:
    """Bytes in, :class:`Pms5003Frame` objects out; counts what it had to throw away."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self.frames = 0
        self.bad_frames = 0
        self.skipped_bytes = 0
        # the buffer's bytes before this index belong to a frame already counted bad (its checksum failed):
        # a "BM" in them is tried, as a frame may start there, but its failure is not that frame's again
        self._counted_to = 0

    def feed(self, data: bytes) -> list[Pms5003Frame]:
        buf = self._buf
        buf += data
        n = len(buf)
        out: list[Pms5003Frame] = []
        unpack = _BODY.unpack_from
        make = Pms5003Frame._make
        view = memoryview(buf)
        i = 0
        try:
            while True:
                j = buf.find(HEADER, i)
                if j < 0:
                    keep = n - 1 if n > i and buf[n - 1] == 0x42 else n
                    self.skipped_bytes += keep - i
                    i = keep
                    break
                self.skipped_bytes += j - i
                if n - j < 4:
                    i = j
                    break
                if buf[j + 2] != 0 or buf[j + 3] != LENGTH_FIELD:
                    if j >= self._counted_to:
                        self.bad_frames += 1
                    self.skipped_bytes += 1
                    i = j + 1
                    continue
                if n - j < FRAME_LEN:
                    i = j
                    break
                fields = unpack(buf, j + 2)
                if sum(view[j:j + 30]) != fields[14]:
                    if j >= self._counted_to:
                        self.bad_frames += 1
                        self._counted_to = j + FRAME_LEN
                    self.skipped_bytes += 1
                    i = j + 1
                    continue
                out.append(make(fields[1:14]))
                i = j + FRAME_LEN
        finally:
            view.release()
        del buf[:i]
        self._counted_to = max(0, self._counted_to - i)
        if len(buf) > _MAX_BUFFER:
            self.skipped_bytes += len(buf)
            buf.clear()
            self._counted_to = 0
        self.frames += len(out)
        return out


@dataclass(frozen=True)
class Pms5003Options:
    """Options of a ``pms5003`` sensor.

    ``port``: the serial device the sensor's TX is wired to (``/dev/ttyAMA0``, ``/dev/ttyUSB0``) or a
    pyserial URL. ``baudrate``: 9600 for every PMS5003; another value only for a converter in between.
    ``cf1``: also send the CF=1 mass values (``pm1_0_cf1``, ``pm2_5_cf1``, ``pm10_cf1``, the factory's
    calibration particle), besides the atmospheric ``pm1_0``, ``pm2_5``, ``pm10`` (ug/m3). ``counts``: also
    send the particle counts above 0.3, 0.5, 1.0, 2.5, 5.0 and 10 um (``n0_3`` ... ``n10``), per decilitre.
    ``frame_interval_s``: the sensor's pace, used to date frames that arrive together in one read (frames
    carry no time; 2.3 s in steady air, 0.2-0.8 s when it changes fast, so 1 s is an estimate).
    """

    port: str
    baudrate: int = 9600
    cf1: bool = False
    counts: bool = False
    frame_interval_s: float = 1.0

    def __post_init__(self) -> None:
        if self.baudrate <= 0:
            raise ValueError("baudrate: must be positive")
        if not self.frame_interval_s > 0:
            raise ValueError("frame_interval_s: must be positive")

    def channels(self) -> tuple[tuple[int, str, str], ...]:
        """(index in the frame, channel name, unit) of every channel this sensor reports."""
        names = ATMOSPHERIC + (CF1 if self.cf1 else ()) + (COUNTS if self.counts else ())
        return tuple((Pms5003Frame._fields.index(n), n, COUNT_UNIT if n in COUNTS else MASS_UNIT)
                     for n in names)


class Pms5003Driver(StreamDriver):
    """Reads a PMS5003 in its default active mode (one frame about every second)."""

    name = "pms5003"
    Options = Pms5003Options

    def on_open(self) -> None:
        self._channels = self.options.channels()
        self._decoder = Pms5003Decoder()
        # pyserial empties the input on open: nothing read from now on was sent before it
        self._last_read = self.clock()

    def on_bytes(self, data: bytes, now: float) -> None:
        before = self._decoder.bad_frames
        frames = self._decoder.feed(data)
        self.stats.malformed += self._decoder.bad_frames - before
        if frames:
            self._emit(frames, self._channels, frame_times(len(frames), now, self._last_read,
                                                           self.options.frame_interval_s))
        self._last_read = now

    def _emit(self, frames: list[Pms5003Frame], channels, times: list[float]) -> None:
        for frame, ts in zip(frames, times):
            for index, channel, unit in channels:
                value = frame[index]
                bad = unit == MASS_UNIT and value > MAX_MASS
                self.sink(Reading(self.sensor_id, channel, float(value), ts, unit,
                                  Quality.BAD if bad else Quality.GOOD, True))
            self.stats.readings += len(channels)
        self.stats.last_reading_ts = times[-1]


def frame_times(n: int, now: float, previous: float, interval: float) -> list[float]:
    """Times of ``n`` frames read together at ``now``: ``interval`` apart back from ``now``, after ``previous``."""
    if n == 1:
        return [now]
    if previous >= now:
        return [now - (n - 1 - i) * interval for i in range(n - 1)] + [now]
    step = (now - previous) / n
    return [max(now - (n - 1 - i) * interval, previous + (i + 1) * step) for i in range(n - 1)] + [now]


DRIVER = Pms5003Driver
