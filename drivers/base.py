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
    """Counters a driver updates in place; ``status`` reads them."""

    readings: int = 0
    bytes: int = 0
    malformed: int = 0
    connects: int = 0
    link_errors: int = 0
    last_error: str = ""
    last_reading_ts: float = 0.0
    last_connect_ts: float = 0.0


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
        self.stats.connects += 1
        self.stats.last_connect_ts = self.clock()
        if self.on_connect is not None:
            self.on_connect()

    def part_stats(self) -> dict[str, dict]:
        """Counters per part of the link (a Modbus block, a CoAP resource), for ``status``: which
        meter or resource fails when the link as a whole is up. None by default."""
        return {}

    @abc.abstractmethod
    async def run(self) -> None:
        """Open the link and read until cancelled; raise :class:`LinkLost` when the link fails."""
