"""How a simulator stops: SIGTERM and SIGHUP take the same cleanup path as Ctrl-C.

A simulator that dies on SIGTERM without running its ``finally`` leaves its
``--link`` symlinks pointing at /dev/pts numbers the kernel hands out again, so
a gateway started later would open somebody else's terminal. The blocking
simulators (``serial-line``, ``pms5003``) turn the signal into ``SystemExit(128 +
signal)`` with :func:`exit_on_signals`; the asyncio ones (``city``) cancel their
main task with :func:`cancel_on_signals`.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import threading
from collections.abc import Iterator

STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


@contextlib.contextmanager
def exit_on_signals() -> Iterator[None]:
    """Inside the block, SIGTERM or SIGHUP raise ``SystemExit(128 + signal)`` (once: a second signal
    during the cleanup that follows is ignored, so the cleanup finishes). A signal already ignored
    (``nohup``) stays ignored."""
    if threading.current_thread() is not threading.main_thread():  # signals reach the main thread only
        yield
        return
    stopping = []

    def on_signal(signum, frame) -> None:
        if not stopping:
            stopping.append(signum)
            raise SystemExit(128 + signum)

    old = {sig: signal.signal(sig, on_signal) for sig in STOP_SIGNALS
           if signal.getsignal(sig) is not signal.SIG_IGN}  # nohup's SIGHUP stays ignored
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


def cancel_on_signals(loop: asyncio.AbstractEventLoop, task: asyncio.Task) -> list[int]:
    """SIGTERM or SIGHUP cancel ``task`` (the first one; later ones are ignored while it cleans up).
    A signal already ignored (``nohup``) stays ignored. Returns the list the signal number is
    appended to; :func:`remove_signal_handlers` undoes it."""
    received: list[int] = []

    def on_signal(signum: int) -> None:
        if not received:
            received.append(signum)
            task.cancel()

    for sig in STOP_SIGNALS:
        if signal.getsignal(sig) is not signal.SIG_IGN:  # nohup's SIGHUP stays ignored
            loop.add_signal_handler(sig, on_signal, sig)
    return received


def remove_signal_handlers(loop: asyncio.AbstractEventLoop) -> None:
    for sig in STOP_SIGNALS:
        loop.remove_signal_handler(sig)  # False (and nothing done) where none was added
