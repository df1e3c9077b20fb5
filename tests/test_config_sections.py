"""An empty section is its defaults (technician walkthrough follow-up).

A technician turns a section off by commenting out its keys: ``metrics:`` then has nothing under it,
which YAML reads as null. Such a section (top-level, a sensor's ``options:`` or ``filters:``, a mapping
like ``detector.params:``) is an empty mapping: its defaults. A section with required keys still names
each of them as missing, at the empty key's file:line:column. Where "empty" and "default" differ (a list
with a non-empty default, a ``-`` item alone) it stays a mistake.
"""

from __future__ import annotations

import textwrap

import pytest

from edge_gateway import config
from edge_gateway.config import (BrokerSection, DetectorOverride, DetectorSection, FilterSection, MetricsSection,
                                 QueueSection, WindowSection)
from ops_support import cli

BARE = "gateway:\n  id: gw-1\n"


def error_of(text: str, source: str = "site.yaml") -> config.ConfigError:
    with pytest.raises(config.ConfigError) as info:
        config.loads(text, source)
    return info.value


@pytest.mark.parametrize("section, default", [
    ("broker", BrokerSection()), ("windows", WindowSection()), ("detector", DetectorSection()),
    ("queue", QueueSection()), ("metrics", MetricsSection()),
])
@pytest.mark.parametrize("written", [":\n  # key: value\n", ":\n", ":   # off for now\n", ": ~\n", ": null\n"],
                         ids=["keys-commented-out", "nothing", "comment-only", "tilde", "null"])
def test_an_empty_top_level_section_is_its_defaults(section, default, written):
    cfg = config.loads(BARE + section + written, "site.yaml")
    assert getattr(cfg, section) == default
    assert cfg == config.loads(BARE, "site.yaml")  # the same as leaving the section out


TEMPLATE = textwrap.dedent("""\
    gateway:
      id: gw-1
    broker:
      # host: mqtt.local
      # port: 8883
    sensors:
      # - id: air-1
      #   driver: serial_line
      #   options: {port: /dev/ttyUSB0}
    windows:
    detector:
    queue:
      # max_bytes: 1048576
    metrics:
      # prometheus_port: 9100
    """)


def test_every_section_commented_out_loads_as_the_defaults_with_the_no_sensors_warning():
    cfg = config.loads(TEMPLATE, "site.yaml")
    assert cfg == config.loads(BARE, "site.yaml")
    assert cfg.sensors == ()
    assert config.warnings_of(cfg) == [("sensors", config.NO_SENSORS)]


def test_empty_mappings_inside_sections_are_empty():
    cfg = config.loads(textwrap.dedent("""\
        gateway:
          id: gw-1
        broker:
          tls:
        sensors:
          - id: air-1
            driver: serial_line
            options:
              port: /dev/ttyUSB0
              units:
              columns:
            filters:
        detector:
          params:
          sensors:
            air-1:
        """), "site.yaml")
    assert cfg.broker.tls is None  # an optional section left empty: none, as before
    (air,) = cfg.sensors
    assert (air.options.port, air.options.units, air.options.columns) == ("/dev/ttyUSB0", {}, ())
    assert air.filters == FilterSection()
    assert cfg.detector == DetectorSection(params={}, sensors={"air-1": DetectorOverride()})


def test_an_empty_gateway_section_names_its_required_key():
    e = error_of("gateway:\n  # id: gw-1\nmetrics:\n")
    assert str(e) == "site.yaml:1:9: gateway.id: required key is missing"
    assert (e.line, e.column, e.path, e.message) == (1, 9, "gateway.id", "required key is missing")
    assert [str(m) for m in e.errors] == ["site.yaml:1:9: gateway.id: required key is missing"]


@pytest.mark.parametrize("driver, missing", [
    ("serial_line", ["port"]),
    ("pms5003", ["port"]),
    ("modbus_rtu", ["port", "blocks"]),
    ("coap", ["uri", "resources"]),
])
def test_empty_driver_options_name_each_required_key(driver, missing):
    e = error_of(textwrap.dedent(f"""\
        gateway:
          id: gw-1
        sensors:
          - id: s-1
            driver: {driver}
            options:
              # port: /dev/ttyUSB0
        """))
    said = [f"site.yaml:6:13: sensors[0].options.{key}: required key is missing" for key in missing]
    assert str(e) == "\n".join(said)
    assert [(m.line, m.column, m.path) for m in e.errors] == [(6, 13, f"sensors[0].options.{k}") for k in missing]


def test_empty_sections_among_other_mistakes_are_reported_in_file_order():
    e = error_of(textwrap.dedent("""\
        gateway:
        broker:
          hots: mqtt.local
        sensors:
          - id: air-1
            driver: pms5003
            options:
        metrics:
        """))
    assert str(e) == ("site.yaml:1:9: gateway.id: required key is missing\n"
                      "site.yaml:3:3: broker.hots: unknown key; did you mean 'host'?\n"
                      "site.yaml:7:13: sensors[0].options.port: required key is missing")


@pytest.mark.parametrize("text, said", [
    # none would accept no commands at all, the default accepts ping and status: write which
    ("gateway: {id: gw-1}\nbroker:\n  commands:\n",
     "site.yaml:3:12: broker.commands: expected a list, got nothing (null)"),
    ("gateway: {id: gw-1}\nsensors:\n  -\n",
     "site.yaml:3:4: sensors[0]: expected the sensor settings as a mapping (key: value lines), got nothing (null); "
     "give its settings after the '-', indented, or remove the item"),
    ("---\n",
     "site.yaml:2:1: expected a mapping of sections (gateway:, broker:, sensors:, ...), got nothing (null)"),
])
def test_where_empty_is_not_the_default_it_stays_a_mistake(text, said):
    assert str(error_of(text)) == said


def test_cli_validate_accepts_the_commented_out_template(tmp_path):
    cfg = tmp_path / "gw.yaml"
    cfg.write_text(TEMPLATE)
    r = cli("config", "validate", cfg)
    assert r.returncode == 0
    assert r.stdout == f"{cfg}: valid (0 sensors, gateway gw-1)\n"
    assert r.stderr == (f"edge-gateway: {cfg}:6:9: sensors: warning: no sensors configured: the gateway will run "
                        "but read nothing\n")


def test_cli_validate_of_an_empty_gateway_section(tmp_path):
    cfg = tmp_path / "gw.yaml"
    cfg.write_text("gateway:\n  # id: gw-1\nbroker:\n  # host: mqtt.local\n")
    r = cli("config", "validate", cfg)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr == f"edge-gateway: {cfg}:1:9: gateway.id: required key is missing\n"


def test_cli_set_fills_an_empty_section_keeping_its_comment(tmp_path):
    cfg = tmp_path / "gw.yaml"
    cfg.write_text(BARE + "metrics:\n  # prometheus_port: 9100\n")
    r = cli("config", "set", cfg, "metrics.prometheus_port", "9100")
    assert (r.returncode, r.stdout, r.stderr) == (0, f"{cfg}: metrics.prometheus_port = 9100\n", (
        "note: metrics.prometheus_port takes effect only when the gateway restarts: restart the service "
        "(systemctl restart edge-gateway); until then `edge-gateway reload` refuses the whole file\n"))
    assert cfg.read_text() == BARE + "metrics:\n  prometheus_port: 9100\n  # prometheus_port: 9100\n"
    assert config.load(cfg).metrics == MetricsSection(prometheus_port=9100)
