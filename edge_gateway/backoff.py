"""Exponential backoff with jitter: the one formula behind every wait before a retry.

Drivers reconnecting (``supervisor.Backoff``), the MQTT link reconnecting and replacing its network
thread (uplink.py), and the forwarder resending refused messages and holding sends after 0x97 quota
exceeded (forwarder.py) all wait ``min(hi, lo * factor**attempt)`` scaled by a random 0.5..1: growing,
bounded, and jittered so that a street of gateways (or a cabinet of sensors) behind one failure does
not retry in step. Each caller keeps its own attempt count and randomness; this is only the formula.
"""

from __future__ import annotations

import random
from typing import Callable


def backoff_delay(attempt: int, lo: float, hi: float, rand: Callable[[], float] = random.random,
                  factor: float = 2.0) -> float:
    """``min(hi, lo * factor**attempt)`` scaled by ``0.5 + 0.5 * rand()``.

    ``attempt`` 0 is the first retry (a wait of lo/2 to lo); below 0 counts as 0. Any count is safe:
    where ``factor**attempt`` overflows a float (attempt 1024 for 2), the wait is ``hi`` scaled."""
    try:
        cap = min(hi, lo * factor ** max(0, attempt))
    except OverflowError:
        cap = hi
    return cap * (0.5 + 0.5 * rand())
