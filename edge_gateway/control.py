"""The daemon's local control socket: a Unix stream socket speaking one JSON object per line.

Server side (:class:`ControlServer`, run by the daemon) and client side
(:func:`request`, :func:`stream`, used by ``edge-gateway status``/``tail``/``reload``).

Protocol (UTF-8, ``\\n``-terminated JSON lines, one request per connection)::

    -> {"cmd": "status"}                  <- {"ok": true, "status": {...snapshot...}}
    -> {"cmd": "tail", "sensor": "air-1"} <- {"ok": true, "tail": "air-1"}
                                          <- {"type": "reading", "sensor": ..., "channel": ..., "value": ..., "ts": ...}
                                          <- {"type": "event", ...}   (anomalies, link gaps)
                                          <- {"type": "dropped", "count": N}   (this client fell too far behind)
    -> {"cmd": "reload"}                  <- {"ok": true, "reload": {...}} or {"ok": false, "error": "..."}
    -> {"cmd": "tail", "sensor": "air1"}  <- {"ok": false, "unknown_sensor": "air1",
                                              "error": "no sensor 'air1'; did you mean 'air-1'? sensors: air-1"}
    -> anything else                      <- {"ok": false, "error": "..."}

A ``tail`` of a sensor is checked against the ``sensors`` of the snapshot (the status document
lists every configured sensor), so a mistyped id is an answer, not a silent wait.

The socket file is made mode 0660 (the service runs with ``UMask=0077``, so it is
chmod-ed explicitly after bind): the service's user and group may connect, no one
else. At most :data:`MAX_CLIENTS` connections are served at once; more get
``{"ok": false, "error": "too many clients ..."}`` and are closed, so clients can
never use up the daemon's file descriptors (serial ports and the MQTT socket need
them). A failing ``accept()`` (EMFILE) is retried with backoff and logged once
(:class:`.acceptor.CappedAcceptor`, shared with the Prometheus endpoint).

:class:`Tap` broadcasts readings and events to ``tail`` clients. Each item is
encoded once; each client's buffer is bounded in bytes
(:data:`CLIENT_BUFFER_BYTES`), not items, because the daemon publishes a whole
pipeline round (thousands of readings) before a client can run: a client that
keeps up gets every round, one that falls behind by more than the buffer loses
the newest items (and is told how many); the pipeline never waits for it.

Not here: what a snapshot contains (:meth:`edge_gateway.daemon.Gateway.status`).
"""

from __future__ import annotations

import asyncio
import contextlib
import difflib
import inspect
import json
import logging
import os
import socket
import stat
from collections import deque
from pathlib import Path
from typing import Any, Callable, Iterator

from . import aio
from .acceptor import AcceptorCounters, CappedAcceptor

log = logging.getLogger(__name__)

MAX_REQUEST = 64 * 1024
MAX_CLIENTS = 32
LISTEN_BACKLOG = 64
# About 9,000 readings: 4 rounds at 10,000 readings/s and 0.2 s rounds. Items are shared by all
# clients; each client holds at most this much that it has not read yet.
CLIENT_BUFFER_BYTES = 1024 * 1024
SOCKET_MODE = 0o660


class DaemonNotRunning(Exception):
    """Nothing listens on the control socket."""


# --- the broadcast of readings and events -----------------------------------------------------

class Subscription:
    """One ``tail`` client's unread lines, bounded in bytes (and in items, if ``max_items``)."""

    def __init__(self, sensor: str | None, max_bytes: int, max_items: int = 0) -> None:
        self.sensor = sensor
        self.max_bytes = max_bytes
        self.max_items = max_items
        self.lines: deque[bytes] = deque()
        self.size = 0  # bytes in ``lines``
        self.peak = 0  # largest ``size`` seen (tests, diagnostics)
        self.dropped = 0
        self._ready: asyncio.Future | None = None

    def offer(self, line: bytes) -> bool:
        if self.size + len(line) > self.max_bytes or (self.max_items and len(self.lines) >= self.max_items):
            self.dropped += 1
            return False
        self.lines.append(line)
        self.size += len(line)
        self.peak = max(self.peak, self.size)
        ready = self._ready
        if ready is not None and not ready.done():
            ready.set_result(None)
        return True

    async def wait(self) -> None:
        """Until there is something to take."""
        while not self.lines:
            self._ready = asyncio.get_running_loop().create_future()
            try:
                await self._ready
            finally:
                self._ready = None

    def take(self) -> bytes:
        data = b"".join(self.lines)
        self.lines.clear()
        self.size = 0
        return data


class Tap:
    """Fan-out of pipeline items to subscribers; :meth:`publish` never blocks.

    ``maxsize`` optionally bounds each client in items too (0: bytes only)."""

    def __init__(self, maxsize: int = 0, max_bytes: int = CLIENT_BUFFER_BYTES) -> None:
        self.maxsize = maxsize
        self.max_bytes = max_bytes
        self._subs: list[Subscription] = []
        self.dropped = 0

    @property
    def active(self) -> bool:
        """True when someone listens (so the daemon builds items only then)."""
        return bool(self._subs)

    @property
    def subscriptions(self) -> tuple[Subscription, ...]:
        return tuple(self._subs)

    def wants(self, sensor: str) -> bool:
        return any(s.sensor is None or s.sensor == sensor for s in self._subs)

    def subscribe(self, sensor: str | None = None) -> Subscription:
        sub = Subscription(sensor, self.max_bytes, self.maxsize)
        self._subs.append(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        with contextlib.suppress(ValueError):
            self._subs.remove(sub)

    def publish(self, item: dict) -> None:
        sensor = item.get("sensor")
        line = None
        for sub in self._subs:
            if sub.sensor is not None and sensor != sub.sensor:
                continue
            if line is None:
                line = _line(item)
            if not sub.offer(line):
                self.dropped += 1


# --- server -----------------------------------------------------------------------------------

Handler = Callable[[dict], Any]


class ControlServer(AcceptorCounters):
    """Serves ``status``/``tail``/``reload`` on a Unix socket owned by the daemon."""

    def __init__(self, path: str | os.PathLike, snapshot: Callable[[], Any], tap: Tap | None = None,
                 commands: dict[str, Handler] | None = None, mode: int = SOCKET_MODE,
                 max_clients: int = MAX_CLIENTS) -> None:
        self.path = Path(path)
        self.snapshot = snapshot
        self.tap = tap or Tap()
        self.commands = dict(commands or {})
        self.mode = mode
        self._acceptor = CappedAcceptor(
            "control socket", "control", self._client,
            _line({"ok": False, "error": f"too many clients (at most {max_clients}); try again later"}),
            MAX_REQUEST, max_clients, log)

    async def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale(self.path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(str(self.path))
            os.chmod(self.path, self.mode)
            sock.listen(LISTEN_BACKLOG)
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        self._acceptor.start(sock)
        log.info("control socket %s", self.path)

    async def stop(self) -> None:
        await self._acceptor.stop()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    async def _client(self, conn: socket.socket) -> None:
        try:
            reader, writer = await asyncio.open_unix_connection(sock=conn, limit=MAX_REQUEST)
        except OSError:
            conn.close()
            return
        await self._serve(reader, writer)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            try:
                line = await aio.wait_for(reader.readline(), 10.0)
                req = json.loads(line)
                if not isinstance(req, dict):
                    raise ValueError("a request is a JSON object")
            except (ValueError, RecursionError, asyncio.LimitOverrunError, asyncio.TimeoutError) as exc:
                # RecursionError: JSON nested deeper than the parser's stack (a line of 30,000 "[")
                why = "nested too deep" if isinstance(exc, RecursionError) else exc
                await _send(writer, {"ok": False, "error": f"bad request: {why}"})
                return
            await self._dispatch(req, reader, writer)
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _dispatch(self, req: dict, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        cmd, sensor = req.get("cmd"), req.get("sensor")
        if not isinstance(cmd, str):
            await _send(writer, {"ok": False, "error": f"bad request: cmd must be a string, not {_kind(cmd)}"})
        elif cmd == "tail" and sensor is not None and not isinstance(sensor, str):
            await _send(writer, {"ok": False, "error": f"bad request: sensor must be a string, not {_kind(sensor)}"})
        elif cmd == "tail":
            refusal = await self._unknown_sensor(sensor) if sensor else None
            if refusal is not None:
                await _send(writer, refusal)
            else:
                await self._tail(sensor or None, reader, writer)
        else:
            await _send(writer, await self._answer(cmd, req))

    async def _answer(self, cmd: str, req: dict) -> dict:
        try:
            if cmd == "status":
                snap = self.snapshot()
                if inspect.isawaitable(snap):
                    snap = await snap
                return {"ok": True, "status": snap}
            if cmd in self.commands:
                result = self.commands[cmd](req)
                if inspect.isawaitable(result):
                    result = await result
                return {"ok": True, cmd: result}
        except ValueError as exc:  # a handler's refusal (e.g. reload): its text is for the user
            return {"ok": False, "error": str(exc)}
        except Exception as exc:  # noqa: BLE001 - a bug: one log entry, an error reply, keep serving
            log.exception("control command %r failed", cmd)
            return {"ok": False, "error": str(exc) or type(exc).__name__}
        known = ", ".join(["status", "tail", *self.commands])
        return {"ok": False, "error": f"unknown cmd {cmd[:64]!r}; known: {known}"}

    async def _unknown_sensor(self, sensor: str) -> dict | None:
        """The refusal of a ``tail`` of a sensor the gateway does not have, naming those it has (the
        ``sensors`` of the snapshot); None if it has it, or if the snapshot lists no sensors."""
        try:
            snap = self.snapshot()
            if inspect.isawaitable(snap):
                snap = await snap
        except Exception:  # noqa: BLE001 - a bug: logged; the tail goes ahead unchecked
            log.exception("control: snapshot for tail failed")
            return None
        known = snap.get("sensors") if isinstance(snap, dict) else None
        if not isinstance(known, dict) or sensor in known:
            return None
        ids = sorted(known)
        near = difflib.get_close_matches(sensor, ids, n=1)
        hint = f"did you mean {near[0]!r}? " if near else ""
        return {"ok": False, "unknown_sensor": sensor[:64],
                "error": f"no sensor {sensor[:64]!r}; {hint}sensors: {', '.join(ids) or 'none'}"}

    async def _tail(self, sensor: str | None, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sub = self.tap.subscribe(sensor)
        eof = asyncio.ensure_future(reader.read(1))
        try:
            await _send(writer, {"ok": True, "tail": sensor})
            reported = 0
            while not eof.done():
                ready = asyncio.ensure_future(sub.wait())
                done, _ = await asyncio.wait({ready, eof}, return_when=asyncio.FIRST_COMPLETED)
                if ready not in done:
                    ready.cancel()
                    break
                data = sub.take()
                if sub.dropped != reported:
                    data += _line({"type": "dropped", "count": sub.dropped - reported})
                    reported = sub.dropped
                writer.write(data)
                await writer.drain()
        finally:
            eof.cancel()
            self.tap.unsubscribe(sub)


def _kind(x: Any) -> str:
    return "null" if x is None else type(x).__name__


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


def _send_request(s: socket.socket, req: dict) -> None:
    """A daemon that refuses the connection (too many clients) may close it before reading:
    its one-line reply is still there to read."""
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        s.sendall(_line(req))


def request(path: str | os.PathLike, req: dict, timeout: float = 10.0) -> dict:
    """Send one request and return the one reply (raise DaemonNotRunning if nothing listens)."""
    with _connect(path, timeout) as s:
        _send_request(s, req)
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
        _send_request(s, req)
        with s.makefile("rb") as f:
            for line in f:
                yield json.loads(line)
    finally:
        s.close()


