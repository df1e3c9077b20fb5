"""The Prometheus endpoint is bounded (security review 19 #2): prometheus_client's threaded server kept
every idle connection open with a thread of its own, and 1,015 of them took all 1,024 descriptors of the
daemon (the MQTT reconnect failed with EMFILE, the control socket stopped accepting)."""

from __future__ import annotations

import asyncio
import socket
import threading
import urllib.request

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

from edge_gateway import control, metrics
from edge_gateway.metrics import PrometheusEndpoint, _collector
from support import GatewayProcess, free_port, wait_for
from uplink_support import gateway_config, until

DOC = {"gateway": "gw", "uptime_s": 5, "link": "up", "queue": {"depth": 3, "oldest_age_s": 1.5},
       "counts": {"aggregates": 7}, "sensors": {"air-1": {"rate_per_s": 2.0, "readings": 40, "last_values": {
           "pm25": {"value": 12.5, "unit": "ug/m3"}}}}, "reload": {"ok": 1, "failed": 0}}


def expected_text() -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_collector(lambda: DOC))
    return generate_latest(registry)


def get(port: int, path: str = "/metrics"):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
        return r.status, r.headers.get("Content-Type"), r.read()


def read_all(s: socket.socket) -> bytes:
    s.settimeout(10)
    out = b""
    while chunk := s.recv(4096):
        out += chunk
    return out


async def test_connections_over_the_cap_get_a_503_and_are_closed_without_a_thread(monkeypatch):
    monkeypatch.setattr(metrics, "HTTP_READ_TIMEOUT_S", 1e6)  # idle connections stay: only the cap frees none
    ep = PrometheusEndpoint(0, lambda: DOC)
    await ep.start()
    idle: list[socket.socket] = []
    try:
        assert await asyncio.to_thread(get, ep.port) == (200, CONTENT_TYPE_PLAIN_0_0_4, expected_text())
        before = set(threading.enumerate())  # other tests of this worker may have left threads
        idle = [socket.create_connection(("127.0.0.1", ep.port)) for _ in range(metrics.HTTP_MAX_CLIENTS)]
        await until(lambda: ep.clients == metrics.HTTP_MAX_CLIENTS, 5, "the idle connections accepted")
        extra = 25
        for _ in range(extra):
            with socket.create_connection(("127.0.0.1", ep.port)) as s:
                s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
                answer = await asyncio.to_thread(read_all, s)
            assert answer.startswith(b"HTTP/1.0 503 Service Unavailable\r\n") and answer.endswith(b"too many clients\r\n")
        assert (ep.refused, ep.clients, ep.served) == (extra, metrics.HTTP_MAX_CLIENTS, 1)
        new = [t.name for t in set(threading.enumerate()) - before if not t.name.startswith("asyncio_")]
        assert new == []  # served on the event loop: no thread per connection
        for s in idle:
            s.close()
        await until(lambda: ep.clients == 0, 5, "the idle connections gone")
        assert await asyncio.to_thread(get, ep.port) == (200, CONTENT_TYPE_PLAIN_0_0_4, expected_text())
        assert (ep.refused, ep.served, ep.timeouts) == (extra, 2, 0)
    finally:
        for s in idle:
            s.close()
        await ep.stop()


async def test_a_connection_that_sends_no_request_is_closed_after_the_read_timeout(monkeypatch):
    monkeypatch.setattr(metrics, "HTTP_READ_TIMEOUT_S", 0.3)
    ep = PrometheusEndpoint(0, lambda: DOC)
    await ep.start()
    idle: list[socket.socket] = []
    try:
        idle = [socket.create_connection(("127.0.0.1", ep.port)) for _ in range(metrics.HTTP_MAX_CLIENTS)]
        idle[0].sendall(b"GET /metrics HTTP/1.1\r\n")  # an unfinished head: the same
        await until(lambda: ep.timeouts == metrics.HTTP_MAX_CLIENTS, 10, "every idle connection timed out")
        assert ep.clients == 0 and ep.refused == 0
        assert [await asyncio.to_thread(read_all, s) for s in idle] == [b""] * len(idle)  # closed by the server
        assert await asyncio.to_thread(get, ep.port) == (200, CONTENT_TYPE_PLAIN_0_0_4, expected_text())
    finally:
        for s in idle:
            s.close()
        await ep.stop()


def test_the_daemon_keeps_its_link_and_control_socket_while_its_prometheus_port_is_flooded(broker, tmp_path):
    """The review's case, smaller: many idle connections on the Prometheus port of the real daemon. Each
    is either refused at once or closed at the read timeout (5 s); the control socket answers, the link
    stays up, and the metrics are served again afterwards."""
    prom = free_port()
    cfg = gateway_config(tmp_path, broker.port, "prom-gw", sensors="sensors: []")
    cfg.write_text(cfg.read_text() + f"metrics: {{prometheus_port: {prom}}}\n")
    gw = GatewayProcess(cfg, tmp_path / "gateway.log").start()
    sock = tmp_path / "state" / "control.sock"
    conns: list[socket.socket] = []
    n = 200
    try:
        gw.wait_ready()
        wait_for(lambda: "connected to" in gw.log_text(), 10, what="gateway connected")
        conns = [socket.create_connection(("127.0.0.1", prom), timeout=5) for _ in range(n)]
        s = control.request(sock, {"cmd": "status"})["status"]
        assert s["link"] == "up" and s["prometheus"]["clients"] <= metrics.HTTP_MAX_CLIENTS
        wait_for(lambda: (lambda p: p["refused"] + p["timeouts"] == n and p["clients"] == 0)(
            control.request(sock, {"cmd": "status"})["status"]["prometheus"]), 30, 0.2, "every connection settled")
        status, ctype, body = get(prom)
        assert (status, ctype) == (200, CONTENT_TYPE_PLAIN_0_0_4) and b'edge_gateway_link_up{gateway="prom-gw"} 1.0' in body
        s = control.request(sock, {"cmd": "status"})["status"]
        assert s["link"] == "up" and s["uplink"]["connects"] == 1 and s["prometheus"]["accept_errors"] == 0
        assert s["prometheus"]["served"] == 1
    finally:
        for c in conns:
            c.close()
        rc = gw.stop()
    assert rc == 0
