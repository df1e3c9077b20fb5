"""Moves committed messages from the durable queue to the broker, in order, with a bounded window.

At most ``window`` messages are outstanding (published, not yet acknowledged).
When the link drops, the outstanding ones stay with paho, which resends them
on reconnect; nothing new is published until the link is back, so paho's
memory holds a bounded amount. Acknowledged messages are deleted from the queue
in batched transactions. After a restart the cursor starts at zero, so what was
sent but not acknowledged before a crash is sent again (a duplicate with the
same ``seq``, never a gap).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

from .queue import DurableQueue
from .uplink import MqttLink

log = logging.getLogger(__name__)


@dataclass
class ForwarderStats:
    published: int = 0
    acked: int = 0
    acked_by_kind: dict[str, int] = field(default_factory=dict)
    last_acked_seq: int = 0


class Forwarder:
    def __init__(self, queue: DurableQueue, link: MqttLink, window: int = 200, ack_batch_s: float = 0.05) -> None:
        self.queue = queue
        self.link = link
        self.window = window
        self.ack_batch_s = ack_batch_s
        self.stats = ForwarderStats()
        self._cursor = 0
        self._inflight: dict[int, tuple[int, str]] = {}
        self._acked: list[int] = []
        self._wake = asyncio.Event()
        self._acks_pending = asyncio.Event()
        self._tasks: list[asyncio.Task] = []

    @property
    def inflight(self) -> int:
        return len(self._inflight)

    def notify(self) -> None:
        """New messages were committed, or the link came up."""
        self._wake.set()

    def on_ack(self, mid: int) -> None:
        entry = self._inflight.pop(mid, None)
        if entry is None:
            return
        seq, kind = entry
        self._acked.append(seq)
        self.stats.acked += 1
        self.stats.acked_by_kind[kind] = self.stats.acked_by_kind.get(kind, 0) + 1
        self.stats.last_acked_seq = max(self.stats.last_acked_seq, seq)
        self._acks_pending.set()
        self._wake.set()

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._send_loop(), name="forwarder:send"),
                       asyncio.create_task(self._ack_loop(), name="forwarder:ack")]

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
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
            await self._wake.wait()
            self._wake.clear()
            while self.link.connected:
                room = self.window - len(self._inflight)
                if room <= 0:
                    break
                rows = await self.queue.peek(self._cursor, room)
                if not rows:
                    break
                for row in rows:
                    mid = self.link.publish(row.topic, row.payload)
                    self._inflight[mid] = (row.seq, row.kind)
                    self._cursor = row.seq
                    self.stats.published += 1

    async def _ack_loop(self) -> None:
        while True:
            await self._acks_pending.wait()
            await asyncio.sleep(self.ack_batch_s)
            self._acks_pending.clear()
            await self._flush_acks()

    async def _flush_acks(self) -> None:
        acked, self._acked = self._acked, []
        if acked:
            await self.queue.ack(acked)
