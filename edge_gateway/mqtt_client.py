"""Our subclass of paho's client, and what the PUBACK reason codes it reports mean.

paho 2.x as it is cannot carry the uplink (docs/uplink.md, "Refusals"): on a PUBACK reason code its
table does not list for PUBACK (0x95, what Mosquitto's ``message_size_limit`` answers) it raises
MalformedPacket and drops the connection, so one refused message went out again first on every
reconnect, forever; it builds new objects for every plain PUBACK; it keeps the whole of an oversized
MQTT 3.1.1 PUBLISH; and it refuses a second TLS context. :class:`Client` changes those in paho 2.x
internals, and :func:`coalesce` merges a burst of queued PUBLISH packets into one write. That is why
this module is apart: everything that depends on paho's internals is here, where
tests/test_uplink_refusals.py pins them (setup.cfg pins ``paho-mqtt>=2.0,<3``).

Not here: connecting, reconnecting, the order of messages and what a refusal costs the link
(uplink.py, whose network thread is the only caller of this client), nor what the forwarder does
about a refusal (forwarder.py, ``refusal_kind``).
"""

from __future__ import annotations

import functools
import ssl
from collections import deque

import paho.mqtt.client as mqtt
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from .config import MAX_TOPIC

# Not an MQTT code (those are one byte): the link refused a message the broker closed connections on.
POISON = 0x100
TOPIC_INVALID, TOO_LARGE, PAYLOAD_INVALID = 0x90, 0x95, 0x99  # MQTT 5 reason codes, in PERMANENT_REJECTS
# PUBACK reason codes that a resend can never fix (the message itself is refused): MQTT 5's topic name
# invalid, packet too large, payload format invalid, and the link's own POISON.
PERMANENT_REJECTS = frozenset({TOPIC_INVALID, TOO_LARGE, PAYLOAD_INVALID, POISON})

# PUBACK codes paho 2.2's table names; it raises MalformedPacket on any other (0x95 from Mosquitto)
_PUBACK_CODES = frozenset(c for c, names in ReasonCode.names.items()
                          if any(PacketTypes.PUBACK in kinds for kinds in names.values()))


class _AnyReason(ReasonCode):
    """A reason code paho's table does not list for this packet type: paho 2.2 lists 0x95 (Packet too
    large, what Mosquitto's ``message_size_limit`` answers a PUBLISH with) for CONNACK and DISCONNECT only."""

    def getName(self) -> str:
        names = self.names.get(self.value)
        return next(iter(names)) if names else f"reason 0x{self.value:02X}"


@functools.cache
def puback_reason_name(code: int) -> str:
    """paho's name for a PUBACK reason code ("Quota exceeded"); for 0x95, which paho 2.2 lists for
    CONNACK and DISCONNECT only but Mosquitto and the link answer a PUBLISH with, paho's name for it
    there ("Packet too large"); "" for any other code (:data:`POISON`)."""
    if code in _PUBACK_CODES:
        return ReasonCode(PacketTypes.PUBACK, identifier=code).getName()
    if code == TOO_LARGE:
        return _AnyReason(PacketTypes.PUBACK, identifier=code).getName()
    return ""


class Client(mqtt.Client):
    """paho's client with two shortcuts and one repair, all in paho 2.x internals (setup.cfg pins
    ``paho-mqtt>=2.0,<3``; tests/test_uplink_refusals.py fails if they change).

    :meth:`_handle_pubackcomp`, for PUBACK only: a plain successful one (no properties) reuses one
    ReasonCode and one empty Properties object per reason code instead of building new ones per
    packet (paho 2.2 fills two dozen-entry dicts for each: about a third of the network thread's
    time in a drain). And a PUBACK whose reason code paho's table does not list for PUBACK (0x95
    from Mosquitto's ``message_size_limit``) is a refusal of that message, reported through
    ``on_publish``: paho raises MalformedPacket on it and drops the connection, and the message
    went out again first on every reconnect, forever. Anything else (failure codes paho knows,
    properties with a success, PUBCOMP) goes through paho unchanged; paho still owns the
    connection, the session and its outgoing table, and calls ``on_publish`` as usual.

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

    def _handle_pubackcomp(self, cmd):  # noqa: ANN001 - paho 2.x internal hook
        packet = self._in_packet["packet"]
        n = len(packet)
        if cmd != "PUBACK" or n < 2 or (n > 2 and self._protocol != mqtt.MQTTv5):
            return super()._handle_pubackcomp(cmd)
        code = packet[2] if n >= 3 else 0
        plain = n <= 3 or (n == 4 and not packet[3])
        known = code in _PUBACK_CODES
        if known and (code >= 0x80 or not plain):
            return super()._handle_pubackcomp(cmd)
        props = self._NO_PROPS
        if not plain:  # an unknown failure code with properties (a Reason String, say): keep them if we can
            try:
                props = Properties(PacketTypes.PUBACK)
                props.unpack(packet[3:])
            except Exception:  # noqa: BLE001 - the refusal matters, not its decoration
                props = self._NO_PROPS
        reason = self._REASONS.get(code)
        if reason is None:
            reason = self._REASONS[code] = (ReasonCode if known else _AnyReason)(PacketTypes.PUBACK, identifier=code)
        mid = (packet[0] << 8) | packet[1]
        with self._out_message_mutex:
            if mid in self._out_messages:
                return self._do_on_publish(mid, reason, props)
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


def coalesce(queued: deque, start: int) -> None:
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
