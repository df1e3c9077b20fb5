"""Bounds on what waits inside the MQTT link, against a real Mosquitto (security review: memory).

- link-level messages (command replies, status) waiting for an unreachable broker: at most
  ``uplink.MAX_WAITING``, the oldest dropped and counted;
- inbound messages waiting for a stalled event loop: at most ``uplink.MAX_INBOUND_PENDING``, the newest
  dropped on the network thread and counted.

The loop is stalled the way a real stall does it: a blocking call inside a coroutine on the loop (here
``time.sleep`` in a bounded poll), while another thread publishes commands to the broker.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time

from edge_gateway.uplink import MAX_INBOUND_PENDING, MAX_WAITING
from support import Broker, Subscriber
from test_downlink_limits import TOPICS, Publisher, make_link, until_subscribed
from uplink_support import TcpProxy, until


def count_arrivals(link) -> list:
    """Wrap paho's on_message (network thread): one entry per inbound message the link was handed,
    whatever it then did with it; a test can wait for these while the event loop is stalled."""
    seen: list = []
    inner = link.client.on_message

    def counting(client, userdata, msg) -> None:
        inner(client, userdata, msg)
        seen.append(1)

    link.client.on_message = counting
    return seen


def stall_until(pred, timeout: float) -> None:
    """Block the calling thread, the event loop's, until ``pred()`` (at most ``timeout`` s)."""
    deadline = time.monotonic() + timeout
    while not pred() and time.monotonic() < deadline:
        time.sleep(0.01)


def publish_in_thread(pub: Publisher, n: int, first: int = 0) -> threading.Thread:
    def run() -> None:
        for i in range(first, first + n):
            pub.send(TOPICS.cmd("ping"), json.dumps({"id": i}).encode())

    t = threading.Thread(target=run, name="publisher", daemon=True)
    t.start()
    return t


def overflow_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if "inbound messages already waiting" in r.getMessage()]


async def test_inbound_messages_past_the_cap_are_dropped_while_the_event_loop_stalls(broker, caplog):
    """50 commands arrive while the loop is blocked: the first 32 run once it is back, 18 are dropped,
    counted and logged once; a message after the stall goes through again."""
    n = MAX_INBOUND_PENDING + 18
    inbox: list = []
    link = make_link(broker.port, inbox=inbox)
    seen = count_arrivals(link)
    link.start()
    pub = None
    try:
        await until(lambda: link.connected, 5, "connected")
        pub = Publisher(broker.port)
        await until_subscribed(pub, inbox)
        seen.clear()
        t = publish_in_thread(pub, n)
        stall_until(lambda: len(seen) == n, 20)  # the loop is stalled: nothing the link posts runs
        during = (len(seen), len(inbox))
        t.join(10)
        await until(lambda: len(inbox) >= MAX_INBOUND_PENDING, 5, "the posted messages run")
        await asyncio.sleep(0.3)
        assert during == (n, 0)
        assert [json.loads(p)["id"] for _, p in inbox] == list(range(MAX_INBOUND_PENDING))
        assert (getattr(link, "inbound_overflow", None), link.inbound_dropped) == (18, 0)
        assert overflow_lines(caplog) == [
            (f"dropped a message on {TOPICS.cmd('ping')!r}: {MAX_INBOUND_PENDING} inbound messages already waiting "
             "for the event loop (1 dropped so far; logged at most once a minute)")]

        await asyncio.to_thread(pub.send, TOPICS.cmd("ping"), b'{"id": "after"}')
        await until(lambda: len(inbox) == MAX_INBOUND_PENDING + 1, 5, "a message after the stall")
        assert inbox[-1][1] == b'{"id": "after"}' and link.inbound_overflow == 18
        assert link.connected and link.connects == 1 and link.callback_errors == 0
    finally:
        if pub:
            pub.stop()
        await link.stop()


async def test_a_stalled_gateway_runs_only_what_it_kept_and_counts_the_rest(broker, tmp_path, caplog, monkeypatch):
    """The real Gateway's link, router and command path: 50 pings while the loop is blocked. 32 reach
    the router; of those, downlink.MAX_IN_FLIGHT (8) run and are answered, 24 are refused busy; 18 never
    reached it (inbound_overflow). Exact counts, each command at most once."""
    from edge_gateway import config, downlink
    from edge_gateway.daemon import Gateway

    monkeypatch.setattr(downlink, "LOG_EVERY_S", 1e9)
    n, cap = MAX_INBOUND_PENDING + 18, downlink.MAX_IN_FLIGHT
    cfg = config.loads(f"gateway: {{id: lim-gw, topic_prefix: city, state_dir: {tmp_path}/state, "
                       f"status_interval_s: 0}}\nbroker: {{host: 127.0.0.1, port: {broker.port}, keepalive_s: 5, "
                       "reconnect_min_s: 0.1, reconnect_max_s: 0.5, commands: [ping]}\n")
    gw = Gateway(cfg)
    await gw.queue.open()
    gw._start_uplink()
    seen = count_arrivals(gw.link)
    pub = None
    try:
        await until(lambda: gw.link.connected, 10, "connected")
        await asyncio.to_thread(broker.wait_subscribed, "edge-gateway-lim-gw", "city/lim-gw/cmd/+")
        pub = Publisher(broker.port, listen="city/lim-gw/cmd-res/#")
        t = publish_in_thread(pub, n)
        stall_until(lambda: len(seen) == n, 20)
        t.join(10)
        await until(lambda: len(pub.got) == cap, 10, "the admitted commands answered")
        await asyncio.sleep(0.5)
        assert sorted(json.loads(p)["id"] for _, p in pub.got) == list(range(cap))
        assert (gw.router.counts, gw.router.busy, gw.router.in_flight) == ({"ok": cap, "error": 0},
                                                                          MAX_INBOUND_PENDING - cap, 0)
        assert gw.link.inbound_overflow == n - MAX_INBOUND_PENDING
        assert len(overflow_lines(caplog)) == 1
    finally:
        if pub:
            pub.stop()
        await gw.forwarder.stop()
        await gw.link.stop()
        await gw._cancel_background()
        await gw.queue.close()


async def test_replies_waiting_for_an_unreachable_broker_are_capped_oldest_dropped(broker, caplog):
    """100 replies while the broker is down: the 64 newest wait and are delivered, in order, once it is
    back; the 36 oldest are dropped, counted and logged once. Telemetry handed over meanwhile
    (publish_many, bounded by the forwarder and kept in the durable queue) is not touched."""
    sub = Subscriber(broker.port, "city/lim-gw/#", client_id="wait-sub").start()
    acks: list = []
    link = make_link(broker.port, acks=acks)
    link.start()
    try:
        await until(lambda: link.connected, 5, "connected")
        await asyncio.to_thread(broker.stop)  # SIGTERM: the subscriber's session survives the restart
        await until(lambda: not link.connected, 5, "the link down")
        replies = [link.publish(TOPICS.cmd_res("ping"), json.dumps({"id": i}).encode()) for i in range(50)]
        telemetry = link.publish_many([(TOPICS.agg("a"), b"agg %d" % i) for i in range(5)])
        replies += [link.publish(TOPICS.cmd_res("ping"), json.dumps({"id": i}).encode()) for i in range(50, 100)]
        dropped = 100 - MAX_WAITING
        assert getattr(link, "replies_dropped", None) == dropped
        assert link.pending_mids() == set(replies[dropped:]) | set(telemetry)
        assert [r.getMessage() for r in caplog.records if "waiting for the broker" in r.getMessage()] == [
            (f"uplink: {MAX_WAITING} replies/status messages waiting for the broker; dropped the oldest, on "
             f"{TOPICS.cmd_res('ping')!r} (1 dropped so far; logged at most once a minute)")]

        await asyncio.to_thread(broker.start)
        await until(lambda: len(acks) == MAX_WAITING + 5, 10, "everything kept acknowledged")
        want = ([TOPICS.cmd_res("ping") + f" {i}" for i in range(dropped, 50)] + [f"agg {i}" for i in range(5)]
                + [TOPICS.cmd_res("ping") + f" {i}" for i in range(50, 100)])
        await until(lambda: len([m for m in sub.snapshot() if m.topic != TOPICS.status]) == len(want), 10,
                    "the subscriber got them")
        await asyncio.sleep(0.3)
        got = [f"{m.topic} {json.loads(m.payload)['id']}" if "/cmd-res/" in m.topic else m.payload.decode()
               for m in sub.snapshot() if m.topic != TOPICS.status]
        assert got == want
        assert sorted(t for t, _ in acks) == sorted(replies[dropped:] + telemetry)
        assert link.replies_dropped == dropped and link.pending_mids() == set()
    finally:
        await link.stop()
        sub.stop()


async def test_replies_under_the_cap_all_wait_and_none_is_dropped(broker):
    """At the cap exactly, nothing is dropped: the cap bounds, it does not thin out a normal outage."""
    acks: list = []
    link = make_link(broker.port, acks=acks)
    link.start()
    try:
        await until(lambda: link.connected, 5, "connected")
        await asyncio.to_thread(broker.stop)
        await until(lambda: not link.connected, 5, "the link down")
        tokens = [link.publish(TOPICS.cmd_res("ping"), b"%d" % i) for i in range(MAX_WAITING)]
        assert (link.pending_mids(), getattr(link, "replies_dropped", 0)) == (set(tokens), 0)
        await asyncio.to_thread(broker.start)
        await until(lambda: len(acks) == MAX_WAITING, 10, "all acknowledged")
        assert sorted(t for t, _ in acks) == tokens
    finally:
        await link.stop()


async def test_replies_past_the_cap_are_dropped_while_the_brokers_window_is_full(tmp_path):
    """Up, but taking nothing: the broker's Receive Maximum (5) is outstanding on a link gone silent (a
    blackholed proxy, before the keepalive notices). 100 replies then: 64 wait, 36 are dropped. Healed (the
    proxy resets the silent connection), the link reconnects and the 5 and the 64 arrive once each, in order."""
    b = Broker(tmp_path / "b", persistence=False, extra="max_inflight_messages 5").start()
    proxy = TcpProxy(b.port)
    sub = Subscriber(b.port, "city/lim-gw/cmd-res/#", client_id="win-sub").start()
    acks: list = []
    link = make_link(proxy.port, acks=acks)
    link.start()
    try:
        await until(lambda: link.connected, 5, "connected")
        assert link.receive_maximum == 5
        # the birth message acknowledged: else it holds one of the 5 and one of `first` waits (37 dropped)
        await until(lambda: not link._mid_token, 5, "the birth message acknowledged")
        proxy.blackhole()
        first = [link.publish(TOPICS.cmd_res("ping"), b"%d" % i) for i in range(5)]
        await until(lambda: len(link._mid_token) == 5, 5, "the window full")  # given to paho, unanswered
        later = [link.publish(TOPICS.cmd_res("ping"), b"%d" % i) for i in range(5, 105)]
        dropped = 100 - MAX_WAITING
        assert (link.connected, getattr(link, "replies_dropped", None)) == (True, dropped)
        assert link.pending_mids() == set(first + later[dropped:])
        proxy.heal()
        await until(lambda: len(acks) == 5 + MAX_WAITING, 10, "the rest acknowledged")
        await until(lambda: len(sub.snapshot()) == 5 + MAX_WAITING, 5, "the subscriber got them")
        assert [int(m.payload) for m in sub.snapshot()] == list(range(5)) + list(range(5 + dropped, 105))
        assert link.replies_dropped == dropped and link.connects == 2
    finally:
        await link.stop()
        sub.stop()
        proxy.close()
        b.close()
