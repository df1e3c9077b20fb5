"""The one record type every driver produces."""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum


# What a sensor may name a channel and give as a unit, wherever it names them (a SenML record, a CoAP JSON
# key, a text line's key): they reach a technician's terminal, Prometheus labels and the status document
MAX_NAME = 128  # characters: ``urn:dev:mac:0024befffe804ff1:temperature`` is 41
MAX_UNIT = 32  # characters: RFC 8428 / 8798 units are a few (``Cel``, ``%RH``, ``ug/m3``, ``count/min``)
# The latest time a reading may carry, in epoch seconds: the year 5138. A later stamp is not a time, most
# likely epoch milliseconds (1.7e12 today) read as seconds; the batcher, serial_line and analyze refuse it.
LATEST_EPOCH_S = 1e11


class Quality(IntEnum):
    """Per-reading quality flag, carried through to the cloud."""

    GOOD = 0
    SUSPECT = 1  # decoded, but the device flagged it (e.g. sensor warming up)
    BAD = 2  # decoded, but out of the device's physical range


@dataclass(frozen=True, slots=True)
class Reading:
    """One value of one channel of one sensor at one wall-clock time (seconds since epoch).

    ``gateway_stamped``: the time is the gateway's clock at receipt (not the node's own), so a step of
    that clock moves it (:mod:`.clockhold` re-dates such readings held until NTP's sync).
    """

    sensor: str
    channel: str
    value: float
    ts: float
    unit: str = ""
    quality: Quality = Quality.GOOD
    gateway_stamped: bool = False
