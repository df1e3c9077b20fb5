"""coap: block-wise payloads are put together by the driver, within max_payload_bytes and max_records
(real aiocoap nodes on 127.0.0.1, which send anything over 1024 bytes block-wise)."""

from __future__ import annotations

import pytest
from driver_fixtures import running, wait_until

from drivers import senml
from drivers.coap import CoapDriver, CoapOptions, CoapResource
from simulators.coap_node import CoapNode

NOW = 1_700_000_000.0


def _pack(n: int, v0: float = 0.0, bt: float = NOW) -> bytes:
    return senml.encode_json([{"bn": "d:", "bt": bt, "n": f"c{i:03d}", "u": "%", "v": v0 + i} for i in range(n)])


async def _node(payload: bytes, cf: int = senml.CT_SENML_JSON) -> CoapNode:
    node = CoapNode()
    node.add("/p").publish(payload, cf)
    await node.start()
    return node


@pytest.mark.parametrize("mode", ["poll", "observe"])
async def test_a_blockwise_pack_is_put_together_exactly(mode):
    first, second = _pack(200), _pack(150, 1000.0, NOW + 60)
    assert len(first) > 5 * 1024 and len(second) > 3 * 1024
    node = await _node(first)
    out = []
    opts = CoapOptions(uri=node.uri, mode=mode, interval_s=30, resources=(CoapResource("/p"),))
    driver = CoapDriver("n", opts, out.append)
    try:
        async with running(driver):
            assert await wait_until(lambda: len(out) == 200)
            if mode == "observe":
                node.resources["/p"].publish(second, senml.CT_SENML_JSON)
                assert await wait_until(lambda: len(out) == 350)
    finally:
        await node.stop()
    assert [(r.channel, r.value, r.ts, r.unit) for r in out[:200]] == [(f"d:c{i:03d}", float(i), NOW, "%")
                                                                        for i in range(200)]
    blocks = [-(-len(p) // 1024) for p in (first, second)]
    if mode == "observe":
        assert [r.value for r in out[200:]] == [1000.0 + i for i in range(150)]
        assert driver.resources["/p"].requests == 1 + blocks[0] + blocks[1]  # each notification's blocks from 0
    else:
        assert driver.resources["/p"].requests == blocks[0]
    assert driver.stats.malformed == 0 and driver.resources["/p"].oversize == 0


@pytest.mark.parametrize("mode", ["poll", "observe"])
async def test_a_payload_over_max_payload_bytes_is_refused_without_fetching_it_whole(mode):
    payload = _pack(400)
    assert len(payload) > 12 * 1024
    node = await _node(payload)
    out = []
    opts = CoapOptions(uri=node.uri, mode=mode, interval_s=30, max_payload_bytes=2048, resources=(CoapResource("/p"),))
    driver = CoapDriver("n", opts, out.append)
    try:
        async with running(driver) as task:
            assert await wait_until(lambda: driver.resources["/p"].oversize == 1)
            assert not task.done()
    finally:
        await node.stop()
    assert out == [] and driver.stats.malformed == 1 and driver.stats.connects == 1
    # blocks 0 and 1 (2048 bytes, more to come), after the registration when observing
    assert driver.resources["/p"].requests == (2 if mode == "poll" else 3)
    assert driver.stats.last_error == "/p: payload of more than 2048 bytes exceeds max_payload_bytes=2048"


async def test_a_single_datagram_over_max_payload_bytes_is_refused():
    node = await _node(b"12.5" + b" " * 300, 0)
    out = []
    opts = CoapOptions(uri=node.uri, mode="poll", interval_s=0.05, max_payload_bytes=256,
                       resources=(CoapResource("/p"),))
    driver = CoapDriver("n", opts, out.append)
    try:
        async with running(driver):
            assert await wait_until(lambda: driver.resources["/p"].oversize == 3)
            node.resources["/p"].publish(b"12.5", 0)
            assert await wait_until(lambda: len(out) == 1)
            assert driver.resources["/p"].oversize == driver.stats.malformed >= 3 and out[0].value == 12.5
    finally:
        await node.stop()
    assert driver.stats.last_error == "/p: payload of 304 bytes exceeds max_payload_bytes=256"


@pytest.mark.parametrize("kind", ["bytes", "records"])
async def test_the_default_limits_refuse_a_pack_over_64_kib_or_4096_records(kind):
    """Without them such a pack is fetched whole (quadratic in aiocoap) and every record becomes a reading."""
    if kind == "bytes":
        payload, cf = _pack(2200), senml.CT_SENML_JSON
        assert len(payload) > 65536
    else:
        payload, cf = senml.encode_cbor([{"n": "a", "v": i} for i in range(4097)]), senml.CT_SENML_CBOR
        assert len(payload) < 65536
    node = await _node(payload, cf)
    out = []
    driver = CoapDriver("n", CoapOptions(uri=node.uri, mode="poll", interval_s=30, resources=(CoapResource("/p"),)),
                        out.append)
    try:
        async with running(driver):
            assert await wait_until(lambda: driver.stats.malformed == 1 or len(out) > 0)
    finally:
        await node.stop()
    assert out == [] and driver.stats.malformed == 1 and driver.resources["/p"].oversize == 1
    assert driver.resources["/p"].requests == (64 if kind == "bytes" else -(-len(payload) // 1024))


_RECORDS = {
    "senml-json": (senml.CT_SENML_JSON, _pack(6), _pack(5), 5),
    "senml-cbor": (senml.CT_SENML_CBOR, senml.encode_cbor([{"n": f"c{i}", "v": i} for i in range(6)]),
                   senml.encode_cbor([{"n": f"c{i}", "v": i} for i in range(5)]), 5),
    "json": (senml.CT_JSON, b'{"a": 1, "b": 2, "c": 3, "d": 4, "e": 5, "f": 6}', b'{"a": 1}', 1),
}


@pytest.mark.parametrize("kind", sorted(_RECORDS))
async def test_a_pack_over_max_records_is_refused_whole(kind):
    cf, big, small, n_small = _RECORDS[kind]
    node = await _node(big, cf)
    out = []
    opts = CoapOptions(uri=node.uri, max_records=5, resources=(CoapResource("/p"),))
    driver = CoapDriver("n", opts, out.append)
    try:
        async with running(driver):
            assert await wait_until(lambda: driver.resources["/p"].oversize == 1)
            node.resources["/p"].publish(small, cf)
            assert await wait_until(lambda: len(out) == n_small)
    finally:
        await node.stop()
    assert driver.resources["/p"].oversize == 1 and driver.stats.malformed == 1
    assert "exceeds max_records=5" in driver.stats.last_error


def test_limits_must_be_positive():
    for name in ("max_payload_bytes", "max_records", "max_age_margin_s"):
        with pytest.raises(ValueError, match=name):
            CoapOptions(uri="coap://127.0.0.1", resources=(CoapResource("/p"),), **{name: 0})
    with pytest.raises(ValueError, match="listed twice"):
        CoapOptions(uri="coap://127.0.0.1", resources=(CoapResource("/p"), CoapResource("/p", channel="x")))
