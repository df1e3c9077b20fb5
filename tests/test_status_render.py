"""What ``status`` and ``tail`` tell a technician (review walkthrough): an error's age and whether the
sensor reconnected since, a silent sensor, plain words for a closed port and a lost broker, the
events table and the published counts as sentences, event times in local time like the readings."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest
import serial
from driver_fixtures import wait_until
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode

import drivers
from drivers.base import LinkLost
from drivers.serial_line import LineOptions, SerialLineDriver
from drivers.serial_port import PORT_CLOSED, _lost
from edge_gateway import config
from edge_gateway.cmd_status import render, sensor_notes
from edge_gateway.cmd_tail import format_item
from edge_gateway.config import BrokerSection
from edge_gateway.metrics import Telemetry
from edge_gateway.supervisor import Backoff, Supervisor
from edge_gateway.mqtt_rules import disconnect_reason
from edge_gateway.uplink import MqttLink
from simulators.pty_port import PtyPort
from support import Broker, Clock
from uplink_support import TcpProxy, until

T0 = 1_700_000_000.0


@pytest.fixture(autouse=True)
def _no_columns(monkeypatch):
    """Tables at their natural width: pytest-xdist workers run with COLUMNS=80, which wraps the last column."""
    monkeypatch.delenv("COLUMNS", raising=False)


def _hms(ts: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(ts))


def test_render_says_errors_with_age_and_in_full_and_the_header_in_words(capsys):
    path = "/dev/serial/by-id/usb-FTDI_FT232R_USB_UART_A50285BI-if00-port0"
    render({"gateway": "gw", "pid": 7, "uptime_s": 300, "link": "down", "inflight": 0, "last_seq": 1796146547619,
            "link_error": "disconnected: the broker closed the connection or became unreachable (reason code 128)",
            "uplink": {"down_since": T0 - 185}, "queue": {"depth": 3, "oldest_age_s": 4, "last_seq": 1796146547619},
            "counts": {"readings": 10, "aggregates": 3, "events": 2}, "published": {"agg": 266, "event": 12},
            "sensors": {"air-1": {"driver": "serial_line", "rate_per_s": 1, "last_reading_age_s": 0.5,
                                  "link_errors": 1, "last_values": {"pm25": {"value": 3, "unit": "ug/m3"}},
                                  "last_error": f"{path}: {PORT_CLOSED}", "last_error_age_s": 12,
                                  "last_error_before_reconnect": True},
                        "noise-1": {"driver": "serial_line", "rate_per_s": 0, "link_errors": 2,
                                    "last_error": "/dev/ttyUSB1: no such device", "last_error_age_s": 150.0}}},
           now=T0)
    assert capsys.readouterr().out.splitlines() == [
        "gateway   gw   pid 7   up 5m",
        f"broker    down since {_hms(T0 - 185)} (3 min): disconnected: the broker closed the connection or became "
        "unreachable (reason code 128)",
        "queue     3 messages, oldest 4s, in flight 0",  # no internal "last seq" (it stays in --json)
        "produced  10 readings, 3 aggregates, 2 events; published: 266 aggregates, 12 events",
        "",
        "SENSOR   DRIVER       RATE    LAST  BAD  LINK ERR  LAST VALUES   LAST ERROR",
        "-------  -----------  ------  ----  ---  --------  ------------  ---------------------------",
        "air-1    serial_line  1.00/s  0s    0    1         pm25=3 ug/m3  12 s ago (before reconnect)",
        f"    last error: {path}: the port closed: unplugged, or another program opened it",
        "noise-1  serial_line  0.00/s  -     0    2         -             2 min ago",
        "    last error: /dev/ttyUSB1: no such device",
    ]


def test_broker_line_of_a_link_that_is_up_or_of_an_older_daemon(capsys):
    render({"gateway": "gw", "link": "up", "uplink": {"down_since": None}, "published": {"agg": 1, "status": 4}})
    render({"gateway": "gw", "link": "down", "link_error": "connect to 127.0.0.1:1883 failed: refused"})
    lines = capsys.readouterr().out.splitlines()
    assert lines[1] == "broker    up"
    assert lines[3] == "produced  0 readings, 0 aggregates, 0 events; published: 1 aggregates, 0 events, 4 status"
    assert "broker    down: connect to 127.0.0.1:1883 failed: refused" in lines


def test_a_reload_refused_for_several_mistakes_lists_them_one_a_line(capsys):
    render({"gateway": "gw", "link": "up", "reload": {
        "count": 2, "failed": 1, "last_ts": T0, "last_ok": False,
        "last_error": "gw.yaml:3:21: gateway.batch_interval_s: must be positive\ngw.yaml:5:9: broker.port: 99999 is not "
                      "a TCP port"}})
    lines = capsys.readouterr().out.splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("reload "))
    assert lines[at:at + 2] == [
        f"reload    2 (1 refused), last at {_hms(T0)}: REFUSED: "
        "gw.yaml:3:21: gateway.batch_interval_s: must be positive",
        "          gw.yaml:5:9: broker.port: 99999 is not a TCP port"]


def test_events_newest_last_with_scores_to_two_decimals_and_the_detector_as_reason(capsys):
    render({"gateway": "gw", "last_events": [
        {"start": T0 + 60, "sensor": "air-1", "type": "anomaly", "state": "open", "channel": "pm25",
         "peak_value": 181.5, "peak_score": 4.567891, "detector": "zscore"},
        {"start": T0, "sensor": "noise-1", "type": "link_gap", "end": T0 + 8, "reason": "unplugged"},
        {"start": T0 + 30, "sensor": "air-1", "type": "anomaly", "state": "closed", "channel": "pm10",
         "peak_value": 99.0, "peak_score": 0.999, "detector": "hst"}]})
    lines = capsys.readouterr().out.splitlines()
    at = lines.index("TIME      SENSOR   EVENT             CHANNEL  VALUE  SCORE  REASON")
    assert lines[at + 2:] == [
        f"{_hms(T0)}  noise-1  link_gap 8.0 s" + " " * 27 + "unplugged",  # its duration (walkthrough #2)
        f"{_hms(T0 + 30)}  air-1    anomaly (closed)  pm10     99     1.00   detector hst",  # not like an open one
        f"{_hms(T0 + 60)}  air-1    anomaly (open)    pm25     181.5  4.57   detector zscore",
    ]


def test_tail_event_lines_have_local_times_like_the_readings_beside_them():
    """Events were ISO UTC between readings in local time: hours apart on one screen (review 18)."""
    item = {"type": "event", "event": "anomaly", "sensor": "air-1", "start": T0 + 0.123, "end": T0 + 5.9,
            "channel": "pm25", "peak_score": 4.567891, "detector": "zscore", "seq": 1796146547619}
    start = time.strftime("%H:%M:%S", time.localtime(T0))
    end = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(T0 + 5.9))
    assert format_item(item) == (f"{start}.123 air-1        EVENT anomaly end={end} "
                                 "channel=pm25 peak_score=4.57 detector=zscore")
    reading = format_item({"type": "reading", "sensor": "air-1", "channel": "pm25", "value": 12.5, "unit": "ug/m3",
                           "ts": T0 + 0.123})
    assert reading == f"{start}.123 air-1        pm25                 12.5 ug/m3"


CFG = """\
gateway: {id: gw}
sensors:
  - id: meter
    driver: modbus_rtu
    options:
      port: /dev/null
      blocks:
        - {name: main, slave: 1, address: 0, count: 2, interval_s: 5, fields: [{name: kwh, offset: 0, type: uint32}]}
        - {name: sub, slave: 2, address: 0, count: 1, interval_s: 2, fields: [{name: v, offset: 0}]}
  - id: node
    driver: coap
    options: {uri: coap://127.0.0.1, resources: [{path: /temp}]}
  - id: poller
    driver: coap
    options: {uri: coap://127.0.0.1, mode: poll, interval_s: 6, resources: [{path: /temp}]}
  - id: line
    driver: serial_line
    options: {port: /dev/null}
"""


def _built(clock):
    cfg = config.loads(CFG)
    built = [drivers.get(s.driver)(s.id, s.options, lambda r: None, clock=clock) for s in cfg.sensors]
    return {d.sensor_id: d for d in built}


def test_a_connected_sensor_silent_past_its_pace_is_warned_about():
    clock = Clock(T0)
    d = _built(clock)
    tel = Telemetry(clock)
    for drv in d.values():
        drv.connected()  # as each driver does once its link answers
    clock.t = T0 + 29.5
    out = tel.sensors(list(d.values()), started=T0)
    assert {s: (out[s]["expected_interval_s"], out[s]["no_data_after_s"]) for s in d} == {
        "meter": (2.0, 30.0), "node": (None, 60.0), "poller": (6.0, 60.0), "line": (None, 60.0)}
    assert out["meter"]["link_up"] is True and out["meter"]["no_data_s"] == 29.5
    assert sensor_notes(out["meter"]) == []  # not yet: under 10 intervals and 30 s
    clock.t = T0 + 95
    out = tel.sensors(list(d.values()), started=T0)
    assert sensor_notes(out["meter"]) == ["warning: no data for 95 s since connect (expected every 2 s)"]
    assert sensor_notes(out["line"]) == ["warning: no data for 95 s since connect"]
    d["line"].stats.last_reading_ts = T0 + 90  # readings came, then stopped: silent for 5 s only
    d["node"].stats.last_reading_ts = T0 + 20
    out = tel.sensors(list(d.values()), started=T0)
    assert (out["line"]["no_data_s"], sensor_notes(out["line"])) == (5.0, [])
    assert sensor_notes(out["node"]) == ["warning: no data for 75 s"]


def _link_error(drv, reason: str) -> None:
    """What the supervisor does when a driver raises."""
    drv.stats.note_error(reason, drv.clock(), link=True)


def test_an_error_is_dated_and_marked_once_the_sensor_reconnected():
    clock = Clock(T0)
    drv = _built(clock)["line"]
    tel = Telemetry(clock)
    drv.connected()
    clock.t = T0 + 1
    out = tel.sensors([drv], started=T0)["line"]
    assert (out["last_error_ts"], out["last_error_age_s"], out["last_error_before_reconnect"]) == (None, None, False)
    clock.t = T0 + 1.4
    _link_error(drv, f"/dev/null: {PORT_CLOSED}")
    clock.t = T0 + 2
    out = tel.sensors([drv], started=T0)["line"]
    assert (out["last_error_ts"], out["last_error_age_s"], out["link_up"], out["no_data_s"],
            out["last_error_before_reconnect"]) == (T0 + 1.4, 0.6, False, None, False)  # down: the error says why
    clock.t = T0 + 2.5
    drv.connected()
    clock.t = T0 + 14
    out = tel.sensors([drv], started=T0)["line"]
    assert (out["last_error_ts"], out["last_error_age_s"], out["last_error_before_reconnect"], out["link_up"]) == (
        T0 + 1.4, 12.6, True, True)
    # an error and the reconnect after it within one status sample (1 s apart in the daemon): each keeps its time
    _link_error(drv, "/dev/null: no such device")
    clock.t = T0 + 14.5
    drv.connected()
    clock.t = T0 + 15
    out = tel.sensors([drv], started=T0)["line"]
    assert (out["last_error_ts"], out["last_connect_ts"], out["last_error_before_reconnect"], out["link_up"]) == (
        T0 + 14, T0 + 14.5, True, True)


def test_a_repeated_error_with_the_same_text_is_dated_again():
    clock = Clock(T0)
    meter = _built(clock)["meter"]
    tel = Telemetry(clock)
    meter.connected()
    clock.t = T0 + 0.7
    meter.stats.note_error("block sub: no response within 0.5 s", clock())
    clock.t = T0 + 1
    assert tel.sensors([meter], started=T0)["meter"]["last_error_ts"] == T0 + 0.7
    clock.t = T0 + 2
    assert tel.sensors([meter], started=T0)["meter"]["last_error_age_s"] == 1.3  # nothing new
    clock.t = T0 + 2.2
    meter.stats.note_error("block sub: no response within 0.5 s", clock())
    clock.t = T0 + 3
    out = tel.sensors([meter], started=T0)["meter"]
    assert (out["last_error_ts"], out["last_error_age_s"], out["link_up"], out["last_error_before_reconnect"]) == (
        T0 + 2.2, 0.8, True, False)  # a data error while connected: the link stays up, nothing is before a reconnect


def test_pyserial_closed_port_wording_becomes_plain(caplog):
    raw = ("device reports readiness to read but returned no data "
           "(device disconnected or multiple access on port?)")
    with caplog.at_level(logging.DEBUG, logger="drivers.serial_port"):
        exc = _lost("/dev/ttyUSB0", serial.SerialException(raw))
    assert isinstance(exc, LinkLost)
    assert str(exc) == "/dev/ttyUSB0: the port closed: unplugged, or another program opened it"
    assert [r.getMessage() for r in caplog.records] == [f"/dev/ttyUSB0: {raw}"]
    assert str(_lost("/dev/ttyUSB0", OSError(5, "Input/output error"))) == "/dev/ttyUSB0: [Errno 5] Input/output error"


async def test_unplugged_pty_is_logged_in_plain_words_and_status_marks_the_error_after_replug(tmp_path, caplog):
    link = str(tmp_path / "dev.tty")
    driver = SerialLineDriver("dev", LineOptions(port=link), lambda r: None)
    tel = Telemetry()
    port = PtyPort(link, nonblocking=True)
    sup = Supervisor(lambda gap: None, Backoff(initial_s=0.05, max_s=0.2), seed=7)
    caplog.set_level(logging.WARNING, logger="edge_gateway.supervisor")
    sup.start(driver)
    try:
        assert await wait_until(lambda: driver.stats.connects == 1)
        tel.sensors([driver], started=time.time())
        closed_at = time.time()
        port.close()
        assert await wait_until(lambda: driver.stats.link_errors >= 1)
        await asyncio.sleep(0.05)
        down = tel.sensors([driver], started=0.0)["dev"]
        assert (down["link_up"], down["last_error_before_reconnect"]) == (False, False)
        assert closed_at <= down["last_error_ts"] == driver.stats.last_error_ts <= time.time()  # the supervisor's clock
        port = PtyPort(link, nonblocking=True)
        assert await wait_until(lambda: driver.stats.connects == 2, timeout=10)
        up = tel.sensors([driver], started=0.0)["dev"]
    finally:
        await sup.stop()
        port.close()
    assert (up["link_up"], up["last_error_before_reconnect"]) == (True, True)
    assert up["last_error_ts"] < up["last_connect_ts"]
    assert f"sensor dev: link lost: {link}: the port closed: unplugged, or another program opened it" in [
        r.getMessage() for r in caplog.records]


def test_disconnect_reason_says_what_paho_calls_unspecified():
    lost = ReasonCode(PacketTypes.DISCONNECT, "Unspecified error")
    assert disconnect_reason(lost, False) == ("the broker closed the connection or became unreachable "
                                              "(reason code 128)")
    assert disconnect_reason(lost, True) == "Unspecified error"  # the broker's own DISCONNECT: its words
    assert disconnect_reason(ReasonCode(PacketTypes.DISCONNECT, "Server shutting down"), True) == "Server shutting down"


async def test_a_lost_broker_is_dated_and_said_plainly(tmp_path, caplog):
    broker = Broker(tmp_path / "broker").start()
    proxy = TcpProxy(broker.port)
    states = []
    cfg = BrokerSection(port=proxy.port, keepalive_s=2, reconnect_min_s=5.0, reconnect_max_s=5.0)
    before_start = time.time()
    link = MqttLink(cfg, "down-since-test", "city/ds/status", birth=lambda: b"online", will=b"offline",
                    on_ack=lambda mid, rc: None, on_state=states.append)
    caplog.set_level(logging.WARNING, logger="edge_gateway.uplink")
    try:
        assert before_start <= link.down_since <= time.time()  # down from the start until the first CONNACK
        link.start()
        await until(lambda: link.connected, 10, "connected")
        assert link.down_since is None
        cut_at = time.time()
        proxy.cut()
        await until(lambda: states[-1:] == [False], 10, "down")
        assert cut_at <= link.down_since <= time.time()
        want = "the broker closed the connection or became unreachable (reason code 128)"
        assert link.last_error == f"disconnected: {want}"
        assert f"disconnected from broker: {want}" in [r.getMessage() for r in caplog.records]
    finally:
        await link.stop()
        broker.close()


def test_the_window_settings_running_are_shown(capsys):
    """hop_s needs a restart: a technician must see what the daemon runs, not what the file says."""
    base = {"gateway": "gw", "pid": 7, "uptime_s": 3, "link": "up", "inflight": 0, "queue": {"depth": 0},
            "sensors": {}}
    render(dict(base, windows={"seconds": 10.0, "hop_s": 2.5, "grace_s": 2.0}), now=T0)
    render(dict(base, windows={"seconds": 60.0, "hop_s": None, "grace_s": 2.0}), now=T0)
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("windows")]
    assert lines == ["windows   10 s, hopping, one every 2.5 s (grace 2 s)", "windows   60 s, tumbling (grace 2 s)"]
