"""Helpers for the operations tests (CLI, control socket, reload, service): run the CLI, write configs."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import msgpack
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from support import REPO, free_port, wait_for


def cli(*args, env: dict | None = None, timeout: float = 60, input: str | None = None) -> subprocess.CompletedProcess:
    """``python -m edge_gateway ARGS`` as a subprocess; returns the completed process (text)."""
    return subprocess.run([sys.executable, "-m", "edge_gateway", *map(str, args)], cwd=REPO, text=True,
                          capture_output=True, timeout=timeout, input=input,
                          env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})


def write_config(tmp_path: Path, *, broker_port: int | None = None, sensors: str = "", extra: str = "",
                 name: str = "gw.yaml", gw_id: str = "ops-gw") -> Path:
    """A small gateway config in ``tmp_path`` (broker on a dead port unless given)."""
    port = broker_port or free_port()
    cfg = tmp_path / name
    cfg.write_text(textwrap.dedent(f"""\
        # operations test gateway
        gateway: {{id: {gw_id}, topic_prefix: city, state_dir: {tmp_path}/state, batch_interval_s: 0.05,
                  status_interval_s: 0.5}}
        broker: {{host: 127.0.0.1, port: {port}, keepalive_s: 5}}  # the test's broker
        windows: {{seconds: 0.5, grace_s: 0.2}}
        """) + (f"sensors:\n{textwrap.indent(textwrap.dedent(sensors), '  ')}" if sensors else "")
        + textwrap.dedent(extra))
    return cfg


def serial_sensor(sid: str, port: Path, fmt: str = "kv") -> str:
    return f"""\
    - id: {sid}
      driver: serial_line
      options: {{port: {port}, format: {fmt}, units: {{pm25: ug/m3}}}}
    """


def status_json(sock: Path) -> dict:
    r = cli("status", "--socket", sock, "--json", timeout=30)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def polled_status(sock: Path) -> dict:
    """The document :func:`status_json` reads, asked over the control socket from this process (the request
    ``edge-gateway status --json`` makes, its JSON as that prints it): for the conditions a test polls, which
    spawned a CLI, a Python start-up of about a second on a loaded runner, at every try. What the test then
    asserts is read with :func:`status_json`, through the CLI."""
    from edge_gateway import control

    reply = control.request(sock, {"cmd": "status"}, timeout=30)
    assert reply.get("ok"), reply
    return json.loads(json.dumps(reply["status"], default=str))


class NotifyReceiver:
    """A stand-in for systemd's notify socket: every datagram with its arrival time (monotonic), in a thread."""

    def __init__(self, address) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.sock.settimeout(0.1)
        self.got: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(4096)
            except socket.timeout:
                continue
            except OSError:
                return
            self.got.append((time.monotonic(), data.decode()))

    def messages(self) -> list[str]:
        return [m for _, m in self.got]

    def first(self, message: str) -> float | None:
        return next((t for t, m in self.got if m == message), None)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()


class Commands:
    """Publishes downlink commands and collects the replies (msgpack)."""

    def __init__(self, port: int, gw: str = "ops-gw") -> None:
        self.base = f"city/{gw}"
        self.replies: list[dict] = []
        self.ready = threading.Event()
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="test-commands", protocol=mqtt.MQTTv5)
        self.c.on_connect = lambda c, u, f, rc, p: c.subscribe(f"{self.base}/cmd-res/#", qos=1)
        self.c.on_subscribe = lambda *a: self.ready.set()  # the SUBACK: replies reach us from now on
        self.c.on_message = lambda c, u, m: self.replies.append(msgpack.unpackb(m.payload))
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()
        wait_for(self.ready.is_set, 10, what="command client subscribed (SUBACK)")

    def send(self, command: str, rid: int, **args) -> None:
        self.c.publish(f"{self.base}/cmd/{command}", msgpack.packb({"id": rid, "args": args}),
                       qos=1).wait_for_publish(5)

    def reply(self, rid: int, timeout: float = 10) -> dict:
        return wait_for(lambda: next((r for r in self.replies if r.get("id") == rid), None), timeout,
                        what=f"reply {rid}")

    def stop(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()
