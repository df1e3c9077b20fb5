"""MQTT wire framing for the tests' scripted servers and taps: one parser, so that they all read the same bytes.

Just what the tests need (MQTT 5.0 §2 and §3; 3.1.1 where it differs): the Variable Byte Integer,
one packet taken off a buffer or a socket, a PUBLISH's fields, and the server packets the scripted
servers answer with.
"""

from __future__ import annotations

import socket
from typing import NamedTuple

from edge_gateway.messages import decode

PINGRESP = b"\xd0\x00"


def varint(n: int) -> bytes:
    """``n`` as an MQTT Variable Byte Integer (remaining lengths, property lengths)."""
    out = bytearray()
    while True:
        n, b = divmod(n, 128)
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def read_varint(buf, pos: int) -> tuple[int, int] | None:
    """The Variable Byte Integer at ``buf[pos:]`` and the position after it; None if ``buf`` ends first."""
    n, mult = 0, 1
    while pos < len(buf):
        b = buf[pos]
        pos += 1
        n += (b & 0x7F) * mult
        mult *= 128
        if not b & 0x80:
            return n, pos
    return None


def packet(first: int, body: bytes = b"") -> bytes:
    return bytes([first]) + varint(len(body)) + body


def split(buf: bytearray) -> tuple[int, bytes] | None:
    """The next whole packet taken off ``buf`` as (first byte, body); None (``buf`` untouched) if it is not all there."""
    got = read_varint(buf, 1)
    if got is None or len(buf) < got[1] + got[0]:
        return None
    n, start = got
    first, body = buf[0], bytes(buf[start:start + n])
    del buf[:start + n]
    return first, body


class SocketReader:
    """Whole packets off a blocking socket; its timeout, if any, raises as usual."""

    def __init__(self, conn: socket.socket) -> None:
        self.conn, self.buf = conn, bytearray()

    def packet(self) -> tuple[int, bytes]:
        while (got := split(self.buf)) is None:
            chunk = self.conn.recv(65536)
            if not chunk:
                raise ConnectionError("closed")
            self.buf += chunk
        return got


class Publish(NamedTuple):
    topic: str
    qos: int
    dup: bool
    mid: int | None  # None at QoS 0
    payload: bytes


def parse_publish(first: int, body: bytes, v5: bool = True) -> Publish:
    """A PUBLISH's fields; under MQTT 5 its properties are skipped."""
    qos = (first >> 1) & 3
    tlen = int.from_bytes(body[:2], "big")
    pos = 2 + tlen
    mid = None
    if qos:
        mid = int.from_bytes(body[pos:pos + 2], "big")
        pos += 2
    if v5:
        plen, pos = read_varint(body, pos)
        pos += plen
    return Publish(body[2:2 + tlen].decode(), qos, bool(first & 0x08), mid, body[pos:])


def connect_is_v5(body: bytes) -> bool:
    """Whether a CONNECT asks for MQTT 5 (protocol level 5): then PUBLISHes carry properties."""
    name_len = int.from_bytes(body[:2], "big")
    return body[2 + name_len] == 5


def gateway_seq(topic: str, payload: bytes) -> int | None:
    """The gateway's seq of an aggregate or event message; None for the others (status)."""
    return int(decode(payload)["seq"]) if ("/agg/" in topic or "/event/" in topic) else None


def connack(receive_maximum: int | None = None) -> bytes:
    """CONNACK (MQTT 5): session not present, success, with a Receive Maximum when given."""
    props = b"" if receive_maximum is None else b"\x21" + receive_maximum.to_bytes(2, "big")
    return packet(0x20, b"\x00\x00" + varint(len(props)) + props)


def puback(mid: int, tail: bytes = b"") -> bytes:
    """PUBACK; ``tail`` is what follows the packet id (reason code, properties), none for success."""
    return packet(0x40, mid.to_bytes(2, "big") + tail)


def suback(pid: bytes, granted: int = 1) -> bytes:
    """SUBACK (MQTT 5) granting one filter ``granted`` QoS; ``pid`` as the SUBSCRIBE carried it."""
    return packet(0x90, pid + b"\x00" + bytes([granted]))


def disconnect(reason: int) -> bytes:
    """DISCONNECT (MQTT 5) with a reason code and no properties."""
    return packet(0xE0, bytes([reason, 0]))
