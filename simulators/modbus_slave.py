"""Modbus RTU slaves (energy and water meters) answering on the master side of a pty.

pymodbus' serial server opens a device path itself, but a simulator owns the
pty's master fd, which no path names; so this is a small slave loop on that fd.
Responses are built by pymodbus' own PDU classes and RTU framer, independent
of the driver's response decoder, so a test checks one implementation against
another.

Requests are hunted for in the byte stream as the driver's response decoder
(``drivers/modbus_frames.py``) hunts for responses: a frame is a slave id, a
function code and a valid CRC; bytes that start no valid frame are skipped one
at a time, so a stray byte or a damaged request costs only itself, and a
partial frame left waiting longer than ``frame_gap_s`` (the pty's stand-in for
RTU's 3.5-character silence) is dropped. The length of a read request
(function 3 or 4) is fixed; any other frame ends where its CRC matches.

As the Modbus application protocol specification says, a slave answers a
function it does not implement (all but 3 and 4) with exception 1 (illegal
function), a register count outside 1..125 with exception 3 (illegal data
value) and a register outside the bank with exception 2 (illegal data
address). A slave id missing from the bank stays silent (a dead meter), as do
all slaves on a broadcast (id 0); ``silent`` and ``corrupt`` let a scenario
inject dropouts and CRC errors.

:meth:`RegisterBank.set_value` saturates a value outside its register type's
range to the nearest end (``saturated`` counts it), as a meter's register
does, instead of failing.
"""

from __future__ import annotations

import asyncio
import math
import struct
from typing import Iterable

from pymodbus.framer import FramerRTU
from pymodbus.pdu import DecodePDU, ExceptionResponse
from pymodbus.pdu.register_message import ReadHoldingRegistersResponse, ReadInputRegistersResponse

from drivers.modbus_frames import WIDTH, crc16, encode_value

from .pty_port import PtyPort

ILLEGAL_FUNCTION = 1
ILLEGAL_ADDRESS = 2
ILLEGAL_VALUE = 3
MAX_READ = 125  # registers per read request (Modbus application protocol, 6.3 and 6.4)
MAX_ADU = 256  # bytes in an RTU frame
INT_RANGES = {"int16": (-0x8000, 0x7FFF), "uint16": (0, 0xFFFF), "int32": (-0x80000000, 0x7FFFFFFF),
              "uint32": (0, 0xFFFFFFFF)}
FLOAT32_MAX = 3.4028234663852886e38
_CRC_TABLE = tuple(FramerRTU.crc16_table)


class RegisterBank:
    """Register values per (slave, function code), set from channel values."""

    def __init__(self) -> None:
        self.regs: dict[tuple[int, int], dict[int, int]] = {}
        self.saturated = 0

    def add_slave(self, slave: int) -> None:
        for fc in (3, 4):
            self.regs.setdefault((slave, fc), {})

    @property
    def slaves(self) -> set[int]:
        return {s for s, _ in self.regs}

    def set_registers(self, slave: int, function: str, address: int, words: Iterable[int]) -> None:
        fc = 3 if function == "holding" else 4
        table = self.regs.setdefault((slave, fc), {})
        self.regs.setdefault((slave, 7 - fc), {})
        for i, w in enumerate(words):
            table[address + i] = w & 0xFFFF

    def set_value(self, wire: dict, value: float) -> None:
        """Store ``value`` where a scenario channel's ``wire`` map says (slave, address, type...).

        A value its type cannot hold is saturated to the type's nearest end (float32: to the largest
        finite float32) and counted in ``saturated``; NaN in an integer type is stored as all ones,
        the usual "not available" pattern.
        """
        type_ = wire.get("type", "uint16")
        raw = value / float(wire.get("scale", 1.0))
        if type_ == "float32":
            if math.isfinite(raw) and abs(raw) > FLOAT32_MAX:
                raw = math.copysign(FLOAT32_MAX, raw)
                self.saturated += 1
            words = encode_value(type_, wire.get("word_order", "big"), raw)
        elif math.isnan(raw):
            words = [0xFFFF] * WIDTH[type_]
            self.saturated += 1
        else:
            lo, hi = INT_RANGES[type_]
            if not lo <= raw <= hi:
                raw = min(max(raw, lo), hi)
                self.saturated += 1
            words = encode_value(type_, wire.get("word_order", "big"), raw)
        self.set_registers(int(wire["slave"]), wire.get("function", "holding"), int(wire["address"]), words)

    def read(self, slave: int, fc: int, address: int, count: int) -> list[int] | int | None:
        """Registers, an exception code, or None when no such slave is on the bus (checked in the
        specification's order: function, then count, then address)."""
        if slave not in self.slaves:
            return None
        if fc not in (3, 4):
            return ILLEGAL_FUNCTION
        if not 1 <= count <= MAX_READ:
            return ILLEGAL_VALUE
        table = self.regs.get((slave, fc), {})
        try:
            return [table[a] for a in range(address, address + count)]
        except KeyError:
            return ILLEGAL_ADDRESS


def _frame_end(buf: bytearray, i: int) -> int:
    """End of the CRC-valid frame starting at ``buf[i]``; 0 while it may still be arriving, -1 when
    no frame starts there."""
    n = len(buf)
    if buf[i] > 247:
        return -1
    if n - i < 4:
        return 0
    if buf[i + 1] in (3, 4):
        end = i + 8
        if n < end:
            return 0
        return end if crc16(buf[i:end - 2]) == (buf[end - 2] << 8 | buf[end - 1]) else -1
    table = _CRC_TABLE
    crc = 0xFFFF
    last = min(n, i + MAX_ADU)
    for j in range(i, last - 2):  # the frame is buf[i:j+3] when the CRC of buf[i:j+1] follows it
        crc = (crc >> 8) ^ table[(crc ^ buf[j]) & 0xFF]
        if j >= i + 1 and buf[j + 1] == crc & 0xFF and buf[j + 2] == crc >> 8:
            return j + 3
    return 0 if n - i < MAX_ADU else -1


class ModbusSlaveSim:
    """Serves a :class:`RegisterBank` on a pty until :meth:`detach` or :meth:`close`."""

    def __init__(self, bank: RegisterBank, frame_gap_s: float = 0.5) -> None:
        self.bank = bank
        self.port: PtyPort | None = None
        self.silent = False
        self.corrupt = False
        self.stall_s = 0.0
        self.frame_gap_s = frame_gap_s
        self.requests = 0
        self.skipped_bytes = 0
        self._held: list[bytes] = []
        self._buf = bytearray()
        self._last_rx = 0.0
        self._framer = FramerRTU(DecodePDU(is_server=True))

    def attach(self, port: PtyPort) -> None:
        """Answer requests arriving on ``port`` (a nonblocking :class:`PtyPort`)."""
        self.detach()
        self.port = port
        self._buf = bytearray()
        asyncio.get_running_loop().add_reader(port.master, self._on_readable)

    def detach(self) -> None:
        if self.port is not None:
            asyncio.get_running_loop().remove_reader(self.port.master)
            self.port = None

    def _on_readable(self) -> None:
        port = self.port
        if port is None:
            return
        data = port.read()
        if not data:
            return
        now = asyncio.get_running_loop().time()
        if self._buf and now - self._last_rx >= self.frame_gap_s:  # silence: that partial frame is over
            self.skipped_bytes += len(self._buf)
            self._buf = bytearray()
        self._last_rx = now
        self._buf += data
        for frame in self.feed():
            self.requests += 1
            reply = self.respond(frame)
            if reply is None:
                continue
            if self._held or self.stall_s > 0:
                self._hold(reply)
            else:
                port.try_write(reply)

    def feed(self, data: bytes = b"") -> list[bytes]:
        """The complete, CRC-valid request frames in the bytes received so far (and ``data``), in order;
        bytes that start no frame are dropped one at a time (``skipped_bytes``)."""
        buf = self._buf
        buf += data
        frames = []
        while buf:
            pending = -1  # the first offset whose frame may still be arriving
            for i in range(len(buf)):
                end = _frame_end(buf, i)
                if end > 0:
                    frames.append(bytes(buf[i:end]))
                    self.skipped_bytes += i
                    del buf[:end]
                    break
                if end == 0 and pending < 0:
                    pending = i
            else:
                keep = len(buf) if pending < 0 else pending
                self.skipped_bytes += keep
                del buf[:keep]
                break
        return frames

    def _hold(self, reply: bytes) -> None:
        """A busy slave: with ``stall_s`` set, the next reply waits that long, and later ones queue behind it."""
        if not self._held:
            asyncio.get_running_loop().call_later(self.stall_s, self._release)
            self.stall_s = 0.0
        self._held.append(reply)

    def _release(self) -> None:
        held, self._held = self._held, []
        if self.port is not None:
            for reply in held:
                self.port.try_write(reply)

    def respond(self, frame: bytes) -> bytes | None:
        """The bytes answering one request frame (None: stay silent)."""
        if self.silent:
            return None
        slave, fc = frame[0], frame[1]
        if slave not in self.bank.slaves:  # a dead meter, or a broadcast (slave 0)
            return None
        if fc in (3, 4) and len(frame) == 8:
            address, count = struct.unpack_from(">HH", frame, 2)
            result = self.bank.read(slave, fc, address, count)
        else:
            result = ILLEGAL_FUNCTION
        if result is None:
            return None
        if isinstance(result, int):
            resp = ExceptionResponse(fc & 0x7F, result, device_id=slave)
        else:
            cls = ReadHoldingRegistersResponse if fc == 3 else ReadInputRegistersResponse
            resp = cls(registers=result, dev_id=slave)
        frame = self._framer.buildFrame(resp)
        if self.corrupt:
            frame = frame[:-1] + bytes([frame[-1] ^ 0xFF])
        return frame

    def close(self) -> None:
        port = self.port
        self.detach()
        if port is not None:
            port.close()


def main(argv: list[str] | None = None) -> int:
    """``python -m simulators.modbus_slave --help``: what the module is. It has no command line of its own:
    ``edge-gateway-sim city`` runs Modbus slaves from a scenario, and tests start them in-process."""
    from .cli import run_by_city

    return run_by_city("python -m simulators.modbus_slave", __doc__,
                       "Modbus slaves (the scenario's modbus sensors)", argv)


if __name__ == "__main__":
    import sys

    sys.exit(main())
