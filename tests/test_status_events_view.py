"""Technician walkthrough #2-#5: the events table says how long an event lasted, ``tail --events``
drops ``gw=``, "not running" says how to reach a daemon with another config, and tables fit the
terminal (the last column wrapped, never cut)."""

from __future__ import annotations

import io
import json
import time

import pytest

from edge_gateway import cmd_tail, control
from edge_gateway.cmd_common import table
from edge_gateway.cmd_status import events_table
from edge_gateway.cmd_tail import format_item
from ops_support import cli

T0 = 1_700_000_000.0


def _hms(ts: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(ts))


def test_events_table_shows_durations_of_what_ended_and_open_for_what_runs(capsys, monkeypatch):
    monkeypatch.delenv("COLUMNS", raising=False)
    events_table([
        {"start": T0, "sensor": "air-1", "type": "anomaly", "state": "closed", "channel": "pm25",
         "end": T0 + 5.94, "peak_value": 99.0, "peak_score": 3.0, "detector": "zscore"},
        {"start": T0 + 10, "sensor": "noise-1", "type": "link_gap", "end": T0 + 21.1, "reason": "unplugged"},
        {"start": T0 + 20, "sensor": "air-1", "type": "anomaly", "state": "closed", "channel": "pm10",
         "end": T0 + 200, "peak_value": 7.0, "peak_score": 2.5, "detector": "hst"},
        {"start": T0 + 30, "sensor": "air-1", "type": "anomaly", "state": "open", "channel": "pm25",
         "peak_value": 181.5, "peak_score": 4.5, "detector": "zscore"},
    ])
    assert capsys.readouterr().out.splitlines() == [
        "TIME      SENSOR   EVENT            CHANNEL  VALUE  SCORE  REASON",
        "--------  -------  ---------------  -------  -----  -----  ---------------",
        f"{_hms(T0)}  air-1    anomaly 5.9 s    pm25     99     3.00   detector zscore",
        f"{_hms(T0 + 10)}  noise-1  link_gap 11.1 s                         unplugged",
        f"{_hms(T0 + 20)}  air-1    anomaly 3 min    pm10     7      2.50   detector hst",
        f"{_hms(T0 + 30)}  air-1    anomaly (open)   pm25     181.5  4.50   detector zscore",
    ]


EVENT = {"type": "event", "event": "link_gap", "gw": "ops-gw", "sensor": "noise-1", "start": T0 + 0.5,
         "end": T0 + 11.6, "reason": "unplugged", "seq": 42}


def test_tail_event_lines_have_no_gw():
    end = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(T0 + 11.6))
    assert format_item(EVENT) == f"{_hms(T0)}.500 noise-1      EVENT link_gap end={end} reason=unplugged"


@pytest.mark.parametrize("as_json", [False, True])
def test_tail_events_drops_gw_for_people_and_keeps_it_in_json(as_json, monkeypatch, capsys, tmp_path):
    def stream(path, req):
        yield {"ok": True}
        yield {"type": "reading", "sensor": "noise-1", "channel": "db", "value": 40.0, "ts": T0}
        yield EVENT

    monkeypatch.setattr(control, "stream", stream)
    args = type("A", (), {"socket": str(tmp_path / "c.sock"), "config": None, "sensor": None, "json": as_json,
                          "events": True, "count": 1})()
    assert cmd_tail.handle(args) == 0
    out = capsys.readouterr().out.splitlines()
    if as_json:
        assert [json.loads(line) for line in out] == [EVENT]
    else:
        assert len(out) == 1 and "gw=" not in out[0] and out[0] == format_item(EVENT)


def test_not_running_says_to_pass_the_config_or_socket_of_another_daemon(tmp_path):
    sock = tmp_path / "control.sock"
    r = cli("status", "--socket", sock)
    assert r.returncode == 3
    assert r.stderr.splitlines() == [
        f"edge-gateway: the daemon is not running: no edge-gateway daemon at {sock} (No such file or directory)",
        "edge-gateway: start it with `systemctl start edge-gateway` or `edge-gateway run CONFIG`; "
        "if it runs with another config, pass --config FILE (or --socket PATH)"]


ROWS = [["FAIL", "tls", "the certificate /etc/edge-gateway/client.crt expires in 3 days: renew it before "
                        "then, or the broker refuses the gateway"],
        ["OK", "clock", "in sync"]]


def test_table_wraps_the_last_column_to_columns_under_that_column(monkeypatch):
    monkeypatch.setenv("COLUMNS", "60")
    out = io.StringIO()
    table(ROWS, ["STATUS", "CHECK", "DETAIL"], out=out)
    lines = out.getvalue().splitlines()
    assert lines == [
        "STATUS  CHECK  DETAIL",
        "------  -----  --------------------------------------------",
        "FAIL    tls    the certificate /etc/edge-gateway/client.crt",
        "               expires in 3 days: renew it before then, or",
        "               the broker refuses the gateway",
        "OK      clock  in sync"]
    assert max(map(len, lines)) <= 60


def test_table_never_cuts_a_word_longer_than_the_room_and_stays_wide_without_columns(monkeypatch):
    word = "/var/lib/edge-gateway/a-very-long-directory-name/with/more/parts/queue.db"
    monkeypatch.setenv("COLUMNS", "40")
    out = io.StringIO()
    table([["FAIL", "queue", f"{word} is not writable"]], ["STATUS", "CHECK", "DETAIL"], out=out)
    assert out.getvalue().splitlines()[2:] == [f"FAIL    queue  {word}", "               is not writable"]
    monkeypatch.delenv("COLUMNS")
    out = io.StringIO()  # not a terminal, no COLUMNS: as wide as it takes (a pipe, a file, a script)
    table(ROWS, ["STATUS", "CHECK", "DETAIL"], out=out)
    assert out.getvalue().splitlines()[2] == "FAIL    tls    " + ROWS[0][2]


def test_doctor_rows_fit_columns_80(tmp_path):
    """doctor's rows were 235 characters with COLUMNS=80: one long DETAIL padded every row."""
    folder = tmp_path / ("site-" * 14)  # the file's name alone is longer than the room left: kept whole
    folder.mkdir()
    cfg = folder / "bad.yaml"
    cfg.write_text("gateway:\n  id: gw\n  batch_interval_s: -1\nbroker:\n  port: 99999\n")
    wide = cli("doctor", cfg, "--skip", "clock", "--skip", "user", env={"COLUMNS": ""})
    r = cli("doctor", cfg, "--skip", "clock", "--skip", "user", env={"COLUMNS": "80"})
    assert r.returncode == wide.returncode == 1, r.stderr
    rows = r.stdout.split("\n\n")[0].splitlines()
    assert rows == ["STATUS  CHECK   DETAIL",
                    "------  ------  " + "-" * len(f"{cfg}:3:21:"),
                    f"FAIL    config  {cfg}:3:21:",
                    "                gateway.batch_interval_s: must be positive",
                    f"                {cfg}:5:9:",
                    "                broker.port: 99999 is not a TCP port"]
    wide_rows = wide.stdout.split("\n\n")[0].splitlines()
    assert len(wide_rows[2]) > 80 and " ".join(" ".join(rows[2:]).split()) == " ".join(" ".join(wide_rows[2:]).split())
