"""Review 15, new-user walkthrough: the technician's commands against one running gateway (#4, #5, #6,
#10a, #10d), the example config's own state dir (#2), and the CLI table of docs/operations.md (#10b, #10e)."""

from __future__ import annotations

import argparse
import re

import pytest
from ops_support import cli, polled_status, serial_sensor, status_json, write_config
from support import REPO, Broker, GatewayProcess, Process, wait_for

from edge_gateway import cli as eg_cli
from edge_gateway import config


def test_commands_reach_the_running_gateway_while_its_config_file_is_broken(tmp_path):
    broker = Broker(tmp_path / "broker")  # started in the try below, so that it is always stopped
    link = tmp_path / "air-1.tty"
    cfg = write_config(tmp_path, broker_port=broker.port, sensors=serial_sensor("air-1", link),
                       extra="detector: {threshold: 0.9}\n")
    # #4 and #10a: a state dir from the environment, relative to the config's folder, with a '..' in it
    text = cfg.read_text().replace(f"state_dir: {tmp_path}/state", 'state_dir: "${EG_WALK_STATE:-nowhere}/state"')
    cfg.write_text(text)
    env = {"EG_WALK_STATE": "sub/../run"}
    state = tmp_path / "run" / "state"
    sock = state / "control.sock"
    sim = gw = None
    try:
        assert config.load(cfg, env=env).gateway.state_dir == str(state)  # normalised (#10a)
        broker.start()
        sim = Process(["-m", "simulators.serial_line", "--rate", "50", "--link", str(link), "--wait-open"])
        gw = GatewayProcess(cfg, tmp_path / "gw.log", env=env).start()
        gw.wait_ready()
        wait_for(lambda: (s := polled_status(sock))["link"] == "up" and s["sensors"]["air-1"]["readings"] > 5,
                 20, 0.1, "link up and readings")

        # #4: a valid config: exactly as before (nothing on stderr)
        r = cli("status", "-c", cfg, env=env)
        assert (r.returncode, r.stderr) == (0, ""), r.stderr
        assert re.search(r"^air-1\s+serial_line\s", r.stdout, re.MULTILINE), r.stdout

        # #5: a sensor the gateway does not have is an answer naming those it has, and exit 2
        r = cli("tail", "air1", "--socket", sock, "--count", "1", timeout=10)
        assert (r.returncode, r.stdout, r.stderr) == (
            2, "", "edge-gateway: no sensor 'air1'; did you mean 'air-1'? sensors: air-1\n")
        r = cli("tail", "nosuch", "-c", cfg, "--count", "1", env=env, timeout=10)
        assert (r.returncode, r.stdout, r.stderr) == (2, "", "edge-gateway: no sensor 'nosuch'; sensors: air-1\n")

        # #6: the detector change is confirmed, lists are names
        cfg.write_text(cfg.read_text().replace("threshold: 0.9", "threshold: 0.5")
                       .replace("batch_interval_s: 0.05", "batch_interval_s: 0.04")
                       .replace("status_interval_s: 0.5", "status_interval_s: 0.6"))
        r = cli("reload", "-c", cfg, env=env)
        assert (r.returncode, r.stderr) == (0, ""), r.stderr
        assert r.stdout == ("reloaded: started -; stopped -; kept air-1; broker unchanged; detector changed; "
                            "other live changes: gateway.batch_interval_s, gateway.status_interval_s\n")

        # #4: the file on disk is broken; the daemon still runs the config it loaded last
        cfg.write_text(cfg.read_text() + "foo: [\n")
        with pytest.raises(config.ConfigError) as broken:
            config.load(cfg, env=env)
        note = (f"edge-gateway: {broken.value}\n"
                f"edge-gateway: note: asking the daemon at {sock} anyway: it keeps running the config it loaded last\n")
        r = cli("status", "-c", cfg, env=env)
        assert (r.returncode, r.stderr) == (0, note), r.stderr
        assert re.search(r"^air-1\s+serial_line\s", r.stdout, re.MULTILINE), r.stdout
        r = cli("tail", "-c", cfg, "--count", "2", env=env, timeout=20)
        assert (r.returncode, r.stderr) == (0, note) and len(r.stdout.splitlines()) == 2, r.stderr
        r = cli("reload", "-c", cfg, env=env)
        assert (r.returncode, r.stdout) == (1, ""), r.stderr
        assert r.stderr == note + "edge-gateway: reload refused, the running config stays: for the mistakes above\n"
        # in another environment the file names another state dir: nothing listens there, and the note says where
        other = tmp_path / "nowhere" / "state" / "control.sock"
        r = cli("status", "-c", cfg, env={"EG_WALK_STATE": ""})
        assert (r.returncode, r.stdout) == (3, "")
        assert r.stderr == (f"edge-gateway: {broken.value}\n"
                            f"edge-gateway: note: asking the daemon at {other} anyway: it keeps running the config "
                            "it loaded last\n"
                            f"edge-gateway: the daemon is not running: no edge-gateway daemon at {other} "
                            "(No such file or directory)\n"
                            "edge-gateway: start it with `systemctl start edge-gateway` or `edge-gateway run CONFIG`; "
                            "if it runs with another config, pass --config FILE (or --socket PATH)\n")
        s = status_json(sock)
        assert s["reload"]["count"] == 2 and s["reload"]["failed"] == 1 and s["link"] == "up"
    finally:
        if sim is not None:
            sim.stop()
        rc = gw.stop() if gw is not None else None
        broker.close()
    assert rc == 0
    log = gw.log_text()
    # #10a: the log shows the normalised state dir; #10d: a stop we asked for is no warning
    assert f"running: 1 sensors, queue {state}/queue.db" in log, log[-2000:]
    assert re.search(r"INFO +edge_gateway\.uplink: disconnected from broker \(stopping\): Normal disconnection", log)
    assert not re.search(r"WARNING +edge_gateway\.uplink", log), log[-2000:]


def test_lenient_state_dir_read():
    """#4: read_state_dir takes gateway.state_dir from YAML that does not parse past it, expanded and resolved
    as load() does; None where it cannot tell."""
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as d:
        folder = Path(d)
        cases = {
            "gateway: {id: g, state_dir: st}\nfoo: [\n": folder / "st",
            "gateway:\n  state_dir: ${EGW_X:-../a/./b}\nbroker: {host: [\n": folder.parent / "a" / "b",
            "x: [{gateway: {state_dir: no}}]\ngateway:\n  ? [k]\n  : 1\n  sub: {state_dir: no}\n"
            "  state_dir: '/abs/yes'\n": Path("/abs/yes"),
            "foo: [\ngateway: {state_dir: late}\n": None,
            "gateway: {state_dir: null}\n": None,
            "gateway:\n  state_dir: ${EGW_UNSET_NAME}\n": None,
            "gateway: {id: g}\n": None,
        }
        for n, (text, want) in enumerate(cases.items()):
            f = folder / f"{n}.yaml"
            f.write_text(text)
            assert config.read_state_dir(f, env={}) == want, text
        assert config.read_state_dir(f, env={}) is None
        f.write_text("gateway:\n  state_dir: ${EGW_X-/x}/../y\n")
        assert config.read_state_dir(f, env={"EGW_X": "/e/f"}) == Path("/e/y")
        with pytest.raises(config.ConfigError, match="cannot read"):
            config.read_state_dir(folder / "missing.yaml")


def test_example_config_has_its_own_state_dir():
    """#2: `make demo` empties the demo's state dir; the one-sensor example must not share it."""
    air = config.load(REPO / "configs" / "serial-air-quality.yaml", env={})
    assert air.gateway.state_dir == str(REPO / "run" / "air" / "state")
    assert "run/demo" not in air.gateway.state_dir


def _options(command: str) -> set[str]:
    """The long options of ``edge-gateway COMMAND --help`` (``--help`` itself aside)."""
    parser = eg_cli.build_parser([command])
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {o for a in sub.choices[command]._actions if a.dest != "help" for o in a.option_strings
            if o.startswith("--")}


@pytest.mark.parametrize("command", ["status", "reload", "tail", "replay"])
def test_cli_table_lists_every_option(command):
    """#10b, #10e: the row of docs/operations.md's CLI table names every long option `--help` shows."""
    doc = (REPO / "docs" / "operations.md").read_text()
    row = next(ln for ln in doc.splitlines() if ln.startswith(f"| `edge-gateway {command} "))
    missing = sorted(o for o in _options(command) if o not in row)
    assert missing == [], row
    if command == "replay":
        assert "with `--link`, the link's path" in row
