"""Scenario files: seeded signals per channel plus injected faults, and their ground truth.

A scenario (YAML, see ``simulators/scenarios/city_block.yaml``) lists sensors,
each with a kind (``line``, ``pms5003``, ``modbus``, ``coap``), a sample rate,
channels (a :class:`~simulators.signals.ChannelSignal` plus a unit and
wire-specific settings) and faults. Sample ``k`` of a sensor is due at
``t0 + k / rate_hz``; everything here is a pure function of (seed, t0, k), so a
test or a benchmark recomputes what the simulator sent without listening to it.

Fault kinds and what they mean for sample indices ``at .. at+length-1``:

- value faults on one channel (``channel`` required): ``spike`` adds
  ``magnitude``; ``level_shift`` adds ``magnitude``; ``drift`` adds a ramp that
  reaches ``magnitude`` at the last sample; ``stuck`` freezes the channel at
  the reading of sample ``at`` (the last one that still moves), so samples
  ``at+1 .. at+length-1`` repeat it: only those are in the ground truth, and a
  ``stuck`` needs ``length >= 2``.
- delivery faults on the whole sensor: ``dropout`` (nothing is sent),
  ``corrupt`` (bytes are damaged so the decoder must reject them),
  ``disconnect`` (the port or node goes away and comes back afterwards).

The ground truth lists every (sensor, channel, sample index, ts, fault kind),
for the samples a run of ``count`` samples per sensor reaches.

:func:`from_dict` checks types and ranges and raises ValueError naming the bad
part (``sensors[2].faults[0].at: ...``), so a typo is one line, not a traceback.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import yaml

from .signals import ChannelSignal, channel_values, floor_at

VALUE_FAULTS = ("spike", "level_shift", "drift", "stuck")
DELIVERY_FAULTS = ("dropout", "corrupt", "disconnect")
KINDS = ("line", "pms5003", "modbus", "coap")


@dataclass(frozen=True)
class Fault:
    kind: str
    at: int
    length: int = 1
    channel: str = ""
    magnitude: float = 0.0

    def covers(self, k: int) -> bool:
        return self.at <= k < self.at + self.length


@dataclass(frozen=True)
class Channel:
    signal: ChannelSignal
    unit: str = ""
    wire: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.signal.name


@dataclass(frozen=True)
class SensorSpec:
    id: str
    kind: str
    rate_hz: float
    channels: tuple[Channel, ...]
    faults: tuple[Fault, ...] = ()
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def interval_s(self) -> float:
        return 1.0 / self.rate_hz

    def delivery(self, k: int) -> str:
        """``ok`` or the delivery fault active at sample ``k``."""
        for f in self.faults:
            if f.kind in DELIVERY_FAULTS and f.covers(k):
                return f.kind
        return "ok"

    def channel(self, name: str) -> Channel:
        for c in self.channels:
            if c.name == name:
                return c
        raise KeyError(name)


@dataclass(frozen=True)
class Scenario:
    seed: int
    sensors: tuple[SensorSpec, ...]
    count: int = 0
    t0: float | None = None

    def sensor(self, sensor_id: str) -> SensorSpec:
        for s in self.sensors:
            if s.id == sensor_id:
                return s
        raise KeyError(sensor_id)


_SIGNAL_KEYS = {"name", "baseline", "amplitude", "period_s", "noise", "decimals", "minimum"}
_FAULT_KEYS = {"kind", "at", "length", "channel", "magnitude"}
LINE_FORMATS = ("kv", "csv", "json")
COAP_FORMATS = ("text", "json", "cbor", "senml-json", "senml-cbor")
MODBUS_TYPES = ("int16", "uint16", "int32", "uint32", "float32")


def _number(d: dict, key: str, where: str, default=None, *, integer: bool = False,
            minimum: float | None = None, positive: bool = False):
    """``d[key]`` as a finite int or float (``default`` when absent); ValueError naming ``where.key``."""
    v = d.get(key, default)
    if v is None and default is None and key not in d:
        raise ValueError(f"{where}.{key}: required")
    ok = isinstance(v, int) if integer else isinstance(v, (int, float))
    if isinstance(v, bool) or not ok or (not integer and not math.isfinite(v)):
        raise ValueError(f"{where}.{key}: expected {'an integer' if integer else 'a number'}, got {v!r}")
    if minimum is not None and v < minimum:
        raise ValueError(f"{where}.{key}: must be >= {minimum:g}, got {v!r}")
    if positive and v <= 0:
        raise ValueError(f"{where}.{key}: must be positive, got {v!r}")
    return v if integer else float(v)


def _mapping(v, where: str) -> dict:
    if not isinstance(v, dict):
        raise ValueError(f"{where}: expected a mapping, got {v!r}")
    return v


def _list(v, where: str) -> list:
    if v is None:
        return []
    if not isinstance(v, list):
        raise ValueError(f"{where}: expected a list, got {v!r}")
    return v


def _choice(d: dict, key: str, where: str, choices: tuple, default: str) -> str:
    v = d.get(key, default)
    if v not in choices:
        raise ValueError(f"{where}.{key}: expected one of {', '.join(choices)}, got {v!r}")
    return v


def _channel(c, where: str, kind: str) -> Channel:
    c = _mapping(c, where)
    name = c.get("name")
    if not isinstance(name, str) or not name:
        raise ValueError(f"{where}.name: required (a non-empty string)")
    sig = ChannelSignal(name, _number(c, "baseline", where),
                        amplitude=_number(c, "amplitude", where, 0.0),
                        period_s=_number(c, "period_s", where, 86400.0, positive=True),
                        noise=_number(c, "noise", where, 0.0, minimum=0),
                        decimals=_number(c, "decimals", where, 1, integer=True, minimum=0),
                        minimum=_number(c, "minimum", where) if "minimum" in c else -math.inf)
    wire = {k: v for k, v in c.items() if k not in _SIGNAL_KEYS | {"unit"}}
    if kind == "modbus":
        _number(wire, "slave", where, integer=True, minimum=1)
        if wire["slave"] > 247:
            raise ValueError(f"{where}.slave: must be 1..247, got {wire['slave']!r}")
        _number(wire, "address", where, integer=True, minimum=0)
        if wire["address"] > 65535:
            raise ValueError(f"{where}.address: must be 0..65535, got {wire['address']!r}")
        _choice(wire, "function", where, ("holding", "input"), "holding")
        _choice(wire, "type", where, MODBUS_TYPES, "uint16")
        _choice(wire, "word_order", where, ("big", "little"), "big")
        if _number(wire, "scale", where, 1.0) == 0:
            raise ValueError(f"{where}.scale: must not be 0")
    elif kind == "coap":
        _choice(wire, "format", where, COAP_FORMATS, "text")
        path = wire.get("path", f"/{name}")
        if not isinstance(path, str) or not path.startswith("/"):
            raise ValueError(f"{where}.path: expected a path such as /{name}, got {path!r}")
    return Channel(sig, str(c.get("unit", "")), wire)


def _fault(f, where: str, names: set[str]) -> Fault:
    f = _mapping(f, where)
    unknown = sorted(set(f) - _FAULT_KEYS, key=str)
    if unknown:
        raise ValueError(f"{where}: unknown key {unknown[0]!r}")
    kind = f.get("kind")
    if kind not in VALUE_FAULTS + DELIVERY_FAULTS:
        raise ValueError(f"{where}.kind: unknown fault {kind!r}")
    channel = f.get("channel", "")
    if kind in VALUE_FAULTS and channel not in names:
        raise ValueError(f"{where}.channel: {kind} needs one of {sorted(names)}")
    if kind in DELIVERY_FAULTS and channel:
        raise ValueError(f"{where}.channel: {kind} hits the whole sensor, it takes no channel")
    fault = Fault(kind, _number(f, "at", where, integer=True, minimum=0),
                  _number(f, "length", where, 1, integer=True, minimum=1), channel,
                  _number(f, "magnitude", where, 0.0))
    if kind == "stuck" and fault.length < 2:
        raise ValueError(f"{where}.length: a stuck fault needs length >= 2 (sample at is the frozen reading)")
    return fault


def _sensor(s, where: str) -> SensorSpec:
    s = _mapping(s, where)
    kind = s.get("kind")
    if kind not in KINDS:
        raise ValueError(f"{where}.kind: expected one of {', '.join(KINDS)}, got {kind!r}")
    sid = s.get("id")
    if not isinstance(sid, (str, int)) or isinstance(sid, bool) or not str(sid) or "/" in str(sid):
        raise ValueError(f"{where}.id: required (a name without '/'), got {sid!r}")
    channels = [_channel(c, f"{where}.channels[{i}]", kind)
                for i, c in enumerate(_list(s.get("channels"), f"{where}.channels"))]
    if not channels:
        raise ValueError(f"{where}.channels: a sensor needs channels")
    names = {c.name for c in channels}
    if len(names) < len(channels):
        raise ValueError(f"{where}.channels: channel names must be unique")
    faults = tuple(_fault(f, f"{where}.faults[{j}]", names)
                   for j, f in enumerate(_list(s.get("faults"), f"{where}.faults")))
    rate = _number(s, "rate_hz", where, 1.0, positive=True)
    if kind == "line":
        _choice(s, "format", where, LINE_FORMATS, "kv")
    if "port" in s:
        _number(s, "port", where, integer=True, minimum=1)
        if s["port"] > 65535:
            raise ValueError(f"{where}.port: must be 1..65535, got {s['port']!r}")
    known = {"id", "kind", "rate_hz", "channels", "faults"}
    return SensorSpec(str(sid), kind, rate, tuple(channels), faults,
                      {k: v for k, v in s.items() if k not in known})


def from_dict(doc: dict) -> Scenario:
    """Build a scenario from parsed YAML; ValueError naming the bad part."""
    doc = _mapping(doc, "scenario")
    sensors = tuple(_sensor(s, f"sensors[{i}]") for i, s in enumerate(_list(doc.get("sensors"), "sensors")))
    ids = [s.id for s in sensors]
    for i, sid in enumerate(ids):
        if sid in ids[:i]:
            raise ValueError(f"sensors[{i}].id: {sid!r} is used twice")
    t0 = doc.get("t0")
    if t0 is not None:
        t0 = _number(doc, "t0", "scenario")
    return Scenario(_number(doc, "seed", "scenario", 1, integer=True, minimum=0), sensors,
                    _number(doc, "count", "scenario", 0, integer=True, minimum=0), t0)


def loads(text: str) -> Scenario:
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ValueError(f"not valid YAML: {' '.join(str(exc).split())}") from None
    return from_dict(doc)


def load(path: str) -> Scenario:
    with open(path, encoding="utf-8") as fh:
        return loads(fh.read())


def values(sensor: SensorSpec, seed: int, t0: float, start: int, count: int) -> dict[str, np.ndarray]:
    """Values of every channel for samples ``start .. start+count-1``, value faults applied."""
    out = {}
    interval = sensor.interval_s
    for ch in sensor.channels:
        v = channel_values(ch.signal, seed, t0, interval, count, start).copy()
        k = np.arange(start, start + count)
        for f in sensor.faults:
            if f.channel != ch.name or f.kind not in VALUE_FAULTS:
                continue
            hit = (k >= f.at) & (k < f.at + f.length)
            if not hit.any():
                continue
            if f.kind in ("spike", "level_shift"):
                v[hit] += f.magnitude
            elif f.kind == "drift":
                v[hit] += f.magnitude * (k[hit] - f.at + 1) / f.length
            elif f.kind == "stuck":
                v[hit] = channel_values(ch.signal, seed, t0, interval, 1, f.at)[0]
        out[ch.name] = floor_at(np.round(v, ch.signal.decimals), ch.signal.minimum)
    return out


def ground_truth(scenario: Scenario, t0: float, count: int = 0) -> list[dict]:
    """One record per (sensor, channel, sample) a fault touched, in sensor and index order.

    ``count`` > 0 keeps the samples a run of that many samples per sensor sends (``k < count``).
    A ``stuck`` fault's first sample is the frozen reading itself, so its rows start at ``at + 1``.
    """
    rows = []
    for s in scenario.sensors:
        for f in s.faults:
            chans = [f.channel] if f.kind in VALUE_FAULTS else [c.name for c in s.channels]
            first = f.at + 1 if f.kind == "stuck" else f.at
            last = f.at + f.length if count <= 0 else min(f.at + f.length, count)
            for k in range(first, last):
                for c in chans:
                    rows.append({"sensor": s.id, "channel": c, "index": k,
                                 "ts": round(t0 + k * s.interval_s, 6), "fault": f.kind})
    rows.sort(key=lambda r: (r["sensor"], r["index"], r["channel"]))
    return rows


def write_ground_truth(path: str, scenario: Scenario, t0: float, count: int = 0) -> int:
    """Write the ground truth (of a run of ``count`` samples per sensor, 0: all) as JSON lines;
    returns the number of rows."""
    rows = ground_truth(scenario, t0, count)
    with open(path, "w", encoding="utf-8") as fh:
        for r in rows:
            fh.write(json.dumps(r, separators=(",", ":")) + "\n")
    return len(rows)
