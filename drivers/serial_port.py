"""A pyserial port read from asyncio without blocking the event loop.

Blocking reads run on one worker thread per port. The port name is resolved
again at every open, so a ``/dev/serial/by-id/...`` link (or a test's symlink)
that now points at another ttyUSB number is followed. Any pyserial URL
(``socket://``, ``loop://``, ``spy://``) works where a device path does.
"""

from __future__ import annotations

import asyncio
import os
from concurrent.futures import ThreadPoolExecutor

import serial

from .base import LinkLost


def resolve(port: str) -> str:
    """Follow symlinks of a device path; leave URLs alone."""
    if "://" in port:
        return port
    if not os.path.exists(port):
        raise LinkLost(f"{port}: no such device")
    return os.path.realpath(port)


class AsyncSerial:
    """Open/read/write/close a serial port from coroutines."""

    def __init__(self, port: str, baudrate: int = 9600, read_timeout: float = 0.2, **kwargs) -> None:
        self.port = port
        self.baudrate = baudrate
        self.read_timeout = read_timeout
        self.kwargs = kwargs
        self._ser: serial.SerialBase | None = None
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"serial:{port}")

    async def open(self) -> None:
        def _open():
            return serial.serial_for_url(resolve(self.port), baudrate=self.baudrate,
                                         timeout=self.read_timeout, **self.kwargs)

        try:
            self._ser = await asyncio.get_running_loop().run_in_executor(self._pool, _open)
        except (serial.SerialException, OSError, ValueError) as exc:
            raise LinkLost(f"{self.port}: {exc}") from exc

    async def read(self, max_bytes: int = 65536) -> bytes:
        """Whatever arrived within the read timeout (maybe nothing); LinkLost when gone."""
        ser = self._ser
        if ser is None:
            raise LinkLost(f"{self.port}: not open")

        def _read() -> bytes:
            waiting = ser.in_waiting
            return ser.read(min(max(waiting, 1), max_bytes))

        try:
            return await asyncio.get_running_loop().run_in_executor(self._pool, _read)
        except (serial.SerialException, OSError) as exc:
            raise LinkLost(f"{self.port}: {exc}") from exc

    async def write(self, data: bytes) -> None:
        ser = self._ser
        if ser is None:
            raise LinkLost(f"{self.port}: not open")
        try:
            await asyncio.get_running_loop().run_in_executor(self._pool, ser.write, data)
        except (serial.SerialException, OSError) as exc:
            raise LinkLost(f"{self.port}: {exc}") from exc

    async def close(self) -> None:
        ser, self._ser = self._ser, None
        if ser is not None:
            try:
                await asyncio.get_running_loop().run_in_executor(self._pool, ser.close)
            except (serial.SerialException, OSError):
                pass

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
