"""Config mistakes are reported as ``file:line:column: key.path: what``, with a suggestion where one exists."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from edge_gateway import config
from ops_support import cli
from support import REPO

GOOD = textwrap.dedent("""\
    gateway:
      id: gw-1
    sensors:
      - id: air-1
        driver: serial_line
        options:
          port: /dev/ttyUSB0
    """)


def error_of(text: str, source: str = "site.yaml") -> config.ConfigError:
    with pytest.raises(config.ConfigError) as info:
        config.loads(text, source)
    return info.value


def test_the_good_one_loads():
    cfg = config.loads(GOOD)
    assert cfg.sensors[0].options.port == "/dev/ttyUSB0"
    assert cfg.metrics.prometheus_port == 0 and cfg.gateway.status_interval_s == 60.0


def test_unknown_key_with_suggestion():
    e = error_of(GOOD.replace("  id: gw-1", "  id: gw-1\n  topic_prefx: city"))
    assert (e.line, e.column, e.path) == (3, 3, "gateway.topic_prefx")
    assert "did you mean 'topic_prefix'?" in str(e)
    assert str(e).startswith("site.yaml:3:3: gateway.topic_prefx: unknown key")


def test_unknown_option_key_of_a_driver():
    e = error_of(GOOD + "      baudrat: 9600\n")
    assert e.path == "sensors[0].options.baudrat" and e.line == 8 and "did you mean 'baudrate'?" in str(e)


def test_wrong_type_names_what_was_expected():
    e = error_of(GOOD.replace("  id: gw-1", "  id: gw-1\n  batch_interval_s: fast"))
    assert (e.line, e.path) == (3, "gateway.batch_interval_s")
    assert "expected a number, got a string 'fast'" in str(e)
    e = error_of("gateway: {id: g}\nmetrics: {prometheus_port: 70000}\n")
    assert e.path == "metrics.prometheus_port" and "not a TCP port" in str(e)


def test_missing_required_key():
    e = error_of(GOOD.replace("    options:\n      port: /dev/ttyUSB0\n", "    options: {baudrate: 9600}\n"))
    assert e.path == "sensors[0].options.port" and "required key is missing" in str(e)
    e = error_of("broker: {host: h}\n")
    assert e.path == "gateway" and "required key is missing" in str(e)


def test_bad_yaml_is_located():
    e = error_of("gateway:\n  id: [gw-1\nsensors: []\n")
    assert e.line >= 2 and "not valid YAML" in str(e)
    assert str(e).startswith(f"site.yaml:{e.line}:{e.column}: ")


def test_unknown_driver_suggests_the_near_one():
    e = error_of(GOOD.replace("driver: serial_line", "driver: serial_lines"))
    assert (e.line, e.path) == (5, "sensors[0].driver")
    assert "unknown driver 'serial_lines'; did you mean 'serial_line'?" in str(e)


def test_unset_environment_variable(monkeypatch):
    monkeypatch.delenv("EG_TEST_UNSET_PORT", raising=False)
    e = error_of(GOOD.replace("/dev/ttyUSB0", "${EG_TEST_UNSET_PORT}"))
    assert (e.line, e.column) == (7, 13)
    assert "environment variable EG_TEST_UNSET_PORT is not set" in str(e)
    assert config.loads(GOOD.replace("/dev/ttyUSB0", "${EG_TEST_UNSET_PORT:-/dev/ttyACM0}")).sensors[0].options.port \
        == "/dev/ttyACM0"


def test_cli_reports_errors_with_exit_2(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(GOOD.replace("driver: serial_line", "driver: serial_lines"))
    r = cli("config", "validate", bad)
    assert r.returncode == 2
    assert r.stderr.strip() == (f"edge-gateway: {bad}:5:13: sensors[0].driver: unknown driver 'serial_lines'; "
                                "did you mean 'serial_line'?")
    assert cli("config", "validate", tmp_path / "missing.yaml").returncode == 2


@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_validates_through_the_cli(path: Path, tmp_path):
    env = {"EG_RUN_DIR": str(tmp_path / "run"), "EG_STATE_DIR": str(tmp_path / "state"),
           "EG_BROKER_PORT": "1883", "EG_COAP_PORT": "5683", "EG_MQTT_PROTOCOL": "5"}
    r = cli("config", "validate", path, env=env)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"{path}: valid (")


def test_detector_settings_per_sensor_and_per_channel():
    cfg = config.loads(GOOD + textwrap.dedent("""\
        detector:
          params: {cusum_k: 2}
          sensors:
            air-1: {threshold: 0.5, params: {cusum_h: 8}}
            air-1/pm25: {params: {cusum_k: 3}}
        """))
    det = cfg.detector
    assert det.sensors["air-1"] == config.DetectorOverride(threshold=0.5, params={"cusum_h": 8})
    assert det.for_channel("air-1", "pm25") == (det, det.sensors["air-1"], det.sensors["air-1/pm25"])
    assert det.for_channel("air-1", "no2") == (det, det.sensors["air-1"])
    assert det.for_channel("air-9", "pm25") == (det,)


def test_detector_override_mistakes_are_located():
    e = error_of(GOOD + "detector:\n  sensors:\n    air-2: {params: {cusum_k: 2}}\n")
    assert str(e) == "site.yaml:10:5: detector.sensors.air-2: no sensor 'air-2'; did you mean 'air-1'?"
    e = error_of(GOOD + "detector:\n  sensors:\n    air-1/pm25: {params: {cusum_kk: 2}}\n")
    assert (e.line, e.column, e.path) == (10, 26, "detector.sensors.air-1/pm25.params")
    assert e.message == "unknown setting 'cusum_kk'; did you mean 'cusum_k'?"
    e = error_of(GOOD + "detector:\n  params: {zzz: 2}\n")
    assert e.message.startswith("unknown setting 'zzz'; known: cusum_clip, cusum_eta, cusum_h, cusum_k,")
    e = error_of(GOOD + "detector:\n  sensors:\n    air-1: {treshold: 0.5}\n")
    assert str(e) == "site.yaml:10:13: detector.sensors.air-1.treshold: unknown key; did you mean 'threshold'?"
    e = error_of("gateway: {id: g}\ndetector:\n  sensors:\n    air-1: {threshold: 0.5}\n")
    assert str(e) == "site.yaml:4:5: detector.sensors.air-1: no sensor 'air-1'; sensors: none"
    e = error_of(GOOD + "detector:\n  sensors:\n    air 1: {threshold: 0.5}\n")
    assert str(e) == "site.yaml:10:5: detector.sensors.air 1: expected a sensor id or sensor/channel"


def test_a_bad_detector_param_value_points_at_its_key():
    e = error_of(GOOD + "detector:\n  params: {flat_min_run: 20, nov_hold: abc}\n")
    assert str(e) == ("site.yaml:9:30: detector.params.nov_hold: expected a number or a list of numbers, "
                      "got 'abc'")


def test_a_negative_detector_param_is_refused_at_its_key():
    e = error_of(GOOD + "detector:\n  params: {flat_min_run: 20, nov_half: -0.5}\n")
    assert str(e) == "site.yaml:9:30: detector.params.nov_half: must be 0 or more"
    e = error_of(GOOD + "detector:\n  params: {nov_decay: [0, 0, 0, -0.001, 0, 0]}\n")
    assert str(e).endswith("detector.params.nov_decay: must be 0 or more; nov_decay[3] (season) is -0.001")
    assert config.loads(GOOD + "detector:\n  params: {range_lo: -40, range_hi: 85}\n").detector is not None


def test_relative_tls_and_secrets_paths_are_resolved_against_the_config_folder(tmp_path, monkeypatch):
    """The service runs in ``/``: a path written next to the config means next to the config."""
    folder = tmp_path / "etc"
    folder.mkdir()
    (folder / "gw.yaml").write_text(
        "gateway: {id: g1, state_dir: state}\n"
        "broker:\n"
        "  secrets_file: ~/creds.txt\n"
        "  tls: {ca_file: certs/ca.pem, cert_file: /abs/client.pem, key_file: ../keys/client.key}\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    cfg = config.load(folder / "gw.yaml")
    assert cfg.broker.tls.ca_file == str(folder / "certs" / "ca.pem")
    assert cfg.broker.tls.cert_file == "/abs/client.pem"
    assert cfg.broker.tls.key_file == str(tmp_path / "keys" / "client.key")  # normalised (review 15 walkthrough #10)
    assert cfg.broker.secrets_file == str(tmp_path / "home" / "creds.txt")
    assert cfg.gateway.state_dir == str(folder / "state")
    bare = config.loads("gateway: {id: g2}\nbroker: {tls: {ca_file: ca.pem}}\n")
    assert bare.broker.secrets_file == "" and bare.broker.tls.cert_file == ""
    assert bare.broker.tls.ca_file == str(tmp_path / "ca.pem")  # no file: relative to the working directory


@pytest.mark.parametrize("value", [".inf", ".nan", "-.inf", ".NaN"])
def test_numbers_must_be_finite(value):
    e = error_of(GOOD.replace("  id: gw-1", f"  id: gw-1\n  batch_interval_s: {value}"))
    assert str(e) == f"site.yaml:3:21: gateway.batch_interval_s: expected a finite number, got {value}"
    e = error_of(GOOD + f"windows:\n  seconds: {value}\n")
    assert (e.line, e.path) == (9, "windows.seconds") and "finite" in e.message
    e = error_of("gateway: {id: g}\nsensors:\n  - {id: n, driver: coap, options: {uri: 'coap://h', resources: [],\n"
                 f"      interval_s: {value}}}}}\n")
    assert [(m.line, m.path) for m in e.errors if "finite" in m.message] == [(4, "sensors[0].options.interval_s")]
    e = error_of(GOOD + f"detector:\n  threshold: {value}\n")
    assert e.path == "detector.threshold" and "finite" in e.message
    e = error_of(GOOD + f"detector:\n  params: {{flat_min_run: 20, cusum_h: {value}}}\n")
    assert str(e).startswith("site.yaml:9:30: detector.params.cusum_h: expected a finite number, got ")
    e = error_of(GOOD + f"detector:\n  params: {{nov_decay: [0, 0, 0, {value}, 0, 0]}}\n")
    assert e.path == "detector.params.nov_decay" and "finite" in e.message


def test_detector_range_may_be_unbounded_but_not_nan():
    cfg = config.loads(GOOD + "detector:\n  params: {range_lo: -.inf, range_hi: .inf}\n")
    assert cfg.detector.params == {"range_lo": float("-inf"), "range_hi": float("inf")}
    assert error_of(GOOD + "detector:\n  params: {range_hi: .nan}\n").path == "detector.params.range_hi"


def test_a_non_number_inside_a_detector_param_list_points_at_its_key():
    e = error_of(GOOD + "detector:\n  params: {flat_min_run: [1, {a: 1}]}\n")
    assert str(e) == ("site.yaml:9:12: detector.params.flat_min_run: expected a number or a list of numbers, "
                      "got [1, {'a': 1}]")


def test_cross_field_errors_name_the_key_and_line_that_is_wrong():
    e = error_of("gateway: {id: g}\nqueue:\n  max_bytes: 100000\n  reserve_bytes: -1\n")
    assert str(e) == "site.yaml:4:18: queue.reserve_bytes: must not be negative"
    e = error_of("gateway: {id: g}\nqueue:\n  max_age_s: 10\n  max_file_bytes: -5\n")
    assert str(e) == "site.yaml:4:19: queue.max_file_bytes: must not be negative"
    e = error_of("gateway: {id: g}\nbroker:\n  host: h\n  reconnect_max_s: 0.5\n")
    assert str(e) == "site.yaml:4:20: broker.reconnect_max_s: must be at least reconnect_min_s (1)"
    e = error_of("gateway: {id: g}\nbroker:\n  host: h\n  reconnect_min_s: 90\n")
    assert str(e) == "site.yaml:4:20: broker.reconnect_min_s: must be at most reconnect_max_s (60)"
    e = error_of("gateway: {id: g}\nbroker:\n  tls:\n    ca_file: ca.pem\n    key_file: k.pem\n")
    assert (e.line, e.path) == (5, "broker.tls.key_file")
    e = error_of("gateway: {id: g}\nsensors:\n"
                 "  - {id: a, driver: pms5003, options: {port: /dev/x}}\n"
                 "  - {id: b, driver: pms5003, options: {port: /dev/y}}\n"
                 "  - {id: a, driver: pms5003, options: {port: /dev/z}}\n")
    assert str(e) == "site.yaml:5:6: sensors[2].id: duplicate sensor id 'a' (also sensors[0])"


def test_a_key_given_twice_inside_units_or_detector_maps_is_refused():
    e = error_of(GOOD + "      units:\n        pm25: ug\n        pm25: mg\n")
    assert str(e) == "site.yaml:10:9: sensors[0].options.units.pm25: key given twice"
    e = error_of(GOOD + "detector:\n  sensors:\n    air-1: {threshold: 0.5}\n    air-1: {threshold: 0.9}\n")
    assert str(e) == "site.yaml:11:5: detector.sensors.air-1: key given twice"
    e = error_of(GOOD + "detector:\n  params:\n    flat_min_run: 3\n    flat_min_run: 5\n")
    assert str(e) == "site.yaml:11:5: detector.params.flat_min_run: key given twice"


def test_a_deeply_nested_document_is_an_error_not_a_crash():
    e = error_of("gateway:\n  id: x\nsensors: " + "[" * 2000 + "]" * 2000 + "\n")
    assert str(e) == "site.yaml:1:1: document nested too deeply"


@pytest.mark.parametrize("text,value", [("1e3", 1000.0), ("1.5E+2", 150.0), (".5e1", 5.0), ("2E-1", 0.2)])
def test_a_number_in_exponent_form_is_a_number(text, value):
    """YAML 1.1 (PyYAML) reads 1e3 as a string; a number field takes it as the number it looks like."""
    assert config.loads(f"gateway:\n  id: x\nwindows:\n  seconds: {text}\n").windows.seconds == value


def test_a_quoted_exponent_stays_a_string():
    with pytest.raises(config.ConfigError) as exc:
        config.loads("gateway:\n  id: x\nwindows:\n  seconds: '1e3'\n", "q.yaml")
    assert str(exc.value) == "q.yaml:4:12: windows.seconds: expected a number, got a string '1e3'"


def test_a_load_keeps_nothing_of_the_document_alive():
    """A reload must not leak: the constructor that builds values is the validator's, not a module global."""
    import gc
    import weakref

    from edge_gateway.schema import Validator

    root = config.compose("gateway:\n  id: x\nwindows:\n  seconds: 5\n")
    ref = weakref.ref(root.value[1][1].value[0][1])  # the scalar 5, built by the constructor
    Validator("<string>", config._driver_options).convert(root, config.GatewayConfig, "")
    del root
    gc.collect()
    assert ref() is None


def test_a_state_dir_too_long_for_the_control_socket_is_a_config_error():
    """Review 15 (operations) #9: validate and doctor passed, then `run` warmed every kernel and died on bind."""
    ok = "/var/lib/" + "d" * (107 - len("/var/lib//control.sock"))
    assert len(str(config.loads(GOOD.replace("  id: gw-1", f"  id: gw-1\n  state_dir: {ok}")).control_socket)) == 107
    long = ok + "d"
    e = error_of(GOOD.replace("  id: gw-1", f"  id: gw-1\n  state_dir: {long}"))
    assert (e.line, e.column, e.path) == (3, 14, "gateway.state_dir")
    assert str(e) == (f"site.yaml:3:14: gateway.state_dir: too long: the control socket {long}/control.sock would be "
                      "108 bytes, a Unix socket path holds at most 107")


def test_a_guard_level_of_zero_is_refused():
    """Review 15 (analytics): with guard_level 0 every reading kept an event open, so none ever closed."""
    e = error_of("gateway: {id: g}\ndetector: {params: {guard_level: 0}}\n")
    assert str(e) == ("site.yaml:2:21: detector.params.guard_level: must be positive "
                      "(above 1: guards open no events)")


@pytest.mark.parametrize("host, said", [
    ("mqtt://broker.example.com:1883", "'mqtt://broker.example.com:1883' is a URL: give the host name or IP address "
                                       "alone; the port goes in broker.port and TLS in broker.tls"),
    ("broker.local:1883", "'broker.local:1883': give the host alone; the port goes in broker.port"),
    ("10.0.0.300", "'10.0.0.300' is not an IP address"),
    ("broker example.com", "'broker example.com' is not a host name or IP address"),
    ('""', "give the broker's host name or IP address"),
])
def test_a_broker_host_that_is_no_host_is_a_warning_at_its_key(host, said):
    """A URL or host:port loaded silently, then every connect failed as a DNS error (review 17,
    technician #1). A warning, not an error: ${VAR} values load as any string."""
    cfg = config.loads(f"gateway: {{id: g}}\nbroker:\n  host: {host}\n")
    assert config.warnings_of(cfg) == [("broker.host", f"{said} (the gateway will not reach the broker)"),
                                       ("sensors", config.NO_SENSORS)]


def test_broker_hosts_that_are_hosts_have_no_warning():
    for host in ("::1", "localhost", "mqtt.city-net.example", "192.168.1.10", "broker_1.local."):
        cfg = config.loads(f"gateway: {{id: g}}\nbroker:\n  host: '{host}'\n" + GOOD.split("\n", 2)[2])
        assert cfg.sensors and config.warnings_of(cfg) == []


@pytest.mark.parametrize("driver, port, said", [
    ("serial_line", "ttyUSB0", "'ttyUSB0' is not a device path: did you mean /dev/ttyUSB0?"),
    ("pms5003", "COM3", "'COM3' is a Windows port name: give the gateway's device path, e.g. /dev/ttyUSB0"),
    ("serial_line", '""', "give the serial device, e.g. /dev/ttyUSB0 or /dev/serial/by-id/..."),
    ("serial_line", "/dev/serial/by-id/usb-FTDI-if00", None),
    ("serial_line", "rfc2217://10.0.0.2:4000", None),
])
def test_a_serial_port_that_is_no_device_path_is_a_warning_at_its_key(driver, port, said):
    cfg = config.loads(f"gateway: {{id: g}}\nsensors:\n  - id: s\n    driver: {driver}\n    options: {{port: {port}}}\n")
    want = [] if said is None else [("sensors[0].options.port", f"{said} (the sensor will not be read)")]
    assert config.warnings_of(cfg) == want


def test_config_validate_shows_those_warnings_at_their_line(tmp_path):
    from ops_support import cli

    cfg = tmp_path / "c.yaml"
    cfg.write_text("gateway: {id: g}\nbroker:\n  host: tcp://10.0.0.5\n")
    r = cli("config", "validate", cfg)
    assert (r.returncode, r.stdout) == (0, f"{cfg}: valid (0 sensors, gateway g)\n")
    assert r.stderr == (f"edge-gateway: {cfg}:3:9: broker.host: warning: 'tcp://10.0.0.5' is a URL: give the host "
                        "name or IP address alone; the port goes in broker.port and TLS in broker.tls (the gateway "
                        "will not reach the broker)\n"
                        f"edge-gateway: {cfg}: sensors: warning: no sensors configured: the gateway will run but "
                        "read nothing\n")


def test_every_bad_detector_param_is_reported_at_once_in_file_order(tmp_path):
    """A walkthrough needed four rounds of fix-and-rerun: only one mistake of a params map was reported."""
    path = tmp_path / "b.yaml"
    path.write_text("gateway: {id: gw}\nsensors:\n  - id: air-1\n    driver: serial_line\n"
                    "    options: {port: /dev/null}\ndetector:\n  params:\n"
                    "    weights: [0.5, 1.5, 0.2, 0, 0, 0, 0, 1]\n    cusum_h: 0\n    nov_warmup: .inf\n"
                    "  sensors:\n    air-1:\n      params: {flat_alpha: 3, robust_eta: 0}\n")
    with pytest.raises(config.ConfigError) as e:
        config.load(path)
    lines = [line.split(": ", 2)[:2] for line in str(e.value).splitlines()]
    assert [(where.rsplit(":", 2)[1:], key) for where, key in lines] == [
        (["8", "5"], "detector.params.weights"), (["9", "5"], "detector.params.cusum_h"),
        (["10", "5"], "detector.params.nov_warmup"), (["13", "16"], "detector.sensors.air-1.params.flat_alpha"),
        (["13", "31"], "detector.sensors.air-1.params.robust_eta")]
    assert str(e.value).splitlines()[0].endswith("; weights[1] (robust) is 1.5")
