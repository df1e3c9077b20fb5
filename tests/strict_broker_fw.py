"""A scripted MQTT 5 server for what Mosquitto does not do: enforce Receive Maximum, refuse with 0x97.

Mosquitto announces a Receive Maximum (its ``max_inflight_messages``, 20 by default) but takes any
number of QoS 1 PUBLISHes, and never answers PUBACK 0x97 (quota exceeded). Cloud brokers do both.
This server does just enough MQTT 5 for ``MqttLink``: CONNACK (with ``ReceiveMaximum`` when given),
SUBACK, PINGRESP, and for each QoS 1 PUBLISH either:

- PUBACK 0x97 at once when its token bucket (``quota_per_s``, at most ``quota_burst`` tokens) is
  empty, or
- PUBACK 0x00 after ``ack_delay`` s (a broker that persists before acknowledging, or a round trip),
  unless the client now has more than ``receive_maximum`` PUBLISHes unacknowledged: then DISCONNECT
  0x93 (Receive Maximum exceeded, MQTT 5.0 §3.3.4) and the connection is closed.

Loopback only, one thread per connection, every thread ended by :meth:`close`. What it saw is in
``events``: (time, what, seq) with what ``pub``, ``ack`` or ``refused`` (seq None for the
status topic).
"""

from __future__ import annotations

import select
import socket
import threading
import time

from edge_gateway.messages import decode


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b, n = n % 128, n // 128
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


class StrictBroker:
    def __init__(self, receive_maximum: int | None = None, ack_delay: float = 0.0,
                 quota_per_s: float = 0.0, quota_burst: int = 0) -> None:
        self.receive_maximum = receive_maximum
        self.ack_delay = ack_delay
        self.quota_per_s = quota_per_s
        self.quota_burst = quota_burst
        self._tokens = float(quota_burst)
        self._refilled = time.monotonic()
        self.connections = 0
        self.disconnects_093 = 0
        self.max_outstanding = 0
        self.events: list[tuple[float, str, int | None]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(8)
        self.port = self.listener.getsockname()[1]
        self._spawn(self._accept, "strict-broker")

    # --- what it saw ------------------------------------------------------------------------

    def seqs(self, what: str) -> list[int]:
        with self._lock:
            return [s for _, w, s in self.events if w == what and s is not None]

    def count(self, what: str) -> int:
        with self._lock:
            return sum(1 for _, w, _ in self.events if w == what)

    # --- server -----------------------------------------------------------------------------

    def _spawn(self, fn, name: str, *args) -> None:
        t = threading.Thread(target=fn, args=args, name=name, daemon=True)
        self._threads.append(t)
        t.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            r, _, _ = select.select([self.listener], [], [], 0.1)
            if not r:
                continue
            try:
                conn, _ = self.listener.accept()
            except OSError:
                continue
            self.connections += 1
            self._spawn(self._serve, "strict-broker-conn", conn)

    def _take_token(self) -> bool:
        if not self.quota_per_s:
            return True
        now = time.monotonic()
        self._tokens = min(float(self.quota_burst), self._tokens + (now - self._refilled) * self.quota_per_s)
        self._refilled = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False

    def _serve(self, conn: socket.socket) -> None:
        buf = bytearray()
        pending: list[tuple[float, int, int | None]] = []  # (due, packet id, seq) acknowledged later
        try:
            while not self._stop.is_set():
                now = time.monotonic()
                while pending and pending[0][0] <= now:
                    _, mid, seq = pending.pop(0)
                    conn.sendall(bytes([0x40, 2]) + mid.to_bytes(2, "big"))
                    self._note("ack", seq)
                wait = max(0.0, min(0.05, pending[0][0] - now)) if pending else 0.05
                r, _, _ = select.select([conn], [], [], wait)
                if not r:
                    continue
                data = conn.recv(65536)
                if not data:
                    return
                buf += data
                while True:
                    packet = _split(buf)
                    if packet is None:
                        break
                    if not self._handle(conn, *packet, pending):
                        return
        except OSError:
            pass
        finally:
            conn.close()

    def _handle(self, conn: socket.socket, first: int, body: bytes, pending: list) -> bool:
        kind = first >> 4
        if kind == 1:  # CONNECT
            props = b"" if self.receive_maximum is None else bytes([0x21]) + self.receive_maximum.to_bytes(2, "big")
            conn.sendall(bytes([0x20]) + _varint(2 + len(_varint(len(props))) + len(props)) + bytes([0, 0])
                         + _varint(len(props)) + props)
        elif kind == 3:
            return self._publish(conn, first, body, pending)
        elif kind == 8:  # SUBSCRIBE: granted QoS 1
            conn.sendall(bytes([0x90, 4]) + body[:2] + bytes([0, 1]))
        elif kind == 12:  # PINGREQ
            conn.sendall(bytes([0xD0, 0]))
        elif kind == 14:  # DISCONNECT
            return False
        return True

    def _publish(self, conn: socket.socket, first: int, body: bytes, pending: list) -> bool:
        qos = (first >> 1) & 3
        tlen = int.from_bytes(body[:2], "big")
        topic = body[2:2 + tlen].decode()
        pos = 2 + tlen
        if not qos:
            return True
        mid = int.from_bytes(body[pos:pos + 2], "big")
        pos += 2
        plen, mult = 0, 1
        while True:
            b = body[pos]
            pos += 1
            plen += (b & 0x7F) * mult
            mult *= 128
            if not b & 0x80:
                break
        seq = int(decode(body[pos + plen:])["seq"]) if ("/agg/" in topic or "/event/" in topic) else None
        self._note("pub", seq)
        if not self._take_token():
            conn.sendall(bytes([0x40, 3]) + mid.to_bytes(2, "big") + bytes([0x97]))
            self._note("refused", seq)
            return True
        pending.append((time.monotonic() + self.ack_delay, mid, seq))
        with self._lock:
            self.max_outstanding = max(self.max_outstanding, len(pending))
        if self.receive_maximum is not None and len(pending) > self.receive_maximum:
            self.disconnects_093 += 1
            conn.sendall(bytes([0xE0, 2, 0x93, 0]))
            return False
        return True

    def _note(self, what: str, seq: int | None) -> None:
        with self._lock:
            self.events.append((time.monotonic(), what, seq))

    def close(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(2.0)
        self.listener.close()


def _split(buf: bytearray) -> tuple[int, bytes] | None:
    """The next whole packet taken off ``buf`` as (first byte, body), or None if it is not all there."""
    n, mult, i = 0, 1, 1
    while True:
        if i >= len(buf):
            return None
        b = buf[i]
        n += (b & 0x7F) * mult
        mult *= 128
        i += 1
        if not b & 0x80:
            break
    if len(buf) < i + n:
        return None
    first, body = buf[0], bytes(buf[i:i + n])
    del buf[:i + n]
    return first, body
