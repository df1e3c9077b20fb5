"""A restart with another ``windows.seconds`` or ``windows.hop_s`` sends no window twice (review s20 hop, M1/M2).

The checkpoint holds the windows open at the restart, on the grid they were opened with. One that is a window
of the new grid too (the same start and end) goes on there, so it is sent once with all its readings; the
others are closed and sent on the old grid. After a crash, the marks committed with the messages drop the
old grid's windows already sent, as they do when the geometry is unchanged. Every test counts the aggregates
of each ``(channel, start, end)`` across the runs, and states each count of readings.
"""

from __future__ import annotations

import math
from collections import Counter

import msgpack
import pytest

from edge_gateway import config, messages
from edge_gateway.batcher import Batcher
from edge_gateway.pipeline import Pipeline
from edge_gateway.readings import Reading
from support import daemon_rounds

TOPICS = messages.Topics("city", "gw")
BASE = """
gateway: {id: gw%s}
windows: {seconds: %s, grace_s: 2%s}
detector: {threshold: 0.9, params: {weights: [0, 1, 0, 0, 1, 1, 1, 0]}}
"""


def cfg(seconds, hop=None, state_dir=None):
    return config.loads(BASE % ("" if state_dir is None else f", state_dir: {state_dir}", seconds,
                                "" if hop is None else f", hop_s: {hop}"))


def reading(k: float, sensor: str = "s0") -> Reading:
    return Reading(sensor, "t", 20.0 + (k % 3) * 0.1 + (sensor == "s1"), float(k), "C")


def aggs(out) -> list[tuple[str, float, float, int]]:
    return [(m.fields["sensor"], m.fields["start"], m.fields["end"], m.fields["count"])
            for m in out if m.kind == messages.KIND_AGG]


def run(conf, ks, blob=None, marks=None, sensors=("s0",)):
    """A pipeline of ``conf`` (restored from ``blob``/``marks`` when given) fed readings ``ks`` in one round,
    then an idle round that closes every window; returns it and its aggregates."""
    p = Pipeline(conf, TOPICS, b := Batcher(), wall_clock=lambda: 2e9)
    if blob is not None:
        assert p.restore(blob, marks) == len(sensors)
    for k in ks:
        for s in sensors:
            b.add(reading(k, s))
    out = p.process(b.drain(), now=0.0)
    out += p.process(b.drain(), now=100.0)
    return p, out


def before_restart(conf, last, sensors=("s0",)):
    """Readings 1000..``last`` in one round; the checkpoint and marks of a clean stop right after it."""
    p = Pipeline(conf, TOPICS, b := Batcher(), wall_clock=lambda: 2e9)
    for k in range(1000, last + 1):
        for s in sensors:
            b.add(reading(k, s))
    out = p.process(b.drain(), now=0.0)
    return out, p.checkpoint(), p.take_marks()


def each_once(*runs) -> None:
    sent = Counter((s, start, end) for out in runs for s, start, end, _ in aggs(out))
    assert {k: n for k, n in sent.items() if n > 1} == {}


# --- a clean restart -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("old,new,want", [
    # hop 5 -> 2: [1055, 1065) is on the old grid only, closed with the readings up to 1061; [1060, 1070) is on
    # both and goes on; [1054, 1064) .. [1058, 1068) are new, with the readings from 1062
    ((10, 5), (10, 2), [(1055.0, 1065.0, 7), (1054.0, 1064.0, 2), (1056.0, 1066.0, 4), (1058.0, 1068.0, 6),
                        (1060.0, 1070.0, 10), (1062.0, 1072.0, 10), (1064.0, 1074.0, 9), (1066.0, 1076.0, 7),
                        (1068.0, 1078.0, 5), (1070.0, 1080.0, 3), (1072.0, 1082.0, 1)]),
    # tumbling -> hop 5: the open tumbling window is the hopping window [1060, 1070)
    ((10, None), (10, 5), [(1055.0, 1065.0, 3), (1060.0, 1070.0, 10), (1065.0, 1075.0, 8), (1070.0, 1080.0, 3)]),
    # hop 5 -> tumbling: [1060, 1070) goes on as the tumbling window
    ((10, 5), (10, None), [(1055.0, 1065.0, 7), (1060.0, 1070.0, 10), (1070.0, 1080.0, 3)]),
    # hop 2 -> 1: every old window is on the new grid
    ((10, 2), (10, 1), [(1052.0, 1062.0, 10), (1053.0, 1063.0, 1), (1054.0, 1064.0, 10), (1055.0, 1065.0, 3),
                        (1056.0, 1066.0, 10), (1057.0, 1067.0, 5), (1058.0, 1068.0, 10), (1059.0, 1069.0, 7),
                        (1060.0, 1070.0, 10), (1061.0, 1071.0, 9), (1062.0, 1072.0, 10), (1063.0, 1073.0, 10),
                        (1064.0, 1074.0, 9), (1065.0, 1075.0, 8), (1066.0, 1076.0, 7), (1067.0, 1077.0, 6),
                        (1068.0, 1078.0, 5), (1069.0, 1079.0, 4), (1070.0, 1080.0, 3), (1071.0, 1081.0, 2),
                        (1072.0, 1082.0, 1)]),
    # hop 2 -> 4 (4 does not divide 10): the windows starting on a multiple of 4 go on, between ones closed
    ((10, 2), (10, 4), [(1054.0, 1064.0, 8), (1058.0, 1068.0, 4), (1052.0, 1062.0, 10), (1056.0, 1066.0, 10),
                        (1060.0, 1070.0, 10), (1064.0, 1074.0, 9), (1068.0, 1078.0, 5), (1072.0, 1082.0, 1)]),
    # seconds 10 -> 20: no window has the same end, nothing goes on
    ((10, None), (20, None), [(1060.0, 1070.0, 2), (1060.0, 1080.0, 11)]),
])
def test_a_window_on_both_grids_is_sent_once_with_all_its_readings(old, new, want):
    """Readings 1000..1061, a clean restart, readings 1062..1072 (then idle): each window once."""
    first, blob, marks = before_restart(cfg(*old), 1061)
    p, out = run(cfg(*new), range(1062, 1073), blob, marks)
    assert [(start, end, n) for _, start, end, n in aggs(out)] == want
    each_once(first, out)
    assert p.engine.late_counts().tolist() == [0.0]


def test_a_carried_window_is_the_one_an_unbroken_run_sends():
    """Every field of the aggregate, p50/p95 included: its sketch is carried over as well."""
    _, blob, marks = before_restart(cfg(10), 1064, sensors=("s0", "s1"))
    _, out = run(cfg(10, 5), range(1065, 1071), blob, marks, sensors=("s0", "s1"))
    _, unbroken = run(cfg(10, 5), range(1000, 1071), sensors=("s0", "s1"))

    def window(msgs, sensor):
        return [m.fields for m in msgs if m.kind == messages.KIND_AGG and m.fields["sensor"] == sensor
                and m.fields["start"] == 1060.0]

    for sensor in ("s0", "s1"):
        got, want = window(out, sensor), window(unbroken, sensor)
        assert len(got) == len(want) == 1 and got[0]["count"] == 10 and got[0]["hop"] == 5.0
        assert messages.encode(got[0], 1) == messages.encode(want[0], 1)
        assert got[0]["p50"] == want[0]["p50"] and not math.isnan(got[0]["p95"])


@pytest.mark.parametrize("old,new,want", [
    ((10, None), (10, 5), [(1055.0, 1065.0, 4), (1060.0, 1070.0, 8), (1065.0, 1075.0, 7), (1070.0, 1080.0, 2)]),
    ((10, 5), (10, None), [(1060.0, 1070.0, 8), (1070.0, 1080.0, 2)]),
])
def test_a_late_reading_cannot_open_again_a_window_the_old_grid_sent(old, new, want):
    """The channel went idle after 1059 and its windows were closed, [1050, 1060) among them (a window of both
    grids); then the restart, and a reading of 1058 a node had held back. It is late for [1050, 1060), as it
    would be on an unchanged grid: the channel's time carries over to the new grid."""
    p = Pipeline(cfg(*old), TOPICS, b := Batcher(), wall_clock=lambda: 2e9)
    for k in range(1000, 1060):
        b.add(reading(k))
    first = p.process(b.drain(), now=0.0) + p.process(b.drain(), now=100.0)  # idle: every window closed
    assert (1050.0, 1060.0, 10) in [(s, e, n) for _, s, e, n in aggs(first)]
    p, out = run(cfg(*new), [1058, *range(1062, 1072)], p.checkpoint(), p.take_marks())
    assert [(start, end, n) for _, start, end, n in aggs(out)] == want
    each_once(first, out)
    assert p.engine.late_counts().tolist() == [1.0]


def test_channels_with_windows_at_different_times_each_keep_their_own():
    """Two sensors, the second 10 s behind the first, hop 5 -> 2.5: each channel's carried windows stay its own
    and go on with its own readings."""
    p = Pipeline(cfg(10, 5), TOPICS, b := Batcher(), wall_clock=lambda: 2e9)
    for k in range(1000, 1062):
        b.add(reading(k, "s0"))
        b.add(reading(k - 10, "s1"))
    first = p.process(b.drain(), now=0.0)
    blob, marks = p.checkpoint(), p.take_marks()
    p = Pipeline(cfg(10, 2.5), TOPICS, b := Batcher(), wall_clock=lambda: 2e9)
    assert p.restore(blob, marks) == 2
    for k in range(1062, 1066):
        b.add(reading(k, "s0"))
        b.add(reading(k - 10, "s1"))
    out = p.process(b.drain(), now=0.0) + p.process(b.drain(), now=100.0)
    # s0: [1055, 1065) holds 1055..1064, [1060, 1070) 1060..1065; the new windows the readings from 1062 on
    assert sorted(aggs(out)) == [
        ("s0", 1052.5, 1062.5, 1), ("s0", 1055.0, 1065.0, 10), ("s0", 1057.5, 1067.5, 4), ("s0", 1060.0, 1070.0, 6),
        ("s0", 1062.5, 1072.5, 3), ("s0", 1065.0, 1075.0, 1),
        ("s1", 1042.5, 1052.5, 1), ("s1", 1045.0, 1055.0, 10), ("s1", 1047.5, 1057.5, 4), ("s1", 1050.0, 1060.0, 6),
        ("s1", 1052.5, 1062.5, 3), ("s1", 1055.0, 1065.0, 1)]
    each_once(first, out)


def test_a_checkpoint_of_the_previous_build_restores_into_hopping_windows():
    """The previous build wrote tumbling checkpoints without ``win.behind``/``win.rewinds`` (and older ones
    also without the quantile table ``win.q``): the open window goes on all the same. Without its
    quantile sketch the window is sent without p50/p95, as on an unchanged grid, rather than with wrong ones."""
    _, blob, marks = before_restart(cfg(10), 1064)
    data = msgpack.unpackb(blob)
    del data["arrays"]["win.behind"], data["arrays"]["win.rewinds"]
    _, out = run(cfg(10, 5), range(1065, 1071), msgpack.packb(data), marks)
    got = [m.fields for m in out if m.kind == messages.KIND_AGG]
    # [1055, 1065), new, gets no reading: those from the restart on are past its end
    assert [(f["start"], f["count"]) for f in got] == [(1060.0, 10), (1065.0, 6), (1070.0, 1)]
    assert got[0]["p50"] == 20.1
    del data["arrays"]["win.q"]
    _, out = run(cfg(10, 5), range(1065, 1071), msgpack.packb(data), marks)
    got = [m.fields for m in out if m.kind == messages.KIND_AGG]
    assert [(f["start"], f["count"]) for f in got] == [(1060.0, 10), (1065.0, 6), (1070.0, 1)]
    assert "p50" not in got[0] and "p95" not in got[0] and got[1]["p50"] == 20.1


def test_an_unchanged_geometry_restores_as_it_did():
    """The engine's adopt path is only for another geometry: the same one loads the tables as they are."""
    _, blob, marks = before_restart(cfg(10, 5), 1061)
    p, out = run(cfg(10, 5), range(1062, 1073), blob, marks)
    assert not p.regridded
    assert [(start, end, n) for _, start, end, n in aggs(out)] == [
        (1055.0, 1065.0, 10), (1060.0, 1070.0, 10), (1065.0, 1075.0, 8), (1070.0, 1080.0, 3)]


# --- after a crash ---------------------------------------------------------------------------------------------

def crash(old, new, ckpt_last: int, crash_last: int, end: int = 1089):
    """Readings 1000..``ckpt_last``, the checkpoint; readings up to ``crash_last`` sent and their marks
    committed; a crash; a pipeline of ``new`` from the checkpoint and the marks, fed from ``crash_last + 1``."""
    p = Pipeline(old, TOPICS, b := Batcher(), wall_clock=lambda: 2e9)
    for k in range(1000, ckpt_last + 1):
        b.add(reading(k))
    sent = p.process(b.drain(), now=0.0)
    blob = p.checkpoint()
    for k in range(ckpt_last + 1, crash_last + 1):
        b.add(reading(k))
    sent += p.process(b.drain(), now=1.0)
    p2, after = run(new, range(crash_last + 1, end + 1), blob, p.take_marks())
    return sent, after, p2


def test_after_a_crash_the_old_grids_windows_already_sent_are_not_sent_again():
    """Hop 2 -> 5. At the checkpoint (1051) [1042, 1052) .. [1050, 1060) are open; [1042, 1052) and [1044, 1054)
    are sent before the crash (after 1055). They are dropped; [1046, 1056) and [1048, 1058) are closed on the old
    grid; [1050, 1060) goes on on the new one. The readings 1052..1055 die with the process, as on an
    unchanged grid."""
    sent, after, p = crash(cfg(10, 2), cfg(10, 5), 1051, 1055)
    assert [(s, e, n) for _, s, e, n in aggs(sent)][-2:] == [(1042.0, 1052.0, 10), (1044.0, 1054.0, 10)]
    assert [(s, e, n) for _, s, e, n in aggs(after)] == [
        (1046.0, 1056.0, 6), (1048.0, 1058.0, 4), (1050.0, 1060.0, 6), (1055.0, 1065.0, 9), (1060.0, 1070.0, 10),
        (1065.0, 1075.0, 10), (1070.0, 1080.0, 10), (1075.0, 1085.0, 10), (1080.0, 1090.0, 10),
        (1085.0, 1095.0, 5)]
    each_once(sent, after)
    assert p.engine.late_counts().tolist() == [0.0]


def test_after_a_crash_a_window_on_both_grids_already_sent_is_not_sent_again():
    """Tumbling -> hop 5. [1050, 1060) is open at the checkpoint (1052) and sent before the crash (after 1065):
    it is a window of the new grid too, and it is not carried over; nor is it opened again."""
    sent, after, _ = crash(cfg(10), cfg(10, 5), 1052, 1065)
    assert [(s, e, n) for _, s, e, n in aggs(sent)][-1] == (1050.0, 1060.0, 10)
    assert [(s, e, n) for _, s, e, n in aggs(after)] == [
        (1060.0, 1070.0, 4), (1065.0, 1075.0, 9), (1070.0, 1080.0, 10), (1075.0, 1085.0, 10), (1080.0, 1090.0, 10),
        (1085.0, 1095.0, 5)]
    each_once(sent, after)


async def test_the_daemon_sends_each_window_once_across_a_crash_and_a_changed_hop(tmp_path):
    """The daemon's rounds (``Gateway.tick``) and start (``_restore_checkpoint``) on a real queue file: tumbling
    windows, a checkpoint after reading 1059, a crash after 1064, then a gateway with ``hop_s: 5``."""
    from edge_gateway.daemon import Gateway

    gw = Gateway(cfg(10, state_dir=f"{tmp_path}/state"))
    await gw.queue.open()
    await daemon_rounds(gw, reading, 1000, 1060, ckpt_after=1055)
    await gw.queue.close()  # what a crash leaves: the committed rows, the checkpoint, the marks
    gw = Gateway(cfg(10, 5, state_dir=f"{tmp_path}/state"))
    await gw.queue.open()
    await gw._restore_checkpoint()
    await daemon_rounds(gw, reading, 1065, 1090)
    rows = await gw.queue.peek(0, 1000)
    await gw.queue.close()
    sent = [messages.decode(r.payload) for r in rows]
    got = [(f["start"], f["end"], f["count"]) for f in sent if "type" not in f]
    assert got == [(1000.0, 1010.0, 10), (1010.0, 1020.0, 10), (1020.0, 1030.0, 10), (1030.0, 1040.0, 10),
                   (1040.0, 1050.0, 10), (1050.0, 1060.0, 10),
                   # after the restart: [1060, 1070) holds the readings from 1065 on, those of 1060..1064 died
                   (1060.0, 1070.0, 5), (1065.0, 1075.0, 10), (1070.0, 1080.0, 10), (1075.0, 1085.0, 10),
                   (1080.0, 1090.0, 10)]


async def test_a_second_crash_before_the_first_checkpoint_on_the_new_grid_sends_nothing_twice(tmp_path):
    """The first round with messages after a restart on another grid stores a checkpoint of the new grid with
    them: a crash soon after (before the minute's checkpoint) restores that one, not the old grid's again,
    which the new grid's marks do not fit."""
    from edge_gateway.daemon import Gateway

    async def start(conf) -> Gateway:
        gw = Gateway(conf)
        await gw.queue.open()
        await gw._restore_checkpoint()
        return gw

    state = f"{tmp_path}/state"
    gw = await start(cfg(10, state_dir=state))
    await daemon_rounds(gw, reading, 1000, 1060, ckpt_after=1055)
    await gw.queue.close()  # crash 1: tumbling checkpoint after 1059, rounds up to 1064 committed
    gw = await start(cfg(10, 5, state_dir=state))
    await daemon_rounds(gw, reading, 1065, 1075)
    await gw.queue.close()  # crash 2: no checkpoint saved by the minute yet
    gw = await start(cfg(10, 5, state_dir=state))
    await daemon_rounds(gw, reading, 1080, 1090)
    rows = await gw.queue.peek(0, 1000)
    await gw.queue.close()
    got = [(f["start"], f["end"], f["count"]) for f in map(messages.decode, (r.payload for r in rows))
           if "type" not in f]
    assert got == [(1000.0, 1010.0, 10), (1010.0, 1020.0, 10), (1020.0, 1030.0, 10), (1030.0, 1040.0, 10),
                   (1040.0, 1050.0, 10), (1050.0, 1060.0, 10),
                   (1060.0, 1070.0, 5), (1065.0, 1075.0, 10),
                   # the first round with messages after restart 1 (1070..1074) stored a checkpoint of the hop-5
                   # grid; after crash 2 [1070, 1080) holds its 5 readings (1075..1079 died with the crash).
                   # Restoring the tumbling checkpoint again instead, [1070, 1080) was never sent at all
                   (1070.0, 1080.0, 5), (1075.0, 1085.0, 5), (1080.0, 1090.0, 10)]
