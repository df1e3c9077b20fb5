"""coap + senml: the SenML resolver, and the driver against real aiocoap nodes on 127.0.0.1."""

from __future__ import annotations

import asyncio

import pytest
from driver_fixtures import by_channel, running, wait_until

from drivers import senml
from drivers.coap import CoapDriver, CoapOptions, CoapResource, decode_payload
from edge_gateway.supervisor import Backoff, Supervisor
from simulators.coap_node import CoapNode

NOW = 1_700_000_000.0


def test_senml_rfc8428_example_resolution():
    pack = [{"bn": "urn:dev:ow:10e2073a01080063:", "bt": 1.320067464e9, "bu": "%RH", "v": 20.0},
            {"u": "lon", "v": 24.30621}, {"n": "temp", "u": "Cel", "t": 60, "v": 23.1},
            {"n": "door", "vb": True}, {"n": "label", "vs": "text"}]
    records, errors = senml.decode_json(senml.encode_json(pack), NOW)
    assert errors == 0
    assert records == [
        senml.Record("urn:dev:ow:10e2073a01080063:", 20.0, 1.320067464e9, "%RH"),
        senml.Record("urn:dev:ow:10e2073a01080063:", 24.30621, 1.320067464e9, "lon"),
        senml.Record("urn:dev:ow:10e2073a01080063:temp", 23.1, 1.320067524e9, "Cel"),
        senml.Record("urn:dev:ow:10e2073a01080063:door", 1.0, 1.320067464e9, "%RH"),
    ]
    assert senml.decode_cbor(senml.encode_cbor(pack), NOW) == (records, 0)


def test_senml_relative_time_base_value_and_sum():
    pack = [{"bn": "m:", "bv": 100.0, "n": "a", "v": 1.5, "t": -10}, {"n": "b", "s": 7}, {"bs": 3, "n": "c", "s": 2}]
    records, errors = senml.decode_json(senml.encode_json(pack), NOW)
    assert errors == 0
    assert records == [senml.Record("m:a", 101.5, NOW - 10, ""), senml.Record("m:b", 7.0, NOW, ""),
                       senml.Record("m:c", 5.0, NOW, "")]


@pytest.mark.parametrize("payload", [b"", b"{", b"[1, 2]", b'[{"n": 3, "v": 1}]', b'[{"n": "x", "v": "1"}]',
                                     b'[{"n": "x"}]', b'{"n": "x", "v": 1}', b'[{"n": "x", "v": 1e999}]'])
def test_senml_bad_input_is_counted_not_raised(payload):
    records, errors = senml.decode_json(payload, NOW)
    assert records == [] and errors >= 1


def _both(pack):
    """The pack decoded from JSON and from CBOR (the two must agree)."""
    got = senml.decode_json(senml.encode_json(pack), NOW)
    assert senml.decode_cbor(senml.encode_cbor(pack), NOW) == got
    return got


@pytest.mark.parametrize("bver", [11, 12, 42, 0, -1, 10.0, "10", True, None])
def test_senml_pack_of_a_version_not_understood_is_refused_whole(bver):
    """RFC 8428 4.4: a receiver MUST NOT use a pack whose bver is above the version it understands (10)."""
    pack = [{"n": "a", "v": 1}, {"bver": bver, "n": "b", "v": 2}, {"n": "c", "v": 3}]
    assert _both(pack) == ([], 3)


@pytest.mark.parametrize("bver", [10, 5, 1])
def test_senml_versions_up_to_10_are_used(bver):
    pack = [{"bver": bver, "bn": "d:", "n": "a", "v": 1}, {"n": "b", "v": 2}]
    assert _both(pack) == ([senml.Record("d:a", 1.0, NOW, ""), senml.Record("d:b", 2.0, NOW, "")], 0)


@pytest.mark.parametrize("key", ["foo_", "bfoo_", "_", "v_"])
def test_senml_must_understand_field_refuses_the_pack(key):
    """RFC 8428 4.4: an unknown field named ..._ MUST produce an error; another unknown field is ignored."""
    pack = [{"n": "a", "v": 1}, {"n": "b", "v": 2, key: 0}]
    assert _both(pack) == ([], 2)
    assert _both([{"n": "a", "v": 1, "foo": 0, "ut": 5}]) == ([senml.Record("a", 1.0, NOW, "")], 0)


@pytest.mark.parametrize("bn, n", [("", "a b"), ("", "a\nb"), ("", "-x"), ("", "_x"), ("", ":x"), ("", "x+"),
                                   ("", "x#"), ("", "tä"), ("dev 1:", "t"), ("", ""), ("-", "x")])
def test_senml_names_outside_rfc8428_4_5_1_are_rejected(bn, n):
    """RFC 8428 4.5.1: the resolved name starts with a letter or digit, then only A-Za-z0-9 - : . / _."""
    pack = [{"bn": bn, "n": n, "v": 1}, {"bn": "ok/", "n": "x", "v": 2}]
    assert _both(pack) == ([senml.Record("ok/x", 2.0, NOW, "")], 1)


def test_senml_records_after_an_invalid_base_are_not_resolved_with_the_old_base():
    """A rejected base field is not replaced by the previous one: the records relying on it are rejected
    until a record sets it again (published under another device's name or time otherwise)."""
    pack = [{"bn": "room1:", "bu": "Cel", "bt": 1.6e9, "n": "temp", "v": 21},
            {"bn": "room2:", "bt": "2023-11-14T22:13:20Z", "n": "temp", "v": 30},
            {"n": "hum", "u": "%RH", "v": 55},
            {"bt": 1.7e9, "n": "co2", "v": 900},
            {"bn": 7, "n": "temp", "v": 30},
            {"n": "co2", "v": 901},
            {"bn": "room3:", "bu": ["x"], "n": "t", "v": 1},
            {"n": "t", "v": 2},
            {"n": "t", "u": "K", "v": 3},
            {"bu": "Cel", "n": "t", "v": 4}]
    assert _both(pack) == ([senml.Record("room1:temp", 21.0, 1.6e9, "Cel"),
                            senml.Record("room2:co2", 900.0, 1.7e9, "Cel"),
                            senml.Record("room3:t", 3.0, 1.7e9, "K"),
                            senml.Record("room3:t", 4.0, 1.7e9, "Cel")], 6)
    assert _both([{"bv": "x", "n": "a", "v": 1}, {"n": "b", "v": 2}, {"n": "c", "vb": True},
                  {"bs": None, "n": "d", "s": 1}, {"n": "e", "s": 2}]) == ([senml.Record("c", 1.0, NOW, "")], 4)


def test_senml_pack_over_max_records_is_refused():
    pack = senml.encode_json([{"n": f"c{i}", "v": i} for i in range(5)])
    assert len(senml.decode_json(pack, NOW, max_records=5)[0]) == 5
    with pytest.raises(senml.TooLarge, match="pack of 5 records exceeds max_records=4"):
        senml.decode_json(pack, NOW, max_records=4)
    with pytest.raises(senml.TooLarge):
        decode_payload(b'{"a": 1, "b": 2}', senml.CT_JSON, CoapResource("/x"), NOW, max_records=1)


def test_plain_and_json_payloads():
    res = CoapResource("/traffic/speed", unit="km/h", units={"cars": "1/min"})
    assert decode_payload(b" 42.5\n", 0, res, NOW) == ([("speed", 42.5, NOW, "km/h")], 0)
    assert decode_payload(b'{"cars": 3, "x": "no"}', 50, res, NOW) == ([("cars", 3.0, NOW, "1/min")], 1)
    assert decode_payload(b"nan", 0, res, NOW) == ([], 1)
    assert decode_payload(b"\xff", 60, res, NOW) == ([], 1)
    assert decode_payload(b"2_1.5", 0, res, NOW) == ([], 1)


def test_a_senml_name_that_is_only_the_stripped_prefix_is_an_error():
    res = CoapResource("/s", strip_prefix="dev/")
    pack = b'[{"bn": "dev/", "n": "", "v": 1}, {"n": "t", "v": 2}]'
    assert decode_payload(pack, senml.CT_SENML_JSON, res, NOW) == ([("t", 2.0, NOW, "")], 1)


async def _node(**paths) -> CoapNode:
    node = CoapNode()
    for path, (payload, cf) in paths.items():
        node.add("/" + path).publish(payload, cf)
    await node.start()
    return node


def _bins(values, t):
    return senml.encode_cbor([{"bn": "bins-1:", "bt": t, "n": f"bin{i + 1}_fill", "u": "%", "v": v}
                              for i, v in enumerate(values)])


async def test_observe_senml_cbor_exact_values():
    node = await _node(bins=(_bins([10.0, 20.0], NOW), senml.CT_SENML_CBOR))
    out = []
    opts = CoapOptions(uri=node.uri, resources=(CoapResource("/bins", strip_prefix="bins-1:"),),
                       observe_timeout_s=30)
    driver = CoapDriver("bins-1", opts, out.append)
    try:
        async with running(driver):
            assert await wait_until(lambda: len(out) == 2)
            for k in range(1, 6):
                node.resources["/bins"].publish(_bins([10.0 + k, 20.0 - k], NOW + k), senml.CT_SENML_CBOR)
                await asyncio.sleep(0.02)
            assert await wait_until(lambda: len(out) == 12)
    finally:
        await node.stop()
    got = by_channel(out)
    assert [(r.value, r.ts) for r in got["bin1_fill"]] == [(10.0 + k, NOW + k) for k in range(6)]
    assert [r.value for r in got["bin2_fill"]] == [20.0 - k for k in range(6)]
    assert {r.unit for r in out} == {"%"} and driver.stats.connects == 1


async def test_poll_json_text_and_senml_json():
    node = await _node(counts=(b'{"vehicles": 12, "bikes": 3}', 50), speed=(b"31.5", 0),
                       env=(senml.encode_json([{"bn": "e:", "n": "t", "u": "Cel", "v": 21.5}]), 110))
    out = []
    opts = CoapOptions(uri=node.uri, mode="poll", interval_s=0.05, resources=(
        CoapResource("/counts", units={"vehicles": "1/min"}), CoapResource("/speed", channel="speed_kmh"),
        CoapResource("/env")))
    driver = CoapDriver("traffic-1", opts, out.append)
    try:
        async with running(driver):
            assert await wait_until(lambda: len(out) >= 8)
            node.resources["/speed"].publish(b"33", 0)
            assert await wait_until(lambda: out[-1].channel == "e:t" and 33.0 in [r.value for r in out])
    finally:
        await node.stop()
    got = by_channel(out)
    assert {r.value for r in got["vehicles"]} == {12.0} and got["vehicles"][0].unit == "1/min"
    assert {r.value for r in got["bikes"]} == {3.0}
    assert {r.value for r in got["speed_kmh"]} == {31.5, 33.0}
    assert {(r.value, r.unit) for r in got["e:t"]} == {(21.5, "Cel")}
    assert node.resources["/speed"].gets >= 2


async def test_silent_observation_is_registered_again():
    """Each registration's first response repeats the unchanged sample: it is counted, not published again."""
    node = await _node(level=(b"1", 0))
    out = []
    opts = CoapOptions(uri=node.uri, resources=(CoapResource("/level"),), observe_timeout_s=0.3)
    driver = CoapDriver("n", opts, out.append)
    try:
        async with running(driver):
            assert await wait_until(lambda: driver.resources["/level"].duplicates == 2)
            assert (driver.reregistrations, len(out)) == (2, 1)
    finally:
        await node.stop()
    assert driver.stats.connects == 1 and [r.value for r in out] == [1.0]


async def test_node_restart_under_the_supervisor():
    node = await _node(bins=(_bins([1.0], NOW), senml.CT_SENML_CBOR))
    out, gaps = [], []
    opts = CoapOptions(uri=node.uri, resources=(CoapResource("/bins", strip_prefix="bins-1:"),),
                       observe_timeout_s=0.3, request_timeout_s=0.5)
    driver = CoapDriver("bins-1", opts, out.append)
    sup = Supervisor(gaps.append, Backoff(initial_s=0.05, max_s=0.2), seed=1)
    sup.start(driver)
    try:
        assert await wait_until(lambda: len(out) == 1)
        await node.stop()
        await asyncio.sleep(0.5)
        await node.start()
        node.resources["/bins"].publish(_bins([2.0], NOW + 1), senml.CT_SENML_CBOR)
        assert await wait_until(lambda: any(r.value == 2.0 for r in out), timeout=8)
        for k in range(3, 6):
            node.resources["/bins"].publish(_bins([float(k)], NOW + k), senml.CT_SENML_CBOR)
            await asyncio.sleep(0.05)
        assert await wait_until(lambda: any(r.value == 5.0 for r in out), timeout=8)
    finally:
        await sup.stop()
        await node.stop()
    assert [r.value for r in out if r.value > 1.0][-3:] == [3.0, 4.0, 5.0]
    assert driver.stats.connects >= 1
