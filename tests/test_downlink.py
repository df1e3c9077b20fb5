"""Downlink commands: the router (unit + hypothesis) and ping/status/set through a real broker."""

from __future__ import annotations

import json
import threading

import msgpack
import paho.mqtt.client as mqtt
from hypothesis import given, settings
from hypothesis import strategies as st
from paho.mqtt.enums import CallbackAPIVersion

from edge_gateway.downlink import CommandError, CommandRouter
from support import GatewayProcess, wait_for
from uplink_support import gateway_config


def router() -> tuple[CommandRouter, list]:
    calls = []
    r = CommandRouter(["ping", "set"])
    r.register("ping", lambda args: {"pong": 1})
    r.register("status", lambda args: calls.append("status"))  # registered but not enabled

    def set_(args):
        if args.get("name") != "threshold" or not isinstance(args.get("value"), (int, float)):
            raise ValueError("bad parameter")
        calls.append(args["value"])
        return {"threshold": args["value"]}

    r.register("set", set_)
    return r, calls


async def test_router_replies_and_refuses():
    r, calls = router()
    rep = msgpack.unpackb(await r.handle("ping", msgpack.packb({"id": 7})))
    assert rep == {"id": 7, "ok": True, "result": {"pong": 1}}
    rep = json.loads(await r.handle("set", b'{"id": "a", "args": {"name": "threshold", "value": 4.5}}'))
    assert rep == {"id": "a", "ok": True, "result": {"threshold": 4.5}} and calls == [4.5]
    for name, payload in (("status", msgpack.packb({"id": 1})),         # not in the allowed list
                          ("reboot", msgpack.packb({"id": 1})),         # unknown
                          ("set", b'{"id": "b", "args": {"name": "x", "value": 1}}'),
                          ("set", b'{"id": "c", "args": [1, 2]}'),
                          ("ping", b'{"id": true}'),
                          ("ping", b"\xc1garbage"),
                          ("ping", b'{"id": 1, "extra": 2}')):
        raw = await r.handle(name, payload)
        rep = json.loads(raw) if payload.startswith(b"{") else msgpack.unpackb(raw)
        assert rep["ok"] is False and rep["error"]
    assert calls == [4.5]  # nothing malformed changed anything
    assert r.counts == {"ok": 2, "error": 7}


async def test_handler_bug_becomes_error_reply():
    r = CommandRouter(["ping"])
    r.register("ping", lambda args: 1 / 0)
    rep = msgpack.unpackb(await r.handle("ping", msgpack.packb({"id": 1})))
    assert rep["ok"] is False and "internal error" in rep["error"]

    async def raises(args):
        raise CommandError("nope")

    r.register("ping", raises)
    assert msgpack.unpackb(await r.handle("ping", msgpack.packb({"id": 2})))["error"] == "nope"


values = st.recursive(st.none() | st.booleans() | st.integers(-2**63, 2**64 - 1) | st.floats() | st.text(max_size=20)
                      | st.binary(max_size=20), lambda c: st.lists(c, max_size=4)
                      | st.dictionaries(st.text(max_size=8), c, max_size=4), max_leaves=12)


@settings(max_examples=300, deadline=None)
@given(name=st.text(max_size=30), payload=st.one_of(
    st.binary(max_size=200),
    values.map(lambda v: msgpack.packb(v, use_bin_type=True)),
    st.dictionaries(st.sampled_from(["id", "args", "x"]), values, max_size=3).map(
        lambda d: msgpack.packb(d, use_bin_type=True)),
    st.dictionaries(st.sampled_from(["id", "args"]), values, max_size=2).map(
        lambda d: json.dumps(d, default=repr).encode())))
async def test_malformed_payloads_never_raise(name, payload):
    r, calls = router()
    raw = await r.handle(name, payload)
    rep = json.loads(raw) if payload.lstrip()[:1] == b"{" else msgpack.unpackb(raw, raw=False)
    assert set(rep) >= {"id", "ok"} and isinstance(rep["ok"], bool)
    assert rep["ok"] or rep["error"]


class Commander:
    """Sends commands to a gateway over MQTT and collects replies."""

    def __init__(self, port: int, gw: str) -> None:
        self.base = f"city/{gw}"
        self.replies: list[tuple[str, bytes]] = []
        self.ready = threading.Event()
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="commander", protocol=mqtt.MQTTv5)
        self.c.on_connect = lambda c, u, f, rc, p: c.subscribe(f"{self.base}/cmd-res/#", qos=1)
        self.c.on_subscribe = lambda *a: self.ready.set()  # the SUBACK: replies reach us from now on
        self.c.on_message = lambda c, u, m: self.replies.append((m.topic, bytes(m.payload)))
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()
        wait_for(self.ready.is_set, 10, what="commander subscribed (SUBACK)")

    def call(self, name: str, payload: bytes, decode=msgpack.unpackb, timeout: float = 10) -> dict:
        n = len(self.replies)
        self.c.publish(f"{self.base}/cmd/{name}", payload, qos=1)
        wait_for(lambda: len(self.replies) > n, timeout, what=f"reply to {name}")
        topic, raw = self.replies[n]
        assert topic == f"{self.base}/cmd-res/{name}"
        return decode(raw)

    def stop(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


def test_commands_through_the_broker(broker, tmp_path):
    cfg = gateway_config(tmp_path, broker.port, "cmd-gw", sensors="sensors: []",
                         broker_extra="commands: [ping, status, set]")
    gw = GatewayProcess(cfg, tmp_path / "gateway.log").start()
    cmd = None
    try:
        gw.wait_ready()
        broker.wait_subscribed("edge-gateway-cmd-gw", "city/cmd-gw/cmd/+")  # else the first command is lost
        cmd = Commander(broker.port, "cmd-gw")
        rep = cmd.call("ping", json.dumps({"id": "p1"}).encode(), json.loads)
        assert rep["id"] == "p1" and rep["ok"] and "pong" in rep["result"]
        rep = cmd.call("status", msgpack.packb({"id": 2}))
        assert rep["ok"] and rep["result"]["gateway"] == "cmd-gw"
        up = rep["result"]["uplink"]
        assert up["backlog"] == 0 and up["oldest_age_s"] is None and up["queue_full"] is False
        assert {k: up[k] for k in ("rejected_by_reason", "refused_dropped", "quota_backoffs", "refused_large",
                                   "poisoned", "gave_up", "receive_maximum")} == {
            "rejected_by_reason": {}, "refused_dropped": 0, "quota_backoffs": 0, "refused_large": 0,
            "poisoned": 0, "gave_up": 0, "receive_maximum": 65535}  # the test broker announces no limit
        rep = cmd.call("set", msgpack.packb({"id": 3, "args": {"name": "threshold", "value": 0.7}}))
        assert rep == {"id": 3, "ok": True, "result": {"threshold": 0.7}}
        for bad in ({"id": 4, "args": {"name": "threshold", "value": 1.5}},
                    {"id": 5, "args": {"name": "ewma_alpha", "value": 7.0}},
                    {"id": 6, "args": {"name": "nonsense", "value": 1}}):
            rep = cmd.call("set", msgpack.packb(bad))
            assert rep["ok"] is False and rep["id"] == bad["id"], rep
        assert cmd.call("reload", msgpack.packb({"id": 7}))["ok"] is False  # not enabled
        assert cmd.call("ping", b"\x93\x01")["ok"] is False  # malformed
        rep = cmd.call("status", msgpack.packb({"id": 8}))
        assert rep["result"]["uplink"]["commands"] == {"ok": 3, "error": 5}
    finally:
        if cmd:
            cmd.stop()
        assert gw.stop() == 0
    assert "threshold set to 0.7" in gw.log_text()
