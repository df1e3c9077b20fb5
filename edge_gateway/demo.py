"""``make demo``: a broker, the simulators of a config, the gateway, and a live view of what flows.

Starts Mosquitto on a free loopback port (or, where Mosquitto is not installed,
the pure-Python amqtt broker, which speaks MQTT 3.1.1 only), the city block
simulator serving every sensor of the config, the gateway as a subprocess, and a subscriber that prints
every aggregate and event the broker delivers. Runs until Ctrl-C, or for
``DEMO_SECONDS`` once the gateway is running (the first start compiles the
analytics kernels, which takes a while on a Pi); then prints a summary and exits
0 only if the broker delivered every aggregate the gateway published.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from datetime import datetime
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from . import config as config_mod
from .messages import decode

REPO = Path(__file__).resolve().parent.parent
READY_TIMEOUT_S = 900  # a cold Numba compile on a slow Pi


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_broker(run_dir: Path, port: int) -> tuple[subprocess.Popen, str, str]:
    """Return (process, name, MQTT protocol the gateway should use).

    The broker runs in a session of its own: a Ctrl-C at the terminal reaches the demo's process
    group, and a broker stopped by it at the same time as the gateway would cut the gateway off
    before its clean DISCONNECT (a warning and the will message at the end of every demo). The demo
    stops it last itself.
    """
    exe = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if os.path.exists("/usr/sbin/mosquitto") else None)
    if os.environ.get("DEMO_BROKER") == "amqtt":
        exe = None
    log = open(run_dir / "broker.log", "wb")
    if exe:
        conf = run_dir / "mosquitto.conf"
        conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
        return (subprocess.Popen([exe, "-c", str(conf)], stdout=log, stderr=log, start_new_session=True),
                "mosquitto", "5")
    conf = run_dir / "amqtt.yaml"
    conf.write_text(f"listeners:\n  default:\n    type: tcp\n    bind: 127.0.0.1:{port}\n"
                    "plugins:\n  amqtt.plugins.authentication.AnonymousAuthPlugin:\n    allow_anonymous: true\n")
    amqtt = Path(sys.executable).with_name("amqtt")
    return (subprocess.Popen([str(amqtt), "-c", str(conf)], stdout=log, stderr=log, start_new_session=True),
            "amqtt (MQTT 3.1.1)", "3.1.1")


def wait_port(port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port}")


def free_udp_pair() -> int:
    """A UDP port p with p + 1 also free (the city simulator's two CoAP nodes)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as a:
            a.bind(("127.0.0.1", 0))
            p = a.getsockname()[1]
            if p >= 65535:
                continue
            try:
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as b:
                    b.bind(("127.0.0.1", p + 1))
                    return p
            except OSError:
                continue
    raise RuntimeError("no free pair of UDP ports on 127.0.0.1")


def start_city(scenario: str, run_dir: Path, coap_port: int, env: dict) -> subprocess.Popen:
    """The city block simulator; returns once it has printed ``ready``."""
    proc = subprocess.Popen([sys.executable, "-m", "simulators.city", scenario, "--run-dir", str(run_dir),
                             "--coap-port", str(coap_port)], stdout=subprocess.PIPE, cwd=REPO, env=env)
    for raw in iter(proc.stdout.readline, b""):
        line = raw.decode().strip()
        if line == "ready":
            return proc
        print(f"demo: simulator {line}", flush=True)
    raise RuntimeError(f"city simulator exited with {proc.wait()}")


class Monitor:
    """Subscribes to everything the gateway publishes and prints it as it arrives."""

    def __init__(self, port: int, base: str, protocol: str) -> None:
        self.agg_seqs: set[int] = set()
        self.event_seqs: set[int] = set()
        self.dups = 0
        self._lock = threading.Lock()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="demo-monitor",
                                  protocol=mqtt.MQTTv5 if protocol == "5" else mqtt.MQTTv311)
        self.client.on_message = self._on_message
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(f"{base}/#", qos=1)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def _on_message(self, client, userdata, msg) -> None:
        try:
            data = decode(msg.payload)
        except Exception:  # noqa: BLE001 - show what arrived, whatever it is
            print(f"  ?? {msg.topic}: {msg.payload[:60]!r}")
            return
        kind = msg.topic.split("/")[2] if msg.topic.count("/") >= 2 else msg.topic
        seq = data.get("seq")
        with self._lock:
            target = self.agg_seqs if kind == "agg" else self.event_seqs if kind == "event" else None
            if target is not None:
                if seq in target:
                    self.dups += 1
                target.add(seq)
        if kind == "agg":
            t = datetime.fromtimestamp(data["start"]).strftime("%H:%M:%S")
            print(f"  agg   #{seq:<5} {data['sensor']}/{data['channel']:<9} {t} +{data['end'] - data['start']:g}s "
                  f"n={data['count']:<4} mean={data['mean']:8.2f} min={data['min']:7.2f} max={data['max']:7.2f} "
                  f"{data.get('unit', '')}", flush=True)
        elif kind == "event":
            print(f"  EVENT #{seq:<5} {event_text(data)}", flush=True)
        elif kind == "status":
            print(f"  status {status_text(data)}", flush=True)
        else:
            print(f"  {msg.topic}: {data}", flush=True)

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _clock(ts) -> str:
    return datetime.fromtimestamp(ts).strftime("%H:%M:%S") if isinstance(ts, (int, float)) else str(ts)


def event_text(e: dict) -> str:
    """An event for a person watching the demo: where, what, when, how strong, which detector."""
    where = e.get("sensor", "?") + (f"/{e['channel']}" if e.get("channel") else "")
    kind = e.get("type", "?")
    if kind == "anomaly":
        span = _clock(e.get("start")) + (f"-{_clock(e['end'])}" if e.get("end") not in (None, e.get("start")) else "")
        unit = f" {e['unit']}" if e.get("unit") else ""
        return (f"{where} anomaly {e.get('state', ''):<6} {span}  peak {e.get('peak_value', 0):g}{unit}  "
                f"score {e.get('peak_score', 0):.2f}  ({e.get('detector', '?')})")
    if kind == "link_gap" and isinstance(e.get("start"), (int, float)) and isinstance(e.get("end"), (int, float)):
        return (f"{where} link_gap {_clock(e['start'])}-{_clock(e['end'])} ({e['end'] - e['start']:.1f} s): "
                f"{e.get('reason', '')}")
    rest = ", ".join(f"{k} {_clock(v) if k in ('start', 'end', 'ts', 'at') else v}" for k, v in e.items()
                     if k not in ("gw", "seq", "sensor", "type", "channel"))
    return f"{where} {kind}" + (f": {rest}" if rest else "")


def status_text(st: dict) -> str:
    """The gateway's status message in one line: state, uptime, counts, queue, link (the will says only
    "offline", with seq -1: the broker published it because the connection dropped)."""
    if st.get("seq") == -1:
        return f"{st.get('state')} (the will: the broker lost the gateway's connection)"
    parts = [str(st.get("state"))]
    if "uptime_s" in st:
        parts.append(f"up {st['uptime_s']:.0f} s")
    c = st.get("counts")
    if c:
        parts.append(f"{c.get('readings', 0)} readings, {c.get('aggregates', 0)} aggregates, {c.get('events', 0)} events")
    q = st.get("queue")
    if q:
        parts.append(f"queue {q.get('depth', 0)}")
    if "link" in st:
        parts.append(f"link {st['link']}")
    return ", ".join(parts)


def pump(stream, prefix: str, ready: threading.Event | None = None) -> None:
    for line in iter(stream.readline, b""):
        text = line.decode(errors="replace")
        sys.stdout.write(f"{prefix}{text}")
        sys.stdout.flush()
        if ready is not None and " running: " in text:
            ready.set()


def _interrupted(signum, frame) -> None:
    raise KeyboardInterrupt


def _end(proc: subprocess.Popen, timeout: float) -> int | None:
    """SIGTERM ``proc`` and wait; SIGKILL it if it is still there after ``timeout``. Its exit status, or
    None when it had to be killed."""
    if proc.poll() is None:
        proc.terminate()
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m edge_gateway.demo", description=__doc__)
    ap.add_argument("config", nargs="?", default=str(REPO / "configs" / "demo.yaml"))
    ap.add_argument("--scenario", default=str(REPO / "simulators" / "scenarios" / "city_block.yaml"),
                    help="city simulator scenario serving the config's sensors")
    ap.add_argument("--seconds", type=float, default=float(os.environ.get("DEMO_SECONDS") or 0))
    ap.add_argument("--run-dir", default=str(REPO / "run" / "demo"),
                    help="folder for the broker, simulators and gateway state (emptied first)")
    args = ap.parse_args(argv)
    # A hang-up (an SSH session that drops) or a SIGTERM takes the Ctrl-C path: the children are stopped.
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _interrupted)

    run_dir = Path(args.run_dir).resolve()
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    port = free_port()
    coap = free_udp_pair()
    broker, broker_name, protocol = start_broker(run_dir, port)
    names = {"EG_RUN_DIR": str(run_dir), "EG_STATE_DIR": str(run_dir / "state"), "EG_BROKER_PORT": str(port),
             "EG_MQTT_PROTOCOL": protocol, "EG_COAP_PORT": str(coap), "EG_COAP_PORT2": str(coap + 1)}
    env = {**os.environ, **names, "PYTHONUNBUFFERED": "1"}
    os.environ.update(names)
    procs: list[subprocess.Popen] = []
    monitor = None
    gateway = None
    try:
        cfg = config_mod.load(args.config)
        wait_port(port)
        print(f"demo: broker {broker_name} on 127.0.0.1:{port}", flush=True)
        procs.append(start_city(args.scenario, run_dir, coap, env))
        monitor = Monitor(port, f"{cfg.gateway.topic_prefix}/{cfg.gateway.id}", protocol)
        gateway = subprocess.Popen([sys.executable, "-m", "edge_gateway", "run", args.config], cwd=REPO, env=env,
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        ready = threading.Event()
        threading.Thread(target=pump, args=(gateway.stdout, "gateway | ", ready), daemon=True).start()
        print("demo: gateway started; Ctrl-C to stop" + (f" (stops {args.seconds:g} s after it is running;"
              " the first start compiles the analytics kernels)" if args.seconds else ""), flush=True)
        started = time.monotonic()
        deadline = None
        while gateway.poll() is None:
            if deadline is None and ready.is_set():
                print(f"demo: gateway running after {time.monotonic() - started:.1f} s", flush=True)
                deadline = time.monotonic() + args.seconds if args.seconds else math.inf
            if args.seconds and time.monotonic() >= (deadline or started + READY_TIMEOUT_S):
                break
            time.sleep(0.2)
    except KeyboardInterrupt:
        pass
    except config_mod.ConfigError as exc:
        for line in str(exc).splitlines():
            print(f"demo: {line}", file=sys.stderr)
        return 2
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)
        rc = None
        if gateway is not None:
            rc = _end(gateway, 60)
        time.sleep(0.5)
        for p in procs:
            _end(p, 10)
        if monitor is not None:
            monitor.stop()
        _end(broker, 10)
    summary_path = run_dir / "state" / "last-run.json"
    if rc is None or not summary_path.exists():
        print(f"demo: the gateway did not finish cleanly (exit {rc})", file=sys.stderr)
        return 1
    summary = json.loads(summary_path.read_text())
    published_aggs = summary["published"].get("agg", 0)
    published_events = summary["published"].get("event", 0)
    received = len(monitor.agg_seqs) if monitor else 0
    print("\ndemo summary")
    print(f"  readings read:          {summary['counts']['readings']}")
    print(f"  aggregates published:   {published_aggs}  (received by the broker's subscriber: {received})")
    print(f"  events published:       {published_events}  (received: {len(monitor.event_seqs) if monitor else 0})")
    print(f"  still queued on disk:   {summary['queue_depth']}")
    ok = rc == 0 and received == published_aggs
    print(f"  result: {'OK, every published aggregate arrived' if ok else 'MISMATCH'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
