"""What the gateway publishes: topics and msgpack payloads (documented in README.md).

Payload fields are plain msgpack maps with short, stable keys. ``seq`` is
added when a message is committed to the durable queue, so it is the number the
cloud uses to drop duplicates and see gaps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import msgpack
import numpy as np

from .analytics.engine import ROW_FIELDS
from .analytics.windows import AGG_FIELDS, window_ends
from .batcher import ChannelKey

KIND_AGG = "agg"
KIND_EVENT = "event"
_AGG_COL = {name: i for i, name in enumerate(AGG_FIELDS)}
_ROW_COL = {name: i for i, name in enumerate(ROW_FIELDS)}


@dataclass(frozen=True)
class Message:
    """A message before it has a sequence number: where it goes and what it says."""

    kind: str
    topic: str
    fields: dict[str, Any]


class Topics:
    def __init__(self, prefix: str, gateway_id: str) -> None:
        self.base = f"{prefix}/{gateway_id}"
        self.status = f"{self.base}/status"

    def agg(self, sensor: str) -> str:
        return f"{self.base}/agg/{sensor}"

    def event(self, sensor: str) -> str:
        return f"{self.base}/event/{sensor}"

    def cmd(self, name: str = "+") -> str:
        return f"{self.base}/cmd/{name}"

    def cmd_res(self, name: str) -> str:
        return f"{self.base}/cmd-res/{name}"


def encode(fields: dict[str, Any], seq: int) -> bytes:
    """The wire payload of a committed message."""
    return msgpack.packb({**fields, "seq": seq}, use_bin_type=True)


def decode(payload: bytes) -> dict[str, Any]:
    """Inverse of :func:`encode`, with size limits for untrusted input."""
    return msgpack.unpackb(payload, raw=False, max_bin_len=1 << 20, max_str_len=1 << 16,
                           max_array_len=1 << 16, max_map_len=1 << 12)


def aggregates(rows: np.ndarray, keys: list[ChannelKey], window_s: float, topics: Topics,
               gateway_id: str, hop_s: float | None = None) -> list[Message]:
    """One message per closed window row (columns :data:`.analytics.engine.ROW_FIELDS`: ``AGG_FIELDS``,
    then ``p50``/``p95``, left out of the message when NaN: a window the quantile state missed part of;
    ``mean``/``std`` left out when they overflowed, so every float sent is finite). ``hop_s``: the rows
    are of hopping windows (``end`` is then ``start + window_s``, on the hop grid)."""
    col = _ROW_COL
    out = []
    for row, end in zip(rows, window_ends(rows[:, _AGG_COL["start"]], window_s, hop_s)):
        key = keys[int(row[0])]
        start = float(row[_AGG_COL["start"]])
        fields = {
            "gw": gateway_id, "sensor": key.sensor, "channel": key.channel, "unit": key.unit,
            "start": start, "end": end, "count": int(row[_AGG_COL["count"]]),
            "min": float(row[_AGG_COL["min"]]), "max": float(row[_AGG_COL["max"]]),
            "mean": float(row[_AGG_COL["mean"]]), "std": float(row[_AGG_COL["std"]]),
            "first": float(row[_AGG_COL["first"]]), "last": float(row[_AGG_COL["last"]]),
        }
        if hop_s is not None:
            fields["hop"] = float(hop_s)  # windows overlap: the cloud must not add their counts up
        p50, p95 = float(row[col["p50"]]), float(row[col["p95"]])
        if not (math.isnan(p50) or math.isnan(p95)):
            fields.update(p50=p50, p95=p95)
        for k in ("mean", "std"):  # overflowed (readings beyond ~1e154): left out, never inf on the wire
            if not math.isfinite(fields[k]):
                del fields[k]
        out.append(Message(KIND_AGG, topics.agg(key.sensor), fields))
    return out


def event(topics: Topics, gateway_id: str, sensor: str, kind: str, **fields: Any) -> Message:
    """An event (``kind`` names it: ``anomaly``, ``link_gap``, ``dropped``...)."""
    return Message(KIND_EVENT, topics.event(sensor), {"gw": gateway_id, "sensor": sensor, "type": kind, **fields})


def merged_seqs(d: dict[str, Any]) -> list[int]:
    """Every original seq a decoded aggregate stands for: ``merged_runs`` expanded, ``merged_seqs``, or its
    own ``seq`` (see :func:`merge_aggregates`)."""
    if d.get("merged_runs"):
        return [s for first, last, step in d["merged_runs"] for s in range(first, last + 1, step)]
    return list(d.get("merged_seqs") or [d["seq"]])


def merge_aggregates(members: list[dict[str, Any]], runs_from: int = 256, covered: tuple = ()) -> dict[str, Any]:
    """Roll decoded aggregates of one sensor/channel up into one coarser window (see docs/uplink.md).

    ``count``/``min``/``max`` are exact, ``mean`` is the count-weighted mean and ``std`` the pooled
    population std; ``first``/``last`` come from the earliest/latest window. The result keeps the
    ``seq`` of its first member, ``seq_last`` is the largest, and every original seq is listed so the
    cloud can tell a rolled-up message from a gap: in ``merged_seqs`` up to ``runs_from`` seqs (the form
    every reader knows), beyond that as ``merged_runs`` (``[first, last, step]``, each standing for
    ``range(first, last + 1, step)``) when shorter. A list costs 5-9 bytes a window, so a long outage's
    rollups would stop shrinking; one channel's seqs have a near-constant stride, so runs stay few.
    ``p50``/``p95`` are dropped: quantiles of the union cannot be computed from the members' quantiles.
    ``covered``: seqs of hopping windows dropped because the members hold every reading they held (see
    ``queue.py``); listed with the members' own, so the cloud sees no gap, and ``hop`` is dropped (the
    result overlaps no other window it stands for).
    """
    ms = sorted(members, key=lambda m: (m["start"], m["seq"]))
    full = [m for m in ms if m.get("count", 0) > 0]
    n = sum(int(m["count"]) for m in full)
    seqs = sorted({s for m in ms for s in merged_seqs(m)} | set(covered))
    out = {k: v for k, v in ms[0].items()
           if k not in ("merged_seqs", "merged_runs", "seq_last", "p50", "p95", "hop")}
    out.update(start=ms[0]["start"], end=max(m["end"] for m in ms), count=n, seq=seqs[0], seq_last=seqs[-1],
               merged_seqs=seqs)
    if len(seqs) > runs_from:
        runs, i = [], 0
        while i < len(seqs):
            j = i + 1 if i + 1 < len(seqs) else i
            step = seqs[j] - seqs[i] or 1
            while j + 1 < len(seqs) and seqs[j + 1] - seqs[j] == step:
                j += 1
            runs.append([seqs[i], seqs[j], step])
            i = j + 1
        if len(msgpack.packb(runs)) < len(msgpack.packb(seqs)):
            del out["merged_seqs"]
            out["merged_runs"] = runs
    if n:
        mean = math.fsum(m["count"] * m["mean"] for m in full) / n
        var = math.fsum(m["count"] * (m["std"] ** 2 + (m["mean"] - mean) ** 2) for m in full) / n
        out.update(min=min(m["min"] for m in full), max=max(m["max"] for m in full), mean=mean,
                   std=math.sqrt(max(var, 0.0)), first=full[0]["first"], last=full[-1]["last"])
    return out


def dropped_event(topics: Topics, gateway_id: str, counts: dict[str, Any]) -> Message:
    """The ``dropped`` event: what the queue discarded since the last report (see docs/uplink.md)."""
    return Message(KIND_EVENT, topics.event("_gateway"), {"gw": gateway_id, "sensor": "_gateway",
                                                          "type": "dropped", **counts})
