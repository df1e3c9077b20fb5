"""Uplink benchmark: durable queue + forwarder into a local Mosquitto, against a naive forwarder.

Prints ONE JSON object:
- ``publish_msgs_per_s``: steady flow, batches of 100 committed per transaction, forwarded with a
  window of outstanding QoS 1 publishes, until every PUBACK is in and deleted;
- ``drain_msgs_per_s``: a 100,000-message backlog (left by an outage) drained to empty (every
  PUBACK in and deleted from the queue); the subscriber is disconnected meanwhile (persistent
  session: the broker keeps its messages) and receives them afterwards for the ``lost`` check;
- ``baseline_*``: the naive way in the same run: one SQLite commit per message, then
  ``publish`` + ``wait_for_publish`` one by one (steady), and read/publish/wait/delete one by
  one (drain), measured on fewer messages;
- ``lost``: messages of our runs that a QoS 1 subscriber did not receive (distinct seqs); the
  subscriber runs in its own process;
- ``drain_cores``: CPU time of this process (paho, asyncio and SQLite threads) during the drain
  divided by its wall time; ``pinned_cpu``: the one CPU this process was pinned to for our runs
  (``--cpu``; Mosquitto and the subscriber keep the other CPUs); ``window``: messages outstanding;
- ``flash_bytes_per_hour``: write_bytes of an ``edge-gateway run`` process (psutil io_counters)
  fed 1,000 readings/s by the serial simulator (demo windows of 10 s), scaled to an hour, measured
  from 30 s after the gateway is running (median of ``--flash-runs``); ``flash_commits_by_cause``:
  the queue's commits in that window (append, ack_delete, +checkpoint), read from the WAL file;
  ``flash_write_syscall_bytes_per_hour``: bytes passed to write() (write_bytes counts whole 4 KiB
  page-cache pages dirtied, so small commits weigh more).

Usage: .venv/bin/python bench/uplink.py [--quick] [--window N] [--cpu N]   (about 2-3 minutes)
       .venv/bin/python bench/uplink.py --flash-only [--flash-runs 3] [--flash-seconds 60]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import psutil
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from edge_gateway import messages  # noqa: E402
from edge_gateway.config import BrokerSection  # noqa: E402
from edge_gateway.forwarder import Forwarder  # noqa: E402
from edge_gateway.queue import DurableQueue, QueueLimits  # noqa: E402
from edge_gateway.uplink import MqttLink  # noqa: E402

TOPICS = messages.Topics("bench", "gw")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_broker(work: Path) -> tuple[subprocess.Popen, int]:
    port = free_port()
    conf = work / "mosquitto.conf"
    lines = [f"listener {port} 127.0.0.1", "allow_anonymous true", "persistence false",
             "max_queued_messages 1000000", "max_inflight_messages 0"]
    if os.geteuid() == 0:
        lines.append("user root")
    conf.write_text("\n".join(lines) + "\n")
    exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    proc = subprocess.Popen([exe, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return proc, port
        except OSError:
            time.sleep(0.02)
    raise RuntimeError("mosquitto did not start")


class Counter:
    """A QoS 1 subscriber recording the distinct seqs it received, in its own process (the cloud side
    must not share the gateway's core or GIL)."""

    def __init__(self, port: int) -> None:
        self.parent, child = multiprocessing.Pipe()
        self.proc = multiprocessing.get_context("fork").Process(target=_counter_main, args=(port, child),
                                                                daemon=True)
        self.proc.start()
        if not self.parent.poll(15):
            raise RuntimeError("subscriber did not connect")
        self.parent.recv()

    def pause(self) -> None:
        """Disconnect; the persistent session keeps collecting QoS 1 messages in the broker."""
        self.parent.send(("pause", 0))
        self.parent.recv()

    def resume(self) -> None:
        self.parent.send(("resume", 0))
        self.parent.recv()

    def count(self) -> int:
        self.parent.send(("count", 0))
        return self.parent.recv()

    def lost(self, total: int) -> int:
        self.parent.send(("lost", total))
        return self.parent.recv()

    def stop(self) -> None:
        self.parent.send(("stop", 0))
        self.proc.join(10)


def _counter_main(port: int, conn) -> None:
    payloads: list[bytes] = []  # decoded only when asked: keep the per-message cost of the cloud side low
    seqs: set[int] = set()
    lock = threading.Lock()
    ready = threading.Event()
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-sub", protocol=mqtt.MQTTv5)

    def on_msg(c, u, m) -> None:
        payloads.append(m.payload)

    def decode_new() -> None:
        n = len(payloads)
        seqs.update(messages.decode(p)["seq"] for p in payloads[:n])
        del payloads[:n]

    c.on_connect = lambda c, u, f, rc, p: (c.subscribe("bench/gw/agg/#", qos=1), ready.set())
    c.on_message = on_msg
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 3600  # a persistent session: the broker queues while we are away
    c.connect("127.0.0.1", port, clean_start=True, properties=props)
    c.loop_start()
    ready.wait(10)
    time.sleep(0.3)
    conn.send("ready")
    while True:
        cmd, arg = conn.recv()
        with lock:
            decode_new()
            if cmd == "pause":
                c.disconnect()
                c.loop_stop()
                conn.send("paused")
            elif cmd == "resume":
                ready.clear()
                c.connect("127.0.0.1", port, clean_start=False, properties=props)
                c.loop_start()
                ready.wait(10)
                conn.send("resumed")
            elif cmd == "count":
                conn.send(len(seqs))
            elif cmd == "lost":
                conn.send(sum(1 for s in range(1, arg + 1) if s not in seqs))
            else:
                break
    c.disconnect()
    c.loop_stop()


def make_msgs(n: int, start: int = 0) -> list[messages.Message]:
    return [messages.Message("agg", TOPICS.agg(f"s{i % 8}"), {
        "gw": "gw", "sensor": f"s{i % 8}", "channel": "pm25", "unit": "ug/m3", "start": 1.7e9 + i,
        "end": 1.7e9 + i + 10, "count": 100, "min": 1.0, "max": 9.5, "mean": 5.25, "std": 1.5,
        "first": 2.0, "last": 3.0}) for i in range(start, start + n)]


async def ours(port: int, work: Path, steady_n: int, backlog_n: int, window: int, sub: "Counter") -> dict:
    q = DurableQueue(work / "ours.db", messages.encode, limits=QueueLimits(max_bytes=1 << 30))
    await q.open()
    fw = Forwarder(q, None, window=window)  # type: ignore[arg-type]
    link = MqttLink(BrokerSection(port=port, max_inflight=window, reconnect_min_s=0.1, reconnect_max_s=0.5),
                    "bench-gw", "bench/gw/status", birth=lambda: b"on", will=b"off", on_ack=fw.on_ack,
                    on_state=fw.on_link)
    fw.link = link
    fw.start()
    link.start()
    while not link.connected:
        await asyncio.sleep(0.01)

    async def drained() -> None:
        while q.depth or fw.inflight:
            await asyncio.sleep(0.005)

    t0 = time.perf_counter()
    for i in range(0, steady_n, 100):  # one transaction per tick of 100 messages
        await q.append(make_msgs(100, i))
        fw.notify()
        await asyncio.sleep(0)
    await drained()
    steady = steady_n / (time.perf_counter() - t0)
    # outage: the link is down while a backlog builds up, then it drains. The subscriber (the cloud
    # side) is away during the drain: on a 2-CPU machine it would share Mosquitto's CPU and set the
    # pace (its paho receive path costs more per message than our send path); its persistent session
    # collects everything in the broker and it checks for losses afterwards.
    await link.stop()
    await fw.stop()
    await asyncio.get_running_loop().run_in_executor(None, sub.pause)
    for i in range(0, backlog_n, 5000):
        await q.append(make_msgs(5000, steady_n + i))
    fw2 = Forwarder(q, None, window=window)  # type: ignore[arg-type]
    link2 = MqttLink(BrokerSection(port=port, max_inflight=window, reconnect_min_s=0.1, reconnect_max_s=0.5),
                     "bench-gw", "bench/gw/status", birth=lambda: b"on", will=b"off", on_ack=fw2.on_ack,
                     on_state=fw2.on_link)
    fw2.link = link2
    fw, link = fw2, link2
    t0, c0 = time.perf_counter(), time.process_time()
    fw.start()
    link.start()
    await drained()
    wall = time.perf_counter() - t0
    drain = backlog_n / wall
    drain_cores = (time.process_time() - c0) / wall  # CPU of every thread of ours (paho, asyncio, SQLite)
    await asyncio.get_running_loop().run_in_executor(None, sub.resume)
    total = q.last_seq
    await fw.stop()
    await link.stop()
    await q.close()
    return {"publish": steady, "drain": drain, "total": total, "drain_cores": drain_cores}


def naive(port: int, work: Path, n_steady: int, n_drain: int) -> dict:
    db = sqlite3.connect(work / "naive.db", isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute("CREATE TABLE outbox (seq INTEGER PRIMARY KEY, topic TEXT, payload BLOB)")
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-naive", protocol=mqtt.MQTTv5)
    c.connect("127.0.0.1", port)
    c.loop_start()
    base = 10_000_000
    t0 = time.perf_counter()
    for i, m in enumerate(make_msgs(n_steady)):  # commit each message, then publish and wait
        payload = messages.encode(m.fields, base + i)
        db.execute("INSERT INTO outbox VALUES (?,?,?)", (base + i, m.topic, payload))
        c.publish(m.topic, payload, qos=1).wait_for_publish(5)
        db.execute("DELETE FROM outbox WHERE seq = ?", (base + i,))
    steady = n_steady / (time.perf_counter() - t0)
    db.execute("BEGIN")
    for i, m in enumerate(make_msgs(n_drain)):
        db.execute("INSERT INTO outbox VALUES (?,?,?)", (base + n_steady + i, m.topic,
                                                         messages.encode(m.fields, base + n_steady + i)))
    db.execute("COMMIT")
    t0 = time.perf_counter()
    while True:  # drain one by one: read, publish, wait for PUBACK, delete
        row = db.execute("SELECT seq, topic, payload FROM outbox ORDER BY seq LIMIT 1").fetchone()
        if row is None:
            break
        c.publish(row[1], row[2], qos=1).wait_for_publish(5)
        db.execute("DELETE FROM outbox WHERE seq = ?", (row[0],))
    drain = n_drain / (time.perf_counter() - t0)
    c.disconnect()
    c.loop_stop()
    db.close()
    return {"publish": steady, "drain": drain}


def _wal_commits(wal: Path) -> tuple[tuple[int, int], int, list[list[int]]]:
    """(salts, page size, committed transactions as lists of page numbers) of a SQLite WAL file."""
    try:
        data = wal.read_bytes()
    except FileNotFoundError:
        return (0, 0), 0, []
    if len(data) < 32:
        return (0, 0), 0, []
    page = int.from_bytes(data[8:12], "big")
    salts = (int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big"))
    commits, cur, off = [], [], 32
    while off + 24 + page <= len(data):
        h = data[off:off + 24]
        if (int.from_bytes(h[8:12], "big"), int.from_bytes(h[12:16], "big")) != salts:
            break  # left over from before the last reset
        cur.append(int.from_bytes(h[0:4], "big"))
        if int.from_bytes(h[4:8], "big"):
            commits.append(cur)
            cur = []
        off += 24 + page
    return salts, page, commits


def _classify(db: Path, commits: list[list[int]], page: int, hours: float) -> dict:
    """Commits of the queue by cause, from the pages each one wrote (outbox, meta, checkpoint)."""
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        roots = dict(con.execute("SELECT name, rootpage FROM sqlite_master WHERE type='table'").fetchall())
    finally:
        con.close()
    out: dict[str, dict] = {}
    for c in commits:
        if roots.get("meta") in c:
            cause = "append"  # new messages (meta.last_seq), with any deferred ack deletes
        elif roots.get("outbox") in c:
            cause = "ack_delete"
        elif roots.get("checkpoint") in c:
            cause = "checkpoint_only"
        else:
            cause = "other"
        if roots.get("checkpoint") in c and cause != "checkpoint_only":
            cause += "+checkpoint"
        e = out.setdefault(cause, {"commits_per_hour": 0.0, "wal_bytes_per_hour": 0.0, "pages_per_commit": 0.0})
        e["commits_per_hour"] += 1
        e["wal_bytes_per_hour"] += len(c) * (page + 24)
        e["pages_per_commit"] += len(c)
    for e in out.values():
        e["pages_per_commit"] = round(e["pages_per_commit"] / e["commits_per_hour"], 1)
        e["commits_per_hour"] = round(e["commits_per_hour"] / hours)
        e["wal_bytes_per_hour"] = round(e["wal_bytes_per_hour"] / hours)
    return out


def flash_per_hour(port: int, work: Path, seconds: float, settle_s: float = 30.0) -> dict:
    """write_bytes/h of a real gateway process at 1,000 readings/s (333.3 lines/s x 3 channels).

    Measured from ``settle_s`` after the gateway logged "running" (kernels compiled or loaded from the
    Numba cache: a cache write inside the window once added tens of MB/h, and the detectors' warm-up
    emits a burst of events); its log goes to a pipe, not to the disk. The WAL is read at both ends
    to split the queue's commits by cause."""
    link = work / "air.tty"
    cfg = work / "gw.yaml"
    state = work / "state"
    cfg.write_text(f"""gateway: {{id: flash-gw, topic_prefix: bench, state_dir: {state}}}
broker: {{host: 127.0.0.1, port: {port}, keepalive_s: 10}}
sensors:
  - id: air-1
    driver: serial_line
    options: {{port: {link}, format: kv}}
windows: {{seconds: 10, grace_s: 1}}
detector: {{}}
""")
    env = {**os.environ, "NUMBA_CACHE_DIR": str(REPO / ".pytest_cache" / "numba")}
    gw = subprocess.Popen([sys.executable, "-m", "edge_gateway", "run", str(cfg)], cwd=REPO, env=env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    running = threading.Event()

    def read_log() -> None:
        for line in gw.stderr:  # drained to the end, so the gateway never blocks on its log
            if " running: " in line:
                running.set()

    threading.Thread(target=read_log, daemon=True).start()
    sim = subprocess.Popen([sys.executable, "-m", "simulators.serial_line", "--rate", "333.3333", "--link",
                            str(link), "--batch", "20", "--wait-open", "--backpressure"], cwd=REPO, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    wal, db = state / "queue.db-wal", state / "queue.db"
    try:
        p = psutil.Process(gw.pid)
        if not running.wait(180):
            raise RuntimeError("the gateway did not start")
        time.sleep(settle_s)  # windows closing, detectors past their warm-up: a steady flow
        salts0, _, c0 = _wal_commits(wal)
        io0, t0 = p.io_counters(), time.perf_counter()
        time.sleep(seconds)
        io1, t1 = p.io_counters(), time.perf_counter()
        salts1, page, c1 = _wal_commits(wal)
        wal_resets = int(salts1 != salts0)  # a WAL checkpoint ran and the log restarted
        window = c1 if wal_resets else c1[len(c0):]
        hours = (t1 - t0) / 3600
        return {"bytes_per_hour": (io1.write_bytes - io0.write_bytes) / hours,
                "write_syscall_bytes_per_hour": (io1.write_chars - io0.write_chars) / hours,
                "page_size": page, "wal_checkpoints_in_window": wal_resets,
                "commits": _classify(db, window, page, hours)}
    finally:
        for proc in (sim, gw):
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="smaller runs (CI smoke)")
    ap.add_argument("--flash-only", action="store_true", help="only the flash measurement (skips the rest)")
    ap.add_argument("--flash-runs", type=int, default=1, help="repeat the flash measurement (median reported)")
    ap.add_argument("--flash-seconds", type=float, default=None, help="flash measurement window (default 60)")
    ap.add_argument("--window", type=int, default=1000, help="broker.max_inflight: messages outstanding")
    ap.add_argument("--cpu", type=int, default=None,
                    help="pin the queue + forwarder + paho (this process) to this one CPU; the broker and "
                         "the subscriber keep the others (default: the last CPU if there are 2 or more)")
    args = ap.parse_args()
    cpus = sorted(os.sched_getaffinity(0))
    cpu = args.cpu if args.cpu is not None else (cpus[-1] if len(cpus) > 1 else None)
    steady_n, backlog_n = (5_000, 20_000) if args.quick else (20_000, 100_000)
    work = Path(tempfile.mkdtemp(prefix="bench-uplink-", dir=REPO / "run" if (REPO / "run").is_dir() else None))
    broker, port = start_broker(work)
    flash_s = args.flash_seconds or (20 if args.quick else 60)
    if args.flash_only:
        try:
            runs = [flash_per_hour(port, Path(tempfile.mkdtemp(dir=work)), flash_s) for _ in range(args.flash_runs)]
        finally:
            broker.terminate()
            broker.wait(10)
            shutil.rmtree(work, ignore_errors=True)
        print(json.dumps(flash_report(runs, flash_s)))
        return
    try:
        sub = Counter(port)
        if cpu is not None:  # broker and subscriber were started before: they keep every CPU
            os.sched_setaffinity(0, {cpu})
        try:
            r = asyncio.run(ours(port, work, steady_n, backlog_n, args.window, sub))
        finally:
            os.sched_setaffinity(0, set(cpus))
        b = naive(port, work, 1000 if args.quick else 2000, 1000 if args.quick else 3000)
        deadline = time.time() + 60
        while sub.count() < r["total"] and time.time() < deadline:
            time.sleep(0.1)
        lost = sub.lost(r["total"])
        sub.stop()
        runs = [flash_per_hour(port, Path(tempfile.mkdtemp(dir=work)), flash_s) for _ in range(args.flash_runs)]
    finally:
        broker.terminate()
        broker.wait(10)
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps({
        "publish_msgs_per_s": round(r["publish"]), "drain_msgs_per_s": round(r["drain"]),
        "baseline_publish_msgs_per_s": round(b["publish"]), "baseline_drain_msgs_per_s": round(b["drain"]),
        "lost": lost, "messages": r["total"], "backlog": backlog_n, "window": args.window,
        "drain_cores": round(r["drain_cores"], 2), "pinned_cpu": cpu,
        **flash_report(runs, flash_s), "cpus": os.cpu_count(),
    }))


def flash_report(runs: list[dict], seconds: float) -> dict:
    values = sorted(r["bytes_per_hour"] for r in runs)
    median = runs[[r["bytes_per_hour"] for r in runs].index(values[len(values) // 2])]
    return {"flash_bytes_per_hour": round(median["bytes_per_hour"]),
            "flash_runs_bytes_per_hour": [round(r["bytes_per_hour"]) for r in runs],
            "flash_write_syscall_bytes_per_hour": round(median["write_syscall_bytes_per_hour"]),
            "flash_commits_by_cause": median["commits"], "flash_page_size": median["page_size"],
            "flash_wal_checkpoints_in_window": median["wal_checkpoints_in_window"],
            "flash_window_s": seconds, "flash_readings_per_s": 1000, "window_s": 10, "queue_synchronous": "FULL"}


if __name__ == "__main__":
    main()
