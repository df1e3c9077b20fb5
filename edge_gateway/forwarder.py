"""Moves committed messages from the durable queue to the broker, in order, with a bounded window.

At most ``limit`` messages are outstanding (handed to the link, not yet acknowledged): the
configured window (``broker.max_inflight``), within the broker's MQTT 5 Receive Maximum less what the
link's own publishes need (a broker that enforces it disconnects a client that exceeds it), and
within what the broker lately accepted when it answers 0x97 quota exceeded (below). The link (uplink.py)
publishes them in order from its own network thread and keeps every un-acknowledged one,
publishing them again, oldest first, on each reconnect before anything new, so first transmissions
never go out of order. The forwarder does not rely on that alone: on every link-up it asks the
link which of its outstanding tokens it still holds, and rewinds the cursor to the oldest one the
link lost (none, unless it is a bug), so no message stays un-acknowledged in memory forever. A
stall (connected, nothing acknowledged or refused for ``ack_timeout_s``) forces a reconnect, which
resends.

Acknowledged messages are collected for ``ack_batch_s`` and handed to the queue (no write), which
deletes them with its next write transaction (an append, usually: no commit and fsync of their
own) or after ``DurableQueue.ack_defer_s`` at the latest (docs/uplink.md, "Flash writes"). After
a restart the cursor starts at zero, so what was sent but not acknowledged
before a crash is sent again (a duplicate with the same ``seq``, never a gap).

An MQTT 5 PUBACK with a failure reason code is not an acknowledgement. Only the refused message is
sent again, after a backoff of its own (exponential, bounded, jittered). How it ends depends on the
reason (:func:`refusal_kind`; docs/uplink.md, "The window, and what the broker refuses"): dropped
at once, dropped after ``reject_limit`` refusals, or, for a refusal that says "not now" (0x97 quota
exceeded, and the codes that do not say what is wrong), never dropped for it; while such messages
wait, first transmissions wait too. 0x97 also holds every send for a backoff that grows while
nothing is accepted, and lowers the window to what the broker accepted. One summary line per
``report_s`` counts the refusals; the messages to drop are dropped then, in one call per reason, so
that the daemon reports them in one ``dropped`` event. The journal gets one line per episode of a
reason code (until ``report_s`` passes without that code) and the summaries, whatever the message
rate; each seq's refusal and drop are logged at debug level.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

from . import aio
from .backoff import backoff_delay
from .mqtt_client import PERMANENT_REJECTS, puback_reason_name
from .queue import DurableQueue, Row
from .uplink import MqttLink

log = logging.getLogger(__name__)

# PUBACK reason codes that say "not now" rather than "not this message" (0x80 unspecified and 0x83
# implementation specific say nothing about the message; 0x91 packet identifier in use is fixed by the
# resend's new identifier; 0x97 quota exceeded is the broker's rate limit): never a reason to drop.
TRANSIENT_REJECTS = frozenset({0x80, 0x83, 0x91, 0x97})
QUOTA_EXCEEDED = 0x97
# Any other failure (0x87 not authorized, mostly) is about this client on this topic: an ACL fixed in the
# meantime lets the message through, but resending it for ever would not. Dropped after this many
# refusals: with the backoff from retry_s = 2 s, about 30 to 60 s after the first.
REJECT_LIMIT = 6
# The broker's Receive Maximum also counts the link's own QoS 1 publishes (the birth or a status, and a
# command reply), which the forwarder does not see.
LINK_RESERVE = 2


def refusal_kind(reason: int) -> str:
    """``"drop"`` (a resend cannot fix it), ``"transient"`` (the broker's state, not the message; never
    dropped for it) or ``"repeated"`` (this client on this topic: dropped after REJECT_LIMIT refusals)."""
    if reason in PERMANENT_REJECTS:
        return "drop"
    return "transient" if reason in TRANSIENT_REJECTS else "repeated"


def _reason(reason: int) -> str:
    """How the log names a refusal: ``0x97 quota exceeded`` (paho's name, in lower case), ``0x100 refused``."""
    return f"0x{reason:02x} {puback_reason_name(reason).lower() or 'refused'}"


@dataclass
class ForwarderStats:
    published: int = 0
    acked: int = 0
    acked_by_kind: dict[str, int] = field(default_factory=dict)
    last_acked_seq: int = 0
    rejected: int = 0  # refusals (a message refused three times counts three)
    rejected_by_reason: dict[int, int] = field(default_factory=dict)
    refused_dropped: int = 0  # messages dropped after refusals (reason `rejected`, or `max_age` while waiting)
    backoffs: int = 0  # holds of every send after 0x97 quota exceeded
    rewinds: int = 0
    stalls: int = 0


@dataclass(slots=True)
class _Tally:
    """Refusals with one reason code since the last summary."""

    count: int = 0
    new: int = 0  # messages refused for the first time
    first: int = 0  # lowest and highest seq refused
    last: int = 0


@dataclass(slots=True)
class _Refused:
    """A refused message until it is acknowledged or dropped."""

    count: int = 0  # refusals, any reason
    repeated: int = 0  # refusals counting toward REJECT_LIMIT
    due: float = 0.0  # loop time of its resend
    waiting: bool = True  # False once due: the next send round sends it
    transient: bool = False  # the last refusal was a "not now" (TRANSIENT_REJECTS)


class Forwarder:
    def __init__(self, queue: DurableQueue, link: MqttLink, window: int = 200, ack_batch_s: float = 0.05,
                 ack_timeout_s: float = 60.0, retry_s: float = 2.0, retry_max_s: float = 60.0,
                 hold_s: float = 1.0, reject_limit: int = REJECT_LIMIT, report_s: float = 60.0) -> None:
        self.queue = queue
        self.link = link
        self.window = window
        self.ack_batch_s = ack_batch_s
        self.ack_timeout_s = ack_timeout_s
        self.retry_s = retry_s
        self.retry_max_s = retry_max_s
        self.hold_s = hold_s
        self.reject_limit = reject_limit
        self.report_s = report_s
        self.stats = ForwarderStats()
        self._cursor = 0
        self._sent_max = 0  # highest seq handed to paho by this process
        self._inflight: dict[int, tuple[int, str, int]] = {}  # link token -> (seq, kind, epoch sent in)
        self._inflight_seqs: set[int] = set()
        self._acked: list[int] = []
        self._acked_set: set[int] = set()
        self._refused: dict[int, _Refused] = {}
        self._held_back = 0  # refused "not now" and not yet due: they hold back first transmissions
        self._dropping: dict[int, str] = {}  # seq -> drop reason, dropped at the next report
        self._cwnd = window  # lowered after 0x97, raised by acknowledgements
        self._epoch = 0  # bumped at each lowering: one lowering per window sent
        self._busy = 0  # holds in a row without an acknowledgement (the backoff's exponent)
        self._accepted = 0  # acknowledgements since the window was last lowered
        self._grow = 0
        self._cut_to = 0  # the window's next value, applied when the hold ends (0: none pending)
        self._hold_until = 0.0
        self._period: dict[int, _Tally] = {}  # refusals by reason since the last summary
        self._period_start: float | None = None  # loop time of the first refusal or drop since the last summary
        self._last_refused: dict[int, float] = {}  # reason -> loop time of its last refusal (the episode)
        self._wake = asyncio.Event()
        self._acks_pending = asyncio.Event()
        self._report_due = asyncio.Event()
        self._tasks: list[asyncio.Task] = []

    @property
    def inflight(self) -> int:
        return len(self._inflight)

    @property
    def limit(self) -> int:
        """Messages that may be outstanding now (see the module docstring)."""
        lim = min(self.window, self._cwnd)
        rm = getattr(self.link, "receive_maximum", None)
        if rm:
            lim = min(lim, max(1, rm - LINK_RESERVE))
        return lim

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
        entry = self._inflight.pop(mid, None)
        if entry is None:
            return
        seq, kind, epoch = entry
        self._inflight_seqs.discard(seq)
        if reason:
            self._refuse(seq, reason, epoch)
            self._wake.set()
            return
        self._refused.pop(seq, None)
        self._acked.append(seq)
        self._acked_set.add(seq)
        self.stats.acked += 1
        self.stats.acked_by_kind[kind] = self.stats.acked_by_kind.get(kind, 0) + 1
        self.stats.last_acked_seq = max(self.stats.last_acked_seq, seq)
        self._busy = 0
        self._accepted += 1
        if self._cwnd < self.window:  # back up by one per window acknowledged
            self._grow += 1
            if self._grow >= self._cwnd:
                self._cwnd, self._grow = self._cwnd + 1, 0
        self._acks_pending.set()
        self._wake.set()

    def _refuse(self, seq: int, reason: int, epoch: int) -> None:
        """A PUBACK with a failure code: schedule the resend of this message only, or its drop."""
        st = self.stats
        st.rejected += 1
        st.rejected_by_reason[reason] = st.rejected_by_reason.get(reason, 0) + 1
        r = self._refused.get(seq)
        if r is None:
            r = self._refused[seq] = _Refused()
        r.count += 1
        episode = self._count_refusal(seq, reason, r.count == 1)
        kind = refusal_kind(reason)
        if kind != "transient":
            r.repeated += 1
            if kind == "drop" or r.repeated >= self.reject_limit:
                self._log_refusal(episode, logging.ERROR, "broker refused seq %d %d time(s), last with %s: dropped "
                                  "with the next summary (reason rejected)", seq, r.count, _reason(reason))
                self._drop(seq, "rejected")
                return
        now = asyncio.get_running_loop().time()
        r.waiting = True
        r.transient = kind == "transient"
        if not r.transient:
            r.due = now + backoff_delay(r.repeated - 1, self.retry_s, self.retry_max_s)
            if episode or r.repeated == 1:
                self._log_refusal(episode, logging.WARNING, "broker refused seq %d with %s: resending with "
                                  "backoff, dropped after %d refusals", seq, _reason(reason), self.reject_limit)
            return
        self._held_back += 1
        if reason == QUOTA_EXCEEDED:  # the client's quota, not the message's: everyone waits, this one too
            if epoch == self._epoch:  # the first such refusal of what went out since the last lowering
                self._slow_down(now)
            r.due = max(self._hold_until, now)
        else:
            r.due = now + backoff_delay(r.count - 1, self.retry_s, self.retry_max_s)
        if episode or r.count == 1:
            self._log_refusal(episode, logging.WARNING, "broker refused seq %d with %s: resending only what it "
                              "refuses, this one in %.1f s", seq, _reason(reason), r.due - now)

    def _log_refusal(self, episode: bool, level: int, msg: str, *args) -> None:
        """The first refusal of an episode at ``level``, telling where the others go; a seq's first at debug."""
        if episode:
            log.log(level, msg + "; the others with this code are counted in a summary every %g s (each seq at "
                    "debug level)", *args, self.report_s)
        else:
            log.debug(msg, *args)

    def _slow_down(self, now: float) -> None:
        """Quota exceeded: hold every send for a backoff that grows while nothing is acknowledged, then
        lower the window (:meth:`_apply_cut`)."""
        self._epoch += 1
        if not self._cut_to:
            self._cut_to = max(1, min(self._cwnd, len(self._inflight) + 1) // 2)
        self._hold_until = max(self._hold_until, now + backoff_delay(self._busy, self.hold_s, self.retry_max_s))
        self._busy += 1
        self.stats.backoffs += 1

    def _apply_cut(self, now: float) -> None:
        """At the end of a hold, every answer to the last burst is in: the window becomes what the broker
        accepted since the last lowering, at most half of what was outstanding at the refusal."""
        if self._cut_to and now >= self._hold_until:
            self._cwnd = max(1, min(self._cut_to, self._accepted))
            self._cut_to = self._accepted = self._grow = 0

    def _count_refusal(self, seq: int, reason: int, new: bool) -> bool:
        """Count it for the summary; True if it opens an episode of its code (none for ``report_s``)."""
        now = asyncio.get_running_loop().time()
        self._open_period(now)
        t = self._period.get(reason)
        if t is None:
            t = self._period[reason] = _Tally(first=seq, last=seq)
        t.count += 1
        t.new += new
        t.first, t.last = min(t.first, seq), max(t.last, seq)
        episode = now - self._last_refused.get(reason, float("-inf")) >= self.report_s
        self._last_refused[reason] = now
        return episode

    def _open_period(self, now: float) -> None:
        if self._period_start is None:
            self._period_start = now
        self._report_due.set()

    def _drop(self, seq: int, reason: str) -> None:
        """Drop at the next report, with the others (one `dropped` event); not sent again meanwhile."""
        r = self._refused.pop(seq, None)
        if r is not None and r.waiting and r.transient:
            self._held_back -= 1
        self._dropping[seq] = reason
        self.stats.refused_dropped += 1
        self._open_period(asyncio.get_running_loop().time())

    def _release_due(self, now: float) -> None:
        """Refused messages whose backoff is over go out in the next send round, oldest first."""
        due = [s for s, r in self._refused.items() if r.waiting and r.due <= now]
        if not due:
            return
        for s in due:
            r = self._refused[s]
            r.waiting = False
            if r.transient:
                self._held_back -= 1
        self._cursor = min(self._cursor, min(due) - 1)

    def _next_due(self) -> float | None:
        dues = [r.due for r in self._refused.values() if r.waiting]
        return min(dues) if dues else None

    def _expired(self, row: Row) -> bool:
        """A refused message older than the queue's ``max_age_s``: the queue would have dropped it had it
        not been handed out (it never drops those), so the forwarder does."""
        max_age = self.queue.limits.max_age_s
        return bool(max_age) and row.created < self.queue.clock() - max_age

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._send_loop(), name="forwarder:send"),
                       asyncio.create_task(self._ack_loop(), name="forwarder:ack"),
                       asyncio.create_task(self._watch_loop(), name="forwarder:watch"),
                       asyncio.create_task(self._report_loop(), name="forwarder:refusals")]

    async def stop(self) -> None:
        await aio.cancel_and_wait(self._tasks)
        await self._flush_acks()
        await self._report_refusals()

    async def drain(self, timeout: float) -> bool:
        """Wait until the queue is empty and nothing is outstanding (shutdown); False on timeout."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            if self.queue.depth - len(self._acked) - len(self._dropping) <= 0 and not self._inflight:
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

    async def _wait(self, loop: asyncio.AbstractEventLoop) -> None:
        """Until woken, or until the next refused message is due."""
        due = self._next_due()
        if due is None:
            await self._wake.wait()
        elif due > loop.time():
            try:
                await aio.wait_for(self._wake.wait(), due - loop.time())
            except asyncio.TimeoutError:
                pass
        self._wake.clear()

    async def _send_loop_body(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wait(loop)
            hold = self._hold_until - loop.time()
            if hold > 0:
                await asyncio.sleep(hold)
            self._apply_cut(loop.time())
            self._release_due(loop.time())
            while self.link.connected and await self._send_round(loop):
                pass

    async def _send_round(self, loop: asyncio.AbstractEventLoop) -> bool:
        """Hand the next messages to the link; False when nothing more can go now."""
        limit = self.limit
        room = limit - len(self._inflight)
        if room <= 0:
            return False
        inflight_seqs, acked_set = self._inflight_seqs, self._acked_set
        refused, dropping = self._refused, self._dropping
        # behind the cursor of first transmissions (resends), rows sent before are skipped: read past them
        skip = (len(inflight_seqs) + len(acked_set) + len(refused) + len(dropping)
                if self._cursor < self._sent_max else 0)
        rows = await self.queue.peek(self._cursor, room + skip)
        if not rows or self._hold_until > loop.time():
            return False
        first_room = limit - len(self._inflight) - self._held_back  # first transmissions wait for refused ones
        items, metas = [], []
        last = self._cursor
        full = False
        for row in rows:
            seq = row.seq
            if seq in inflight_seqs or seq in acked_set or seq in dropping:
                last = seq
                continue  # outstanding, acknowledged and being deleted, or being dropped
            r = refused.get(seq)
            if r is not None:
                if r.waiting:
                    last = seq
                    continue  # its backoff is not over: _release_due rewinds the cursor to it then
                if self._expired(row):
                    log.debug("broker refused seq %d %d time(s) and it is older than queue.max_age_s: dropped "
                              "with the next summary (reason max_age)", seq, r.count)
                    self._drop(seq, "max_age")
                    last = seq
                    continue
            elif seq > self._sent_max:
                if first_room <= 0:
                    full = True
                    break
                first_room -= 1
            if len(items) >= room:
                full = True
                break
            items.append((row.topic, row.payload))
            metas.append((seq, row.kind))
            last = seq
        self._cursor = max(self._cursor, last)
        if not items:
            return not full
        try:
            tokens = self.link.publish_many(items)
        except Exception as exc:  # never let the send loop die: retry these rows shortly
            log.warning("publish of seq %d.. failed: %s; retrying", metas[0][0], exc)
            self._cursor = metas[0][0] - 1
            self._hold_until = max(self._hold_until, loop.time() + 0.2)
            self._wake.set()
            return False
        inflight, epoch = self._inflight, self._epoch
        for token, (seq, kind) in zip(tokens, metas):
            inflight[token] = (seq, kind, epoch)
            inflight_seqs.add(seq)
        self._sent_max = max(self._sent_max, metas[-1][0])
        self.stats.published += len(items)
        return not full

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
        """Connected, messages outstanding, and no acknowledgement or refusal for ack_timeout_s: reconnect."""
        loop = asyncio.get_running_loop()
        last_answered = -1
        since = loop.time()
        while True:
            await asyncio.sleep(min(1.0, self.ack_timeout_s / 4))
            now = loop.time()
            answered = self.stats.acked + self.stats.rejected
            if answered != last_answered or not self._inflight or not self.link.connected:
                last_answered, since = answered, now
            elif now - since > self.ack_timeout_s:
                self.stats.stalls += 1
                since = now
                self.link.kick()

    async def _report_loop(self) -> None:
        while True:
            try:
                await self._report_due.wait()
                await asyncio.sleep(self.report_s)
                self._report_due.clear()
                await self._report_refusals()
            except asyncio.CancelledError:
                raise
            except Exception:  # a queue error: the drops stay pending for the next report
                log.exception("forwarder refusal report failed; retrying")
                self._report_due.set()
                await asyncio.sleep(1.0)

    async def _report_refusals(self) -> None:
        """The summary line of refusals and drops since the last one, then the drops, one call per reason."""
        counts, self._period = self._period, {}
        start, self._period_start = self._period_start, None
        by_reason: dict[str, list[int]] = {}
        for seq, why in self._dropping.items():
            by_reason.setdefault(why, []).append(seq)
        for seqs in by_reason.values():
            seqs.sort()
        if counts or by_reason:
            span = asyncio.get_running_loop().time() - start
            refusals = ", ".join(f"{t.count} x {_reason(c)} (seq {t.first} to {t.last}, {t.new} refused for the "
                                 f"first time)" for c, t in sorted(counts.items())) or "none"
            drops = ", ".join(f"{len(seqs)} {why} (seq {seqs[0]} to {seqs[-1]})" for why, seqs in by_reason.items())
            log.warning("broker refusals in the last %.0f s: %s; %d refused message(s) not yet accepted%s",
                        span, refusals, len(self._refused), f"; dropped now: {drops}" if drops else "")
        for why, seqs in by_reason.items():
            try:
                await self.queue.drop(seqs, why)
            except Exception:
                self._open_period(asyncio.get_running_loop().time())  # the next summary counts them again
                raise
            for seq in seqs:
                del self._dropping[seq]

    async def _flush_acks(self, defer: bool = False) -> None:
        acked, self._acked = self._acked, []
        if acked:
            try:
                await self.queue.ack(acked, defer=defer)
            finally:
                self._acked_set.difference_update(acked)
        elif not defer:
            await self.queue.flush()
