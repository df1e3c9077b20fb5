"""Data reduction and detection on the demo city block, through the gateway's own analytics stage.

The scenario of ``make demo`` (simulators/scenarios/city_block.yaml) is replayed
in simulated time through :class:`edge_gateway.pipeline.Pipeline` with the
analytics settings of ``configs/demo.yaml``: the same kernels, windows and
detector the daemon runs, fed the readings the drivers would deliver (samples
lost to dropouts, corrupt frames and disconnects never arrive). Faults are moved
``--warmup`` samples in (default: a day and an hour), so detectors start from
learned state, as they do after a checkpoint restore; only the hour after it is
measured.

Prints one JSON object:
- ``published_bytes_per_hour``: MQTT PUBLISH bytes (fixed header, topic,
  packet id, msgpack payload) of every aggregate and event;
- ``raw_bytes_per_hour``: the same for a gateway that forwards every reading as
  one message ``{gw, seq, sensor, channel, unit, ts, value}``;
- ``kept_at_edge``: 1 - published / raw;
- ``faults``, ``faults_reported``, ``missed``: injected value and delivery
  faults of the ground truth, and which got an overlapping event (corrupt frames
  are counted by the drivers, not reported as events, so they are listed apart);
  ``detection_delay_s``: per reported fault, the start of the first event at or
  after the fault's start minus that start (negative: only an event already open
  overlaps it). An event is announced when it opens and published again when
  it closes, ``event_close_after`` readings after its last alarm; both count in
  the published bytes. ``reported_after_s``: the same, to the end of the batch
  (``gateway.batch_interval_s``) whose messages first told of that event, and
  ``closed_after_s`` to the end of the batch that closed it (null: still open);
- ``clean_events_per_hour``: events on the fault-free stretch between a full
  day of learning and the first fault (``clean_hours`` long: 1 h by default, a
  longer ``--warmup`` measures more), the false alarms an operator would see.

Usage: .venv/bin/python bench/reduction.py [--hours 1] [--warmup 90000] [--window S] [--config FILE]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path

import msgpack

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from edge_gateway import config, messages  # noqa: E402
from edge_gateway.batcher import Batcher  # noqa: E402
from edge_gateway.pipeline import Pipeline  # noqa: E402
from edge_gateway.readings import Reading  # noqa: E402
from simulators import scenario as sc  # noqa: E402

T0 = 1_700_000_000.0
SLACK_S = 15.0
SEQ0 = 1_800_000_000_000  # a gateway's first seq is the clock in ms (a new queue file)


def mqtt_bytes(topic: str, payload: bytes) -> int:
    body = 2 + len(topic.encode()) + 2 + len(payload)
    return 1 + (1 if body < 128 else 2 if body < 16384 else 3) + body


def readings(scen: sc.Scenario, count: int) -> list[Reading]:
    out = []
    for s in scen.sensors:
        vals = sc.values(s, scen.seed, T0, 0, count)
        units = {c.name: c.unit for c in s.channels}
        for k in range(count):
            if s.delivery(k) != "ok":
                continue
            ts = T0 + k * s.interval_s
            out += [Reading(s.id, name, float(v[k]), ts, units[name]) for name, v in vals.items()]
    out.sort(key=lambda r: r.ts)
    return out


def anomaly_events(out: list, sent: list[float], last_ts: float) -> list[dict]:
    """One record per anomaly event: its closed message, or for one still open at the end of the stream
    its open message ending at ``last_ts``; ``reported`` is when its first message (open or closed) was sent."""
    def key(e: dict) -> tuple:  # what pairs an event's open and closed messages
        return e["sensor"], e["channel"], e["start"]

    ev = [(m.fields, t) for m, t in zip(out, sent) if m.kind == messages.KIND_EVENT]
    first: dict[tuple, float] = {}
    for e, t in ev:
        first.setdefault(key(e), t)
    closed = [{**e, "reported": first[key(e)], "closed": t} for e, t in ev if e["state"] == "closed"]
    done = {key(e) for e in closed}
    still = [{**e, "end": last_ts, "reported": t, "closed": None} for e, t in ev
             if e["state"] == "open" and key(e) not in done]
    return closed + still


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--hours", type=float, default=1.0)
    ap.add_argument("--warmup", type=int, default=90000, help="samples before the first fault (a day of learning)")
    ap.add_argument("--verbose", action="store_true", help="list the events on stderr")
    ap.add_argument("--window", type=float, default=0.0, help="window length in s (default: the demo config's)")
    ap.add_argument("--config", default=str(REPO / "configs" / "demo.yaml"),
                    help="gateway config whose windows and detector settings are measured")
    args = ap.parse_args()
    os.environ.setdefault("EG_STATE_DIR", "/tmp/eg-reduction")
    cfg = config.load(args.config)
    if args.window:
        cfg = dataclasses.replace(cfg, windows=dataclasses.replace(cfg.windows, seconds=args.window))
    scen = sc.load(str(REPO / "simulators" / "scenarios" / "city_block.yaml"))
    scen = dataclasses.replace(scen, sensors=tuple(
        dataclasses.replace(s, faults=tuple(dataclasses.replace(f, at=f.at + args.warmup) for f in s.faults))
        for s in scen.sensors))
    rate = max(s.rate_hz for s in scen.sensors)
    count = int(args.warmup + args.hours * 3600 * rate)
    stream = readings(scen, count)
    topics = messages.Topics(cfg.gateway.topic_prefix, cfg.gateway.id)
    batcher = Batcher()
    i, t = 0, T0
    pipe = Pipeline(cfg, topics, batcher, wall_clock=lambda: t)  # the gateway's clock runs in stream time
    out: list[messages.Message] = []
    sent: list[float] = []  # the stream time each message was produced at (the end of its batch)
    step = cfg.gateway.batch_interval_s
    while i < len(stream):
        t += step
        while i < len(stream) and stream[i].ts < t:
            batcher.add(stream[i])
            i += 1
        new = pipe.process(batcher.drain(), now=t)
        out += new
        sent += [t] * len(new)
    new = pipe.process(batcher.drain(), now=t + 3600)
    out += new
    sent += [t + 3600] * len(new)

    measured_from = T0 + args.warmup / rate
    span_h = (stream[-1].ts - measured_from) / 3600
    seq = SEQ0  # a gateway's new queue numbers from the clock in ms: a 9-byte msgpack int on the wire
    published = 0
    for m in out:
        seq += 1
        if m.kind == messages.KIND_AGG and m.fields["start"] < measured_from:
            continue
        if m.kind == messages.KIND_EVENT and m.fields.get("start", measured_from) < measured_from:
            continue
        published += mqtt_bytes(m.topic, messages.encode(m.fields, seq))
    raw = 0
    for n, r in enumerate(stream):
        if r.ts < measured_from:
            continue
        payload = msgpack.packb({"gw": cfg.gateway.id, "seq": SEQ0 + n, "sensor": r.sensor, "channel": r.channel,
                                 "unit": r.unit, "ts": r.ts, "value": r.value})
        raw += mqtt_bytes(f"{topics.base}/raw/{r.sensor}", payload)

    anomalies = anomaly_events(out, sent, stream[-1].ts)
    events = [e for e in anomalies if e["end"] >= measured_from]
    learned_from = T0 + 86400.0
    clean_h = max(measured_from - learned_from, 0.0) / 3600
    clean = [e for e in anomalies if learned_from <= e["start"] and e["end"] < measured_from]
    faults, missed, counted_only = [], [], []
    delays: dict[str, float] = {}
    reported: dict[str, float] = {}
    closed_at: dict[str, float | None] = {}
    for s in scen.sensors:
        for f in s.faults:
            start = T0 + f.at * s.interval_s
            end = T0 + (f.at + f.length) * s.interval_s
            name = f"{s.id}/{f.channel or '*'}/{f.kind}@{f.at - args.warmup}"
            if f.kind == "corrupt":
                counted_only.append(name)
                continue
            faults.append(name)
            hit = [e for e in events if e["sensor"] == s.id and (not f.channel or e.get("channel") == f.channel)
                   and e["start"] <= end + SLACK_S and e["end"] >= start]
            if not hit:
                missed.append(name)
            else:  # the first event that the fault opened, else the one already open when it began
                after = [e for e in hit if e["start"] >= start]
                first = min(after or hit, key=lambda e: e["start"])
                delays[name] = round(first["start"] - start, 3)
                reported[name] = round(first["reported"] - start, 3)
                closed_at[name] = None if first["closed"] is None else round(first["closed"] - start, 3)
    fp = [e for e in events if not any(
        e["sensor"] == s.id and e["start"] <= T0 + (f.at + f.length) * s.interval_s + SLACK_S
        and e["end"] >= T0 + f.at * s.interval_s for s in scen.sensors for f in s.faults)]
    result = {
        "hours": round(span_h, 3),
        "readings_per_hour": round(sum(r.ts >= measured_from for r in stream) / span_h),
        "published_bytes_per_hour": round(published / span_h),
        "raw_bytes_per_hour": round(raw / span_h),
        "kept_at_edge": round(1 - published / raw, 4),
        "aggregates_per_hour": round(sum(m.kind == messages.KIND_AGG for m in out) / (span_h + args.warmup / rate / 3600)),
        "events": len(events),
        "events_outside_faults": len(fp),
        "outside_by_detector": {d: sum(e["detector"] == d for e in fp) for d in sorted({e["detector"] for e in fp})},
        "outside_by_sensor": {x: sum(e["sensor"] == x for e in fp) for x in sorted({e["sensor"] for e in fp})},
        "faults": len(faults),
        "faults_reported": len(faults) - len(missed),
        "missed": missed,
        "counted_not_evented": counted_only,
        "detection_delay_s": delays,
        "reported_after_s": reported,
        "closed_after_s": closed_at,
        "clean_hours": round(clean_h, 3),
        "clean_events_per_hour": round(len(clean) / clean_h, 2) if clean_h else None,
        "clean_by_detector": {d: sum(e["detector"] == d for e in clean)
                              for d in sorted({e["detector"] for e in clean})},
        "window_s": cfg.windows.seconds,
    }
    if args.verbose:
        for e in events:
            print(json.dumps({k: e[k] for k in ("sensor", "channel", "detector", "start", "end", "peak_score")}),
                  file=sys.stderr)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
