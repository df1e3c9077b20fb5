"""``edge-gateway config options [DRIVER]`` (the driver options reference, docs/drivers.md) and the
``config set``/``get``/``show`` fixes of the technician walkthrough: a VALUE YAML reads as a mapping where
a string belongs, the unset ``detector.threshold``, the resolved ``queue.path`` and ``set --dry-run``'s diff."""

from __future__ import annotations

import json
import textwrap

import yaml
from ops_support import cli
from support import REPO

from edge_gateway.analytics.settings import DetectorSettings
from edge_gateway.config_docs import options_text

HINT = "edge-gateway config options DRIVER: the options of one driver (the keys under a sensor's options:)"


def test_options_without_a_driver_lists_every_driver_with_its_summary():
    r = cli("config", "options", timeout=30)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    assert r.stdout == (
        "coap         CoAP sensor nodes: periodic GET polling, or Observe (RFC 7641) with re-registration.\n"
        "modbus_rtu   Modbus RTU energy and water meters on one RS-485 port, polled block by block.\n"
        "pms5003      Plantower PMS5003 particulate sensor: 32-byte binary frames on a 9600-baud UART.\n"
        "serial_line  Text-line sensors on a serial port: key=value pairs, CSV with known columns, JSON lines.\n"
        "\n" + HINT + "\n"
        "edge-gateway config options SECTION: the keys of one section of the config: gateway, broker, tls, "
        "sensors, filters, windows, detector, queue, metrics\n"
        "top-level key log_level: one of debug|info|warning|error, default info\n"
        "      a reload applies it; run --log-level wins\n")


def test_pms5003_options_in_full():
    r = cli("config", "options", "pms5003", timeout=30)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    assert r.stdout == textwrap.dedent("""\
        pms5003: Plantower PMS5003 particulate sensor: 32-byte binary frames on a 9600-baud UART.
        options (the keys under the sensor's options:):
          port              string, required
              the serial device the sensor's TX is wired to (/dev/ttyAMA0, /dev/ttyUSB0) or a pyserial URL.
          baudrate          integer, default 9600
              9600 for every PMS5003; another value only for a converter in between.
          cf1               boolean, default false
              also send the CF=1 mass values (pm1_0_cf1, pm2_5_cf1, pm10_cf1, the factory's calibration
              particle), besides the atmospheric pm1_0, pm2_5, pm10 (ug/m3).
          counts            boolean, default false
              also send the particle counts above 0.3, 0.5, 1.0, 2.5, 5.0 and 10 um (n0_3 ... n10), per
              decilitre.
          frame_interval_s  number, default 1.0
              the sensor's pace, used to date frames that arrive together in one read (frames carry no time;
              2.3 s in steady air, 0.2-0.8 s when it changes fast, so 1 s is an estimate).
        """)




def test_modbus_options_are_dotted_down_the_nested_lists():
    out = options_text("modbus_rtu")
    lines = out.splitlines()
    assert lines[0] == "modbus_rtu: Modbus RTU energy and water meters on one RS-485 port, polled block by block."
    for line in ["  port                          string, required",
                 "  blocks                        list of mappings, required",
                 "      Registers read with one request, every interval_s.",  # ModbusBlock's docstring
                 "  blocks[].slave                integer, required",
                 "  blocks[].fields[].offset      integer, required",
                 "      offset registers from the block's start.",  # ModbusField's text about offset
                 "  blocks[].fields[].type        one of int16|uint16|int32|uint32|float32, default uint16",
                 "  blocks[].fields[].min         number or null, default null",
                 "  blocks[].function             one of holding|input, default holding",
                 "  timeout_s                     number, default 0.5",
                 "  exclusive                     boolean, default true"]:
        assert line in lines, (line, out)
    # each option's text is the code's own (the class docstrings)
    after = {lines[i]: lines[i + 1] for i in range(len(lines) - 1)}
    assert after["  timeout_s                     number, default 0.5"] == (
        "      how long a request waits for its answer; a slave that does not answer costs its own blocks")
    assert after["  blocks[].slave                integer, required"] == "      the meter's Modbus address on the bus, 1..247."


def test_coap_options_take_their_text_from_the_class_docstrings():
    r = cli("config", "options", "coap", timeout=30)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    i = lines.index("  observe_timeout_s         number, default 60.0")
    assert lines[i + 1] == ("      the longest an observation may stay silent before it is registered again "
                            "(a fresh GET with")
    assert " ".join(x.strip() for x in lines[i + 1:i + 6]).endswith(
        "node that forgot its observers costs seconds of data, not observe_timeout_s.")
    assert lines[i + 6] == "  max_age_margin_s          number, default 5.0"
    assert "  mode                      one of observe|poll, default observe" in lines
    j = lines.index("  resources[].strip_prefix  string, default ''")
    assert lines[j + 1] == "      taken off the front of SenML names before they become channels (a node's base name such as"
    k = lines.index("  uri                       string, required")
    assert lines[k + 1] == "      uri names the node only (coap://host:port); the paths go in resources."
    m = lines.index("  max_records               integer, default 4096")
    assert lines[m + 1] == "      max_payload_bytes and max_records bound what one response may cost the gateway."


def test_serial_line_options():
    out = options_text("serial_line").splitlines()
    assert "  format           one of kv|csv|json, default kv" in out
    assert "  columns          list of strings, default []" in out
    assert "  baudrate         integer, default 9600" in out


KNOWN = ("(drivers: coap, modbus_rtu, pms5003, serial_line; "
         "sections: gateway, broker, tls, sensors, filters, windows, detector, queue, metrics)")


def test_an_unknown_driver_exits_2_naming_the_known_ones():
    r = cli("config", "options", "modbus", timeout=30)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr == f"edge-gateway: unknown driver or section 'modbus'; did you mean 'modbus_rtu'? {KNOWN}\n"
    r = cli("config", "options", "zigbee", timeout=30)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr == f"edge-gateway: unknown driver or section 'zigbee' {KNOWN}\n"


def test_docs_drivers_md_is_current_and_linked_from_the_readme():
    """Regenerate with ``edge-gateway config options --markdown > docs/drivers.md`` when this fails."""
    committed = (REPO / "docs" / "drivers.md").read_text(encoding="utf-8")
    assert committed == options_text(markdown=True)
    r = cli("config", "options", "--markdown", timeout=30)
    assert r.returncode == 0 and r.stdout == committed
    assert ("| `blocks[].fields[].type` | one of int16\\|uint16\\|int32\\|uint32\\|float32 | `uint16` | how its registers "
            "read (32-bit types take two). |") in committed
    assert "[docs/drivers.md](docs/drivers.md)" in (REPO / "README.md").read_text(encoding="utf-8")


CONFIG = textwrap.dedent("""\
    gateway:
      id: cab-17   # on the door
      state_dir: state
    sensors:
      - id: bins-1
        driver: coap
        options:
          uri: coap://127.0.0.1:5683
          resources:
            - {path: /bins}
    """)


def _config(tmp_path, text=CONFIG):
    cfg = tmp_path / "gw.yaml"
    cfg.write_text(text)
    return cfg


def test_set_a_value_yaml_reads_as_a_mapping_where_a_string_belongs_stores_the_string(tmp_path):
    cfg = _config(tmp_path)
    r = cli("config", "set", cfg, "sensors.bins-1.options.resources[0].strip_prefix", "bins-1:", timeout=30)
    assert r.returncode == 0, r.stderr
    assert "taken as a string" in r.stderr
    assert "        - {path: /bins, strip_prefix: 'bins-1:'}\n" in cfg.read_text()
    assert yaml.safe_load(cfg.read_text())["sensors"][0]["options"]["resources"][0]["strip_prefix"] == "bins-1:"
    r = cli("config", "get", cfg, "sensors.bins-1.options.resources[0].strip_prefix", timeout=30)
    assert r.stdout == "bins-1:\n"


def test_a_mapping_where_a_number_belongs_is_still_refused_with_the_mapping_named(tmp_path):
    cfg = _config(tmp_path)
    r = cli("config", "set", cfg, "gateway.batch_interval_s", "fast: 1", timeout=30)
    assert r.returncode == 2 and cfg.read_text() == CONFIG
    assert r.stderr == (f"edge-gateway: refused, the result would be invalid (file unchanged): {cfg}:4:21: "
                        "gateway.batch_interval_s: expected a single value, got a mapping\n")


def test_get_says_when_any_value_is_the_default_not_the_files(tmp_path):
    """A walkthrough found the note for detector.threshold only: broker.keepalive_s, queue.max_bytes and a
    sensor's unset option printed their defaults as if the file held them."""
    cfg = tmp_path / "g.yaml"
    cfg.write_text("gateway: {id: gw}\nsensors:\n  - {id: a, driver: serial_line, options: {port: /dev/null}}\n"
                   "windows: {seconds: 10}\n")
    for key, value, default in (("windows.seconds", "10.0", False), ("windows.grace_s", "2.0", True),
                                ("broker.keepalive_s", "30", True), ("sensors.a.options.port", "/dev/null", False),
                                ("sensors[0].options.baudrate", "9600", True)):
        r = cli("config", "get", cfg, key, timeout=30)
        assert (r.returncode, r.stdout) == (0, value + "\n"), key
        assert r.stderr == (f"note: {key} is not set in the file; this is its default\n" if default else ""), key


def test_unset_detector_threshold_shows_its_default_and_says_so(tmp_path):
    cfg = _config(tmp_path)
    default = DetectorSettings().event_threshold
    r = cli("config", "get", cfg, "detector.threshold", timeout=30)
    assert r.returncode == 0 and r.stdout == f"{default}\n", r.stdout
    assert r.stderr == "note: detector.threshold is not set in the file; this is its default\n"
    r = cli("config", "get", cfg, "detector.threshold", "--json", timeout=30)
    assert json.loads(r.stdout) == default
    r = cli("config", "show", cfg, timeout=30)
    assert f"\ndetector:\n  threshold: {default}  # default (the detectors' event_threshold)\n" in r.stdout
    assert "null" not in r.stdout.split("\ndetector:")[1].split("\nqueue:")[0]
    # params.event_threshold is the same setting: its value is the default then
    cfg = _config(tmp_path, CONFIG + "detector:\n  params: {event_threshold: 0.4}\n")
    assert cli("config", "get", cfg, "detector.threshold", timeout=30).stdout == "0.4\n"
    cfg = _config(tmp_path, CONFIG + "detector:\n  threshold: 0.7\n")
    r = cli("config", "get", cfg, "detector.threshold", timeout=30)
    assert (r.stdout, r.stderr) == ("0.7\n", "")
    assert "  threshold: 0.7\n" in cli("config", "show", cfg, timeout=30).stdout


def test_show_and_get_resolve_the_queue_path(tmp_path):
    cfg = _config(tmp_path)
    want = str(tmp_path / "state" / "queue.db")
    r = cli("config", "show", cfg, timeout=30)
    assert f"\nqueue:\n  path: {want}\n" in r.stdout
    assert json.loads(cli("config", "show", cfg, "--json", timeout=30).stdout)["queue"]["path"] == want
    assert cli("config", "get", cfg, "queue.path", timeout=30).stdout == want + "\n"


def test_set_dry_run_prints_a_unified_diff_and_full_the_whole_file(tmp_path):
    cfg = _config(tmp_path)
    r = cli("config", "set", cfg, "gateway.id", "cab-18", "--dry-run", timeout=30)
    assert r.returncode == 0, r.stderr
    assert r.stdout == textwrap.dedent(f"""\
        --- {cfg}
        +++ {cfg} (after set)
        @@ -1,5 +1,5 @@
         gateway:
        -  id: cab-17   # on the door
        +  id: cab-18   # on the door
           state_dir: state
         sensors:
           - id: bins-1
        """)
    assert cfg.read_text() == CONFIG  # nothing written
    r = cli("config", "set", cfg, "gateway.id", "cab-18", "--dry-run", "--full", timeout=30)
    assert r.returncode == 0 and r.stdout == CONFIG.replace("cab-17", "cab-18")
    assert cfg.read_text() == CONFIG


def test_set_dry_run_diff_of_a_file_without_a_final_line_break(tmp_path):
    cfg = _config(tmp_path, "gateway: {id: gw-1}\nlog_level: info")
    r = cli("config", "set", cfg, "log_level", "debug", "--dry-run", timeout=30)
    assert r.returncode == 0, r.stderr
    assert r.stdout == (f"--- {cfg}\n+++ {cfg} (after set)\n@@ -1,2 +1,2 @@\n gateway: {{id: gw-1}}\n"
                        "-log_level: info\n\\ No newline at end of file\n"
                        "+log_level: debug\n\\ No newline at end of file\n")
