"""Moves committed messages from the durable queue to the broker, in order, with a bounded window.

At most ``window`` messages are outstanding (handed to the link, not yet
acknowledged); the link (uplink.py) publishes them in order from its own network
thread and keeps every un-acknowledged one, publishing them again, oldest first,
on each reconnect before anything new, so first transmissions never go out of
order. The forwarder does not rely on that alone: on every link-up it asks the
link which of its outstanding tokens it still holds, and rewinds the cursor to
the oldest one the link lost (none, unless it is a bug), so no message stays
un-acknowledged in memory forever. A stall (connected, nothing acknowledged for
``ack_timeout_s``) forces a reconnect, which resends.

Acknowledged messages are collected for ``ack_batch_s`` and handed to the queue (no write), which
deletes them with its next write transaction (an append, usually: no commit and fsync of their
own) or after ``DurableQueue.ack_defer_s`` at the latest (docs/uplink.md, "Flash writes"). After
a restart the cursor starts at zero, so what was sent but not acknowledged
before a crash is sent again (a duplicate with the same ``seq``, never a gap).
An MQTT 5 PUBACK with a failure reason code is not an acknowledgement: the
message is resent after a pause, or, for reasons a resend cannot fix, dropped
and counted (reason ``rejected``).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

from . import aio
from .queue import DurableQueue
from .uplink import PERMANENT_REJECTS, MqttLink

log = logging.getLogger(__name__)


@dataclass
class ForwarderStats:
    published: int = 0
    acked: int = 0
    acked_by_kind: dict[str, int] = field(default_factory=dict)
    last_acked_seq: int = 0
    rejected: int = 0
    rewinds: int = 0
    stalls: int = 0


class Forwarder:
    def __init__(self, queue: DurableQueue, link: MqttLink, window: int = 200, ack_batch_s: float = 0.05,
                 ack_timeout_s: float = 60.0, retry_s: float = 2.0) -> None:
        self.queue = queue
        self.link = link
        self.window = window
        self.ack_batch_s = ack_batch_s
        self.ack_timeout_s = ack_timeout_s
        self.retry_s = retry_s
        self.stats = ForwarderStats()
        self._cursor = 0
        self._sent_max = 0  # highest seq handed to paho by this process
        self._inflight: dict[int, tuple[int, str, float]] = {}  # link token -> (seq, kind, sent at)
        self._inflight_seqs: set[int] = set()
        self._acked: list[int] = []
        self._acked_set: set[int] = set()
        self._rejects: dict[int, int] = {}
        self._hold_until = 0.0
        self._wake = asyncio.Event()
        self._acks_pending = asyncio.Event()
        self._tasks: list[asyncio.Task] = []

    @property
    def inflight(self) -> int:
        return len(self._inflight)

    @property
    def protect(self) -> int:
        """Highest seq that may be at the broker or in paho: the queue must not roll it up or drop it."""
        return max(self._cursor, self._sent_max)

    def notify(self) -> None:
        """New messages were committed, or the link came up."""
        self._wake.set()

    def on_link(self, up: bool) -> None:
        if up:
            self._reconcile()
        self._wake.set()

    def _reconcile(self) -> None:
        """After a reconnect: whatever the link no longer holds is sent again from the queue."""
        held = self.link.pending_mids()
        lost = [mid for mid in self._inflight if held is None or mid not in held]
        if lost:
            self._forget(lost)
            log.warning("the link no longer holds %d un-acknowledged messages: resending from the queue", len(lost))

    def _forget(self, mids: list[int]) -> None:
        seqs = [self._inflight.pop(mid)[0] for mid in mids]
        self._inflight_seqs.difference_update(seqs)
        self._cursor = min(self._cursor, min(seqs) - 1)
        self.stats.rewinds += 1

    def on_ack(self, mid: int, reason: int = 0) -> None:
        entry = self._inflight.get(mid)
        if entry is None:
            return
        seq, kind, _ = entry
        if reason:
            self._reject(mid, seq, reason)
            return
        del self._inflight[mid]
        self._inflight_seqs.discard(seq)
        self._rejects.pop(seq, None)
        self._acked.append(seq)
        self._acked_set.add(seq)
        self.stats.acked += 1
        self.stats.acked_by_kind[kind] = self.stats.acked_by_kind.get(kind, 0) + 1
        self.stats.last_acked_seq = max(self.stats.last_acked_seq, seq)
        self._acks_pending.set()
        self._wake.set()

    def _reject(self, mid: int, seq: int, reason: int) -> None:
        self.stats.rejected += 1
        n = self._rejects[seq] = self._rejects.get(seq, 0) + 1
        self._forget([mid])
        if reason in PERMANENT_REJECTS or n >= 20:
            log.error("broker rejects seq %d permanently (reason 0x%02x): dropped", seq, reason)
            self._rejects.pop(seq, None)
            self._acked_set.add(seq)  # not resent; the drop below deletes and counts it
            asyncio.get_running_loop().create_task(self._drop_rejected(seq))
        else:
            log.warning("broker refused seq %d (reason 0x%02x): resending in %.1f s", seq, reason, self.retry_s)
            self._hold_until = asyncio.get_running_loop().time() + self.retry_s
        self._wake.set()

    async def _drop_rejected(self, seq: int) -> None:
        await self.queue.drop([seq], "rejected")
        self._acked_set.discard(seq)

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._send_loop(), name="forwarder:send"),
                       asyncio.create_task(self._ack_loop(), name="forwarder:ack"),
                       asyncio.create_task(self._watch_loop(), name="forwarder:watch")]

    async def stop(self) -> None:
        await aio.cancel_and_wait(self._tasks)
        await self._flush_acks()

    async def drain(self, timeout: float) -> bool:
        """Wait until the queue is empty and nothing is outstanding (shutdown); False on timeout."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            if self.queue.depth - len(self._acked) <= 0 and not self._inflight:
                return True
            await asyncio.sleep(0.02)
        return False

    async def _send_loop(self) -> None:
        while True:
            try:
                await self._send_loop_body()
            except asyncio.CancelledError:
                raise
            except Exception:  # a queue or link error must not stop forwarding for good
                log.exception("forwarder send loop failed; restarting it")
                await asyncio.sleep(1.0)
                self._wake.set()

    async def _send_loop_body(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            self._wake.clear()
            hold = self._hold_until - loop.time()
            if hold > 0:
                await asyncio.sleep(hold)
            while self.link.connected:
                room = self.window - len(self._inflight)
                if room <= 0:
                    break
                rows = await self.queue.peek(self._cursor, room)
                if not rows or self._hold_until > loop.time():
                    break
                now = loop.time()
                items, metas = [], []
                inflight_seqs, acked_set = self._inflight_seqs, self._acked_set
                for row in rows:
                    if row.seq in inflight_seqs or row.seq in acked_set:
                        continue  # after a rewind: still outstanding, or acknowledged and being deleted
                    items.append((row.topic, row.payload))
                    metas.append((row.seq, row.kind))
                self._cursor = max(self._cursor, rows[-1].seq)
                if not items:
                    continue
                try:
                    tokens = self.link.publish_many(items)
                except Exception as exc:  # never let the send loop die: retry these rows shortly
                    log.warning("publish of seq %d.. failed: %s; retrying", metas[0][0], exc)
                    self._cursor = metas[0][0] - 1
                    self._hold_until = loop.time() + 0.2
                    self._wake.set()
                    break
                inflight = self._inflight
                for token, (seq, kind) in zip(tokens, metas):
                    inflight[token] = (seq, kind, now)
                    inflight_seqs.add(seq)
                self._sent_max = max(self._sent_max, metas[-1][0])
                self.stats.published += len(items)

    async def _ack_loop(self) -> None:
        while True:
            try:
                await self._ack_loop_body()
            except asyncio.CancelledError:
                raise
            except Exception:  # a queue error must not stop deleting for good (a restart resends)
                log.exception("forwarder ack loop failed; restarting it")
                await asyncio.sleep(1.0)

    async def _ack_loop_body(self) -> None:
        while True:
            if self.queue.deferred:  # nothing written for a while: delete them on their own, at the latest
                try:
                    await aio.wait_for(self._acks_pending.wait(), self.queue.ack_defer_s)
                except asyncio.TimeoutError:
                    await self.queue.flush()
                    continue
            else:
                await self._acks_pending.wait()
            await asyncio.sleep(self.ack_batch_s)
            self._acks_pending.clear()
            await self._flush_acks(defer=True)

    async def _watch_loop(self) -> None:
        """Connected, messages outstanding, and no acknowledgement for ack_timeout_s: reconnect."""
        loop = asyncio.get_running_loop()
        last_acked = -1
        since = loop.time()
        while True:
            await asyncio.sleep(min(1.0, self.ack_timeout_s / 4))
            now = loop.time()
            if self.stats.acked != last_acked or not self._inflight or not self.link.connected:
                last_acked, since = self.stats.acked, now
            elif now - since > self.ack_timeout_s:
                self.stats.stalls += 1
                since = now
                self.link.kick()

    async def _flush_acks(self, defer: bool = False) -> None:
        acked, self._acked = self._acked, []
        if acked:
            try:
                await self.queue.ack(acked, defer=defer)
            finally:
                self._acked_set.difference_update(acked)
        elif not defer:
            await self.queue.flush()
