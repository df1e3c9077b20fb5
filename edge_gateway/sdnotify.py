"""The systemd notify protocol, spoken directly to ``$NOTIFY_SOCKET`` (no libsystemd needed).

:class:`Notifier` sends ``READY=1``, ``STATUS=...``, ``STOPPING=1`` and
``WATCHDOG=1`` datagrams to the socket systemd names in ``$NOTIFY_SOCKET``: a
file path, or ``@name`` for an abstract socket. Without that variable every
call is a no-op, so the daemon runs the same in a terminal.

The watchdog is pinged by :meth:`Notifier.watchdog_task`, a coroutine that runs
*on the daemon's event loop* every ``WATCHDOG_USEC/2``: if the loop hangs (a
blocking call, a deadlock) the pings stop and systemd aborts and restarts the
service. A side thread would keep pinging a dead loop, which is why there is
none. The daemon also withholds them while its pipeline makes no progress (see
:class:`~edge_gateway.stall.ProgressMonitor`). ``WATCHDOG_PID`` is honoured: when
it names another process, this one does not ping.

Not here: deciding *when* the daemon is ready; :class:`~edge_gateway.daemon.Gateway`
calls ``notify("READY=1")`` once its kernels are warm and its queue is open.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from typing import Callable, Mapping

log = logging.getLogger(__name__)


def socket_address(value: str) -> str | bytes:
    """The ``connect``/``sendto`` address for a ``$NOTIFY_SOCKET`` value (``@`` means abstract)."""
    if value.startswith("@"):
        return b"\0" + value[1:].encode()
    return value


def watchdog_interval(env: Mapping[str, str], pid: int | None = None) -> float | None:
    """Seconds between pings (half of ``WATCHDOG_USEC``), or None when the watchdog is off for us."""
    usec = env.get("WATCHDOG_USEC", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    wpid = env.get("WATCHDOG_PID", "")
    if wpid and wpid.isdigit() and int(wpid) != (os.getpid() if pid is None else pid):
        return None
    return int(usec) / 2 / 1e6


class Notifier:
    """Sends notify datagrams; callable as the daemon's ``notify(str)`` hook."""

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        self.path = env.get("NOTIFY_SOCKET", "")
        self.interval = watchdog_interval(env) if self.path else None
        self._sock: socket.socket | None = None
        self.sent: list[str] = []
        self.errors = 0
        if self.path:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._addr = socket_address(self.path)

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def __call__(self, state: str) -> bool:
        return self.send(state)

    def send(self, state: str) -> bool:
        """Send one datagram (lines ``KEY=VALUE``); False if there is no socket or it failed."""
        if self._sock is None:
            return False
        try:
            self._sock.sendto(state.encode("utf-8", "replace"), self._addr)
        except OSError as exc:
            self.errors += 1
            if self.errors == 1:
                log.warning("cannot notify systemd at %s: %s", self.path, exc)
            return False
        return True

    async def watchdog_task(self, healthy: Callable[[], bool] = lambda: True) -> None:
        """Ping ``WATCHDOG=1`` from the running loop every ``WATCHDOG_USEC/2`` until cancelled,
        but not while ``healthy()`` is False (a loop that turns can still be stuck)."""
        if self.interval is None:
            return
        log.info("systemd watchdog: pinging every %.1f s", self.interval)
        withheld = False
        while True:
            if healthy():
                self.send("WATCHDOG=1")
                withheld = False
            elif not withheld:
                withheld = True
                log.error("systemd watchdog: pings withheld, the daemon is stuck")
            await asyncio.sleep(self.interval)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
