"""Text-line sensors on a serial port: ``key=value`` pairs, CSV with known columns, JSON lines.

The :class:`LineDecoder` is pure (bytes in, values out) and never raises on
input: a line that does not parse is counted as malformed and skipped, and a
line longer than ``max_line`` bytes is dropped whole so a stream without
newlines cannot grow memory.
"""

from __future__ import annotations

import json
import math
from itertools import repeat
from dataclasses import dataclass, field
from typing import Literal

from edge_gateway.readings import Reading

from .serial_port import StreamDriver

Sample = tuple[str, float, "float | None"]


@dataclass(frozen=True)
class LineOptions:
    """Options of a ``serial_line`` sensor.

    ``port``: the serial device (``/dev/ttyUSB0``; a ``/dev/serial/by-id/...`` link names the same sensor
    after a re-plug) or a pyserial URL such as ``socket://host:port``. ``baudrate``: the line speed, 8N1
    (``edge-gateway probe`` finds it). ``format``: ``kv`` reads ``pm25=12.5,pm10=20`` lines, ``csv`` reads
    values in the order of ``columns``, ``json`` reads one object of numbers a line. ``columns``: the
    channel name of each CSV column (csv only). ``delimiter``: what separates the pairs (kv) or cells
    (csv). ``timestamp_field``: a field holding the reading's time in epoch seconds, used instead of the
    time the line arrived; a line without it is malformed. ``units``: the unit of each channel, by channel
    name (e.g. ``pm25: ug/m3``); a channel not listed has none. ``max_line``: bytes a line may have; a
    longer one is dropped whole and counted as malformed.
    """

    port: str
    baudrate: int = 9600
    format: Literal["kv", "csv", "json"] = "kv"
    columns: tuple[str, ...] = ()
    delimiter: str = ","
    timestamp_field: str = ""
    units: dict[str, str] = field(default_factory=dict)
    max_line: int = 4096

    def __post_init__(self) -> None:
        if self.format == "csv" and not self.columns:
            raise ValueError("columns: the csv format needs the list of column names")
        if self.format != "csv" and self.columns:
            raise ValueError("columns: only the csv format takes columns")
        if self.baudrate <= 0:
            raise ValueError("baudrate: must be positive")


class LineDecoder:
    """Split a byte stream into lines and lines into ``(channel, value, ts)`` samples."""

    def __init__(self, fmt: str = "kv", columns: tuple[str, ...] = (), delimiter: str = ",",
                 timestamp_field: str = "", max_line: int = 4096) -> None:
        if fmt == "csv" and not columns:
            raise ValueError("csv format needs columns")
        self.fmt = fmt
        self.columns = tuple(columns)
        self.delimiter = delimiter
        self.timestamp_field = timestamp_field
        self.max_line = max_line
        self.lines = 0
        self.malformed = 0
        self._buf = b""
        self._overlong = False

    def feed(self, data: bytes) -> list[list[Sample]]:
        """Decode every complete line in ``data``; one list of samples per good line."""
        buf = self._buf + data
        *lines, rest = buf.split(b"\n")
        out: list[list[Sample]] = []
        for raw in lines:
            if self._overlong or len(raw) > self.max_line:
                # too long, or the end of a line already cut off as too long (not a line of its own)
                self._overlong = False
                self.lines += 1
                self.malformed += 1
                continue
            raw = raw.strip(b"\r \t")
            if not raw:
                continue
            self.lines += 1
            samples = self.parse_line(raw)
            if samples is None:
                self.malformed += 1
            else:
                out.append(samples)
        if len(rest) > self.max_line:
            self._overlong = True
            rest = b""
        self._buf = rest
        return out

    def parse_line(self, raw: bytes) -> list[Sample] | None:
        """Parse one line; None when any part of it is not valid."""
        if len(raw) > self.max_line:
            return None
        try:
            text = raw.decode("ascii")
        except UnicodeDecodeError:
            return None
        try:
            if self.fmt == "kv":
                fields: dict[str, str] = {}
                parts = text.split(self.delimiter)
                for pair in parts:
                    key, sep, value = pair.partition("=")
                    if not sep or "=" in value or "_" in value:
                        return None
                    fields[key.strip()] = value
                if len(fields) != len(parts):
                    return None
                return self._samples(list(fields), list(map(float, fields.values())))
            if self.fmt == "csv":
                cells = text.split(self.delimiter)
                if len(cells) != len(self.columns) or len(set(self.columns)) != len(cells) or "_" in text:
                    return None
                return self._samples(list(self.columns), list(map(float, cells)))
            obj = json.loads(text)
            if not isinstance(obj, dict):
                return None
            return self._samples([str(k) for k in obj], [_json_number(v) for v in obj.values()])
        except (ValueError, TypeError, RecursionError):
            return None

    def _samples(self, keys: list[str], values: list[float]) -> list[Sample] | None:
        """Pair unique, non-empty keys with finite values; split off the timestamp field."""
        if "" in keys or not math.isfinite(sum(values)) and not all(map(math.isfinite, values)):
            return None
        tsf = self.timestamp_field
        if not tsf:
            return list(zip(keys, values, repeat(None))) if keys else None
        try:
            i = keys.index(tsf)
        except ValueError:
            return None
        ts = values.pop(i)
        del keys[i]
        return list(zip(keys, values, repeat(ts))) if keys else None


def _number(text: str) -> float:
    value = float(text.strip())
    if not math.isfinite(value):
        raise ValueError("not a finite number")
    return value


def _json_number(value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError("not a number")
    return _number(repr(value))


class SerialLineDriver(StreamDriver):
    """Reads a line-oriented sensor through pyserial."""

    name = "serial_line"
    Options = LineOptions

    def on_open(self) -> None:
        opts: LineOptions = self.options
        self._decoder = LineDecoder(opts.format, opts.columns, opts.delimiter, opts.timestamp_field, opts.max_line)

    def on_bytes(self, data: bytes, now: float) -> None:
        decoder = self._decoder
        units = self.options.units
        before = decoder.malformed
        for samples in decoder.feed(data):
            for channel, value, ts in samples:
                self.sink(Reading(self.sensor_id, channel, value, now if ts is None else ts, units.get(channel, "")))
                self.stats.readings += 1
            self.stats.last_reading_ts = now
        self.stats.malformed += decoder.malformed - before


DRIVER = SerialLineDriver
