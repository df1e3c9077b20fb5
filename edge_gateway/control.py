"""The daemon's local control socket: a Unix stream socket speaking one JSON object per line.

Server side (:class:`ControlServer`, run by the daemon) and client side
(:func:`request`, :func:`stream`, used by ``edge-gateway status``/``tail``/``reload``).

Protocol (UTF-8, ``\\n``-terminated JSON lines, one request per connection)::

    -> {"cmd": "status"}                  <- {"ok": true, "status": {...snapshot...}}
    -> {"cmd": "tail", "sensor": "air-1"} <- {"ok": true, "tail": "air-1"}
                                          <- {"type": "reading", "sensor": ..., "channel": ..., "value": ..., "ts": ...}
                                          <- {"type": "event", ...}   (anomalies, link gaps)
                                          <- {"type": "dropped", "count": N}   (this client was too slow)
    -> {"cmd": "reload"}                  <- {"ok": true, "reload": {...}} or {"ok": false, "error": "..."}
    -> anything else                      <- {"ok": false, "error": "..."}

The socket file is made mode 0660 (the service runs with ``UMask=0077``, so it is
chmod-ed explicitly after bind): the service's user and group may connect, no one
else. :class:`Tap` broadcasts readings and events to ``tail`` clients through
bounded per-client queues; a slow client loses items (and is told how many),
the pipeline never waits for it.

Not here: what a snapshot contains (:meth:`edge_gateway.daemon.Gateway.status`).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
import os
import socket
import stat
from pathlib import Path
from typing import Any, Callable, Iterator

from . import aio

log = logging.getLogger(__name__)

MAX_REQUEST = 64 * 1024
CLIENT_BUFFER = 1000
SOCKET_MODE = 0o660


class DaemonNotRunning(Exception):
    """Nothing listens on the control socket."""


# --- the broadcast of readings and events -----------------------------------------------------

class Subscription:
    def __init__(self, sensor: str | None, maxsize: int) -> None:
        self.sensor = sensor
        self.queue: asyncio.Queue = asyncio.Queue(maxsize)
        self.dropped = 0


class Tap:
    """Fan-out of pipeline items to subscribers; :meth:`publish` never blocks."""

    def __init__(self, maxsize: int = CLIENT_BUFFER) -> None:
        self.maxsize = maxsize
        self._subs: list[Subscription] = []
        self.dropped = 0

    @property
    def active(self) -> bool:
        """True when someone listens (so the daemon builds items only then)."""
        return bool(self._subs)

    def wants(self, sensor: str) -> bool:
        return any(s.sensor is None or s.sensor == sensor for s in self._subs)

    def subscribe(self, sensor: str | None = None) -> Subscription:
        sub = Subscription(sensor, self.maxsize)
        self._subs.append(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        with contextlib.suppress(ValueError):
            self._subs.remove(sub)

    def publish(self, item: dict) -> None:
        sensor = item.get("sensor")
        for sub in self._subs:
            if sub.sensor is not None and sensor != sub.sensor:
                continue
            try:
                sub.queue.put_nowait(item)
            except asyncio.QueueFull:
                sub.dropped += 1
                self.dropped += 1


# --- server -----------------------------------------------------------------------------------

Handler = Callable[[dict], Any]


class ControlServer:
    """Serves ``status``/``tail``/``reload`` on a Unix socket owned by the daemon."""

    def __init__(self, path: str | os.PathLike, snapshot: Callable[[], Any], tap: Tap | None = None,
                 commands: dict[str, Handler] | None = None, mode: int = SOCKET_MODE) -> None:
        self.path = Path(path)
        self.snapshot = snapshot
        self.tap = tap or Tap()
        self.commands = dict(commands or {})
        self.mode = mode
        self._server: asyncio.base_events.Server | None = None
        self._clients: set[asyncio.Task] = set()

    async def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale(self.path)
        self._server = await asyncio.start_unix_server(self._serve, path=str(self.path), limit=MAX_REQUEST)
        os.chmod(self.path, self.mode)
        log.info("control socket %s", self.path)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await aio.cancel_and_wait(list(self._clients))
            with contextlib.suppress(Exception):
                await aio.wait_for(self._server.wait_closed(), 2.0)
            self._server = None
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._clients.add(task)
        try:
            try:
                line = await aio.wait_for(reader.readline(), 10.0)
                req = json.loads(line)
                if not isinstance(req, dict):
                    raise ValueError("a request is a JSON object")
            except (ValueError, asyncio.LimitOverrunError, asyncio.TimeoutError) as exc:
                await _send(writer, {"ok": False, "error": f"bad request: {exc}"})
                return
            cmd = req.get("cmd")
            if cmd == "status":
                snap = self.snapshot()
                if inspect.isawaitable(snap):
                    snap = await snap
                await _send(writer, {"ok": True, "status": snap})
            elif cmd == "tail":
                await self._tail(req.get("sensor") or None, reader, writer)
            elif cmd in self.commands:
                try:
                    result = self.commands[cmd](req)
                    if inspect.isawaitable(result):
                        result = await result
                except Exception as exc:  # noqa: BLE001 - report to the client, keep serving
                    await _send(writer, {"ok": False, "error": str(exc)})
                else:
                    await _send(writer, {"ok": True, cmd: result})
            else:
                known = ", ".join(["status", "tail", *self.commands])
                await _send(writer, {"ok": False, "error": f"unknown cmd {cmd!r}; known: {known}"})
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self._clients.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _tail(self, sensor: str | None, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sub = self.tap.subscribe(sensor)
        eof = asyncio.ensure_future(reader.read(1))
        try:
            await _send(writer, {"ok": True, "tail": sensor})
            reported = 0
            while not eof.done():
                get = asyncio.ensure_future(sub.queue.get())
                done, _ = await asyncio.wait({get, eof}, return_when=asyncio.FIRST_COMPLETED)
                if get not in done:
                    get.cancel()
                    break
                items = [get.result()]
                while not sub.queue.empty() and len(items) < 256:
                    items.append(sub.queue.get_nowait())
                if sub.dropped != reported:
                    items.append({"type": "dropped", "count": sub.dropped - reported})
                    reported = sub.dropped
                writer.write(b"".join(_line(i) for i in items))
                await writer.drain()
        finally:
            eof.cancel()
            self.tap.unsubscribe(sub)


def _line(obj: dict) -> bytes:
    return json.dumps(obj, separators=(",", ":"), default=str).encode() + b"\n"


async def _send(writer: asyncio.StreamWriter, obj: dict) -> None:
    writer.write(_line(obj))
    await writer.drain()


def _remove_stale(path: Path) -> None:
    """Unlink a socket file nobody listens on; refuse to steal one a live daemon owns."""
    try:
        st = path.lstat()
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise RuntimeError(f"{path} exists and is not a socket")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(1.0)
        try:
            s.connect(str(path))
        except OSError:
            path.unlink()
            return
    raise RuntimeError(f"{path}: another edge-gateway is already running")


# --- client -----------------------------------------------------------------------------------

def _connect(path: str | os.PathLike, timeout: float) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(str(path))
    except (FileNotFoundError, ConnectionRefusedError) as exc:
        s.close()
        raise DaemonNotRunning(f"no edge-gateway daemon at {path} ({exc.strerror})") from None
    except OSError:
        s.close()
        raise
    return s


def request(path: str | os.PathLike, req: dict, timeout: float = 10.0) -> dict:
    """Send one request and return the one reply (raise DaemonNotRunning if nothing listens)."""
    with _connect(path, timeout) as s:
        s.sendall(_line(req))
        f = s.makefile("rb")
        line = f.readline()
    if not line:
        raise ConnectionError(f"{path}: the daemon closed the connection without a reply")
    return json.loads(line)


def stream(path: str | os.PathLike, req: dict, timeout: float | None = None) -> Iterator[dict]:
    """Send one request and yield every reply line until the daemon closes the connection."""
    s = _connect(path, 10.0)
    s.settimeout(timeout)
    try:
        s.sendall(_line(req))
        with s.makefile("rb") as f:
            for line in f:
                yield json.loads(line)
    finally:
        s.close()


