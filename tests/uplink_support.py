"""Helpers for the uplink/fault tests: a TCP proxy the test owns, test certificates, configs, checks.

The proxy sits between the gateway and Mosquitto on loopback. ``cut()`` closes
every connection (a reset link); ``blackhole()`` keeps the sockets but forwards
nothing (a dead link that only the keepalive notices); ``heal()`` restores
forwarding. Everything runs on one thread that ``close()`` ends.
"""

from __future__ import annotations

import asyncio
import selectors
import socket
import sqlite3
import subprocess
import textwrap
import threading
from pathlib import Path

import mqtt_wire as wire
from edge_gateway.messages import merged_seqs
from support import free_port


class TcpProxy:
    def __init__(self, target_port: int, port: int | None = None) -> None:
        self.target = ("127.0.0.1", target_port)
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", port or 0))
        self.listener.listen(16)
        self.listener.setblocking(False)
        self.port = self.listener.getsockname()[1]
        self.sel = selectors.DefaultSelector()
        self.sel.register(self.listener, selectors.EVENT_READ, None)
        self.pairs: dict[socket.socket, socket.socket] = {}
        self.forwarding = True
        self.accepted = 0
        self.sent: list[tuple[int, str, int, bool]] = []  # PUBLISHes gateway -> broker: (conn, topic, seq, dup)
        self._taps: dict[socket.socket, _PublishTap] = {}
        self._lock = threading.Lock()
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="tcp-proxy", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop:
            for key, _ in self.sel.select(0.05):
                with self._lock:
                    if key.data is None:
                        self._accept()
                    elif self.forwarding:
                        self._pump(key.fileobj)
                    else:  # blackholed: stop watching it (bytes pile up unread, as on a dead link)
                        try:
                            self.sel.unregister(key.fileobj)
                        except (KeyError, ValueError):
                            pass

    def _accept(self) -> None:
        try:
            client, _ = self.listener.accept()
        except OSError:
            return
        try:
            upstream = socket.create_connection(self.target, timeout=1)
        except OSError:
            client.close()
            return
        self.accepted += 1
        for s in (client, upstream):
            s.setblocking(False)
        self.pairs[client], self.pairs[upstream] = upstream, client
        self._taps[client] = _PublishTap(self.accepted, self.sent)
        self.sel.register(client, selectors.EVENT_READ, "c")
        self.sel.register(upstream, selectors.EVENT_READ, "u")

    def _pump(self, s: socket.socket) -> None:
        other = self.pairs.get(s)
        if other is None:
            return
        try:
            data = s.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._close_pair(s)
            return
        tap = self._taps.get(s)
        if tap is not None:
            tap.feed(data)
        try:
            other.setblocking(True)
            other.sendall(data)
            other.setblocking(False)
        except OSError:
            self._close_pair(s)

    def _close_pair(self, s: socket.socket) -> None:
        other = self.pairs.pop(s, None)
        for x in (s, other):
            if x is None:
                continue
            self.pairs.pop(x, None)
            self._taps.pop(x, None)
            try:
                self.sel.unregister(x)
            except (KeyError, ValueError):
                pass
            try:
                x.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            except OSError:
                pass
            x.close()

    def cut(self) -> None:
        """Reset every open connection (new ones are still accepted)."""
        with self._lock:
            for s in list(self.pairs):
                self._close_pair(s)

    def blackhole(self) -> None:
        """Stop forwarding bytes; connections stay open until the peers give up."""
        with self._lock:
            self.forwarding = False
            for s in list(self.pairs):
                try:
                    self.sel.unregister(s)
                except (KeyError, ValueError):
                    pass

    def heal(self) -> None:
        """Forward again; connections that were blackholed are reset (their state is stale)."""
        with self._lock:
            for s in list(self.pairs):
                self._close_pair(s)
            self.forwarding = True

    def close(self) -> None:
        self._stop = True
        self._thread.join(2)
        with self._lock:
            for s in list(self.pairs):
                self._close_pair(s)
        self.sel.close()
        self.listener.close()


class _PublishTap:
    """Parses the gateway -> broker byte stream of one connection and records its PUBLISH packets."""

    def __init__(self, conn: int, out: list) -> None:
        self.conn, self.out, self.buf, self.v5 = conn, out, bytearray(), True

    def feed(self, data: bytes) -> None:
        self.buf += data
        while (got := wire.split(self.buf)) is not None:
            try:
                self._packet(*got)
            except Exception:  # noqa: BLE001 - a diagnostic only
                pass

    def _packet(self, first: int, body: bytes) -> None:
        kind = first >> 4
        if kind == 1:  # CONNECT: protocol level tells whether PUBLISH carries properties
            self.v5 = wire.connect_is_v5(body)
        if kind != 3:
            return
        p = wire.parse_publish(first, body, self.v5)
        seq = wire.gateway_seq(p.topic, p.payload)
        if seq is not None:
            self.out.append((self.conn, p.topic, seq, p.dup))


def sent_order_report(proxy: TcpProxy) -> list[tuple[int, str, int, int]]:
    """First transmissions the gateway sent out of order per topic: (connection, topic, after seq, seq)."""
    seen: set[int] = set()
    last: dict[str, int] = {}
    bad = []
    for conn, topic, seq, _dup in list(proxy.sent):
        if seq in seen:
            continue
        seen.add(seq)
        if seq < last.get(topic, 0):
            bad.append((conn, topic, last[topic], seq))
        last[topic] = max(seq, last.get(topic, 0))
    return bad


def gateway_config(tmp_path: Path, port: int, gw_id: str, *, broker_extra: str = "", queue: str = "",
                   sensors: str = "", window: float = 0.2, keepalive: int = 2) -> Path:
    """A gateway config with a serial_line sensor at ``tmp_path/air-1.tty`` (unless ``sensors`` given)."""
    link = tmp_path / "air-1.tty"
    sensors = sensors or f"""
        sensors:
          - id: air-1
            driver: serial_line
            options: {{port: {link}, format: kv, timestamp_field: ts}}"""
    cfg = tmp_path / "gw.yaml"
    cfg.write_text(textwrap.dedent(f"""\
        gateway: {{id: {gw_id}, topic_prefix: city, state_dir: {tmp_path}/state, batch_interval_s: 0.05}}
        broker: {{host: 127.0.0.1, port: {port}, keepalive_s: {keepalive}, reconnect_min_s: 0.1,
                  reconnect_max_s: 0.8{", " + broker_extra if broker_extra else ""}}}
        windows: {{seconds: {window}, grace_s: 0.2}}
        detector: {{threshold: 0.5}}
        """) + (f"queue: {{{queue}}}\n" if queue else "") + textwrap.dedent(sensors) + "\n")
    return cfg


def simulator_args(link: Path, rate: float, count: int, seed: int = 3, t0: float = 1_700_000_000.0) -> list[str]:
    return ["-m", "simulators.serial_line", "--seed", str(seed), "--rate", str(rate), "--count", str(count),
            "--timestamps", "--t0", str(t0), "--link", str(link), "--batch", "5", "--wait-open", "--backpressure"]


def committed_last_seq(db_path: Path) -> int:
    """``meta.last_seq`` read from the queue file (safe after the gateway was killed)."""
    db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=5)
    try:
        row = db.execute("SELECT value FROM meta WHERE key='last_seq'").fetchone()
        return int(row[0]) if row else 0
    finally:
        db.close()


def committed_first_seq(db_path: Path) -> int:
    """The first seq of a queue file: a gateway's new queue starts its seqs from the clock in ms."""
    db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=5)
    try:
        row = db.execute("SELECT value FROM meta WHERE key='first_seq'").fetchone()
        return int(row[0]) if row else 1
    finally:
        db.close()


def seq_report(sub, start: int = 1) -> dict:
    """Per-topic sequence check of what a Subscriber received (seqs from ``start``): gaps, duplicates,
    order of first arrivals."""
    seen: dict[int, int] = {}
    order_ok = True
    disorder: list[tuple[str, int, int]] = []
    last_first: dict[str, int] = {}
    for m in sub.snapshot():
        if "/agg/" not in m.topic and "/event/" not in m.topic:
            continue
        d = m.data
        seqs = merged_seqs(d)
        first = seqs[0] not in seen
        for s in seqs:
            seen[s] = seen.get(s, 0) + 1
        if first:
            if d["seq"] < last_first.get(m.topic, 0):
                order_ok = False
                disorder.append((m.topic, last_first[m.topic], d["seq"]))
            last_first[m.topic] = d["seq"]
    top = max(seen) if seen else 0
    if top - start > 10_000_000:  # a report, not a memory bomb: say what arrived
        raise AssertionError(f"seqs from {start} up to {top}: far apart; lowest seen {sorted(seen)[:5]}")
    return {"seen": seen, "max": top, "missing": [s for s in range(start, top + 1) if s not in seen],
            "duplicates": sum(n - 1 for n in seen.values()), "in_order": order_ok,
            "disorder": disorder}


def make_certs(d: Path) -> dict[str, Path]:
    """A CA, a server cert for 127.0.0.1/localhost, a client cert, and a second (wrong) CA, via openssl."""
    d.mkdir(parents=True, exist_ok=True)

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True, timeout=60)

    for ca in ("ca", "wrong-ca"):
        run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", f"/CN=test {ca}",
            "-keyout", f"{ca}.key", "-out", f"{ca}.crt")
    (d / "server.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    (d / "client.ext").write_text("extendedKeyUsage=clientAuth\n")
    for name, cn in (("server", "localhost"), ("client", "gateway-client")):
        run("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={cn}", "-keyout", f"{name}.key",
            "-out", f"{name}.csr")
        run("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
            "-days", "2", "-extfile", f"{name}.ext", "-out", f"{name}.crt")
    for p in d.glob("*.key"):
        p.chmod(0o600)
    return {n: d / n for n in ("ca.crt", "wrong-ca.crt", "server.crt", "server.key", "client.crt", "client.key")}


def tls_listener(port: int, certs: dict[str, Path]) -> str:
    return "\n".join([f"listener {port} 127.0.0.1", f"cafile {certs['ca.crt']}",
                      f"certfile {certs['server.crt']}", f"keyfile {certs['server.key']}",
                      "require_certificate true", "use_identity_as_username true"])


__all__ = ["TcpProxy", "sent_order_report", "gateway_config", "simulator_args", "committed_first_seq", "committed_last_seq", "seq_report", "make_certs",
           "tls_listener", "free_port"]


async def until(pred, timeout: float, what: str) -> None:
    """Poll ``pred`` on the running loop; AssertionError naming ``what`` after ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not pred():
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.02)
