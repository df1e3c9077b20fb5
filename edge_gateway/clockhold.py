"""Holds readings at start while the clock is not synchronised, then re-dates the ones the gateway stamped.

A Pi without an RTC boots at the last time fake-hwclock saved (up to an hour plus the power cut behind)
or at 1970, and keeps that clock until NTP's first sync steps it. Readings the gateway stamps meanwhile
carry the wrong date: after a power cut they land in a past already reported, and the windows made of
them are published wrong-dated. With ``gateway.clock_sync_wait_s`` above 0, and the clock not
synchronised at start (:mod:`.clocksync`), every reading is held here, between the drivers and the
batcher, until one of:

* the clock steps (:class:`.clockwatch.ClockWatch`): NTP's sync; each held reading the gateway stamped
  (``Reading.gateway_stamped``) before the step is moved by it, one stamped after it is not;
* the oracle says synchronised (a sync that did not step the clock: the stamps were right);
* ``clock_sync_wait_s`` passed on the steady clock, or :data:`MAX_HELD` readings are held: released
  as stamped, with a warning (a later step is still told to the cloud as a ``clock_step`` event).

Readings the node stamped (a serial_line ``timestamp_field``, SenML absolute times) are never moved.
Nothing is dropped: a stop during the hold releases what it holds, as stamped. Everything is released
in arrival order.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable

from .clocksync import ClockSync
from .clockwatch import Step, boottime
from .readings import Reading

log = logging.getLogger(__name__)

# Held readings, at most. A held Reading costs about 150 bytes with its two floats (tracemalloc, CPython
# 3.11, 64-bit; tests/test_clock_hold.py), so 200,000 cost about 30 MB on a 1 GB Pi whose unit allows
# 512 MB: 15 minutes of 220 readings a second, more than a street cabinet's sensors send.
MAX_HELD = 200_000
ORACLE_EVERY_S = 1.0  # the oracle is asked at most this often

# how a hold ended
SYNCED, STEP, WAITED_OUT, CAP, STOPPED = "synced", "step", "waited_out", "cap", "stopped"


@dataclass(frozen=True)
class HoldEnd:
    """How a hold ended: ``reason`` (one of the constants above), the step that ended it if one did, the
    seconds waited on the steady clock, the readings released and how many of them were re-dated."""

    reason: str
    step_s: float | None
    waited_s: float
    released: int
    redated: int

    def status(self) -> dict:
        return {"state": "ended", "reason": self.reason, "step_s": self.step_s, "waited_s": round(self.waited_s, 1),
                "released": self.released, "redated": self.redated}


# readings; the seconds to move each by (None: none moves); the sensors whose link came back after them
Segment = tuple[list[Reading], "list[float] | None", list[str]]


class ClockHold:
    """The drivers' sink while the gateway waits for its clock: :meth:`begin` once before the drivers
    start, then :meth:`poll` once a round with what that round's :meth:`.ClockWatch.check` found, and
    :meth:`take` once it ended. Not holding, :meth:`add` passes each reading straight to ``sink``."""

    def __init__(self, sink: Callable[[Reading], None], wait_s: float, oracle: ClockSync | None = None,
                 steady: Callable[[], float] = boottime, cap: int = MAX_HELD,
                 oracle_every_s: float = ORACLE_EVERY_S) -> None:
        self.sink = sink
        self.wait_s = wait_s  # a reload may change it while the hold lasts
        self.oracle = oracle if oracle is not None else ClockSync()
        self.steady = steady
        self.cap = cap
        self.oracle_every_s = oracle_every_s
        self.ended: HoldEnd | None = None
        self._held: list[Reading] | None = None  # None: not holding
        self._gaps: list[tuple[int, str]] = []  # (readings held then, sensor): links that came back meanwhile
        self._taken: list[Reading] = []  # what the end released, for take()
        self._shifts: list[float] | None = None  # and how far each moves
        self._seen = 0  # readings held at the last poll that found no step: all stamped before a later step
        self._since = 0.0
        self._next_look = 0.0
        self._synced = ""  # the oracle said synchronised (its source): the hold ends at the next poll
        self._source = ""  # what the oracle said last

    @property
    def holding(self) -> bool:
        return self._held is not None

    def begin(self) -> bool:
        """Ask the oracle once; hold when the clock is not synchronised. Whether it holds."""
        if self.wait_s <= 0:
            return False
        state = self.oracle.state()
        self._source = state.source
        if state.synced is None:
            log.info("clock_sync_wait_s is %g s, but whether the clock is synchronised cannot be told (%s): "
                     "readings are not held", self.wait_s, state.source)
            return False
        if state.synced:
            return False
        self._held = []
        self._since = self.steady()
        self._next_look = self._since + self.oracle_every_s
        log.warning("the wall clock is not synchronised (%s): readings are held until it is, at most %g s, "
                    "and those stamped before NTP steps it are re-dated by the step", state.source, self.wait_s)
        return True

    def add(self, r: Reading) -> None:
        held = self._held
        if held is None:
            self.sink(r)
        else:
            held.append(r)  # the cap is checked at each poll: at most one round's readings over it

    def link_back(self, sensor: str) -> bool:
        """``sensor``'s link came back (a ``link_gap``). True while holding: then the daemon re-anchors the
        sensor's dropout clocks when the readings before it are released (:meth:`take` cuts there), not now."""
        if self._held is None:
            return False
        self._gaps.append((len(self._held), sensor))
        return True

    def poll(self, step: Step | None) -> HoldEnd | None:
        """Called once a round, right after the round's clock check (``step``: what it found); the end of
        the hold if it ends now.

        A sync sets the clock before it says so: when the oracle says synchronised, the hold ends at the
        next round, whose clock check sees the step if it came after this round's check."""
        held = self._held
        if held is None:
            return None
        now = self.steady()
        waited = now - self._since
        if step is not None:
            return self._end(STEP, waited, step)
        if self._synced:
            return self._end(SYNCED, waited)
        if len(held) >= self.cap:
            return self._end(CAP, waited)
        if waited >= self.wait_s:
            return self._end(WAITED_OUT, waited)
        if now >= self._next_look:
            self._next_look = now + self.oracle_every_s
            state = self.oracle.state()
            self._source = state.source
            if state.synced:
                self._synced = state.source
        self._seen = len(held)
        return None

    def stop(self) -> HoldEnd | None:
        """The gateway stops: end the hold, releasing what it holds as stamped, so that nothing is lost."""
        if self._held is None:
            return None
        return self._end(STOPPED, self.steady() - self._since)

    def take(self) -> list[Segment]:
        """What the end released, in arrival order, cut after each point where a link came back: (readings,
        the seconds each moves or None, sensors whose link came back right after them). Empty once taken.

        The moves are given apart, not as new Reading objects: the batcher adds them as it buffers
        (``Batcher.add(r, shift)``), for about a tenth of the time making 200,000 readings anew takes."""
        if self._held is not None:  # still holding: nothing released
            return []
        held, shifts, gaps = self._taken, self._shifts, self._gaps
        self._taken, self._shifts, self._gaps = [], None, []
        if not held and not gaps:
            return []
        out: list[Segment] = []
        start = 0
        for at, sensor in gaps:
            if out and at == start:  # no reading since the gap before
                out[-1][2].append(sensor)
            else:
                out.append((held[start:at], None if shifts is None else shifts[start:at], [sensor]))
                start = at
        out.append((held[start:], None if shifts is None else shifts[start:], []))
        return out

    def status(self) -> dict:
        """For ``status``: while holding, the wait so far; after, how it ended; else whether it was needed."""
        if self._held is not None:
            return {"state": "waiting", "waited_s": round(self.steady() - self._since, 1),
                    "held": len(self._held), "wait_s": self.wait_s}
        if self.ended is not None:
            return self.ended.status()
        return {"state": "not_held", "source": self._source}

    def _end(self, reason: str, waited: float, step: Step | None = None) -> HoldEnd:
        held = self._held or []
        self._held = None
        redated = 0
        if step is not None:
            self._shifts = _shifts(held, self._seen, step)
            redated = len(held) - self._shifts.count(0.0)
        self._taken = held
        n = len(held)
        self.ended = end = HoldEnd(reason, None if step is None else step.step_s, waited, n, redated)
        if step is not None:
            log.info("the clock stepped by %+.3f s after %.0f s of waiting for its sync: %d held reading(s) "
                     "released, %d of them re-dated by the step", step.step_s, waited, n, redated)
        elif reason == SYNCED:
            log.info("the clock is synchronised (%s) after %.0f s, without a step: %d held reading(s) released "
                     "as stamped", self._synced, waited, n)
        elif reason == WAITED_OUT:
            log.warning("the clock is still not synchronised after %.0f s (clock_sync_wait_s; %s): %d held "
                        "reading(s) released as stamped; a later step goes out as a clock_step event",
                        waited, self._source, n)
        elif reason == CAP:
            log.warning("%d readings held after %.0f s of waiting for the clock's sync, the cap of %d: released "
                        "as stamped; a later step goes out as a clock_step event", n, waited, self.cap)
        else:
            log.warning("stopping while waiting for the clock's sync (%.0f s): %d held reading(s) released as "
                        "stamped", waited, n)
        return end


def _shifts(held: list[Reading], seen: int, step: Step) -> list[float]:
    """How far each of ``held`` moves: ``step.step_s`` for a reading the gateway stamped before the step,
    else 0.0 (``step_s`` is never 0: a step is at least the threshold of :class:`.ClockWatch`).

    The first ``seen`` arrived before a clock check that found no step: stamped before it. Those that
    arrived since were stamped on either clock, and lie near the one they were stamped on: near
    ``step.before`` (the old clock at the check) or ``step.at`` (the new one), which are the step apart
    (2 s at least), where one round lasts a fraction of a second.
    """
    s, before, at = step.step_s, step.before, step.at
    return ([s if r.gateway_stamped else 0.0 for r in held[:seen]]
            + [s if r.gateway_stamped and abs(r.ts - before) <= abs(r.ts - at) else 0.0 for r in held[seen:]])
