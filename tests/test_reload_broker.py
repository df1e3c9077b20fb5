"""A reload with a new broker says whether that broker connected (technician walkthrough #1).

``config set broker.port 42768`` then ``reload`` used to print "broker changed" (exit 0) and only
``status``, seconds later, said the broker was down; over the MQTT downlink such a reload cut the
gateway off from the channel needed to undo it. Now the reload waits (up to 5 s, asynchronously)
for the new link's CONNACK and says so; a reload that came over MQTT puts the old broker back.
Real Mosquitto, the real daemon, the real CLI.
"""

from __future__ import annotations

import json
import threading
import time


from ops_support import Commands, cli, polled_status, status_json
from support import GatewayProcess, free_port, wait_for
from uplink_support import gateway_config

RELOADED = ("reloaded: started -; stopped -; kept -; broker changed; detector unchanged; "
            "other live changes: -")


def _gateway(tmp_path, port: int, commands: str = "[ping, status]"):
    cfg = gateway_config(tmp_path, port, "rb-gw", sensors="sensors: []", broker_extra=f"commands: {commands}")
    gw = GatewayProcess(cfg, tmp_path / "gw.log").start()
    gw.wait_ready()
    sock = tmp_path / "state" / "control.sock"
    wait_for(lambda: polled_status(sock)["link"] == "up", 20, 0.1, "link up")
    return cfg, gw, sock


def _set_port(cfg, old: int, new: int) -> None:
    cfg.write_text(cfg.read_text().replace(f"port: {old},", f"port: {new},"))


def test_a_reload_to_a_dead_broker_says_not_connected_and_the_daemon_serves_meanwhile(tmp_path, broker):
    cfg, gw, sock = _gateway(tmp_path, broker.port)
    dead = free_port()
    try:
        _set_port(cfg, broker.port, dead)
        answered: list[float] = []

        def ask_status() -> None:  # while the reload waits for the dead broker
            time.sleep(1.5)
            t0 = time.monotonic()
            r = cli("status", "--socket", sock, "--json", timeout=30)
            answered.append(time.monotonic() - t0 if r.returncode == 0 else -1.0)

        asker = threading.Thread(target=ask_status)
        asker.start()
        t0 = time.monotonic()
        r = cli("reload", "--socket", sock)
        took = time.monotonic() - t0
        asker.join(30)
        assert (r.returncode, r.stderr) == (0, ""), r.stderr
        assert r.stdout.splitlines() == [
            RELOADED,
            f"broker changed: NOT connected after 5 s: connect to 127.0.0.1:{dead} failed: "
            "[Errno 111] Connection refused; the gateway keeps trying (edge-gateway status); "
            "to undo, set broker back and reload"]
        assert 5.0 <= took < 15, took
        assert answered and 0 <= answered[0] < 3.0, answered  # the daemon answered while the reload waited
        s = status_json(sock)
        assert s["link"] == "down"  # not rolled back: a broker down for maintenance is not a wrong setting
        link = s["reload"]["last_plan"]["broker_link"]
        assert link == {"host": "127.0.0.1", "port": dead, "connected": False, "waited_s": 5.0,
                        "error": f"connect to 127.0.0.1:{dead} failed: [Errno 111] Connection refused",
                        "rolled_back": False}
        assert s["reload"]["last_ok"] is True
        down_since = s["uplink"]["down_since"]  # the reload took the link down: the outage began there
        assert down_since is not None and s["uplink"]["last_outage"] is None

        # set it back and reload: connected, said with where
        _set_port(cfg, dead, broker.port)
        r = cli("reload", "--socket", sock, "--json")
        assert r.returncode == 0, r.stderr
        got = json.loads(r.stdout)["reload"]["broker_link"]
        assert got["connected"] is True and got["rolled_back"] is False and got["error"] == ""
        assert got["waited_s"] < 5.0
        s = status_json(sock)
        assert s["link"] == "up"
        # the outage that began at the first reload ended at this one's CONNACK, though each had its own link
        assert s["uplink"]["last_outage"] == {"start": down_since, "end": s["uplink"]["up_since"]}
    finally:
        assert gw.stop() == 0


def test_a_reload_to_a_live_broker_says_connected_to(tmp_path, broker):
    dead = free_port()
    cfg, gw, sock = None, None, tmp_path / "state" / "control.sock"
    cfg = gateway_config(tmp_path, dead, "rb-gw", sensors="sensors: []")
    gw = GatewayProcess(cfg, tmp_path / "gw.log").start()
    try:
        gw.wait_ready()
        s = status_json(sock)
        assert s["link"] == "down"
        down_since = s["uplink"]["down_since"]  # since the start: the broker was never reached
        _set_port(cfg, dead, broker.port)
        r = cli("reload", "--socket", sock)
        assert (r.returncode, r.stderr) == (0, ""), r.stderr
        assert r.stdout.splitlines() == [RELOADED, f"broker changed: connected to 127.0.0.1:{broker.port}"]
        up = status_json(sock)["uplink"]
        assert up["last_outage"] == {"start": down_since, "end": up["up_since"]}  # not lost with the old link
    finally:
        assert gw.stop() == 0


def test_a_reload_over_mqtt_to_a_dead_broker_puts_the_old_broker_back_and_says_so(tmp_path, broker):
    cfg, gw, sock = _gateway(tmp_path, broker.port, "[ping, status, reload]")
    dead = free_port()
    broker.wait_subscribed("edge-gateway-rb-gw", "city/rb-gw/cmd/+")
    cmd = Commands(broker.port, "rb-gw")
    try:
        _set_port(cfg, broker.port, dead)
        cmd.send("reload", 7)
        reply = cmd.reply(7, 30)  # came back over the old broker: the way to undo is kept
        assert reply == {"id": 7, "ok": True, "result": {
            "reload": "applied", "stop": [], "start": [], "keep": [], "broker_changed": True,
            "detector_changed": False, "other_changed": [], "restart_required": [],
            "broker_link": {"host": "127.0.0.1", "port": dead, "connected": False, "waited_s": 5.0,
                            "error": f"connect to 127.0.0.1:{dead} failed: [Errno 111] Connection refused",
                            "rolled_back": True}}}
        wait_for(lambda: polled_status(sock)["link"] == "up", 20, 0.1, "link up on the old broker")
        cmd.send("ping", 8)
        assert cmd.reply(8, 10)["ok"] is True
        assert "putting the previous broker 127.0.0.1:%d back" % broker.port in gw.log_text()
    finally:
        cmd.stop()
        assert gw.stop() == 0
