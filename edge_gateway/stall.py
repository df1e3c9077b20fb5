"""Says what stops the daemon: a blocked event loop, or a pipeline stuck on an await while the loop turns.

The daemon does all its coordination on one asyncio loop. If a call on it blocks
(a kernel compiling, a lock, a slow disk), readings pile up, SIGTERM goes unheard
and systemd's watchdog eventually aborts the process; the journal would then only
say that it hung. :class:`StallMonitor` notices first, from its own thread, and logs
the stacks once per stall, and again when the loop runs again.

A pipeline round can also wait forever on an await that never completes while the
loop itself turns: nothing flows, yet a loop-driven watchdog ping would keep coming.
:class:`ProgressMonitor` watches the rounds from the loop, logs every task's chain of
awaits once when they stop, and tells the watchdog to withhold its pings.
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
STUCK_AFTER_S = 30.0  # no round for this long: the watchdog pings stop, so systemd restarts the service


def thread_stacks() -> str:
    """Every Python thread's current stack, the event loop's thread included."""
    names = {t.ident: t.name for t in threading.enumerate()}
    parts = []
    for ident, frame in sys._current_frames().items():
        parts.append(f"thread {names.get(ident, ident)}:\n" + "".join(traceback.format_stack(frame)))
    return "\n".join(parts)


def task_stacks(loop: asyncio.AbstractEventLoop) -> str:
    """Every task of ``loop`` and the chain of coroutines it is suspended in, innermost last."""
    parts = []
    for task in sorted(asyncio.all_tasks(loop), key=lambda t: t.get_name()):
        lines = [f"task {task.get_name()}:"]
        aw, depth = task.get_coro(), 0
        while aw is not None and depth < 64:
            frame = getattr(aw, "cr_frame", None) or getattr(aw, "gi_frame", None) or getattr(aw, "ag_frame", None)
            if frame is None:
                break
            code = frame.f_code
            lines.append(f'  File "{code.co_filename}", line {frame.f_lineno}, in {code.co_name}')
            aw = getattr(aw, "cr_await", None) or getattr(aw, "gi_yieldfrom", None) or getattr(aw, "ag_await", None)
            depth += 1
        parts.append("\n".join(lines))
    return "\n".join(parts)


class ProgressMonitor:
    """Checks from ``loop`` that ``last_round()`` (a ``loop.time()``; None before the first round) keeps advancing.

    After ``after`` s without a round it logs every task's awaits, once per stall, and
    ``healthy()`` turns False after ``stuck`` s, which withholds the watchdog pings.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, last_round: Callable[[], float | None],
                 after: float = STALL_AFTER_S, stuck: float = STUCK_AFTER_S, period: float = 1.0) -> None:
        self.loop = loop
        self.last_round = last_round
        self.after = after
        self.stuck = stuck
        self.period = period
        self.stalls = 0
        self._reported = False
        self._handle: asyncio.TimerHandle | None = None

    def start(self) -> "ProgressMonitor":
        self._handle = self.loop.call_later(self.period, self._check)
        return self

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def idle(self) -> float:
        last = self.last_round()
        return 0.0 if last is None else self.loop.time() - last

    def healthy(self) -> bool:
        return self.idle() < self.stuck

    def _check(self) -> None:
        idle = self.idle()
        if idle >= self.after and not self._reported:
            self._reported = True
            self.stalls += 1
            log.error("pipeline has not completed a round for %.1f s while the event loop runs; tasks:\n%s",
                      idle, task_stacks(self.loop))
        elif self._reported and idle < self.after:
            self._reported = False
            log.warning("pipeline running again")
        self._handle = self.loop.call_later(self.period, self._check)


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
