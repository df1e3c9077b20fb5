"""serial_line, field by field (review s19 drivers): a bad field costs itself, not the line's good values;
CR, LF and CRLF end a line; config mistakes that made every line malformed are refused at load;
``timestamp_unit`` reads millisecond times."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from drivers.serial_line import LineDecoder, LineOptions, SerialLineDriver
from edge_gateway import config

TS = 1_700_000_000.0


def decode(fmt: str, data: bytes, **kw) -> tuple[list, int, int]:
    d = LineDecoder(fmt, **kw)
    return d.feed(data), d.lines, d.malformed


# ---- a bad field costs itself

@pytest.mark.parametrize("fmt, line, samples, malformed", [
    # the four lines of partial_bad.py: each lost every value
    ("json", b'{"pm25": 12.5, "pm10": 20, "status": "ok"}', [("pm25", 12.5), ("pm10", 20.0)], 0),
    ("json", b'{"pm25": 12.5, "pm10": null}', [("pm25", 12.5)], 0),
    ("kv", b"pm25=12.5,pm10=20,", [("pm25", 12.5), ("pm10", 20.0)], 0),
    ("kv", b"pm25=12.5,pm10=ERR", [("pm25", 12.5)], 0),
    # one count per bad field, the good ones kept
    ("kv", b"pm25=12.5,a=1.2.3,b=1_0,c=1e999,d=,e=0x10", [("pm25", 12.5)], 5),
    ("kv", b"a=1,junk,b=2,c=3=4", [("a", 1.0), ("b", 2.0)], 2),
    ("kv", b"a=1,,b=2", [("a", 1.0), ("b", 2.0)], 1),  # only an empty field after the last delimiter is ignored
    ("kv", b"=5,a=1,\x00b=2", [("a", 1.0)], 2),  # no channel name, a control character in it
    ("json", b'{"pm25": 12.5, "a": [1], "b": {"c": 1}, "c": "12.5", "d": 1e999, "e": "", "": 3}', [("pm25", 12.5)], 6),
    ("json", b'{"a": 1, "b": {"c": 1, "c": 2}}', [("a", 1.0)], 1),  # a twice inside a bad value: that value
    # words are statuses, not readings: skipped, not counted
    ("kv", b"a=nan,b=inf,c=-inf,d=ok,e=N/A,f=warming up,g=2", [("g", 2.0)], 0),
    ("json", b'{"a": NaN, "b": -Infinity, "c": true, "d": false, "e": "warming up", "g": 2}', [("g", 2.0)], 0),
    # a name longer than edge_gateway.readings.MAX_NAME (128): it reaches terminals and labels (review 19)
    ("kv", b"a=1," + b"n" * 128 + b"=2," + b"m" * 129 + b"=3", [("a", 1.0), ("n" * 128, 2.0)], 1),
    ("json", b'{"a": 1, "' + b"m" * 129 + b'": 3}', [("a", 1.0)], 1),
    # nothing good
    ("kv", b"junk", [], 1),
    ("kv", b"status=ok", [], 0),
    ("json", b"[1, 2]", [], 1),
    ("json", b'{"pm25": 1', [], 1),
    ("json", b"{}", [], 0),
])
def test_a_bad_field_costs_itself(fmt, line, samples, malformed):
    out, lines, bad = decode(fmt, line + b"\n")
    assert out == ([[(k, v, None) for k, v in samples]] if samples else [])
    assert (lines, bad) == (1, malformed)


@pytest.mark.parametrize("line, samples, malformed", [
    (b"5,1,2,3", [("a", 1.0), ("b", 2.0), ("c", 3.0)], 0),
    (b"5,1,2,3,", [("a", 1.0), ("b", 2.0), ("c", 3.0)], 0),  # a delimiter after the last cell
    (b"5,1,x1,3", [("a", 1.0), ("c", 3.0)], 1),
    (b"5,1,,3", [("a", 1.0), ("c", 3.0)], 1),
    (b"5,1_0,ok,3", [("c", 3.0)], 1),
    (b"5,1,2", [], 1),  # a cell missing: which is which is unknown
    (b"5,1,2,3,4", [], 1),
    (b"5,1,2,", [("a", 1.0), ("b", 2.0)], 1),  # c is empty: the line has as many cells as columns
])
def test_csv_cells(line, samples, malformed):
    out, lines, bad = decode("csv", line + b"\n", columns=("ts", "a", "b", "c"), timestamp_field="ts")
    assert out == ([[(k, v, 5.0) for k, v in samples]] if samples else [])
    assert (lines, bad) == (1, malformed)


@pytest.mark.parametrize("fmt, line", [
    ("kv", b"a=1,b=2"),  # no time
    ("kv", b"ts=abc,a=1"),
    ("kv", b"ts=,a=1"),
    ("kv", b"ts=nan,a=1"),
    ("kv", b"ts=1e999,a=1"),
    ("kv", b"ts=x,a=ERR2,b=1.2.3,c=1"),  # one count for the line, whatever else is bad in it
    ("json", b'{"ts": "1700000000", "a": 1}'),
    ("json", b'{"ts": null, "a": 1}'),
    ("json", b'{"ts": true, "a": 1}'),
    ("json", b'{"ts": [1], "a": 1}'),
])
def test_a_line_without_a_valid_time_is_dropped_whole_and_counted_once(fmt, line):
    assert decode(fmt, line + b"\n", timestamp_field="ts") == ([], 1, 1)


def test_a_valid_time_dates_the_good_fields_of_a_partly_bad_line():
    out, _, bad = decode("kv", b"ts=1700000000.5,a=1,b=ERR2,c=3\n", timestamp_field="ts")
    assert out == [[("a", 1.0, 1700000000.5), ("c", 3.0, 1700000000.5)]] and bad == 1


@pytest.mark.parametrize("fmt, line", [
    ("kv", b"a=1,a=2"),
    ("kv", b"a=1,b=2,a=x"),  # a twice, one of them bad
    ("kv", b"a=1, a=2"),  # the same name once spaces are stripped
    ("json", b'{"a": 1, "a": 2}'),  # json.loads keeps the last one without a word
    ("json", b'{"a": 1, "b": 2, "a": "x"}'),
    ("json", b'{"ts": 5, "a": 1, "ts": 6}'),
])
def test_a_field_named_twice_drops_the_line_counted_once_in_every_format(fmt, line):
    assert decode(fmt, line + b"\n") == ([], 1, 1)
    assert decode(fmt, line + b"\n", timestamp_field="ts") == ([], 1, 1)


def test_parse_line_is_none_only_when_a_line_gives_nothing_and_something_is_bad():
    d = LineDecoder("kv")
    assert d.parse_line(b"a=1,b=ERR") == [("a", 1.0, None)]
    assert d.parse_line(b"a=1,b=1.2.3") == [("a", 1.0, None)]
    assert d.parse_line(b"status=ok") == []
    assert d.parse_line(b"junk") is None
    assert d.parse(b"a=1,b=1.2.3,c") == ([("a", 1.0, None)], 2)
    assert (d.lines, d.malformed) == (0, 0)  # parsing one line counts nothing


# ---- line ends

@pytest.mark.parametrize("chunks", [
    [b"a=1\rb=2\rc=3\r"],
    [b"a=1\r\nb=2\r\nc=3\r\n"],
    [b"a=1\nb=2\nc=3\n"],
    [b"a=1\rb=2\r\nc=3\n"],
    [b"a=1\r", b"\nb=2\r", b"\n", b"c=3\r", b"\n"],  # a CRLF cut between two reads
    [bytes([c]) for c in b"a=1\r\nb=2\r\nc=3\r\n"],
])
def test_cr_lf_and_crlf_end_a_line_and_a_crlf_is_one_end(chunks):
    d = LineDecoder("kv", max_line=8)
    out = [s for c in chunks for s in d.feed(c)]
    assert out == [[("a", 1.0, None)], [("b", 2.0, None)], [("c", 3.0, None)]]
    assert (d.lines, d.malformed, d._buf) == (3, 0, b"")


@pytest.mark.parametrize("chunks", [[b"a=123456\r\n"], [b"a=123456\r", b"\n"], [b"a=123456\r"], [b"a=123456\n"]])
def test_max_line_does_not_count_the_line_end(chunks):
    d = LineDecoder("kv", max_line=8)
    assert [s for c in chunks for s in d.feed(c)] == [[("a", 123456.0, None)]]
    assert (d.lines, d.malformed) == (1, 0)


@pytest.mark.parametrize("chunks", [[b"a=1234567\r\nb=2\r\n"], [b"a=1234567", b"\r", b"\nb=2\r\n"],
                                    [bytes([c]) for c in b"a=1234567\r\nb=2\r\n"]])
def test_a_line_one_byte_too_long_is_dropped_once(chunks):
    d = LineDecoder("kv", max_line=8)
    assert [s for c in chunks for s in d.feed(c)] == [[("b", 2.0, None)]]
    assert (d.lines, d.malformed) == (2, 1)


# ---- timestamp_unit

def test_millisecond_times_with_timestamp_unit_ms():
    out, _, bad = decode("json", b'{"ts": 1700000000123, "a": 1}\n', timestamp_field="ts", timestamp_unit="ms")
    assert out == [[("a", 1.0, 1700000000.123)]] and bad == 0
    out, _, bad = decode("csv", b"1700000000500,2\r\n", columns=("ts", "a"), timestamp_field="ts", timestamp_unit="ms")
    assert out == [[("a", 2.0, 1700000000.5)]] and bad == 0


def test_milliseconds_read_as_seconds_are_refused_and_said():
    d = LineDecoder("json", timestamp_field="ts")
    assert d.feed(b'{"ts": 1700000000123, "a": 1}\n{"ts": 100000000000, "a": 2}\n{"ts": 99999999999, "a": 3}\n') \
        == [[("a", 3.0, 99999999999.0)]]
    assert d.malformed == 2
    assert d.problem == "ts 100000000000 is not a time in s (past the year 5138): milliseconds? set timestamp_unit: ms"
    d = LineDecoder("kv", timestamp_field="t", timestamp_unit="ms")
    assert d.feed(b"t=1700000000123456,a=1\nt=1.5e20,a=2\n") == [] and d.malformed == 2
    assert d.problem == "t 150000000000000000000 is not a time in ms (past the year 5138)"
    d.feed(b"t=1700000000123456,a=1\n")
    assert d.problem == "t 1700000000123456 is not a time in ms (past the year 5138)"


def test_the_driver_shows_a_refused_time_as_its_last_error():
    out = []
    drv = SerialLineDriver("air-1", LineOptions(port="/dev/null", timestamp_field="ts"), out.append, clock=lambda: TS)
    drv.on_open()
    drv.on_bytes(b"ts=1700000000123,pm25=3\n", TS)
    assert out == [] and drv.stats.malformed == 1 and drv.stats.last_error_ts == TS
    assert drv.stats.last_error == ("ts 1700000000123 is not a time in s (past the year 5138): milliseconds? "
                                    "set timestamp_unit: ms")
    assert not drv.stats.last_error_link
    drv.on_bytes(b"ts=1700000000,pm25=3\r\nts=1700000001,pm25=4,pm10=1.2.3\r\n", TS + 1)
    assert [(r.channel, r.value, r.ts) for r in out] == [("pm25", 3.0, TS), ("pm25", 4.0, TS + 1)]
    assert (drv.stats.readings, drv.stats.malformed, drv.stats.last_error_ts) == (2, 2, TS)


def test_a_time_at_or_before_1970_is_refused_as_a_clock_not_set():
    out = []
    drv = SerialLineDriver("air-1", LineOptions(port="/dev/null", timestamp_field="ts"), out.append, clock=lambda: TS)
    drv.on_open()
    drv.on_bytes(b"ts=0,pm25=3\nts=-5,pm25=4\nts=1700000000,pm25=5\n", TS)
    assert [(r.value, r.ts) for r in out] == [(5.0, 1700000000.0)]
    assert drv.stats.malformed == 2
    assert drv.stats.last_error == "ts -5 is not a time in s (at or before 1970): the sensor's clock is not set"


# ---- config mistakes refused at load, where they are

BASE = "gateway:\n  id: gw-1\nsensors:\n  - id: air-1\n    driver: serial_line\n    options:\n      port: /dev/ttyUSB0\n"


@pytest.mark.parametrize("extra, message", [
    ("      format: csv\n      columns: [ts, pm25, pm25]\n",
     "gw.yaml:9:16: sensors[0].options.columns: 'pm25' is listed twice (each column is one channel)"),
    ("      format: csv\n      columns: [a, '', b]\n", "gw.yaml:9:16: sensors[0].options.columns: a column name is empty"),
    ("      delimiter: ''\n", "gw.yaml:8:18: sensors[0].options.delimiter: must not be empty"),
    ("      delimiter: '='\n", "gw.yaml:8:18: sensors[0].options.delimiter: must not contain '=' "
                               "(line ends, '=' of kv pairs and characters of numbers)"),
    ("      format: csv\n      columns: [a, b]\n      delimiter: '.'\n",
     "gw.yaml:10:18: sensors[0].options.delimiter: must not contain '.' "
     "(line ends, '=' of kv pairs and characters of numbers)"),
    ("      max_line: 0\n", "gw.yaml:8:17: sensors[0].options.max_line: must be at least 1 byte"),
    ("      format: csv\n      columns: [a, b]\n      timestamp_field: ts\n",
     "gw.yaml:10:24: sensors[0].options.timestamp_field: 'ts' is not one of the columns ['a', 'b']"),
    ("      format: csv\n      columns: [ts]\n      timestamp_field: ts\n",
     "gw.yaml:9:16: sensors[0].options.columns: the timestamp_field is the only column: there is no value to read"),
    ("      timestamp_unit: ms\n", "gw.yaml:8:23: sensors[0].options.timestamp_unit: only used with a timestamp_field"),
    ("      format: json\n      delimiter: ';'\n",
     "gw.yaml:9:18: sensors[0].options.delimiter: the json format has no delimiter (got ';'); remove the key"),
])
def test_config_mistakes_that_made_every_line_malformed_are_refused_at_load(extra, message):
    with pytest.raises(config.ConfigError) as e:
        config.loads(BASE + extra, "gw.yaml", env={})
    assert str(e.value) == message


def test_the_options_the_review_found_refused_still_load_when_right():
    opts = config.loads(BASE + "      format: csv\n      columns: [ts, pm25]\n      timestamp_field: ts\n"
                        "      timestamp_unit: ms\n      delimiter: ';'\n      max_line: 1\n", "gw.yaml", env={}
                        ).sensors[0].options
    assert (opts.columns, opts.timestamp_field, opts.timestamp_unit, opts.delimiter, opts.max_line) == (
        ("ts", "pm25"), "ts", "ms", ";", 1)
    assert config.loads(BASE + "      format: json\n", "gw.yaml", env={}).sensors[0].options.timestamp_unit == "s"
    assert config.loads(BASE + "      format: json\n      delimiter: ','\n", "gw.yaml", env={}
                        ).sensors[0].options.delimiter == ","


# ---- properties: the partial-line rule over arbitrary lines

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
finite = st.floats(allow_nan=False, allow_infinity=False, width=32, min_value=-1e6, max_value=1e6)
names = st.text("abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=8)
BAD = {"kv": ["1.2.3", "1_0", "1e999", "", "x1", "--1", "0x10"],
       "json": ["[1]", '{"c": 1}', '"12.5"', '""', "1e999", '"x1"']}
WORDS = {"kv": ["ok", "ERR", "nan", "-inf", "N/A", "warming up"],
         "json": ['"ok"', "true", "false", "null", "NaN", "-Infinity"]}


@st.composite
def lines(draw, fmt):
    keys = draw(st.lists(names, min_size=1, max_size=6, unique=True))
    fields = []
    for k in keys:
        kind = draw(st.sampled_from(["good", "bad", "word"]))
        if kind == "good":
            v = draw(finite)
            fields.append((k, kind, float(v), repr(v)))
        else:
            fields.append((k, kind, None, draw(st.sampled_from((BAD if kind == "bad" else WORDS)[fmt]))))
    return fields


@SETTINGS
@given(st.sampled_from(["kv", "json"]).flatmap(lambda f: st.tuples(st.just(f), st.lists(lines(f), max_size=5))),
       st.sampled_from([b"\n", b"\r", b"\r\n"]), st.lists(st.integers(0, 2000)))
def test_every_good_field_is_kept_and_every_bad_one_counted(fmt_lines, eol, cuts):
    fmt, items = fmt_lines
    stream = b""
    for fields in items:
        if fmt == "kv":
            text = ",".join(f"{k}={t}" for k, _, _, t in fields)
        else:
            text = "{" + ", ".join(f"{json.dumps(k)}: {t}" for k, _, _, t in fields) + "}"
        stream += text.encode() + eol
    wanted = [[(k, v, None) for k, kind, v, _ in fields if kind == "good"] for fields in items]
    d = LineDecoder(fmt)
    got, last = [], 0
    for c in sorted(c % (len(stream) + 1) for c in cuts):
        got += d.feed(stream[last:c])
        last = max(last, c)
    got += d.feed(stream[last:])
    assert got == [w for w in wanted if w]
    assert d.malformed == sum(kind == "bad" for fields in items for _, kind, _, _ in fields)
    assert d.lines == len(items)
