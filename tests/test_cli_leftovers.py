"""Leftovers of the s20 CLI walkthrough (its items 2 and 9): ``config options SECTION``, an unclosed ``[``/``{``
in plain words, ``analyze``/``evaluate`` telling an unreadable file from a refused one, the no-effect warning
for a config's detector params, and the wording of three refused params.

In-process through :func:`edge_gateway.cli.main`: a traceback fails the test by itself, and ``capsys`` holds
the exact lines.
"""

from __future__ import annotations

import textwrap

import pytest

from edge_gateway import config, nab
from edge_gateway.cli import main


def run(capsys, *argv) -> tuple[int, str, str]:
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


# --- config options SECTION ---------------------------------------------------------------------------


def test_options_of_a_section_lists_its_keys_with_type_default_meaning_and_restart(capsys):
    rc, out, err = run(capsys, "config", "options", "windows")
    assert (rc, err) == (0, "")
    assert out == textwrap.dedent("""\
        windows: The windows each channel's readings are aggregated in (docs/windows.md).
        keys (under windows: in the config):
          seconds             number, default 60.0, needs a restart
              the length of a window.
          grace_s             number, default 2.0, needs a restart
              an idle channel's window closes seconds + grace_s after its last reading.
          future_tolerance_s  number, default 600.0, needs a restart
              readings stamped further ahead of the gateway clock are dropped
          hop_s               number or null, default null, needs a restart
              below seconds, hopping windows: a window of seconds starts every hop_s (at least seconds /
              60); left out, or equal to seconds, tumbling windows.
        """)


def test_a_nested_section_goes_by_its_own_name_and_each_key_takes_its_comment(capsys):
    rc, out, _ = run(capsys, "config", "options", "filters")
    lines = out.splitlines()
    assert rc == 0 and lines[:2] == [
        "sensors[].filters: Conditioning of one sensor's values (edge_gateway/conditioning.py); everything off by "
        "default.",
        "keys (under filters: in each item of sensors:):"]
    assert lines[2:4] == ["  despike_window  integer, default 0",
                          "      readings of rolling median/MAD (Hampel; 0: off) that a reading is compared with."]
    rc, out, _ = run(capsys, "config", "options", "gateway")
    lines = out.splitlines()
    i = lines.index("  status_interval_s  number, default 60.0")  # live on reload: no restart note
    assert lines[i + 1] == "      retained status message on MQTT; 0 = only birth/will"  # the field's comment
    assert "  id                 string, required, needs a restart" in lines
    rc, out, _ = run(capsys, "config", "options", "sensors")
    assert "keys (of each item of sensors:):" in out.splitlines()
    assert "  filters                 mapping, default {}" in out.splitlines()


def test_an_unknown_name_gets_a_did_you_mean_over_drivers_and_sections(capsys):
    rc, out, err = run(capsys, "config", "options", "windws")
    assert (rc, out) == (2, "")
    assert err == ("edge-gateway: unknown driver or section 'windws'; did you mean 'windows'? "
                   "(drivers: coap, modbus_rtu, pms5003, serial_line; "
                   "sections: gateway, broker, tls, sensors, filters, windows, detector, queue, metrics)\n")


def test_the_detector_section_lists_every_param_with_its_default_and_the_values_it_takes(capsys):
    """`config options windows` worked and `detector` named only `params`: a technician tuning a channel on a
    gateway had no list of the names, defaults or ranges without the source."""
    import dataclasses

    from edge_gateway.analytics.settings import DetectorSettings

    rc, out, err = run(capsys, "config", "options", "detector")
    assert (rc, err) == (0, "")
    head, params = out.split("params (under detector.params: or a detector.sensors entry's params:, any of):\n")
    assert "  threshold  number or null, default null" in head
    names = [ln.split()[0] for ln in params.splitlines() if not ln.startswith("      ")]
    assert names == [f.name for f in dataclasses.fields(DetectorSettings)]
    lines = params.splitlines()
    at = {ln.split()[0]: i for i, ln in enumerate(lines) if not ln.startswith("      ")}
    assert lines[at["ewma_alpha"]:at["ewma_alpha"] + 2] == [
        "  ewma_alpha         default 0.01",
        "      in (0, 1] (an EWMA's weight of the new reading: 0 never learns, above 1 overshoots)"]
    assert lines[at["range_hi"]:at["range_hi"] + 2] == ["  range_hi           default .inf",
                                                         "      any number; -.inf / .inf: no limit"]
    assert lines[at["weights"]] == ("  weights            default [0 (ewma), 0 (robust), 0 (rate), 0 (cusum), "
                                    "1 (range), 0 (flatline), 0 (dropout), 1 (novelty)]")
    assert lines[at["guard_level"] + 1] == "      positive; above 1 (or .inf) guards open no events"


def test_a_section_in_markdown(capsys):
    rc, out, _ = run(capsys, "config", "options", "metrics", "--markdown")
    assert rc == 0 and out == (
        "## metrics\n\nOptional Prometheus text endpoint on 127.0.0.1 (same figures as `edge-gateway status`).\n\n"
        "| key | type | default | description |\n|---|---|---|---|\n"
        "| `prometheus_port` | integer | `0` | 0 = off (needs a restart) |\n")


# --- an unclosed [ or { ------------------------------------------------------------------------------


@pytest.mark.parametrize("text, message", [
    ("a: [\n", "b.yaml:1:4: not valid YAML: the '[' at line 1, column 4 is never closed: end the list with ']' "
               "(YAML parser: expected the node content, but found '<stream end>')"),
    ("a: {\n", "b.yaml:1:4: not valid YAML: the '{' at line 1, column 4 is never closed: end the mapping with '}' "
               "(YAML parser: expected the node content, but found '<stream end>')"),
    ("gateway: {id: g}\nsensors: [\n  {id: a, driver: coap},\n",
     "b.yaml:2:10: not valid YAML: the '[' at line 2, column 10 is never closed: end the list with ']' "
     "(YAML parser: expected the node content, but found '<stream end>')"),
    ("gateway:\n  id: x\nsensors: [\nbroker:\n  host: h\n",  # the next key arrives; the parser stumbles on line 5
     "b.yaml:3:10: not valid YAML: the '[' at line 3, column 10 is never closed: end the list with ']' "
     "(YAML parser: expected ',' or ']', but got ':')"),
    ("gateway:\n  id: x\nsensors: {\nbroker:\n  host: h\n",
     "b.yaml:3:10: not valid YAML: the '{' at line 3, column 10 is never closed: end the mapping with '}' "
     "(YAML parser: expected ',' or '}', but got ':')"),
    ("a: [1, }\n", "b.yaml:1:8: not valid YAML: line 1, column 8: '}' cannot close the '[' at line 1, column 4: "
                   "end the list with ']' (YAML parser: expected the node content, but found '}')"),
])
def test_an_unclosed_bracket_says_where_it_was_opened(tmp_path, capsys, text, message):
    (tmp_path / "b.yaml").write_text(text)
    with pytest.raises(config.ConfigError) as e:
        config.load(tmp_path / "b.yaml")
    assert str(e.value) == f"{tmp_path}/{message}"


def test_validate_prints_the_unclosed_bracket(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "b.yaml").write_text("a: [\n")
    assert run(capsys, "config", "validate", "b.yaml") == (2, "", (
        "edge-gateway: b.yaml:1:4: not valid YAML: the '[' at line 1, column 4 is never closed: end the list "
        "with ']' (YAML parser: expected the node content, but found '<stream end>')\n"))


# --- analyze / evaluate: not readable, or refused -------------------------------------------------------


def _csv(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("timestamp,value\n" + "".join(f"{1700000000 + 10 * i},{v}\n" for i, v in enumerate(rows)))
    return path


@pytest.fixture
def unreadable(monkeypatch):
    """Opening a file named ``locked.csv`` fails as a file without read permission does (tests run as root)."""
    def fake_open(path, *args, **kwargs):
        if str(path).endswith("locked.csv"):
            raise PermissionError(13, "Permission denied", str(path))
        return open(path, *args, **kwargs)

    monkeypatch.setattr(nab, "open", fake_open, raising=False)


def test_analyze_tells_a_refused_file_from_an_unreadable_one(tmp_path, capsys, monkeypatch, unreadable):
    monkeypatch.chdir(tmp_path)
    _csv(tmp_path / "d" / "abc.csv", [1, "abc"])
    _csv(tmp_path / "d" / "good.csv", [1, 2])
    (tmp_path / "d" / "ms.csv").write_text("timestamp,value\n1700000000000,1\n")
    assert run(capsys, "analyze", "d/ms.csv", "--out-dir", "o") == (1, "", (
        "edge-gateway analyze: d/ms.csv, row 2: timestamp 1700000000000 is too large for epoch seconds (above 1e11, "
        "the year 5138): it looks like epoch milliseconds; give epoch seconds (milliseconds divided by 1000) or "
        "YYYY-MM-DD hh:mm:ss\n"
        "edge-gateway analyze: 1 of 1 file(s) refused; nothing written\n"))
    _csv(tmp_path / "d" / "locked.csv", [1, 2])
    assert run(capsys, "analyze", "d/locked.csv", "--out-dir", "o") == (1, "", (
        "edge-gateway analyze: cannot read d/locked.csv: Permission denied\n"
        "edge-gateway analyze: 1 of 1 file(s) not readable; nothing written\n"))
    rc, out, err = run(capsys, "analyze", "d", "--out-dir", "o")
    assert (rc, out) == (1, "") and err.splitlines()[-1] == (
        "edge-gateway analyze: 2 of 4 file(s) refused and 1 not readable; nothing written")
    assert not (tmp_path / "o").exists()


def test_evaluate_reports_every_bad_data_file_and_says_how_it_failed(tmp_path, capsys, monkeypatch, unreadable):
    monkeypatch.chdir(tmp_path)
    _csv(tmp_path / "data" / "c" / "abc.csv", [1, "abc"])
    _csv(tmp_path / "data" / "c" / "locked.csv", [1, 2])
    (tmp_path / "w.json").write_text('{"c/abc.csv": [], "c/locked.csv": []}')
    assert run(capsys, "evaluate", "data", "w.json") == (1, "", (
        "edge-gateway evaluate: data/c/abc.csv, row 3: value 'abc' is not a number\n"
        "edge-gateway evaluate: cannot read data/c/locked.csv: Permission denied\n"
        "edge-gateway evaluate: 1 of 2 file(s) refused and 1 not readable; nothing scored\n"))


# --- no-effect warnings for a config's detector params ---------------------------------------------------

CONFIG = """\
gateway: {id: gw-1, state_dir: st}
sensors:
  - {id: air-1, driver: serial_line, options: {port: /dev/null}}
  - {id: air-2, driver: serial_line, options: {port: /dev/null}}
detector:
  params: {flat_min_run: 20, cusum_k: 1, nov_hold: 50, event_close_after: 9}
  sensors:
    air-1:
      params: {cusum_h: 3}
    air-2/pm25:
      params: {weights: [1, 0, 0, 0, 1, 0, 0, 1]}
    air-2:
      params: {ewma_alpha: 0.5, guard_level: 2, drop_k: 4}
"""


def test_validate_warns_about_params_that_change_nothing(tmp_path, capsys, monkeypatch):
    """cusum weighs 0 everywhere: cusum_k and cusum_h do nothing; ewma_alpha does on air-2/pm25 (ewma weighs 1
    there); flat_min_run does through the flatline guard's events; drop_k does not on air-2, whose guard_level
    2 lets no guard open an event, and the event settings open and close events."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "an.yaml").write_text(CONFIG)
    assert run(capsys, "config", "validate", "an.yaml") == (0, "an.yaml: valid (2 sensors, gateway gw-1)\n", (
        "edge-gateway: an.yaml:6:39: detector.params.cusum_k: warning: has no effect on any channel it applies "
        "to: the cusum detector has weight 0\n"
        "edge-gateway: an.yaml:9:25: detector.sensors.air-1.params.cusum_h: warning: has no effect on any channel "
        "it applies to: the cusum detector has weight 0\n"
        "edge-gateway: an.yaml:13:57: detector.sensors.air-2.params.drop_k: warning: has no effect on any channel "
        "it applies to: the dropout detector has weight 0, and guard_level 2 (above 1) lets it open no events\n"))


def test_analyze_and_evaluate_give_the_same_warning_for_the_config_params_they_use(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "an.yaml").write_text(CONFIG)
    _csv(tmp_path / "s.csv", [1.0 + i % 3 for i in range(600)])
    rc, _, err = run(capsys, "analyze", "s.csv", "--out-dir", "o", "--config", "an.yaml", "--sensor", "air-1/pm25",
                     "--set", "cusum_h=7")
    assert rc == 0 and err == (
        "settings: an.yaml: the detector section, then detector.sensors.air-1 (event threshold 0.25)\n"
        "edge-gateway analyze: warning: --set cusum_h has no effect on anomaly_score (the cusum detector has "
        "weight 0)\n"
        "edge-gateway analyze: an.yaml:6:39: detector.params.cusum_k: warning: has no effect on anomaly_score "
        "(the cusum detector has weight 0)\n"
        "edge-gateway analyze: an.yaml:9:25: detector.sensors.air-1.params.cusum_h: warning: has no effect on "
        "anomaly_score (the cusum detector has weight 0)\n")
    # scored with cusum alone, its settings count, and the novelty detector's do not
    rc, _, err = run(capsys, "analyze", "s.csv", "--out-dir", "o", "--config", "an.yaml", "--sensor", "air-1",
                     "--detector", "cusum")
    assert rc == 0 and err.splitlines()[1:] == [
        "edge-gateway analyze: an.yaml:6:52: detector.params.nov_hold: warning: has no effect on anomaly_score "
        "(the novelty detector has weight 0)"]
    (tmp_path / "data" / "c").mkdir(parents=True)
    (tmp_path / "data" / "c" / "s.csv").write_text((tmp_path / "s.csv").read_text())
    (tmp_path / "w.json").write_text('{"c/s.csv": []}')
    rc, _, err = run(capsys, "evaluate", "data", "w.json", "--config", "an.yaml", "--sensor", "air-1")
    assert rc == 0 and err.splitlines()[1:] == [
        "edge-gateway evaluate: an.yaml:6:39: detector.params.cusum_k: warning: has no effect on anomaly_score "
        "(the cusum detector has weight 0)",
        "edge-gateway evaluate: an.yaml:9:25: detector.sensors.air-1.params.cusum_h: warning: has no effect on "
        "anomaly_score (the cusum detector has weight 0)"]


# --- the wording of three refused params ----------------------------------------------------------------


@pytest.mark.parametrize("param, message", [
    ("ewma_alpha: 1.5", "detector.params.ewma_alpha: must be in (0, 1] (an EWMA's weight of the new reading: 0 "
                        "never learns, above 1 overshoots)"),
    ("weights: [1.5, 0, 0, 0, 1, 0, 0, 1]",
     "detector.params.weights: must be in [0, 1] (a score is weight x a detector's score in [0, 1], and the "
     "combined score must stay in [0, 1]); weights[0] (ewma) is 1.5"),
    ("nov_weights: [1, .inf, 0, 0, 0, 0]",
     "detector.params.nov_weights: expected finite numbers; nov_weights[1] (diff) is inf"),
    ("range_hi: .nan", "detector.params.range_hi: expected a number, or -.inf/.inf for no limit, got nan"),
])
def test_refused_params_say_why_and_name_the_entry(param, message):
    with pytest.raises(config.ConfigError) as e:
        config.loads(f"gateway: {{id: g}}\ndetector:\n  params: {{{param}}}\n", "p.yaml", env={})
    assert str(e.value) == f"p.yaml:3:12: {message}"


def test_a_warning_on_a_dotted_sensor_id_names_its_line_and_the_key_reads_back(tmp_path, capsys, monkeypatch):
    """A sensor id may hold a dot: the warning's key quotes it, so it is located in the file and `config get`
    reads the same key."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "d.yaml").write_text(
        "gateway: {id: gw-1, state_dir: st}\n"
        "sensors:\n"
        "  - {id: aq.1, driver: serial_line, options: {port: /dev/null}}\n"
        "detector:\n"
        "  sensors:\n"
        "    aq.1:\n"
        "      params: {cusum_h: 3}\n")
    assert run(capsys, "config", "validate", "d.yaml") == (0, "d.yaml: valid (1 sensor, gateway gw-1)\n", (
        'edge-gateway: d.yaml:7:25: detector.sensors["aq.1"].params.cusum_h: warning: has no effect on any channel '
        "it applies to: the cusum detector has weight 0\n"))
    assert run(capsys, "config", "get", "d.yaml", 'detector.sensors["aq.1"].params.cusum_h') == (0, "3\n", "")
    assert run(capsys, "config", "get", "d.yaml", 'sensors["aq.1"].options.port') == (0, "/dev/null\n", "")
