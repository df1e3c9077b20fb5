"""A sensor unplugged for long is retried ever less often, as the backoff formula says.

Field walkthrough: a sensor unplugged 70 s had LINK ERR going up ~3 a second the whole time. The
supervisor reset its attempt count on every failed retry, because the readings and the uptime of the
last *good* connection still said "this link worked". The attempt count must start afresh once per
connection that worked (it produced a reading, or stayed up ``STABLE_S``) and grow on each failure
after it. Real ptys, the real SerialLineDriver and the real Supervisor; the test's clocks, and a
Backoff that records what the supervisor asks of the real formula.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from driver_fixtures import wait_until, write_all

from drivers.serial_line import LineOptions, SerialLineDriver
from edge_gateway.backoff import backoff_delay
from edge_gateway.supervisor import STABLE_S, Backoff, Supervisor
from simulators.pty_port import PtyPort
from support import Clock

T0 = 1_700_000_000.0
LO, HI = 0.02, 0.32  # caps 0.02, 0.04, 0.08, 0.16, 0.32, 0.32, ...: a few failures in well under 2 s
SEED = 11


@dataclass(frozen=True)
class Recording(Backoff):
    """The supervisor's own Backoff (the real formula, the supervisor's seeded jitter), each call kept."""

    calls: list = field(default_factory=list)

    def delay(self, attempt, rng):
        d = super().delay(attempt, rng)
        self.calls.append((attempt, d))
        return d


def _cap(attempt: int) -> float:
    """``min(hi, lo * 2**attempt)``, written out here rather than taken from backoff.py."""
    return min(HI, LO * 2 ** attempt)


def _check_delays(calls) -> None:
    """Every delay is the formula's for its attempt, with the supervisor's seeded jitter in call order."""
    rng = random.Random(SEED)
    assert [d for _, d in calls] == [backoff_delay(a, LO, HI, rng.random) for a, _ in calls]
    for a, d in calls:
        assert _cap(a) / 2 <= d <= _cap(a), (a, d)


def _setup(tmp_path):
    link = str(tmp_path / "dev.tty")
    clock = Clock(T0)
    out = []
    driver = SerialLineDriver("dev", LineOptions(port=link), out.append, clock=clock)
    backoff = Recording(initial_s=LO, max_s=HI)
    sup = Supervisor(lambda gap: None, backoff, clock=clock, seed=SEED, steady=clock)
    return link, clock, out, driver, backoff, sup


async def test_an_outage_after_readings_backs_off_exponentially_and_a_replug_with_readings_starts_afresh(tmp_path):
    link, clock, out, driver, backoff, sup = _setup(tmp_path)
    port = PtyPort(link, nonblocking=True)
    sup.start(driver)
    try:
        assert await wait_until(lambda: driver.stats.connects == 1)
        write_all(port, b"a=1\na=2\na=3\n")
        assert await wait_until(lambda: driver.stats.readings == 3)
        port.close()  # unplugged after a connection that worked
        assert await wait_until(lambda: len(backoff.calls) >= 7, timeout=10)
        port = PtyPort(link, nonblocking=True)  # replugged while the supervisor waits
        assert await wait_until(lambda: driver.stats.connects == 2, timeout=10)
        first_outage = list(backoff.calls)
        write_all(port, b"a=4\n")
        assert await wait_until(lambda: driver.stats.readings == 4)
        port.close()  # unplugged again after a connection that worked
        assert await wait_until(lambda: len(backoff.calls) >= len(first_outage) + 4, timeout=10)
    finally:
        await sup.stop()
        port.close()
    n = len(first_outage)
    # the first outage: one wait per failure (the unplug, then each retry finding no device), growing
    assert [a for a, _ in first_outage] == list(range(n))
    assert driver.stats.link_errors >= n + 4
    # the second outage starts again from attempt 0, and grows again
    assert [a for a, _ in backoff.calls[n:n + 4]] == [0, 1, 2, 3]
    _check_delays(backoff.calls)
    # the caps the waits of the first outage were drawn under: doubling from LO, then held at HI
    assert [_cap(a) for a, _ in first_outage[:7]] == [0.02, 0.04, 0.08, 0.16, 0.32, 0.32, 0.32]


async def test_a_connection_that_fails_at_once_continues_the_backoff_and_one_up_stable_s_starts_it_afresh(tmp_path):
    link, clock, out, driver, backoff, sup = _setup(tmp_path)
    port = PtyPort(link, nonblocking=True)
    sup.start(driver)
    try:
        assert await wait_until(lambda: driver.stats.connects == 1)
        port.close()  # opened, no reading, lost at once: not a link that worked
        assert await wait_until(lambda: len(backoff.calls) >= 3, timeout=10)
        port = PtyPort(link, nonblocking=True)
        assert await wait_until(lambda: driver.stats.connects == 2, timeout=10)
        before_flap = len(backoff.calls)
        port.close()  # a loose connector: opens, fails at once
        assert await wait_until(lambda: len(backoff.calls) >= before_flap + 2, timeout=10)
        port = PtyPort(link, nonblocking=True)
        assert await wait_until(lambda: driver.stats.connects == 3, timeout=10)
        before_stable = len(backoff.calls)
        clock.t += STABLE_S  # a quiet sensor: no reading, but the link stayed up STABLE_S
        port.close()
        assert await wait_until(lambda: len(backoff.calls) >= before_stable + 4, timeout=10)
    finally:
        await sup.stop()
        port.close()
    attempts = [a for a, _ in backoff.calls]
    assert driver.stats.readings == 0
    # no connection worked until the third: one count of consecutive failures across the flap
    assert attempts[:before_stable] == list(range(before_stable))
    assert attempts[before_stable:before_stable + 4] == [0, 1, 2, 3]
    _check_delays(backoff.calls)
