"""The MQTT link: connect, publish, subscribe, report acks to asyncio. With mqtt_client.py (our paho
client and its reason codes), the only code of the daemon that talks to paho-mqtt.

One thread of ours owns the paho client and is the *only* thread that calls it.
It drives paho through its external-loop API (``socket()``, ``loop_read()``,
``loop_write()``, ``loop_misc()``; not ``loop_start``), so that:

- reconnects back off exponentially *with jitter* (paho's own backoff has none:
  a street of gateways behind one failed uplink would reconnect in lockstep),
  credentials are read from the secrets file at each connect (never held in
  config objects), the TLS files too (a certificate, key or CA renewed in
  place is used by the next connect), and TLS/connection errors reach the log
  and the status;
- messages leave in the order they were handed over, across reconnects. paho 2.2
  is not safe for that when ``publish()`` is called from another thread: without
  ``loop_start`` its ``publish()`` writes to the socket from the caller's thread
  (two threads then pop paho's unlocked packet deque), and a publish made while
  it reconnects (after ``connect()``, before or during the CONNACK) goes out at
  once, ahead of the un-acknowledged messages paho resends only at the CONNACK.
  Both reorder first transmissions (docs/uplink.md, "Order").

:meth:`MqttLink.publish` (any thread) only queues the message and returns a
*token*; the network thread publishes queued messages only while the session
is up (after the CONNACK), in order, in bursts, and writes the packets once per
burst. Every message not yet acknowledged stays in the link's own table (token
order); on each CONNACK the link takes paho's copies back
(``drop_out_messages()``, meant for use in ``on_connect``) and publishes them
again itself, oldest first, before anything new, so what paho did or did not
keep no longer matters. Nothing of it survives the process: the forwarder
resends from the durable queue after a restart.

Acknowledgements are tracked through ``on_publish`` only (see
/work/shared/RELIABILITY.md) and handed to the event loop in bursts (one
``call_soon_threadsafe`` per loop pass). paho's in-flight limit is off
(``max_inflight_messages_set(0)``: with a limit, paho scans its whole outgoing
table on every PUBACK); the forwarder's window and the broker's Receive Maximum (below) bound what
is outstanding.

The status topic carries a birth ``online`` and a last will ``offline``, retained unless
``broker.retain_status`` is false (a broker without retained messages refuses a retained will).

What the broker announces in each CONNACK is honoured (MQTT 5): no more QoS 1 messages outstanding
than its Receive Maximum (:attr:`MqttLink.receive_maximum`; the resend on a CONNACK too), and no
message larger than its Maximum Packet Size or ``broker.max_message_bytes``: such a message is
refused locally as 0x95 without being sent. One message must never stall the uplink (docs/uplink.md,
"Refusals"): a PUBACK failure code paho cannot name is a refusal of that message (:class:`mqtt_client.Client`);
a link-level message (status, command reply) is sent again at most once after a connection failed
with it unacknowledged; and as a last resort against what a broker does unannounced, a connection
closed right after a send makes the next ones start again from one message outstanding (one more
per answer) until those it left unacknowledged are through, and the message alone on the wire when
``SUSPECT_AFTER`` connections in a row closed so is refused as :data:`POISON`. The reconnect backoff
is reset only by a connection that stayed up ``STABLE_S``, so a broker that accepts and then closes
connections is not stormed. Those decisions, and naming a session takeover, are link_health.py's
(:class:`~.link_health.LinkHealth`, fed by the network thread; :meth:`MqttLink._judge` acts on them).

Failures stay local (docs/uplink.md, "When something fails on the network thread"): a topic MQTT
cannot carry is refused by :meth:`MqttLink.publish` (:class:`.mqtt_rules.TopicError`) or, inside a burst,
acknowledged as rejected; an exception in one of our paho callbacks is logged and counted; one that
escapes a connection cycle ends that connection only; and should the thread itself end, the link
reports itself down and the event loop starts a new one. Inbound messages are capped at
:data:`MAX_INBOUND` bytes (MQTT 5: Maximum Packet Size in the CONNECT; 3.1.1: dropped on arrival), and
at :data:`MAX_INBOUND_PENDING` waiting for a stalled event loop (the newest dropped); link-level messages
(replies, status) at :data:`MAX_WAITING` waiting for a link that cannot take them (the oldest dropped).
Each drop is counted and logged at most once a minute.
``on_message(topic, payload, retain)`` gets the retain flag: the subscriptions are made again at every
CONNACK, and a broker delivers a retained message at each of them (MQTT 5 subscribes with Retain Handling
2, so that it does not; 3.1.1 has no such option, and the daemon refuses what arrives flagged).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import select
import socket
import threading
import time
from collections import deque
from typing import Callable

import msgpack
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from .backoff import backoff_delay
from .config import BrokerSection
from .link_health import SHORT_S, LinkHealth
from .mqtt_client import (
    PAYLOAD_INVALID,
    POISON,
    TOO_LARGE,
    TOPIC_INVALID,
    Client,
    coalesce,
)
from .mqtt_rules import TopicError, disconnect_reason, publish_size, topic_problem
from .tls import tls_context

log = logging.getLogger(__name__)


_OK = MQTTErrorCode.MQTT_ERR_SUCCESS
_RETAIN_UNSUPPORTED = 0x9A
PRE_CONNACK = "connection closed by the broker before CONNACK: authentication, ACL or protocol refusal?"
RETAIN_FIX = "; this broker keeps no retained messages: set broker.retain_status: false"
# Largest packet the broker may send us: downlink requests are at most 8 KiB (downlink.MAX_REQUEST),
# so this leaves room for long topics and properties while a 200 MB message cannot reach the daemon.
MAX_INBOUND = 64 * 1024
DROP_LOG_EVERY_S = 60.0  # at most one log line a minute per kind of drop (oversize, overflow, waiting)
MAX_WAITING = 64
"""Link-level messages (command replies, status) handed to :meth:`MqttLink.publish` and not yet given to
paho, at most, while the link cannot take them (down, or the broker's Receive Maximum outstanding): they
would otherwise grow without bound for as long as the broker is unreachable. Past the cap the *oldest* is
dropped (counted in ``replies_dropped``): a reply is worth something only to an operator still waiting for
it, the oldest one's has most likely given up, and a newer status supersedes an older one. A burst handed
over while the link takes messages is not thinned (it goes out in one pass); the next publish trims what
is left. Telemetry (:meth:`MqttLink.publish_many`) is not counted: the forwarder's window bounds it and
the durable queue keeps it."""
MAX_INBOUND_PENDING = 32
"""Inbound messages handed to the event loop and not yet run there, at most. paho's network thread keeps
reading while the loop is stalled (a long compile, a slow disk); past the cap a message is dropped on the
network thread and counted (``inbound_overflow``). The newest are the ones dropped: those already posted
cannot be taken back. QoS 1 is acknowledged by paho when ``on_message`` returns, so a dropped command is
not delivered again; it gets no reply, as a command refused busy (downlink.MAX_IN_FLIGHT, 8 running,
well under this cap)."""


class MqttLink:
    """A persistent-session MQTT client whose events arrive on the asyncio loop."""

    def __init__(self, cfg: BrokerSection, client_id: str, status_topic: str,
                 birth: Callable[[], bytes], will: bytes,
                 on_ack: Callable[[int, int], None], on_state: Callable[[bool], None],
                 credentials: Callable[[], tuple[str, str] | None] | None = None,
                 subscriptions: tuple[str, ...] = (),
                 on_message: Callable[[str, bytes, bool], None] | None = None) -> None:
        self.cfg = cfg
        self.client_id = client_id
        self.status_topic = status_topic
        self._birth = birth
        self._on_ack = on_ack
        self._on_state = on_state
        self._credentials = credentials
        self._subscriptions = subscriptions
        self._on_message = on_message
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._leaving = False  # stop() asked for the disconnect: it is logged at INFO, not as a fault
        self._key_warning = ""  # logged once per distinct warning, not at every reconnect
        self._tokens = itertools.count(1)
        # handed over by publish(), not yet given to paho: (token, topic, payload, retain); any thread appends
        self._submitted: deque[tuple[int, str, bytes, bool]] = deque()
        self._waiting: deque[int] = deque()  # tokens of publish() messages in _submitted, oldest first (_lock)
        # given to paho, not acknowledged: token -> (topic, payload, retain), in publish order (network thread)
        self._unacked: dict[int, tuple[str, bytes, bool]] = {}
        self._resend: deque[int] = deque()  # tokens of _unacked not yet sent again on this connection
        self._mid_token: dict[int, int] = {}  # paho mid -> token (0: the birth), sent on this connection
        self._acks: list[tuple[int, int]] = []  # (token, reason) acknowledged, not yet on the event loop
        self._lock = threading.Lock()  # guards _unacked/_acks against pending_mids() from other threads
        self._acks_posted = False
        self._calls: deque[Callable[[], None]] = deque()  # run on the network thread (kick, stop)
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._woken = False
        self._up = False
        self.last_error = ""
        # wall time the link went down (None while up): from the start until the first CONNACK, then
        # from each disconnect; ``status`` shows "down since" (a technician compares it with the broker's log)
        self.down_since: float | None = time.time()
        # wall time the network thread connects again while it waits in its reconnect backoff (None while
        # up or while an attempt is under way): ``status`` says "next attempt in 12 s", so that a broker
        # back up is not taken for one still refusing
        self.next_attempt_at: float | None = None
        self.up_since: float | None = None  # wall time of the CONNACK of the session up now
        # the outage before the session up now, or before the last one: {"start": wall, "end": wall}
        # (None until a connection is lost, or until a first connect that had to retry succeeds)
        self.last_outage: dict[str, float] | None = None
        self._outage_open = False  # down_since is an outage taken over from a replaced link (take_history)
        self._said: set[str] = set()  # texts _error logged since the last CONNACK
        self._cycle_error = ""  # what paho reported during this connection attempt
        self._connacked = False  # this connection attempt got a CONNACK (accepted or refused)
        self._closing = False  # we asked for this disconnect (kick): not the broker's doing
        # backoff, suspect closes, slow start, takeovers; under _lock where publish() reaches it (watch)
        self._health = LinkHealth()
        # What the CONNACK announced (MQTT 5), for this connection; None before it and with 3.1.1.
        self.receive_maximum: int | None = None  # Receive Maximum (65535 when absent): QoS 1 outstanding
        self.max_packet_size: int | None = None  # Maximum Packet Size: larger messages are refused (0x95)
        self._retain_ok = cfg.retain_status  # False too while the broker announces Retain Available 0
        self._limited = bool(cfg.max_message_bytes)  # a size limit to check before each send
        self.connects = 0
        self.disconnects = 0
        self.refused_large = 0  # messages refused locally as 0x95: over max_message_bytes or Maximum Packet Size
        self.poisoned = 0  # messages refused locally as POISON (connections closed right after them)
        self.gave_up = 0  # link-level messages (status, replies) dropped after a second failed connection
        self.refused_topics = 0  # publish() calls refused by topic_problem(), and rejected burst messages
        self.inbound_dropped = 0  # messages larger than MAX_INBOUND (a 3.1.1 broker still sends them)
        self.inbound_overflow = 0  # messages dropped with MAX_INBOUND_PENDING waiting for the event loop
        self.replies_dropped = 0  # link-level messages dropped, oldest first, past MAX_WAITING waiting
        self._in_posted = 0  # inbound messages posted to the event loop (written by the network thread only)
        self._in_done = 0  # ... and run there (written by the event loop only): no lock, no lost update
        self.callback_errors = 0  # exceptions caught in our paho callbacks
        self.loop_errors = 0  # exceptions that ended a connection cycle
        self.thread_restarts = 0  # network threads that ended unexpectedly and were replaced
        self._respawn_pending = False
        self._died = False  # set by a network thread on its way out after an unexpected exception
        self._abandon = False  # on_connect failed: drop this connection and connect again
        self._drop_logged = float("-inf")
        self._overflow_logged = float("-inf")
        self._waiting_logged = float("-inf")
        self._v5 = cfg.protocol == "5"
        self.client = Client(
            CallbackAPIVersion.VERSION2, client_id=client_id,
            protocol=mqtt.MQTTv5 if self._v5 else mqtt.MQTTv311,
            clean_session=None if self._v5 else False,
        )
        self.client.max_inbound = MAX_INBOUND
        self.client.max_inflight_messages_set(0)  # unlimited in paho: the link keeps to the Receive Maximum
        self.client.max_queued_messages_set(0)
        self.client.will_set(status_topic, will, qos=1, retain=cfg.retain_status)
        # paho would catch these too (suppress_exceptions), but only log one line: ours count them, log
        # the traceback, and a failed on_connect drops the connection instead of leaving it half set up
        self.client.on_connect = self._safe(self._cb_connect, abandon=True)
        self.client.on_disconnect = self._safe(self._cb_disconnect)
        self.client.on_publish = self._safe(self._cb_publish)
        self.client.on_message = self._safe(self._cb_message)
        # paho formats every debug line when on_log is set; a logger that only passes errors costs
        # one level check per line instead (errors reach the log and the status as before)
        self.client.enable_logger(_PahoErrors(self._paho_error))
        # With a write-interest callback set, paho queues packets instead of writing each one at once;
        # the network thread writes them after every burst (loop_write).
        self.client.on_socket_register_write = lambda client, userdata, sock: None
        self.client.suppress_exceptions = True

    @property
    def stable_after_s(self) -> float:
        """Seconds up after which a connection resets the backoff (tests shorten it)."""
        return self._health.stable_after_s

    @stable_after_s.setter
    def stable_after_s(self, seconds: float) -> None:
        self._health.stable_after_s = seconds

    @property
    def _attempt(self) -> int:
        """Reconnect attempts since the last stable connection (read by tests)."""
        return self._health.attempt

    @property
    def connected(self) -> bool:
        """Session up (after the CONNACK) and a network thread alive to serve it."""
        t = self._thread
        return self._up and not self._died and t is not None and t.is_alive()

    # --- lifecycle ----------------------------------------------------------------------------

    def take_history(self, last_outage: dict[str, float] | None, down_since: float | None) -> None:
        """Before :meth:`start`: continue a replaced link's outage history (a reload with new broker
        settings), which is the gateway's, not one link object's. ``last_outage`` stays the last one, and
        ``down_since`` (the old link was down when replaced) keeps that outage open from when it began:
        this link's first CONNACK closes it, as a reconnect would."""
        self.last_outage = last_outage
        if down_since is not None:
            self.down_since = down_since
            self._outage_open = True

    def start(self) -> None:
        """Connect in the background; reconnect with jittered exponential backoff until stopped."""
        self._loop = asyncio.get_running_loop()
        self._spawn()

    def _spawn(self) -> None:
        self._respawn_pending = False
        old = self._thread
        if self._stopping.is_set() or (old is not None and old.is_alive() and not self._died):
            return
        if old is not None:
            old.join(1.0)  # a dead thread is past its last statement; this returns at once
        self._died = False
        self.next_attempt_at = None
        self._thread = threading.Thread(target=self._main, name="mqtt", daemon=True)
        self._thread.start()

    def _main(self) -> None:
        """The network thread. Whatever escapes :meth:`_run` must not leave a link that claims to be
        up while nothing is sent: report it down and have the event loop start a new thread."""
        try:
            self._run()
        except BaseException as exc:  # noqa: BLE001 - SystemExit too: this thread is ours to replace
            self._died = True
            self._went_down(f"network thread died: {exc!r}")
            self.thread_restarts += 1
            log.critical("mqtt network thread died; starting a new one", exc_info=True)
            if not self._stopping.is_set():
                self._post(self._respawn)
                return
        self._finish()

    def _respawn(self) -> None:
        """Event loop: a new network thread after the usual backoff (a crash loop must not storm)."""
        if self._respawn_pending or self._stopping.is_set():
            return
        self._respawn_pending = True
        delay = backoff_delay(self.thread_restarts - 1, self.cfg.reconnect_min_s, self.cfg.reconnect_max_s)
        assert self._loop is not None
        self.next_attempt_at = time.time() + delay
        self._loop.call_later(delay, self._spawn)

    def _prepare(self) -> None:
        """TLS context and credentials, read again before every connect attempt, so that files renewed
        in place are used without a restart; raises on a bad file (the caller logs it and retries).

        The context is rebuilt each time rather than when a file's mtime changes: mtimes can be coarse
        (2 s on FAT), a renewed certificate often has the same size, and ``load_verify_locations``
        on a kept context would add a new CA without dropping the old one. It costs about 2 ms."""
        if self.cfg.tls is not None:
            ctx, warning = tls_context(self.cfg.tls, self.cfg.strict_secrets)
            if warning and warning != self._key_warning:
                log.warning("%s", warning)
            self._key_warning = warning
            self.client.use_tls_context(ctx)
        if self._credentials is not None:
            cred = self._credentials()
            if cred:
                self.client.username_pw_set(*cred)

    def _connect(self) -> None:
        kwargs = {}
        if self._v5:
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = self.cfg.session_expiry_s
            props.MaximumPacketSize = MAX_INBOUND  # the broker drops larger messages for us
            kwargs = {"clean_start": False, "properties": props}
        self.client.connect(self.cfg.host, self.cfg.port, keepalive=self.cfg.keepalive_s, **kwargs)

    def _run(self) -> None:
        while not self._stopping.is_set():
            self._run_calls()
            self._connacked, self._cycle_error = False, ""
            self.receive_maximum = self.max_packet_size = None
            try:
                self._prepare()
                self._connect()
            except Exception as exc:  # OSError, ssl.SSLError, SecretsError, bad cert files...
                self._error(f"connect to {self.cfg.host}:{self.cfg.port} failed: {exc}")
            else:
                try:
                    self._serve()
                except Exception as exc:  # noqa: BLE001 - a bug must cost this connection, not the link
                    self.loop_errors += 1
                    log.exception("mqtt: connection cycle failed; reconnecting")
                    self._error(f"network thread error: {exc!r}")
                    self._connacked = True  # reported above
                if self._stopping.is_set():
                    break  # the disconnect() queued by stop() runs in _finish
                if self._up:  # paho did not report it (e.g. a refused CONNACK, or the error above)
                    self._went_down("connection lost")
                elif not self._connacked:  # paho says nothing on a plain EOF: the link looked merely down
                    self._error(PRE_CONNACK + (f" ({self._cycle_error})" if self._cycle_error else ""))
            self._flush_acks()
            if self._stopping.is_set():
                break
            delay = backoff_delay(self._health.next_attempt(), self.cfg.reconnect_min_s, self.cfg.reconnect_max_s)
            log.debug("reconnecting in %.2f s (attempt %d)", delay, self._attempt)
            self.next_attempt_at = time.time() + delay
            self._stopping.wait(delay)
            self.next_attempt_at = None

    def _finish(self) -> None:
        """Stopping: write a disconnect() queued by stop(), so that the broker does not fire the will."""
        self._run_calls()
        try:
            if self.client.socket() is not None and self.client.want_write():
                self.client.loop_write()
        except Exception:  # noqa: BLE001
            pass
        self._wake_r.close()
        self._wake_w.close()

    def _serve(self) -> None:
        """One connection: select on paho's socket and our wake-up pipe until it ends."""
        c = self.client
        wake = self._wake_r
        while not self._stopping.is_set():
            self._run_calls()
            if self._abandon:
                self._abandon = False
                return
            if self._up:
                if self._resend or self._submitted:
                    self._publish_submitted()
                if not self._health.stable:
                    self._health.settle(time.monotonic())
            sock = c.socket()
            if sock is None:
                return
            if c.want_write():
                if c.loop_write() != _OK or c.socket() is None:
                    return
            pending = sock.pending() if hasattr(sock, "pending") else 0
            try:
                r, w, _ = select.select([sock, wake], [sock] if c.want_write() else [], [],
                                        0.0 if pending else 0.5)
            except (OSError, ValueError, TypeError):
                return
            if wake in r:
                self._woken = False
                try:
                    wake.recv(4096)
                except BlockingIOError:
                    pass
            if sock in r or pending:
                if c.loop_read() != _OK or c.socket() is None:
                    return
                self._flush_acks()
            if sock in w:
                if c.loop_write() != _OK or c.socket() is None:
                    return
            if c.loop_misc() != _OK:
                return

    def _wake(self) -> None:
        if not self._woken:
            self._woken = True
            try:
                self._wake_w.send(b"x")
            except (BlockingIOError, OSError):
                pass

    def _run_calls(self) -> None:
        while self._calls:
            fn = self._calls.popleft()
            try:
                fn()
            except Exception:  # noqa: BLE001 - a failed disconnect must not end the network thread
                log.exception("mqtt: call on the network thread failed")

    def _call(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` on the network thread (the only thread that touches paho once started)."""
        if self._thread is None or not self._thread.is_alive():
            fn()
            return
        self._calls.append(fn)
        self._wake()

    def _publish_submitted(self) -> None:
        """Network thread, session up: give paho the messages to send again on this connection, then the
        queued ones, oldest first, while fewer than the broker's Receive Maximum are outstanding; then
        write them (the rest goes as acknowledgements free slots)."""
        cap = self.receive_maximum or 1 << 30
        room = self._health.window(cap) - len(self._mid_token)
        if room <= 0:
            return
        free = room
        c = self.client
        resend, sub, unacked = self._resend, self._submitted, self._unacked
        queued = c._out_packet  # noqa: SLF001 - paho's packet deque, see mqtt_client.coalesce
        before = len(queued)
        with self._lock:
            while room > 0 and resend:
                token = resend.popleft()
                entry = unacked.get(token)
                if entry is not None and self._send(token, *entry):
                    room -= 1
            waiting = self._waiting
            while room > 0 and sub:
                token, topic, payload, retain = sub.popleft()
                if waiting and waiting[0] == token:  # tokens increase: a link-level one is the oldest waiting
                    waiting.popleft()
                if self._send(token, topic, payload, retain):
                    unacked[token] = (topic, payload, retain)
                    room -= 1
        if room < free:
            self._health.sent(time.monotonic())
        coalesce(queued, before)
        c.loop_write()
        self._flush_acks()

    def _send(self, token: int, topic: str, payload: bytes, retain: bool) -> bool:
        """Network thread, under ``_lock``: give one message to paho; False if it was refused instead.

        A message larger than the broker takes is refused as 0x95 without being sent, and one paho
        raises on (invalid topic, payload of a wrong type) with the matching MQTT 5 reason code: the
        forwarder drops it for good rather than resending it, and the rest of the burst goes out."""
        too_big = self._limited and self._too_big(topic, payload)
        if too_big:
            self.refused_large += 1
            self._reject(token, TOO_LARGE, f"message on {topic[:64]!r} not sent: {too_big}")
            return False
        try:
            info = self.client.publish(topic, payload, qos=1, retain=retain and self._retain_ok)
        except (ValueError, TypeError) as exc:
            reason = TOPIC_INVALID if topic_problem(topic) else PAYLOAD_INVALID
            self._reject(token, reason, f"publish on {str(topic)[:64]!r} refused: {exc}")
            return False
        self._mid_token[info.mid] = token
        if info.rc not in (_OK, MQTTErrorCode.MQTT_ERR_NO_CONN):  # e.g. a mid still in use: resent
            log.error("publish refused by paho: %s", mqtt.error_string(info.rc))
        return True

    def _too_big(self, topic: str, payload: bytes) -> str:
        """Why the broker would refuse this message for its size ("" if it would not)."""
        limit = self.cfg.max_message_bytes
        if limit and len(payload) > limit:
            return f"its {len(payload)}-byte payload is over broker.max_message_bytes ({limit})"
        limit, size = self.max_packet_size, publish_size(topic, payload, self._v5)
        if limit and size > limit:
            return f"its {size}-byte packet is over the broker's Maximum Packet Size ({limit})"
        return ""

    def _reject(self, token: int, reason: int, text: str) -> None:
        """Network thread, under ``_lock``: ``token`` will not be sent (again); tell the forwarder so."""
        self._health.forget(token)
        self._refuse(token, reason, text)

    def _refuse(self, token: int, reason: int, text: str) -> None:
        """:meth:`_reject` for a token the health bookkeeping has already forgotten (poison)."""
        if reason == TOPIC_INVALID:
            self.refused_topics += 1
        log.error("%s", text)
        self._unacked.pop(token, None)
        self._acks.append((token, reason))

    def _error(self, text: str) -> None:
        """``last_error``, logged once per distinct text between two CONNACKs (a reconnect loop must not
        flood the log with the same few lines)."""
        if text not in self._said:
            if len(self._said) > 64:
                self._said.clear()
            self._said.add(text)
            log.warning("%s", text)
        self.last_error = text

    def _paho_error(self, text: str) -> None:
        self._cycle_error = text
        self._error(text)

    def publish(self, topic: str, payload: bytes, retain: bool = False) -> int:
        """Queue a QoS 1 publish (any thread); return its token (the ack arrives via ``on_ack``).

        Sent in the order of the calls, while the session is up. A link-level message (status, a
        command reply) is sent again at most once after a connection failed with it unacknowledged:
        it is not worth stalling the link for; at most :data:`MAX_WAITING` wait for a link that cannot
        take them, the oldest dropped. Raises :class:`TopicError` for a topic MQTT cannot carry (paho
        would raise on the network thread)."""
        problem = topic_problem(topic)
        if problem:
            self.refused_topics += 1
            shown = str(topic)
            raise TopicError(f"{problem}: {shown[:64]!r}{'...' if len(shown) > 64 else ''}")
        token = next(self._tokens)
        with self._lock:
            self._health.watch(token)
            self._submitted.append((token, topic, bytes(payload), retain))
            self._waiting.append(token)
            dropped = self._shed_waiting()
        self._wake()
        self._note_shed(dropped)
        return token

    def _shed_waiting(self) -> str:
        """Under ``_lock``: past :data:`MAX_WAITING` link-level messages waiting while the link cannot take
        them (down, or the broker's window full), drop the oldest; return the topic of the last one dropped
        ("" if none). A burst handed over while the link takes messages is not thinned: it goes in one pass.
        A dropped message is not acknowledged to ``on_ack``, as one given up after two failed connections."""
        topic = ""
        waiting, sub = self._waiting, self._submitted
        while len(waiting) > MAX_WAITING and not (
                self._up and self._health.window(self.receive_maximum or 1 << 30) > len(self._mid_token)):
            token = waiting.popleft()
            for i, entry in enumerate(sub):
                if entry[0] == token:
                    del sub[i]
                    topic = entry[1]
                    break
            self._health.forget(token)
            self.replies_dropped += 1
        return topic

    def _note_shed(self, topic: str) -> None:
        """Log a drop by :meth:`_shed_waiting`, at most once a minute."""
        now = time.monotonic()
        if topic and now - self._waiting_logged >= DROP_LOG_EVERY_S:
            self._waiting_logged = now
            log.warning("uplink: %d replies/status messages waiting for the broker; dropped the oldest, on %r "
                        "(%d dropped so far; logged at most once a minute)", MAX_WAITING, topic[:64],
                        self.replies_dropped)

    def publish_many(self, items: list[tuple[str, bytes]]) -> list[int]:
        """:meth:`publish` for a burst (not retained), one wake-up of the network thread; kept and sent
        again on every reconnect until the broker acknowledges or refuses it (or the process ends)."""
        tokens = []
        sub = self._submitted
        with self._lock:  # publish() may be deleting from _submitted (MAX_WAITING)
            for topic, payload in items:
                token = next(self._tokens)
                sub.append((token, topic, payload, False))
                tokens.append(token)
        self._wake()
        return tokens

    def pending_mids(self) -> set[int] | None:
        """Tokens of messages not yet acknowledged to the event loop (the link keeps them all)."""
        with self._lock:
            held = set(self._unacked)
            held.update(t for t, _ in self._acks)
            held.update(t for t, _, _, _ in list(self._submitted))
        return held

    def kick(self) -> None:
        """Drop the connection so that it reconnects and sends the un-acknowledged again."""
        log.warning("forcing a reconnect (acknowledgements stalled)")
        if self._thread is not None and self._died and not self._stopping.is_set():
            self._spawn()  # a dead thread cannot run the disconnect: replace it now
            return
        self._call(self._disconnect)

    def _disconnect(self) -> None:
        self._closing = True
        self.client.disconnect()

    async def stop(self, offline_payload: bytes | None = None, timeout: float = 2.0) -> None:
        """Publish ``offline`` (a clean disconnect does not fire the will) and disconnect."""
        loop = asyncio.get_running_loop()
        if offline_payload is not None and self.connected:
            token = self.publish(self.status_topic, offline_payload, retain=True)
            deadline = loop.time() + timeout
            while self.connected and loop.time() < deadline:
                with self._lock:
                    done = token not in self._unacked and all(t != token for t, _, _, _ in self._submitted)
                if done:
                    break
                await asyncio.sleep(0.01)
        self._leaving = True
        self._call(self.client.disconnect)  # queued before stopping: the thread runs it on its way out
        self._stopping.set()
        if self._thread is not None:
            await loop.run_in_executor(None, self._thread.join, 5.0)
            if self._died:  # that thread skipped _finish; nothing else will run it
                self._finish()

    # --- paho callbacks (network thread) ------------------------------------------------------

    def _post(self, fn, *args) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(fn, *args)
            except RuntimeError:
                pass

    def _went_down(self, reason: str, code: int | None = None, from_server: bool = False) -> None:
        was, self._up = self._up, False
        if not was:
            return
        self.disconnects += 1
        self.down_since = time.time()
        self.up_since = None
        self.last_error = f"disconnected: {reason}"
        ours, self._closing = self._closing or self._leaving, False
        if self._leaving:
            log.info("disconnected from broker (stopping): %s", reason)
        else:
            log.warning("disconnected from broker: %s", reason)
            if not ours:
                with self._lock:
                    self._judge(code, from_server, reason)
        self._post(self._on_state, False)

    def _judge(self, code: int | None, from_server: bool, reason: str) -> None:
        """Network thread, under ``_lock``: a connection the gateway did not close has ended. What it
        means is :meth:`LinkHealth.judge`'s to decide; here the messages are dropped or refused and
        the decisions logged and counted."""
        verdict = self._health.judge(time.monotonic(), set(self._mid_token.values()), self._unacked.keys(),
                                     code, from_server, bool(self._cycle_error))
        for token in verdict.gave_up:
            topic = self._unacked.pop(token, ("?",))[0]
            self.gave_up += 1
            log.warning("message on %r unacknowledged on two connections in a row: not sent again", topic[:64])
        if verdict.birth_dropped:
            log.error("the birth message was unacknowledged on two connections in a row: not sent again "
                      "until a connection stays up %g s", self.stable_after_s)
        if verdict.poison:
            token, n = verdict.poison, verdict.poison_closes
            self.poisoned += 1
            topic, payload, _ = self._unacked[token]
            self._refuse(token, POISON, f"the broker closed {n} connections in a row right after the message "
                         f"on {topic[:64]!r}{_seq_text(payload)}, acknowledging nothing after it: refused as "
                         "poison, not sent again, so that the rest can flow")
        if verdict.takeovers:
            text = (f"the broker closed {verdict.takeovers} connections in a row within {SHORT_S:g} s of their "
                    f"CONNACK ({reason}): another client is probably using client id {self.client_id!r}; "
                    "the same gateway.id on two gateways (a cloned SD card, a copied config)?")
            self.last_error = text
            if verdict.name_takeover:
                log.error("%s", text)

    def _cb_connect(self, client, userdata, flags, reason_code, properties) -> None:
        self._connacked = True
        if reason_code.is_failure:
            hint = RETAIN_FIX if reason_code.value == _RETAIN_UNSUPPORTED and self.cfg.retain_status else ""
            self._error(f"broker refused connection: {reason_code}{hint}")
            return
        self._session(properties)
        # Take the resend over from paho (before its own resend, which runs after this callback):
        # every message not acknowledged goes again, oldest first, before anything new
        # (_publish_submitted, as the Receive Maximum allows).
        client.drop_out_messages()
        with self._lock:
            self._mid_token.clear()
            self._resend = deque(self._unacked)
        self._guarded("birth publish", self._publish_birth)
        for topic in self._subscriptions:
            if self._v5:  # Retain Handling 2: the broker sends no retained message at the subscribe
                client.subscribe(topic, options=SubscribeOptions(qos=1, retainHandling=2))
            else:  # 3.1.1 has no such option: a retained message arrives flagged (on_message's retain)
                client.subscribe(topic, qos=1)
        now = time.time()
        if self.down_since is not None and (self.connects or self.last_error or self._outage_open):
            # not a plain first connect
            self.last_outage = {"start": self.down_since, "end": now}
        self._up = True
        self.down_since = None
        self.up_since = now
        self._health.connected(time.monotonic())
        self.connects += 1
        self.last_error = ""
        self._said.clear()
        log.info("connected to %s:%d (session present: %s, resending %d)", self.cfg.host, self.cfg.port,
                 flags.session_present, len(self._resend))
        self._post(self._on_state, True)

    def _session(self, props: Properties) -> None:
        """What this CONNACK announces (MQTT 5): Receive Maximum, Maximum Packet Size, Retain Available."""
        retain = 1
        if self._v5:
            self.receive_maximum = getattr(props, "ReceiveMaximum", 65535)
            self.max_packet_size = getattr(props, "MaximumPacketSize", None)
            retain = getattr(props, "RetainAvailable", 1)
        if self.cfg.retain_status and not retain and self._retain_ok:  # logged once, not at every connect
            log.warning("the broker announces no retained messages (CONNACK Retain Available 0): status goes "
                        "out unretained; set broker.retain_status: false (the will is retained)")
        self._retain_ok = self.cfg.retain_status and bool(retain)
        self._limited = bool(self.cfg.max_message_bytes or self.max_packet_size)

    def _publish_birth(self) -> None:
        if not self._health.send_birth:
            return
        birth = self._guarded("birth message", self._birth)
        if birth is None:
            return
        too_big = self._too_big(self.status_topic, birth)
        if too_big:
            self._error(f"birth message on {self.status_topic!r} not sent: {too_big}")
            return
        info = self.client.publish(self.status_topic, birth, qos=1, retain=self._retain_ok)
        self._mid_token[info.mid] = 0
        self._health.sent(time.monotonic())

    def _cb_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        from_server = flags.is_disconnect_packet_from_server
        self._went_down(disconnect_reason(reason_code, from_server), reason_code.value, from_server)

    def _cb_publish(self, client, userdata, mid, reason_code, properties) -> None:
        token = self._mid_token.pop(mid, None)
        if not token:  # None: not ours; 0: the birth message
            if token == 0:
                self._health.birth_acked()
            return
        rc = reason_code.value if reason_code.is_failure else 0
        with self._lock:
            self._unacked.pop(token, None)
            self._health.acked(token)
            self._acks.append((token, rc))

    def _cb_message(self, client, userdata, msg) -> None:
        if self._on_message is None:
            return
        payload = msg.payload
        topic = msg.topic
        size = client.skipping() or len(payload) + len(topic)
        if size > MAX_INBOUND:  # copy and decode nothing more
            self.inbound_dropped += 1
            now = time.monotonic()
            if now - self._drop_logged >= DROP_LOG_EVERY_S:
                self._drop_logged = now
                log.warning("dropped a %d-byte message on %r: larger than %d bytes (%d dropped so far)",
                            size, topic[:64], MAX_INBOUND, self.inbound_dropped)
            return
        if self._in_posted - self._in_done >= MAX_INBOUND_PENDING:  # the event loop is not keeping up
            self.inbound_overflow += 1
            now = time.monotonic()
            if now - self._overflow_logged >= DROP_LOG_EVERY_S:
                self._overflow_logged = now
                log.warning("dropped a message on %r: %d inbound messages already waiting for the event loop "
                            "(%d dropped so far; logged at most once a minute)", topic[:64], MAX_INBOUND_PENDING,
                            self.inbound_overflow)
            return
        self._in_posted += 1
        self._post(self._deliver_message, topic, payload if type(payload) is bytes else bytes(payload),
                   bool(msg.retain))

    def _deliver_message(self, topic: str, payload: bytes, retain: bool) -> None:
        """Event loop: one inbound message, counted as no longer pending (:data:`MAX_INBOUND_PENDING`)."""
        self._in_done += 1
        self._on_message(topic, payload, retain)

    def _safe(self, fn: Callable[..., None], abandon: bool = False) -> Callable[..., None]:
        def callback(*args) -> None:
            try:
                fn(*args)
            except Exception:  # noqa: BLE001 - never into paho's read loop
                self.callback_errors += 1
                log.exception("mqtt: %s failed", fn.__name__)
                if abandon:
                    self._abandon = True
        return callback

    def _guarded(self, what: str, fn, *args, **kwargs):
        """``fn(*args)``, or None if it raised: logged and counted, so that the rest of a callback runs."""
        try:
            return fn(*args, **kwargs)
        except Exception:  # noqa: BLE001
            self.callback_errors += 1
            log.exception("mqtt: %s failed", what)
            return None

    def _flush_acks(self) -> None:
        """Network thread: hand the acknowledgements of this pass to the event loop in one call."""
        if self._acks and not self._acks_posted:
            self._acks_posted = True
            self._post(self._deliver_acks)

    def _deliver_acks(self) -> None:
        with self._lock:
            acks, self._acks = self._acks, []
            self._acks_posted = False
        on_ack = self._on_ack
        for token, rc in acks:
            on_ack(token, rc)


def _seq_text(payload: bytes) -> str:
    """`` (seq N)`` for a gateway message, for the log; "" for anything else."""
    try:
        seq = msgpack.unpackb(payload, raw=False).get("seq")
    except Exception:  # noqa: BLE001 - any payload at all may get here
        return ""
    return f" (seq {seq})" if isinstance(seq, int) else ""


class _PahoErrors(logging.Logger):
    """paho's logger for one link: only errors, handed to ``MqttLink._error`` (not registered globally)."""

    def __init__(self, report: Callable[[str], None]) -> None:
        super().__init__("edge_gateway.uplink.paho", logging.ERROR)
        self.propagate = False
        self._report = report

    def handle(self, record: logging.LogRecord) -> None:
        try:
            self._report(f"mqtt: {record.getMessage()}")
        except Exception:  # noqa: BLE001 - a log line must never break the network thread
            pass
