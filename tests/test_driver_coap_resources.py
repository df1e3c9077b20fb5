"""coap: one resource answering 4.04/5.03 costs that resource only, against real aiocoap nodes on 127.0.0.1.

Exact counts come from the node: every GET it renders is one reading (or one counted error) at the driver.
"""

from __future__ import annotations

import asyncio

import pytest
from aiocoap import NOT_FOUND, SERVICE_UNAVAILABLE
from driver_fixtures import by_channel, running, wait_until

from drivers.base import LinkLost
from drivers.coap import CoapDriver, CoapOptions, CoapResource, retry_delay
from edge_gateway.supervisor import Backoff, Supervisor
from simulators.coap_node import CoapNode


async def _node(bad_code, bad_max_age=None) -> CoapNode:
    node = CoapNode()
    node.add("/temp").publish(b"21.5", 0)
    node.add("/hum").publish(b"40", 0)
    node.add("/bad").fail(bad_code, bad_max_age)
    await node.start()
    return node


@pytest.mark.parametrize("bad_first", [True, False], ids=["bad-first", "bad-last"])
@pytest.mark.parametrize("code", [NOT_FOUND, SERVICE_UNAVAILABLE], ids=["4.04", "5.03"])
async def test_poll_reads_the_other_resources_while_one_fails(code, bad_first):
    """No LinkLost, reconnect or link gap for one failing resource; it alone is asked again, ever less often."""
    node = await _node(code)
    good = (CoapResource("/temp"), CoapResource("/hum"))
    resources = (CoapResource("/bad"),) + good if bad_first else good + (CoapResource("/bad"),)
    out, gaps = [], []
    driver = CoapDriver("n", CoapOptions(uri=node.uri, mode="poll", interval_s=0.05, resources=resources), out.append)
    sup = Supervisor(gaps.append, Backoff(initial_s=0.05, max_s=0.2), seed=1)

    def idle() -> bool:
        """No GET in flight, so the node's count of GETs is the driver's when it is stopped."""
        return all(r.requests == r.responses + r.errors for r in driver.resources.values())

    sup.start(driver)
    try:
        assert await wait_until(lambda: len(out) >= 2 * 12 and idle())
    finally:
        await sup.stop()
        await node.stop()
    assert (driver.stats.connects, driver.stats.link_errors, gaps) == (1, 0, [])
    got = by_channel(out)
    assert len(got["temp"]) == node.resources["/temp"].gets and len(got["hum"]) == node.resources["/hum"].gets
    bad = driver.resources["/bad"]
    assert bad.errors == node.resources["/bad"].gets and bad.responses == 0
    assert 1 <= bad.errors <= 6 < 12 <= len(got["temp"])  # doubling from 0.05 s: tried at 0, 0.05, 0.15, 0.35, 0.75 s
    assert bad.last_code == str(code) and driver.stats.last_error == f"/bad: {code}"


async def test_observe_keeps_the_other_observations_and_retries_a_503_after_its_max_age():
    node = await _node(SERVICE_UNAVAILABLE, 1)
    out, gaps = [], []
    opts = CoapOptions(uri=node.uri, resources=(CoapResource("/bad"), CoapResource("/temp"), CoapResource("/hum")))
    driver = CoapDriver("n", opts, out.append)
    sup = Supervisor(gaps.append, Backoff(initial_s=0.05, max_s=0.2), seed=1)
    sup.start(driver)
    try:
        assert await wait_until(lambda: len(out) == 2)
        for k in range(3):
            node.resources["/temp"].publish(str(22 + k).encode(), 0)
            node.resources["/hum"].publish(str(41 + k).encode(), 0)
            assert await wait_until(lambda: len(out) == 4 + 2 * k)
        assert "bad" not in by_channel(out) and driver.resources["/bad"].errors >= 1
        assert (driver.stats.connects, driver.stats.link_errors, gaps) == (1, 0, [])
        node.resources["/bad"].publish(b"7", 0, notify=False)
        assert await wait_until(lambda: "bad" in by_channel(out), timeout=2.5)  # 1 s after the 5.03
        assert driver.resources["/bad"].errors == node.resources["/bad"].gets - 1  # each 5.03, then the registration
    finally:
        await sup.stop()
        await node.stop()
    got = by_channel(out)
    assert [r.value for r in got["temp"]] == [21.5, 22.0, 23.0, 24.0]
    assert [r.value for r in got["hum"]] == [40.0, 41.0, 42.0, 43.0]
    assert [r.value for r in got["bad"]] == [7.0]
    assert (driver.stats.connects, driver.stats.link_errors, gaps) == (1, 0, [])


async def test_an_error_notification_ends_only_that_observation():
    node = await _node(NOT_FOUND)
    node.resources["/bad"].publish(b"1", 0)
    out = []
    opts = CoapOptions(uri=node.uri, interval_s=0.2, resources=(CoapResource("/bad"), CoapResource("/temp")))
    driver = CoapDriver("n", opts, out.append)
    try:
        async with running(driver) as task:
            assert await wait_until(lambda: len(out) == 2 and node.resources["/bad"].observers == 1)
            node.resources["/bad"].fail(SERVICE_UNAVAILABLE, 1)
            assert await wait_until(lambda: node.resources["/bad"].observers == 0)
            node.resources["/temp"].publish(b"30", 0)
            assert await wait_until(lambda: len(out) == 3)
            node.resources["/bad"].publish(b"2", 0)
            assert await wait_until(lambda: len(out) == 4, timeout=2.5)
            assert not task.done()
    finally:
        await node.stop()
    got = by_channel(out)
    assert [r.value for r in got["bad"]] == [1.0, 2.0] and [r.value for r in got["temp"]] == [21.5, 30.0]
    assert driver.resources["/bad"].errors == 1 and driver.stats.connects == 1


@pytest.mark.parametrize("mode", ["poll", "observe"])
async def test_a_node_whose_every_resource_fails_is_a_lost_link(mode):
    """Nothing to read at all: LinkLost, so the supervisor backs off (connected() was never called)."""
    node = CoapNode()
    node.add("/a").fail(NOT_FOUND)
    node.add("/b").fail(SERVICE_UNAVAILABLE, 30)
    await node.start()
    opts = CoapOptions(uri=node.uri, mode=mode, interval_s=1, resources=(CoapResource("/a"), CoapResource("/b")))
    driver = CoapDriver("n", opts, lambda r: None)
    try:
        with pytest.raises(LinkLost, match="every resource answers with an error"):
            await asyncio.wait_for(driver.run(), 3)
    finally:
        await node.stop()
    assert [driver.resources[p].errors for p in ("/a", "/b")] == [1, 1]
    assert node.resources["/a"].gets == node.resources["/b"].gets == 1 and driver.stats.connects == 0


async def test_a_503_with_max_age_0_is_not_asked_again_and_again():
    """RFC 7252's Max-Age on a 5.03 is a hint: Max-Age 0 is asked again at once, then only after interval_s."""
    node = CoapNode()
    node.add("/temp").publish(b"21.5", 0)
    node.add("/bad").fail(SERVICE_UNAVAILABLE, 0)
    await node.start()
    out = []
    opts = CoapOptions(uri=node.uri, interval_s=30, resources=(CoapResource("/temp"), CoapResource("/bad")))
    driver = CoapDriver("n", opts, out.append)
    try:
        async with running(driver) as task:
            assert await wait_until(lambda: driver.resources["/bad"].errors == 2 and len(out) == 1)
            # before, hundreds of GETs a second
            assert not await wait_until(lambda: node.resources["/bad"].gets > 2, timeout=1.0)
            assert not task.done()
    finally:
        await node.stop()
    bad = driver.resources["/bad"]
    assert (node.resources["/bad"].gets, bad.requests, bad.errors, bad.responses) == (2, 2, 2, 0)
    assert bad.last_code == str(SERVICE_UNAVAILABLE) and [r.value for r in out] == [21.5]
    assert (driver.stats.connects, driver.stats.link_errors) == (1, 0)


def test_retry_delays():
    # any error: interval_s doubled at each further one, up to 300 s (or interval_s if longer)
    assert [retry_delay(k, 5.0) for k in (1, 2, 3, 4, 7, 30)] == [5.0, 10.0, 20.0, 40.0, 300.0, 300.0]
    assert retry_delay(3, 500.0) == 500.0
    # a 5.03's Max-Age first, then never sooner than the doubled wait of the error before
    assert [retry_delay(k, 5.0, 0) for k in (1, 2, 3, 4, 30)] == [0.0, 5.0, 10.0, 20.0, 300.0]
    assert [retry_delay(k, 5.0, 1) for k in (1, 2, 3)] == [1.0, 5.0, 10.0]
    assert [retry_delay(k, 5.0, 30) for k in (1, 2, 3, 4, 5)] == [30.0, 30.0, 30.0, 30.0, 40.0]
    assert retry_delay(1, 5.0, 100_000) == 300.0
