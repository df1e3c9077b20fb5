"""One backoff formula for drivers, the MQTT link and the forwarder; any retry count is safe."""

from __future__ import annotations

import random

from edge_gateway.backoff import backoff_delay
from edge_gateway.supervisor import Backoff


def test_the_waits_double_from_lo_to_hi_with_jitter_between_half_and_all():
    draws = iter([0.0, 1.0, 0.5, 0.0])
    assert [backoff_delay(k, 1.0, 60.0, lambda: next(draws)) for k in (0, 3, 6, 7)] == [0.5, 8.0, 45.0, 30.0]


def test_a_sensor_unreachable_for_days_is_still_retried():
    """2.0 ** 1024 overflows a float: the supervisor raised OverflowError outside its try at the
    1,024th retry (6 to 8 hours at the 30 s cap), which ended that sensor's driver task for good."""
    want = 30.0 * (0.5 + 0.5 * random.Random(7).random())
    assert Backoff().delay(1024, random.Random(7)) == want
    assert Backoff().delay(10**6, random.Random(7)) == want
    assert backoff_delay(10**6, 1.0, 60.0, lambda: 1.0) == 60.0
