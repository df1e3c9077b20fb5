"""``config set`` changes only the line(s) of the key it was asked to change (review 13, A2, A3, A6, A7).

A technician checks an edit with ``diff old new``; any other byte that moves (a re-wrapped flow map, a
comment that now sits under another item, LF for CRLF, a lost ``...``) hides the real change. The
tests call ``set_value`` in-process (a CLI subprocess costs a second) and compare whole files.
"""

from __future__ import annotations

import argparse
import tempfile
import textwrap
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from edge_gateway import config
from edge_gateway.cmd_config import set_value
from support import REPO

SITE = textwrap.dedent("""\
    # header comment
    gateway:
      id: gw-1            # the cabinet id
      state_dir: state    # state
      # comment before batch
      batch_interval_s: 0.2
    broker:
      port: 1883  # default port
      host: 'localhost'   # quoted
      # trailing comment in broker

    sensors:
      # first sensor
      - id: a
        driver: pms5003
        options:
          port: /dev/ttyUSB0   # the adapter
      # second sensor
      - id: b
        driver: pms5003
        options: {port: /dev/ttyUSB1}
    # end comment
    """)


def config_set(path: Path, key: str, value: str) -> int:
    return set_value(argparse.Namespace(file=str(path), key=key, value=value, string=False, dry_run=False))


def site(tmp_path: Path, text: str = SITE, newline: str = "\n") -> Path:
    path = tmp_path / "gw.yaml"
    path.write_bytes(text.replace("\n", newline).encode())
    return path


def replace_once(text: str, old: str, new: str) -> str:
    assert text.count(old) == 1, old
    return text.replace(old, new)


def test_a2_demo_config_keeps_its_multi_line_flow_maps(tmp_path):
    demo = (REPO / "configs" / "demo.yaml").read_text()
    path = site(tmp_path, demo)
    assert config_set(path, "broker.keepalive_s", "20") == 0
    assert path.read_text() == replace_once(demo, "  keepalive_s: 10\n", "  keepalive_s: 20\n")
    assert config_set(path, "detector.params.drop_k", "4") == 0  # inside a flow map wrapped over two lines
    demo = replace_once(demo, "  keepalive_s: 10\n", "  keepalive_s: 20\n")
    demo = replace_once(demo, "{flat_min_run: 20, drop_k: 3,", "{flat_min_run: 20, drop_k: 4,")
    assert path.read_text() == demo
    assert config_set(path, "detector.params.nov_hold", "50") == 0  # a new key at the end of that flow map
    demo = replace_once(demo, "           nov_shift_floor: 0}\n", "           nov_shift_floor: 0, nov_hold: 50}\n")
    assert path.read_text() == demo
    assert config.load(path).detector.params["nov_hold"] == 50


def test_a3_a_new_key_goes_below_the_last_item_and_above_the_comments_that_follow_it(tmp_path):
    path = site(tmp_path)
    assert config_set(path, "sensors[0].options.baudrate", "19200") == 0
    expected = replace_once(SITE, "/dev/ttyUSB0   # the adapter\n",
                            "/dev/ttyUSB0   # the adapter\n      baudrate: 19200\n")
    assert path.read_text() == expected
    assert config_set(path, "broker.keepalive_s", "15") == 0
    expected = replace_once(expected, "  host: 'localhost'   # quoted\n",
                            "  host: 'localhost'   # quoted\n  keepalive_s: 15\n")
    assert path.read_text() == expected
    assert config_set(path, "sensors.b.options.baudrate", "2400") == 0
    expected = replace_once(expected, "{port: /dev/ttyUSB1}", "{port: /dev/ttyUSB1, baudrate: 2400}")
    assert path.read_text() == expected
    assert config_set(path, "metrics.prometheus_port", "9108") == 0
    expected = replace_once(expected, "baudrate: 2400}\n# end comment\n",
                            "baudrate: 2400}\nmetrics:\n  prometheus_port: 9108\n# end comment\n")
    assert path.read_text() == expected
    cfg = config.load(path)
    assert (cfg.sensors[0].options.baudrate, cfg.sensors[1].options.baudrate) == (19200, 2400)
    assert (cfg.broker.keepalive_s, cfg.metrics.prometheus_port) == (15, 9108)


def test_a_key_added_to_a_comment_only_section_becomes_its_first_line(tmp_path):
    text = SITE.replace("# end comment\n", "metrics:\n  # to be set on site\n# end comment\n")
    path = site(tmp_path, text)
    assert config_set(path, "metrics.prometheus_port", "9108") == 0
    assert path.read_text() == replace_once(text, "metrics:\n", "metrics:\n  prometheus_port: 9108\n")


def test_a6_crlf_stays_crlf_on_every_line(tmp_path):
    path = site(tmp_path, newline="\r\n")
    before = path.read_bytes()
    assert config_set(path, "broker.port", "1900") == 0
    after = replace_once(before.decode(), "port: 1883  # default port\r\n", "port: 1900  # default port\r\n")
    assert path.read_bytes() == after.encode()
    assert config_set(path, "broker.keepalive_s", "15") == 0  # an added line ends in CRLF too
    after = replace_once(after, "# quoted\r\n", "# quoted\r\n  keepalive_s: 15\r\n")
    assert path.read_bytes() == after.encode()
    assert config.load(path).broker.port == 1900


def test_a6_document_markers_and_directive_are_kept(tmp_path):
    path = site(tmp_path, "%YAML 1.1\n---\n# c\ngateway:\n  id: x\n...\n")
    assert config_set(path, "gateway.id", "y") == 0
    assert path.read_bytes() == b"%YAML 1.1\n---\n# c\ngateway:\n  id: y\n...\n"
    assert config_set(path, "gateway.topic_prefix", "site") == 0
    assert path.read_bytes() == b"%YAML 1.1\n---\n# c\ngateway:\n  id: y\n  topic_prefix: site\n...\n"


def test_a7_exponent_numbers_are_written_as_the_loader_reads_numbers(tmp_path):
    path = site(tmp_path, SITE + "windows:\n  seconds: 10\n")
    assert config_set(path, "windows.seconds", "1e20") == 0
    assert config_set(path, "gateway.batch_interval_s", "1e-6") == 0
    expected = replace_once(SITE, "batch_interval_s: 0.2\n", "batch_interval_s: 1.0e-06\n")
    assert path.read_text() == expected + "windows:\n  seconds: 1.0e+20\n"
    cfg = config.load(path)
    assert (cfg.windows.seconds, cfg.gateway.batch_interval_s) == (1e20, 1e-6)


def test_strings_that_would_read_as_another_type_are_quoted(tmp_path):
    path = site(tmp_path)
    assert config_set(path, "gateway.id", "yes") == 0  # a string in the file stays a string
    assert config_set(path, "broker.host", "1e3") == 0  # single-quoted before: stays single-quoted
    assert config_set(path, "sensors.a.options.port", "12:30") == 0  # YAML 1.1 reads 12:30 as 750
    expected = replace_once(SITE, "id: gw-1", "id: 'yes'")
    expected = replace_once(expected, "host: 'localhost'", "host: '1e3'")
    expected = replace_once(expected, "port: /dev/ttyUSB0", "port: '12:30'")
    assert path.read_text() == expected
    cfg = config.load(path)
    assert (cfg.gateway.id, cfg.broker.host, cfg.sensors[0].options.port) == ("yes", "1e3", "12:30")


def test_a_value_behind_an_alias_falls_back_to_the_round_trip_dump_and_says_so(tmp_path, capsys):
    path = site(tmp_path, "gateway:\n  id: gw-1\nbroker:\n  keepalive_s: &k 10\n  max_inflight: *k\n")
    assert config_set(path, "broker.keepalive_s", "20") == 0
    assert "the whole file was re-written" in capsys.readouterr().err
    cfg = config.load(path)
    assert (cfg.broker.keepalive_s, cfg.broker.max_inflight) == (20, 10)


# --- property: one key set, one line changed, the value read back ------------------------------

_ID = st.from_regex(r"[A-Za-z0-9_.-]{1,12}", fullmatch=True)
# no "$" (the loader expands ${NAME}) and no MQTT wildcards (refused in a topic prefix)
_TEXT = st.text(st.characters(blacklist_categories=("Cs", "Cc", "Cn"), blacklist_characters="+#$/"), min_size=1,
                max_size=12)
_FLOAT_FORMS = ("{!r}", "{:e}", "{:g}", "{:.3E}")


@st.composite
def float_raw(draw, min_value: float) -> tuple[str, float]:
    """A number as a technician may type it, exponent forms included (``1e-06``, ``1.000E+20``)."""
    x = draw(st.floats(min_value=min_value, max_value=1e300, allow_nan=False, allow_infinity=False))
    raw = draw(st.sampled_from(_FLOAT_FORMS)).format(x)
    return raw, float(raw)


# (section, key, how to draw a new raw VALUE and the value the loader must return)
KEYS = {
    ("gateway", "id"): _ID.map(lambda s: (s, s)),
    ("gateway", "topic_prefix"): _TEXT.map(lambda s: (s, s)),
    ("gateway", "batch_interval_s"): float_raw(1e-300),  # must be positive
    ("gateway", "status_interval_s"): float_raw(0.0),
    ("broker", "port"): st.integers(1, 65535).map(lambda n: (str(n), n)),
    ("broker", "keepalive_s"): st.integers(1, 65535).map(lambda n: (str(n), n)),
    ("windows", "grace_s"): float_raw(-1e300),
}
START = {"id": "gw-1", "topic_prefix": "city", "batch_interval_s": "0.2", "status_interval_s": "60",
         "port": "1883", "keepalive_s": "30", "grace_s": "2.0"}


@st.composite
def site_and_edit(draw):
    lines, where = [], {}
    comment = st.sampled_from(["", "  # note", "   # a: b, {c}"])
    for section in ("gateway", "broker", "windows"):
        if draw(st.booleans()):
            lines.append(f"# about {section}")
        lines.append(f"{section}:")
        for sec, key in KEYS:
            if sec != section:
                continue
            if draw(st.booleans()):
                lines.append("  # the next key")
            quote = draw(st.sampled_from(["", "'", '"'])) if key == "topic_prefix" else ""
            where[(sec, key)] = len(lines)
            lines.append(f"  {key}: {quote}{START[key]}{quote}{draw(comment)}")
        if draw(st.booleans()):
            lines.append("")
    key = draw(st.sampled_from(sorted(KEYS)))
    raw, value = draw(KEYS[key])
    newline = draw(st.sampled_from(["\n", "\r\n"]))
    return "".join(line + newline for line in lines), key, where[key], raw, value


@settings(max_examples=20, deadline=None)
@given(site_and_edit())
def test_setting_one_key_changes_one_line_and_reads_back(case):
    text, (section, key), line_no, raw, value = case
    with tempfile.TemporaryDirectory() as tmp:
        path = site(Path(tmp), text, "\n")
        assert config_set(path, f"{section}.{key}", raw) == 0
        before, after = text.encode().splitlines(True), path.read_bytes().splitlines(True)
        assert len(after) == len(before)
        changed = [i for i, (a, b) in enumerate(zip(before, after)) if a != b]
        assert changed in ([line_no], []), (before, after)
        assert after[line_no].endswith(b"\r\n" if text.endswith("\r\n") else b"\n")
        got = getattr(getattr(config.load(path), section), key)
        assert got == value and type(got) is type(value), (raw, got)


_PART = st.text(st.characters(blacklist_characters='[]"', blacklist_categories=("Cs",)), min_size=1, max_size=8)


@given(st.lists(st.one_of(_PART, st.integers(0, 999)), min_size=1, max_size=6))
def test_a_key_written_part_by_part_splits_back_into_its_parts(parts):
    """``key_part`` quotes a part with a dot; ``split_key`` reads every part back, indices as ints (a part of
    digits alone reads as a name, not an index: only ``[n]`` is one)."""
    from edge_gateway.config_keys import key_part, split_key

    key = "".join(f"[{p}]" if isinstance(p, int) else key_part(p) for p in parts).removeprefix(".")
    assert split_key(key) == parts
