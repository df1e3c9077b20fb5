"""Notices steps of the wall clock: NTP's first sync on a gateway without an RTC.

A Raspberry Pi boots with its clock at the last saved time (fake-hwclock) or at 1970 and keeps it
until NTP syncs, minutes or hours later; the clock then jumps. Readings stamped before and after
the jump are hours apart without any sensor having stopped, so the daemon must know a step from a
gap. The wall clock is compared with a clock that never steps (``CLOCK_BOOTTIME``: it also counts a
suspend, which a street cabinet does not have but a laptop running the demo does); a change of
their difference above ``threshold_s`` is a step, and smaller ones (NTP slewing a few ppm, loop
jitter) are followed silently.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

STEP_THRESHOLD_S = 2.0


def boottime() -> float:
    """Seconds since boot, suspend included; ``time.monotonic`` where ``CLOCK_BOOTTIME`` is missing."""
    try:
        return time.clock_gettime(time.CLOCK_BOOTTIME)
    except (AttributeError, OSError):
        return time.monotonic()


@dataclass(frozen=True)
class Step:
    """The wall clock jumped by ``step_s``: it read ``at`` where it would have read ``before``."""

    step_s: float
    before: float
    at: float


class ClockWatch:
    """Call :meth:`check` once a round; it returns the :class:`Step` the wall clock made since the last call."""

    def __init__(self, wall: Callable[[], float] = time.time, steady: Callable[[], float] = boottime,
                 threshold_s: float = STEP_THRESHOLD_S) -> None:
        self.wall, self.steady, self.threshold_s = wall, steady, threshold_s
        self._offset = wall() - steady()
        self.steps = 0
        self.last: Step | None = None

    def check(self) -> Step | None:
        now, steady = self.wall(), self.steady()
        offset = now - steady
        moved = offset - self._offset
        self._offset = offset
        if abs(moved) < self.threshold_s:
            return None
        self.steps += 1
        self.last = Step(moved, now - moved, now)
        return self.last

    def status(self) -> dict:
        last = self.last
        return {"steps": self.steps, "last_step_s": round(last.step_s, 3) if last else None,
                "last_step_at": last.at if last else None}
