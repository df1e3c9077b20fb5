"""The one record type every driver produces."""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum


class Quality(IntEnum):
    """Per-reading quality flag, carried through to the cloud."""

    GOOD = 0
    SUSPECT = 1  # decoded, but the device flagged it (e.g. sensor warming up)
    BAD = 2  # decoded, but out of the device's physical range


@dataclass(frozen=True, slots=True)
class Reading:
    """One value of one channel of one sensor at one wall-clock time (seconds since epoch)."""

    sensor: str
    channel: str
    value: float
    ts: float
    unit: str = ""
    quality: Quality = Quality.GOOD
