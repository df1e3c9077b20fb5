"""Clocks that are wrong at the source: a gateway behind its nodes, a node whose clock is corrected
backwards, a Pi that boots at 1970 with a corrupt queue file or a backlog stamped before NTP.

Review 16 (time), items 4, 6, 7 and 8: each test failed on the code the review read.
"""

from __future__ import annotations

import logging
import os
import sqlite3

import numpy as np
from driver_fixtures import running, wait_until

from drivers import senml
from drivers.coap import CoapDriver, CoapOptions, CoapResource
from edge_gateway import config, messages
from edge_gateway.batcher import Batch, Batcher, FutureFilter
from edge_gateway.pipeline import Pipeline
from edge_gateway.queue import DurableQueue, QueueLimits
from edge_gateway.readings import Reading
from simulators.coap_node import CoapNode
from support import Clock

T = 1_750_000_000.0
DAY = 86400.0
TOPICS = messages.Topics("city", "c-gw")
CFG = config.loads("""
gateway: {id: c-gw}
windows: {seconds: 60, grace_s: 2}
""")



def one_batch(ts: list[float], chan: list[int] | None = None) -> Batch:
    chan = [0] * len(ts) if chan is None else chan
    return Batch(np.array(chan, dtype=np.int64), np.array(ts, dtype=np.float64), np.ones(len(ts)))


# --- item 6: FutureFilter and a node that reports every 15 min -------------------------------------


def test_a_node_reporting_every_15_min_overrules_a_gateway_clock_3_h_behind():
    """Channel 0 stamps the right time; channel 1 stamps a day further ahead at each reading (no
    consistent offset): only channel 0's first two readings are dropped."""
    f = FutureFilter(600.0)
    kept: list[tuple[int, float]] = []
    for k in range(24):
        t = T + 900.0 * k
        b = f.admit(one_batch([t, t + DAY * (k + 1)], [0, 1]), now=t - 3 * 3600.0)
        kept += list(zip(b.chan.tolist(), b.ts.tolist()))
    assert kept == [(0, T + 900.0 * k) for k in range(2, 24)]
    assert f.dropped.tolist() == [2.0, 24.0]


def test_a_restart_in_the_middle_of_a_slow_run_keeps_it():
    """The pipeline, 2 readings dropped, a restart from the checkpoint, then the third passes."""
    clock = Clock(T - 3 * 3600.0)
    batcher = Batcher()
    pipe = Pipeline(CFG, TOPICS, batcher, wall_clock=clock)
    for k in range(2):
        batcher.add(Reading("meter", "flow", 1.0, T + 900.0 * k, "l"))
        pipe.process(batcher.drain(), clock())
        clock.t += 900.0
    batcher = Batcher()
    resumed = Pipeline(CFG, TOPICS, batcher, wall_clock=clock)
    assert resumed.restore(pipe.checkpoint()) == 1
    for k in range(2, 24):
        batcher.add(Reading("meter", "flow", 1.0, T + 900.0 * k, "l"))
        resumed.process(batcher.drain(), clock())
        clock.t += 900.0
    assert resumed.channel_counters() == {("meter", "flow"): {"late": 0, "future": 2}}


def test_a_checkpoint_that_followed_runs_by_timestamp_restarts_them():
    """``last`` was a timestamp: read as a lead it would be meaningless, so the run starts again."""
    f = FutureFilter(600.0)
    f.load_state({"dropped": np.array([5.0]), "run": np.array([2.0]), "last": np.array([5000.0])})
    kept = [f.admit(one_batch([t]), now=0.0).ts.tolist() for t in (5001.0, 5002.0, 5003.0)]
    assert kept == [[], [], [5003.0]]
    assert f.dropped.tolist() == [7.0]
    assert sorted(f.state()) == ["dropped", "lead", "run"]


# --- item 7: the CoAP driver and a node whose clock is corrected backwards --------------------------

def _pack(*recs: tuple[float, float]) -> bytes:
    return senml.encode_json([{"n": "a", "v": v, "t": t} for t, v in recs])


async def _senml_node(payload: bytes) -> CoapNode:
    node = CoapNode()
    node.add("/t").publish(payload, senml.CT_SENML_JSON)
    await node.start()
    return node


async def test_a_node_clock_corrected_by_two_days_is_published_again_and_logged_once(caplog):
    """Polling: while the node's clock is 2 days ahead and after it is corrected, every poll of an
    unchanged pack is a duplicate and each new sample is published once."""
    caplog.set_level(logging.WARNING, logger="drivers.coap")
    node = await _senml_node(_pack((T + 2 * DAY, 1.0)))
    res = node.resources["/t"]
    out = []
    opts = CoapOptions(uri=node.uri, resources=(CoapResource("/t"),), mode="poll", interval_s=0.05)
    driver = CoapDriver("n", opts, out.append)
    stats = driver.resources["/t"]
    try:
        async with running(driver):
            assert await wait_until(lambda: stats.duplicates >= 2)
            res.publish(_pack((T + 2 * DAY + 60, 2.0)), senml.CT_SENML_JSON)
            assert await wait_until(lambda: len(out) == 2)
            res.publish(_pack((T + 120, 3.0)), senml.CT_SENML_JSON)  # the node's NTP sets it right
            assert await wait_until(lambda: len(out) == 3)
            polls = stats.responses
            assert await wait_until(lambda: stats.responses >= polls + 3)
            res.publish(_pack((T + 180, 4.0)), senml.CT_SENML_JSON)
            assert await wait_until(lambda: len(out) == 4)
    finally:
        await node.stop()
    assert [(r.channel, r.ts, r.value) for r in out] == [
        ("a", T + 2 * DAY, 1.0), ("a", T + 2 * DAY + 60, 2.0), ("a", T + 120, 3.0), ("a", T + 180, 4.0)]
    assert stats.clock_steps == 1
    assert stats.duplicates == stats.responses - 4  # one sample per response: published or a repeat
    assert driver._states["/t"].recent == {"a": frozenset({T + 180})}
    steps = [r.getMessage() for r in caplog.records if "clock went back" in r.getMessage()]
    assert steps == [f"sensor n: {node.uri}/t: the node's clock went back 172740 s; its samples are taken as new"]


async def test_a_node_clock_slewed_back_is_published_and_observe_repeats_are_still_dropped():
    """Observe: a notification 240 s behind the last one is a new sample, not a clock step; a
    registration's pack that holds it again with a new one publishes the new one only."""
    node = await _senml_node(_pack((T + 300, 1.0)))
    res = node.resources["/t"]
    out = []
    opts = CoapOptions(uri=node.uri, resources=(CoapResource("/t"),), observe_timeout_s=0.2)
    driver = CoapDriver("n", opts, out.append)
    stats = driver.resources["/t"]
    try:
        async with running(driver):
            assert await wait_until(lambda: len(out) == 1)
            res.publish(_pack((T + 60, 2.0)), senml.CT_SENML_JSON)
            assert await wait_until(lambda: len(out) == 2)
            res.publish(_pack((T + 60, 2.0), (T + 65, 3.0)), senml.CT_SENML_JSON, notify=False)
            assert await wait_until(lambda: len(out) == 3)
            dups = stats.duplicates
            assert await wait_until(lambda: stats.duplicates == dups + 2 * 2)  # two registrations replay it
    finally:
        await node.stop()
    assert [(r.ts, r.value) for r in out] == [(T + 300, 1.0), (T + 60, 2.0), (T + 65, 3.0)]
    assert stats.clock_steps == 0


# --- item 8: a corrupt queue file on a boot at 1970 -------------------------------------------------

def _event() -> messages.Message:
    return messages.event(TOPICS, "c-gw", "air-1", "link_gap", start=1.0, end=2.0, reason="x")


async def _corrupt_queue(path, newest: str) -> float:
    """A queue of 50 messages, its header destroyed by the power cut; the entry ``newest`` of its
    folder gets the newest mtime. Those mtimes lie past the real clock, which stamps the files the
    test itself makes (as the Pi's own clock, at 1970, would)."""
    q = DurableQueue(path, messages.encode, Clock(T))
    await q.open()
    await q.append([_event()] * 50)
    await q.close()
    with open(path, "r+b") as f:
        f.write(b"\x00garbage" * 16)
    wal = path.with_name(path.name + "-wal")
    wal.write_bytes(b"\x01" * 512)
    other = path.with_name("analytics.ckpt")
    other.write_bytes(b"x")
    stamps = {"file": 4_000_000_000.25, "wal": 4_000_000_000.5, "folder": 4_000_000_001.0}
    for name, p in (("file", path), ("wal", wal), ("folder", other)):
        t = stamps[newest] if name == newest else 3_999_000_000.0
        os.utime(p, (t, t))
    return stamps[newest]


async def test_sequence_numbers_after_a_corrupt_queue_at_1970_continue_above_the_disk_s_times(tmp_path):
    for newest in ("file", "wal", "folder"):
        path = tmp_path / newest / "queue.db"
        path.parent.mkdir()
        mtime = await _corrupt_queue(path, newest)
        q = DurableQueue(path, messages.encode, Clock(3.5))  # boots at 1970-01-01 00:00:03.5
        await q.open()
        assert q.recovered_from
        assert await q.append([_event()]) == [int(mtime * 1000) + 1], newest
        await q.close()


# --- item 4: the backlog queued before NTP, shifted by the step -------------------------------------

def _agg(clock: Clock) -> messages.Message:
    return messages.Message(messages.KIND_AGG, TOPICS.agg("air-1"), {
        "gw": "c-gw", "sensor": "air-1", "channel": "pm25", "unit": "ug/m3", "start": clock.t - 60,
        "end": clock.t, "count": 60, "min": 1.0, "max": 2.0, "mean": 1.5, "std": 0.1, "first": 1.0, "last": 2.0})


def _anomaly(clock: Clock) -> messages.Message:
    return messages.event(TOPICS, "c-gw", "air-1", "anomaly", state="closed", channel="pm25", unit="ug/m3",
                          detector="flatline", start=clock.t - 120, end=clock.t, peak_value=3.0, peak_score=1.0)


async def test_a_backlog_queued_at_1970_survives_the_ntp_step_once_shifted(tmp_path):
    """The review's repro: 3 h offline from 1970-01-01 00:00:40, max_age_s 7 days, then NTP."""
    clock = Clock(40.0)
    q = DurableQueue(tmp_path / "queue.db", messages.encode, clock, QueueLimits(max_age_s=7 * DAY))
    await q.open()
    for minute in range(180):
        clock.t += 60.0
        await q.append([_agg(clock)] + ([_anomaly(clock)] if minute % 60 == 0 else []))
    before = clock.t
    clock.t = T
    assert await q.shift_created(T - before, 0) == 183
    assert q.stats_now().oldest_created == 100.0 + (T - before)
    assert q.oldest_age() == 10740.0
    await q.append([_agg(clock)])
    s = q.stats_now()
    assert (s.depth, s.dropped_total["count"]) == (184, 0)
    await q.close()


async def test_only_rows_after_the_given_seq_are_shifted_and_acknowledged_ones_are_not_counted(tmp_path):
    path = tmp_path / "queue.db"
    clock = Clock(T - 7200.0)
    q = DurableQueue(path, messages.encode, clock)
    await q.open()
    await q.append([_event(), _event()])  # a run with the right clock
    await q.close()
    clock.t = 40.0  # the next boot, at 1970
    q = DurableQueue(path, messages.encode, clock)
    await q.open()
    after = q.last_seq
    for _ in range(3):
        clock.t += 60.0
        await q.append([_event()])
    await q.peek(0, 5)
    await q.ack([3], defer=True)
    clock.t = T
    assert await q.shift_created(T - 220.0, after) == 2
    assert q.deferred == 0
    assert [(r.seq, r.created) for r in await q.peek(0, 10)] == [
        (1, T - 7200.0), (2, T - 7200.0), (4, T - 60.0), (5, T)]
    assert (q.depth, q.oldest_age()) == (4, 7200.0)
    await q.close()


# --- review 16 (uplink) #2: a new queue file under a gateway id that may have sent before -----------

async def test_a_new_queue_of_the_daemon_starts_its_seqs_at_the_clock_in_ms_and_keeps_them(tmp_path):
    """A replaced SD card or a state dir moved away restarted seqs at 1 under the same gateway id: a
    cloud that drops seen seqs (as the docs tell it to) dropped the new data. Only a new, empty file
    is seeded; reopening it continues, and a queue opened without ``seed_seq`` (tests) starts at 1."""
    path = tmp_path / "state" / "queue.db"
    q = DurableQueue(path, messages.encode, Clock(4_000_000_000.0), seed_seq=True)
    await q.open()
    assert await q.append([_event()] * 2) == [4_000_000_000_001, 4_000_000_000_002]
    await q.close()
    q = DurableQueue(path, messages.encode, Clock(4_000_000_100.0), seed_seq=True)
    await q.open()
    assert await q.append([_event()]) == [4_000_000_000_003]  # not seeded again: the file is not new
    await q.close()
    db = sqlite3.connect(path)
    assert dict(db.execute("SELECT key, value FROM meta WHERE key IN ('first_seq', 'last_seq')").fetchall()) == {
        "first_seq": 4_000_000_000_001, "last_seq": 4_000_000_000_003}
    db.close()
    q = DurableQueue(tmp_path / "plain" / "queue.db", messages.encode, Clock(4_000_000_000.0))
    await q.open()
    assert await q.append([_event()]) == [1]
    await q.close()


def test_an_aggregate_never_carries_inf_when_huge_readings_overflow_its_std():
    """Review 16 (uplink) #11: Welford's ``d * (x - mean)`` overflowed for finite readings past ~1e154."""
    pipe = Pipeline(CFG, TOPICS, batcher := Batcher())
    out = []
    for k, v in enumerate([1e300, -1e300, 5.0, 1e300]):
        batcher.add(Reading("air-1", "x", v, T + k, ""))
        out += pipe.process(batcher.drain(), now=float(k))
    batcher.add(Reading("air-1", "x", 1.0, T + 60, ""))
    out += pipe.process(batcher.drain(), now=60.0)
    (agg,) = [m.fields for m in out if m.kind == messages.KIND_AGG]
    assert (agg["count"], agg["min"], agg["max"], agg["first"], agg["last"]) == (4, -1e300, 1e300, 1e300, 1e300)
    assert "std" not in agg and all(np.isfinite(v) for v in agg.values() if isinstance(v, float))
