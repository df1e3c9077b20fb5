"""``edge-gateway config validate|show|get|set`` through the CLI subprocess."""

from __future__ import annotations

import json
import os
import textwrap
from dataclasses import dataclass, field

from edge_gateway.cmd_config import effective
from edge_gateway.plain_config import MASK
from ops_support import cli

CONFIG = textwrap.dedent("""\
    # Cabinet 17, Rue de la Gare.  Keep this comment!
    gateway:
      id: cab-17            # as printed on the door
      state_dir: ${EG_TEST_STATE:-state}

    broker:
      host: mqtt.example.net
      port: 8883
      protocol: "5"
      secrets_file: secrets.txt   # username/password, mode 0600

    sensors:
      # the PM sensor behind the grille
      - id: air-1
        driver: serial_line
        options:
          port: /dev/ttyUSB0
          baudrate: 9600
          units: {pm25: ug/m3, pm10: ug/m3}
      - id: noise-1
        driver: serial_line
        options: {port: /dev/ttyUSB1, format: json}
    """)


def setup(tmp_path):
    cfg = tmp_path / "gw.yaml"
    cfg.write_text(CONFIG)
    os.chmod(cfg, 0o640)
    secret = tmp_path / "secrets.txt"
    secret.write_text("username: cab-17\npassword: hunter2-very-secret\n")
    os.chmod(secret, 0o600)
    return cfg


def test_validate_show_masks_secrets_and_fills_defaults(tmp_path):
    cfg = setup(tmp_path)
    r = cli("config", "validate", cfg)
    assert r.returncode == 0 and r.stdout.strip() == f"{cfg}: valid (2 sensors, gateway cab-17)"
    for fmt in ([], ["--json"]):
        r = cli("config", "show", cfg, *fmt)
        assert r.returncode == 0, r.stderr
        assert "hunter2" not in r.stdout and "hunter2" not in r.stderr
    data = json.loads(r.stdout)
    assert data["gateway"]["state_dir"] == str(tmp_path / "state")  # env default expanded, path resolved
    assert data["gateway"]["batch_interval_s"] == 0.2  # a default filled in
    assert data["broker"]["secrets_file"] == str(tmp_path / "secrets.txt")  # the path (resolved), never the contents
    assert data["sensors"][1]["options"]["format"] == "json"
    r = cli("config", "show", cfg)
    assert "state_dir: " + str(tmp_path / "state") in r.stdout and "id: cab-17" in r.stdout


def test_masking_of_secret_named_values():
    @dataclass(frozen=True)
    class Opts:
        port: str = "/dev/ttyUSB0"
        password: str = "pw-123"
        api_token: str = "tok-456"
        key_file: str = "/etc/eg/key.pem"
        psk: str = ""

    @dataclass(frozen=True)
    class Conf:
        options: Opts = field(default_factory=Opts)

    out = effective(Conf())["options"]
    assert out == {"port": "/dev/ttyUSB0", "password": MASK, "api_token": MASK, "key_file": "/etc/eg/key.pem",
                   "psk": ""}


def test_get_by_index_and_by_id(tmp_path):
    cfg = setup(tmp_path)
    assert cli("config", "get", cfg, "sensors[0].options.port").stdout == "/dev/ttyUSB0\n"
    assert cli("config", "get", cfg, "sensors.noise-1.options.port").stdout == "/dev/ttyUSB1\n"
    assert cli("config", "get", cfg, "broker.port").stdout == "8883\n"
    assert json.loads(cli("config", "get", cfg, "sensors.air-1.options.units").stdout) == {"pm25": "ug/m3",
                                                                                           "pm10": "ug/m3"}
    r = cli("config", "get", cfg, "sensors.air-2.options.port")
    assert r.returncode == 2 and "did you mean 'air-1'?" in r.stderr
    r = cli("config", "get", cfg, "broker.hots")
    assert r.returncode == 2 and "did you mean 'host'?" in r.stderr


def test_set_keeps_comments_and_layout_and_changes_one_line(tmp_path):
    cfg = setup(tmp_path)
    r = cli("config", "set", cfg, "sensors.air-1.options.baudrate", "19200")
    assert r.returncode == 0, r.stderr
    assert "sensors.air-1.options.baudrate = 19200 (was 9600)" in r.stdout
    new = cfg.read_text()
    assert new == CONFIG.replace("baudrate: 9600", "baudrate: 19200")  # comments, quotes, flow maps all kept
    assert oct(cfg.stat().st_mode & 0o777) == "0o640"  # mode kept through the atomic rename
    assert cli("config", "set", cfg, "sensors[1].options.format", "kv").returncode == 0
    assert "options: {port: /dev/ttyUSB1, format: kv}" in cfg.read_text()
    assert cli("config", "set", cfg, "broker.protocol", "3.1.1").returncode == 0
    assert 'protocol: "3.1.1"' in cfg.read_text()  # a quoted string stays quoted
    assert cli("config", "set", cfg, "metrics.prometheus_port", "9108").returncode == 0  # a new section
    assert cli("config", "get", cfg, "metrics.prometheus_port").stdout == "9108\n"
    assert "# Cabinet 17, Rue de la Gare.  Keep this comment!" in cfg.read_text()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".gw.yaml.")], "no temporary file left"


def test_set_says_when_a_key_needs_a_restart(tmp_path):
    """windows.hop_s and the other restart-only keys: a reload refuses the whole file until a restart."""
    cfg = setup(tmp_path)
    r = cli("config", "set", cfg, "windows.hop_s", "5")
    assert r.returncode == 0 and r.stderr == (
        "note: windows.hop_s takes effect only when the gateway restarts: restart the service (systemctl restart "
        "edge-gateway); until then `edge-gateway reload` refuses the whole file\n")
    r = cli("config", "set", cfg, "log_level", "debug")  # applied by a reload
    assert r.returncode == 0 and r.stderr == ""


def test_set_refuses_an_invalid_result_and_leaves_the_file_alone(tmp_path):
    cfg = setup(tmp_path)
    before = cfg.read_bytes()
    for key, value, message in (("broker.port", "99999", "broker.port: 99999 is not a TCP port"),
                                ("sensors.air-1.driver", "serial_lines", "did you mean 'serial_line'?"),
                                ("gateway.batch_interval_s", "soon", "expected a number"),
                                ("gateway.colour", "red", "unknown key")):
        r = cli("config", "set", cfg, key, value)
        assert r.returncode == 2, (key, r.stdout)
        assert "refused" in r.stderr and message in r.stderr and f"{cfg}:" in r.stderr
        assert cfg.read_bytes() == before
    r = cli("config", "set", cfg, "sensors.air-9.options.port", "/dev/x")
    assert r.returncode == 2 and cfg.read_bytes() == before
    assert cli("config", "set", "--help").returncode == 0


def test_set_on_a_symlinked_config_changes_the_target_and_keeps_the_link(tmp_path):
    cfg = setup(tmp_path)
    managed = tmp_path / "managed"
    managed.mkdir()
    target = managed / "gw.yaml"
    cfg.rename(target)
    os.symlink(os.path.join("managed", "gw.yaml"), cfg)
    (managed / "secrets.txt").write_text("username: cab-17\n")
    r = cli("config", "set", cfg, "broker.port", "1884")
    assert r.returncode == 0, r.stderr
    assert os.readlink(cfg) == os.path.join("managed", "gw.yaml")
    assert target.read_text() == CONFIG.replace("port: 8883", "port: 1884")
    assert oct(target.stat().st_mode & 0o777) == "0o640"
    assert sorted(p.name for p in managed.iterdir()) == ["gw.yaml", "secrets.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gw.yaml", "managed", "secrets.txt"]


def test_set_on_a_broken_file_reports_it_like_validate(tmp_path):
    cfg = tmp_path / "gw.yaml"
    for raw, message in ((b"gateway:\n  id: x\n\tbroker: 1\n",
                          f"{cfg}:3:1: not valid YAML: a tab at line 3, column 1: YAML indents with spaces only"),
                         (b"gateway:\n  id: [x\n", f"{cfg}:2:7: not valid YAML: the '[' at line 2, column 7 is never closed"),
                         (b"\xff\xfe bad", f"{cfg}:1:1: not UTF-8: the file is saved as UTF-16"),
                         (b"just a string\n", f"{cfg}: expected a mapping of sections"),
                         (b"- a\n- b\n", f"{cfg}: expected a mapping of sections")):
        cfg.write_bytes(raw)
        r = cli("config", "set", cfg, "gateway.id", "y")
        assert r.returncode == 2, (raw, r.stdout)
        assert r.stderr.startswith(f"edge-gateway: {message}"), (raw, r.stderr)
        assert "Traceback" not in r.stderr and cfg.read_bytes() == raw
        if b"string" not in raw and b"- a" not in raw:
            assert cli("config", "validate", cfg).stderr.startswith(f"edge-gateway: {message}")


def test_set_on_an_empty_or_comment_only_file_adds_the_key_below_the_comments(tmp_path):
    cfg = tmp_path / "gw.yaml"
    for before in ("", "# cabinet 17: to be configured\n"):
        cfg.write_text(before)
        r = cli("config", "set", cfg, "gateway.id", "cab-17")
        assert r.returncode == 0, r.stderr
        assert cfg.read_text() == before + "gateway:\n  id: cab-17\n"


def test_set_mends_a_string_where_a_number_belongs_and_keeps_a_string_where_one_fits(tmp_path):
    """"A string stays a string" kept ``batch_interval_s: fast`` a string whatever was set: 0.5 was
    written as "0.5" and refused. Now a string value that cannot load is tried as what VALUE reads as."""
    from edge_gateway import config

    cfg = tmp_path / "gw.yaml"
    cfg.write_text("gateway:\n  id: '007'\n  batch_interval_s: fast\n")
    r = cli("config", "set", cfg, "gateway.batch_interval_s", "0.5")
    assert (r.returncode, r.stderr) == (0, ""), r.stderr
    assert r.stdout == f"{cfg}: gateway.batch_interval_s = 0.5 (was fast)\n"
    assert cfg.read_text() == "gateway:\n  id: '007'\n  batch_interval_s: 0.5\n"
    assert config.load(str(cfg)).gateway.batch_interval_s == 0.5
    r = cli("config", "set", cfg, "gateway.id", "008")  # an id that looks like a number stays the string
    assert r.returncode == 0, r.stderr
    assert cfg.read_text() == "gateway:\n  id: '008'\n  batch_interval_s: 0.5\n"
    assert config.load(str(cfg)).gateway.id == "008"
    cfg.write_text("gateway:\n  id: gw\n  batch_interval_s: fast\n")
    r = cli("config", "set", cfg, "gateway.batch_interval_s", "-1")  # wrong either way: the number's reason
    assert r.returncode == 2 and cfg.read_text() == "gateway:\n  id: gw\n  batch_interval_s: fast\n"
    assert r.stderr == ("edge-gateway: refused, the result would be invalid (file unchanged): "
                        f"{cfg}:3:21: gateway.batch_interval_s: must be positive\n"), r.stderr
