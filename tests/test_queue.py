"""DurableQueue: append/peek/ack, seq across reopen, rollup math, drop policy, file cap, age bound."""

from __future__ import annotations

import math
import sqlite3

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_gateway import messages
from edge_gateway.messages import Message, Topics, decode, encode, merge_aggregates, merged_seqs
from edge_gateway.queue import DurableQueue, QueueLimits
from support import Clock

TOPICS = Topics("city", "q-gw")



def agg(sensor: str, channel: str, start: float, vals: list[float], width: float = 1.0) -> Message:
    a = np.array(vals)
    return Message(messages.KIND_AGG, TOPICS.agg(sensor), {
        "gw": "q-gw", "sensor": sensor, "channel": channel, "unit": "u", "start": start, "end": start + width,
        "count": len(vals), "min": float(a.min()), "max": float(a.max()), "mean": float(a.mean()),
        "std": float(a.std()), "first": vals[0], "last": vals[-1]})


def ev(kind: str, i: int) -> Message:
    return messages.event(TOPICS, "q-gw", "air-1", kind, start=float(i), end=float(i), note="x" * 40)


async def open_queue(path, limits=None, clock=None) -> DurableQueue:
    q = DurableQueue(path, encode, clock or Clock(), limits)
    await q.open()
    return q


def rows_of(path) -> list[dict]:
    db = sqlite3.connect(path)
    try:
        return [decode(p) for (p,) in db.execute("SELECT payload FROM outbox ORDER BY seq")]
    finally:
        db.close()


async def test_append_peek_ack_and_seq_across_reopen(tmp_path):
    path = tmp_path / "q.db"
    q = await open_queue(path)
    assert await q.append([agg("a", "x", i, [1.0, 2.0]) for i in range(5)]) == [1, 2, 3, 4, 5]
    rows = await q.peek(0, 3)
    assert [r.seq for r in rows] == [1, 2, 3] and decode(rows[0].payload)["seq"] == 1
    assert [r.seq for r in await q.peek(3, 10)] == [4, 5]
    await q.ack([1, 2, 3, 4, 5])
    st_ = await q.stats()
    assert (st_.depth, st_.bytes, st_.oldest_created, st_.last_seq) == (0, 0, None, 5)
    await q.close()
    q = await open_queue(path)  # drained empty: seq still continues
    assert q.last_seq == 5
    assert await q.append([ev("link_gap", 1)]) == [6]
    assert q.oldest_age() == 0.0 and q.depth == 1
    await q.close()


async def test_rollup_merges_oldest_aggregates_exactly(tmp_path):
    # Values are multiples of 1/8 so every sum is exact in binary floating point.
    rng = np.random.default_rng(5)
    raw = {(ch, w): list(rng.integers(0, 800, size=8) / 8) for ch in ("pm25", "pm10") for w in range(40)}
    msgs = [agg("air-1", ch, float(w), raw[ch, w]) for w in range(40) for ch in ("pm25", "pm10")]
    one = len(encode(msgs[0].fields, 10))
    limits = QueueLimits(max_bytes=max(4096, one * 60), high_water=0.5, rollup_factor=10)
    q = await open_queue(tmp_path / "q.db", limits)
    seqs = await q.append(msgs)
    st_ = await q.stats()
    assert st_.rolled_up > 0 and st_.dropped_total["count"] == 0 and st_.bytes <= limits.high_water * limits.max_bytes
    got = rows_of(tmp_path / "q.db")
    assert st_.depth == len(got) < len(msgs)
    covered = sorted(s for d in got for s in (d.get("merged_seqs") or [d["seq"]]))
    assert covered == seqs  # nothing lost: every original seq is in exactly one message
    merged = [d for d in got if "merged_seqs" in d]
    assert merged
    for d in merged:
        assert d["seq"] == d["merged_seqs"][0] and d["seq_last"] == d["merged_seqs"][-1]
        windows = range(int(d["start"]), int(d["end"]))
        vals = [v for w in windows for v in raw[d["channel"], w]]
        assert int(d["end"] - d["start"]) == len(d["merged_seqs"]) and d["start"] % 10 == 0
        assert (d["count"], d["min"], d["max"]) == (len(vals), min(vals), max(vals))
        assert d["mean"] == sum(vals) / len(vals)
        assert math.isclose(d["std"], float(np.std(vals)), rel_tol=1e-12)
        assert d["first"] == raw[d["channel"], windows[0]][0] and d["last"] == raw[d["channel"], windows[-1]][-1]
    await q.close()


async def test_overlapping_windows_are_never_merged_while_tumbling_ones_are(tmp_path):
    """Windows that overlap without being marked hopping (sent again after a clock rewind) share readings:
    merged, a reading would count twice. The tumbling channel beside them still loses resolution rather
    than data; the overlapping ones are left to the drop policy."""
    vals = [1.0, 2.0, 3.0, 4.0]
    hop = [agg("air-1", "hop", 5.0 * k, vals, width=10.0) for k in range(40)]
    tum = [agg("air-1", "tum", float(k), vals) for k in range(40)]
    one = len(encode(hop[0].fields, 10))
    limits = QueueLimits(max_bytes=max(4096, one * 60), high_water=0.5, rollup_factor=10)
    q = await open_queue(tmp_path / "q.db", limits)
    await q.append([m for pair in zip(hop, tum) for m in pair])
    got = rows_of(tmp_path / "q.db")
    merged = [d for d in got if "merged_seqs" in d]
    assert merged and {d["channel"] for d in merged} == {"tum"}
    assert all(d["count"] == 4 * len(d["merged_seqs"]) for d in merged)
    kept_hop = [d for d in got if d["channel"] == "hop"]
    assert all(d["count"] == 4 and d["end"] - d["start"] == 10.0 for d in kept_hop)
    assert len(kept_hop) == 40  # the tumbling channel's rollup made room enough: nothing dropped
    assert sorted(s for d in got if d["channel"] == "tum" for s in d.get("merged_seqs") or [d["seq"]]) == list(
        range(2, 81, 2))
    st_ = await q.stats()
    assert st_.rolled_up > 0 and st_.dropped_total["count"] == 0
    await q.close()


async def test_hopping_windows_roll_up_to_their_aligned_ones_and_no_reading_counts_twice(tmp_path):
    """10 s windows every 5 s (``hop`` in the message), readings every 2.5 s (value = time): past the high
    water mark the windows starting on a multiple of 10 s are merged and the others, whose readings they
    all hold, are dropped with their seqs listed in the merged message. Before, they were never merged and a
    long outage dropped the oldest whole (and scanned the whole backlog at four levels each check)."""
    readings = np.arange(0.0, 2000.0, 2.5)

    def window(start):
        vals = [float(v) for v in readings[(readings >= start) & (readings < start + 10.0)]]
        return Message(messages.KIND_AGG, TOPICS.agg("air-1"), dict(
            agg("air-1", "pm", start, vals, width=10.0).fields, hop=5.0))

    msgs = [window(5.0 * k) for k in range(0, 398)]  # [0, 10) .. [1985, 1995)
    one = len(encode(msgs[0].fields, 10))
    limits = QueueLimits(max_bytes=max(4096, one * 200), high_water=0.5, rollup_factor=10)
    q = await open_queue(tmp_path / "q.db", limits)
    seqs = await q.append(msgs)
    st_ = await q.stats()
    got = rows_of(tmp_path / "q.db")
    assert st_.dropped_total["count"] == 0 and st_.rolled_up > 0 and len(got) < len(msgs)
    assert sorted(s for d in got for s in merged_seqs(d)) == seqs  # every seq accounted for, once
    rolled = [d for d in got if "seq_last" in d]
    assert rolled and all("hop" not in d for d in rolled)
    for d in rolled:  # the stats of exactly the readings in its span: none counted twice
        vals = readings[(readings >= d["start"]) & (readings < d["end"])]
        assert (d["count"], d["min"], d["max"], d["mean"]) == (vals.size, vals.min(), vals.max(), vals.mean())
        assert d["start"] % 10.0 == 0.0 and d["end"] % 10.0 == 0.0
    assert all(d["hop"] == 5.0 and d["count"] == 4 for d in got if "seq_last" not in d)
    await q.close()


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(st.floats(-1e3, 1e3, allow_nan=False), min_size=1, max_size=12), min_size=2, max_size=8))
def test_merge_aggregates_equals_stats_of_the_union(windows):
    members = [dict(agg("s", "c", float(i), w).fields, seq=10 + i, p50=float(np.median(w)), p95=max(w))
               for i, w in enumerate(windows)]
    m = merge_aggregates(members)
    assert "p50" not in m and "p95" not in m  # quantiles do not combine
    allv = [v for w in windows for v in w]
    assert (m["count"], m["min"], m["max"]) == (len(allv), min(allv), max(allv))
    assert math.isclose(m["mean"], float(np.mean(allv)), rel_tol=1e-9, abs_tol=1e-9)
    assert math.isclose(m["std"], float(np.std(allv)), rel_tol=1e-6, abs_tol=1e-6)
    assert (m["first"], m["last"]) == (windows[0][0], windows[-1][-1])
    assert m["merged_seqs"] == list(range(10, 10 + len(windows))) and m["seq"] == 10
    again = merge_aggregates([m, dict(agg("s", "c", 99.0, [5.0]).fields, seq=99)])  # merging merged ones
    assert again["merged_seqs"] == m["merged_seqs"] + [99] and again["count"] == len(allv) + 1


async def test_drop_policy_aggregates_then_events_then_anomalies(tmp_path):
    path = tmp_path / "q.db"
    limits = QueueLimits(max_bytes=4096, high_water=1.0, rollup_factor=2)  # windows 1000 s apart: no rollup
    q = await open_queue(path, limits)
    # distinct channels/windows far apart: nothing can be rolled up
    first = await q.append([ev("anomaly", 0), ev("link_gap", 1)] +
                           [agg("a", f"c{i}", i * 1000.0, [1.0]) for i in range(10)])
    assert q.stats_now().dropped_total["count"] == 0
    n_agg = 0
    while q.bytes + 200 <= limits.max_bytes:
        await q.append([agg("a", "cx", 1e6 + n_agg * 1000.0, [float(n_agg)])])
        n_agg += 1
    await q.append([ev("anomaly", 2) for _ in range(3)])
    st_ = q.stats_now()
    assert st_.bytes <= limits.max_bytes
    left = rows_of(path)
    kinds = [(d.get("type") or "agg") for d in left]
    assert kinds.count("anomaly") == 4 and kinds.count("link_gap") == 1  # events kept, oldest aggs gone
    assert 1 in [d["seq"] for d in left] and first[2] not in [d["seq"] for d in left]
    d = st_.dropped_total
    assert d["count"] == d["agg"] > 0 and d["event"] == d["anomaly"] == 0 and d["reasons"] == {"max_bytes": d["count"]}
    assert d["first_seq"] == first[2]
    # more anomalies than fit: now the link_gap goes, then the oldest anomalies
    await q.append([ev("anomaly", 10 + i) for i in range(60)])
    left = rows_of(path)
    assert all(x.get("type") == "anomaly" for x in left) and left[-1]["start"] == 69.0
    total = q.stats_now().dropped_total
    assert total["event"] == 1 and total["anomaly"] > 0
    expected = total["count"]
    assert q.depth + expected == len(first) + n_agg + 3 + 60
    await q.close()
    # the count survives a restart and is reported once, exactly, in a `dropped` event
    q = await open_queue(path, limits)
    assert q.stats_now().dropped_pending == expected
    seq = await q.take_dropped(lambda c: messages.dropped_event(TOPICS, "q-gw", c))
    assert seq == q.last_seq and await q.take_dropped(lambda c: None) is None
    rep = decode((await q.peek(seq - 1, 1))[0].payload)
    assert rep["type"] == "dropped" and rep["count"] == expected and rep["seq"] == seq
    await q.close()


async def test_in_flight_rows_are_never_rolled_up_or_dropped(tmp_path):
    limits = QueueLimits(max_bytes=4096, high_water=0.5, rollup_factor=10)
    q = await open_queue(tmp_path / "q.db", limits)
    await q.append([agg("a", "c", float(i), [1.0, 2.0]) for i in range(5)])
    handed = await q.peek(0, 5)  # the forwarder has published these
    for k in range(60):
        await q.append([agg("a", "c", 5.0 + k, [3.0])])
    left = {d["seq"]: d for d in rows_of(tmp_path / "q.db")}
    for r in handed:
        assert r.seq in left and "merged_seqs" not in left[r.seq] and left[r.seq]["count"] == 2
    await q.close()


async def test_file_cap_full_disk_keeps_queue_working(tmp_path, caplog):
    path = tmp_path / "q.db"
    limits = QueueLimits(max_bytes=64 * 1024 * 1024, max_file_bytes=96 * 1024, reserve_bytes=0)
    q = await open_queue(path, limits)
    stored = 0
    for k in range(400):
        stored += len(await q.append([agg("a", f"c{k}", k * 1000.0 + j, [float(j)]) for j in range(10)]))
    st_ = q.stats_now()
    assert st_.dropped_total["count"] > 0 and st_.dropped_total["reasons"].get("disk_full")
    assert q.depth + st_.dropped_total["count"] == 4000 and stored == 4000
    assert "queue full" in caplog.text
    await q.ack([r.seq for r in await q.peek(0, 100)])  # deletes still work at the cap
    assert len(await q.append([ev("anomaly", 1)])) == 1
    await q.close()
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0] == q.depth
    db.close()
    assert path.stat().st_size <= 96 * 1024 + 4096


async def test_max_age_drops_expired(tmp_path):
    clock = Clock()
    q = await open_queue(tmp_path / "q.db", QueueLimits(max_age_s=100.0), clock)
    await q.append([agg("a", "c", 0.0, [1.0]), ev("anomaly", 0)])
    clock.t += 50
    await q.append([agg("a", "c", 1.0, [1.0])])
    assert q.oldest_age() == 50.0
    clock.t += 60
    await q.append([agg("a", "c", 2.0, [1.0])])
    st_ = q.stats_now()
    assert st_.depth == 2 and st_.dropped_total["reasons"] == {"max_age": 2} and st_.dropped_total["anomaly"] == 1
    assert q.oldest_age() == 60.0
    await q.close()


# --- flash writes (docs/uplink.md "Flash writes") ---------------------------------------------------

def wal_commits(path) -> int:
    """Commit frames in the WAL file: one per committed write transaction since the last reset."""
    import struct
    data = (path.parent / (path.name + "-wal")).read_bytes()
    if len(data) < 32:
        return 0
    page = struct.unpack(">I", data[8:12])[0]
    n, off = 0, 32
    while off + 24 + page <= len(data):
        n += struct.unpack(">I", data[off + 4:off + 8])[0] != 0
        off += 24 + page
    return n


async def test_deferred_acks_leave_at_once_and_are_deleted_with_the_next_append(tmp_path):
    path = tmp_path / "q.db"
    q = await open_queue(path)
    await q.append([agg("a", "x", i, [1.0]) for i in range(4)])
    c0 = wal_commits(path)
    await q.ack([1, 2], defer=True)
    assert wal_commits(path) == c0  # no commit of their own
    assert q.depth == 2 and q.deferred == 2 and [r.seq for r in await q.peek(0, 10)] == [3, 4]
    assert len(rows_of(path)) == 4  # still on disk: a crash now only sends 1 and 2 again
    await q.append([agg("a", "x", 9, [1.0])])
    assert wal_commits(path) == c0 + 1 and q.deferred == 0
    assert [r["seq"] for r in rows_of(path)] == [3, 4, 5]
    await q.ack([3, 4, 5], defer=True)
    await q.close()  # close deletes what is still deferred
    assert rows_of(path) == []
    q = await open_queue(path)
    assert q.last_seq == 5 and q.depth == 0
    await q.close()


async def test_deferred_acks_are_bounded_by_rows_and_age(tmp_path):
    q = await open_queue(tmp_path / "q.db")
    q.ack_defer_rows = 3
    await q.append([agg("a", "x", i, [1.0]) for i in range(5)])
    await q.ack([1, 2], defer=True)
    assert q.deferred == 2
    await q.ack([3], defer=True)  # the third row: deleted now, one transaction
    assert q.deferred == 0 and len(rows_of(tmp_path / "q.db")) == 2
    q.ack_defer_s = 0.0
    await q.ack([4], defer=True)  # waited long enough
    assert q.deferred == 0 and len(rows_of(tmp_path / "q.db")) == 1
    await q.close()


async def test_checkpoint_goes_with_the_next_append_and_unchanged_is_not_rewritten(tmp_path):
    path = tmp_path / "q.db"
    q = await open_queue(path)
    await q.append([agg("a", "x", 0, [1.0])])
    c0 = wal_commits(path)
    await q.save_checkpoint("analytics", b"state-1")
    assert wal_commits(path) == c0 and await q.load_checkpoint("analytics") == b"state-1"
    await q.append([agg("a", "x", 1, [1.0])])
    assert wal_commits(path) == c0 + 1  # checkpoint and messages in one transaction
    await q.save_checkpoint("analytics", b"state-1")  # unchanged: nothing to write, nothing pending
    await q.append([agg("a", "x", 2, [1.0])])
    await q.save_checkpoint("analytics", b"state-2")
    await q.save_checkpoint("analytics", b"state-3")  # the previous one still waits: written now
    assert wal_commits(path) == c0 + 3
    await q.save_checkpoint("analytics", b"state-4")
    await q.close()  # close writes the pending one
    q = await open_queue(path)
    assert await q.load_checkpoint("analytics") == b"state-4"
    await q.close()


async def test_old_file_meta_is_migrated_and_seq_kept(tmp_path):
    path = tmp_path / "q.db"
    db = sqlite3.connect(path)
    db.executescript("CREATE TABLE meta (key TEXT PRIMARY KEY, value);"
                     "INSERT INTO meta VALUES ('last_seq', 41);")
    db.close()
    q = await open_queue(path)
    assert await q.append([ev("link_gap", 1)]) == [42]
    await q.close()
    db = sqlite3.connect(path)
    sql = db.execute("SELECT sql FROM sqlite_master WHERE name='meta'").fetchone()[0]
    assert "WITHOUT ROWID" in sql and db.execute("SELECT value FROM meta WHERE key='last_seq'").fetchone()[0] == 42
    db.close()


async def test_a_full_disk_holds_the_drop_report_back_without_raising(tmp_path):
    limits = QueueLimits(max_bytes=1 << 20, max_file_bytes=48 * 1024, reserve_bytes=0)
    q = await open_queue(tmp_path / "q.db", limits)
    stored = 0
    for i in range(2000):  # every row handed to the link: nothing may be dropped to make room
        seqs = await q.append([ev("anomaly", i)])
        await q.peek(0, 10**6)
        if not seqs:
            break
        stored += 1
    assert q.full and q.stats_now().dropped_pending == 1 and q.depth == stored
    make = lambda c: messages.dropped_event(TOPICS, "q-gw", c)  # noqa: E731
    assert await q.take_dropped(make) is None
    assert q.stats_now().dropped_pending == 1 and q.last_seq == stored
    await q.ack(list(range(1, 101)))
    seq = await q.take_dropped(make)
    assert seq == stored + 1 and decode((await q.peek(seq - 1, 1))[0].payload)["count"] == 1
    await q.close()


async def test_a_dropped_report_that_is_dropped_is_counted_as_a_gap(tmp_path):
    q = await open_queue(tmp_path / "q.db", QueueLimits(max_bytes=4096, reserve_bytes=0))
    make = lambda c: messages.dropped_event(TOPICS, "q-gw", c)  # noqa: E731
    for _ in range(3):
        for i in range(40):
            await q.append([ev("anomaly", i)])
        await q.take_dropped(make)
    await q.take_dropped(make)
    rows = [decode(r.payload) for r in await q.peek(0, 10**6)]
    present = {d["seq"] for d in rows}
    missing = [s for s in range(1, q.last_seq + 1) if s not in present]
    reports = [d for d in rows if d.get("type") == "dropped"]
    assert missing and sum(d["count"] for d in reports) == len(missing)
    await q.close()


async def test_a_rolled_up_aggregate_holds_at_most_max_merged_windows(tmp_path, monkeypatch):
    from edge_gateway import queue as queue_mod

    monkeypatch.setattr(queue_mod, "MAX_MERGED", 8)
    limits = QueueLimits(max_bytes=16 * 1024, high_water=0.25, rollup_factor=10)
    q = await open_queue(tmp_path / "q.db", limits)
    seqs = []
    for k in range(40):
        seqs += await q.append([agg("a", "c", float(50 * k + j), [1.0]) for j in range(50)])
    got = rows_of(tmp_path / "q.db")
    members = [d.get("merged_seqs") or [d["seq"]] for d in got]
    assert max(len(m) for m in members) == 8
    dropped = q.stats_now().dropped_total
    assert dropped["count"] > 0 and len(seqs) == 2000
    assert sum(len(m) for m in members) + dropped["count"] == 2000
    await q.close()


async def test_a_corrupt_queue_file_is_moved_aside_and_a_new_one_started(tmp_path, caplog):
    path = tmp_path / "q.db"
    q = await open_queue(path)
    await q.append([ev("anomaly", i) for i in range(5)])
    await q.close()
    path.write_bytes(b"\x00garbage" * 1024)
    clock = Clock(4_000_000_000.0)  # above the temporary files' real mtimes, which also floor the seq
    q = await open_queue(path, clock=clock)
    moved = list(tmp_path.glob("q.db.corrupt-*"))
    assert [p.name for p in moved if not p.name.endswith(("-wal", "-shm"))] == [q.recovered_from.split("/")[-1]]
    assert q.depth == 0 and "is corrupt" in caplog.text
    assert await q.append([ev("anomaly", 9)]) == [4_000_000_000_001]
    await q.close()
    q = await open_queue(path, clock=clock)
    assert q.recovered_from == "" and q.last_seq == 4_000_000_000_001
    await q.close()


async def test_rows_handed_out_before_a_crash_stay_protected_after_it(tmp_path):
    """An acknowledged row outlives a crash (deferred delete): a rollup after the restart must not put
    its seq, which the cloud already has, on windows the cloud has not seen."""
    path = tmp_path / "q.db"
    limits = QueueLimits(max_bytes=4096, high_water=0.5, rollup_factor=10)
    q = await open_queue(path, QueueLimits(max_bytes=1 << 20))
    await q.append([agg("a", "c", float(i), [1.0, 2.0]) for i in range(5)])
    handed = [r.seq for r in await q.peek(0, 5)]
    await q.append([agg("a", "c", 5.0, [3.0])])  # the next tick's append carries the mark
    await q.ack(handed, defer=True)  # PUBACKs in: the deletes wait for the next append
    q._db.close()  # a crash: nothing else is written
    q._db = None
    q._pool.shutdown(wait=True)
    q = await open_queue(path, limits)
    for k in range(60):
        await q.append([agg("a", "c", 6.0 + k, [3.0])])
    left = {d["seq"]: d for d in rows_of(path)}
    assert q.stats_now().rolled_up > 0
    assert all(left[seq]["count"] == 2 and "merged_seqs" not in left[seq] for seq in handed)
    assert all(s > 5 for d in left.values() for s in d.get("merged_seqs", []))
    await q.close()
