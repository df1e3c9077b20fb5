"""A scripted MQTT 5 server that enforces the Receive Maximum it announces, which Mosquitto does not.

MQTT 5.0 §3.3.4: a client with more QoS 1 PUBLISHes unacknowledged than the CONNACK's Receive
Maximum gets DISCONNECT 0x93 (HiveMQ, EMQX). Mosquitto announces 20 by default but tolerates any
number, so only a server of our own shows what the link does with it. Adapted from review 16's
``strict_broker.py``. Loopback only; one thread per connection; :meth:`close` ends them all.
"""

from __future__ import annotations

import socket
import threading
import time


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        n, b = divmod(n, 128)
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


class StrictBroker:
    def __init__(self, receive_maximum: int = 20, ack_delay: float = 0.03) -> None:
        self.receive_maximum = receive_maximum  # read at each CONNECT: a test may lower it between connections
        self.ack_delay = ack_delay
        self.hold = threading.Event()  # while set, PUBACKs wait: messages stay outstanding
        self.refusals: dict[str, bytes] = {}  # topic -> what its PUBACKs carry after the packet id
        self.connections = 0
        self.exceeded = 0  # DISCONNECT 0x93 sent
        self.max_outstanding = 0
        self.acked: list[tuple[str, bytes]] = []  # (topic, payload) acknowledged, in order
        self._conns: list[socket.socket] = []
        self._stop = False
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(8)
        self.listener.settimeout(0.2)
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, name="strict-broker", daemon=True).start()

    def _accept(self) -> None:
        while not self._stop:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                continue
            self.connections += 1
            self._conns.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def drop(self) -> None:
        """Close every open connection (the client reconnects)."""
        for c in self._conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self) -> None:
        self._stop = True
        self.drop()
        self.listener.close()

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(0.2)
        pending: list[tuple[float, bytes, tuple[str, bytes]]] = []  # (due, packet id, (topic, payload))
        lock = threading.Lock()
        alive = [True]

        def acker() -> None:
            while alive[0] and not self._stop:
                now = time.monotonic()
                with lock:
                    due = [] if self.hold.is_set() else [p for p in pending if p[0] <= now]
                    for p in due:
                        pending.remove(p)
                        tail = p[1] + self.refusals.get(p[2][0], b"")
                        try:
                            conn.sendall(b"\x40" + _varint(len(tail)) + tail)
                        except OSError:
                            return
                        self.acked.append(p[2])
                time.sleep(0.005)

        threading.Thread(target=acker, daemon=True).start()
        reader = _Reader(conn, lambda: self._stop)
        try:
            while True:
                first, body = reader.packet()
                kind = first >> 4
                if kind == 1:  # CONNECT: CONNACK with Receive Maximum
                    props = b"\x21" + self.receive_maximum.to_bytes(2, "big")
                    conn.sendall(b"\x20" + _varint(3 + len(props)) + b"\x00\x00" + _varint(len(props)) + props)
                elif kind == 3 and (first >> 1) & 3 == 1:
                    tlen = int.from_bytes(body[:2], "big")
                    pid = body[2 + tlen:4 + tlen]
                    plen, i, mult = 0, 4 + tlen, 1
                    while True:
                        b = body[i]
                        i += 1
                        plen += (b & 0x7F) * mult
                        mult *= 128
                        if not b & 0x80:
                            break
                    with lock:
                        message = (body[2:2 + tlen].decode(), body[i + plen:])
                        pending.append((time.monotonic() + self.ack_delay, pid, message))
                        self.max_outstanding = max(self.max_outstanding, len(pending))
                        if len(pending) > self.receive_maximum:
                            self.exceeded += 1
                            conn.sendall(b"\xe0\x02\x93\x00")  # DISCONNECT: Receive Maximum exceeded
                            return
                elif kind == 8:  # SUBSCRIBE: granted QoS 1
                    conn.sendall(b"\x90\x04" + body[:2] + b"\x00\x01")
                elif kind == 12:  # PINGREQ
                    conn.sendall(b"\xd0\x00")
                elif kind == 14:  # DISCONNECT
                    return
        except (ConnectionError, OSError, IndexError):
            pass
        finally:
            alive[0] = False
            conn.close()


class _Reader:
    def __init__(self, conn: socket.socket, stopped) -> None:
        self.conn, self.stopped, self.buf = conn, stopped, b""

    def _read(self, n: int) -> bytes:
        while len(self.buf) < n:
            if self.stopped():
                raise ConnectionError("stopped")
            try:
                chunk = self.conn.recv(65536)
            except socket.timeout:
                continue
            if not chunk:
                raise ConnectionError("closed")
            self.buf += chunk
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def packet(self) -> tuple[int, bytes]:
        first = self._read(1)[0]
        n, mult = 0, 1
        while True:
            b = self._read(1)[0]
            n += (b & 0x7F) * mult
            mult *= 128
            if not b & 0x80:
                break
        return first, self._read(n) if n else b""
