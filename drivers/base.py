"""The contract every driver fulfils, and the counters the supervisor reports.

A driver knows only its device: it opens the link, decodes bytes into
:class:`~edge_gateway.readings.Reading` objects, hands each to ``sink`` and
raises when the link fails. Reconnecting, backoff and gap reporting belong to
the supervisor (:mod:`edge_gateway.supervisor`), not to the driver.
"""

from __future__ import annotations

import abc
import time
from dataclasses import dataclass
from typing import Callable, ClassVar

from edge_gateway.readings import Reading

Sink = Callable[[Reading], None]


class LinkLost(Exception):
    """The device went away (unplugged, closed, not answering); the supervisor retries."""


@dataclass
class DriverStats:
    """Counters a driver updates in place; ``status`` reads them.

    Errors and connects are recorded here as they happen (:meth:`note_error`, :meth:`note_connect`),
    so ``status`` dates an error exactly and orders it against a reconnect by what happened first,
    not by comparing times: a frozen test clock or NTP stepping the wall clock cannot reorder them.
    """

    readings: int = 0
    bytes: int = 0
    malformed: int = 0
    connects: int = 0
    link_errors: int = 0
    last_error: str = ""
    last_error_ts: float = 0.0  # when last_error was noted, on the noter's clock; 0.0: no error yet
    last_error_link: bool = False  # last_error ended a driver run (a link error), not a data error
    link_up: bool = False  # connected, and no link error since
    last_reading_ts: float = 0.0
    last_connect_ts: float = 0.0

    def note_error(self, text: str, at: float, link: bool = False) -> None:
        """Record an error at ``at``; ``link`` when it ended the driver's run (the supervisor's).

        A data error (a Modbus block timing out, a CoAP resource refusing) leaves the link up: the
        other blocks or resources still answer.
        """
        self.last_error, self.last_error_ts, self.last_error_link = text, at, link
        if link:
            self.link_errors += 1
            self.link_up = False

    def note_connect(self, at: float) -> None:
        """Record that the link opened and the device answered at ``at``."""
        self.connects += 1
        self.last_connect_ts = at
        self.link_up = True

    @property
    def error_before_reconnect(self) -> bool:
        """The last error is a link error and the driver connected since: it may no longer apply.

        A data error is never before a reconnect, even one noted while the link was coming up (a
        Modbus block timing out before another block answered): it comes from the session now running.
        """
        return self.last_error_link and self.link_up


class Driver(abc.ABC):
    """One sensor (or one bus of them) behind one link."""

    name: ClassVar[str]
    Options: ClassVar[type]

    def __init__(self, sensor_id: str, options, sink: Sink, stats: DriverStats | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.sensor_id = sensor_id
        self.options = options
        self.sink = sink
        self.stats = stats if stats is not None else DriverStats()
        self.clock = clock
        self.on_connect: Callable[[], None] | None = None

    def connected(self) -> None:
        """Call once the link is open and the device answers; the supervisor closes any gap."""
        self.stats.note_connect(self.clock())
        if self.on_connect is not None:
            self.on_connect()

    def part_stats(self) -> dict[str, dict]:
        """Counters per part of the link (a Modbus block, a CoAP resource), for ``status``: which
        meter or resource fails when the link as a whole is up. None by default."""
        return {}

    @abc.abstractmethod
    async def run(self) -> None:
        """Open the link and read until cancelled; raise :class:`LinkLost` when the link fails."""
