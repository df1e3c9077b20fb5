"""Order of first transmissions across a reconnect, against a scripted broker (deterministic).

paho 2.2 resends un-acknowledged QoS 1 messages only when the CONNACK arrives,
but a ``publish()`` made while it reconnects (socket open, CONNECT sent, no
CONNACK yet) goes out at once, ahead of them; and without ``loop_start`` its
``publish()`` writes from the caller's thread. The link must never let a newer
message overtake an older un-acknowledged one (docs/uplink.md, "Order").
"""

from __future__ import annotations

import asyncio
import socket
import time

import mqtt_wire as wire
from edge_gateway import messages
from edge_gateway.config import BrokerSection
from edge_gateway.uplink import MqttLink

TOPIC = "city/order-gw/agg/s"


class ScriptedBroker:
    """Just enough MQTT 5 server to script CONNACK timing and record PUBLISHes per connection."""

    def __init__(self) -> None:
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(4)
        self.port = self.listener.getsockname()[1]
        self.conn: socket.socket | None = None
        self.reader: wire.SocketReader | None = None

    def accept(self, timeout: float = 10) -> None:
        self.listener.settimeout(timeout)
        self.conn, _ = self.listener.accept()
        self.conn.settimeout(timeout)
        self.reader = wire.SocketReader(self.conn)

    def expect_connect(self) -> None:
        first, _ = self.reader.packet()
        assert first >> 4 == 1, first

    def connack(self) -> None:
        self.conn.sendall(wire.connack())

    def publishes(self, count: int, ack: bool = False) -> list[tuple[int, bool]]:
        """The next ``count`` PUBLISHes on ``TOPIC``: (seq, dup); other packets are skipped."""
        got = []
        while len(got) < count:
            first, body = self.reader.packet()
            if first >> 4 != 3:
                continue
            p = wire.parse_publish(first, body)
            if ack:
                self.conn.sendall(wire.puback(p.mid))
            if p.topic == TOPIC:
                got.append((messages.decode(p.payload)["seq"], p.dup))
        return got

    def drop(self) -> None:
        self.conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        self.conn.close()

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
        self.listener.close()


def payload(seq: int) -> bytes:
    return messages.encode({"sensor": "s"}, seq)


async def test_publish_while_reconnecting_never_overtakes_unacked(tmp_path):
    broker = ScriptedBroker()
    acks: list[tuple[int, int]] = []
    states: list[bool] = []
    cfg = BrokerSection(port=broker.port, keepalive_s=30, reconnect_min_s=0.05, reconnect_max_s=0.1)
    link = MqttLink(cfg, "order-gw", "city/order-gw/status", birth=lambda: b"online", will=b"offline",
                    on_ack=lambda t, rc: acks.append((t, rc)), on_state=states.append)
    run = asyncio.to_thread
    link.start()
    try:
        await run(broker.accept)
        await run(broker.expect_connect)
        await run(broker.connack)
        tokens = [link.publish(TOPIC, payload(s)) for s in range(1, 6)]
        assert [s for s, _ in await run(broker.publishes, 5)] == [1, 2, 3, 4, 5]  # never acknowledged
        await run(broker.drop)  # the link drops with 1..5 un-acknowledged
        await run(broker.accept)
        await run(broker.expect_connect)
        # reconnecting: CONNECT sent, no CONNACK yet; newer messages are handed over now
        tokens += [link.publish(TOPIC, payload(s)) for s in range(6, 9)]
        await asyncio.sleep(0.3)
        await run(broker.connack)
        second = await run(broker.publishes, 8, True)
        assert [s for s, _ in second] == [1, 2, 3, 4, 5, 6, 7, 8], second
        deadline = time.monotonic() + 5
        while len(acks) < 8 and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        assert sorted(t for t, _ in acks) == sorted(tokens) and all(rc == 0 for _, rc in acks)
        assert link.pending_mids() == set()
        # and from another thread while connected, many at once: still in order on the wire
        more = list(range(9, 509))
        await run(lambda: [link.publish(TOPIC, payload(s)) for s in more])
        assert [s for s, _ in await run(broker.publishes, len(more), True)] == more
    finally:
        await link.stop()
        broker.close()


async def test_paho_forgetting_its_messages_changes_nothing(tmp_path):
    """Even if paho dropped its copies, the link resends its own, oldest first, before anything new."""
    broker = ScriptedBroker()
    acks: list[tuple[int, int]] = []
    cfg = BrokerSection(port=broker.port, keepalive_s=30, reconnect_min_s=0.05, reconnect_max_s=0.1)
    link = MqttLink(cfg, "order-gw2", "city/order-gw/status", birth=lambda: b"online", will=b"offline",
                    on_ack=lambda t, rc: acks.append((t, rc)), on_state=lambda up: None)
    run = asyncio.to_thread
    link.start()
    try:
        await run(broker.accept)
        await run(broker.expect_connect)
        await run(broker.connack)
        for s in range(1, 4):
            link.publish(TOPIC, payload(s))
        await run(broker.publishes, 3)
        await run(broker.drop)
        await run(broker.accept)
        await run(broker.expect_connect)
        link.client.drop_out_messages()  # paho forgets (another client object would)
        link.publish(TOPIC, payload(4))
        await run(broker.connack)
        assert [s for s, _ in await run(broker.publishes, 4, True)] == [1, 2, 3, 4]
    finally:
        await link.stop()
        broker.close()


class StubLink:
    """Stands in for MqttLink: records bursts, acknowledges on demand, can 'lose' what it holds."""

    def __init__(self) -> None:
        self.connected = True
        self.sent: list[tuple[int, int]] = []  # (token, seq)
        self.held: set[int] = set()
        self._next = 0

    def publish_many(self, items):
        tokens = []
        for _topic, payload in items:
            self._next += 1
            tokens.append(self._next)
            self.sent.append((self._next, messages.decode(payload)["seq"]))
            self.held.add(self._next)
        return tokens

    def pending_mids(self):
        return set(self.held)


async def test_forwarder_resends_from_queue_what_the_link_lost(tmp_path):
    from edge_gateway.forwarder import Forwarder
    from edge_gateway.queue import DurableQueue

    queue = DurableQueue(tmp_path / "q.db", messages.encode)
    await queue.open()
    link = StubLink()
    fw = Forwarder(queue, link, window=10, ack_batch_s=0.01)  # type: ignore[arg-type]
    fw.start()
    try:
        await queue.append([messages.Message("agg", TOPIC, {"i": i}) for i in range(6)])
        fw.notify()
        for _ in range(100):
            if len(link.sent) == 6:
                break
            await asyncio.sleep(0.01)
        assert [s for _, s in link.sent] == [1, 2, 3, 4, 5, 6]
        fw.on_ack(link.sent[0][0])
        link.held -= {t for t, s in link.sent if s >= 4}  # the link lost 4..6
        fw.on_link(True)
        for _ in range(100):
            if len(link.sent) == 9:
                break
            await asyncio.sleep(0.01)
        assert [s for _, s in link.sent[6:]] == [4, 5, 6] and fw.stats.rewinds == 1
        for token, _ in link.sent[1:3] + link.sent[6:]:
            fw.on_ack(token)
        for _ in range(100):
            if queue.depth == 0:
                break
            await asyncio.sleep(0.01)
        assert queue.depth == 0 and fw.inflight == 0
    finally:
        await fw.stop()
        await queue.close()
