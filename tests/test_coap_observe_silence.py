"""coap Observe: a silent observation is noticed from the resource's own rhythm (real aiocoap nodes on
127.0.0.1), with observe_timeout_s only the upper bound; and a uri that carries a path is refused."""

from __future__ import annotations

import asyncio
import contextlib

import pytest
from aiocoap import Message
from driver_fixtures import running, wait_until

from drivers import coap
from drivers.coap import CoapDriver, CoapOptions, CoapResource
from edge_gateway import config
from simulators.coap_node import CoapNode


@contextlib.asynccontextmanager
async def notifying(node: CoapNode, path: str, period: float):
    """Publish 1, 2, 3, ... on ``path`` every ``period`` seconds (to whoever observes it) for the body."""
    async def publish() -> None:
        k = 0
        while True:
            k += 1
            node.resources[path].publish(str(k).encode(), 0)
            await asyncio.sleep(period)

    task = asyncio.create_task(publish())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def _node() -> CoapNode:
    node = CoapNode()
    node.add("/t").publish(b"0", 0)
    await node.start()
    return node


async def test_a_rebooted_node_that_notifies_often_is_registered_again_long_before_observe_timeout_s():
    """Notifications every 0.2 s: a restart that forgets the observer is noticed after the 5 s floor, not 30 s."""
    node = await _node()
    loop = asyncio.get_running_loop()
    out = []
    opts = CoapOptions(uri=node.uri, resources=(CoapResource("/t"),), observe_timeout_s=30.0)
    driver = CoapDriver("n", opts, out.append)
    try:
        async with notifying(node, "/t", 0.2), running(driver) as task:
            assert await wait_until(lambda: len(out) >= 10, timeout=10)  # the rhythm is learnt
            assert driver.reregistrations == 0
            await node.stop()
            await node.start()
            restarted = loop.time()
            assert node.resources["/t"].observers == 0
            seen = max(r.value for r in out)
            # resumed notifications: values the node published after its restart; 20 s < observe_timeout_s
            assert await wait_until(lambda: sum(r.value > seen + 1 for r in out) >= 5, timeout=20)
            elapsed = loop.time() - restarted
            assert not task.done()
            assert node.resources["/t"].observers == 1
            assert driver.reregistrations == 1
    finally:
        await node.stop()
    assert elapsed < 20.0  # the 5 s floor plus slack, well under observe_timeout_s = 30 s
    assert driver.reregistrations == 1 and driver.resources["/t"].reregistrations == 1
    assert driver.stats.connects == 1  # the node answered the re-registration: no link gap
    values = [r.value for r in out]
    assert values == sorted(values)


async def test_a_node_that_notifies_every_2_s_is_not_registered_again():
    """Six seconds of normal operation at one notification per 2 s: no re-registration (no false alarm)."""
    node = await _node()
    out = []
    opts = CoapOptions(uri=node.uri, resources=(CoapResource("/t"),), observe_timeout_s=30.0)
    driver = CoapDriver("n", opts, out.append)
    try:
        async with notifying(node, "/t", 2.0), running(driver) as task:
            assert await wait_until(lambda: len(out) >= 1, timeout=5)
            await asyncio.sleep(6.0)
            assert not task.done()
            assert node.resources["/t"].observers == 1
    finally:
        await node.stop()
    assert driver.reregistrations == 0
    assert driver.resources["/t"].requests == 1  # the one registration, no other GET
    assert len(out) >= 3  # the notifications kept coming
    assert driver.stats.connects == 1


def test_the_silence_limit_follows_the_rhythm_within_observe_timeout_s():
    """k = 5 times the longest recent interval, at least 5 s, never more than observe_timeout_s."""
    assert coap.adaptive_silence_limit([0.2, 0.2]) is None  # not learnt yet
    assert coap.adaptive_silence_limit([0.2, 0.2, 0.2]) == 5.0  # the floor
    assert coap.adaptive_silence_limit([2.0, 2.0, 2.0]) == 10.0
    assert coap.adaptive_silence_limit([1.0, 3.0, 1.0]) == 15.0  # the longest one counts
    opts = CoapOptions(uri="coap://127.0.0.1:5683", resources=(CoapResource("/t"),), observe_timeout_s=30.0,
                       max_age_margin_s=1.0)
    driver = CoapDriver("n", opts, lambda r: None)
    res = opts.resources[0]
    intervals = driver._states["/t"].intervals
    assert driver._silence_limit(res, Message()) == 30.0  # nothing learnt: Max-Age 60 + margin, capped
    intervals.extend([0.2] * 3)
    assert driver._silence_limit(res, Message()) == 5.0
    intervals.extend([20.0] * 3)
    assert driver._silence_limit(res, Message()) == 30.0  # 5 x 20 s, capped
    intervals.clear()
    intervals.extend([2.0] * 3)
    assert 2.0 < driver._silence_limit(res, Message(max_age=1)) <= 4.0  # Max-Age 1 s + 1-3 margins is sooner


def test_a_uri_with_a_path_is_refused():
    msg = "uri: give the node only (coap://host:port); put paths in resources: got path '/bins'"
    with pytest.raises(ValueError) as info:
        CoapOptions(uri="coap://127.0.0.1:43257/bins", resources=(CoapResource("/bins"),))
    assert str(info.value) == msg
    with pytest.raises(config.ConfigError) as info:
        config.loads("gateway: {id: g}\nsensors:\n  - {id: bins-1, driver: coap, options: "
                     "{uri: 'coap://127.0.0.1:43257/bins', resources: [{path: /bins}]}}\n", "site.yaml")
    assert str(info.value) == f"site.yaml:3:47: sensors[0].options.{msg}"
    for uri in ("coap://127.0.0.1:43257", "coap://127.0.0.1:43257/", "coap+tcp://[::1]:5683"):
        assert CoapOptions(uri=uri, resources=(CoapResource("/bins"),)).uri == uri
