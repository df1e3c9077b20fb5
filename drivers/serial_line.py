"""Text-line sensors on a serial port: ``key=value`` pairs, CSV with known columns, JSON lines.

The :class:`LineDecoder` is pure (bytes in, values out) and never raises on
input. A line ends at CR, LF or CRLF. A field that is not a number is counted
as malformed and skipped, and the other fields of its line are kept (as the
CoAP driver does with a JSON object: one count per bad field); a word such as
``ok`` or ``ERR`` (a status, not a reading) is skipped without being counted.
A line counts once, and gives nothing, when it cannot be split into fields at
all (not ASCII, not a JSON object, the wrong number of CSV cells), names a
field twice, or lacks a valid ``timestamp_field`` (its readings cannot be
dated). A line longer than ``max_line`` bytes is dropped whole so a stream
without line ends cannot grow memory.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import Literal

from edge_gateway.readings import LATEST_EPOCH_S, MAX_NAME, Reading

from .serial_port import StreamDriver

Sample = tuple[str, float, "float | None"]

_EOL = re.compile(rb"\r\n|\r|\n")
# a status word, not a reading: ok, ERR, warming up, N/A, nan, -inf (letters, spaces, / _ . -; no digit)
_WORD = re.compile(r"[+-]?[A-Za-z][A-Za-z /_.-]*")
_NOT_IN_DELIMITER = "\r\n0123456789.+-"
_PER_SECOND = {"s": 1, "ms": 1000}


def check_options(fmt: str, columns: tuple[str, ...], delimiter: str, timestamp_field: str,
                  max_line: int, timestamp_unit: str = "s") -> None:
    """Raise ValueError (``"key: why"``) for options that would make every line malformed."""
    if fmt == "csv" and not columns:
        raise ValueError("columns: the csv format needs the list of column names")
    if fmt != "csv" and columns:
        raise ValueError("columns: only the csv format takes columns")
    if "" in columns:
        raise ValueError("columns: a column name is empty")
    twice = sorted({c for c in columns if columns.count(c) > 1})
    if twice:
        raise ValueError(f"columns: {', '.join(map(repr, twice))} {'is' if len(twice) == 1 else 'are'} listed twice "
                         "(each column is one channel)")
    if fmt == "csv" and timestamp_field and timestamp_field not in columns:
        raise ValueError(f"timestamp_field: {timestamp_field!r} is not one of the columns {list(columns)}")
    if fmt == "csv" and timestamp_field and len(columns) == 1:
        raise ValueError("columns: the timestamp_field is the only column: there is no value to read")
    if fmt == "json" and delimiter != ",":
        raise ValueError(f"delimiter: the json format has no delimiter (got {delimiter!r}); remove the key")
    if fmt != "json":
        if not delimiter:
            raise ValueError("delimiter: must not be empty")
        wrong = sorted(set(delimiter) & set(_NOT_IN_DELIMITER + ("=" if fmt == "kv" else "")))
        if wrong:
            raise ValueError(f"delimiter: must not contain {' or '.join(map(repr, wrong))} "
                             "(line ends, '=' of kv pairs and characters of numbers)")
    if isinstance(max_line, bool) or max_line < 1:
        raise ValueError("max_line: must be at least 1 byte")
    if timestamp_unit not in _PER_SECOND:
        raise ValueError(f"timestamp_unit: expected one of {'|'.join(_PER_SECOND)}, got {timestamp_unit!r}")
    if timestamp_unit != "s" and not timestamp_field:
        raise ValueError("timestamp_unit: only used with a timestamp_field")


@dataclass(frozen=True)
class LineOptions:
    """Options of a ``serial_line`` sensor.

    ``port``: the serial device (``/dev/ttyUSB0``; a ``/dev/serial/by-id/...`` link names the same sensor
    after a re-plug) or a pyserial URL such as ``socket://host:port``. ``baudrate``: the line speed, 8N1
    (``edge-gateway probe`` finds it). ``format``: ``kv`` reads ``pm25=12.5,pm10=20`` lines, ``csv`` reads
    values in the order of ``columns``, ``json`` reads one object of numbers a line. A field whose value is
    not a number counts once as malformed and the other fields of its line are kept; a word (``ok``,
    ``ERR``, ``nan``, JSON ``"ok"``, ``true`` or ``null``) is a status, not a reading, and is skipped
    without being counted; a line naming a field twice is dropped whole and counted once; a name longer
    than 128 characters counts as a bad field. ``columns``: the channel name of each CSV column (csv only),
    each name once. ``delimiter``: what separates the pairs
    (kv) or cells (csv), not taken with json; one empty field after the last delimiter is ignored. It may not be empty nor hold
    a line end, a digit, ``.``, ``+``, ``-`` or (kv) ``=``. ``timestamp_field``: a field holding the
    reading's time, used instead of the time the line arrived (with csv, one of the ``columns``); a line
    without it, or where it is not a number, is dropped whole and counted as malformed. ``timestamp_unit``:
    ``s`` (epoch seconds) or ``ms`` (epoch milliseconds, 13 digits); a time past the year 5138 (milliseconds
    read as seconds), or at or before 1970 (a clock not set), drops the line, counted as malformed and shown
    as the sensor's last error.
    ``units``: the unit of each channel, by channel name (e.g. ``pm25: ug/m3``); a channel not listed has
    none. ``max_line``: bytes a line may have, not counting its end (CR, LF or CRLF); a longer one is
    dropped whole and counted as malformed.
    """

    port: str
    baudrate: int = 9600
    format: Literal["kv", "csv", "json"] = "kv"
    columns: tuple[str, ...] = ()
    delimiter: str = ","
    timestamp_field: str = ""
    timestamp_unit: Literal["s", "ms"] = "s"
    units: dict[str, str] = field(default_factory=dict)
    max_line: int = 4096

    def __post_init__(self) -> None:
        check_options(self.format, self.columns, self.delimiter, self.timestamp_field, self.max_line,
                      self.timestamp_unit)
        if self.baudrate <= 0:
            raise ValueError("baudrate: must be positive")


class _Pairs(list):
    """A JSON object as its (key, value) pairs, so that a key given twice is seen."""


class _Word(str):
    """A JSON constant (NaN, Infinity, -Infinity): a word, as ``nan`` is in kv."""


class LineDecoder:
    """Split a byte stream into lines and lines into ``(channel, value, ts)`` samples.

    ``lines`` counts the non-empty lines, ``malformed`` the bad fields and bad lines (see the module's
    docstring). ``problem`` holds what is wrong with the timestamps, in a technician's words, when a
    line was dropped for a time that cannot be one (the driver shows it as the sensor's last error).
    """

    def __init__(self, fmt: str = "kv", columns: tuple[str, ...] = (), delimiter: str = ",",
                 timestamp_field: str = "", max_line: int = 4096, timestamp_unit: str = "s") -> None:
        check_options(fmt, tuple(columns), delimiter, timestamp_field, max_line, timestamp_unit)
        self.fmt = fmt
        self.columns = tuple(columns)
        self.delimiter = delimiter
        self.timestamp_field = timestamp_field
        self.timestamp_unit = timestamp_unit
        self.max_line = max_line
        self._plain_kv = fmt == "kv" and not timestamp_field
        self.lines = 0
        self.malformed = 0
        self.problem = ""
        self._buf = b""
        self._overlong = False

    def feed(self, data: bytes) -> list[list[Sample]]:
        """Decode every complete line in ``data``; one list of samples per line that gives any."""
        buf = self._buf + data
        *lines, rest = _EOL.split(buf)
        out: list[list[Sample]] = []
        for raw in lines:
            if self._overlong or len(raw) > self.max_line:
                # too long, or the end of a line already cut off as too long (not a line of its own)
                self._overlong = False
                self.lines += 1
                self.malformed += 1
                continue
            raw = raw.strip(b" \t")
            if not raw:  # a blank line, or the LF of a CRLF that came in the next read
                continue
            self.lines += 1
            samples, bad = self.parse(raw)
            self.malformed += bad
            if samples:
                out.append(samples)
        if len(rest) > self.max_line:
            self._overlong = True
            rest = b""
        self._buf = rest
        return out

    def parse_line(self, raw: bytes) -> list[Sample] | None:
        """The samples of one line (without its line end); None when it gives none and a part is bad."""
        samples, bad = self.parse(raw)
        return samples if samples or not bad else None

    def parse(self, raw: bytes) -> tuple[list[Sample], int]:
        """The samples of one line (without its line end), and how many of its parts are malformed."""
        if len(raw) > self.max_line:
            return [], 1
        try:
            if self._plain_kv:
                return self._kv(raw.decode("ascii"))
            fields, bad = self._fields(raw.decode("ascii"))
        except (ValueError, TypeError, RecursionError):  # not ASCII, not JSON (UnicodeDecodeError is a ValueError)
            return [], 1
        if fields is None:
            return [], 1
        if len({k for k, _ in fields}) != len(fields):
            return [], 1
        value_of = _json_value if self.fmt == "json" else _text_value
        ts = None
        tsf = self.timestamp_field
        if tsf:
            ts = self._timestamp(dict(fields).get(tsf), value_of)
            if ts is None:
                return [], 1
        out: list[Sample] = []
        for key, text in fields:
            if tsf and key == tsf:
                continue
            try:
                value = value_of(text)
            except (ValueError, TypeError, OverflowError):
                bad += 1
                continue
            if value is None:  # a status word, not a reading
                continue
            if not key or len(key) > MAX_NAME or not key.isprintable():
                bad += 1
                continue
            out.append((key, value, ts))
        return out, bad

    def _kv(self, text: str) -> tuple[list[Sample], int]:
        """:meth:`parse` of a kv line without a ``timestamp_field`` in one pass: the common sensor,
        and the general path's field list, set of keys and second loop cost it about a third."""
        parts = text.split(self.delimiter)
        if len(parts) > 1 and not parts[-1].strip():
            parts.pop()
        out: list[Sample] = []
        bad = 0
        seen = set()
        for part in parts:
            key, sep, text = part.partition("=")
            if not sep or "=" in text:
                bad += 1
                continue
            key = key.strip()
            if key in seen:
                return [], 1
            seen.add(key)
            try:
                value = _text_value(text)
            except ValueError:
                bad += 1
                continue
            if value is None:
                continue
            if not key or len(key) > MAX_NAME or not key.isprintable():
                bad += 1
                continue
            out.append((key, value, None))
        return out, bad

    def _fields(self, text: str) -> tuple[list[tuple[str, object]] | None, int]:
        """The line's (key, value) fields and how many parts are not fields; None if it has no fields."""
        if self.fmt == "json":
            obj = json.loads(text, object_pairs_hook=_Pairs, parse_constant=_Word)
            return (list(obj) if isinstance(obj, _Pairs) else None), 0
        parts = text.split(self.delimiter)
        if len(parts) > (len(self.columns) if self.fmt == "csv" else 1) and not parts[-1].strip():
            parts.pop()  # a delimiter after the last field
        if self.fmt == "csv":
            return (list(zip(self.columns, parts)) if len(parts) == len(self.columns) else None), 0
        fields, bad = [], 0
        for part in parts:
            key, sep, value = part.partition("=")
            if not sep or "=" in value:
                bad += 1
            else:
                fields.append((key.strip(), value))
        return fields, bad

    def _timestamp(self, text, value_of) -> float | None:
        """The line's time in epoch seconds; None when it is missing, not a number or not a time."""
        if text is None:
            return None
        try:
            value = value_of(text)
        except (ValueError, TypeError, OverflowError):
            return None
        if value is None:
            return None
        ts = value / _PER_SECOND[self.timestamp_unit]
        if ts <= 0.0:
            self.problem = (f"{self.timestamp_field} {value:g} is not a time in {self.timestamp_unit} (at or before "
                            "1970): the sensor's clock is not set")
            return None
        if ts >= LATEST_EPOCH_S:
            hint = ": milliseconds? set timestamp_unit: ms" if self.timestamp_unit == "s" else ""
            shown = str(int(value)) if value.is_integer() and abs(value) < 1e21 else repr(value)
            self.problem = (f"{self.timestamp_field} {shown} is not a time in {self.timestamp_unit} "
                            f"(past the year 5138){hint}")
            return None
        return ts


def _text_value(text: str) -> float | None:
    """The finite number ``text`` (a kv or CSV field) holds; None for a status word; ValueError else.

    ``float`` is tried first, as nearly every field is a number: a word it takes (``nan``, ``inf``)
    is not finite, and a word it refuses is looked at only then."""
    try:
        value = float(text)
    except ValueError:
        if _WORD.fullmatch(text.strip()):
            return None
        raise
    if value - value != 0.0:  # not finite: nan, inf (words) or 1e999 (a number out of range)
        if _WORD.fullmatch(text.strip()):
            return None
        raise ValueError("not a finite number")
    if "_" in text:  # Python's digit grouping (1_000), not a sensor's number
        raise ValueError("not a number")
    return value


def _json_value(value) -> float | None:
    """The finite number a JSON value is; None for a status (a word, true/false, null); else an error."""
    if value is None or isinstance(value, (bool, _Word)):
        return None
    if isinstance(value, str):
        if _WORD.fullmatch(value.strip()):
            return None
        raise ValueError("a string, not a number")
    if not isinstance(value, (int, float)):
        raise TypeError("not a number")
    value = float(value)  # OverflowError for an int beyond a float
    if not math.isfinite(value):
        raise ValueError("not a finite number")
    return value


class SerialLineDriver(StreamDriver):
    """Reads a line-oriented sensor through pyserial."""

    name = "serial_line"
    Options = LineOptions

    def on_open(self) -> None:
        opts: LineOptions = self.options
        self._decoder = LineDecoder(opts.format, opts.columns, opts.delimiter, opts.timestamp_field, opts.max_line,
                                    opts.timestamp_unit)

    def on_bytes(self, data: bytes, now: float) -> None:
        decoder = self._decoder
        units = self.options.units
        before = decoder.malformed
        for samples in decoder.feed(data):
            for channel, value, ts in samples:
                # without a timestamp_field, stamped here on the gateway's clock
                self.sink(Reading(self.sensor_id, channel, value, now if ts is None else ts, units.get(channel, ""),
                                  gateway_stamped=ts is None))
                self.stats.readings += 1
            self.stats.last_reading_ts = now
        self.stats.malformed += decoder.malformed - before
        if decoder.problem:
            self.stats.note_error(decoder.problem, now)
            decoder.problem = ""


DRIVER = SerialLineDriver
