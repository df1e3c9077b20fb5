"""Config mistakes as a technician makes them on site, reported in plain words (technician walkthrough).

YAML syntax errors name the line and column and say what to fix, keeping PyYAML's words as a suffix; a
file saved in Latin-1 names the line and column of the first bad byte; a section of the wrong type is
named by its key, never by a class name; ``config validate`` lists every independent mistake, in file
order; and a config without sensors loads with a warning.
"""

from __future__ import annotations

import textwrap

import pytest

from edge_gateway import config
from ops_support import cli


def error_of(text: str, source: str = "site.yaml") -> config.ConfigError:
    with pytest.raises(config.ConfigError) as info:
        config.loads(text, source)
    return info.value


# --- 1. YAML syntax errors in plain words -----------------------------------------------------

@pytest.mark.parametrize("text, said", [
    pytest.param(
        "gateway:\n  id: gw-1\n\ttopic_prefix: city\n",
        "site.yaml:3:1: not valid YAML: a tab at line 3, column 1: YAML indents with spaces only; replace the tab "
        "with spaces (YAML parser: found character '\\t' that cannot start any token)", id="tab-indent"),
    pytest.param(
        "gateway:\n  id:\tgw-1\n",
        "site.yaml:2:6: not valid YAML: a tab at line 2, column 6: YAML separates with spaces only; use a space "
        "(YAML parser: found character '\\t' that cannot start any token)", id="tab-after-colon"),
    pytest.param(
        "gateway:\n  id: gw-1\n   topic_prefix: city\n",
        "site.yaml:3:4: not valid YAML: line 3: this key is indented differently from the keys above it (it starts "
        "at column 4, the key on line 2 at column 3) (YAML parser: mapping values are not allowed here)",
        id="indented-deeper"),
    pytest.param(
        "gateway:\n  id: gw-1\n topic_prefix: city\nbroker: {}\n",
        "site.yaml:3:2: not valid YAML: line 3: this key is indented differently from the keys above it (it starts "
        "at column 2, the key on line 2 at column 3) (YAML parser: expected <block end>, but found "
        "'<block mapping start>')", id="indented-less"),
    pytest.param(
        "gateway: {id: g}\nsensors:\n  - id: air-1\n  driver: serial_line\n",
        "site.yaml:4:3: not valid YAML: line 4: this key is indented differently from the keys above it (it starts "
        "at column 3, the key on line 3 at column 5) (YAML parser: expected <block end>, but found '?')",
        id="list-item-key"),
    pytest.param(
        'gateway:\n  id: "gw-1\nbroker:\n  host: h\n',
        'site.yaml:2:7: not valid YAML: the quote " opened at line 2, column 7 is never closed: end the value with " '
        "(YAML parser: found unexpected end of stream)", id="unclosed-double-quote"),
    pytest.param(
        "gateway:\n  id: 'gw-1\n",
        "site.yaml:2:7: not valid YAML: the quote ' opened at line 2, column 7 is never closed: end the value with ' "
        "(YAML parser: found unexpected end of stream)", id="unclosed-single-quote"),
    pytest.param(
        'gateway:\n  id: "gw-1\nbroker:\n  host: "h"\n',
        "site.yaml:2:7: not valid YAML: the quote opened at line 2, column 7 is closed only on line 4: a closing "
        "quote is missing (YAML parser: expected <block end>, but found '<scalar>')", id="quote-closed-later"),
    pytest.param(
        'gateway: {id: g}\nbroker:\n  host: "h"x\n',
        "site.yaml:3:12: not valid YAML: text after the closing quote on line 3: put the whole value inside the "
        "quotes (YAML parser: expected <block end>, but found '<scalar>')", id="text-after-quote"),
    pytest.param(
        "gateway:\n  id: gw-1\n  topic_prefix:city\n",
        "site.yaml:3:3: not valid YAML: line 3: put a space after ':' in 'topic_prefix:city' (YAML reads it as one "
        "word, not a key and a value: topic_prefix: city) (YAML parser: could not find expected ':')",
        id="no-space-after-colon-last"),
    pytest.param(
        "gateway:\n  id:gw-1\n  topic_prefix: city\n",
        "site.yaml:2:3: not valid YAML: line 2: put a space after ':' in 'id:gw-1' (without it, YAML reads it as "
        "text, and line 3 as more of that text) (YAML parser: mapping values are not allowed here)",
        id="no-space-after-colon-first"),
    pytest.param(
        "gateway:\n  id: gw-1\n  oops\n  topic_prefix: city\n",
        "site.yaml:3:3: not valid YAML: line 3: 'oops' is not a 'key: value' line (no ': ' after it) "
        "(YAML parser: could not find expected ':')", id="no-colon"),
    pytest.param(
        "gateway:\n  id: gw-1\n  topic_prefix: city: north\n",
        "site.yaml:3:21: not valid YAML: line 3: a second ': ' in one line; a value holding ': ' must be in quotes, "
        'e.g. topic_prefix: "city: north" (YAML parser: mapping values are not allowed here)', id="second-colon"),
    pytest.param(
        "gateway: {id: g}\nbroker:\n  password: @hunter2\n",
        "site.yaml:3:13: not valid YAML: a value cannot start with '@' (line 3, column 13): put it in quotes, "
        "e.g. \"@hunter2\" (YAML parser: found character '@' that cannot start any token)", id="at-sign"),
    pytest.param(
        "gateway: {id: g}\nbroker:\n  commands: [ping, status\n",
        "site.yaml:3:13: not valid YAML: the '[' at line 3, column 13 is never closed: end the list with ']' "
        "(YAML parser: expected ',' or ']', but got '<stream end>')", id="unclosed-bracket"),
    pytest.param(
        "gateway: {id: g, topic_prefix: city\nbroker: {}\n",
        "site.yaml:1:10: not valid YAML: the '{' at line 1, column 10 is never closed: end the mapping with '}' "
        "(YAML parser: expected ',' or '}', but got ':')", id="unclosed-brace"),
    pytest.param(  # not a common one: the parser's words alone, still located
        "gateway: {id: g}\nbroker: *nope\n",
        "site.yaml:2:9: not valid YAML: found undefined alias 'nope'", id="other-yaml-error"),
])
def test_a_yaml_syntax_error_is_said_in_plain_words(text, said):
    e = error_of(text)
    assert str(e) == said
    assert (e.line, e.column) == tuple(int(x) for x in said.split(":")[1:3])


def test_a_key_without_the_space_after_its_colon_is_named_by_the_schema_too():
    """``id:gw-1`` alone is valid YAML (one string), so the section gets a string."""
    e = error_of("gateway:\n  id:gw-1\n")
    assert str(e) == ("site.yaml:2:3: gateway: expected the gateway settings as a mapping (key: value lines), "
                      "got a string 'id:gw-1'; put a space after ':' (id: gw-1)")


def test_a_tab_is_reported_the_same_by_set_and_validate(tmp_path):
    cfg = tmp_path / "gw.yaml"
    cfg.write_bytes(b"gateway:\n  id: x\n\tbroker: 1\n")
    said = (f"edge-gateway: {cfg}:3:1: not valid YAML: a tab at line 3, column 1: YAML indents with spaces only; "
            "replace the tab with spaces (YAML parser: found character '\\t' that cannot start any token)\n")
    for args in (("validate", cfg), ("set", cfg, "gateway.id", "y")):
        r = cli("config", *args)
        assert (r.returncode, r.stderr) == (2, said), args
    assert cfg.read_bytes() == b"gateway:\n  id: x\n\tbroker: 1\n"


# --- 2. a file that is not UTF-8 --------------------------------------------------------------

def test_a_latin1_file_names_the_line_and_column_of_the_first_bad_byte(tmp_path):
    cfg = tmp_path / "gw.yaml"
    text = "gateway:\n  id: gw-1\nbroker:\n  host: caf\u00e9.local  # Caf\u00e9 du Commerce\n"
    cfg.write_bytes(text.encode("latin-1"))
    with pytest.raises(config.ConfigError) as info:
        config.load(cfg)
    e = info.value
    assert (e.line, e.column) == (4, 12)
    assert str(e) == (f"{cfg}:4:12: line 4, column 12: not UTF-8 (byte 0xe9, '\u00e9' in Windows-1252/Latin-1); "
                      "save the file as UTF-8")
    r = cli("config", "validate", cfg)
    assert (r.returncode, r.stderr) == (2, f"edge-gateway: {e}\n")


def test_a_non_utf8_byte_is_located_in_a_crlf_file_and_a_curly_quote_is_named(tmp_path):
    cfg = tmp_path / "gw.yaml"
    cfg.write_bytes(b"gateway:\r\n  id: gw-1\r\n  topic_prefix: \x92city\r\n")
    with pytest.raises(config.ConfigError) as info:
        config.load(cfg)
    assert str(info.value) == (f"{cfg}:3:17: line 3, column 17: not UTF-8 (byte 0x92, '\u2019' in "
                               "Windows-1252/Latin-1); save the file as UTF-8")
    with pytest.raises(config.ConfigError) as info:
        config.read_text(cfg, newline="")  # as `config set` reads it: the same place
    assert (info.value.line, info.value.column) == (3, 17)


def test_a_utf16_file_is_named_as_such(tmp_path):
    cfg = tmp_path / "gw.yaml"
    cfg.write_bytes("gateway:\n  id: gw-1\n".encode("utf-16"))
    with pytest.raises(config.ConfigError) as info:
        config.load(cfg)
    assert str(info.value) == (f"{cfg}:1:1: not UTF-8: the file is saved as UTF-16 (it starts with bytes 0xff 0xfe); "
                               "save it as UTF-8")


def test_read_text_keeps_or_translates_line_endings_as_before(tmp_path):
    cfg = tmp_path / "gw.yaml"
    cfg.write_bytes(b"a: 1\r\nb: 2\rc: 3\n")
    assert config.read_text(cfg) == "a: 1\nb: 2\nc: 3\n"
    assert config.read_text(cfg, newline="") == "a: 1\r\nb: 2\rc: 3\n"
    with pytest.raises(config.ConfigError, match="cannot read"):
        config.read_text(tmp_path / "missing.yaml")


# --- 3. a section of the wrong type is named by its key -----------------------------------------

@pytest.mark.parametrize("text, said", [
    ("gateway: {id: g}\nbroker: mqtt.local\n",
     "site.yaml:2:9: broker: expected the broker settings as a mapping (key: value lines), got a string 'mqtt.local'"),
    ("gateway: {id: g}\nsensors:\n  - air-1\n",
     "site.yaml:3:5: sensors[0]: expected the sensor settings as a mapping (key: value lines), got a string 'air-1'"),
    ("gateway: {id: g}\nsensors:\n  - {id: a, driver: serial_line, options: /dev/ttyUSB0}\n",
     "site.yaml:3:43: sensors[0].options: expected the driver options as a mapping (key: value lines), "
     "got a string '/dev/ttyUSB0'"),
    # (an empty section, ``windows:`` alone, is its defaults: tests/test_config_sections.py)
    ("gateway: {id: g}\nsensors:\n  -\n",
     "site.yaml:3:4: sensors[0]: expected the sensor settings as a mapping (key: value lines), got nothing (null); "
     "give its settings after the '-', indented, or remove the item"),
    ("just text\n",
     "site.yaml:1:1: expected a mapping of sections (gateway:, broker:, sensors:, ...), got a string 'just text'"),
])
def test_a_section_that_is_not_a_mapping_is_named_by_its_key(text, said):
    e = error_of(text)
    assert str(e) == said
    assert "Section" not in str(e) and "GatewayConfig" not in str(e)


# --- 4. every independent mistake, in file order ----------------------------------------------

THREE_MISTAKES = textwrap.dedent("""\
    gateway:
      id: gw-1
      batch_interval_s: fast
    sensors:
      - id: air-1
        driver: serial_lines
    broker:
      hots: mqtt.local
    """)


def test_three_mistakes_in_three_sections_are_all_reported_in_file_order():
    e = error_of(THREE_MISTAKES)
    said = ["site.yaml:3:21: gateway.batch_interval_s: expected a number, got a string 'fast'",
            "site.yaml:6:13: sensors[0].driver: unknown driver 'serial_lines'; did you mean 'serial_line'?",
            "site.yaml:8:3: broker.hots: unknown key; did you mean 'host'?"]
    assert str(e) == "\n".join(said)
    assert [str(m) for m in e.errors] == said
    assert [(m.line, m.column, m.path) for m in e.errors] == [(3, 21, "gateway.batch_interval_s"),
                                                              (6, 13, "sensors[0].driver"), (8, 3, "broker.hots")]
    assert (e.line, e.column, e.path) == (3, 21, "gateway.batch_interval_s")  # the first one's, as before
    assert e.omitted == 0


def test_cli_validate_lists_every_mistake_and_exits_2_without_a_traceback(tmp_path):
    cfg = tmp_path / "gw.yaml"
    cfg.write_text(THREE_MISTAKES)
    r = cli("config", "validate", cfg)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr == (f"edge-gateway: {cfg}:3:21: gateway.batch_interval_s: expected a number, got a string 'fast'\n"
                        f"edge-gateway: {cfg}:6:13: sensors[0].driver: unknown driver 'serial_lines'; "
                        "did you mean 'serial_line'?\n"
                        f"edge-gateway: {cfg}:8:3: broker.hots: unknown key; did you mean 'host'?\n")
    assert "Traceback" not in r.stderr


def _three_mistakes(cfg, tmp_path) -> list[str]:
    """THREE_MISTAKES with a state directory in ``tmp_path``, written to ``cfg``; its mistakes as stderr lines."""
    cfg.write_text(THREE_MISTAKES.replace("  id: gw-1\n", f"  id: gw-1\n  state_dir: {tmp_path}/state\n"))
    return [f"edge-gateway: {cfg}:4:21: gateway.batch_interval_s: expected a number, got a string 'fast'",
            f"edge-gateway: {cfg}:7:13: sensors[0].driver: unknown driver 'serial_lines'; "
            "did you mean 'serial_line'?",
            f"edge-gateway: {cfg}:9:3: broker.hots: unknown key; did you mean 'host'?"]


def test_cli_run_lists_every_mistake_one_a_line(tmp_path):
    cfg = tmp_path / "gw.yaml"
    mistakes = _three_mistakes(cfg, tmp_path)
    r = cli("run", cfg)
    assert (r.returncode, r.stdout) == (2, "")
    assert r.stderr.splitlines() == mistakes
    assert "Traceback" not in r.stderr


def test_cli_set_refusal_lists_every_mistake_one_a_line(tmp_path):
    cfg = tmp_path / "gw.yaml"
    mistakes = _three_mistakes(cfg, tmp_path)
    before = cfg.read_bytes()
    r = cli("config", "set", cfg, "gateway.id", "gw-2")
    assert (r.returncode, r.stdout) == (2, "")
    assert r.stderr.splitlines() == ["edge-gateway: refused, the result would be invalid (file unchanged):",
                                     *mistakes]
    assert "Traceback" not in r.stderr
    assert cfg.read_bytes() == before


def test_cli_set_refusal_of_one_mistake_stays_one_line(tmp_path):
    cfg = tmp_path / "gw.yaml"
    cfg.write_text("gateway:\n  id: gw-1\n")
    r = cli("config", "set", cfg, "broker.port", "99999")
    assert (r.returncode, r.stdout) == (2, "")
    assert r.stderr == (f"edge-gateway: refused, the result would be invalid (file unchanged): {cfg}:4:9: "
                        "broker.port: 99999 is not a TCP port\n")
    assert cfg.read_text() == "gateway:\n  id: gw-1\n"


def test_cli_status_with_a_broken_config_lists_every_mistake_one_a_line(tmp_path):
    """cmd_common.error: the file's mistakes, then the note, then why nothing answers (no daemon here)."""
    cfg = tmp_path / "gw.yaml"
    mistakes = _three_mistakes(cfg, tmp_path)
    sock = tmp_path / "state" / "control.sock"
    r = cli("status", "--config", cfg)
    assert (r.returncode, r.stdout) == (3, "")
    assert r.stderr.splitlines() == [
        *mistakes,
        f"edge-gateway: note: asking the daemon at {sock} anyway: it keeps running the config it loaded last",
        f"edge-gateway: the daemon is not running: no edge-gateway daemon at {sock} (No such file or directory)",
        "edge-gateway: start it with `systemctl start edge-gateway` or `edge-gateway run CONFIG`; "
        "if it runs with another config, pass --config FILE (or --socket PATH)"]
    assert "Traceback" not in r.stderr


def test_error_prefixes_every_line(capsys):
    from edge_gateway.cmd_common import error

    error(config.ConfigError.combine([config.ConfigError("f.yaml", 2, 3, "a", "one"),
                                      config.ConfigError("f.yaml", 1, 1, "b", "two")]))
    error("plain")
    error("x\ny", lead="refused: ")
    error("x", lead="refused: ")
    assert capsys.readouterr().err == ("edge-gateway: f.yaml:1:1: b: two\nedge-gateway: f.yaml:2:3: a: one\n"
                                       "edge-gateway: plain\n"
                                       "edge-gateway: refused:\nedge-gateway: x\nedge-gateway: y\n"
                                       "edge-gateway: refused: x\n")


@pytest.mark.parametrize("raw", [b"gateway:\n  id: x\n\tbroker: 1\n", b"gateway:\n  id: caf\xe9\n",
                                 b"gateway:\n  id: [x\n", b"broker: 1\n", b""])
def test_cli_validate_of_a_broken_file_exits_2_without_a_traceback(tmp_path, raw):
    cfg = tmp_path / "gw.yaml"
    cfg.write_bytes(raw)
    r = cli("config", "validate", cfg)
    assert r.returncode == 2 and r.stderr.startswith(f"edge-gateway: {cfg}")
    assert "Traceback" not in r.stderr


def test_a_check_within_a_section_still_runs_beside_a_typo():
    """``port: 99999`` is wrong whatever the unknown key next to it; both are reported in one run."""
    e = error_of("gateway:\n  id: gw 1\n  batch_interval_s: soon\nbroker:\n  hots: h\n  port: 99999\n")
    assert str(e) == ("site.yaml:2:7: gateway.id: use 1-64 letters, digits, '.', '_' or '-' "
                      "(it is part of MQTT topics)\n"
                      "site.yaml:3:21: gateway.batch_interval_s: expected a number, got a string 'soon'\n"
                      "site.yaml:5:3: broker.hots: unknown key; did you mean 'host'?\n"
                      "site.yaml:6:9: broker.port: 99999 is not a TCP port")


def test_a_check_that_depends_on_a_wrong_key_waits_for_it():
    """reconnect_max_s is compared with reconnect_min_s: while that is wrong, the comparison says nothing."""
    e = error_of("gateway: {id: g}\nbroker:\n  reconnect_min_s: soon\n  reconnect_max_s: 0.5\n")
    assert str(e) == "site.yaml:3:20: broker.reconnect_min_s: expected a number, got a string 'soon'"
    e = error_of("gateway: {id: g}\nsensors:\n  - {id: a, driver: nope}\n"
                 "detector:\n  sensors:\n    a: {threshold: 0.5}\n")
    assert [m.path for m in e.errors] == ["sensors[0].driver"]  # no "no sensor 'a'" while the sensor is wrong


def test_a_misspelt_required_key_is_not_also_missing():
    e = error_of("gateway:\n  idd: gw-1\n")
    assert str(e) == "site.yaml:2:3: gateway.idd: unknown key; did you mean 'id'?"


def test_checks_across_sections_report_each_mistake():
    e = error_of("gateway: {id: g}\nsensors:\n"
                 "  - {id: a, driver: serial_line, options: {port: /dev/ttyUSB0}}\n"
                 "  - {id: a, driver: serial_line, options: {port: /dev/ttyUSB1}}\n"
                 "detector:\n  sensors:\n    b: {threshold: 0.5}\n")
    assert str(e) == ("site.yaml:4:6: sensors[1].id: duplicate sensor id 'a' (also sensors[0])\n"
                      "site.yaml:7:5: detector.sensors.b: no sensor 'b'; sensors: a")  # each id listed once


def test_unset_environment_variables_are_reported_with_the_other_mistakes():
    e = error_of("gateway:\n  id: ${EG_TEST_SYNTAX_UNSET_A}\nbroker:\n  port: ${EG_TEST_SYNTAX_UNSET_B}\n"
                 "  hots: h\n")
    assert str(e) == ("site.yaml:2:7: gateway.id: environment variable EG_TEST_SYNTAX_UNSET_A is not set\n"
                      "site.yaml:4:9: broker.port: environment variable EG_TEST_SYNTAX_UNSET_B is not set\n"
                      "site.yaml:5:3: broker.hots: unknown key; did you mean 'host'?")


def test_at_most_twenty_mistakes_are_listed_and_the_rest_counted(tmp_path):
    text = "gateway: {id: g}\nbroker:\n" + "".join(f"  bad_{i:02}: 1\n" for i in range(25))
    e = error_of(text)
    assert len(e.errors) == 20 and e.omitted == 5
    lines = str(e).splitlines()
    assert lines[0].startswith("site.yaml:3:3: broker.bad_00: unknown key")
    assert lines[19].startswith("site.yaml:22:3: broker.bad_19: unknown key")
    assert lines[20:] == ["site.yaml: ... and 5 more mistakes"]
    cfg = tmp_path / "gw.yaml"
    cfg.write_text(text)
    r = cli("config", "validate", cfg)
    assert r.returncode == 2 and len(r.stderr.splitlines()) == 21
    assert r.stderr.splitlines()[-1] == f"edge-gateway: {cfg}: ... and 5 more mistakes"


# --- 5. no sensors: a warning -------------------------------------------------------------------

def test_a_config_without_sensors_loads_with_a_warning(tmp_path):
    cfg = config.loads("gateway: {id: g}\n")
    assert config.warnings_of(cfg) == [("sensors", "no sensors configured: the gateway will run but read nothing")]
    path = tmp_path / "gw.yaml"
    path.write_text("gateway: {id: g}\nsensors: []\n")
    r = cli("config", "validate", path)
    assert (r.returncode, r.stdout) == (0, f"{path}: valid (0 sensors, gateway g)\n")
    assert r.stderr == (f"edge-gateway: {path}:2:10: sensors: warning: no sensors configured: the gateway will run "
                        "but read nothing\n")


@pytest.mark.parametrize("text, message", [
    ("gateway: {id: g}\nsensorsx:\n  - {id: air-1, driver: serial_line, options: {port: /dev/ttyUSB0}}\n"
     "detector:\n  sensors:\n    air-1: {threshold: 0.5}\n",
     "gw.yaml:2:1: sensorsx: unknown key; did you mean 'sensors'?"),
    ("gateway: {id: g}\nsensors:\n  - id: n1\n    driver: coap\n    optionz: {uri: 'coap://10.0.0.9', resources: [{path: /t}]}\n",
     "gw.yaml:5:5: sensors[0].optionz: unknown key; did you mean 'options'?"),
    ("gateway: {id: g}\nsensors:\n  - id: m\n    driver: serial_line\n    options:\n      port: /dev/ttyUSB0\n"
     "      formt: csv\n      columns: [a, b]\n",
     "gw.yaml:7:7: sensors[0].options.formt: unknown key; did you mean 'format'?"),
])
def test_a_misspelt_key_is_the_one_mistake_reported(text, message):
    """Review 18: the key a misspelt one was taken for kept its default in the section's checks, which
    then reported what the file got right ("no sensor 'air-1'", "options.uri: required key is missing",
    "only the csv format takes columns")."""
    with pytest.raises(config.ConfigError) as e:
        config.loads(text, "gw.yaml", env={})
    assert str(e.value) == message


@pytest.mark.parametrize("text, message", [
    ("gateway: {id: a,\n  state_dir: /tmp/x\n  log_level: info}\n",
     "f.yaml:3:3: not valid YAML: line 3: a ',' is missing before this line? The items of the '{' at line 1, "
     "column 10 are separated by commas (or end the mapping with '}') (YAML parser: expected ',' or '}', but got ':')"),
    ("gateway:\n  id: gw\nsensors: [{id: a, driver: coap},\n  {id: b, driver: coap}\n  {id: c, driver: coap}]\n",
     "f.yaml:5:3: not valid YAML: line 5: a ',' is missing before this line? The items of the '[' at line 3, "
     "column 10 are separated by commas (or end the list with ']') (YAML parser: expected ',' or ']', but got '{')"),
    ("gateway: {id: a, state_dir: /tmp/x]\n",
     "f.yaml:1:35: not valid YAML: line 1, column 35: ']' cannot close the '{' at line 1, column 10: end the mapping "
     "with '}' (YAML parser: expected ',' or '}', but got ']')"),
    ("gateway:\n  id: [x\nbroker:\n  port: 1\n",
     "f.yaml:2:7: not valid YAML: the '[' at line 2, column 7 is never closed: end the list with ']' "
     "(YAML parser: expected ',' or ']', but got ':')"),
])
def test_a_missing_comma_is_not_an_unclosed_bracket(text, message):
    """Review 18: every flow-collection error spanning lines was "never closed", a missing ',' between
    items and a ']' closing a '{' too. Still indented inside the collection, the items go on."""
    with pytest.raises(config.ConfigError) as e:
        config.loads(text, "f.yaml", env={})
    assert str(e.value) == message


def test_a_detector_override_that_is_not_a_mapping_names_its_sensor():
    """Review 18: "expected the a settings" for sensor a, and the last part only of a dotted id."""
    head = "gateway: {id: g}\nsensors: [{id: a, driver: coap, options: {uri: 'coap://h', resources: [{path: /x}]}}]\n"
    for sid, col in (("a", 8), ("a.b", 10)):
        with pytest.raises(config.ConfigError) as e:
            config.loads(head + f"detector:\n  sensors:\n    {sid}: 5\n", "f.yaml", env={})
        assert str(e.value).startswith(f"f.yaml:5:{col}: detector.sensors.{sid}: expected the detector settings for "
                                       f"'{sid}' as a mapping (key: value lines), got an integer '5'")
