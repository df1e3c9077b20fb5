"""coap Observe against real aiocoap nodes on 127.0.0.1: Max-Age (RFC 7641 3.3.1), what a re-registration
publishes, and that it ends the old observation on the node (3.6)."""

from __future__ import annotations

import asyncio

from driver_fixtures import running, wait_until

from drivers import senml
from drivers.coap import CoapDriver, CoapOptions, CoapResource
from simulators.coap_node import CoapNode

NOW = 1_700_000_000.0


async def _node(payload: bytes, cf: int, max_age: int | None = None) -> CoapNode:
    node = CoapNode()
    node.add("/t").publish(payload, cf, max_age)
    await node.start()
    return node


async def test_a_rebooted_node_is_observed_again_once_max_age_has_passed():
    """The node forgets its observers; the driver notices when Max-Age (1 s) + margin passes, not observe_timeout_s."""
    node = await _node(b"1", 0, max_age=1)
    loop = asyncio.get_running_loop()
    out = []
    opts = CoapOptions(uri=node.uri, resources=(CoapResource("/t"),), observe_timeout_s=60, max_age_margin_s=0.05)
    driver = CoapDriver("n", opts, out.append)
    try:
        async with running(driver) as task:
            assert await wait_until(lambda: len(out) == 1)
            registered = loop.time()
            await node.stop()
            await node.start()
            node.resources["/t"].publish(b"2", 0, max_age=1)
            assert node.resources["/t"].observers == 0
            assert await wait_until(lambda: len(out) == 2, timeout=3)
            elapsed = loop.time() - registered
            assert not task.done()
    finally:
        await node.stop()
    assert [r.value for r in out] == [1.0, 2.0]
    assert driver.reregistrations == 1 and driver.stats.connects == 1
    assert 0.9 < elapsed < 2.0  # Max-Age 1 s + 0.05-0.15 s


async def test_notifications_within_max_age_keep_the_observation():
    node = await _node(b"0", 0, max_age=1)
    out = []
    opts = CoapOptions(uri=node.uri, resources=(CoapResource("/t"),), max_age_margin_s=0.05)
    driver = CoapDriver("n", opts, out.append)
    try:
        async with running(driver):
            assert await wait_until(lambda: len(out) == 1)
            for k in range(1, 5):
                await asyncio.sleep(0.3)
                node.resources["/t"].publish(str(k).encode(), 0, max_age=1)
                assert await wait_until(lambda: len(out) == 1 + k)
            assert driver.reregistrations == 0 and node.resources["/t"].observers == 1
    finally:
        await node.stop()
    assert [r.value for r in out] == [0.0, 1.0, 2.0, 3.0, 4.0]


async def test_reregistration_does_not_publish_an_absolute_senml_sample_again():
    pack = senml.encode_cbor([{"bn": "bins-1:", "bt": NOW, "n": "fill", "u": "%", "v": 10.0}])
    node = await _node(pack, senml.CT_SENML_CBOR)
    out = []
    opts = CoapOptions(uri=node.uri, resources=(CoapResource("/t", strip_prefix="bins-1:"),), observe_timeout_s=0.2)
    driver = CoapDriver("n", opts, out.append)
    try:
        async with running(driver):
            assert await wait_until(lambda: driver.reregistrations >= 3)
            assert len(out) == 1
            assert await wait_until(lambda: driver.resources["/t"].duplicates == 3)
            node.resources["/t"].publish(senml.encode_cbor([{"bn": "bins-1:", "bt": NOW + 300, "n": "fill", "u": "%",
                                                             "v": 11.0}]), senml.CT_SENML_CBOR)
            assert await wait_until(lambda: len(out) == 2)
            assert await wait_until(lambda: driver.resources["/t"].duplicates == 5)
            assert len(out) == 2
    finally:
        await node.stop()
    assert [(r.channel, r.ts, r.value) for r in out] == [("fill", NOW, 10.0), ("fill", NOW + 300, 11.0)]
    assert driver.stats.malformed == 0


async def test_reregistration_publishes_only_the_senml_records_not_yet_published():
    """A change the node did not notify: the registration's pack holds the old record again and new ones."""
    def pack(*recs):
        return senml.encode_json([{"bn": "d:", "bt": NOW, "n": n, "v": v, "t": t} for n, v, t in recs])

    node = await _node(pack(("a", 1.0, 0)), senml.CT_SENML_JSON)
    out = []
    opts = CoapOptions(uri=node.uri, resources=(CoapResource("/t"),), observe_timeout_s=0.2)
    driver = CoapDriver("n", opts, out.append)
    try:
        async with running(driver):
            assert await wait_until(lambda: len(out) == 1)
            node.resources["/t"].publish(pack(("a", 1.0, 0), ("a", 2.0, 5), ("b", 3.0, 5)), senml.CT_SENML_JSON,
                                         notify=False)
            assert await wait_until(lambda: len(out) == 3)
            assert driver.resources["/t"].duplicates == 1
            assert await wait_until(lambda: driver.resources["/t"].duplicates == 1 + 3)
            assert len(out) == 3
    finally:
        await node.stop()
    assert [(r.channel, r.ts, r.value) for r in out] == [("d:a", NOW, 1.0), ("d:a", NOW + 5, 2.0),
                                                         ("d:b", NOW + 5, 3.0)]


async def test_reregistration_does_not_stamp_a_relative_senml_sample_again():
    """Relative time says "so long before now": the same pack at a later registration is the same sample."""
    node = await _node(senml.encode_json([{"n": "pm25", "v": 10.0, "t": -30}]), senml.CT_SENML_JSON)
    out = []
    opts = CoapOptions(uri=node.uri, resources=(CoapResource("/t"),), observe_timeout_s=0.2)
    driver = CoapDriver("n", opts, out.append)
    try:
        async with running(driver):
            assert await wait_until(lambda: driver.reregistrations >= 3)
            assert len(out) == 1
            assert await wait_until(lambda: driver.resources["/t"].duplicates == 3)
            node.resources["/t"].publish(senml.encode_json([{"n": "pm25", "v": 12.0, "t": -30}]), senml.CT_SENML_JSON,
                                         notify=False)
            assert await wait_until(lambda: len(out) == 2)
    finally:
        await node.stop()
    assert [r.value for r in out] == [10.0, 12.0]
    assert out[1].ts - out[0].ts >= 0.2  # the changed pack is stamped from when it came


async def test_registering_again_ends_the_old_observation_on_the_node():
    """Observers do not pile up on a silent node; stopping the driver leaves none behind."""
    node = await _node(b"1", 0)
    res = node.resources["/t"]
    out = []
    opts = CoapOptions(uri=node.uri, resources=(CoapResource("/t"),), observe_timeout_s=0.15)
    driver = CoapDriver("n", opts, out.append)
    try:
        async with running(driver):
            assert await wait_until(lambda: driver.reregistrations >= 4)
            assert await wait_until(lambda: res.observers == 1, timeout=1)
            res.publish(b"2", 0)
            assert await wait_until(lambda: len(out) == 2)
        assert await wait_until(lambda: res.observers == 0, timeout=1)
    finally:
        await node.stop()
    assert [r.value for r in out] == [1.0, 2.0]


async def test_polling_an_unchanged_absolute_senml_pack_publishes_each_sample_once():
    """A poll returns the node's last pack until it has a new one: its samples are not counted again."""
    pack = senml.encode_json([{"bn": "d:", "bt": NOW, "n": "a", "v": 1.0}])
    node = await _node(pack, senml.CT_SENML_JSON)
    out = []
    opts = CoapOptions(uri=node.uri, resources=(CoapResource("/t"),), mode="poll", interval_s=0.05)
    driver = CoapDriver("n", opts, out.append)
    try:
        async with running(driver):
            assert await wait_until(lambda: driver.resources["/t"].duplicates >= 3)
            node.resources["/t"].publish(senml.encode_json([{"bn": "d:", "bt": NOW + 60, "n": "a", "v": 2.0}]),
                                         senml.CT_SENML_JSON)
            assert await wait_until(lambda: len(out) == 2)
            polls = driver.resources["/t"].responses
            assert await wait_until(lambda: driver.resources["/t"].responses >= polls + 3)
    finally:
        await node.stop()
    assert [(r.channel, r.ts, r.value) for r in out] == [("d:a", NOW, 1.0), ("d:a", NOW + 60, 2.0)]
    assert driver.stats.malformed == 0


async def test_polling_a_plain_number_publishes_every_poll():
    """Stamped on receipt, every poll is a new sample even when the value is the same."""
    node = await _node(b"21.5", 0)
    out = []
    opts = CoapOptions(uri=node.uri, resources=(CoapResource("/t"),), mode="poll", interval_s=0.05)
    driver = CoapDriver("n", opts, out.append)
    try:
        async with running(driver):
            assert await wait_until(lambda: len(out) >= 4)
    finally:
        await node.stop()
    assert {r.value for r in out} == {21.5}
    assert driver.resources["/t"].duplicates == 0
