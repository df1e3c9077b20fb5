"""A sensor's last error is dated when it happens, on the driver's or the supervisor's clock, and
ordered against reconnects by what happened first: ``status`` shows exact ages and "(before
reconnect)" even for an error and a reconnect at one instant. Real ptys, the real Supervisor and
the Modbus slave simulator; only the clocks are the tests'.

Also here: the daemon logs what ``config validate`` warns about, at start and after a reload.
"""

from __future__ import annotations

import logging
import signal

from driver_fixtures import pty, wait_until  # noqa: F401 (pty: a fixture)

from drivers.base import DriverStats
from drivers.modbus_rtu import ModbusBlock, ModbusField, ModbusOptions, ModbusRtuDriver
from drivers.serial_line import LineOptions, SerialLineDriver
from drivers.serial_port import PORT_CLOSED
from edge_gateway import config
from edge_gateway.daemon import log_config_warnings
from edge_gateway.metrics import Telemetry
from edge_gateway.supervisor import Backoff, LinkGap, Supervisor
from ops_support import cli, polled_status, status_json
from simulators.modbus_slave import ModbusSlaveSim, RegisterBank
from simulators.pty_port import PtyPort
from support import Clock, GatewayProcess, free_port, wait_for

T0 = 1_700_000_000.0
# the supervisor waits 0.5-1 s before each retry: time for a test to replug (or not) before it retries
SLOW_RETRY = Backoff(initial_s=1.0, max_s=1.0)


def _error_view(out: dict) -> tuple:
    return (out["last_error"], out["last_error_ts"], out["last_error_age_s"], out["last_error_before_reconnect"],
            out["link_up"], out["connects"], out["link_errors"])


def test_the_order_of_errors_and_connects_decides_not_their_times():
    """Every order at one instant, where comparing times cannot tell which came first."""
    st = DriverStats()
    st.note_connect(T0)
    st.note_error("gone", T0, link=True)  # opened, then failed at once
    assert (st.last_error_ts, st.link_up, st.error_before_reconnect, st.link_errors) == (T0, False, False, 1)
    st.note_connect(T0)  # retried and back, still at T0
    assert (st.last_connect_ts, st.link_up, st.error_before_reconnect, st.connects) == (T0, True, True, 2)
    st.note_error("block b: exception code 2", T0)  # a data error while connected
    assert (st.last_error_ts, st.link_up, st.error_before_reconnect, st.link_errors) == (T0, True, False, 1)
    st.note_error("gone", T0 + 1, link=True)
    st.note_error("block b: no response within 0.1 s", T0 + 2)  # while the link comes up again
    st.note_connect(T0 + 2)
    assert (st.last_error, st.last_error_ts, st.link_up, st.error_before_reconnect) == (
        "block b: no response within 0.1 s", T0 + 2, True, False)  # from the session now running


async def test_a_pty_unplugged_and_replugged_under_the_supervisor_has_exact_error_times(tmp_path, caplog):
    link = str(tmp_path / "dev.tty")
    clock = Clock(T0)
    gaps = []
    driver = SerialLineDriver("dev", LineOptions(port=link), lambda r: None, clock=clock)
    sup = Supervisor(gaps.append, SLOW_RETRY, clock=clock, seed=7, steady=clock)
    tel = Telemetry(clock)
    caplog.set_level(logging.INFO, logger="edge_gateway.supervisor")
    port = PtyPort(link, nonblocking=True)
    sup.start(driver)
    try:
        assert await wait_until(lambda: driver.stats.connects == 1)
        clock.t = T0 + 5
        port.close()  # unplugged
        assert await wait_until(lambda: driver.stats.link_errors == 1)
        clock.t = T0 + 5.5
        down = tel.sensors([driver], started=T0)["dev"]
        clock.t = T0 + 7  # the retry, 0.5-1 s later, finds no device
        assert await wait_until(lambda: driver.stats.link_errors == 2)
        still_down = tel.sensors([driver], started=T0)["dev"]
        clock.t = T0 + 9
        port = PtyPort(link, nonblocking=True)  # replugged while the supervisor waits to retry
        assert await wait_until(lambda: driver.stats.connects == 2)
        clock.t = T0 + 10.5
        up = tel.sensors([driver], started=T0)["dev"]
    finally:
        await sup.stop()
        port.close()
    assert _error_view(down) == (f"{link}: {PORT_CLOSED}", T0 + 5, 0.5, False, False, 1, 1)
    assert _error_view(still_down) == (f"{link}: no such device", T0 + 7, 0.0, False, False, 1, 2)
    assert _error_view(up) == (f"{link}: no such device", T0 + 7, 3.5, True, True, 2, 2)
    assert (up["last_connect_ts"], up["no_data_s"]) == (T0 + 9, 1.5)
    assert gaps == [LinkGap("dev", T0 + 5, T0 + 9, f"{link}: {PORT_CLOSED}")]
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        ("INFO", "sensor dev: connected"),
        ("WARNING", f"sensor dev: link lost: {link}: {PORT_CLOSED}"),
        ("INFO", "sensor dev: connected"),
        ("INFO", "sensor dev: link back after 4.0 s"),
    ]


async def test_an_unplug_and_a_replug_at_one_instant_are_ordered_both_ways(tmp_path):
    """The clock stands still: the error and the reconnect carry one time, the order still decides."""
    link = str(tmp_path / "dev.tty")
    clock = Clock(T0 + 5)
    driver = SerialLineDriver("dev", LineOptions(port=link), lambda r: None, clock=clock)
    sup = Supervisor(lambda gap: None, SLOW_RETRY, clock=clock, seed=3, steady=clock)
    tel = Telemetry(clock)
    port = PtyPort(link, nonblocking=True)
    sup.start(driver)
    try:
        assert await wait_until(lambda: driver.stats.connects == 1)
        port.close()
        assert await wait_until(lambda: driver.stats.link_errors == 1)
        port = PtyPort(link, nonblocking=True)  # before the retry: the next attempt connects
        assert await wait_until(lambda: driver.stats.connects == 2)
        error_then_connect = tel.sensors([driver], started=T0)["dev"]
        port.close()  # connected at T0 + 5, lost at T0 + 5
        assert await wait_until(lambda: driver.stats.link_errors == 2)
        connect_then_error = tel.sensors([driver], started=T0)["dev"]
    finally:
        await sup.stop()
        port.close()
    assert _error_view(error_then_connect) == (f"{link}: {PORT_CLOSED}", T0 + 5, 0.0, True, True, 2, 1)
    assert error_then_connect["last_connect_ts"] == T0 + 5
    assert _error_view(connect_then_error) == (f"{link}: {PORT_CLOSED}", T0 + 5, 0.0, False, False, 2, 2)
    assert connect_then_error["last_connect_ts"] == T0 + 5


def _bus(port: str, *blocks: ModbusBlock) -> ModbusOptions:
    return ModbusOptions(port=port, timeout_s=0.1, dead_after=1000, blocks=blocks)


def _block(name: str, address: int) -> ModbusBlock:
    return ModbusBlock(slave=1, address=address, count=1, interval_s=0.05, name=name, fields=(ModbusField(name, 0),))


async def test_a_modbus_timeout_while_connected_is_dated_and_not_before_a_reconnect(pty):  # noqa: F811
    bank = RegisterBank()
    bank.set_registers(1, "holding", 0, [7])
    sim = ModbusSlaveSim(bank)
    sim.attach(pty)
    clock = Clock(T0)
    driver = ModbusRtuDriver("meter", _bus(pty.slave_path, _block("b", 0)), lambda r: None, clock=clock)
    sup = Supervisor(lambda gap: None, SLOW_RETRY, clock=clock, seed=1, steady=clock)
    tel = Telemetry(clock)
    sup.start(driver)
    try:
        assert await wait_until(lambda: driver.stats.readings >= 1)
        clock.t = T0 + 4
        sim.silent = True  # the meter stops answering; the bus stays open
        assert await wait_until(lambda: driver.blocks["b"].timeouts >= 1)
        clock.t = T0 + 6
        out = tel.sensors([driver], started=T0)["meter"]
    finally:
        await sup.stop()
        sim.detach()
    assert _error_view(out) == ("block b: no response within 0.1 s", T0 + 4, 2.0, False, True, 1, 0)
    assert out["last_connect_ts"] == T0


async def test_a_modbus_exception_in_the_answer_that_connects_is_not_before_the_reconnect(pty):  # noqa: F811
    """The first answer is an exception: error and connect at one instant, the error from this session."""
    bank = RegisterBank()
    bank.set_registers(1, "holding", 0, [7])
    sim = ModbusSlaveSim(bank)
    sim.attach(pty)
    clock = Clock(T0)
    driver = ModbusRtuDriver("meter", _bus(pty.slave_path, _block("refused", 500), _block("b", 0)),
                             lambda r: None, clock=clock)
    sup = Supervisor(lambda gap: None, SLOW_RETRY, clock=clock, seed=1, steady=clock)
    sup.start(driver)
    try:
        assert await wait_until(lambda: driver.stats.connects == 1 and driver.blocks["refused"].exceptions >= 1)
        out = Telemetry(clock).sensors([driver], started=T0)["meter"]
    finally:
        await sup.stop()
        sim.detach()
    assert _error_view(out) == ("block refused: exception code 2", T0, 0.0, False, True, 1, 0)
    assert out["last_connect_ts"] == T0


# --- config warnings in the daemon's log ------------------------------------------------------

def test_warnings_are_logged_as_validate_locates_them(tmp_path, caplog):
    path = tmp_path / "gw.yaml"
    path.write_text("gateway: {id: gw}\nbroker:\n  host: mqtt://broker.local\n")
    caplog.set_level(logging.WARNING, logger="edge_gateway.daemon")
    log_config_warnings(config.load(path))
    log_config_warnings(config.loads("gateway: {id: gw}\nsensors:\n  - {id: a, driver: serial_line, "
                                     "options: {port: COM3}}\n"))
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        ("WARNING", f"{path}:3:9: broker.host: 'mqtt://broker.local' is a URL: give the host name or IP address "
                    "alone; the port goes in broker.port and TLS in broker.tls (the gateway will not reach the "
                    "broker)"),
        ("WARNING", f"{path}: sensors: {config.NO_SENSORS}"),  # a key not written: the file alone, as validate says
        ("WARNING", "<string>: sensors[0].options.port: 'COM3' is a Windows port name: give the gateway's device "
                    "path, e.g. /dev/ttyUSB0 (the sensor will not be read)"),
    ]


def _gateway_yaml(tmp_path, broker_port: int, broker_extra: str, sensor_port: str) -> str:
    return (f"gateway: {{id: warn-gw, topic_prefix: city, state_dir: {tmp_path}/state, batch_interval_s: 0.05}}\n"
            "broker:\n"
            "  host: 127.0.0.1\n"
            f"  port: {broker_port}\n"
            f"{broker_extra}"
            "windows: {seconds: 0.5, grace_s: 0.2}\n"
            "sensors:\n"
            "  - id: air-1\n"
            "    driver: serial_line\n"
            f"    options: {{port: {sensor_port}}}\n")


def _daemon_warnings(gw: GatewayProcess) -> list[str]:
    """The daemon's warnings but the reload's "new broker ... not connected after 5 s" (its resolver's
    words differ from one system to the next; tests/test_reload_broker.py asserts it)."""
    return [ln for ln in gw.log_text().splitlines() if ln.startswith("<4>edge_gateway.daemon: ")
            and not ln.startswith("<4>edge_gateway.daemon: new broker ")]


def test_the_daemon_logs_config_warnings_at_start_and_after_a_successful_reload_only(tmp_path):
    port = free_port()  # nothing listens: the broker stays down, which these warnings do not care about
    cfg = tmp_path / "gw.yaml"
    cfg.write_text(_gateway_yaml(tmp_path, port, "  protocol: '3.1.1'\n", "ttyUSB0"))
    serial = (f"{cfg}:10:21", "sensors[0].options.port",
              "'ttyUSB0' is not a device path: did you mean /dev/ttyUSB0? (the sensor will not be read)")
    protocol = (f"{cfg}:5:13", "broker.protocol", "MQTT 3.1.1 cannot report a refused message: the broker "
                "acknowledges it (ACL deny, size limit) and it is lost without a trace; use \"5\" unless the broker "
                "lacks it")
    r = cli("config", "validate", cfg)
    assert r.returncode == 0 and r.stderr.splitlines() == [
        f"edge-gateway: {where}: {key}: warning: {text}" for where, key, text in (serial, protocol)], r.stderr
    gw = GatewayProcess(cfg, tmp_path / "gw.log", env={"JOURNAL_STREAM": "8:12345"}).start()
    sock = tmp_path / "state" / "control.sock"
    try:
        gw.wait_ready()
        at_start = _daemon_warnings(gw)
        # a reload that changes the sensor's port and the broker: only the new config's warning, once
        cfg.write_text(_gateway_yaml(tmp_path, port, "", "/dev/ttyUSB0").replace("host: 127.0.0.1",
                                                                                 "host: 127.0.0.1:1883"))
        gw.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: polled_status(sock)["reload"]["count"] == 1, 20, 0.1, "reload done")
        after_reload = _daemon_warnings(gw)
        # a refused reload: the running config stays, nothing about the refused file's settings
        cfg.write_text(_gateway_yaml(tmp_path, port, "  protocol: '3.1.1'\n", "ttyUSB0").replace("id: warn-gw",
                                                                                                 "id: other-gw"))
        gw.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: polled_status(sock)["reload"]["count"] == 2, 20, 0.1, "reload refused")
        after_refusal = _daemon_warnings(gw)
        reload_state = status_json(sock)["reload"]
    finally:
        rc = gw.stop()
    assert rc == 0, gw.log_text()[-3000:]
    assert at_start == [f"<4>edge_gateway.daemon: {where}: {key}: {text}" for where, key, text in (serial, protocol)]
    host = (f"<4>edge_gateway.daemon: {cfg}:3:9: broker.host: '127.0.0.1:1883': give the host alone; the port goes "
            "in broker.port (the gateway will not reach the broker)")
    assert after_reload == at_start + [host]
    assert (reload_state["ok"], reload_state["failed"]) == (1, 1)
    assert after_refusal == after_reload
