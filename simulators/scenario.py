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
  reaches ``magnitude`` at the last sample; ``stuck`` repeats the value of
  sample ``at``.
- delivery faults on the whole sensor: ``dropout`` (nothing is sent),
  ``corrupt`` (bytes are damaged so the decoder must reject them),
  ``disconnect`` (the port or node goes away and comes back afterwards).

The ground truth lists every (sensor, channel, sample index, ts, fault kind).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import yaml

from .signals import ChannelSignal, channel_values

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


_SIGNAL_KEYS = {"name", "baseline", "amplitude", "period_s", "noise", "decimals"}


def from_dict(doc: dict) -> Scenario:
    """Build a scenario from parsed YAML; ValueError naming the bad part."""
    if not isinstance(doc, dict):
        raise ValueError("scenario: expected a mapping")
    sensors = []
    for i, s in enumerate(doc.get("sensors") or ()):
        where = f"sensors[{i}]"
        kind = s.get("kind")
        if kind not in KINDS:
            raise ValueError(f"{where}.kind: expected one of {', '.join(KINDS)}, got {kind!r}")
        channels = []
        for c in s.get("channels") or ():
            sig = ChannelSignal(**{k: v for k, v in c.items() if k in _SIGNAL_KEYS})
            wire = {k: v for k, v in c.items() if k not in _SIGNAL_KEYS | {"unit"}}
            channels.append(Channel(sig, str(c.get("unit", "")), wire))
        if not channels:
            raise ValueError(f"{where}.channels: a sensor needs channels")
        names = {c.name for c in channels}
        faults = []
        for j, f in enumerate(s.get("faults") or ()):
            try:
                fault = Fault(**f)
            except TypeError as exc:
                raise ValueError(f"{where}.faults[{j}]: {exc}") from None
            if fault.kind not in VALUE_FAULTS + DELIVERY_FAULTS:
                raise ValueError(f"{where}.faults[{j}].kind: unknown fault {fault.kind!r}")
            if fault.kind in VALUE_FAULTS and fault.channel not in names:
                raise ValueError(f"{where}.faults[{j}].channel: {fault.kind} needs one of {sorted(names)}")
            if fault.length < 1 or fault.at < 0:
                raise ValueError(f"{where}.faults[{j}]: at must be >= 0 and length >= 1")
            faults.append(fault)
        known = {"id", "kind", "rate_hz", "channels", "faults"}
        rate = float(s.get("rate_hz", 1.0))
        if rate <= 0:
            raise ValueError(f"{where}.rate_hz: must be positive")
        sensors.append(SensorSpec(str(s["id"]), kind, rate, tuple(channels), tuple(faults),
                                  {k: v for k, v in s.items() if k not in known}))
    return Scenario(int(doc.get("seed", 1)), tuple(sensors), int(doc.get("count", 0)), doc.get("t0"))


def loads(text: str) -> Scenario:
    return from_dict(yaml.safe_load(text))


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
        out[ch.name] = np.round(v, ch.signal.decimals)
    return out


def ground_truth(scenario: Scenario, t0: float) -> list[dict]:
    """One record per (sensor, channel, sample) a fault touched, in sensor and index order."""
    rows = []
    for s in scenario.sensors:
        for f in s.faults:
            chans = [f.channel] if f.kind in VALUE_FAULTS else [c.name for c in s.channels]
            for k in range(f.at, f.at + f.length):
                for c in chans:
                    rows.append({"sensor": s.id, "channel": c, "index": k,
                                 "ts": round(t0 + k * s.interval_s, 6), "fault": f.kind})
    rows.sort(key=lambda r: (r["sensor"], r["index"], r["channel"]))
    return rows


def write_ground_truth(path: str, scenario: Scenario, t0: float) -> int:
    """Write the ground truth as JSON lines; returns the number of rows."""
    rows = ground_truth(scenario, t0)
    with open(path, "w", encoding="utf-8") as fh:
        for r in rows:
            fh.write(json.dumps(r, separators=(",", ":")) + "\n")
    return len(rows)
