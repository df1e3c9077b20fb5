"""A pyserial port read from asyncio without blocking the event loop.

A local device (a tty with a file descriptor) is read with ``add_reader`` on
its non-blocking descriptor: no thread, and the loop wakes only when bytes
arrive, which keeps an idle gateway's CPU near zero. After each read it waits
``coalesce_s`` before the next (unless the read was large: the data is flowing
fast and waiting would only fill the kernel's buffer), so a sensor sending many
short lines costs a few wake-ups a second instead of one per line (the pipeline batches every
0.2 s anyway, so this adds no visible latency). Ports without one (pyserial
URL handlers such as ``socket://`` or ``loop://``) are read on one worker thread
per port with a short timeout. Opening, writing and closing always run on that
worker thread, since they may block on a misbehaving driver. The port name is resolved
again at every open, so a ``/dev/serial/by-id/...`` link (or a test's symlink)
that now points at another ttyUSB number is followed. Any pyserial URL
(``socket://``, ``loop://``, ``spy://``) works where a device path does.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
from concurrent.futures import ThreadPoolExecutor

import serial

from edge_gateway import aio

from .base import Driver, LinkLost

log = logging.getLogger(__name__)

PORT_CLOSED = "the port closed: unplugged, or another program opened it"


def _lost(port: str, exc: BaseException | str) -> LinkLost:
    """The LinkLost a failed read or write raises, in a technician's words. pyserial's "device
    reports readiness to read but returned no data (device disconnected or multiple access on
    port?)" (and our own check's same words) become :data:`PORT_CLOSED`; the original goes to the
    debug log."""
    text = str(exc)
    if "readiness to read but returned no data" in text:
        log.debug("%s: %s", port, text)
        text = PORT_CLOSED
    return LinkLost(f"{port}: {text}")


def port_problem(port: str) -> str:
    """Why ``port`` cannot name a serial port on the gateway ('' when it can): a device path or a
    pyserial URL. Said at validation: at run time it is only "no such device", retried for ever."""
    if "://" in port or port.startswith("/"):
        return ""
    if not port:
        return "give the serial device, e.g. /dev/ttyUSB0 or /dev/serial/by-id/..."
    if re.fullmatch(r"(?i)com\d+", port):
        return f"{port!r} is a Windows port name: give the gateway's device path, e.g. /dev/ttyUSB0"
    return f"{port!r} is not a device path: did you mean /dev/{port}?"


def resolve(port: str) -> str:
    """Follow symlinks of a device path; leave URLs alone."""
    if "://" in port:
        return port
    if not os.path.exists(port):
        raise LinkLost(f"{port}: no such device")
    return os.path.realpath(port)


def open_serial(port: str, exclusive: bool = True, **kwargs) -> serial.SerialBase:
    """``port`` opened by pyserial (a device path after :func:`resolve`, or a URL), a device locked
    with ``exclusive`` (a flock): the gateway's drivers, ``probe`` and ``record`` all take the lock, so
    two of them on one port are told so instead of splitting its bytes. A URL takes no lock."""
    if "://" in port:
        return serial.serial_for_url(port, **kwargs)
    return serial.serial_for_url(resolve(port), exclusive=exclusive, **kwargs)


class AsyncSerial:
    """Open/read/write/close a serial port from coroutines."""

    def __init__(self, port: str, baudrate: int = 9600, read_timeout: float = 0.2,
                 coalesce_s: float = 0.05, **kwargs) -> None:
        self.port = port
        self.coalesce_s = coalesce_s
        self._last_data = 0.0
        self.baudrate = baudrate
        self.read_timeout = read_timeout
        self.kwargs = kwargs
        self._ser: serial.SerialBase | None = None
        self._fd: int | None = None
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"serial:{port}")

    async def open(self) -> None:
        def _open():
            return open_serial(self.port, baudrate=self.baudrate, timeout=self.read_timeout, **self.kwargs)

        try:
            self._ser = await asyncio.get_running_loop().run_in_executor(self._pool, _open)
        except (serial.SerialException, OSError, ValueError) as exc:
            raise LinkLost(f"{self.port}: {exc}") from exc
        fd = getattr(self._ser, "fd", None)
        self._fd = fd if isinstance(fd, int) and os.get_blocking(fd) is False else None

    async def _readable(self) -> bool:
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        fd = self._fd
        loop.add_reader(fd, lambda: fut.done() or fut.set_result(True))
        try:
            await aio.wait_for(fut, self.read_timeout)
            return True
        except asyncio.TimeoutError:
            return False
        finally:
            loop.remove_reader(fd)

    def _read_fd(self, max_bytes: int, ready: bool) -> bytes:
        """Non-blocking read; empty when nothing is waiting. Readable-but-empty means the device is gone."""
        try:
            data = os.read(self._fd, max_bytes)
        except BlockingIOError:
            return b""
        except OSError as exc:
            raise _lost(self.port, exc) from exc
        if not data and ready:
            raise _lost(self.port, "device reports readiness to read but returned no data")
        return data

    async def read(self, max_bytes: int = 65536) -> bytes:
        """Whatever arrived within the read timeout (maybe nothing); LinkLost when gone."""
        ser = self._ser
        if ser is None:
            raise LinkLost(f"{self.port}: not open")
        if self._fd is not None:
            loop = asyncio.get_running_loop()
            wait = self._last_data + self.coalesce_s - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            data = self._read_fd(max_bytes, False)
            if not data and await self._readable():
                data = self._read_fd(max_bytes, True)
            if data:
                self._last_data = loop.time() if len(data) < 1024 else 0.0
            return data

        def _read() -> bytes:
            waiting = ser.in_waiting
            return ser.read(min(max(waiting, 1), max_bytes))

        try:
            return await asyncio.get_running_loop().run_in_executor(self._pool, _read)
        except (serial.SerialException, OSError) as exc:
            raise _lost(self.port, exc) from exc

    async def discard_input(self, max_bytes: int = 1 << 20) -> int:
        """Throw away whatever is already waiting (a late reply, line noise); the number of bytes."""
        ser = self._ser
        if ser is None:
            raise LinkLost(f"{self.port}: not open")
        if self._fd is not None:
            n = 0
            while n < max_bytes:
                data = self._read_fd(65536, False)
                if not data:
                    break
                n += len(data)
            return n

        def _drain() -> int:
            n = 0
            while n < max_bytes and (waiting := ser.in_waiting):
                n += len(ser.read(waiting))
            return n

        try:
            return await asyncio.get_running_loop().run_in_executor(self._pool, _drain)
        except (serial.SerialException, OSError) as exc:
            raise _lost(self.port, exc) from exc

    async def write(self, data: bytes) -> None:
        ser = self._ser
        if ser is None:
            raise LinkLost(f"{self.port}: not open")
        try:
            await asyncio.get_running_loop().run_in_executor(self._pool, ser.write, data)
        except (serial.SerialException, OSError) as exc:
            raise _lost(self.port, exc) from exc

    async def close(self) -> None:
        ser, self._ser, self._fd = self._ser, None, None
        if ser is not None:
            try:
                await asyncio.get_running_loop().run_in_executor(self._pool, ser.close)
            except (serial.SerialException, OSError):
                pass

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


class StreamDriver(Driver):
    """A sensor that streams bytes on a serial port: the loop every such driver shares.

    A subclass says only how to decode: :meth:`on_open` makes a fresh decoder for
    each connection (a reconnect never sees half a frame from the last one) and
    :meth:`on_bytes` turns a chunk into readings. Its ``Options`` need ``port``
    and ``baudrate``.
    """

    def on_open(self) -> None:
        """Called once the port is open, before the first read."""

    def on_bytes(self, data: bytes, now: float) -> None:
        raise NotImplementedError

    async def run(self) -> None:
        port = AsyncSerial(self.options.port, self.options.baudrate)
        await port.open()
        self.on_open()
        self.connected()
        try:
            while True:
                data = await port.read()
                if data:
                    self.stats.bytes += len(data)
                    self.on_bytes(data, self.clock())
        finally:
            await port.close()
            port.shutdown()
