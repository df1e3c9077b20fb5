"""The only module that talks to paho-mqtt: connect, publish, subscribe, report acks to asyncio.

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
table on every PUBACK); the forwarder bounds what is outstanding.

The status topic carries a retained birth ``online`` and a retained last will ``offline``.

Failures stay local (docs/uplink.md, "When something fails on the network thread"): a topic MQTT
cannot carry is refused by :meth:`MqttLink.publish` (:class:`TopicError`) or, inside a burst,
acknowledged as rejected; an exception in one of our paho callbacks is logged and counted; one that
escapes a connection cycle ends that connection only; and should the thread itself end, the link
reports itself down and the event loop starts a new one. Inbound messages are capped at
:data:`MAX_INBOUND` bytes (MQTT 5: Maximum Packet Size in the CONNECT; 3.1.1: dropped on arrival).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import random
import select
import socket
import ssl
import threading
import time
from collections import deque
from typing import Callable

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from . import secrets
from .config import BrokerSection, TlsSection

log = logging.getLogger(__name__)

# MQTT 5 PUBACK reason codes that a resend can never fix (the message itself is refused).
PERMANENT_REJECTS = frozenset({0x90, 0x95, 0x99})  # topic name invalid, packet too large, payload format invalid

_OK = MQTTErrorCode.MQTT_ERR_SUCCESS
_TOPIC_INVALID, _PAYLOAD_INVALID = 0x90, 0x99  # MQTT 5 reason codes, both in PERMANENT_REJECTS

MAX_TOPIC = 65535  # bytes: MQTT's limit on a topic name
# Largest packet the broker may send us: downlink requests are at most 8 KiB (downlink.MAX_REQUEST),
# so this leaves room for long topics and properties while a 200 MB message cannot reach the daemon.
MAX_INBOUND = 64 * 1024
DROP_LOG_EVERY_S = 60.0


def topic_problem(topic: str) -> str:
    """Why MQTT cannot carry a PUBLISH on ``topic`` ("" if it can); checked before paho, which raises."""
    if not isinstance(topic, str) or not topic:
        return "empty topic" if isinstance(topic, str) else "topic is not a string"
    if "+" in topic or "#" in topic:
        return "wildcard in topic"
    if "\0" in topic:
        return "NUL in topic"
    try:
        n = len(topic.encode("utf-8"))
    except UnicodeEncodeError:
        return "topic is not valid UTF-8"
    if n > MAX_TOPIC:
        return f"topic is {n} bytes (MQTT allows {MAX_TOPIC})"
    return ""


class TopicError(RuntimeError):
    """``publish()`` refused a topic MQTT cannot carry. A RuntimeError, as callers already handle
    a publish that cannot be made, so a bad reply topic costs one log line, not the link."""


class TlsFilesError(Exception):
    """A TLS file cannot be used now (missing, unreadable, malformed, or cert and key do not match)."""


def _encrypted_key() -> bytes:
    raise TlsFilesError("the key is encrypted (a passphrase-protected key is not supported)")


def tls_context(tls: TlsSection, strict: bool = False) -> tuple[ssl.SSLContext, str]:
    """A new client context from the TLS files as they are now, and the key file's mode warning ("").

    The key file follows the secrets file's mode rule (:func:`secrets.mode_problem`; ``strict`` refuses
    with :class:`secrets.SecretsError`). Errors name the file: ssl's own messages do not."""
    warning = ""
    if tls.key_file:
        try:
            st = os.stat(tls.key_file)
        except OSError as exc:
            raise TlsFilesError(f"TLS key file {tls.key_file}: cannot open: {exc.strerror}") from None
        warning = secrets.mode_problem(tls.key_file, st.st_mode, strict, what="TLS key file")
    what = f"CA file {tls.ca_file}"
    try:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=tls.ca_file)
        if tls.cert_file:
            what = f"certificate {tls.cert_file} with key {tls.key_file}"
            ctx.load_cert_chain(tls.cert_file, tls.key_file or None, password=_encrypted_key)
    except TlsFilesError as exc:
        raise TlsFilesError(f"TLS {what}: {exc}") from None
    except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
        raise TlsFilesError(f"TLS {what}: cannot load: {exc.strerror or exc}") from None
    ctx.check_hostname = tls.check_hostname
    return ctx, warning


def backoff_delay(attempt: int, lo: float, hi: float, rand: Callable[[], float] = random.random) -> float:
    """Exponential backoff with jitter: ``min(hi, lo * 2**attempt)`` scaled by a random 0.5..1."""
    return min(hi, lo * (2 ** min(attempt, 30))) * (0.5 + 0.5 * rand())


class _Client(mqtt.Client):
    """paho's client with two shortcuts.

    A successful PUBACK without properties (reason code below 0x80, no property bytes) reuses one
    ReasonCode and one empty Properties object per reason code instead of building new ones per
    packet (paho 2.2 fills two dozen-entry dicts for each: about a third of the network thread's
    time in a drain). Anything else (failure reason codes, properties, PUBCOMP) goes through paho
    unchanged; paho still owns the connection, the session and its outgoing table, and calls
    ``on_publish`` as usual.

    With MQTT 3.1.1 (no Maximum Packet Size to give the broker) a PUBLISH longer than
    ``max_inbound`` is read through without being kept: paho keeps its topic and packet id and one
    byte, so it still acknowledges it, and :meth:`skipping` tells ``on_message`` to drop it. paho
    would otherwise hold the whole packet and copy it three times while decoding it (a 200 MB
    message took the daemon from 153 MB to 750 MB)."""

    _NO_PROPS = Properties(PacketTypes.PUBACK)
    _REASONS: dict[int, ReasonCode] = {}
    _KEEP = 2 + MAX_TOPIC + 2  # topic length, topic, packet id: all paho needs to acknowledge it
    max_inbound = 0
    _skipped: dict | None = None  # paho's _in_packet being read through

    def _sock_recv(self, bufsize: int) -> bytes:  # paho 2.x internal: every read of a packet's body
        p = self._in_packet
        if (not self.max_inbound or not p["have_remaining"] or p["remaining_length"] <= self.max_inbound
                or (p["command"] & 0xF0) != 0x30 or self._protocol == mqtt.MQTTv5):
            return super()._sock_recv(bufsize)
        have = p["remaining_length"] - p["to_process"]
        if have < self._KEEP:
            return super()._sock_recv(min(bufsize, self._KEEP - have))
        self._skipped = p
        while p["to_process"] > 1:
            chunk = super()._sock_recv(min(p["to_process"] - 1, 65536))  # BlockingIOError: resumed later
            if not chunk:
                return chunk
            p["to_process"] -= len(chunk)
        return super()._sock_recv(1)

    def skipping(self) -> int:
        """The size of the PUBLISH being handled if it was read through without being kept, else 0."""
        p = self._skipped
        return p["remaining_length"] if p is not None and p is self._in_packet else 0

    def _handle_pubackcomp(self, cmd):  # noqa: ANN001 - paho 2.2 internal hook
        packet = self._in_packet["packet"]
        n = len(packet)
        if cmd != "PUBACK" or n > 4 or n < 2 or (n >= 3 and packet[2] >= 0x80) or (n == 4 and packet[3]):
            return super()._handle_pubackcomp(cmd)
        code = packet[2] if n >= 3 else 0
        reason = self._REASONS.get(code)
        if reason is None:
            reason = self._REASONS[code] = ReasonCode(PacketTypes.PUBACK, identifier=code)
        mid = (packet[0] << 8) | packet[1]
        with self._out_message_mutex:
            if mid in self._out_messages:
                return self._do_on_publish(mid, reason, self._NO_PROPS)
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    def use_tls_context(self, ctx: ssl.SSLContext) -> None:
        """Use ``ctx`` from the next connect on. paho 2.2's ``tls_set_context`` refuses a second call,
        but paho reads the context only when ``connect()`` wraps a new socket (``_ssl_wrap_socket``),
        so replacing it between connections is safe; ``_tls_insecure`` is kept as that call sets it."""
        if self._ssl_context is None:
            self.tls_set_context(ctx)
        else:
            self._ssl_context = ctx
            self._tls_insecure = not ctx.check_hostname


class MqttLink:
    """A persistent-session MQTT client whose events arrive on the asyncio loop."""

    def __init__(self, cfg: BrokerSection, client_id: str, status_topic: str,
                 birth: Callable[[], bytes], will: bytes,
                 on_ack: Callable[[int, int], None], on_state: Callable[[bool], None],
                 credentials: Callable[[], tuple[str, str] | None] | None = None,
                 subscriptions: tuple[str, ...] = (),
                 on_message: Callable[[str, bytes], None] | None = None) -> None:
        self.cfg = cfg
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
        self._attempt = 0
        self._tokens = itertools.count(1)
        # handed over by publish(), not yet given to paho: (token, topic, payload, retain); any thread appends
        self._submitted: deque[tuple[int, str, bytes, bool]] = deque()
        # given to paho, not acknowledged: token -> (topic, payload, retain), in publish order (network thread)
        self._unacked: dict[int, tuple[str, bytes, bool]] = {}
        self._mid_token: dict[int, int] = {}  # paho mid -> token, for the current connection
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
        self.connects = 0
        self.disconnects = 0
        self.refused_topics = 0  # publish() calls refused by topic_problem(), and rejected burst messages
        self.inbound_dropped = 0  # messages larger than MAX_INBOUND (a 3.1.1 broker still sends them)
        self.callback_errors = 0  # exceptions caught in our paho callbacks
        self.loop_errors = 0  # exceptions that ended a connection cycle
        self.thread_restarts = 0  # network threads that ended unexpectedly and were replaced
        self._respawn_pending = False
        self._died = False  # set by a network thread on its way out after an unexpected exception
        self._abandon = False  # on_connect failed: drop this connection and connect again
        self._drop_logged = float("-inf")
        self._v5 = cfg.protocol == "5"
        self.client = _Client(
            CallbackAPIVersion.VERSION2, client_id=client_id,
            protocol=mqtt.MQTTv5 if self._v5 else mqtt.MQTTv311,
            clean_session=None if self._v5 else False,
        )
        self.client.max_inbound = MAX_INBOUND
        self.client.max_inflight_messages_set(0)  # unlimited: the forwarder bounds what is outstanding
        self.client.max_queued_messages_set(0)
        self.client.will_set(status_topic, will, qos=1, retain=True)
        # paho would catch these too (suppress_exceptions), but only log one line: ours count them, log
        # the traceback, and a failed on_connect drops the connection instead of leaving it half set up
        self.client.on_connect = self._safe(self._cb_connect, abandon=True)
        self.client.on_disconnect = self._safe(self._cb_disconnect)
        self.client.on_publish = self._safe(self._cb_publish)
        self.client.on_message = self._safe(self._cb_message)
        # paho formats every debug line when on_log is set; a logger that only passes errors costs
        # one level check per line instead (errors reach the log and the status as before)
        self.client.enable_logger(_PahoErrors(self._error))
        # With a write-interest callback set, paho queues packets instead of writing each one at once;
        # the network thread writes them after every burst (loop_write).
        self.client.on_socket_register_write = lambda client, userdata, sock: None
        self.client.suppress_exceptions = True

    @property
    def connected(self) -> bool:
        """Session up (after the CONNACK) and a network thread alive to serve it."""
        t = self._thread
        return self._up and not self._died and t is not None and t.is_alive()

    # --- lifecycle ----------------------------------------------------------------------------

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
                if self._stopping.is_set():
                    break  # the disconnect() queued by stop() runs in _finish
                if self._up:  # paho did not report it (e.g. a refused CONNACK, or the error above)
                    self._went_down("connection lost")
            self._flush_acks()
            if self._stopping.is_set():
                break
            delay = backoff_delay(self._attempt, self.cfg.reconnect_min_s, self.cfg.reconnect_max_s)
            self._attempt += 1
            log.debug("reconnecting in %.2f s (attempt %d)", delay, self._attempt)
            self._stopping.wait(delay)

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
            if self._up and self._submitted:
                self._publish_submitted()
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
        """Network thread, session up: give queued messages to paho, oldest first, then write them.

        A message paho raises on (invalid topic, payload too large or of a wrong type) is acknowledged
        as rejected with the matching MQTT 5 reason code: the forwarder drops it for good rather than
        resending it, and the rest of the burst goes out."""
        c = self.client
        sub = self._submitted
        unacked = self._unacked
        mid_token = self._mid_token
        queued = c._out_packet  # noqa: SLF001 - paho's packet deque, see _coalesce
        before = len(queued)
        with self._lock:
            while sub:
                token, topic, payload, retain = sub.popleft()
                try:
                    info = c.publish(topic, payload, qos=1, retain=retain)
                except (ValueError, TypeError) as exc:
                    reason = _TOPIC_INVALID if topic_problem(topic) else _PAYLOAD_INVALID
                    self._reject(token, reason, f"publish on {str(topic)[:64]!r} refused: {exc}")
                    continue
                unacked[token] = (topic, payload, retain)
                mid_token[info.mid] = token
                if info.rc not in (_OK, MQTTErrorCode.MQTT_ERR_NO_CONN):  # e.g. a mid still in use: resent
                    log.error("publish refused by paho: %s", mqtt.error_string(info.rc))
        _coalesce(queued, before)
        c.loop_write()
        self._flush_acks()

    def _reject(self, token: int, reason: int, text: str) -> None:
        """Network thread, under ``_lock``: ``token`` will never be sent; tell the forwarder so."""
        if reason == _TOPIC_INVALID:
            self.refused_topics += 1
        log.error("%s", text)
        self._acks.append((token, reason))

    def _error(self, text: str) -> None:
        if text != self.last_error:
            log.warning("%s", text)
        self.last_error = text

    def publish(self, topic: str, payload: bytes, retain: bool = False) -> int:
        """Queue a QoS 1 publish (any thread); return its token (the ack arrives via ``on_ack``).

        Sent in the order of the calls, while the session is up; kept and sent again on every
        reconnect until the broker acknowledges it (or the process ends). Raises :class:`TopicError`
        for a topic MQTT cannot carry (paho would raise on the network thread)."""
        problem = topic_problem(topic)
        if problem:
            self.refused_topics += 1
            shown = str(topic)
            raise TopicError(f"{problem}: {shown[:64]!r}{'...' if len(shown) > 64 else ''}")
        token = next(self._tokens)
        self._submitted.append((token, topic, bytes(payload), retain))
        self._wake()
        return token

    def publish_many(self, items: list[tuple[str, bytes]]) -> list[int]:
        """:meth:`publish` for a burst (not retained), one wake-up of the network thread."""
        tokens = []
        sub = self._submitted
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
        self._call(self.client.disconnect)

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

    def _went_down(self, reason: str) -> None:
        was, self._up = self._up, False
        if was:
            self.disconnects += 1
            self.last_error = f"disconnected: {reason}"
            if self._leaving:
                log.info("disconnected from broker (stopping): %s", reason)
            else:
                log.warning("disconnected from broker: %s", reason)
            self._post(self._on_state, False)

    def _cb_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            self._error(f"broker refused connection: {reason_code}")
            return
        # Take the resend over from paho (before its own resend, which runs after this callback):
        # every message not acknowledged goes again, oldest first, before anything new.
        client.drop_out_messages()
        birth = self._guarded("birth message", self._birth)
        if birth is not None:
            self._guarded("birth publish", client.publish, self.status_topic, birth, qos=1, retain=True)
        with self._lock:
            self._mid_token.clear()
            for token, (topic, payload, retain) in self._unacked.items():
                self._mid_token[client.publish(topic, payload, qos=1, retain=retain).mid] = token
        for topic in self._subscriptions:
            client.subscribe(topic, qos=1)
        self._up = True
        self.connects += 1
        self._attempt = 0
        self.last_error = ""
        log.info("connected to %s:%d (session present: %s, resending %d)", self.cfg.host, self.cfg.port,
                 flags.session_present, len(self._unacked))
        self._post(self._on_state, True)

    def _cb_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        self._went_down(str(reason_code))

    def _cb_publish(self, client, userdata, mid, reason_code, properties) -> None:
        token = self._mid_token.pop(mid, None)
        if token is None:  # the birth message
            return
        rc = reason_code.value if reason_code.is_failure else 0
        with self._lock:
            self._unacked.pop(token, None)
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
        self._post(self._on_message, topic, payload if type(payload) is bytes else bytes(payload))

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


def _coalesce(queued: deque, start: int) -> None:
    """Merge the QoS 1 PUBLISH packets paho just queued (``queued[start:]``) into one write.

    paho 2.2 writes each queued packet with its own ``send()``; for a burst that is one system call
    per message. Its writer does nothing per packet for QoS 1 PUBLISH once written (acks come with
    PUBACK), so the same bytes as one entry go out identically, in one call. Only packets that were
    queued by our own publish() calls just now, untouched (pos 0), are merged; otherwise nothing."""
    n = len(queued) - start
    if n < 2:
        return
    tail = [queued[i] for i in range(start, len(queued))]
    for p in tail:
        if (p.get("command", 0) & 0xF0) != 0x30 or p.get("qos") != 1 or p.get("pos") != 0:
            return
    buf = bytearray().join(p["packet"] for p in tail)
    for _ in range(n):
        queued.pop()
    queued.append({**tail[-1], "pos": 0, "to_process": len(buf), "packet": buf})


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
