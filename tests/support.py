"""Real parts for tests: a Mosquitto broker, an MQTT subscriber, the gateway as a subprocess.

Everything listens on 127.0.0.1 ephemeral ports; every process started here is
ended here, by PID.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge_gateway.messages import decode

REPO = Path(__file__).resolve().parent.parent


class Clock:
    """A clock the test sets (``clock.t += 60``): wall, steady or the queue's, wherever a callable is taken."""

    def __init__(self, t: float = 1_700_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(pred, timeout: float, interval: float = 0.02, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


class Broker:
    """A Mosquitto process on an ephemeral loopback port, restartable on the same port."""

    def __init__(self, workdir: Path, persistence: bool = True, extra: str = "") -> None:
        exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        if not os.path.exists(exe):
            raise RuntimeError("mosquitto is not installed: run `make test` (installs it) or apt-get install mosquitto")
        self.exe = exe
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.conf = workdir / "mosquitto.conf"
        lines = [f"listener {self.port} 127.0.0.1", "allow_anonymous true",
                 f"persistence {'true' if persistence else 'false'}",
                 f"persistence_location {workdir}/", "max_queued_messages 1000000",
                 "max_inflight_messages 0",
                 # Mosquitto's default log types, and each subscription once it is in place (wait_subscribed)
                 *(f"log_type {t}" for t in ("error", "warning", "notice", "information", "subscribe"))]
        if os.geteuid() == 0:  # else Mosquitto drops to user `mosquitto`, which cannot save persistence here
            lines.append("user root")
        if extra:
            lines.append(extra)
        self.conf.write_text("\n".join(lines) + "\n")
        self.proc: subprocess.Popen | None = None
        self.log = open(workdir / "mosquitto.log", "ab")

    def start(self) -> "Broker":
        self.proc = subprocess.Popen([self.exe, "-c", str(self.conf)], stdout=self.log, stderr=self.log)
        wait_for(self._listening, 10, what=f"mosquitto on port {self.port}")
        return self

    def _listening(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"mosquitto exited with {self.proc.returncode}: see {self.workdir}/mosquitto.log")
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
            return True
        except OSError:
            return False

    def subscriptions(self, client_id: str, topic: str) -> int:
        """How many times ``client_id`` has subscribed to ``topic`` (a filter, as given) on this broker."""
        log = (self.workdir / "mosquitto.log").read_text(errors="replace")
        return len(re.findall(rf"^\d+: {re.escape(client_id)} \d+ {re.escape(topic)}$", log, re.MULTILINE))

    def wait_subscribed(self, client_id: str, topic: str, n: int = 1, timeout: float = 30) -> None:
        """Until the ``n``-th subscription of ``client_id`` to ``topic`` is in place. Mosquitto logs it once it
        has added it (handle__subscribe, single-threaded), so whatever is published after this returns is
        delivered to it. For a subscriber the test does not own, such as the gateway's on cmd/+."""
        wait_for(lambda: self.subscriptions(client_id, topic) >= n, timeout, 0.02,
                 f"{client_id} subscribed to {topic} ({n})")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def close(self) -> None:
        self.stop()
        self.log.close()


@dataclass
class Received:
    topic: str
    payload: bytes
    retain: bool

    @property
    def data(self):
        return decode(self.payload)


class Subscriber:
    """A persistent-session (MQTT 5, no expiry limit) QoS 1 subscriber collecting every message."""

    def __init__(self, port: int, topic: str, client_id: str = "test-sub") -> None:
        self.port = port
        self.topic = topic
        self.messages: list[Received] = []
        self._lock = threading.Lock()
        self.connected = threading.Event()
        self.subscribed = threading.Event()  # the SUBACK: the broker has the subscription
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda *a: self.subscribed.set()
        self.client.on_message = self._on_message
        self.client.on_disconnect = lambda *a: self.connected.clear()
        self.client.reconnect_delay_set(0.1, 0.5)

    def _on_connect(self, client, userdata, flags, rc, props) -> None:
        if not rc.is_failure:
            client.subscribe(self.topic, qos=1)
            self.connected.set()

    def _on_message(self, client, userdata, msg) -> None:
        with self._lock:
            self.messages.append(Received(msg.topic, bytes(msg.payload), msg.retain))

    def start(self) -> "Subscriber":
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 0xFFFFFFFF
        self.client.connect("127.0.0.1", self.port, keepalive=5, clean_start=False, properties=props)
        self.client.loop_start()
        wait_for(self.subscribed.is_set, 10, what="subscriber subscribed (SUBACK)")
        return self

    def snapshot(self) -> list[Received]:
        with self._lock:
            return list(self.messages)

    def of(self, part: str) -> list[dict]:
        """Decoded payloads of messages whose topic contains ``/part/``."""
        return [m.data for m in self.snapshot() if f"/{part}/" in m.topic]

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@dataclass
class GatewayProcess:
    """``edge-gateway run CONFIG`` as a subprocess, with its log kept in a file."""

    config: Path
    log_path: Path
    env: dict = field(default_factory=dict)
    proc: subprocess.Popen | None = None

    def start(self) -> "GatewayProcess":
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONOPTIMIZE": "2", **self.env}  # as the unit runs it
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "edge_gateway", "run", str(self.config)],
                                     stdout=self._log, stderr=subprocess.STDOUT, env=env, cwd=REPO)
        return self

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = 180) -> None:
        """Until the daemon logs "running:". A bound, not a speed check: a worker's first daemon may compile
        the kernels while the other workers' do the same into the shared cache (a clean clone on a slow VM
        took over 60 s)."""
        wait_for(lambda: "running:" in self.log_text() or self._dead(), timeout, 0.05, "gateway ready")
        assert self.proc is not None and self.proc.poll() is None, self.log_text()

    def _dead(self) -> bool:
        return self.proc is not None and self.proc.poll() is not None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.send_signal(signal.SIGABRT)  # faulthandler writes every thread's stack into the log
            try:
                rc = self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                rc = self.proc.wait()
        self._log.close()
        return rc


class Process:
    """Any helper subprocess (a simulator) whose first stdout line is its port path."""

    def __init__(self, args: list[str], env: dict | None = None) -> None:
        self.proc = subprocess.Popen([sys.executable, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     cwd=REPO, env={**os.environ, **(env or {})}, text=True)
        self.first_line = self.proc.stdout.readline().strip()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for f in (self.proc.stdout, self.proc.stderr):
            f.close()


async def daemon_rounds(gw, make, first: int, last: int, ckpt_after: int | None = None) -> None:
    """Rounds of ``Gateway.tick`` on readings ``make(k)`` for k = first..last + 4, five a round; after the round
    starting at ``ckpt_after`` the analytics checkpoint is stored, as the daemon's minute does."""
    for k0 in range(first, last + 1, 5):
        for k in range(k0, k0 + 5):
            gw.batcher.add(make(k))
        await gw.tick()
        if k0 == ckpt_after:
            await gw._save_checkpoint()
