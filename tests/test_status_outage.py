"""A broker outage in ``status`` (the next connect attempt while the link backs off, the last outage once
it is back), a reload refused for the mistakes the CLI already listed (said once), ``tail | head`` (no
"Broken pipe"), and status rates over a steady window (field walkthrough)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time

import pytest

from edge_gateway import config
from edge_gateway.cmd_status import ago, broker_line, render
from edge_gateway.config import BrokerSection
from edge_gateway.daemon import Gateway
from edge_gateway.metrics import RateMeter
from edge_gateway.uplink import MqttLink
from ops_support import cli
from support import REPO, Broker
from uplink_support import until

T0 = 1_700_000_000.0


def _hms(ts: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(ts))


# --- the broker line -------------------------------------------------------------------------------

def test_a_link_in_its_backoff_says_when_it_tries_again(capsys):
    render({"gateway": "gw", "link": "down", "link_error": "connect to 127.0.0.1:1883 failed: [Errno 111] "
            "Connection refused", "uplink": {"down_since": T0 - 99, "next_attempt_in_s": 12.4}}, now=T0)
    assert capsys.readouterr().out.splitlines()[1] == (
        f"broker    down since {_hms(T0 - 99)} (99 s): connect to 127.0.0.1:1883 failed: [Errno 111] Connection "
        "refused; next attempt in 12 s")
    assert broker_line({"link": "down", "uplink": {"down_since": T0 - 3, "next_attempt_in_s": 0.4}}, T0) == (
        f"broker    down since {_hms(T0 - 3)} (3 s); next attempt in under 1 s")
    # attempting now (no backoff under way): as before
    assert broker_line({"link": "down", "link_error": "x", "uplink": {"down_since": T0 - 5, "next_attempt_in_s": None}},
                       T0) == f"broker    down since {_hms(T0 - 5)} (5 s): x"


def test_a_link_back_up_says_since_when_and_its_last_outage(capsys):
    render({"gateway": "gw", "link": "up", "uplink": {"down_since": None, "next_attempt_in_s": None,
                                                      "up_since": T0 - 60,
                                                      "last_outage": {"start": T0 - 164, "end": T0 - 60}}}, now=T0)
    assert capsys.readouterr().out.splitlines()[1] == (
        f"broker    up since {_hms(T0 - 60)}; last down {_hms(T0 - 164)}-{_hms(T0 - 60)} (104 s)")
    # up from the start, never lost: since when, and nothing more
    assert broker_line({"link": "up", "uplink": {"up_since": T0 - 7, "last_outage": None}}, T0) == (
        f"broker    up since {_hms(T0 - 7)}")


# --- a real link against a real Mosquitto ----------------------------------------------------------

async def test_a_real_link_reports_its_next_attempt_and_its_outages(tmp_path, monkeypatch):
    """Mosquitto down at the start, then up, then stopped and started again: the link (and the daemon's
    ``uplink`` document) says when it tries again while it backs off, and keeps the last outage."""
    import edge_gateway.uplink as uplink

    monkeypatch.setattr(uplink, "backoff_delay", lambda attempt, lo, hi, *a, **kw: hi)  # no jitter: 3 s
    broker = Broker(tmp_path / "broker")  # not started yet: connections are refused
    cfg = BrokerSection(port=broker.port, keepalive_s=2, reconnect_min_s=3.0, reconnect_max_s=3.0)
    gw = Gateway(config.loads(f"gateway: {{id: gw, state_dir: {tmp_path / 'state'}}}\n"))
    link = MqttLink(cfg, "outage-test", "city/out/status", birth=lambda: b"online", will=b"offline",
                    on_ack=lambda mid, rc: None, on_state=lambda up: None)
    gw.link = link
    first_down = link.down_since
    try:
        link.start()
        await until(lambda: link.next_attempt_at is not None, 10, "backing off after a refused connect")
        before = time.time()
        u = gw.uplink_status()
        after = time.time()
        assert link.last_error.startswith(f"connect to 127.0.0.1:{broker.port} failed: ")
        assert first_down <= link.next_attempt_at - 3.0 <= before  # scheduled 3 s after a failed attempt
        assert round(link.next_attempt_at - after, 1) <= u["next_attempt_in_s"] <= round(
            link.next_attempt_at - before, 1) <= 3.0
        assert (u["down_since"], u["up_since"], u["last_outage"]) == (first_down, None, None)
        assert broker_line({"link": "down", "link_error": link.last_error, "uplink": u}, first_down + 4) == (
            f"broker    down since {_hms(first_down)} (4 s): {link.last_error}; next attempt in "
            + (ago(u["next_attempt_in_s"]) if u["next_attempt_in_s"] >= 1 else "under 1 s"))

        broker.start()
        await until(lambda: link.connected, 10, "connected")
        # a first connect that had to retry: that wait is an outage too
        assert link.last_outage == {"start": first_down, "end": link.up_since}
        assert (link.down_since, link.next_attempt_at) == (None, None)
        first_up = link.up_since

        stopped_at = time.time()
        broker.stop()
        await until(lambda: not link.connected and link.next_attempt_at is not None, 10, "down, backing off")
        lost = link.down_since
        assert first_up < stopped_at <= lost <= link.next_attempt_at - 3.0 <= time.time()
        u = gw.uplink_status()
        assert (u["down_since"], u["up_since"]) == (lost, None) and 0 < u["next_attempt_in_s"] <= 3.0
        assert u["last_outage"] == {"start": first_down, "end": first_up}  # the one before, kept while down

        restarted_at = time.time()
        broker.start()
        await until(lambda: link.connected, 10, "connected again")
        u = gw.uplink_status()
        assert u["last_outage"] == {"start": lost, "end": link.up_since} and u["up_since"] == link.up_since
        assert restarted_at <= link.up_since <= time.time()
        assert (u["down_since"], u["next_attempt_in_s"]) == (None, None)
        assert broker_line({"link": "up", "uplink": u}, time.time()) == (
            f"broker    up since {_hms(link.up_since)}; last down {_hms(lost)}-{_hms(link.up_since)} "
            f"({ago(link.up_since - lost)})")
    finally:
        await link.stop()
        broker.close()


def test_a_plain_first_connect_is_no_outage():
    """Down from its creation until the first CONNACK is not an outage when nothing failed."""
    link = MqttLink(BrokerSection(), "x", "t/status", birth=lambda: b"", will=b"",
                    on_ack=lambda mid, rc: None, on_state=lambda up: None)
    assert (link.next_attempt_at, link.up_since, link.last_outage) == (None, None, None)


# --- reload: the mistakes once ---------------------------------------------------------------------

class FakeDaemon:
    """A control socket answering every request with ``reply`` (as the daemon would)."""

    def __init__(self, path, reply: dict | None = None, stream: bool = False) -> None:
        self.reply, self.stream = reply, stream
        self.srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.srv.bind(str(path))
        self.srv.listen(4)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            conn, _ = self.srv.accept()
        except OSError:
            return
        with conn:
            conn.makefile("rb").readline()
            if not self.stream:
                conn.sendall(json.dumps(self.reply).encode() + b"\n")
                return
            conn.sendall(b'{"ok":true}\n')
            for i in range(100_000):  # a tail that never ends, until the client goes
                try:
                    conn.sendall(json.dumps({"type": "reading", "sensor": "air-1", "channel": "pm25", "value": i,
                                             "unit": "ug/m3", "ts": T0 + i}).encode() + b"\n")
                except OSError:
                    return
                time.sleep(0.002)

    def close(self) -> None:
        self.srv.close()
        self.thread.join(5)


BROKEN = "gateway: {{id: gw, state_dir: {state}, batch_interval_s: -1}}\nbroker: {{port: 99999}}\n"


@pytest.mark.parametrize("extra", [False, True])
def test_a_refused_reload_lists_the_mistakes_once(tmp_path, extra):
    """``reload -c FILE`` with a broken FILE: the CLI lists its mistakes (finding the socket), then the
    daemon refuses for the same ones, read from its own (absolute) path: said once, not twice."""
    state = tmp_path / "state"
    state.mkdir()
    cfg = tmp_path / "gw.yaml"
    cfg.write_text(BROKEN.format(state=state))
    rel = os.path.relpath(cfg, REPO)  # the CLI runs in REPO; the daemon names the file absolutely
    with pytest.raises(config.ConfigError) as daemons:
        config.load(cfg)
    mistakes = str(daemons.value).splitlines()
    assert len(mistakes) == 2 and all(m.startswith(f"{cfg}:") for m in mistakes)
    other = f"{cfg}:9:1: sensors: one more mistake the daemon read"
    daemon = FakeDaemon(state / "control.sock",
                        {"ok": False, "error": "\n".join(mistakes + ([other] if extra else []))})
    try:
        r = cli("reload", "-c", rel, timeout=30)
    finally:
        daemon.close()
    sock = state / "control.sock"
    assert (r.returncode, r.stdout) == (1, "")
    assert r.stderr.splitlines() == [
        *(f"edge-gateway: {m.replace(str(cfg), rel)}" for m in mistakes),
        f"edge-gateway: note: asking the daemon at {sock} anyway: it keeps running the config it loaded last",
        *(["edge-gateway: reload refused, the running config stays: for the mistakes above and " + other] if extra
          else ["edge-gateway: reload refused, the running config stays: for the mistakes above"])]


# --- tail | head -----------------------------------------------------------------------------------

def test_tail_into_a_reader_that_goes_away_ends_quietly_with_0(tmp_path):
    sock = tmp_path / "control.sock"
    daemon = FakeDaemon(sock, stream=True)
    try:
        p = subprocess.Popen([sys.executable, "-m", "edge_gateway", "tail", "--socket", str(sock)], cwd=REPO,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        lines = [p.stdout.readline() for _ in range(3)]  # head -3
        p.stdout.close()
        rc = p.wait(timeout=30)
        err = p.stderr.read()
        p.stderr.close()
    finally:
        daemon.close()
    assert [ln.split()[1:] for ln in lines] == [["air-1", "pm25", str(i), "ug/m3"] for i in range(3)]
    assert (rc, err) == (0, "")


def test_write_line_to_a_closed_pipe_says_false_and_writes_to_devnull_after():
    from edge_gateway.cmd_tail import write_line  # here: the other tests run on a version without it

    r, w = os.pipe()
    os.close(r)
    out = os.fdopen(w, "w")
    assert write_line("first", out) is False  # no reader: EPIPE at the flush
    assert os.fstat(out.fileno()).st_rdev == os.stat(os.devnull).st_rdev  # stdout now goes nowhere
    out.write("more\n")
    out.flush()  # no BrokenPipeError at exit either
    out.close()


# --- rates over a steady window --------------------------------------------------------------------

def test_rates_over_30_s_stay_steady_when_readings_come_in_bursts():
    """10 readings every 2 s (a block polled every 2 s), sampled every second, asked half a second after
    each sample: over 1-2 s the rate read 0 and 6.67 in turn; over 30 s it stays near 5."""
    meter = RateMeter()

    def count(t: float) -> int:
        return 10 * int(t // 2)

    rates = []
    for s in range(0, 61):
        meter.sample(float(s), {"air-1": count(s)})
        if s >= 40:
            now = s + 0.5
            rates.append(meter.rate("air-1", now, count(now), since=0.0))
    # the oldest sample within the window is 29 s before the newest: (count now - count then) / 29.5 s
    assert rates[0] == (count(40.5) - count(11)) / 29.5 == 150 / 29.5
    assert rates[1] == (count(41.5) - count(12)) / 29.5 == 140 / 29.5
    assert min(rates) == 140 / 29.5 and max(rates) == 150 / 29.5  # +-3.5 % around 5/s, not 0 <-> 6.67
    assert len(meter._samples) == 31  # only the window's samples are kept (t = 30 .. 60)


def test_rates_of_a_new_sensor_a_reset_count_and_before_any_sample():
    meter = RateMeter(window_s=30.0, maxlen=8)
    assert meter.rate("a", 10.0, 20, since=5.0) == 4.0  # no sample yet: since the start
    for t in range(10):
        meter.sample(100.0 + t, {"a": 10 * t, **({"b": 3 * (t - 6)} if t >= 6 else {})})
    assert len(meter._samples) == 8  # bounded: t = 102 .. 109
    assert meter.rate("a", 110.0, 100, since=0.0) == (100 - 20) / 8.0  # from the oldest kept (t = 102)
    assert meter.rate("b", 110.0, 12, since=0.0) == (12 - 0) / 4.0  # from its first sample (t = 106)
    meter.sample(110.0, {"a": 5})  # a reload replaced the driver: its count started again
    assert meter.rate("a", 111.0, 7, since=0.0) == 2.0  # from the sample after the drop only
    assert meter.rate("a", 150.0, 7, since=100.0) == 7 / 50.0  # the window passed: no sample within it
