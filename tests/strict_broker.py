"""A scripted MQTT 5 server for what Mosquitto does not do: enforce Receive Maximum, refuse with 0x97 or any code.

Mosquitto announces a Receive Maximum (its ``max_inflight_messages``, 20 by default) but takes any
number of QoS 1 PUBLISHes, never answers PUBACK 0x97 (quota exceeded) and cannot be made to send
an arbitrary reason code. Cloud brokers (HiveMQ, EMQX) do. This server does just enough MQTT 5 for
``MqttLink``: CONNACK (with ``ReceiveMaximum`` when given), SUBACK, PINGRESP, and for each QoS 1
PUBLISH either:

- PUBACK with ``refusals[topic]`` (reason code and properties) at once, for a topic the test refuses;
- PUBACK 0x97 at once when its token bucket (``quota_per_s``, at most ``quota_burst`` tokens) is
  empty; or
- PUBACK 0x00 after ``ack_delay`` s (a broker that persists before acknowledging, or a round trip),
  and not while ``hold`` is set, unless the client now has more PUBLISHes unacknowledged than this
  connection's CONNACK announced: then DISCONNECT 0x93 (Receive Maximum exceeded, MQTT 5.0 §3.3.4)
  and the connection is closed.

``receive_maximum`` is read at each CONNECT: a test may lower it between connections. Loopback only,
one thread per connection, every thread ended by :meth:`close`. What it saw is in ``events``:
(time, what, seq) with what ``pub``, ``ack`` or ``refused`` (seq None for the status topic).
"""

from __future__ import annotations

import select
import socket
import threading
import time

import mqtt_wire as wire


class StrictBroker:
    def __init__(self, receive_maximum: int | None = None, ack_delay: float = 0.0,
                 quota_per_s: float = 0.0, quota_burst: int = 0) -> None:
        self.receive_maximum = receive_maximum
        self.ack_delay = ack_delay
        self.quota_per_s = quota_per_s
        self.quota_burst = quota_burst
        self.hold = threading.Event()  # while set, PUBACKs 0x00 wait: messages stay outstanding
        self.refusals: dict[str, bytes] = {}  # topic -> what its PUBACKs carry after the packet id
        self._tokens = float(quota_burst)
        self._refilled = time.monotonic()
        self.connections = 0
        self.disconnects_093 = 0
        self.max_outstanding = 0
        self.events: list[tuple[float, str, int | None]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._conns: list[socket.socket] = []
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

    # --- what the test does -----------------------------------------------------------------

    def drop(self) -> None:
        """Close every open connection (the client reconnects)."""
        for c in list(self._conns):
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(2.0)
        self.listener.close()

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
            self._conns.append(conn)
            self._spawn(_Connection(self, conn).serve, "strict-broker-conn")

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

    def _note(self, what: str, seq: int | None) -> None:
        with self._lock:
            self.events.append((time.monotonic(), what, seq))


class _Connection:
    """One client connection: its packets, and its PUBLISHes not yet acknowledged."""

    def __init__(self, server: StrictBroker, conn: socket.socket) -> None:
        self.server, self.conn = server, conn
        self.announced: int | None = None  # the Receive Maximum this connection's CONNACK gave
        self.pending: list[tuple[float, int, int | None]] = []  # (due, packet id, seq)

    def serve(self) -> None:
        s, buf = self.server, bytearray()
        try:
            while not s._stop.is_set():
                now = time.monotonic()
                while self.pending and self.pending[0][0] <= now and not s.hold.is_set():
                    _, mid, seq = self.pending.pop(0)
                    self.conn.sendall(wire.puback(mid))
                    s._note("ack", seq)
                if s.hold.is_set():
                    wait = 0.01  # notice its release soon
                else:
                    wait = max(0.0, min(0.05, self.pending[0][0] - now)) if self.pending else 0.05
                r, _, _ = select.select([self.conn], [], [], wait)
                if not r:
                    continue
                data = self.conn.recv(65536)
                if not data:
                    return
                buf += data
                while (got := wire.split(buf)) is not None:
                    if not self._handle(*got):
                        return
        except OSError:
            pass
        finally:
            self.conn.close()

    def _handle(self, first: int, body: bytes) -> bool:
        """Answer one packet; False when the connection is to close."""
        kind = first >> 4
        if kind == 1:  # CONNECT
            self.announced = self.server.receive_maximum
            self.conn.sendall(wire.connack(self.announced))
        elif kind == 3:
            return self._publish(wire.parse_publish(first, body))
        elif kind == 8:  # SUBSCRIBE: granted QoS 1
            self.conn.sendall(wire.suback(body[:2]))
        elif kind == 12:  # PINGREQ
            self.conn.sendall(wire.PINGRESP)
        elif kind == 14:  # DISCONNECT
            return False
        return True

    def _publish(self, p: wire.Publish) -> bool:
        s = self.server
        if not p.qos:
            return True
        seq = wire.gateway_seq(p.topic, p.payload)
        s._note("pub", seq)
        refusal = s.refusals.get(p.topic) or (None if s._take_token() else b"\x97")
        if refusal is not None:
            self.conn.sendall(wire.puback(p.mid, refusal))
            s._note("refused", seq)
            return True
        self.pending.append((time.monotonic() + s.ack_delay, p.mid, seq))
        with s._lock:
            s.max_outstanding = max(s.max_outstanding, len(self.pending))
        if self.announced is not None and len(self.pending) > self.announced:
            s.disconnects_093 += 1
            self.conn.sendall(wire.disconnect(0x93))
            return False
        return True
