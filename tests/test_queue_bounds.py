"""Queue bounds over a long outage (review 16, bounds #2, #7, #9): rollups that keep going while the
queue drops, seqs stored as runs, a `full` flag that stays set at the file cap, one quarantined file."""

from __future__ import annotations

import logging
import os
import sqlite3

from edge_gateway import messages
from edge_gateway import queue as queue_mod
from edge_gateway.messages import Message, Topics, decode, encode, merge_aggregates
from edge_gateway.queue import DurableQueue, QueueLimits
from support import Clock

TOPICS = Topics("city", "b-gw")



def agg(channel: str, start: float, width: float = 1.0) -> Message:
    return Message(messages.KIND_AGG, TOPICS.agg("air-1"), {
        "gw": "b-gw", "sensor": "air-1", "channel": channel, "unit": "ug/m3", "start": start, "end": start + width,
        "count": 2, "min": 1.0, "max": 2.0, "mean": 1.5, "std": 0.5, "first": 1.0, "last": 2.0})


async def open_queue(path, limits: QueueLimits, clock=None) -> DurableQueue:
    q = DurableQueue(path, encode, clock or Clock(), limits)
    await q.open()
    return q


def seqs_of(d: dict) -> list[int]:
    """What the cloud reads: every original seq a message stands for (docs/uplink.md, "Rollup")."""
    if "merged_runs" in d:
        return [s for first, last, step in d["merged_runs"] for s in range(first, last + 1, step)]
    return d.get("merged_seqs") or [d["seq"]]


def rows_of(path) -> list[dict]:
    db = sqlite3.connect(path)
    try:
        return [decode(p) for (p,) in db.execute("SELECT payload FROM outbox ORDER BY seq")]
    finally:
        db.close()


# --- #2: roll up, then drop -----------------------------------------------------------------------

def test_a_long_merge_lists_its_seqs_as_runs_and_a_short_one_as_before():
    members = [dict(agg("c", float(i)).fields, seq=1 + 4 * i) for i in range(300)]  # 4 channels interleaved
    m = merge_aggregates(members)
    assert "merged_seqs" not in m and m["merged_runs"] == [[1, 1197, 4]]
    assert (m["seq"], m["seq_last"], m["count"], m["start"], m["end"]) == (1, 1197, 600, 0.0, 300.0)
    more = merge_aggregates([m] + [dict(agg("c", 300.0 + i).fields, seq=1300 + i) for i in range(3)])
    assert more["merged_runs"] == [[1, 1197, 4], [1300, 1302, 1]] and more["count"] == 606
    assert seqs_of(more) == list(range(1, 1198, 4)) + [1300, 1301, 1302]
    short = merge_aggregates(members[:256])
    assert short["merged_seqs"] == list(range(1, 1022, 4)) and "merged_runs" not in short
    odd = [dict(agg("c", float(i)).fields, seq=i * i) for i in range(1, 300)]  # no two equal strides
    assert merge_aggregates(odd)["merged_seqs"] == [i * i for i in range(1, 300)]


async def test_an_outage_longer_than_the_bytes_allow_raw_keeps_every_window_rolled_up(tmp_path):
    """The review's exp8c, scaled down: 4 channels, 1 s windows, 16 KiB. 20,000 windows take 2.5 MB
    raw; with each seq listed (3 bytes here, 5-9 in the field) the rollups stopped shrinking and the
    queue dropped 16,500 of them. As runs, every window fits."""
    path = tmp_path / "q.db"
    q = await open_queue(path, QueueLimits(max_bytes=16 * 1024, reserve_bytes=0, synchronous="normal"))
    seqs = []
    for k in range(500):
        seqs += await q.append([agg(f"c{c}", float(10 * k + j)) for j in range(10) for c in range(4)])
    st = q.stats_now()
    assert st.dropped_total["count"] == 0 and st.bytes <= 0.8 * 16 * 1024
    got = rows_of(path)
    assert sorted(s for d in got for s in seqs_of(d)) == seqs  # every window, each in one message
    for c in range(4):
        mine = [d for d in got if d["channel"] == f"c{c}"]
        assert (min(d["start"] for d in mine), max(d["end"] for d in mine)) == (0.0, 5000.0)
        assert sum(d["count"] for d in mine) == 2 * 5000
    oldest = got[0]  # 3,550 windows in 7 runs of stride 4: 7 x 3 numbers instead of 3,550
    assert "merged_seqs" not in oldest and len(oldest["merged_runs"]) == 7
    assert (oldest["start"], oldest["end"], len(seqs_of(oldest))) == (0.0, 4470.0, 3550)
    assert len(got) == st.depth == 36
    await q.close()


async def test_rollups_go_on_while_the_queue_drops_so_the_oldest_kept_are_coarse(tmp_path, monkeypatch):
    """A rolled-up message holds at most MAX_MERGED windows (8 here), so the drop policy must cut. Each
    append adds less than 5 % of max_bytes: before, the rollup was gated on the backlog growing 5 %
    above its size at the last pass, which max_bytes never lets it, so the rollups stopped for good
    and the queue kept the newest 48 raw windows (24 s). Now it keeps rolling up what comes in: 256
    windows in 8-window messages (128 s)."""
    monkeypatch.setattr(queue_mod, "MAX_MERGED", 8)
    path = tmp_path / "q.db"
    q = await open_queue(path, QueueLimits(max_bytes=8 * 1024, rollup_factor=2, reserve_bytes=0,
                                           synchronous="normal"))
    seqs = []
    at = {}
    for k in range(1000):
        seqs += await q.append([agg(f"c{c}", float(2 * k + j)) for j in range(2) for c in range(2)])
        if k in (600, 999):
            at[k] = q.stats_now()
    st = q.stats_now()
    got = rows_of(path)
    kept = [len(seqs_of(d)) for d in got]
    assert at[600].dropped_total["count"] > 0 and at[999].rolled_up > at[600].rolled_up  # rolling up while dropping
    assert kept == [8] * len(got) and len(got) == 32
    assert sum(kept) + st.dropped_total["count"] == len(seqs) == 4000
    assert (min(d["start"] for d in got), max(d["end"] for d in got)) == (1872.0, 2000.0)
    await q.close()


# --- #7: at the file cap --------------------------------------------------------------------------

async def test_at_the_file_cap_full_stays_set_is_logged_once_and_clears_after_a_calm_while(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="edge_gateway.queue")
    cap = 4 * 1024 * 1024
    path = tmp_path / "q.db"
    q = await open_queue(path, QueueLimits(max_bytes=1 << 30, max_file_bytes=cap, reserve_bytes=0,
                                           synchronous="normal"))
    steady = [0.0]
    q.steady = lambda: steady[0]
    appended = hits = 0
    flags = []
    for k in range(400):
        before = q.stats_now()
        batch = [agg(f"c{k}-{c}", float(k)) for c in range(100)]
        size = sum(len(encode(m.fields, q.last_seq + 1)) for m in batch)
        appended += len(await q.append(batch))
        after = q.stats_now()
        if after.dropped_total.get("count", 0) > before.dropped_total.get("count", 0):
            hits += 1
            assert before.bytes + size - after.bytes >= 0.05 * cap  # a slice of 5 % of the cap at once
        if hits:
            flags.append(q.full)
        steady[0] += 1.0
    dropped = q.stats_now().dropped_total
    assert hits == 20 and flags == [True] * len(flags) and len(flags) == 238  # first hit at the 163rd append
    assert appended == 40_000 and q.depth + dropped["count"] == 40_000
    assert dropped["reasons"] == {"disk_full": dropped["count"]}
    lines = [r for r in caplog.records if r.name == "edge_gateway.queue"]
    assert [r.levelname for r in lines] == ["ERROR"] and lines[0].getMessage().startswith("queue full (file cap")

    caplog.clear()
    steady[0] += queue_mod.FULL_REPORT_S
    await q.append([agg("late", 0.0)])
    assert q.full
    msgs = [r.getMessage() for r in caplog.records if r.name == "edge_gateway.queue"]
    summary = (f"queue still full after {queue_mod.FULL_REPORT_S + 238:.0f} s: 20 inserts hit the cap, "
               f"{dropped['count']} messages dropped (disk_full), 0 of them new ones that could not be stored")
    assert msgs == [summary]

    caplog.clear()
    while q.depth:  # the link is back: the backlog drains
        await q.ack([r.seq for r in await q.peek(0, 5000)])
    await q.append([agg("back", 0.0)])
    assert q.full  # under the cap now, but not for long enough
    steady[0] += queue_mod.FULL_CLEAR_S
    await q.append([agg("back", 1.0)])
    assert not q.full
    msgs = [r.getMessage() for r in caplog.records if r.name == "edge_gateway.queue"]
    cleared = (f"queue no longer full after {238 + queue_mod.FULL_REPORT_S + queue_mod.FULL_CLEAR_S:.0f} s: "
               f"20 inserts hit the cap, {dropped['count']} messages dropped (disk_full), 0 of them new ones "
               "that could not be stored")
    assert msgs == [cleared]
    assert q.stats_now().full is False
    await q.close()


# --- #9: corrupt queue files ----------------------------------------------------------------------

async def test_only_the_newest_quarantined_queue_file_is_kept(tmp_path, caplog):
    path = tmp_path / "queue.db"
    (tmp_path / "analytics.json").write_bytes(b"{}")
    limits = QueueLimits(max_bytes=1 << 20, reserve_bytes=0)
    for round_ in range(3):
        q = await open_queue(path, limits)
        await q.append([agg("c", float(i)) for i in range(50)])
        await q.close()
        if round_ == 0:  # left by corruptions before this version
            for stamp in ("20250101T000000", "20250102T000000"):
                (tmp_path / f"queue.db.corrupt-{stamp}").write_bytes(b"x" * 10_000)
                (tmp_path / f"queue.db.corrupt-{stamp}-wal").write_bytes(b"w" * 5_000)
        path.write_bytes(b"\x00garbage" * 1024)  # a power cut on a failing card
        caplog.clear()
        q = await open_queue(path, limits, Clock(4_000_000_000.0 + round_))
        moved = q.recovered_from
        assert moved and os.path.exists(moved) and q.depth == 0
        left = sorted(p.name for p in tmp_path.iterdir())
        assert [n for n in left if ".corrupt-" in n and not n.endswith(("-wal", "-shm"))] == [os.path.basename(moved)]
        assert [n for n in left if ".corrupt-" not in n] == ["analytics.json", "queue.db", "queue.db-shm",
                                                              "queue.db-wal"]
        removed = [r.getMessage() for r in caplog.records if "older quarantined" in r.getMessage()]
        if round_ == 0:
            assert len(removed) == 1 and removed[0].startswith(
                "queue: deleted 4 older quarantined file(s), 30000 bytes, to keep only " + os.path.basename(moved))
        else:
            assert len(removed) == 1 and removed[0].startswith("queue: deleted 1 older quarantined file(s), 8192 bytes")
        await q.close()
    q = await open_queue(path, limits)  # a clean open keeps the one that is left, and says nothing of it
    assert q.recovered_from == ""
    assert sorted(p.name for p in tmp_path.glob("queue.db.corrupt-*")) == [os.path.basename(moved)]
    await q.close()


async def test_a_clean_open_keeps_only_the_newest_of_earlier_quarantined_files(tmp_path):
    path = tmp_path / "queue.db"
    for i, stamp in enumerate(("20250103T000000", "20250101T000000", "20250102T000000")):
        p = tmp_path / f"queue.db.corrupt-{stamp}"
        p.write_bytes(b"x" * 100)
        (tmp_path / (p.name + "-shm")).write_bytes(b"s")
        os.utime(p, (1_700_000_000 + 10 * i, 1_700_000_000 + 10 * i))
    q = await open_queue(path, QueueLimits(reserve_bytes=0))
    assert sorted(p.name for p in tmp_path.glob("queue.db.corrupt-*")) == [
        "queue.db.corrupt-20250102T000000", "queue.db.corrupt-20250102T000000-shm"]
    assert q.recovered_from == ""
    await q.close()
