"""The forwarder against brokers that limit or refuse: Receive Maximum, 0x97 quota, ACL 0x87 (review 16 #3, #4, #10).

Receive Maximum and 0x97 need the scripted server (strict_broker.py): Mosquitto announces a
Receive Maximum but does not enforce it, and never answers 0x97. The ACL refusal is real Mosquitto.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time

from edge_gateway import messages
from edge_gateway.config import BrokerSection
from edge_gateway.forwarder import LINK_RESERVE, Forwarder, refusal_kind
from edge_gateway.queue import DurableQueue
from edge_gateway.uplink import MqttLink
from strict_broker import StrictBroker
from support import Broker, Subscriber
from uplink_support import until

TOPICS = messages.Topics("city", "fw-gw")
FW = "edge_gateway.forwarder"


class RmLink(MqttLink):
    """MqttLink, recording the CONNACK's Receive Maximum itself until uplink.py does (``receive_maximum``)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._rm_native = hasattr(self, "receive_maximum")

    def _cb_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if not self._rm_native and not reason_code.is_failure:
            self.receive_maximum = getattr(properties, "ReceiveMaximum", 65535)
        super()._cb_connect(client, userdata, flags, reason_code, properties)


async def _setup(tmp_path, port: int, **fw_kwargs):
    queue = DurableQueue(tmp_path / "q.db", messages.encode)
    await queue.open()
    fw = Forwarder(queue, None, ack_batch_s=0.02, **fw_kwargs)  # type: ignore[arg-type]
    link = RmLink(BrokerSection(port=port, protocol="5", keepalive_s=5, reconnect_min_s=0.05, reconnect_max_s=0.3),
                  "fw-refusals", TOPICS.status, birth=lambda: b"online", will=b"offline", on_ack=fw.on_ack,
                  on_state=fw.on_link)
    fw.link = link
    return queue, fw, link


async def _teardown(queue, fw, link) -> None:
    await fw.stop()
    await link.stop()
    await queue.close()


def _lines(caplog, pattern: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == FW and re.search(pattern, r.getMessage())]


def test_refusal_kinds():
    assert [refusal_kind(c) for c in (0x80, 0x83, 0x91, 0x97)] == ["transient"] * 4
    assert [refusal_kind(c) for c in (0x90, 0x95, 0x99)] == ["drop"] * 3
    assert [refusal_kind(c) for c in (0x87, 0x9E)] == ["repeated"] * 2


async def test_outstanding_stays_within_the_brokers_receive_maximum(tmp_path):
    """#3: Receive Maximum 20, window 100, 300 messages ready at once: one connection, all acknowledged,
    first transmissions in seq order. Before: DISCONNECT 0x93 at every connect, nothing acknowledged."""
    broker = StrictBroker(receive_maximum=20, ack_delay=0.03)
    queue, fw, link = await _setup(tmp_path, broker.port, window=100)
    try:
        await queue.append([messages.Message("agg", TOPICS.agg(f"s{i % 30}"), {"i": i}) for i in range(300)])
        fw.start()
        link.start()
        await until(lambda: fw.stats.acked == 300 or broker.disconnects_093 > 2, 20, "300 acknowledged")
        assert broker.disconnects_093 == 0 and broker.connections == 1 and link.connects == 1
        await until(lambda: queue.depth == 0, 5, "queue drained")
        assert fw.limit == 20 - LINK_RESERVE
        assert broker.max_outstanding <= 20  # the birth included
        assert broker.seqs("pub") == list(range(1, 301))  # each sent once, in order
        assert broker.seqs("ack") == list(range(1, 301))
        assert fw.stats.acked == 300 and fw.stats.rejected == 0
    finally:
        await _teardown(queue, fw, link)
        broker.close()


async def test_quota_refusals_back_off_resend_only_the_refused_and_drop_nothing(tmp_path, caplog):
    """#4: a 400-message backlog against a broker taking 100 msg/s (burst 20) and refusing the rest with
    0x97. Before: the fixed-pause resend of every refused message wore out the 20 refusals of most of
    them (dropped). Now: all acknowledged, none dropped, one log line and one summary."""
    caplog.set_level(logging.INFO, logger=FW)
    broker = StrictBroker(quota_per_s=100, quota_burst=20)
    queue, fw, link = await _setup(tmp_path, broker.port, window=500, retry_s=0.1, retry_max_s=1.0, hold_s=0.1)
    try:
        await queue.append([messages.Message("agg", TOPICS.agg(f"s{i % 4}"), {"i": i}) for i in range(400)])
        fw.start()
        link.start()
        await until(lambda: fw.stats.acked == 400 or queue.stats_now().dropped_total["count"] > 0, 30,
                    "400 acknowledged")
        assert queue.stats_now().dropped_total["count"] == 0
        await until(lambda: queue.depth == 0, 5, "queue drained")
        refused = broker.count("refused")
        assert fw.stats.refused_dropped == 0
        assert sorted(broker.seqs("ack")) == list(range(1, 401))  # each accepted exactly once
        assert fw.stats.rejected == refused == fw.stats.rejected_by_reason[0x97] > 0
        assert len(broker.seqs("pub")) == 400 + refused  # nothing sent again but what was refused
        assert refused < 2 * 400  # the first burst (380), then a few per backoff; before: 4,920
        assert fw.stats.backoffs >= 1
        assert len(_lines(caplog, r"0x97 quota exceeded: resending only what it refuses")) == 1
        assert _lines(caplog, "dropped|refused seq .* resending with backoff") == []
    finally:
        await _teardown(queue, fw, link)
        broker.close()
    summaries = _lines(caplog, r"^broker refusals in the last")
    assert len(summaries) == 1 and f"{refused} x 0x97 quota exceeded" in summaries[0]


async def test_acl_refusals_log_once_and_drop_in_one_call(tmp_path, caplog):
    """#10: Mosquitto's ACL denies one of two sensors (PUBACK 0x87). One line at the first refusal,
    one summary line with the seqs; each seq's first refusal and drop at debug level; the drops in
    one queue call (one `dropped` event). Before: a warning per refusal (20 per seq), a drop call (and
    event) per seq; then (bounds #5) a warning and an error per seq."""
    caplog.set_level(logging.DEBUG, logger=FW)
    acl = tmp_path / "acl"
    acl.write_text(f"topic read #\ntopic write {TOPICS.status}\ntopic write {TOPICS.agg('ok')}\n")
    broker = Broker(tmp_path / "broker", extra=f"acl_file {acl}").start()
    sub = Subscriber(broker.port, "city/fw-gw/#", client_id="fw-acl-sub").start()
    queue, fw, link = await _setup(tmp_path, broker.port, window=100, retry_s=0.05, retry_max_s=0.4, report_s=5.0)
    drops = []
    real_drop = queue.drop

    async def drop(seqs, reason):
        drops.append((list(seqs), reason))
        await real_drop(seqs, reason)

    queue.drop = drop
    try:
        seqs = await queue.append([messages.Message("agg", TOPICS.agg("denied" if i % 5 == 4 else "ok"), {"i": i})
                                   for i in range(50)])
        denied = [s for i, s in enumerate(seqs) if i % 5 == 4]
        fw.start()
        link.start()
        await until(lambda: queue.depth == 0, 20, "accepted, and denied dropped")
        await until(lambda: len(sub.of("agg")) >= 40, 10, "subscriber has the accepted")
        await asyncio.sleep(0.3)
        assert drops == [(denied, "rejected")]
        dropped = queue.stats_now().dropped_total
        assert (dropped["count"], dropped["reasons"]) == (10, {"rejected": 10})
        assert fw.stats.acked == 40 and fw.stats.refused_dropped == 10
        assert fw.stats.rejected == 10 * fw.reject_limit and fw.stats.rejected_by_reason == {0x87: 60}
        got = sub.of("agg")
        assert len(got) == 40 and sorted(m["seq"] for m in got) == [s for s in seqs if s not in denied]
        first = _lines(caplog, r"^broker refused seq \d+ with 0x87 not authorized: resending with backoff")
        gone = _lines(caplog, r"^broker refused seq \d+ 6 time\(s\), last with 0x87 not authorized: dropped")
        summaries = _lines(caplog, r"^broker refusals in the last")
        assert [int(x.split()[3]) for x in first] == denied and sorted(int(x.split()[3]) for x in gone) == denied
        assert first[0].endswith("; the others with this code are counted in a summary every 5 s (each seq at "
                                 "debug level)")
        assert len(summaries) == 1 and summaries[0].split(": ", 1)[1] == (
            f"60 x 0x87 not authorized (seq {denied[0]} to {denied[-1]}, 10 refused for the first time); "
            f"0 refused message(s) not yet accepted; dropped now: 10 rejected (seq {denied[0]} to {denied[-1]})")
        noisy = [r.getMessage() for r in caplog.records if r.name == FW and r.levelno >= logging.WARNING]
        assert noisy == [first[0], summaries[0]]
    finally:
        await _teardown(queue, fw, link)
        sub.stop()
        broker.close()


class StubLink:
    """Stands in for MqttLink: records what it is handed, acknowledges only when the test says so."""

    def __init__(self, receive_maximum: int | None = None) -> None:
        self.connected = True
        self.receive_maximum = receive_maximum
        self.sent: list[tuple[float, int, int]] = []  # (time, token, seq)
        self.held: set[int] = set()

    def publish_many(self, items):
        tokens = []
        for _topic, payload in items:
            token = len(self.sent) + 1
            self.sent.append((time.monotonic(), token, messages.decode(payload)["seq"]))
            self.held.add(token)
            tokens.append(token)
        return tokens

    def pending_mids(self):
        return set(self.held)

    def outstanding(self) -> list[tuple[int, int]]:
        return [(t, s) for _, t, s in self.sent if t in self.held]


async def _stub(tmp_path, link: StubLink, n: int, **kwargs):
    queue = DurableQueue(tmp_path / "q.db", messages.encode)
    await queue.open()
    fw = Forwarder(queue, link, ack_batch_s=0.01, **kwargs)  # type: ignore[arg-type]
    await queue.append([messages.Message("agg", TOPICS.agg("s"), {"i": i}) for i in range(n)])
    fw.start()
    fw.notify()
    return queue, fw


async def test_receive_maximum_caps_what_is_outstanding_and_acks_free_slots(tmp_path):
    link = StubLink(receive_maximum=5)
    queue, fw = await _stub(tmp_path, link, 20, window=100)
    try:
        await until(lambda: len(link.sent) >= 3, 2, "first 3")
        await asyncio.sleep(0.1)
        assert [s for _, _, s in link.sent] == [1, 2, 3]  # 5 less the link's own two
        for token, _ in link.outstanding()[:2]:
            link.held.discard(token)
            fw.on_ack(token)
        await until(lambda: len(link.sent) == 5, 2, "two more")
        link.receive_maximum = None  # MQTT 3.1.1, or before the first CONNACK: the window alone
        fw.notify()
        await until(lambda: len(link.sent) == 20, 2, "the rest")
        assert [s for _, _, s in link.sent] == list(range(1, 21))
    finally:
        await fw.stop()
        await queue.close()


async def test_transient_refusals_back_off_exponentially_and_never_drop(tmp_path):
    """0x83 says nothing about the message: resent alone, each pause about twice the last up to
    retry_max_s, never dropped however often refused; the others go on."""
    link = StubLink()
    queue, fw = await _stub(tmp_path, link, 3, window=10, retry_s=0.02, retry_max_s=0.16)
    try:
        await until(lambda: len(link.sent) == 3, 2, "first burst")
        token = link.sent[0][1]
        for _, other, _ in link.sent[1:]:
            link.held.discard(other)
            fw.on_ack(other)
        for n in range(30):
            link.held.discard(token)
            fw.on_ack(token, 0x83)
            await until(lambda: len(link.sent) == 4 + n, 3, f"resend {n + 1}")
            token = link.sent[-1][1]
        assert [s for _, _, s in link.sent] == [1, 2, 3] + [1] * 30
        times = [t for t, _, s in link.sent if s == 1]
        pauses = [b - a for a, b in zip(times, times[1:])]
        for k, pause in enumerate(pauses):  # backoff_delay: min(max, base * 2**k) scaled by 0.5..1
            assert pause >= 0.5 * min(0.16, 0.02 * 2 ** k) - 0.005, (k, pause)
        assert max(pauses) < 0.5
        assert fw.stats.rejected == 30 and fw.stats.refused_dropped == 0 and queue.depth == 1
        fw.on_ack(link.sent[-1][1])
        await until(lambda: queue.depth == 0, 2, "accepted at last")
    finally:
        await fw.stop()
        await queue.close()
