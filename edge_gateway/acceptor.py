"""Accepting connections on a listening socket the daemon owns, with a cap and a backoff.

The control socket and the Prometheus endpoint both serve local clients on the event loop; neither may
let those clients take the daemon's descriptors or flood its journal. asyncio's own accept loop logs every
failed ``accept()`` with a traceback and retries in a burst (11,000 log lines in 10 s once descriptors
ran out); :class:`CappedAcceptor` backs off and logs once per episode. At most ``max_clients`` connections
are served at once; more are answered ``busy`` and closed at once, counted, and logged at most once every
:data:`REFUSED_LOG_EVERY_S`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from typing import Awaitable, Callable

from . import aio

log = logging.getLogger(__name__)

ACCEPT_BACKOFF_S = (0.05, 1.0)  # first and longest pause after a failed accept()
REFUSED_LOG_EVERY_S = 60.0


class CappedAcceptor:
    """Serves each accepted connection with ``serve(conn)`` in a task of its own, at most ``max_clients``
    at once. ``what`` names the server in log lines, ``name`` its tasks (``NAME-accept``, ``NAME-client``).
    A refused connection is sent ``busy`` (the server's own "too many clients" answer) and, so that a
    request already sent does not turn the close into a reset, up to ``drain`` bytes are read first."""

    def __init__(self, what: str, name: str, serve: Callable[[socket.socket], Awaitable[None]], busy: bytes,
                 drain: int, max_clients: int, logger: logging.Logger = log) -> None:
        self.what = what
        self.name = name
        self.serve = serve
        self.busy = busy
        self.drain = drain
        self.max_clients = max_clients
        self.log = logger
        self.refused = 0  # connections turned away because max_clients were being served
        self.accept_errors = 0
        self._listener: socket.socket | None = None
        self._task: asyncio.Task | None = None
        self._clients: set[asyncio.Task] = set()
        self._refused_logged = float("-inf")

    @property
    def clients(self) -> int:
        return len(self._clients)

    def start(self, listener: socket.socket) -> None:
        """Accept on ``listener`` (bound, listening, non-blocking) until :meth:`stop`, which closes it."""
        self._listener = listener
        self._task = asyncio.get_running_loop().create_task(self._accept_loop(), name=f"{self.name}-accept")

    async def stop(self) -> None:
        """Stop accepting, close the listener and end every connection being served."""
        if self._task is not None:
            await aio.cancel_and_wait([self._task])
            self._task = None
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        await aio.cancel_and_wait(list(self._clients))

    async def _accept_loop(self) -> None:
        loop = asyncio.get_running_loop()
        listener = self._listener
        assert listener is not None
        failed, pause = 0, 0.0
        while True:
            try:
                conn, _ = await loop.sock_accept(listener)
            except OSError as exc:
                failed += 1
                self.accept_errors += 1
                if failed == 1:
                    self.log.error("%s: accept failed (%s); retrying with backoff", self.what, exc.strerror or exc)
                pause = min(ACCEPT_BACKOFF_S[1], max(ACCEPT_BACKOFF_S[0], pause * 2))
                await asyncio.sleep(pause)
                continue
            if failed:
                self.log.warning("%s: accepting again after %d failed accepts", self.what, failed)
                failed, pause = 0, 0.0
            if len(self._clients) >= self.max_clients:
                self._refuse(conn)
                continue
            task = loop.create_task(self.serve(conn), name=f"{self.name}-client")
            self._clients.add(task)
            task.add_done_callback(self._clients.discard)

    def _refuse(self, conn: socket.socket) -> None:
        self.refused += 1
        now = time.monotonic()
        if now - self._refused_logged >= REFUSED_LOG_EVERY_S:
            self._refused_logged = now
            self.log.warning("%s: %d clients connected, refusing more (%d refused so far)",
                             self.what, self.max_clients, self.refused)
        with conn:
            with contextlib.suppress(OSError):
                conn.send(self.busy)
                conn.recv(self.drain)


class AcceptorCounters:
    """The counters of a server's :class:`CappedAcceptor` (``self._acceptor``), as its own attributes: the
    control socket and the Prometheus endpoint report them in status."""

    _acceptor: CappedAcceptor

    @property
    def max_clients(self) -> int:
        return self._acceptor.max_clients

    @property
    def clients(self) -> int:
        return self._acceptor.clients

    @property
    def refused(self) -> int:
        """Connections turned away because max_clients were being served."""
        return self._acceptor.refused

    @property
    def accept_errors(self) -> int:
        return self._acceptor.accept_errors
