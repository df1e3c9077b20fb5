"""Modbus RTU framing for a bus master, and register fields to numbers; pure, no I/O.

Requests are built by pymodbus (its PDU classes and RTU framer), so the bytes
on the wire are those of a widely used implementation. Responses are hunted
for here instead of with pymodbus' ``FramerRTU``: on a CRC error that framer
discards the whole buffer and on an undecodable PDU it raises, while a master
on a noisy RS-485 line wants to skip one byte and look again, and to know that
it was an exception response and which. The CRC table is pymodbus' own.

:class:`FieldLayout` turns a block's register bytes into field values with
precompiled ``struct`` formats: int16/uint16/int32/uint32/float32, 32-bit
values in big (high word first) or little word order, times ``scale``.
"""

from __future__ import annotations

import math
import struct
from typing import NamedTuple

from pymodbus.framer import FramerRTU
from pymodbus.pdu import DecodePDU
from pymodbus.pdu.register_message import ReadHoldingRegistersRequest, ReadInputRegistersRequest

FUNCTIONS = {"holding": 3, "input": 4}
TYPES = {"int16": ">h", "uint16": ">H", "int32": ">i", "uint32": ">I", "float32": ">f"}
WIDTH = {"int16": 1, "uint16": 1, "int32": 2, "uint32": 2, "float32": 2}
_CRC_TABLE = tuple(FramerRTU.crc16_table)


def crc16(data) -> int:
    """Modbus CRC-16 as the two bytes appear on the wire (low byte first), big-endian int."""
    crc = 0xFFFF
    table = _CRC_TABLE
    for b in data:
        crc = (crc >> 8) ^ table[(crc ^ b) & 0xFF]
    return ((crc << 8) & 0xFF00) | (crc >> 8)


def build_request(slave: int, function: str, address: int, count: int) -> bytes:
    """The RTU bytes of a read-registers request, built by pymodbus."""
    cls = ReadHoldingRegistersRequest if function == "holding" else ReadInputRegistersRequest
    pdu = cls(address=address, count=count, dev_id=slave)
    return FramerRTU(DecodePDU(is_server=False)).buildFrame(pdu)


class Response(NamedTuple):
    """A decoded response: register bytes, or the exception code (then ``data`` is empty)."""

    data: bytes
    exception: int = 0


class RtuResponseDecoder:
    """Finds the response to one request (slave, function, count) in a byte stream.

    Never raises on input; bytes before a valid frame and frames with a bad CRC
    are skipped (``skipped_bytes``, ``bad_frames``).
    """

    def __init__(self, slave: int, function_code: int, count: int) -> None:
        self.slave = slave
        self.fc = function_code
        self.count = count
        self._normal = bytes((slave, function_code, 2 * count))
        self._size = 5 + 2 * count
        self._buf = bytearray()
        self.frames = 0
        self.bad_frames = 0
        self.skipped_bytes = 0

    def feed(self, data: bytes) -> list[Response]:
        buf = self._buf
        buf += data
        n = len(buf)
        out: list[Response] = []
        slave, fc, efc, size = self.slave, self.fc, self.fc | 0x80, self._size
        i = 0
        while True:
            j = buf.find(slave, i)
            if j < 0:
                self.skipped_bytes += n - i
                i = n
                break
            self.skipped_bytes += j - i
            if n - j < 3:
                i = j
                break
            f = buf[j + 1]
            if f == fc and buf[j + 2] == 2 * self.count:
                end = j + size
            elif f == efc and buf[j + 2]:
                end = j + 5
            else:
                self.skipped_bytes += 1
                i = j + 1
                continue
            if n < end:
                i = j
                break
            if crc16(buf[j:end - 2]) != (buf[end - 2] << 8 | buf[end - 1]):
                self.bad_frames += 1
                self.skipped_bytes += 1
                i = j + 1
                continue
            out.append(Response(bytes(buf[j + 3:end - 2])) if f == fc else Response(b"", buf[j + 2]))
            i = end
        del buf[:i]
        self.frames += len(out)
        return out


def encode_response(slave: int, function_code: int, registers: list[int]) -> bytes:
    """A normal response frame (for tests and the benchmark; the simulator uses pymodbus)."""
    body = bytes((slave, function_code, 2 * len(registers))) + struct.pack(f">{len(registers)}H", *registers)
    return body + crc16(body).to_bytes(2, "big")


class FieldSpec(NamedTuple):
    name: str
    offset: int
    type: str = "uint16"
    word_order: str = "big"
    scale: float = 1.0
    unit: str = ""


class FieldLayout:
    """Precompiled decoding of a block's fields from its register bytes."""

    def __init__(self, fields: list[FieldSpec] | tuple[FieldSpec, ...], count: int) -> None:
        self.count = count
        self._plan = []
        for f in fields:
            if f.type not in TYPES:
                raise ValueError(f"unknown register type {f.type!r}")
            if f.offset < 0 or f.offset + WIDTH[f.type] > count:
                raise ValueError(f"field {f.name} does not fit in {count} registers")
            swap = WIDTH[f.type] == 2 and f.word_order == "little"
            self._plan.append((f.name, 2 * f.offset, struct.Struct(TYPES[f.type]).unpack_from, swap,
                               float(f.scale), f.unit))

    def decode(self, data: bytes) -> list[tuple[str, float, str]]:
        """(name, scaled value, unit) of every field; [] when ``data`` has the wrong length.

        A float32 that is NaN or infinite is left out: meters send 0xFFFF... for
        "not available", which is not a measurement.
        """
        if len(data) != 2 * self.count:
            return []
        out = []
        for name, off, unpack, swap, scale, unit in self._plan:
            if swap:
                value = unpack(data[off + 2:off + 4] + data[off:off + 2])[0]
            else:
                value = unpack(data, off)[0]
            value = value * scale
            if value != value or value in (math.inf, -math.inf):
                continue
            out.append((name, value, unit))
        return out


def encode_value(type_: str, word_order: str, value: float) -> list[int]:
    """Registers holding ``value`` (already divided by the scale, rounded for integer types)."""
    fmt = TYPES[type_]
    raw = struct.pack(fmt, value if type_ == "float32" else int(round(value)))
    regs = list(struct.unpack(f">{len(raw) // 2}H", raw))
    if len(regs) == 2 and word_order == "little":
        regs.reverse()
    return regs
