"""Modbus RTU slaves (energy and water meters) answering on the master side of a pty.

pymodbus' serial server opens a device path itself, but a simulator owns the
pty's master fd, which no path names; so this is a small slave loop on that fd.
Requests are decoded and responses built by pymodbus' own RTU framer and PDU
classes, independent of the driver's response decoder, so a test checks one
implementation against another.

Several slaves share the one pty as they would share an RS-485 pair. A slave
id missing from the bank stays silent (a dead meter); a register outside the
bank gets exception 2 (illegal data address); ``silent`` and ``corrupt`` let a
scenario inject dropouts and CRC errors.
"""

from __future__ import annotations

import asyncio
from typing import Iterable

from pymodbus.exceptions import ModbusIOException
from pymodbus.framer import FramerRTU
from pymodbus.pdu import DecodePDU, ExceptionResponse
from pymodbus.pdu.register_message import ReadHoldingRegistersResponse, ReadInputRegistersResponse

from drivers.modbus_frames import encode_value

from .pty_port import PtyPort

ILLEGAL_FUNCTION = 1
ILLEGAL_ADDRESS = 2


class RegisterBank:
    """Register values per (slave, function code), set from channel values."""

    def __init__(self) -> None:
        self.regs: dict[tuple[int, int], dict[int, int]] = {}

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
        """Store ``value`` where a scenario channel's ``wire`` map says (slave, address, type...)."""
        scale = float(wire.get("scale", 1.0))
        words = encode_value(wire.get("type", "uint16"), wire.get("word_order", "big"), value / scale)
        self.set_registers(int(wire["slave"]), wire.get("function", "holding"), int(wire["address"]), words)

    def read(self, slave: int, fc: int, address: int, count: int) -> list[int] | int | None:
        """Registers, an exception code, or None when no such slave is on the bus."""
        if slave not in self.slaves:
            return None
        if fc not in (3, 4):
            return ILLEGAL_FUNCTION
        table = self.regs.get((slave, fc), {})
        try:
            return [table[a] for a in range(address, address + count)]
        except KeyError:
            return ILLEGAL_ADDRESS


class ModbusSlaveSim:
    """Serves a :class:`RegisterBank` on a pty until :meth:`detach` or :meth:`close`."""

    def __init__(self, bank: RegisterBank) -> None:
        self.bank = bank
        self.port: PtyPort | None = None
        self.silent = False
        self.corrupt = False
        self.stall_s = 0.0
        self.requests = 0
        self._held: list[bytes] = []
        self._buf = b""
        self._framer = FramerRTU(DecodePDU(is_server=True))

    def attach(self, port: PtyPort) -> None:
        """Answer requests arriving on ``port`` (a nonblocking :class:`PtyPort`)."""
        self.detach()
        self.port = port
        self._buf = b""
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
        self._buf += data
        while self._buf:
            try:
                used, pdu = self._framer.handleFrame(self._buf, 0, 0)
            except ModbusIOException:
                self._buf = b""
                return
            if pdu is None:
                if used:
                    self._buf = self._buf[used:]
                    continue
                return
            self._buf = self._buf[used:]
            self.requests += 1
            reply = self.respond(pdu)
            if reply is None:
                continue
            if self._held or self.stall_s > 0:
                self._hold(reply)
            else:
                port.try_write(reply)

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

    def respond(self, pdu) -> bytes | None:
        """The bytes answering one decoded request (None: stay silent)."""
        if self.silent:
            return None
        fc = pdu.function_code
        result = self.bank.read(pdu.dev_id, fc, getattr(pdu, "address", 0), getattr(pdu, "count", 0))
        if result is None:
            return None
        if isinstance(result, int):
            resp = ExceptionResponse(fc, result, device_id=pdu.dev_id)
        else:
            cls = ReadHoldingRegistersResponse if fc == 3 else ReadInputRegistersResponse
            resp = cls(registers=result, dev_id=pdu.dev_id)
        frame = self._framer.buildFrame(resp)
        if self.corrupt:
            frame = frame[:-1] + bytes([frame[-1] ^ 0xFF])
        return frame

    def close(self) -> None:
        port = self.port
        self.detach()
        if port is not None:
            port.close()
