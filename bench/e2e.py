"""End-to-end benchmark: pty simulators -> gateway (pinned to one core) -> local Mosquitto.

Prints one JSON object:
- ``readings_per_s``: sustained intake with nothing lost. Each simulator pty is
  written as fast as the gateway drains it (a pty blocks its writer when full),
  so the rate is total readings / time until the last byte was taken; "nothing
  lost" is checked by the broker's subscriber: the aggregates' counts add up to
  every reading written.
- ``cpu_percent_at_1k``, ``rss_mb``: the gateway's whole process tree at 1,000
  readings/s (CPU over a 20 s window, RSS at its end).
- ``ready_s``: process start to the first aggregate received, kernels cached
  (windows of 1 s, so up to 1 s of it is waiting for the first window to close).

The gateway runs as the service unit runs it: ``PYTHONOPTIMIZE=2`` (no docstrings).

Usage: .venv/bin/python bench/e2e.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from simulators.pty_port import PtyPort  # noqa: E402
from simulators.serial_line import scenario_lines  # noqa: E402
from support import Broker, Subscriber, wait_for  # noqa: E402

CHANNELS = 3
GATEWAY_CORE = 0
SERVICE_ENV = {"PYTHONOPTIMIZE": "2"}  # as configs/edge-gateway.service runs the daemon


def write_config(path: Path, state: Path, port: int, links: list[Path], window: float = 1.0) -> None:
    sensors = "\n".join(
        f"  - id: s{i}\n    driver: serial_line\n    options: {{port: {link}, timestamp_field: ts, baudrate: 115200}}"
        for i, link in enumerate(links))
    path.write_text(f"gateway: {{id: bench, state_dir: {state}, batch_interval_s: 0.2}}\n"
                    f"broker: {{port: {port}, max_inflight: 200}}\n"
                    f"sensors:\n{sensors}\n"
                    f"windows: {{seconds: {window}, grace_s: 0.5}}\n"
                    f"detector: {{threshold: 1.0}}\n")


def start_gateway(cfg: Path, log: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **SERVICE_ENV}
    proc = subprocess.Popen([sys.executable, "-m", "edge_gateway", "run", str(cfg)], env=env, cwd=REPO,
                            stdout=open(log, "ab"), stderr=subprocess.STDOUT)
    try:
        os.sched_setaffinity(proc.pid, {GATEWAY_CORE})
    except OSError:
        pass
    return proc


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def tree(proc: subprocess.Popen) -> list[psutil.Process]:
    p = psutil.Process(proc.pid)
    return [p, *p.children(recursive=True)]


def wait_running(log: Path, timeout: float = 120) -> None:
    wait_for(lambda: "running:" in log.read_text(errors="replace"), timeout, 0.01, "gateway running")


def agg_total(sub: Subscriber) -> int:
    return sum(a["count"] for a in sub.of("agg"))


def throughput(work: Path, broker: Broker, n_sensors: int, lines_per_sensor: int) -> dict:
    links = [work / f"tp{i}.tty" for i in range(n_sensors)]
    ports = [PtyPort(str(link)) for link in links]
    cfg, log = work / "tp.yaml", work / "tp.log"
    write_config(cfg, work / "tp-state", broker.port, links)
    sub = Subscriber(broker.port, "city/bench/agg/#", client_id="bench-tp").start()
    payloads = [b"".join(scenario_lines(i + 1, 1_700_000_000.0, 0.001, lines_per_sensor, timestamps=True))
                for i in range(n_sensors)]
    gw = start_gateway(cfg, log)
    try:
        wait_running(log)
        wait_for(lambda: all(p.opened_by_other() for p in ports), 30, 0.05, "ports opened")
        time.sleep(0.5)
        done = []

        def blast(port: PtyPort, data: bytes) -> None:
            for i in range(0, len(data), 65536):
                port.write(data[i:i + 65536])
            done.append(time.perf_counter())

        threads = [threading.Thread(target=blast, args=(p, d)) for p, d in zip(ports, payloads)]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = max(done) - t0
        total = n_sensors * lines_per_sensor * CHANNELS
        wait_for(lambda: agg_total(sub) >= total, 120, 0.1, f"aggregates covering {total} readings")
        time.sleep(0.5)
        received = agg_total(sub)
    finally:
        stop(gw)
        sub.stop()
        for p in ports:
            p.close()
    return {"readings_per_s": round(total / elapsed), "readings_sent": total, "readings_aggregated": received,
            "lost": total - received}


def steady(work: Path, broker: Broker, seconds: float) -> dict:
    """1,000 readings/s: 4 sensors x 3 channels x 83.33 lines/s from the line simulator."""
    links = [work / f"st{i}.tty" for i in range(4)]
    cfg, log = work / "st.yaml", work / "st.log"
    write_config(cfg, work / "st-state", broker.port, links)
    sims = [subprocess.Popen([sys.executable, "-m", "simulators.serial_line", "--rate", str(1000 / 12),
                              "--seed", str(i + 1), "--link", str(link), "--timestamps", "--wait-open",
                              "--backpressure"],
                             cwd=REPO, stdout=subprocess.PIPE) for i, link in enumerate(links)]
    for s in sims:
        s.stdout.readline()
    sub = Subscriber(broker.port, "city/bench/agg/#", client_id="bench-st").start()
    t_start = time.monotonic()
    gw = start_gateway(cfg, log)
    try:
        wait_for(lambda: sub.of("agg"), 60, 0.005, "first aggregate")
        ready_s = time.monotonic() - t_start
        time.sleep(3.0)
        procs = tree(gw)
        c0 = sum(sum(p.cpu_times()[:2]) for p in procs)
        w0 = time.monotonic()
        time.sleep(seconds)
        procs = tree(gw)
        c1 = sum(sum(p.cpu_times()[:2]) for p in procs)
        w1 = time.monotonic()
        rss = sum(p.memory_info().rss for p in procs)
    finally:
        stop(gw)
        for s in sims:
            s.terminate()
            s.wait(10)
            s.stdout.close()
        sub.stop()
    return {"cpu_percent_at_1k": round(100 * (c1 - c0) / (w1 - w0), 2), "rss_mb": round(rss / 2**20, 1),
            "ready_s": round(ready_s, 3)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="smaller runs (smoke test)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="eg-bench-") as tmp:
        work = Path(tmp)
        os.environ["NUMBA_CACHE_DIR"] = str(work / "numba-cache")
        broker = Broker(work / "broker", persistence=False).start()
        try:
            os.sched_setaffinity(broker.proc.pid, {1 % os.cpu_count()})
        except OSError:
            pass
        try:
            result = throughput(work, broker, 4, 20_000 if args.quick else 100_000)
            result.update(steady(work, broker, 5 if args.quick else 20))
        finally:
            broker.close()
    result["gateway_cores"] = 1
    print(json.dumps(result))


if __name__ == "__main__":
    main()
