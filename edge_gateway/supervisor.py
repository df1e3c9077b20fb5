"""Keeps every driver running: one task per sensor, reconnect with backoff and jitter.

A driver only reads its device and raises when the link fails; this module owns
what every driver needs around that: exponential backoff with full jitter,
connection counters, and one ``link_gap`` per outage once the link is back, so
the cloud sees how long a sensor was away. One failing sensor never stalls the
others.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from dataclasses import dataclass
from typing import Callable

from drivers.base import Driver, LinkLost

from . import aio
from .backoff import backoff_delay
from .clockwatch import STEP_THRESHOLD_S, boottime

log = logging.getLogger(__name__)


STABLE_S = 30.0  # a link up this long without a reading still counts as working (a quiet sensor)


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff with jitter in [cap/2, cap] so a cabinet of sensors does not retry in step
    (:func:`backoff.backoff_delay`, the formula the uplink uses too)."""

    initial_s: float = 0.5
    max_s: float = 30.0
    factor: float = 2.0

    def delay(self, attempt: int, rng: random.Random) -> float:
        return backoff_delay(attempt, self.initial_s, self.max_s, rng.random, self.factor)


@dataclass(frozen=True)
class LinkGap:
    """A sensor's link was down from ``start`` (last reading) to ``end`` (reconnected)."""

    sensor: str
    start: float
    end: float
    reason: str


class _Link:
    def __init__(self) -> None:
        self.down_since: float | None = None
        self.down_steady = 0.0  # down_since on the steady clock: a gap's length survives a clock step
        self.up_steady = 0.0  # when the link last connected (steady clock)
        self.readings_at_connect = 0
        self.connects_seen = 0  # driver.stats.connects when the last failure was counted
        self.reason = ""
        self.attempt = 0  # consecutive failed runs since the last connection that worked


class Supervisor:
    """Runs drivers as tasks and restarts each one whose link fails."""

    def __init__(self, on_gap: Callable[[LinkGap], None], backoff: Backoff = Backoff(),
                 clock: Callable[[], float] = time.time, seed: int | None = None,
                 steady: Callable[[], float] = boottime) -> None:
        self.on_gap = on_gap
        self.backoff = backoff
        self.clock = clock
        self.steady = steady
        self._rng = random.Random(seed)
        self._tasks: dict[str, asyncio.Task] = {}
        self.drivers: dict[str, Driver] = {}

    def start(self, driver: Driver) -> bool:
        """Run ``driver``; False (and nothing started) when its sensor id already has a running task.

        A second task for one sensor would share the device with the first, and the first, no
        longer tracked, would outlive :meth:`stop`: stop the running one first.
        """
        sid = driver.sensor_id
        running = self._tasks.get(sid)
        if running is not None and not running.done():
            log.error("sensor %s: already running, not started again", sid)
            return False
        self.drivers[sid] = driver
        self._tasks[sid] = asyncio.create_task(self._keep_running(driver), name=f"driver:{sid}")
        return True

    async def stop(self, sensor_id: str | None = None) -> None:
        """Cancel one driver, or all of them, and wait until they have closed their links."""
        ids = [sensor_id] if sensor_id else list(self._tasks)
        tasks = [self._tasks.pop(i) for i in ids if i in self._tasks]
        await aio.cancel_and_wait(tasks)
        for i in ids:
            self.drivers.pop(i, None)

    async def _keep_running(self, driver: Driver) -> None:
        link = _Link()

        def on_connect() -> None:
            link.up_steady, link.readings_at_connect = self.steady(), driver.stats.readings
            log.info("sensor %s: connected", driver.sensor_id)
            if link.down_since is not None:
                end = driver.stats.last_connect_ts
                # the length from the steady clock: NTP stepping the wall clock meanwhile (a Pi's first
                # sync) must not turn a few seconds' outage into one of 55 years
                length = max(0.0, self.steady() - (self.clock() - end) - link.down_steady)
                start = link.down_since if abs(end - link.down_since - length) < STEP_THRESHOLD_S else end - length
                gap = LinkGap(driver.sensor_id, start, end, link.reason)
                link.down_since = None
                log.info("sensor %s: link back after %.1f s", gap.sensor, gap.end - gap.start)
                self.on_gap(gap)

        driver.on_connect = on_connect
        while True:
            try:
                await driver.run()
                raise LinkLost("driver stopped")
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - any driver failure is a link failure
                reason = str(exc) or type(exc).__name__
                now = self.clock()
                driver.stats.note_error(reason, now, link=True)
                if link.down_since is None and driver.stats.connects:
                    link.down_since = driver.stats.last_reading_ts or now
                    link.down_steady = self.steady() - (now - link.down_since)
                    link.reason = reason
                    log.warning("sensor %s: link lost: %s", driver.sensor_id, reason)
                elif not driver.stats.connects and link.attempt == 0:
                    log.warning("sensor %s: cannot open link: %s", driver.sensor_id, reason)
                if not isinstance(exc, (LinkLost, OSError)):
                    log.error("sensor %s: driver failed: %r", driver.sensor_id, exc, exc_info=exc)
            connected = driver.stats.connects > link.connects_seen  # this run opened the link
            link.connects_seen = driver.stats.connects
            if connected and (driver.stats.readings > link.readings_at_connect
                              or self.steady() - link.up_steady >= STABLE_S):
                # only a link that worked starts the backoff afresh: one that opens and fails at once
                # (a loose connector, a serial server dropping the session) is not retried 3 times a
                # second. Judged once, on the run that connected: the counts of that connection stay
                # as they were while later attempts fail, and must not reset every one of them
                link.attempt = 0
            delay = self.backoff.delay(link.attempt, self._rng)
            link.attempt += 1
            await asyncio.sleep(delay)
