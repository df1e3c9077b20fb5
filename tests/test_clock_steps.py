"""The gateway's wall clock steps (NTP's first sync on a Pi without an RTC) and channels whose time goes back.

Review 16 (time) #1, #2, #5, #9: every NTP sync after a boot opened a `dropout` anomaly on every channel
the gateway stamps; a step back (or a node clock that was ahead, then fixed) dropped a channel's readings
as late for as long as the error, across restarts; idle time and uptime followed the wall clock; a link
gap across the step was reported as 55 years long.
"""

from __future__ import annotations

import asyncio
import time

from drivers.base import Driver, LinkLost
from edge_gateway import config, messages
from edge_gateway.batcher import Batcher
from edge_gateway.clockwatch import ClockWatch, Step
from edge_gateway.pipeline import Pipeline
from edge_gateway.readings import Reading
from edge_gateway.supervisor import Backoff, Supervisor
from support import Clock

T0 = 1_750_000_000.0  # a multiple of 10: window starts are T0 + 10 k
TOPICS = messages.Topics("city", "gw")
CFG = config.loads("""
gateway: {id: gw}
windows: {seconds: 10, grace_s: 2}
""")
DROPOUT_CFG = config.loads("""
gateway: {id: gw}
windows: {seconds: 10, grace_s: 2}
detector: {threshold: 0.5, params: {weights: [0, 0, 0, 0, 0, 0, 1, 0]}}
""")



def feed(pipe: Pipeline, batcher: Batcher, stamps, sensor: str = "s1") -> list[messages.Message]:
    """One batch per reading, its ``now`` (idle time) one second apart."""
    out = []
    for t in stamps:
        batcher.add(Reading(sensor, "temp", 20.0 + 0.1 * (t % 7), t, "C"))  # not a stuck sensor
        feed.now += 1.0
        out += pipe.process(batcher.drain(), now=feed.now)
    return out


feed.now = 0.0


def windows_of(out) -> list[tuple[float, int]]:
    return [(m.fields["start"], m.fields["count"]) for m in out if m.kind == messages.KIND_AGG]


def test_the_clock_watch_tells_a_step_from_slewing_and_jitter():
    steady, wall = Clock(100.0), Clock(T0)
    watch = ClockWatch(wall, steady)
    for _ in range(100):  # NTP slewing 500 ppm, rounds a second apart
        steady.t += 1.0
        wall.t += 1.0005
        assert watch.check() is None
    wall.t += 3600.0
    assert watch.check() == Step(3600.0, wall.t - 3600.0, wall.t)
    wall.t -= 7200.0
    assert watch.check() == Step(-7200.0, wall.t + 7200.0, wall.t)
    assert watch.status() == {"steps": 2, "last_step_s": -7200.0, "last_step_at": wall.t}


def test_after_a_step_back_a_channel_windows_start_afresh_after_three_readings_and_survive_a_restart():
    pipe = Pipeline(CFG, TOPICS, batcher := Batcher())
    before = feed(pipe, batcher, [T0 + k for k in range(35)])
    assert windows_of(before) == [(T0, 10), (T0 + 10, 10), (T0 + 20, 10)]  # T0 + 30 open with 5
    back = T0 - 86400 + 35  # the clock stepped back a day
    after = feed(pipe, batcher, [back + k for k in range(20)])
    # back, back + 1, back + 2 dropped as late; the third closes the window open at T0 + 30
    assert windows_of(after) == [(T0 + 30, 5), (T0 - 86370, 2), (T0 - 86360, 10)]
    assert pipe.channel_counters() == {("s1", "temp"): {"late": 3, "future": 0}}
    assert pipe.rewind_counts() == {"s1": 1}
    blob = pipe.checkpoint()
    resumed = Pipeline(CFG, TOPICS, batcher := Batcher())
    resumed.restore(blob, pipe.take_marks())
    assert windows_of(feed(resumed, batcher, [back + k for k in range(20, 31)])) == [(T0 - 86350, 10)]
    assert resumed.channel_counters() == {("s1", "temp"): {"late": 3, "future": 0}}


def test_a_step_back_shorter_than_a_window_and_its_grace_drops_readings_and_repeats_no_window():
    pipe = Pipeline(CFG, TOPICS, batcher := Batcher())
    out = feed(pipe, batcher, [T0 + k for k in range(35)])
    out += feed(pipe, batcher, [T0 + 20 + k for k in range(25)])  # 15 s back: T0 + 20 .. 29 are late
    assert windows_of(out) == [(T0, 10), (T0 + 10, 10), (T0 + 20, 10), (T0 + 30, 15)]  # 30 .. 34 twice
    assert pipe.channel_counters() == {("s1", "temp"): {"late": 10, "future": 0}}
    assert pipe.rewind_counts() == {}


def test_a_node_clock_a_year_ahead_then_fixed_loses_three_readings_not_a_year():
    """Review 16 (time) #2, t3: the future filter admits a node ahead after three readings in a row."""
    year = 365 * 86400.0
    pipe = Pipeline(CFG, TOPICS, batcher := Batcher(), wall_clock=Clock(T0 + 100))
    out = feed(pipe, batcher, [T0 + k for k in range(10)] + [T0 + year + k for k in range(10, 20)])
    out += feed(pipe, batcher, [T0 + k for k in range(20, 40)])
    assert pipe.channel_counters() == {("s1", "temp"): {"late": 3, "future": 2}}
    assert windows_of(out) == [(T0, 10), (T0 + year + 10, 8), (T0 + 20, 7)]  # T0 + 30 open


def test_a_step_of_the_gateway_clock_is_not_a_dropout():
    stamps = [T0 + k for k in range(600)]

    def events(tell: bool) -> list[tuple[str, str]]:
        pipe = Pipeline(DROPOUT_CFG, TOPICS, batcher := Batcher())
        out = feed(pipe, batcher, stamps)
        if tell:
            pipe.clock_stepped()
        out += feed(pipe, batcher, [t + 3600.0 for t in stamps[:100]])
        return [(m.fields["detector"], m.fields["state"]) for m in out if m.kind == messages.KIND_EVENT]

    assert events(tell=False) == [("dropout", "open"), ("dropout", "closed")]  # what every NTP sync produced
    assert events(tell=True) == []


async def test_the_gateway_notices_ntp_stepping_its_clock_and_reages_what_it_queued(tmp_path):
    from edge_gateway.daemon import Gateway

    cfg = config.loads(f"""
gateway: {{id: gw, state_dir: {tmp_path / 'state'}}}
windows: {{seconds: 10, grace_s: 2}}
queue: {{max_age_s: 86400}}
detector: {{threshold: 0.5, params: {{weights: [0, 0, 0, 0, 0, 0, 1, 0]}}}}
""")
    wall, steady = Clock(20.0), Clock(5.0)  # a Pi booted at 1970 without fake-hwclock
    gw = Gateway(cfg, clock=wall)
    gw.clockwatch = ClockWatch(wall, steady)
    gw.started_steady = steady.t
    await gw.queue.open()
    gw._epoch_seq = gw.queue.last_seq
    try:
        for _ in range(300):  # 5 minutes of a 1 Hz sensor, stamped by the gateway
            wall.t += 1.0
            steady.t += 1.0
            gw.batcher.add(Reading("s1", "temp", 20.0 + 0.1 * (wall.t % 7), wall.t, "C"))
            await gw.tick()
        queued = gw.queue.depth
        assert queued == 30  # windows 20 .. 310 closed
        wall.t += T0  # NTP
        for _ in range(30):
            wall.t += 1.0
            steady.t += 1.0
            gw.batcher.add(Reading("s1", "temp", 20.0 + 0.1 * (wall.t % 7), wall.t, "C"))
            await gw.tick()
        rows = [messages.decode(r.payload) for r in await gw.queue.peek(0, 1000)]
        # then the window open at the step, the step, windows T0 + 320 .. 340
        assert [r.get("type", r.get("start")) for r in rows[queued:]] == [320.0, "clock_step", T0 + 320.0,
                                                                          T0 + 330.0, T0 + 340.0]
        step = rows[queued + 1]
        assert {k: step[k] for k in ("sensor", "type", "step_s", "before", "at", "since_seq")} == {
            "sensor": "_gateway", "type": "clock_step", "step_s": T0, "before": 321.0, "at": T0 + 321.0,
            "since_seq": rows[0]["seq"]}
        assert [r.get("type") for r in rows if "type" in r] == ["clock_step"]  # no dropout, nothing expired
        assert (await gw.queue.stats()).dropped_total["count"] == 0
        status = await gw.status()
        assert status["uptime_s"] == 330.0
        assert status["clock"] == {"steps": 1, "last_step_s": T0, "last_step_at": T0 + 321.0}
        assert status["queue"]["oldest_age_s"] == 320.0  # the first window, committed at 30, re-aged by the step
    finally:
        await gw.queue.close()


class _Flaky(Driver):
    """Connects, reads once and loses its link; NTP steps the wall clock while it is down."""

    name = "flaky"
    Options = dict

    def __init__(self, wall: Clock, steady: Clock) -> None:
        super().__init__("s1", {}, lambda r: None, clock=wall)
        self.wall, self.steady = wall, steady
        self.runs = 0

    async def run(self) -> None:
        self.runs += 1
        if self.runs == 1:
            self.connected()
            self.stats.last_reading_ts = self.wall.t
            self.wall.t += 3.0
            self.steady.t += 3.0
            raise LinkLost("unplugged")
        self.wall.t += 5.0 + T0  # 5 s later, and NTP's step
        self.steady.t += 5.0
        self.connected()
        await asyncio.sleep(3600)


async def test_a_link_gap_across_a_step_of_the_clock_has_its_real_length():
    wall, steady = Clock(60.0), Clock(60.0)
    gaps = []
    sup = Supervisor(gaps.append, Backoff(initial_s=0.01, max_s=0.01), clock=wall, seed=1, steady=steady)
    try:
        sup.start(_Flaky(wall, steady))
        for _ in range(200):
            if gaps:
                break
            await asyncio.sleep(0.01)
    finally:
        await sup.stop()
    assert [(g.start, g.end, g.reason) for g in gaps] == [(T0 + 60.0, T0 + 68.0, "unplugged")]  # 8 s, not 55 years


def test_status_shows_the_clock_steps_and_what_filters_did(capsys):
    from edge_gateway.cmd_status import render

    render({"gateway": "gw", "clock": {"steps": 2, "last_step_s": -7200.5, "last_step_at": T0},
            "sensors": {"a": {"driver": "serial_line", "despiked": 3, "deadband_held": 12},
                        "b": {"driver": "serial_line", "clock_rewinds": 1}}})
    lines = capsys.readouterr().out.splitlines()
    at = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(T0))
    assert f"clock     stepped 2 time(s), last by -7200.5 s at {at}" in lines
    assert "filters   a: 3 despiked, 12 held by the deadband" in lines


class _Flapping(Driver):
    """Opens, then fails at once (a loose connector): with ``reads``, after one reading each time."""

    name = "flapping"
    Options = dict

    def __init__(self, reads: bool) -> None:
        super().__init__("s1", {}, lambda r: None)
        self.reads, self.runs = reads, 0

    async def run(self) -> None:
        self.runs += 1
        self.connected()
        if self.reads:
            self.stats.readings += 1
        raise LinkLost("closed")


async def test_a_link_that_opens_and_fails_at_once_backs_off_and_one_that_works_retries_at_once():
    """Review 16 (bounds) #4: every connect reset the backoff, so a flapping serial link was retried 2-3
    times a second: 87 connects, 259 log lines and 86 link_gap events a minute."""

    class Recording(Backoff):
        def delay(self, attempt, rng):
            attempts.append(attempt)
            return 0.001

    for reads, want in ((False, [0, 1, 2, 3, 4, 5, 6, 7]), (True, [0] * 8)):
        attempts: list[int] = []
        sup = Supervisor(lambda gap: None, Recording(), seed=1)
        driver = _Flapping(reads)
        try:
            sup.start(driver)
            for _ in range(500):
                if len(attempts) >= 8:
                    break
                await asyncio.sleep(0.002)
        finally:
            await sup.stop()
        assert attempts[:8] == want, reads


def test_a_forgotten_channels_rewinds_survive_a_restart():
    """The clock_rewinds of channels forgotten to make room (forget_idle) are kept per sensor, and a
    restart kept only the live channels' (the forgotten ones' were not in the checkpoint)."""
    pipe = Pipeline(CFG, TOPICS, batcher := Batcher())
    feed(pipe, batcher, [T0 + k for k in range(35)])
    feed(pipe, batcher, [T0 - 86400 + 35 + k for k in range(20)])
    assert pipe.rewind_counts() == {"s1": 1}
    out = []
    for _ in range(30):  # idle: the open window closes, then the channel may go
        feed.now += 10.0
        out += pipe.process(batcher.drain(), now=feed.now)
    assert [k.channel for k in pipe.forget_idle({"s1"}, now=feed.now + 3600.0, idle_s=3600.0)] == ["temp"]
    assert pipe.rewind_counts() == {"s1": 1}
    resumed = Pipeline(CFG, TOPICS, Batcher())
    resumed.restore(pipe.checkpoint(), pipe.take_marks())
    assert resumed.rewind_counts() == {"s1": 1}
