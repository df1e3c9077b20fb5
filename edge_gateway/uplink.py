"""The only module that talks to paho-mqtt: connect, publish, subscribe, report acks to asyncio.

The network loop runs on a thread of ours (not ``loop_start``), so that
reconnects back off exponentially *with jitter* (paho's own backoff has none:
a street of gateways behind one failed uplink would reconnect in lockstep),
credentials are read from the secrets file at each connect (never held in
config objects), and TLS/connection errors reach the log and the status.

Every callback is handed to the event loop with ``call_soon_threadsafe``.
Acknowledgements are tracked through ``on_publish`` only (see
/work/shared/RELIABILITY.md: ``publish()`` returns NO_CONN for messages paho
still queues and resends). paho 2.2 keeps un-acknowledged QoS 1 messages in
memory and resends them on *every* reconnect of the same client object, whether
or not the broker kept the session (MQTT 5 and 3.1.1 alike);
:meth:`MqttLink.pending_mids` lets the forwarder check that instead of trusting it.

The status topic carries a retained birth ``online`` and a retained last will ``offline``.
"""

from __future__ import annotations

import asyncio
import logging
import random
import ssl
import threading
from typing import Callable

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from .config import BrokerSection

log = logging.getLogger(__name__)

# MQTT 5 PUBACK reason codes that a resend can never fix (the message itself is refused).
PERMANENT_REJECTS = frozenset({0x90, 0x95, 0x99})  # topic name invalid, packet too large, payload format invalid


def backoff_delay(attempt: int, lo: float, hi: float, rand: Callable[[], float] = random.random) -> float:
    """Exponential backoff with jitter: ``min(hi, lo * 2**attempt)`` scaled by a random 0.5..1."""
    return min(hi, lo * (2 ** min(attempt, 30))) * (0.5 + 0.5 * rand())


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
        self._tls_ready = False
        self._attempt = 0
        self._acks: list[tuple[int, int]] = []
        self._acks_lock = threading.Lock()
        self.connected = False
        self.last_error = ""
        self.connects = 0
        self.disconnects = 0
        self._v5 = cfg.protocol == "5"
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id,
            protocol=mqtt.MQTTv5 if self._v5 else mqtt.MQTTv311,
            clean_session=None if self._v5 else False,
        )
        self.client.max_inflight_messages_set(cfg.max_inflight)
        self.client.max_queued_messages_set(0)
        self.client.will_set(status_topic, will, qos=1, retain=True)
        self.client.on_connect = self._cb_connect
        self.client.on_disconnect = self._cb_disconnect
        self.client.on_publish = self._cb_publish
        self.client.on_message = self._cb_message
        self.client.on_log = self._cb_log
        self.client.suppress_exceptions = True

    # --- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        """Connect in the background; reconnect with jittered exponential backoff until stopped."""
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._run, name="mqtt", daemon=True)
        self._thread.start()

    def _prepare(self) -> None:
        """TLS context and credentials, (re)read at connect time; raises on a bad file."""
        if self.cfg.tls is not None and not self._tls_ready:
            t = self.cfg.tls
            ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=t.ca_file)
            if t.cert_file:
                ctx.load_cert_chain(t.cert_file, t.key_file)
            ctx.check_hostname = t.check_hostname
            self.client.tls_set_context(ctx)
            self._tls_ready = True
        if self._credentials is not None:
            cred = self._credentials()
            if cred:
                self.client.username_pw_set(*cred)

    def _connect(self) -> None:
        kwargs = {}
        if self._v5:
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = self.cfg.session_expiry_s
            kwargs = {"clean_start": False, "properties": props}
        self.client.connect(self.cfg.host, self.cfg.port, keepalive=self.cfg.keepalive_s, **kwargs)

    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                self._prepare()
                self._connect()
            except Exception as exc:  # OSError, ssl.SSLError, SecretsError, bad cert files...
                self._error(f"connect to {self.cfg.host}:{self.cfg.port} failed: {exc}")
            else:
                while not self._stopping.is_set():
                    rc = self.client.loop(timeout=0.5)
                    if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                        break
                if self.connected:  # paho did not report it (e.g. a refused CONNACK)
                    self._cb_disconnect(self.client, None, None, "connection lost", None)
            if self._stopping.is_set():
                break
            delay = backoff_delay(self._attempt, self.cfg.reconnect_min_s, self.cfg.reconnect_max_s)
            self._attempt += 1
            log.debug("reconnecting in %.2f s (attempt %d)", delay, self._attempt)
            self._stopping.wait(delay)

    def _error(self, text: str) -> None:
        if text != self.last_error:
            log.warning("%s", text)
        self.last_error = text

    def publish(self, topic: str, payload: bytes, retain: bool = False) -> int:
        """Queue a QoS 1 publish; return its message id (the ack arrives via ``on_ack``)."""
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
            raise RuntimeError(f"publish refused: {mqtt.error_string(info.rc)}")
        return info.mid

    def pending_mids(self) -> set[int] | None:
        """Message ids paho still holds (and will resend on reconnect); None if it cannot tell."""
        try:
            with self.client._out_message_mutex:  # noqa: SLF001 - the one place that looks inside paho
                held = set(self.client._out_messages)  # noqa: SLF001
                with self._acks_lock:  # acknowledged, not yet handed to the event loop: not lost
                    held.update(mid for mid, _ in self._acks)
                return held
        except AttributeError:
            return None

    def kick(self) -> None:
        """Drop the connection so that it reconnects and paho resends what is un-acknowledged."""
        log.warning("forcing a reconnect (acknowledgements stalled)")
        self.client.disconnect()

    async def stop(self, offline_payload: bytes | None = None, timeout: float = 2.0) -> None:
        """Publish ``offline`` (a clean disconnect does not fire the will) and disconnect."""
        loop = asyncio.get_running_loop()
        if offline_payload is not None and self.connected:
            info = self.client.publish(self.status_topic, offline_payload, qos=1, retain=True)
            deadline = loop.time() + timeout
            while self.connected and loop.time() < deadline:
                try:
                    if info.is_published():
                        break
                except RuntimeError:
                    break
                await asyncio.sleep(0.01)
        self._stopping.set()
        self.client.disconnect()
        if self._thread is not None:
            await loop.run_in_executor(None, self._thread.join, 5.0)

    # --- paho callbacks (network thread) ------------------------------------------------------

    def _post(self, fn, *args) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(fn, *args)
            except RuntimeError:
                pass

    def _cb_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            self._error(f"broker refused connection: {reason_code}")
            return
        self.connected = True
        self.connects += 1
        self._attempt = 0
        self.last_error = ""
        client.publish(self.status_topic, self._birth(), qos=1, retain=True)
        for topic in self._subscriptions:
            client.subscribe(topic, qos=1)
        log.info("connected to %s:%d (session present: %s)", self.cfg.host, self.cfg.port,
                 flags.session_present)
        self._post(self._on_state, True)

    def _cb_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        was = self.connected
        self.connected = False
        if was:
            self.disconnects += 1
            self.last_error = f"disconnected: {reason_code}"
            log.warning("disconnected from broker: %s", reason_code)
            self._post(self._on_state, False)

    def _cb_publish(self, client, userdata, mid, reason_code, properties) -> None:
        rc = getattr(reason_code, "value", 0) if getattr(reason_code, "is_failure", False) else 0
        with self._acks_lock:  # acks are handed over in bursts: one loop wake-up per burst
            self._acks.append((mid, rc))
            if len(self._acks) > 1:
                return
        self._post(self._deliver_acks)

    def _deliver_acks(self) -> None:
        with self._acks_lock:
            acks, self._acks = self._acks, []
        for mid, rc in acks:
            self._on_ack(mid, rc)

    def _cb_message(self, client, userdata, msg) -> None:
        if self._on_message is not None:
            self._post(self._on_message, msg.topic, bytes(msg.payload))

    def _cb_log(self, client, userdata, level, buf) -> None:
        if level == mqtt.MQTT_LOG_ERR:
            self._error(f"mqtt: {buf}")
