"""``status``, ``tail``, ``reload`` against a running gateway subprocess; Prometheus; journald log lines."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.request

from ops_support import cli, polled_status, serial_sensor, status_json, write_config
from support import REPO, GatewayProcess, Process, free_port, wait_for


def test_not_running_exits_3(tmp_path):
    sock = tmp_path / "control.sock"
    for cmd in (["status"], ["status", "--json"], ["tail"], ["reload"]):
        r = cli(*cmd, "--socket", sock)
        assert r.returncode == 3, (cmd, r.stderr)
        assert "not running" in r.stderr
    cfg = write_config(tmp_path)
    assert cli("status", "--config", cfg).returncode == 3


def test_a_gateway_still_compiling_is_starting_not_missing(tmp_path):
    """While its kernels compile (minutes at a Pi's first start) a gateway holds its state directory but
    has no control socket yet: status said "not running, start it" (review 17, technician #2)."""
    import os

    from edge_gateway.statelock import StateDirLock

    lock = StateDirLock(tmp_path)
    lock.acquire()
    try:
        for cmd in (["status"], ["tail"]):
            r = cli(*cmd, "--socket", tmp_path / "control.sock")
            assert (r.returncode, r.stderr) == (4, f"edge-gateway: the gateway (pid {os.getpid()}) is starting: it "
                                                   "answers once its analytics kernels are compiled (seconds; minutes "
                                                   "at a Pi's first start); ask again shortly\n"), cmd
    finally:
        lock.release()
    assert cli("status", "--socket", tmp_path / "control.sock").returncode == 3


def test_reload_waits_as_long_as_it_is_told_and_says_it_may_still_apply(tmp_path):
    """A reload may compile new kernels first (minutes on a Pi): the wait is --timeout, 600 s by default."""
    import socket

    sock = tmp_path / "control.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as srv:  # a daemon that never answers
        srv.bind(str(sock))
        srv.listen(1)
        r = cli("reload", "--socket", sock, "--timeout", "0.5")
    assert r.returncode == 1, r.stderr
    assert r.stderr == (f"edge-gateway: {sock}: no answer within 0.5 s; a reload may still apply "
                        "(see `edge-gateway status`)\n")
    assert cli("reload", "--socket", sock, "--timeout", "-1").returncode == 2


def test_status_tail_reload_prometheus_and_journal_lines(tmp_path):
    link = tmp_path / "air-1.tty"
    secret = tmp_path / "secrets.txt"
    secret.write_text("username: gw\npassword: pw-never-logged-42\n")
    os.chmod(secret, 0o600)
    prom = free_port()
    cfg = write_config(tmp_path, sensors=serial_sensor("air-1", link),
                       extra=f"metrics: {{prometheus_port: {prom}}}\n")
    cfg.write_text(cfg.read_text().replace("keepalive_s: 5}", f"keepalive_s: 5, secrets_file: {secret}}}"))
    sim = Process(["-m", "simulators.serial_line", "--rate", "50", "--link", str(link), "--wait-open"])
    gw_started = time.time()
    gw = GatewayProcess(cfg, tmp_path / "gw.log", env={"JOURNAL_STREAM": "8:12345"}).start()
    sock = tmp_path / "state" / "control.sock"
    try:
        gw.wait_ready()
        wait_for(lambda: polled_status(sock)["sensors"]["air-1"]["readings"] > 20, 20, 0.2, "readings")
        s = status_json(sock)
        assert s["gateway"] == "ops-gw" and s["link"] == "down" and s["pid"] == gw.proc.pid
        air = s["sensors"]["air-1"]
        assert set(air["last_values"]) == {"pm25", "pm10", "noise_db"}
        assert air["last_values"]["pm25"]["unit"] == "ug/m3"
        assert air["malformed"] == 0 and air["link_errors"] == 0 and air["rate_per_s"] > 0
        assert {"depth", "oldest_age_s", "bytes", "last_seq"} <= set(s["queue"])
        assert s["reload"]["count"] == 0 and s["last_reload_error"] == ""
        # never connected (nothing listens on the broker port): down since the link started
        assert gw_started <= s["uplink"]["down_since"] <= time.time() and s["uplink"]["connects"] == 0
        assert (air["link_up"], air["last_error_ts"], air["expected_interval_s"], air["no_data_after_s"]) == (
            True, None, None, 60.0)

        r = cli("status", "--config", cfg)
        assert r.returncode == 0, r.stderr
        assert re.search(r"^air-1\s+serial_line\s+\d+\.\d+/s", r.stdout, re.M), r.stdout
        since = time.strftime("%H:%M:%S", time.localtime(s["uplink"]["down_since"]))
        assert re.search(rf"^broker    down since {since} \(\d+ s\): connect to 127\.0\.0\.1:\d+ failed: ", r.stdout,
                         re.M), r.stdout
        assert re.search(r"^queue     \d+ messages, oldest \S+, in flight 0$", r.stdout, re.M), r.stdout
        assert re.search(r"; published: 0 aggregates, 0 events$", r.stdout, re.M), r.stdout
        assert "last seq" not in r.stdout and "{" not in r.stdout

        r = cli("tail", "--socket", sock, "--count", "6")
        assert r.returncode == 0, r.stderr
        lines = r.stdout.splitlines()
        assert len(lines) == 6 and all(" air-1 " in ln for ln in lines)
        r = cli("tail", "air-1", "--socket", sock, "--count", "3", "--json")
        items = [json.loads(ln) for ln in r.stdout.splitlines()]
        assert [i["type"] for i in items] == ["reading"] * 3 and {i["sensor"] for i in items} == {"air-1"}

        body = urllib.request.urlopen(f"http://127.0.0.1:{prom}/metrics", timeout=10).read().decode()
        assert 'edge_gateway_sensor_readings_total{gateway="ops-gw",sensor="air-1"}' in body
        assert 'edge_gateway_link_up{gateway="ops-gw"} 0.0' in body
        assert "edge_gateway_queue_oldest_age_seconds" in body

        r = cli("reload", "--socket", sock)
        assert r.returncode == 0 and "; kept air-1; " in r.stdout, r.stdout + r.stderr
        cfg.write_text(cfg.read_text().replace("id: ops-gw", "id: renamed"))
        r = cli("reload", "--socket", sock)
        assert r.returncode == 1 and ("edge-gateway: reload refused, the running config stays: nothing from this "
                                      "file was applied; needs a restart: gateway.id (running 'ops-gw', file "
                                      "'renamed'); the state directory ") in r.stderr, r.stderr
        s = status_json(sock)
        assert s["reload"]["count"] == 2 and s["reload"]["failed"] == 1
        assert "gateway.id" in s["last_reload_error"] and s["gateway"] == "ops-gw"
        # a tail left running when the gateway stops: said, and not exit 0 (review 17, technician #4)
        tail = subprocess.Popen([sys.executable, "-m", "edge_gateway", "tail", "--socket", str(sock)], cwd=REPO,
                                text=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
        wait_for(lambda: polled_status(sock)["control"]["clients"] >= 2, timeout=10)  # the tail and this ask
    finally:
        sim.stop()
        rc = gw.stop()
    assert rc == 0
    assert tail.wait(timeout=20) == 1
    assert tail.stderr.read() == ("edge-gateway: the gateway closed the connection (stopped or restarting): "
                                  "see edge-gateway status\n")
    log = gw.log_text()
    assert "pw-never-logged-42" not in log
    lines = [ln for ln in log.splitlines() if ln.strip()]
    assert lines and all(re.match(r"<[0-7]>", ln) for ln in lines), lines[:5]  # journald priority prefixes
    assert any(ln.startswith("<3>edge_gateway.daemon: reload refused") for ln in lines)
    assert any(ln.startswith("<6>edge_gateway.daemon: gateway ops-gw running") for ln in lines)


def test_logs_without_journal_have_timestamps():
    code = ("import logging, sys; from edge_gateway import logs; logs.setup('info', sys.stdout); "
            "logging.getLogger('x').warning('hello')")
    env = {k: v for k, v in os.environ.items() if k != "JOURNAL_STREAM"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=REPO).stdout
    assert re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} WARNING x: hello", out), out
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                         env={**env, "JOURNAL_STREAM": "1:2"}).stdout
    assert out == "<4>x: hello\n"


def test_rate_counts_up_to_the_live_count_from_the_older_sample():
    from edge_gateway.metrics import RateMeter

    m = RateMeter()
    assert m.rate("air-1", 10.0, 30, since=7.0) == 10.0  # no sample yet: since start
    m.sample(10.0, {"air-1": 30})
    assert m.rate("air-1", 12.0, 50, since=7.0) == 10.0
    m.sample(11.0, {"air-1": 30, "noise-1": 0})
    m.sample(12.0, {"air-1": 30, "noise-1": 0})  # the sensor paused for two samples ...
    # ... and readings flow again: not 0/s, counted from the oldest sample of the 30 s window (t = 10)
    assert m.rate("air-1", 12.5, 45, since=7.0) == (45 - 30) / 2.5
    assert m.rate("noise-1", 12.5, 6, since=7.0) == 4.0
    assert m.rate("bins-1", 12.5, 4, since=10.5) == 2.0  # new sensor, in no sample yet
    assert m.rate("air-1", 12.0, 30, since=7.0) == 0.0  # a sensor that stopped
