"""``--help`` reads as plain text: no reST markup from the module docstrings, and every argument explained."""

from __future__ import annotations

import argparse
import re

import pytest
from ops_support import cli

from edge_gateway import cli as eg_cli
from edge_gateway.cli import HelpParser
from edge_gateway.cmd_common import doc_part, plain_text

MARKUP = re.compile(r"``|:(?:func|class|mod|meth|attr|data|exc|obj|ref|doc|py:[a-z]+):|`[^`\n]*`")
# arguments without a help string: none left, and none to come
UNEXPLAINED: set[tuple[str, ...]] = set()
KEY_HELP = ("dotted path of the value, list items by index or id, e.g. gateway.id, sensors[0].options.port or "
            "sensors.air-1.options.port (an id with a dot: sensors[\"aq.1\"])")


def _subcommands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    """(words, parser) of every subcommand under ``parser``, nested ones (config validate) included."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield (*path, name), sub
                yield from _subcommands(sub, (*path, name))


def _flat(text: str) -> str:
    return " ".join(text.split())


ALL = list(_subcommands(eg_cli.build_parser()))


def test_every_module_contributes_its_subcommands():
    names = {words[0] for words, _ in ALL}
    assert names == set(eg_cli._COMMANDS), names
    assert {("config", "validate"), ("config", "get"), ("config", "set")} <= {words for words, _ in ALL}


@pytest.mark.parametrize("words", [w for w, _ in ALL], ids=" ".join)
def test_help_of_every_subcommand_has_no_rest_markup(words):
    parser = dict(ALL)[words]
    text = parser.format_help()
    assert text.startswith(f"usage: edge-gateway {' '.join(words)} "), text
    assert not MARKUP.search(text), (words, MARKUP.search(text).group(0), text)
    for action in parser._actions:  # and every argument says what it is
        if not isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
            assert action.help or (*words, action.dest) in UNEXPLAINED, (words, action.dest)


def test_top_level_help_has_no_rest_markup():
    text = eg_cli.build_parser().format_help()
    assert not MARKUP.search(text), text


@pytest.mark.parametrize("command", ["probe", "status", "tail", "record", "replay", "doctor"])
def test_help_as_printed_by_the_cli_is_plain(command):
    """The commands the walkthrough saw with raw ``quotes``, :func: roles and `backticks`, through the real CLI."""
    r = cli(command, "--help", timeout=30)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    assert r.stdout.startswith(f"usage: edge-gateway {command} ")
    assert not MARKUP.search(r.stdout), (MARKUP.search(r.stdout).group(0), r.stdout)


def test_help_keeps_the_words_the_markup_quoted():
    probe = _flat(cli("probe", "--help", timeout=30).stdout)
    assert ("unless --baud) the port is opened 8N1 and listened to for --listen seconds; the bytes are tried "
            "against our decoders: PMS5003 frames (drivers.pms5003), text lines in kv, json or csv "
            "(drivers.serial_line.LineDecoder).") in probe
    assert "130 Ctrl-C (after the summary so far)" in probe
    tail = _flat(cli("tail", "--help", timeout=30).stdout)
    assert "One line per reading (TIME SENSOR CHANNEL VALUE UNIT" in tail  # a literal across a docstring line break
    record = _flat(cli("record", "--help", timeout=30).stdout)
    assert "so a laptop gateway, or edge-gateway probe, can read exactly what the device sent." in record
    assert "--baud BAUD speed (default 9600; edge-gateway probe finds it)" in record


@pytest.mark.parametrize("name", ["serial-line", "pms5003", "city"])
def test_simulator_help_is_plain(name):
    import subprocess
    import sys

    from support import REPO

    r = subprocess.run([sys.executable, "-m", "simulators.cli", name, "--help"], cwd=REPO, text=True,
                       capture_output=True, timeout=30)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"usage: edge-gateway-sim {name} ")
    assert not MARKUP.search(r.stdout), (MARKUP.search(r.stdout).group(0), r.stdout)
    if name == "pms5003":
        assert "--corrupt-every N flips one data bit" in _flat(r.stdout)


SIM_MODULES = ["pms5003", "serial_line", "city", "coap_node", "modbus_slave"]


@pytest.mark.parametrize("module", SIM_MODULES)
def test_simulator_module_help_run_directly_is_plain(module):
    """``python -m simulators.NAME --help``, not through edge-gateway-sim (which strips markup itself):
    the module's own parser gives plain text, and every argument is explained."""
    import subprocess
    import sys

    from support import REPO

    r = subprocess.run([sys.executable, "-m", f"simulators.{module}", "--help"], cwd=REPO, text=True,
                       capture_output=True, timeout=60)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    prog = {"serial_line": "edge-gateway-sim serial-line", "coap_node": "python -m simulators.coap_node",
            "modbus_slave": "python -m simulators.modbus_slave"}.get(module, f"edge-gateway-sim {module}")
    assert r.stdout.startswith(f"usage: {prog} [-h]"), r.stdout
    assert not MARKUP.search(r.stdout), (MARKUP.search(r.stdout).group(0), r.stdout)
    text = _flat(r.stdout)
    said = {
        "pms5003": ["--corrupt-every N flips one data bit in every Nth frame so the checksum fails",
                    "removing the --link.",
                    "--seed SEED seed of the values (the same seed, the same frames)",
                    "--corrupt-every N flip one data bit in every Nth frame, so its checksum fails (0: never)"],
        "serial_line": ["Writes pm25=12.5,pm10=20.1,noise_db=48.2 lines (or CSV, or JSON lines)",
                        "Values are written with repr (shortest exact text)",
                        "--seed SEED seed of the values (the same seed, the same lines)",
                        "--format {kv,csv,json} kv: pm25=12.5,pm10=20.1,...; csv: the values alone, "
                        "pm25,pm10,noise_db (ts first with --timestamps); json: one object a line (default kv)"],
        "city": ["edge-gateway-sim city SCENARIO.yaml: every sensor of a city block, from one scenario.",
                 "Serial sensors (line, pms5003) and Modbus buses",
                 "Standard output, one line each, fields separated by single spaces: t0 1700000000.0",
                 "--coap-host COAP_HOST address the CoAP nodes listen on (default 127.0.0.1)"],
        "coap_node": ["replaces them and notifies observers (or, with notify=False, plays",
                      "Not a program of its own: edge-gateway-sim city SCENARIO.yaml runs CoAP nodes "
                      "(the scenario's coap sensors)."],
        "modbus_slave": ["the driver's response decoder (drivers/modbus_frames.py) hunts for responses",
                         "RegisterBank.set_value saturates a value",
                         "Not a program of its own: edge-gateway-sim city SCENARIO.yaml runs Modbus slaves "
                         "(the scenario's modbus sensors)."],
    }[module]
    for words in said:
        assert words in text, (words, text)
    if module == "city":  # its raw layout is kept: the example output stays one line each
        assert "\n    t0 1700000000.0\n    truth RUN_DIR/ground_truth.jsonl\n" in r.stdout
    lines = r.stdout.splitlines() + [""]
    for i, line in enumerate(lines):  # every option has its help, beside it or (a long one) on the next line
        m = re.fullmatch(r"  (-\S+(?: \S+)?)(?:  +(.*))?", line)
        if m and not m.group(2):
            assert lines[i + 1].startswith(" " * 10) and lines[i + 1].strip(), (module, line)


@pytest.mark.parametrize("module", ["coap_node", "modbus_slave"])
def test_a_library_simulator_run_without_help_says_how_it_is_run(module):
    import subprocess
    import sys

    from support import REPO

    r = subprocess.run([sys.executable, "-m", f"simulators.{module}"], cwd=REPO, text=True,
                       capture_output=True, timeout=60)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr == (f"usage: python -m simulators.{module} [-h]\n"
                        f"python -m simulators.{module}: error: no command line of its own; "
                        "run edge-gateway-sim city SCENARIO.yaml\n")


def test_offline_arguments_are_explained():
    subs = dict(ALL)
    analyze = {a.dest: a.help for a in subs[("analyze",)]._actions}
    assert analyze["out_dir"] == ("folder for the results: one CSV (timestamp,value,anomaly_score) per input, "
                                  "named as the input (below a folder PATH: at its path inside it)")
    evaluate = {a.dest: a.help for a in subs[("evaluate",)]._actions}
    assert evaluate["data_dir"] == ("folder of the labelled CSV files (NAB's data/): the windows file names them "
                                    "relative to it")
    assert evaluate["windows"] == ("anomaly windows per file, as NAB's labels/combined_windows.json: "
                                   '{"dir/file.csv": [["start", "end"], ...], ...}')
    text = _flat(cli("evaluate", "--help", timeout=30).stdout)
    assert ("positional arguments: DATA_DIR folder of the labelled CSV files (NAB's data/): the windows file "
            "names them relative to it WINDOWS.json anomaly windows per file") in text
    assert "--out-dir DIR folder for the results" in _flat(cli("analyze", "--help", timeout=30).stdout)


def test_config_arguments_are_explained():
    subs = dict(ALL)

    def helps(*words):
        return {a.dest: a.help for a in subs[words]._actions if not isinstance(a, argparse._HelpAction)}

    assert helps("config", "validate") == {"file": "the config file to check, e.g. /etc/edge-gateway/gateway.yaml"}
    get = helps("config", "get")
    assert (get["file"], get["key"]) == ("the config file to read", KEY_HELP)
    put = helps("config", "set")
    assert put["file"] == "the config file to change (written only if the result is valid)"
    assert put["key"] == KEY_HELP + "; missing mapping keys are created"
    assert put["value"] == ("the new value, read as YAML: 9600 is a number, true a boolean, [a, b] a list; "
                            "where the file holds a string it stays one (--string forces a string)")
    for action in ("validate", "get", "set"):
        r = cli("config", action, "--help", timeout=30)
        assert r.returncode == 0, r.stderr
        text = _flat(r.stdout)
        assert "positional arguments: FILE " in text
        for dest, help_text in helps("config", action).items():
            if dest in ("file", "key", "value"):
                assert f"{dest.upper()} {help_text}" in text, (action, text)
    assert "usage: edge-gateway config set [-h] [--string] [--dry-run] [--full] FILE KEY VALUE" in _flat(r.stdout)


def test_plain_text_and_doc_part():
    assert plain_text("``--baud`` and :func:`drivers.x` or :class:`~a.B` and `edge-gateway probe`") == (
        "--baud and drivers.x or a.B and edge-gateway probe")
    assert plain_text("one ``TIME\nSENSOR`` two") == "one TIME\nSENSOR two"
    assert plain_text("Capture format::\n\n    {}") == "Capture format:\n\n    {}"
    assert plain_text("it's `a`, don't") == "it's a, don't"
    assert plain_text("see `the manual`_ and `x`__.") == "see the manual and x."
    doc = "Title.\n\nUses ``x`` and :mod:`y`.\n\nLast."
    assert [doc_part(doc, i) for i in range(4)] == ["Title.", "Uses x and y.", "Last.", ""]
    assert doc_part(None, 1) == ""


def test_help_parser_keeps_a_raw_formatter_plain():
    """A subcommand asking for RawDescriptionHelpFormatter (doctor's list of checks) keeps its layout, not its quotes."""
    parser = HelpParser(prog="x", description="* ``a``: one\n* :func:`b`: two",
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", help="see `edge-gateway probe`")
    text = parser.format_help()
    assert "* a: one\n* b: two\n" in text and "--n N       see edge-gateway probe" in text, text
    sub = parser.add_subparsers().add_parser("s", description="``s``")
    assert isinstance(sub, HelpParser) and "\ns\n" in sub.format_help()
