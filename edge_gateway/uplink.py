"""The only module that talks to paho-mqtt: connect, publish, and report acks to asyncio.

paho runs its network loop on its own thread; every callback is handed to the
event loop with ``call_soon_threadsafe``. Acknowledgements are tracked through
``on_publish`` only (see ../shared/RELIABILITY.md: ``publish()`` returns
NO_CONN for messages paho still queues and resends, so retrying on that error
would make duplicates). The status topic carries a retained birth ``online``
and a retained last will ``offline``.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from typing import Callable

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from .config import BrokerSection

log = logging.getLogger(__name__)


class MqttLink:
    """A persistent-session MQTT client whose events arrive on the asyncio loop."""

    def __init__(self, cfg: BrokerSection, client_id: str, status_topic: str,
                 birth: Callable[[], bytes], will: bytes,
                 on_ack: Callable[[int], None], on_state: Callable[[bool], None],
                 credentials: tuple[str, str] | None = None) -> None:
        self.cfg = cfg
        self.status_topic = status_topic
        self._birth = birth
        self._on_ack = on_ack
        self._on_state = on_state
        self._loop: asyncio.AbstractEventLoop | None = None
        self.connected = False
        self.last_error = ""
        v5 = cfg.protocol == "5"
        self._v5 = v5
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id,
            protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
            clean_session=None if v5 else False,
        )
        self.client.max_inflight_messages_set(cfg.max_inflight)
        self.client.max_queued_messages_set(0)
        self.client.reconnect_delay_set(min_delay=1, max_delay=30)
        self.client.will_set(status_topic, will, qos=1, retain=True)
        if credentials:
            self.client.username_pw_set(*credentials)
        if cfg.tls is not None:
            self.client.tls_set(ca_certs=cfg.tls.ca_file, certfile=cfg.tls.cert_file or None,
                                keyfile=cfg.tls.key_file or None, cert_reqs=ssl.CERT_REQUIRED,
                                tls_version=ssl.PROTOCOL_TLS_CLIENT)
            self.client.tls_insecure_set(not cfg.tls.check_hostname)
        self.client.on_connect = self._cb_connect
        self.client.on_disconnect = self._cb_disconnect
        self.client.on_publish = self._cb_publish
        self.client.suppress_exceptions = True

    def start(self) -> None:
        """Connect in the background; paho reconnects by itself with backoff."""
        self._loop = asyncio.get_running_loop()
        kwargs = {}
        if self._v5:
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = self.cfg.session_expiry_s
            kwargs = {"clean_start": False, "properties": props}
        self.client.connect_async(self.cfg.host, self.cfg.port, keepalive=self.cfg.keepalive_s, **kwargs)
        self.client.loop_start()

    def publish(self, topic: str, payload: bytes, retain: bool = False) -> int:
        """Queue a QoS 1 publish; return its message id (the ack arrives via ``on_ack``)."""
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
            raise RuntimeError(f"publish refused: {mqtt.error_string(info.rc)}")
        return info.mid

    async def stop(self, offline_payload: bytes | None = None, timeout: float = 2.0) -> None:
        """Publish ``offline`` (a clean disconnect does not fire the will) and disconnect."""
        if offline_payload is not None and self.connected:
            info = self.client.publish(self.status_topic, offline_payload, qos=1, retain=True)
            deadline = asyncio.get_running_loop().time() + timeout
            while not info.is_published() and self.connected and asyncio.get_running_loop().time() < deadline:
                await asyncio.sleep(0.01)
        self.client.disconnect()
        await asyncio.get_running_loop().run_in_executor(None, self.client.loop_stop)

    def _post(self, fn, *args) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(fn, *args)
            except RuntimeError:
                pass

    def _cb_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            self.last_error = str(reason_code)
            log.warning("broker refused connection: %s", reason_code)
            return
        self.connected = True
        client.publish(self.status_topic, self._birth(), qos=1, retain=True)
        log.info("connected to %s:%d (session present: %s)", self.cfg.host, self.cfg.port,
                 flags.session_present)
        self._post(self._on_state, True)

    def _cb_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        was = self.connected
        self.connected = False
        self.last_error = str(reason_code)
        if was:
            log.warning("disconnected from broker: %s", reason_code)
        self._post(self._on_state, False)

    def _cb_publish(self, client, userdata, mid, reason_code, properties) -> None:
        self._post(self._on_ack, mid)
