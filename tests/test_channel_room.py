"""A sensor that keeps naming new channels gets room from its own silent ones (review 16, bounds #6).

A SenML node can name channels for ever (a node replaced, a serial number in a name). At its cap of
channels a sensor's readings of new ones were refused until a restart, and a restart restored every
old name from the checkpoint, so the refusal lasted for good. Now the channels of that sensor silent
for an hour, with no window or event open, are forgotten, every state table is renumbered without
them, and the checkpoint and marks say which numbering they follow.
"""

from __future__ import annotations

import logging

import numpy as np

from edge_gateway import config, messages
from edge_gateway.batcher import CHANNEL_IDLE_S, Batcher
from edge_gateway.clockwatch import ClockWatch
from edge_gateway.pipeline import Pipeline
from edge_gateway.readings import Reading
from support import Clock

T0 = 1_750_000_000.0  # a multiple of 10: window starts are T0 + 10 k
TOPICS = messages.Topics("city", "gw")
CFG_TEXT = """
windows: {seconds: 10, grace_s: 2}
detector: {params: {weights: [0, 0, 0, 0, 0, 0, 0, 0]}}
"""

B_APART = """
sensors:
  - {id: node, driver: coap, options: {uri: "coap://127.0.0.1", resources: [{path: /n}]}}
detector:
  params: {weights: [0, 0, 0, 0, 0, 0, 0, 0]}
  sensors: {"node/b": {params: {range_hi: 10}}}  # b: scored apart, every reading out of range
"""


def value(channel: str, k: int) -> float:
    return {"a": 1.0, "b": 20.0, "s": 5.0, "c": 300.0, "x": 7.0}[channel] + 0.25 * (k % 4)


def tick(p: Pipeline, b: Batcher, k: int, channels) -> list[messages.Message]:
    """Tick ``k``: one reading of each of ``channels`` stamped ``T0 + k``; the steady clock runs 100 s a tick."""
    for ch in channels:  # s's first reading is stamped a day ahead: the future filter drops it
        ts = T0 + k + (86400.0 if (ch, k) == ("s", 0) else 0.0)
        b.add(Reading("other" if ch == "x" else "node", ch, value(ch, k), ts, "u"))
    return p.process(b.drain(), now=100.0 * k)


def aggregates(out, channel: str) -> list[tuple[float, int, float]]:
    return [(m.fields["start"], m.fields["count"], m.fields["mean"]) for m in out
            if m.kind == messages.KIND_AGG and m.fields["channel"] == channel]


def names(b: Batcher) -> list[str]:
    return [k.channel for k in b.keys]


def test_a_sensor_at_its_cap_forgets_its_silent_channels_and_the_others_keep_their_state(caplog):
    cfg = config.loads("gateway: {id: gw}\nwindows: {seconds: 10, grace_s: 2}\n" + B_APART)
    b = Batcher(max_channels_per_sensor=3)
    p = Pipeline(cfg, TOPICS, b, wall_clock=lambda: T0 + 100)
    out = []
    for k in range(40):  # a and x deliver once, s until tick 5 (steady 500 s), b every tick
        out += tick(p, b, k, (["a", "x"] if k == 0 else []) + ["b"] + (["s"] if k <= 5 else []))
    marks_before = p.take_marks()
    out += tick(p, b, 40, ["b", "c"])  # c: a fourth channel of node
    assert b.refused == {"node": 1} and names(b) == ["a", "x", "b", "s"]

    gone = p.forget_idle({"node"}, now=4000.0, idle_s=CHANNEL_IDLE_S)
    assert [(k.sensor, k.channel) for k in gone] == [("node", "a")]  # s: 3,500 s; x: another sensor
    assert names(b) == ["x", "b", "s"]
    for k in range(41, 60):
        out += tick(p, b, k, ["b", "c"])
    assert names(b) == ["x", "b", "s", "c"]
    assert b.refused == {"node": 1}

    # b's window [T0 + 40, T0 + 50) was open across the renumbering: all 10 of its readings, exactly
    b_means = [float(np.mean([value("b", k) for k in range(s, s + 10)])) for s in range(0, 50, 10)]
    assert aggregates(out, "b") == [(T0 + s, 10, m) for s, m in zip(range(0, 50, 10), b_means)]
    # c starts afresh in the freed row: 9 readings (tick 40's was refused), none of a's
    assert aggregates(out, "c") == [(T0 + 40, 9, float(np.mean([value("c", k) for k in range(41, 50)])))]
    assert [m.fields["start"] for m in out if m.kind == messages.KIND_AGG and m.fields["channel"] == "a"] == [T0]
    none = {"late": 0, "future": 0}
    assert p.channel_counters() == {("other", "x"): none, ("node", "b"): none, ("node", "s"): {"late": 0, "future": 1},
                                    ("node", "c"): none}
    # b kept its detector and its event: announced open once, open still
    assert [(m.fields["channel"], m.fields["state"], m.fields["start"]) for m in out
            if m.kind == messages.KIND_EVENT] == [("b", "open", T0)]
    # what was sent last, per channel in the new numbering: the start of its newest aggregate
    assert p._marks[:4, 0].tolist() == [T0, T0 + 40, T0, T0 + 40]
    assert p.detectors.state()["dropout"][:4, 0].tolist() == [T0, T0 + 59, T0 + 5, T0 + 59]  # last stamp

    # a restart resumes the new numbering: marks taken after the renumbering apply, older ones do not
    blob, marks_after = p.checkpoint(), p.take_marks()
    assert marks_after is not None
    p2 = Pipeline(cfg, TOPICS, b2 := Batcher(max_channels_per_sensor=3), wall_clock=lambda: T0 + 100)
    assert p2.restore(blob, marks_after) == 4
    assert names(b2) == ["x", "b", "s", "c"]
    assert np.array_equal(p2._marks[:4], p._marks[:4], equal_nan=True)
    assert p2.engine.state()["win"].tolist() == p.engine.state()["win"].tolist()
    with caplog.at_level(logging.WARNING, logger="edge_gateway.pipeline"):
        p3 = Pipeline(cfg, TOPICS, Batcher(max_channels_per_sensor=3), wall_clock=lambda: T0 + 100)
        assert p3.restore(blob, marks_before) == 4
    assert [r.getMessage() for r in caplog.records if r.name == "edge_gateway.pipeline"] == [
        "marks of another channel numbering (0, the checkpoint's is 1) not applied: windows and events sent "
        "since the checkpoint may be sent again"]
    assert np.isnan(p3._marks).all()

    # s's own silence was carried over: at 5,400 s it goes too
    assert [k.channel for k in p.forget_idle({"node"}, now=5900.0, idle_s=CHANNEL_IDLE_S)] == ["s"]
    assert names(b) == ["x", "b", "c"]


def test_nothing_is_forgotten_while_every_channel_of_the_sensor_is_recent():
    cfg = config.loads("gateway: {id: gw}\n" + CFG_TEXT)
    b = Batcher(max_channels_per_sensor=2)
    p = Pipeline(cfg, TOPICS, b, wall_clock=lambda: T0 + 100)
    for k in range(36):
        tick(p, b, k, ["a", "b", "c"])
    assert b.refused == {"node": 36}
    assert p.forget_idle({"node"}, now=3600.0, idle_s=CHANNEL_IDLE_S) == []
    assert names(b) == ["a", "b"]



async def test_the_gateway_makes_room_commits_the_new_numbering_and_a_restart_resumes_it(tmp_path, caplog):
    from edge_gateway.daemon import Gateway

    cfg = config.loads(f"gateway: {{id: gw, state_dir: {tmp_path / 'state'}}}\n" + CFG_TEXT)
    wall, steady = Clock(T0), Clock(5.0)

    def gateway() -> Gateway:
        gw = Gateway(cfg, clock=wall)
        gw.clockwatch = ClockWatch(wall, steady)
        gw.batcher.max_channels_per_sensor = 2
        return gw

    async def run(gw: Gateway, ticks: int, channels) -> None:
        for _ in range(ticks):  # a reading a minute
            wall.t += 60.0
            steady.t += 60.0
            for ch in channels:
                gw.batcher.add(Reading("node", ch, value(ch, int(wall.t) // 60), wall.t, "u"))
            await gw.tick()

    gw = gateway()
    await gw.queue.open()
    try:
        await run(gw, 1, ["a", "b"])
        await run(gw, 58, ["b"])
        with caplog.at_level(logging.WARNING, logger="edge_gateway.daemon"):
            await run(gw, 1, ["b", "c"])  # a: silent 59 min: c is refused and a kept
            assert names(gw.batcher) == ["a", "b"] and gw.channels_forgotten == {}
            await run(gw, 1, ["b", "c"])  # a: 60 min
        assert [r.getMessage() for r in caplog.records if r.name == "edge_gateway.daemon"] == [
            "sensor node: at its cap of 2 channels; 1 channel(s) silent for 3600 s or more forgotten to make room "
            "for new ones (first: 'a')"]
        assert names(gw.batcher) == ["b"]
        await run(gw, 3, ["b", "c"])
        assert names(gw.batcher) == ["b", "c"]
        assert gw._sensor_counters() == {"node": {"channels_refused": 2, "channels_forgotten": 1}}
        assert ("node", "a") not in gw.telemetry.last_values
        marks = gw.pipeline._marks.copy()
    finally:
        await gw.queue.close()

    # killed here: what is on disk is the checkpoint committed with the renumbering's marks
    gw2 = gateway()
    await gw2.queue.open()
    try:
        with caplog.at_level(logging.WARNING, logger="edge_gateway.pipeline"):
            caplog.clear()
            await gw2._restore_checkpoint()
        assert [r for r in caplog.records if r.name == "edge_gateway.pipeline"] == []
        assert names(gw2.batcher) == ["b"]  # c arrived after the checkpoint: numbered again when it delivers
        assert gw2.pipeline._numbering == 1
        assert np.array_equal(gw2.pipeline._marks[:1, 0], marks[:1, 0], equal_nan=True)
    finally:
        await gw2.queue.close()


FILTERED = """
sensors:
  - id: node
    driver: coap
    options: {uri: "coap://127.0.0.1", resources: [{path: /n}]}
    filters: {despike_window: 5, lowpass_alpha: 0.5}
windows: {seconds: 10, grace_s: 2}
detector: {params: {weights: [0, 0, 0, 0, 0, 0, 0, 0]}}
"""


def test_a_kept_channel_is_filtered_as_if_the_forgotten_one_had_never_been():
    """b's despike and low-pass state moves with it: its aggregates, spike at tick 45 included, are those
    of a gateway that never saw a."""
    cfg = config.loads("gateway: {id: gw}\n" + FILTERED)

    def run(with_a: bool) -> list:
        b = Batcher(max_channels_per_sensor=2)
        p = Pipeline(cfg, TOPICS, b, wall_clock=lambda: T0 + 100)
        out = []
        for k in range(60):  # a: ticks 0 to 9, a spike at 7
            for ch in (["a"] if with_a and k < 10 else []) + ["b"] + (["c"] if k >= 41 else []):
                v = 1000.0 if (ch, k) in (("a", 7), ("b", 45)) else value(ch, k) + 0.1 * (k % 7)
                b.add(Reading("node", ch, v, T0 + k, "u"))
            out += p.process(b.drain(), now=100.0 * k)
            if with_a and k == 40:
                assert [key.channel for key in p.forget_idle({"node"}, 4600.0, CHANNEL_IDLE_S)] == ["a"]
        # a's despiked reading still counts: a counter never goes down
        assert p.conditioning.counters(b.keys) == {"node": {"despiked": 1 + with_a, "deadband_held": 0}}
        return [m.fields for m in out if m.kind == messages.KIND_AGG and m.fields["channel"] != "a"]

    assert [(f["channel"], f["start"], f["mean"]) for f in run(True)] == \
        [(f["channel"], f["start"], f["mean"]) for f in run(False)]


class PowerCut(BaseException):
    pass


async def crash_in_the_renumbering_round(tmp_path, cap: int, disk_full: bool = False) -> tuple[list, list, list]:
    """node/a and node/b, b spiking at +3360 s; at +3600 s c arrives (refused at cap 2: a is forgotten).
    With ``disk_full``, that round's first insert finds the disk full, its retry commits, and then the
    power is cut; otherwise the power is cut inside that round's append, with run()'s periodic checkpoint waiting.
    Then a new gateway from what is stored runs 12 more rounds. Returns the queued (state, start) of
    the anomaly events, b's window starts, and what was committed twice (review 17, #1 and #2)."""
    import sqlite3

    from edge_gateway.daemon import Gateway

    cfg = config.loads(f"gateway: {{id: gw, state_dir: {tmp_path / 'state'}}}\nwindows: {{seconds: 10, grace_s: 2}}\n"
                       "detector: {threshold: 0.5, params: {weights: [0, 0, 0, 0, 1, 0, 0, 0], range_hi: 50}}\n")
    wall, steady = Clock(T0), Clock(5.0)
    committed: list = []

    def gateway(run_no: int) -> Gateway:
        gw = Gateway(cfg, clock=wall)
        gw.clockwatch = ClockWatch(wall, steady)
        gw.batcher.max_channels_per_sensor = cap
        append = gw.queue.append

        async def recorded(msgs, **kw):
            seqs = await append(msgs, **kw)
            committed.extend((run_no, m.fields["channel"], m.fields.get("state"), m.fields["start"]) for m in msgs
                             if seqs)
            return seqs
        gw.queue.append = recorded
        return gw

    async def run(gw, ticks, channels) -> None:
        for _ in range(ticks):
            wall.t += 60.0
            steady.t += 60.0
            for ch in channels:
                v = 100.0 if (ch, wall.t) == ("b", T0 + 3360.0) else 1.0 + 0.25 * ((wall.t // 60) % 4)
                gw.batcher.add(Reading("node", ch, v, wall.t, "u"))
            await gw.tick()

    gw = gateway(1)
    await gw.queue.open()
    await run(gw, 1, ["a", "b"])
    await run(gw, 58, ["b"])
    await gw._save_checkpoint()
    await run(gw, 1, ["b", "c"])
    await gw._save_checkpoint()  # run()'s periodic checkpoint after that round, waiting for the next append
    if disk_full:
        insert = gw.queue._insert
        hits = []

        def full_once(msgs, note=None):
            if not hits:
                hits.append(1)
                raise sqlite3.OperationalError("database or disk is full")
            return insert(msgs, note)
        gw.queue._insert = full_once
        await run(gw, 1, ["b", "c"])  # and the power is cut right after
    else:
        async def cut(msgs, **kw):
            raise PowerCut()
        gw.queue.append = cut
        try:
            await run(gw, 1, ["b", "c"])
        except PowerCut:
            pass
    gw.queue._ckpt_pending.clear()  # nothing more reaches the disk
    gw.queue._deferred.clear()
    await gw.queue.close()

    gw2 = gateway(2)
    await gw2.queue.open()
    try:
        await gw2._restore_checkpoint()
        await run(gw2, 12, ["b", "c"])
        rows = [messages.decode(r.payload) for r in await gw2.queue.peek(0, 10000)]
    finally:
        await gw2.queue.close()
    events = [(f["state"], f["start"] - T0) for f in rows if f.get("type") == "anomaly"]
    b_starts = [f["start"] - T0 for f in rows if "type" not in f and f["channel"] == "b"]
    keys = [(c, s, t) for _, c, s, t in committed]
    twice = sorted({k for k in keys if keys.count(k) > 1}, key=repr)
    return events, b_starts, twice


async def test_a_power_cut_in_the_renumbering_round_loses_and_repeats_what_it_would_without_one(tmp_path):
    """The checkpoint of the new numbering is stored only with that round's messages and marks: a cut
    before then restores the old numbering with its own marks, as if no channel had been forgotten."""
    got = await crash_in_the_renumbering_round(tmp_path / "renumbered", cap=2)
    same_without = await crash_in_the_renumbering_round(tmp_path / "baseline", cap=3)
    assert got == same_without
    events, b_starts, twice = got
    assert events == [("open", 3360.0), ("closed", 3360.0)]  # before the fix, "closed" was never sent
    assert twice == []
    assert sorted(set(b_starts)) == sorted(b_starts)


async def test_a_full_disk_in_the_renumbering_round_stores_neither_the_checkpoint_nor_its_marks(tmp_path):
    """After a cut right then, only what that round committed without marks comes again (its event
    closing); marks of the new numbering stored beside the old checkpoint would be refused, and the
    round before sent again too (b's window at +3540 s)."""
    _, _, twice = await crash_in_the_renumbering_round(tmp_path, cap=2, disk_full=True)
    assert twice == [("b", "closed", T0 + 3360.0)]


def test_the_drops_of_forgotten_channels_still_count_and_survive_a_restart():
    cfg = config.loads("gateway: {id: gw}\n" + CFG_TEXT)
    b = Batcher(max_channels_per_sensor=2)
    p = Pipeline(cfg, TOPICS, b, wall_clock=lambda: T0 + 100)
    tick(p, b, 0, ["a"])
    b.add(Reading("node", "a", 1.0, T0 + 86400.0, "u"))  # a day ahead: dropped by the future filter
    p.process(b.drain(), now=0.0)
    tick(p, b, 20, ["a"])
    b.add(Reading("node", "a", 1.0, T0, "u"))  # behind its closed window: late
    p.process(b.drain(), now=2000.0)
    tick(p, b, 40, ["b", "c"])
    assert p.channel_counters()[("node", "a")] == {"late": 1, "future": 1}
    assert [k.channel for k in p.forget_idle({"node"}, 5700.0, CHANNEL_IDLE_S)] == ["a"]
    want = {("node", "(forgotten channels)"): {"late": 1, "future": 1}, ("node", "b"): {"late": 0, "future": 0}}
    assert p.channel_counters() == want
    p2 = Pipeline(cfg, TOPICS, Batcher(max_channels_per_sensor=2), wall_clock=lambda: T0 + 100)
    p2.restore(p.checkpoint())
    assert p2.channel_counters() == want
