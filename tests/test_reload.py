"""Config reload: the pure plan, then SIGHUP on a gateway subprocess with a real Mosquitto."""

from __future__ import annotations

import dataclasses
import signal

from edge_gateway import config, reload
from ops_support import polled_status, serial_sensor, status_json, write_config
from support import GatewayProcess, Process, Subscriber, free_port, wait_for
from uplink_support import committed_first_seq

BASE = """\
gateway: {id: gw-1, state_dir: /tmp/x}
broker: {host: 127.0.0.1, port: 1883}
sensors:
  - {id: a, driver: serial_line, options: {port: /dev/ttyUSB0}}
  - {id: b, driver: serial_line, options: {port: /dev/ttyUSB1}}
  - {id: c, driver: serial_line, options: {port: /dev/ttyUSB2}}
"""


def test_plan_sensors_broker_detector():
    old = config.loads(BASE)
    new = config.loads(BASE.replace("ttyUSB1", "ttyACM0").replace("  - {id: c, driver: serial_line, options: "
                                                                  "{port: /dev/ttyUSB2}}\n", "")
                       + "  - {id: d, driver: serial_line, options: {port: /dev/ttyUSB3}}\n"
                       + "detector: {threshold: 0.6}\n")
    p = reload.plan(old, new)
    assert p.ok and p.changed
    assert p.keep == ("a",) and p.stop == ("c", "b") and p.start == ("b", "d")
    assert not p.broker_changed and p.detector_changed and p.restart_required == ()
    p = reload.plan(old, config.loads(BASE.replace("port: 1883", "port: 1884")))
    assert p.broker_changed and p.ok and p.keep == ("a", "b", "c") and not p.stop
    assert not reload.plan(old, old).changed


def test_plan_a_per_sensor_detector_change_restarts_no_driver():
    old = config.loads(BASE)
    p = reload.plan(old, config.loads(BASE + "detector:\n  sensors:\n    b: {params: {cusum_k: 2}}\n"))
    assert p.ok and p.detector_changed
    assert p.keep == ("a", "b", "c") and p.stop == () and p.start == ()


def test_plan_refuses_what_needs_a_restart():
    old = config.loads(BASE)
    p = reload.plan(old, config.loads(BASE.replace("id: gw-1", "id: gw-2") + "windows: {seconds: 10}\n"))
    assert not p.ok and p.restart_required == ("gateway.id", "windows")
    assert p.reason() == ("nothing from this file was applied; needs a restart: gateway.id (running 'gw-1', file "
                          "'gw-2'), windows.seconds (running 60, file 10); the state directory /tmp/x (its queue of "
                          "unsent messages) belongs to gateway 'gw-1', so gateway 'gw-2' would not start on it: let "
                          "its queue drain under gateway.id 'gw-1' (`edge-gateway status` shows the depth), then "
                          "also change gateway.state_dir to a new folder (or move /tmp/x away), then restart the "
                          "service (systemctl restart edge-gateway); or set them back")
    live = dataclasses.replace(old, gateway=dataclasses.replace(old.gateway, batch_interval_s=1.0), log_level="debug")
    p = reload.plan(old, live)
    assert p.ok and p.other_changed == ("log_level", "gateway.batch_interval_s")


def test_sighup_valid_then_invalid_config(tmp_path, broker):
    dead_port = free_port()
    links = [tmp_path / "air-1.tty", tmp_path / "air-2.tty"]
    cfg = write_config(tmp_path, broker_port=dead_port, sensors=serial_sensor("air-1", links[0]))
    sims = [Process(["-m", "simulators.serial_line", "--rate", "40", "--link", str(ln), "--seed", str(i)])
            for i, ln in enumerate(links)]
    sub = Subscriber(broker.port, "city/ops-gw/#").start()
    gw = GatewayProcess(cfg, tmp_path / "gw.log").start()
    sock = tmp_path / "state" / "control.sock"
    try:
        gw.wait_ready()
        # broker unreachable: aggregates pile up in the durable queue
        wait_for(lambda: polled_status(sock)["queue"]["depth"] >= 6, 30, 0.2, "queued aggregates")
        before = status_json(sock)
        assert before["link"] == "down" and before["sensors"]["air-1"]["connects"] == 1

        # a valid change: the right broker, one more sensor, another threshold
        cfg.write_text(_add_sensor(cfg.read_text(), dead_port, broker.port, links[1]))
        gw.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: polled_status(sock)["reload"]["count"] == 1, 20, 0.1, "reload done")
        s = status_json(sock)
        assert s["reload"]["last_ok"] and s["last_reload_error"] == "", s["reload"]
        plan = s["reload"]["last_plan"]
        assert plan["keep"] == ["air-1"] and plan["start"] == ["air-2"] and plan["broker_changed"]
        assert plan["detector_changed"]
        wait_for(lambda: polled_status(sock)["link"] == "up", 20, 0.2, "link up on the new broker")
        wait_for(lambda: polled_status(sock)["sensors"].get("air-2", {}).get("readings", 0) > 0, 20, 0.2, "air-2")
        s = status_json(sock)
        assert s["sensors"]["air-1"]["connects"] == 1, "an unchanged sensor is not restarted"
        assert s["sensors"]["air-1"]["readings"] >= before["sensors"]["air-1"]["readings"]
        # nothing queued while the broker was unreachable is lost: every seq up to now arrives
        wait_for(lambda: polled_status(sock)["queue"]["depth"] == 0, 30, 0.2, "queue drained")
        last = status_json(sock)["last_seq"]
        first = committed_first_seq(tmp_path / "state" / "queue.db")
        wait_for(lambda: _seqs(sub) >= set(range(first, last + 1)), 20, 0.1, f"seqs {first}..{last} at the subscriber")

        # an invalid config: refused, the old one keeps running, the reason is on the status topic
        good_text = cfg.read_text()
        cfg.write_text(good_text.replace("detector: {threshold: 0.65}", "detector: {treshold: 0.65}"))
        gw.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: polled_status(sock)["reload"]["failed"] == 1, 20, 0.1, "reload refused")
        s = status_json(sock)
        assert "unknown key; did you mean 'threshold'?" in s["last_reload_error"]
        assert s["reload"]["count"] == 2 and not s["reload"]["last_ok"]
        wait_for(lambda: any("treshold" in (m.data.get("last_reload_error") or "")
                             for m in sub.snapshot() if m.topic == "city/ops-gw/status"), 10, 0.1,
                 "reload error on the status topic")
        n = s["sensors"]["air-2"]["readings"]
        wait_for(lambda: polled_status(sock)["sensors"]["air-2"]["readings"] > n, 10, 0.2, "still running")
        assert "reload refused, the running config stays" in gw.log_text()
    finally:
        for sim in sims:
            sim.stop()
        rc = gw.stop()
        sub.stop()
    assert rc == 0, gw.log_text()[-3000:]


def _add_sensor(text: str, dead_port: int, port: int, link) -> str:
    text = text.replace(f"port: {dead_port}", f"port: {port}")
    text = text.replace("sensors:\n", "detector: {threshold: 0.65}\nsensors:\n")
    return text + f"  - id: air-2\n    driver: serial_line\n    options: {{port: {link}, format: kv}}\n"


def _seqs(sub: Subscriber) -> set[int]:
    return {m.data["seq"] for m in sub.snapshot() if "/agg/" in m.topic or "/event/" in m.topic}
