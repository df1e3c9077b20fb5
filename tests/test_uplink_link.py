"""MqttLink + Forwarder in-process against a real Mosquitto behind a TCP proxy.

Pins down that un-acknowledged QoS 1 messages are sent again on reconnect
(session kept or lost, MQTT 5 and 3.1.1; the link resends its own copies), and
that the forwarder delivers everything, in order, even when paho forgets them.
"""

from __future__ import annotations

import asyncio
import signal

import pytest

from edge_gateway import messages
from edge_gateway.backoff import backoff_delay
from edge_gateway.config import BrokerSection
from edge_gateway.forwarder import Forwarder
from edge_gateway.queue import DurableQueue
from edge_gateway.uplink import MqttLink
from support import Broker, Subscriber
from uplink_support import TcpProxy, seq_report, until

TOPICS = messages.Topics("city", "link-gw")


def make_link(port: int, protocol: str, acks: list, states: list) -> MqttLink:
    cfg = BrokerSection(port=port, protocol=protocol, keepalive_s=2, reconnect_min_s=0.05, reconnect_max_s=0.3)
    return MqttLink(cfg, f"link-test-{protocol}", TOPICS.status, birth=lambda: b"online", will=b"offline",
                    on_ack=lambda mid, rc: acks.append((mid, rc)), on_state=states.append)


def test_backoff_has_jitter_and_bounds():
    delays = [backoff_delay(a, 1.0, 60.0) for a in range(12) for _ in range(20)]
    assert all(0.5 <= d <= 60.0 for d in delays)
    assert len({round(d, 6) for d in delays[:20]}) > 1  # jittered, not lockstep
    assert backoff_delay(3, 1.0, 60.0, rand=lambda: 1.0) == 8.0
    assert backoff_delay(3, 1.0, 60.0, rand=lambda: 0.0) == 4.0
    assert backoff_delay(40, 1.0, 60.0, rand=lambda: 1.0) == 60.0


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
@pytest.mark.parametrize("broker_fault", ["link_cut", "broker_lost_session"])
async def test_paho_resends_unacked_qos1_after_reconnect(tmp_path, protocol, broker_fault):
    broker = Broker(tmp_path / "broker").start()
    proxy = TcpProxy(broker.port)
    acks, states = [], []
    link = make_link(proxy.port, protocol, acks, states)
    link.start()
    try:
        await until(lambda: link.connected, 10, "connected")
        await until(lambda: not link._mid_token, 10, "the birth message acknowledged")  # nothing in flight
        acks.clear()
        proxy.blackhole()  # published below, never acknowledged: paho holds them as in flight
        mids = [link.publish(TOPICS.agg("s"), messages.encode({"i": i}, i + 1)) for i in range(20)]
        await asyncio.sleep(0.3)
        assert acks == []
        if broker_fault == "broker_lost_session":
            broker.stop(signal.SIGKILL)  # forgets the session (RELIABILITY.md)
            broker.start()
        proxy.heal()
        await until(lambda: {m for m, _ in acks} >= set(mids), 15, "acks after reconnect")
        assert link.connects >= 2 and all(rc == 0 for _, rc in acks)
        assert link.pending_mids() == set()
    finally:
        await link.stop()
        proxy.close()
        broker.close()


async def test_forwarder_delivers_all_through_cuts_even_if_paho_forgets(tmp_path):
    broker = Broker(tmp_path / "broker").start()
    sub = Subscriber(broker.port, "city/link-gw/#", client_id="link-sub").start()
    proxy = TcpProxy(broker.port)
    queue = DurableQueue(tmp_path / "q.db", messages.encode)
    await queue.open()
    fw = Forwarder(queue, None, window=50, ack_batch_s=0.02, ack_timeout_s=2.0)  # type: ignore[arg-type]
    link = MqttLink(BrokerSection(port=proxy.port, keepalive_s=2, reconnect_min_s=0.05, reconnect_max_s=0.3),
                    "link-fw", TOPICS.status, birth=lambda: b"on", will=b"off", on_ack=fw.on_ack,
                    on_state=fw.on_link)
    fw.link = link
    fw.start()
    link.start()
    try:
        total = 0
        for round_ in range(6):
            msgs = [messages.Message("agg", TOPICS.agg(f"s{i % 3}"), {"i": i, "round": round_}) for i in range(300)]
            total += len(await queue.append(msgs))
            fw.notify()
            await asyncio.sleep(0.05)
            if round_ % 2 == 0:
                proxy.cut()
            else:  # simulate a client that forgets its in-flight messages (another paho, a new client)
                proxy.blackhole()
                await until(lambda: not link.connected, 10, "keepalive notices the dead link")
                link.client.drop_out_messages()
                proxy.heal()
        try:
            await until(lambda: queue.depth == 0 and fw.inflight == 0, 30, "drained")
        except AssertionError:
            raise AssertionError(f"depth {queue.depth} inflight {fw.inflight} cursor {fw._cursor} "
                                 f"connected {link.connected} paho {len(link.pending_mids())} {fw.stats}") from None
        await until(lambda: len(seq_report(sub)["seen"]) >= total, 10, "subscriber has all")
        rep = seq_report(sub)
        # The link keeps its own copy of every un-acknowledged message and publishes them again on
        # each CONNACK, oldest first, before anything new: what paho forgets changes nothing, and
        # first arrivals stay in order.
        assert rep["missing"] == [] and rep["max"] == total
        assert rep["in_order"], rep["disorder"][:10]
        assert fw.stats.rewinds == 0
    finally:
        await fw.stop()
        await link.stop()
        await queue.close()
        sub.stop()
        proxy.close()
        broker.close()
