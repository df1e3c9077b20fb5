"""Downlink and uplink limits against a real Mosquitto: reply topics MQTT cannot carry, failures on the
network thread, oversize inbound messages (review 14, #1 and #9)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import time
import tracemalloc

import msgpack
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from edge_gateway import control, messages
from edge_gateway.config import BrokerSection
from edge_gateway.downlink import CommandRouter
from edge_gateway.uplink import MqttLink
from support import REPO, GatewayProcess, Subscriber, wait_for
from uplink_support import gateway_config, until

TOPICS = messages.Topics("city", "lim-gw")


class Publisher:
    """A plain MQTT 3.1.1 client that publishes QoS 1 and collects what arrives on ``listen``."""

    def __init__(self, port: int, listen: str | None = None) -> None:
        self.got: list[tuple[str, bytes]] = []
        self.ready = threading.Event()
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="lim-publisher", protocol=mqtt.MQTTv311)
        # ready at the CONNACK, or with ``listen`` at the SUBACK: what arrives on it reaches us from then on
        self.c.on_connect = lambda c, u, f, rc, p: c.subscribe(listen, qos=1) if listen else self.ready.set()
        self.c.on_subscribe = lambda *a: self.ready.set()
        self.c.on_message = lambda c, u, m: self.got.append((m.topic, bytes(m.payload)))
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()
        wait_for(self.ready.is_set, 10, what="publisher connected" + (" and subscribed" if listen else ""))

    def send(self, topic: str, payload: bytes) -> None:
        self.c.publish(topic, payload, qos=1).wait_for_publish(10)

    def stop(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


def make_link(port: int, protocol: str = "5", *, birth=lambda: b"online", acks=None, states=None, inbox=None,
              reconnect_min_s: float = 0.05) -> MqttLink:
    cfg = BrokerSection(port=port, protocol=protocol, keepalive_s=5, reconnect_min_s=reconnect_min_s,
                        reconnect_max_s=0.5)
    return MqttLink(cfg, f"lim-{protocol}", TOPICS.status, birth=birth, will=b"offline",
                    on_ack=lambda t, rc: (acks if acks is not None else []).append((t, rc)),
                    on_state=(states if states is not None else []).append,
                    subscriptions=(TOPICS.cmd("+"),),
                    on_message=lambda topic, payload, retain: (inbox if inbox is not None else []).append(
                        (topic, payload)))


async def until_subscribed(pub: Publisher, inbox: list) -> None:
    """The link subscribes in its CONNACK callback, where ``connected`` turns true: a command published before
    the broker has the subscription is dropped. Probes until one gets through, then empties ``inbox`` (a probe
    lost before the subscription is never delivered later; one delivered came in order before the last)."""
    topic = TOPICS.cmd("probe")
    for i in range(50):
        await asyncio.to_thread(pub.send, topic, b"probe %d" % i)
        try:
            await until(lambda: (topic, b"probe %d" % i) in inbox, 0.3, "the probe")
        except AssertionError:
            continue
        inbox.clear()
        return
    raise AssertionError("the link never got a message on its command topic")


async def test_publish_refuses_topics_mqtt_cannot_carry_and_the_link_keeps_working(broker):
    """#1: paho raises on an over-long or wildcard topic; on the network thread that ended it for good."""
    sub = Subscriber(broker.port, "city/lim-gw/agg/#", client_id="lim-sub").start()
    acks: list = []
    link = make_link(broker.port, acks=acks)
    link.start()
    try:
        await until(lambda: link.connected, 5, "connected")
        too_long = TOPICS.cmd_res("a" * 65_532)
        with pytest.raises(RuntimeError):  # uplink.TopicError: what the daemon's reply code catches
            link.publish(too_long, b"reply")
        with pytest.raises(RuntimeError):
            link.publish("city/lim-gw/cmd-res/+", b"reply")
        tokens = link.publish_many([(TOPICS.agg("a"), b"1"), (too_long, b"2"), ("city/#", b"3"),
                                    (TOPICS.agg("b"), b"4")])
        await until(lambda: len(acks) == 4, 3, "all four settled")
        assert sorted(acks) == sorted(zip(tokens, [0, 0x90, 0x90, 0]))  # topic invalid: dropped for good
        await until(lambda: len(sub.snapshot()) == 2, 3, "the two valid messages")
        await asyncio.sleep(0.2)
        assert [(m.topic, m.payload) for m in sub.snapshot()] == [(TOPICS.agg("a"), b"1"), (TOPICS.agg("b"), b"4")]
        assert link.refused_topics == 4 and link.thread_restarts == 0 and link.loop_errors == 0
        assert link.connected and link._thread is not None and link._thread.is_alive()
    finally:
        await link.stop()
        sub.stop()


async def test_an_exception_in_a_paho_callback_is_counted_and_the_session_still_comes_up(broker):
    """The old on_connect stopped at the first exception: no subscriptions, no resend, yet 'connected'."""
    calls = []

    def birth() -> bytes:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("status not ready")
        return b"online"

    acks, inbox = [], []
    link = make_link(broker.port, birth=birth, acks=acks, inbox=inbox)
    link.start()
    pub = None
    try:
        await until(lambda: link.connected, 5, "connected")
        pub = Publisher(broker.port)
        await until_subscribed(pub, inbox)
        await asyncio.to_thread(pub.send, TOPICS.cmd("ping"), b'{"id": 1}')
        await until(lambda: len(inbox) == 1, 3, "the command delivered")
        token = link.publish(TOPICS.agg("a"), b"x")
        await until(lambda: acks == [(token, 0)], 3, "the ack")
        await asyncio.sleep(0.2)
        assert inbox == [(TOPICS.cmd("ping"), b'{"id": 1}')]
        assert link.callback_errors == 1 and link.connects == 1 and link.thread_restarts == 0
    finally:
        if pub:
            pub.stop()
        await link.stop()


async def test_a_network_thread_that_dies_is_reported_down_and_replaced(broker):
    """Whatever escapes the connection cycle (here SystemExit, past every ``except Exception``)."""
    calls = []

    def birth() -> bytes:
        calls.append(1)
        if len(calls) == 1:
            raise SystemExit("escapes everything but the thread's own handler")
        return b"online"

    acks, states = [], []
    link = make_link(broker.port, birth=birth, acks=acks, states=states, reconnect_min_s=0.5)
    link.start()
    try:
        await until(lambda: len(calls) == 1, 5, "the first CONNACK")
        await until(lambda: not link.connected, 1, "the link reported down")  # no thread serves it
        await until(lambda: len(calls) == 2 and link.connected, 5, "a new thread connected")
        token = link.publish(TOPICS.agg("a"), b"x")
        await until(lambda: acks == [(token, 0)], 3, "the ack")
        assert states == [True] and link.thread_restarts == 1 and link.connects == 1
    finally:
        await link.stop()


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
async def test_oversize_inbound_messages_never_reach_the_daemon(broker, protocol):
    """#9: MQTT 5 asks the broker not to send packets over MAX_INBOUND; 3.1.1 drops them on arrival."""
    inbox: list = []
    link = make_link(broker.port, protocol, inbox=inbox)
    link.start()
    pub = None
    try:
        await until(lambda: link.connected, 5, "connected")
        pub = Publisher(broker.port)
        await until_subscribed(pub, inbox)
        sizes = [200 * 1024, 50, 60 * 1024, 64 * 1024, 7]  # uplink.MAX_INBOUND is 64 KiB
        for i, n in enumerate(sizes):
            await asyncio.to_thread(pub.send, TOPICS.cmd("ping"), bytes([i]) * n)
        await until(lambda: inbox and inbox[-1][1] == bytes([4]) * 7, 5, "the last message")
        await asyncio.sleep(0.2)
        assert [len(p) for _, p in inbox] == [50, 60 * 1024, 7]
        assert link.inbound_dropped == (0 if protocol == "5" else 2)  # MQTT 5: the broker never sent them
        assert link.connected and link.connects == 1 and link.callback_errors == 0
    finally:
        if pub:
            pub.stop()
        await link.stop()


PUBLISH_BIG = """\
import sys
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
port, topic, size = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="lim-big", protocol=mqtt.MQTTv311)
c.connect("127.0.0.1", port)
c.loop_start()
c.publish(topic, b"{" + b" " * size, qos=1)
c.publish(topic, b"end", qos=1).wait_for_publish(20)
c.disconnect()
c.loop_stop()
"""


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
async def test_a_30_mb_command_is_never_held_in_the_gateways_memory(broker, protocol):
    """#9: paho held the whole packet and copied it three times while decoding (200 MB: +600 MB peak).
    With 3.1.1 the link reads an oversize PUBLISH through, keeping 64 KiB at most."""
    inbox: list = []
    link = make_link(broker.port, protocol, inbox=inbox)
    link.start()
    try:
        await until(lambda: link.connected, 5, "connected")
        pub = Publisher(broker.port)
        try:
            await until_subscribed(pub, inbox)
        finally:
            pub.stop()
        tracemalloc.start()
        try:
            args = [sys.executable, "-c", PUBLISH_BIG, str(broker.port), TOPICS.cmd("ping"), str(30 << 20)]
            r = await asyncio.to_thread(subprocess.run, args, cwd=REPO, capture_output=True, timeout=30)
            assert r.returncode == 0, r.stderr
            await until(lambda: inbox, 5, "the small message after the big one")
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert inbox == [(TOPICS.cmd("ping"), b"end")]
        assert peak < 4 << 20, f"{peak / 2**20:.1f} MiB traced while a 30 MB message went by"
        assert link.inbound_dropped == (0 if protocol == "5" else 1) and link.connects == 1
    finally:
        await link.stop()


async def test_router_refuses_names_it_cannot_echo_into_a_reply_topic():
    r = CommandRouter(["ping"])
    r.register("ping", lambda args: {"pong": 1})
    for name in ("a" * 65_532, "a" * 65, "pi+ng", "", "ping\x00"):
        rep = json.loads(await r.handle(name, b'{"id": 1}'))
        assert rep["ok"] is False and "a" * 80 not in rep["error"]
    assert msgpack.unpackb(await r.handle("ping", msgpack.packb({"id": 2}))) == {"id": 2, "ok": True,
                                                                                 "result": {"pong": 1}}
    assert r.refused == 5 and r.counts == {"ok": 1, "error": 5}


def test_a_command_on_a_65535_byte_topic_leaves_the_gateway_uplink_working(broker, tmp_path):
    """Review 14 #1 end to end: the MQTT 3.1.1 gateway gets the command (Mosquitto delivers it), and
    before the fix its network thread died on the reply while status said 'link up'."""
    cfg = gateway_config(tmp_path, broker.port, "lim-gw", sensors="sensors: []",
                         broker_extra="protocol: '3.1.1', commands: [ping, status]")
    gw = GatewayProcess(cfg, tmp_path / "gateway.log").start()
    pub = None
    try:
        gw.wait_ready()
        broker.wait_subscribed("edge-gateway-lim-gw", TOPICS.cmd("+"))  # else the commands are lost
        pub = Publisher(broker.port, listen="city/lim-gw/cmd-res/#")
        long_topic = TOPICS.cmd("x" * (65_535 - len(TOPICS.cmd(""))))
        assert len(long_topic.encode()) == 65_535
        pub.send(long_topic, b'{"id": 1}')
        pub.send(TOPICS.cmd("ping"), b'{"id": 2}')
        wait_for(lambda: pub.got, 3, what="the ping reply")
        time.sleep(0.3)
        assert [(t, json.loads(p)["id"]) for t, p in pub.got] == [(TOPICS.cmd_res("ping"), 2)]
        s = control.request(tmp_path / "state" / "control.sock", {"cmd": "status"})["status"]
        assert s["link"] == "up" and s["uplink"]["commands"] == {"ok": 1, "error": 0}
        assert "Traceback" not in gw.log_text()
    finally:
        if pub:
            pub.stop()
        rc = gw.stop()
    assert rc == 0


# --- review 19 #4: a bounded number of commands in flight ------------------------------------------


async def test_commands_over_the_cap_are_refused_without_a_task_counted_and_logged_once(
        broker, tmp_path, caplog, monkeypatch):
    """The real Gateway's link, router and command path against Mosquitto. A handler held open keeps
    MAX_IN_FLIGHT commands running: the rest are refused on arrival, without a task or a reply, counted
    in status and logged once; released, exactly the admitted ones are answered, and commands at or
    under the cap are all answered."""
    from edge_gateway import config, downlink
    from edge_gateway.daemon import Gateway

    monkeypatch.setattr(downlink, "LOG_EVERY_S", 1e9)  # one line per burst, however slow the machine
    cap, over = downlink.MAX_IN_FLIGHT, 5
    cfg = config.loads(f"gateway: {{id: lim-gw, topic_prefix: city, state_dir: {tmp_path}/state, "
                       f"status_interval_s: 0}}\nbroker: {{host: 127.0.0.1, port: {broker.port}, keepalive_s: 5, "
                       "reconnect_min_s: 0.1, reconnect_max_s: 0.5, commands: [ping, status]}\n")
    gw = Gateway(cfg)
    await gw.queue.open()
    gw._start_uplink()
    release, started = asyncio.Event(), []

    async def held_ping(args):
        started.append(1)
        await release.wait()
        return {"pong": 1}

    gw.router.register("ping", held_ping)
    pub = None
    try:
        await until(lambda: gw.link.connected, 10, "connected")
        await asyncio.to_thread(broker.wait_subscribed, "edge-gateway-lim-gw", TOPICS.cmd("+"))
        pub = Publisher(broker.port, listen="city/lim-gw/cmd-res/#")
        for i in range(cap + over):
            await asyncio.to_thread(pub.send, TOPICS.cmd("ping"), json.dumps({"id": i}).encode())
        await until(lambda: gw.router.busy == over, 10, "the excess refused")
        await until(lambda: len(started) == cap, 5, "the admitted commands running")
        await asyncio.sleep(0.3)
        running = [t for t in gw._background if t.get_name().startswith("cmd:") and not t.done()]
        assert (len(running), gw.router.in_flight, gw.router.busy, pub.got) == (cap, cap, over, [])
        release.set()
        await until(lambda: len(pub.got) == cap, 10, "the admitted commands answered")
        await asyncio.sleep(0.3)
        assert sorted(json.loads(p)["id"] for _, p in pub.got) == list(range(cap))  # the first 8, once each
        assert gw.router.in_flight == 0 and gw.router.counts == {"ok": cap, "error": 0}

        for i in range(100, 100 + cap):  # at the cap, nothing refused
            await asyncio.to_thread(pub.send, TOPICS.cmd("ping"), json.dumps({"id": i}).encode())
        await until(lambda: len(pub.got) == 2 * cap, 10, "answers to the second round")
        await asyncio.sleep(0.3)
        assert len(pub.got) == 2 * cap and gw.router.busy == over
        status = await gw.status()
        assert (status["uplink"]["commands_busy"], status["uplink"]["commands"]) == (over, {"ok": 2 * cap, "error": 0})
        lines = [r.getMessage() for r in caplog.records if "commands in flight, refusing more" in r.getMessage()]
        assert lines == [f"downlink: {cap} commands in flight, refusing more without a reply (1 refused so far; "
                         "logged at most once a minute)"]
    finally:
        release.set()
        if pub:
            pub.stop()
        await gw.forwarder.stop()
        await gw.link.stop()
        await gw._cancel_background()
        await gw.queue.close()


# --- review 19 #5: retained commands are never run --------------------------------------------------


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_a_retained_command_is_not_run_at_connect_nor_at_reconnects(broker, tmp_path, protocol):
    """A retained ``set`` was applied at every connect (4 times in the review), undoing later sets.
    MQTT 5 subscribes with Retain Handling 2: the broker sends it not at all. 3.1.1 cannot ask that: the
    gateway gets it with the retain flag and answers an error, at the first connect and again at the
    reconnect (its connection cut by a proxy), without applying it."""
    from uplink_support import TcpProxy

    proxy = TcpProxy(broker.port)
    pub = Publisher(broker.port, listen="city/lim-gw/cmd-res/#")
    stale = json.dumps({"id": "stale", "args": {"name": "threshold", "value": 0.99}}).encode()
    pub.c.publish(TOPICS.cmd("set"), stale, qos=1, retain=True).wait_for_publish(10)
    cfg = gateway_config(tmp_path, proxy.port, "lim-gw", sensors="sensors: []",
                         broker_extra=f"protocol: '{protocol}', commands: [ping, status, set]")
    gw = GatewayProcess(cfg, tmp_path / "gateway.log").start()
    retained = protocol == "3.1.1"
    try:
        gw.wait_ready()
        for n in (1, 2):
            wait_for(lambda: gw.log_text().count("connected to") == n, 10, what=f"connect {n}")
            for k in range(20):  # until the gateway's subscription is in place (a new session at n == 1)
                pub.send(TOPICS.cmd("ping"), json.dumps({"id": f"p{n}-{k}"}).encode())
                if wait_until(lambda: any(json.loads(p)["id"].startswith(f"p{n}-") for _, p in pub.got), 0.5):
                    break
            if n == 1:
                proxy.cut()
        wait_for(lambda: any(json.loads(p)["id"].startswith("p2-") for _, p in pub.got), 5, what="ping 2")
        time.sleep(0.3)
        replies = [(t.rsplit("/", 1)[1], json.loads(p)) for t, p in pub.got]
        refusal = ("set", {"id": "stale", "ok": False, "error": downlink_retained()})
        pongs = [r for name, r in replies if name == "ping"]
        assert all(r["ok"] for r in pongs) and {r["id"][:2] for r in pongs} == {"p1", "p2"}
        assert [x for x in replies if x[0] == "set"] == ([refusal, refusal] if retained else [])
        s = control.request(tmp_path / "state" / "control.sock", {"cmd": "status"})["status"]
        assert s["uplink"]["connects"] == 2 and s["uplink"]["commands_retained"] == (2 if retained else 0)
        # a reply in flight at the cut is sent again at the reconnect (QoS 1: at least once): count ids
        assert s["uplink"]["commands"] == {"ok": len({r["id"] for r in pongs}), "error": 2 if retained else 0}
        assert "threshold set" not in gw.log_text()
        assert gw.log_text().count("retained command on cmd/set was refused") == (1 if retained else 0)
    finally:
        pub.c.publish(TOPICS.cmd("set"), b"", qos=1, retain=True).wait_for_publish(10)  # clear it
        pub.stop()
        rc = gw.stop()
        proxy.close()
    assert rc == 0


def wait_until(pred, timeout: float) -> bool:
    """True once ``pred()`` holds, False after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def downlink_retained() -> str:
    from edge_gateway.downlink import RETAINED

    return RETAINED
