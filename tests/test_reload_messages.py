"""What a refused reload, ``doctor`` and ``config set`` say about changes that need a restart.

Field walkthrough: after ``config set gateway.id NEW`` the reload was refused ("needs a restart to change
gateway.id"), the technician restarted, and ``run`` exited 2 (the state directory belongs to the old id),
which systemd does not restart: the cabinet stayed offline. One restart-needing setting also blocked every
other change of the file without saying so, nor the values, nor how to restart. And doctor named a CoAP URL
it had not requested.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from ops_support import cli, write_config

from drivers.coap import CoapOptions, CoapResource
from edge_gateway import cmd_doctor, config, messages, reload
from edge_gateway.queue import DurableQueue
from simulators.coap_node import CoapNode

BASE = """\
gateway: {id: gw-1, state_dir: /tmp/x}
broker: {host: 127.0.0.1, port: 1883}
windows: {seconds: 10}
sensors:
  - {id: a, driver: serial_line, options: {port: /dev/ttyUSB0}}
"""

RESTART = "restart the service (systemctl restart edge-gateway)"


def test_a_new_gateway_id_is_refused_saying_the_state_dir_is_the_old_ids_and_what_to_do():
    p = reload.plan(config.loads(BASE), config.loads(BASE.replace("id: gw-1", "id: gw-2")))
    assert p.reason() == (
        "nothing from this file was applied; needs a restart: gateway.id (running 'gw-1', file 'gw-2'); "
        "the state directory /tmp/x (its queue of unsent messages) belongs to gateway 'gw-1', so gateway 'gw-2' "
        "would not start on it: let its queue drain under gateway.id 'gw-1' (`edge-gateway status` shows the "
        f"depth), then also change gateway.state_dir to a new folder (or move /tmp/x away), then {RESTART}; "
        "or set it back")
    assert not p.ok and p.restart_required == ("gateway.id",)
    assert p.restart_changes == (("gateway.id", "gw-1", "gw-2"),)


def test_a_new_gateway_id_with_a_new_state_dir_needs_only_the_restart_after_the_old_queue_drained():
    new = BASE.replace("id: gw-1", "id: gw-2").replace("/tmp/x", "/tmp/y")
    p = reload.plan(config.loads(BASE), config.loads(new))
    assert p.reason() == (
        "nothing from this file was applied; needs a restart: gateway.id (running 'gw-1', file 'gw-2'), "
        "gateway.state_dir (running '/tmp/x', file '/tmp/y'); let the queue in /tmp/x drain first "
        "(`edge-gateway status` shows the depth; what is left stays there unsent), then "
        f"{RESTART}; or set them back")


def test_a_restart_setting_beside_a_live_change_says_nothing_was_applied_with_both_values():
    new = config.loads(BASE.replace("seconds: 10", "seconds: 30") + "log_level: debug\n")
    p = reload.plan(config.loads(BASE), new)
    assert p.reason() == ("nothing from this file was applied; needs a restart: windows.seconds (running 10, "
                          f"file 30); {RESTART} or set it back")
    assert not p.ok and p.other_changed == ("log_level",)  # a live change, not applied either
    assert p.restart_required == ("windows",) and p.restart_changes == (("windows.seconds", 10, 30),)
    several = config.loads(BASE.replace("{seconds: 10}", "{seconds: 30, grace_s: 0.5}")
                           + "queue: {synchronous: normal}\nmetrics: {prometheus_port: 9100}\n")
    assert reload.plan(config.loads(BASE), several).reason() == (
        "nothing from this file was applied; needs a restart: queue.synchronous (running 'full', file 'normal'), "
        "windows.seconds (running 10, file 30), windows.grace_s (running 2, file 0.5), metrics.prometheus_port "
        f"(running 0, file 9100); {RESTART} or set them back")


async def _queue_of(state: Path, owner: str, messages_in: int) -> None:
    """A real queue file in ``state``, claimed by ``owner`` at its first open, as a gateway start does."""
    q = DurableQueue(state / "queue.db", messages.encode)
    await q.open()
    assert await q.claim(owner) is None
    for _ in range(messages_in):
        await q.append([messages.event(messages.Topics("city", owner), owner, "s", "x")])
    await q.close()


def _doctor(cfg: Path) -> tuple[int, dict]:
    r = cli("doctor", cfg, "--skip", "broker", "--skip", "clock", "--skip", "daemon", "--json", timeout=60)
    assert "Traceback" not in r.stderr, r.stderr
    return r.returncode, {c["name"]: c for c in json.loads(r.stdout)["checks"]}


async def test_doctor_fails_a_gateway_id_that_is_not_the_state_dirs_with_the_same_advice(tmp_path):
    state = tmp_path / "state"
    cfg = write_config(tmp_path, gw_id="cabinet-air-01")
    rc, checks = _doctor(cfg)
    assert "state dir id" not in checks  # no queue yet: nothing to compare
    await _queue_of(state, "demo-01", 2)
    rc, checks = _doctor(cfg)
    assert rc == 1
    assert checks["state dir id"] == {
        "name": "state dir id", "status": "fail",
        "detail": f"the state directory {state} (its queue of unsent messages) belongs to gateway 'demo-01', so "
                  "gateway 'cabinet-air-01' would not start on it (exit 2, which systemd does not restart); "
                  "2 unsent messages there now",
        "fix": "let its queue drain under gateway.id 'demo-01' (`edge-gateway status` shows the depth), then also "
               f"change gateway.state_dir to a new folder (or move {state} away), then restart the service "
               "(systemctl restart edge-gateway); or set gateway.id back to 'demo-01'"}
    # read only: the queue is still the demo's, its messages there, no owner written over
    db = sqlite3.connect(state / "queue.db")
    try:
        assert db.execute("SELECT value FROM meta WHERE key = 'owner'").fetchone() == ("demo-01",)
        assert db.execute("SELECT COUNT(*) FROM outbox").fetchone() == (2,)
    finally:
        db.close()
    rc, checks = _doctor(write_config(tmp_path, gw_id="demo-01", name="own.yaml"))
    assert checks["state dir id"] == {"name": "state dir id", "status": "ok",
                                      "detail": f"{state}/queue.db: the queue of gateway 'demo-01', "
                                                "2 unsent messages", "fix": ""}


RESTART_NOTE = ("note: gateway.id takes effect only when the gateway restarts: restart the service (systemctl restart "
                "edge-gateway); until then `edge-gateway reload` refuses the whole file\n")


async def test_config_set_gateway_id_warns_when_the_state_dir_is_another_gateways_and_still_writes(tmp_path):
    state = tmp_path / "state"
    cfg = write_config(tmp_path, gw_id="demo-01")
    r = cli("config", "set", cfg, "gateway.id", "cab-9")
    assert (r.returncode, r.stderr) == (0, RESTART_NOTE)  # no queue yet: only that a restart applies it
    cli("config", "set", cfg, "gateway.id", "demo-01")
    await _queue_of(state, "demo-01", 1)
    r = cli("config", "set", cfg, "gateway.id", "cabinet-air-01")
    assert r.returncode == 0 and r.stdout == f"{cfg}: gateway.id = cabinet-air-01 (was demo-01)\n"
    assert r.stderr == (
        f"edge-gateway: warning: the state directory {state} (its queue of unsent messages) belongs to gateway "
        "'demo-01', so gateway 'cabinet-air-01' would not start on it: let its queue drain under gateway.id "
        f"'demo-01' (`edge-gateway status` shows the depth), then also change gateway.state_dir to a new folder "
        f"(or move {state} away), then restart the service (systemctl restart edge-gateway); or set gateway.id "
        "back to 'demo-01'\n")
    assert config.load(cfg).gateway.id == "cabinet-air-01"  # written all the same
    r = cli("config", "set", cfg, "gateway.id", "demo-01")  # back to the queue's own id: no warning
    assert (r.returncode, r.stderr) == (0, RESTART_NOTE)


async def test_doctor_names_the_coap_url_it_requested_when_the_uri_has_a_path():
    """``uri: coap://h:p/bins`` with resource ``/bins``: the gateway (and doctor) ask ``/bins/bins``."""
    node = CoapNode()
    node.add("/bins").publish(b"3", 0)
    await node.start()
    try:
        opts = CoapOptions(uri=node.uri, mode="poll", resources=(CoapResource("/bins"),))
        # a uri with a path, as a config could hold before it was refused: set past the options' own checks
        object.__setattr__(opts, "uri", node.uri + "/bins")

        class Sensor:
            id = "bins-1"
            options = opts

        (check,) = await cmd_doctor.coap_checks([Sensor], 2.0)
    finally:
        await node.stop()
    assert node.uri.rpartition(":")[2].isdigit()  # the node's URI has its port written out, as doctor writes it
    assert check == cmd_doctor.Check(
        "coap bins-1", "fail", f"{node.uri}/bins/bins: 4.04 Not Found: the node has no resource /bins/bins",
        "`uri` has a path (/bins) that goes before each resource's: give `uri` as coap://host[:port] only, and "
        "each path in `resources`")
