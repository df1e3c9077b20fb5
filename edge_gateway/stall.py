"""Says what blocks the event loop: a thread that logs every thread's stack when the loop stops turning.

The daemon does all its coordination on one asyncio loop. If a call on it blocks
(a kernel compiling, a lock, a slow disk), readings pile up, SIGTERM goes unheard
and systemd's watchdog eventually aborts the process; the journal would then only
say that it hung. This monitor notices first, from its own thread, and logs the
stacks once per stall, and again when the loop runs again.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
import time
import traceback
from typing import Callable

log = logging.getLogger(__name__)

STALL_AFTER_S = 10.0  # below systemd's default WatchdogSec (30 s here), so the stacks come before the abort


def thread_stacks() -> str:
    """Every Python thread's current stack, the event loop's thread included."""
    names = {t.ident: t.name for t in threading.enumerate()}
    parts = []
    for ident, frame in sys._current_frames().items():
        parts.append(f"thread {names.get(ident, ident)}:\n" + "".join(traceback.format_stack(frame)))
    return "\n".join(parts)


class StallMonitor:
    """Heartbeat on ``loop`` every ``period`` s; a watcher thread reports a stall of ``after`` s or more."""

    def __init__(self, loop: asyncio.AbstractEventLoop, after: float = STALL_AFTER_S, period: float = 1.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.loop = loop
        self.after = after
        self.period = period
        self.clock = clock
        self.stalls = 0
        self._last = clock()
        self._reported = False
        self._handle: asyncio.TimerHandle | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="stall-monitor", daemon=True)

    def start(self) -> "StallMonitor":
        self._beat()
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._handle is not None:
            self._handle.cancel()
        self._thread.join()

    def _beat(self) -> None:
        self._last = self.clock()
        self._handle = self.loop.call_later(self.period, self._beat)

    def _watch(self) -> None:
        while not self._stop.wait(min(self.period, self.after / 4)):
            stalled = self.clock() - self._last
            if stalled >= self.after and not self._reported:
                self._reported = True
                self.stalls += 1
                log.error("event loop blocked for %.1f s; stacks:\n%s", stalled, thread_stacks())
            elif self._reported and stalled < self.period * 2:
                self._reported = False
                log.warning("event loop running again")
