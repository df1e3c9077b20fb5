"""``status``'s recent events survive a restart and a crash (field walkthrough: after a power cut, exactly
when the technician asks "what happened?", the table was empty).

End to end: the daemon as a subprocess, a serial sensor on a pty behind a stable link (stamps from the
device: ``ts``), a real Mosquitto and a subscriber; a range anomaly before a clean stop, one more after
the restart, then a SIGKILL before the next periodic checkpoint. Then a damaged or foreign blob in the
queue's checkpoint table: the daemon starts with an empty table and says why. The table's layout and
the blob's checks are tested on their own below.
"""

from __future__ import annotations

import io
import signal
import sqlite3
import textwrap
import time
from contextlib import redirect_stdout

import msgpack
import pytest

from edge_gateway import config
from edge_gateway.cmd_status import events_table
from edge_gateway.metrics import EVENTS_CHECKPOINT, RECENT_EVENTS, Telemetry, pack_events, unpack_events
from edge_gateway.queue import DurableQueue
from ops_support import cli, status_json
from simulators.pty_port import PtyPort
from support import GatewayProcess, Subscriber, wait_for

T0 = 1_700_000_000.0
HEADER = "TIME      SENSOR  EVENT           CHANNEL  VALUE  SCORE  REASON"


def _hms(ts: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(ts))


def _config(tmp_path, port: int, link: str = "") -> str:
    sensors = textwrap.dedent(f"""\
        sensors:
          - id: air-1
            driver: serial_line
            options: {{port: {link}, format: kv, timestamp_field: ts, units: {{pm25: ug/m3}}}}
        """) if link else ""
    return textwrap.dedent(f"""\
        gateway: {{id: hist-gw, topic_prefix: city, state_dir: {tmp_path}/state, batch_interval_s: 0.05}}
        broker: {{host: 127.0.0.1, port: {port}, keepalive_s: 5}}
        windows: {{seconds: 10, grace_s: 2}}
        detector: {{threshold: 0.5, params: {{weights: [0, 0, 0, 0, 1, 0, 0, 0], range_hi: 50}}}}
        """) + sensors


def _line(t: float, k: int) -> bytes:
    """Reading ``k`` of the device (one a second from ``t``): 100 at k = 5 and 16 (above range_hi), else
    10 to 11.5 (never flat)."""
    v = 100 if k in (5, 16) else 10 + 0.5 * (k % 4)
    return f"ts={t + k},pm25={v}\n".encode()


def _anomaly(start: float, state: str, **more) -> dict:
    """The event as ``status`` keeps it (the message's fields without ``gw``)."""
    end = {"end": start} if state == "closed" else {}
    return {"sensor": "air-1", "type": "anomaly", "state": state, "peak_value": 100.0, "peak_score": 1.0,
            "channel": "pm25", "unit": "ug/m3", "detector": "range", "start": start, **end, **more}


def _spike(port: PtyPort, sub: Subscriber, t: float, ks: range) -> None:
    """Readings ``ks`` (the spike last), its ``open`` event, then 5 readings more, which close it."""
    for k in ks:
        port.write(_line(t, k))
    spike = t + ks[-1]
    wait_for(lambda: any(e["start"] == spike for e in sub.of("event")), 30, what="the open event")
    for k in range(ks[-1] + 1, ks[-1] + 6):
        port.write(_line(t, k))
    wait_for(lambda: any(e["start"] == spike and e["state"] == "closed" for e in sub.of("event")), 30,
             what="the closed event")


def _table(sock) -> list[str]:
    """The events table of ``edge-gateway status`` (from its header on)."""
    r = cli("status", "--socket", sock, timeout=30)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    return lines[lines.index(HEADER):] if HEADER in lines else []


def _started(cfg, log) -> tuple[GatewayProcess, float, float]:
    """A daemon, and the wall times before its start and once it is ready (its restart time is between)."""
    before = time.time()
    gw = GatewayProcess(cfg, log).start()
    gw.wait_ready()
    return gw, before, time.time()


def test_the_events_before_a_restart_are_shown_under_a_restart_line_and_a_crash_loses_only_the_unsaved(
        broker, tmp_path):
    t = float(round(time.time()) - 600)  # the device's stamps: in the past, never "future"
    link = str(tmp_path / "air.tty")
    cfg = tmp_path / "gw.yaml"
    cfg.write_text(_config(tmp_path, broker.port, link))
    sock = tmp_path / "state" / "control.sock"
    sub = Subscriber(broker.port, "city/hist-gw/event/#", client_id="hist-sub").start()
    port = PtyPort(link)
    first, second = [_anomaly(t + 5, "open"), _anomaly(t + 5, "closed")], [_anomaly(t + 16, "open"),
                                                                           _anomaly(t + 16, "closed")]
    rows_first = [f"{_hms(t + 5)}  air-1   anomaly (open)  pm25     100    1.00   detector range",
                  f"{_hms(t + 5)}  air-1   anomaly 0.0 s   pm25     100    1.00   detector range"]
    rows_second = [f"{_hms(t + 16)}  air-1   anomaly (open)  pm25     100    1.00   detector range",
                   f"{_hms(t + 16)}  air-1   anomaly 0.0 s   pm25     100    1.00   detector range"]
    rule = "--------  ------  --------------  -------  -----  -----  --------------"
    gw = None
    try:
        # run 1: one anomaly, then a clean stop (SIGTERM), which stores the checkpoints
        gw, _, _ = _started(cfg, tmp_path / "run1.log")
        assert port.wait_opened(timeout=30)
        _spike(port, sub, t, range(0, 6))
        assert status_json(sock)["last_events"] == first
        assert _table(sock) == [HEADER, rule, *rows_first]
        assert gw.stop() == 0, gw.log_text()[-3000:]

        # run 2: the events of run 1 are back before `status` answers, under the line of this restart
        gw, before, ready = _started(cfg, tmp_path / "run2.log")
        shown = status_json(sock)["last_events"]
        restart2 = shown[0]["before_restart"] if shown else None
        assert shown == [{**e, "before_restart": restart2} for e in first]
        assert before <= restart2 <= ready
        assert _table(sock) == [HEADER, rule, *rows_first, f"    -- gateway restarted at {_hms(restart2)} --"]
        assert "restored 2 recent event(s) of the last run" in gw.log_text()
        assert port.wait_opened(timeout=30)
        _spike(port, sub, t, range(11, 17))  # one more anomaly in this run: below the line
        assert status_json(sock)["last_events"] == [{**e, "before_restart": restart2} for e in first] + second
        assert _table(sock) == [HEADER, rule, *rows_first, f"    -- gateway restarted at {_hms(restart2)} --",
                                *rows_second]
        # a crash (SIGKILL: the process dies, as in a power cut, but the OS keeps what SQLite wrote)
        # seconds after the events, well before run()'s first periodic checkpoint (60 s)
        assert gw.stop(signal.SIGKILL) == -signal.SIGKILL

        # run 3: what the last checkpoint held (run 1's events); run 2's were not saved yet, as documented,
        # but they were queued messages and reached the broker all the same
        gw, before, ready = _started(cfg, tmp_path / "run3.log")
        shown = status_json(sock)["last_events"]
        restart3 = shown[0]["before_restart"] if shown else None
        assert shown == [{**e, "before_restart": restart3} for e in first]
        assert before <= restart3 <= ready and restart3 > restart2
        assert _table(sock) == [HEADER, rule, *rows_first, f"    -- gateway restarted at {_hms(restart3)} --"]
        sent = sorted({(e["seq"], e["start"], e["state"]) for e in sub.of("event")})  # a crash may resend
        assert [s[1:] for s in sent] == [(t + 5, "open"), (t + 5, "closed"), (t + 16, "open"), (t + 16, "closed")]
        assert gw.stop() == 0, gw.log_text()[-3000:]
        gw = None
    finally:
        if gw is not None:
            gw.stop()
        port.close()
        sub.stop()
    # the clean stop of run 3 stored its view: run 1's events with the mark of the restart that ended their run
    assert unpack_events(_stored(cfg)) == [{**e, "before_restart": restart3} for e in first]


def _stored(cfg_path) -> bytes | None:
    path = config.load(str(cfg_path)).queue_path
    with sqlite3.connect(path) as db:
        row = db.execute("SELECT blob FROM checkpoint WHERE name = ?", (EVENTS_CHECKPOINT,)).fetchone()
    return row and row[0]


TORN = pack_events([_anomaly(T0, "open")])[:40]  # a write cut short
FOREIGN = msgpack.packb({"arrays": {"ewma": [1.0, 2.0]}, "n": 2})  # another checkpoint's blob


@pytest.mark.parametrize("blob, why", [(TORN, "not msgpack: ValueError: Unpack failed: incomplete input"),
                                       (FOREIGN, "not a recent-events checkpoint")], ids=["torn", "foreign"])
async def test_a_damaged_or_foreign_blob_is_logged_and_the_daemon_starts_with_an_empty_table(
        broker, tmp_path, blob, why):
    cfg = tmp_path / "gw.yaml"
    cfg.write_text(_config(tmp_path, broker.port))
    path = config.load(str(cfg)).queue_path
    path.parent.mkdir(parents=True)
    q = DurableQueue(path, lambda fields, seq: b"")  # the real queue writes it where the daemon reads it
    await q.open()
    await q.save_checkpoint(EVENTS_CHECKPOINT, blob, defer=False)
    await q.close()
    gw = GatewayProcess(cfg, tmp_path / "gw.log").start()
    try:
        gw.wait_ready()
        assert status_json(tmp_path / "state" / "control.sock")["last_events"] == []
        assert _table(tmp_path / "state" / "control.sock") == []
    finally:
        assert gw.stop() == 0, gw.log_text()[-3000:]
    warnings = [line for line in gw.log_text().splitlines() if "recent events" in line]
    assert len(warnings) == 1 and "WARNING" in warnings[0], warnings
    assert warnings[0].endswith(f"recent events of the last run not restored ({why}): `edge-gateway status` "
                                "lists only the events from now on")
    assert _stored(cfg) == pack_events([])  # the stop replaced it with what this run saw: nothing


# --- the table ---------------------------------------------------------------------------------------

def test_each_run_comes_first_oldest_first_under_the_line_of_the_restart_that_ended_it(monkeypatch):
    """Two restarts, the second with the clock stepped back (a Pi without RTC before NTP): each run's
    events stay above the line of its restart, even those stamped later than the newer runs'."""
    monkeypatch.delenv("COLUMNS", raising=False)
    r1, r2 = T0 + 100, T0 + 200
    gap = {"sensor": "noise-1", "type": "link_gap", "start": T0 + 20, "end": T0 + 31.1, "reason": "unplugged"}
    events = [{**_anomaly(T0 + 50, "closed"), "before_restart": r1}, {**gap, "before_restart": r1},
              {**_anomaly(T0 + 150, "open"), "before_restart": r2},
              _anomaly(T0 - 3600, "open")]  # this run: its clock an hour behind
    out = io.StringIO()
    with redirect_stdout(out):
        events_table(events)
    assert out.getvalue().splitlines() == [
        "TIME      SENSOR   EVENT            CHANNEL  VALUE  SCORE  REASON",
        "--------  -------  ---------------  -------  -----  -----  --------------",
        f"{_hms(T0 + 20)}  noise-1  link_gap 11.1 s                         unplugged",
        f"{_hms(T0 + 50)}  air-1    anomaly 0.0 s    pm25     100    1.00   detector range",
        f"    -- gateway restarted at {_hms(r1)} --",
        f"{_hms(T0 + 150)}  air-1    anomaly (open)   pm25     100    1.00   detector range",
        f"    -- gateway restarted at {_hms(r2)} --",
        f"{_hms(T0 - 3600)}  air-1    anomaly (open)   pm25     100    1.00   detector range"]


# --- the blob ----------------------------------------------------------------------------------------

def test_restored_events_keep_the_mark_of_their_restart_and_the_bound_keeps_the_newest():
    run1 = Telemetry(clock=lambda: T0)
    for k in range(RECENT_EVENTS + 3):  # 13 seen, 10 kept
        run1.observe_event({"gw": "g", **_anomaly(T0 + k, "open")})
    run2 = Telemetry(clock=lambda: T0 + 100)
    assert run2.restore_events(run1.events_blob(), T0 + 100) == RECENT_EVENTS
    run2.observe_event({"gw": "g", **_anomaly(T0 + 150, "open")})
    run3 = Telemetry(clock=lambda: T0 + 200)
    assert run3.restore_events(run2.events_blob(), T0 + 200) == RECENT_EVENTS
    assert [(e["start"], e["before_restart"]) for e in run3.events] == (
        [(T0 + k, T0 + 100) for k in range(4, 13)] + [(T0 + 150, T0 + 200)])
    assert run1.events_blob() == run1.events_blob() == pack_events(list(run1.events))  # unchanged: not rewritten


@pytest.mark.parametrize("blob, why", [
    (b"", "not msgpack: ValueError: Unpack failed: incomplete input"),
    (b"\xc1", "not msgpack: FormatError"),
    (msgpack.packb([1, 2]), "not a recent-events checkpoint"),
    (msgpack.packb({"format": 2, "events": []}), "format 2, this version reads 1"),
    (msgpack.packb({"format": 1, "events": {"a": 1}}), "its events are not a list"),
    (msgpack.packb({"format": 1, "events": [{"type": "x"}, [1]]}), "event 1 is not a map of names"),
    (msgpack.packb({"format": 1, "events": [{b"type": "x"}]}), "event 0 is not a map of names"),
    (msgpack.packb({"format": 1, "events": [{"type": "x", "start": "noon"}]}), "event 0: start is not a number"),
    (msgpack.packb({"format": 1, "events": [{"type": "x", "before_restart": True}]}),
     "event 0: before_restart is not a number"),
    (msgpack.packb({"format": 1, "events": [{"type": 3}]}), "event 0: type is not text"),
], ids=["empty", "reserved-byte", "list", "format-2", "events-map", "event-list", "int-key", "start-text",
        "mark-bool", "type-int"])
def test_a_blob_that_is_not_ours_is_refused_with_the_reason_and_nothing_restored(blob, why):
    tel = Telemetry()
    tel.observe_event({"gw": "g", **_anomaly(T0, "open")})
    with pytest.raises(ValueError) as exc:
        tel.restore_events(blob, T0 + 100)
    assert str(exc.value) == why
    assert list(tel.events) == [_anomaly(T0, "open")]
