"""gateway.clock_sync_wait_s: readings held at start until the clock is synchronised, then re-dated.

Time #3: a Pi without an RTC boots at fake-hwclock's time (or 1970) and stamps readings with it until
NTP's first sync steps the clock; after a power cut those land in a past already reported. The hold
(edge_gateway/clockhold.py) keeps them in memory, asking the oracle (edge_gateway/clocksync.py) whether
the clock is synchronised, and re-dates the ones the gateway stamped by the step.
"""

from __future__ import annotations

import errno
import logging
import tracemalloc

import pytest
from driver_fixtures import pty, running, wait_until  # noqa: F401

from drivers import senml
from drivers.coap import CoapDriver, CoapOptions, CoapResource, decode_payload
from drivers.modbus_frames import encode_value
from drivers.modbus_rtu import ModbusBlock, ModbusField, ModbusOptions, ModbusRtuDriver
from drivers.pms5003 import Pms5003Driver, Pms5003Options, encode_frame
from drivers.serial_line import LineOptions, SerialLineDriver
from edge_gateway import config, messages
from edge_gateway.clockhold import ClockHold
from edge_gateway.clocksync import TIME_ERROR, ClockSync, SyncState, read_adjtimex
from edge_gateway.clockwatch import ClockWatch, Step
from edge_gateway.readings import Reading
from edge_gateway.supervisor import LinkGap
from simulators.coap_node import CoapNode
from simulators.modbus_slave import ModbusSlaveSim, RegisterBank
from support import Clock

T0 = 1_750_000_000.0  # the real time at boot; a multiple of 10, so window starts are T0 + 10 k
BEHIND = 7200.0  # fake-hwclock's time is two hours behind


class Oracle:
    """The sync oracle, as the test says it."""

    def __init__(self, synced: bool | None = False) -> None:
        self.synced = synced
        self.asked = 0

    def state(self) -> SyncState:
        self.asked += 1
        return SyncState(self.synced, f"fake: {self.synced}")


def _cfg(tmp_path, gateway_extra: str = "clock_sync_wait_s: 900", detector: str = ""):
    return config.loads(f"""
gateway: {{id: gw, state_dir: {tmp_path / 'state'}{', ' + gateway_extra if gateway_extra else ''}}}
windows: {{seconds: 10, grace_s: 2}}
queue: {{max_age_s: 86400}}
{detector}
""")


class Site:
    """A Gateway as the daemon runs it, its wall and steady clocks the test's; one reading a second of
    ``s1/temp`` (stamped by the gateway) and ``s2/pm`` (stamped by the node's clock, which is right)."""

    def __init__(self, gw, wall: Clock, steady: Clock, oracle: Oracle) -> None:
        self.gw, self.wall, self.steady, self.oracle = gw, wall, steady, oracle
        self.k = 0  # seconds since the start, real time T0 + k

    @classmethod
    async def start(cls, tmp_path, behind: float = BEHIND, **kw) -> "Site":
        from edge_gateway.daemon import Gateway

        wall, steady = Clock(T0 - behind), Clock(5.0)
        gw = Gateway(_cfg(tmp_path, **kw), clock=wall)
        gw.clockwatch = ClockWatch(wall, steady)
        gw.started_steady = steady.t
        oracle = Oracle(False)
        if gw.hold is not None:
            gw.hold.oracle = oracle
        await gw.queue.open()
        gw._epoch_seq = gw.queue.last_seq
        if gw.hold is not None:
            gw.hold.begin()  # as Gateway.start does before the drivers start
        return cls(gw, wall, steady, oracle)

    async def second(self, node: bool = True, step: float = 0.0) -> None:
        """One second passes (the wall clock stepped by ``step`` in it); the drivers read; a round."""
        self.k += 1
        self.wall.t += 1.0 + step
        self.steady.t += 1.0
        k = self.k
        sink = self.gw._sink  # what the drivers were given
        sink(Reading("s1", "temp", 20.0 + 0.1 * (k % 7), self.wall.t, "C", gateway_stamped=True))
        if node:
            sink(Reading("s2", "pm", float(k), T0 + k, "ug/m3"))
        await self.gw.tick()

    async def rows(self) -> list[dict]:
        return [messages.decode(r.payload) for r in await self.gw.queue.peek(0, 10_000)]


def aggs(rows, sensor: str) -> list[tuple[float, int]]:
    return [(r["start"], r["count"]) for r in rows if r.get("sensor") == sensor and "start" in r and "type" not in r]


def events(rows) -> list[str]:
    return [r["type"] for r in rows if "type" in r]


def render_lines(status: dict, capsys) -> list[str]:
    from edge_gateway.cmd_status import render

    render(status)
    return capsys.readouterr().out.splitlines()


def hold_logs(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "edge_gateway.clockhold"]


# --- the scenario of the brief: boot at T0 - 2 h, NTP steps +7200 s after 90 s -------------------

async def test_readings_held_until_ntp_steps_the_clock_are_published_re_dated(tmp_path, caplog, capsys):
    caplog.set_level(logging.INFO)
    site = await Site.start(tmp_path)
    gw = site.gw
    try:
        for _ in range(90):
            await site.second()
        assert (gw.queue.depth, gw.counts["readings"], gw.batcher.pending()) == (0, 0, 0)  # nothing went on
        status = await gw.status()
        assert status["clock"] == {"steps": 0, "last_step_s": None, "last_step_at": None,
                                   "hold": {"state": "waiting", "waited_s": 90.0, "held": 180, "wait_s": 900.0}}
        assert "clock     waiting for sync: 90 s of 900 s, 180 readings held" in render_lines(status, capsys)
        caplog.clear()
        await site.second(step=BEHIND)  # NTP: the clock reads T0 + 91, where it read T0 - 7109 a second ago
        for _ in range(39):
            await site.second()
        rows = await site.rows()
        # the step first: the aggregates after it are of re-dated readings, the cloud must not move them again
        assert events(rows) == ["clock_step"] and "type" in rows[0]
        step = rows[0]
        assert {k: step[k] for k in ("step_s", "before", "at", "since_seq", "redated")} == {
            "step_s": BEHIND, "before": T0 - BEHIND + 91, "at": T0 + 91, "since_seq": step["seq"], "redated": 90}
        # s1's readings, stamped T0 - 7199 .. T0 - 7110 then T0 + 91 .., all on real time now: T0 + 1 ..
        want = [(T0, 9)] + [(T0 + 10 * j, 10) for j in range(1, 13)]
        assert aggs(rows, "s1") == want
        assert aggs(rows, "s2") == want  # the node's own stamps, not moved
        assert gw.counts["readings"] == 260 and gw.pipeline.rewind_counts() == {}
        assert gw.pipeline.channel_counters() == {("s1", "temp"): {"late": 0, "future": 0},
                                                  ("s2", "pm"): {"late": 0, "future": 0}}
        status = await gw.status()
        assert status["clock"] == {"steps": 1, "last_step_s": BEHIND, "last_step_at": T0 + 91,
                                   "hold": {"state": "ended", "reason": "step", "step_s": BEHIND, "waited_s": 91.0,
                                            "released": 182, "redated": 90}}
        lines = render_lines(status, capsys)
        assert "          held 182 readings 91 s until NTP stepped the clock by +7200 s; 90 re-dated" in lines
        assert hold_logs(caplog) == ["the clock stepped by +7200.000 s after 91 s of waiting for its sync: 182 held "
                                     "reading(s) released, 90 of them re-dated by the step"]
    finally:
        await gw.queue.close()


async def test_without_the_key_or_with_0_the_gateway_does_as_before(tmp_path):
    """Off by default: no hold, the drivers' sink is the batcher's, and the same feed gives the same
    bytes as a config saying 0; the pre-step windows go out on the wrong date, as before."""
    payloads = []
    for n, extra in enumerate(("", "clock_sync_wait_s: 0")):
        site = await Site.start(tmp_path / str(n), gateway_extra=extra)
        gw = site.gw
        assert gw.hold is None and gw._sink == gw.batcher.add
        try:
            for k in range(130):
                await site.second(step=BEHIND if k == 90 else 0.0)
            rows = await site.rows()
            payloads.append([r.payload for r in await gw.queue.peek(0, 10_000)])
            assert aggs(rows, "s1")[:2] == [(T0 - BEHIND, 9), (T0 - BEHIND + 10, 10)]  # wrong-dated
            (i,) = [i for i, r in enumerate(rows) if r.get("type") == "clock_step"]
            assert "redated" not in rows[i] and rows[i - 1]["start"] < T0  # after that round's old-clock window
            assert "hold" not in (await gw.status())["clock"]
        finally:
            await gw.queue.close()
    assert payloads[0] == payloads[1]


# --- the other ends ---------------------------------------------------------------------------------

async def test_a_sync_without_a_step_releases_as_stamped_one_round_later(tmp_path, caplog, capsys):
    """The clock was right (NTP slewed it by less than a step): the oracle's word ends the hold, at the
    next round, whose clock check would have seen a step made between the two."""
    caplog.set_level(logging.INFO)
    site = await Site.start(tmp_path, behind=0.0)
    gw = site.gw
    try:
        for _ in range(39):
            await site.second()
        caplog.clear()
        site.oracle.synced = True
        await site.second()
        assert gw.hold.holding and gw.queue.depth == 0
        for _ in range(21):
            await site.second()
        rows = await site.rows()
        assert events(rows) == []
        assert aggs(rows, "s1") == aggs(rows, "s2") == [(T0, 9)] + [(T0 + 10 * j, 10) for j in range(1, 6)]
        status = await gw.status()
        assert status["clock"]["hold"] == {"state": "ended", "reason": "synced", "step_s": None, "waited_s": 41.0,
                                           "released": 82, "redated": 0}
        assert ("clock     held 82 readings 41 s until the clock was synchronised without a step; released as "
                "stamped") in render_lines(status, capsys)
        assert hold_logs(caplog) == ["the clock is synchronised (fake: True) after 41 s, without a step: 82 held "
                                     "reading(s) released as stamped"]
    finally:
        await gw.queue.close()


async def test_waited_out_releases_as_stamped_and_a_later_step_is_told_as_before(tmp_path, caplog, capsys):
    caplog.set_level(logging.INFO)
    site = await Site.start(tmp_path, gateway_extra="clock_sync_wait_s: 30")
    gw = site.gw
    try:
        caplog.clear()
        for k in range(60):
            await site.second(node=False, step=BEHIND if k == 45 else 0.0)
        rows = await site.rows()
        assert aggs(rows, "s1")[:2] == [(T0 - BEHIND, 9), (T0 - BEHIND + 10, 10)]  # released as stamped
        (step,) = [r for r in rows if r.get("type") == "clock_step"]
        assert "redated" not in step  # after the round's windows, as without a hold: the cloud re-dates them
        assert events(rows) == ["clock_step"]  # and no dropout across the step
        status = await gw.status()
        assert status["clock"]["hold"] == {"state": "ended", "reason": "waited_out", "step_s": None,
                                           "waited_s": 30.0, "released": 30, "redated": 0}
        assert ("          held 30 readings 30 s and it was still not synchronised (clock_sync_wait_s); released as "
                "stamped") in render_lines(status, capsys)
        assert hold_logs(caplog) == ["the clock is still not synchronised after 30 s (clock_sync_wait_s; fake: "
                                     "False): 30 held reading(s) released as stamped; a later step goes out as a "
                                     "clock_step event"]
    finally:
        await gw.queue.close()


async def test_the_cap_releases_as_stamped(tmp_path, caplog, capsys):
    caplog.set_level(logging.INFO)
    site = await Site.start(tmp_path)
    gw = site.gw
    gw.hold.cap = 50
    try:
        caplog.clear()
        for _ in range(24):
            await site.second()
        assert gw.hold.holding
        await site.second()  # 50 held
        assert not gw.hold.holding and gw.counts["readings"] == 50
        status = await gw.status()
        assert status["clock"]["hold"] == {"state": "ended", "reason": "cap", "step_s": None, "waited_s": 25.0,
                                           "released": 50, "redated": 0}
        assert "clock     held 50 readings 25 s until the cap on held readings; released as stamped" in \
            render_lines(status, capsys)
        assert hold_logs(caplog) == ["50 readings held after 25 s of waiting for the clock's sync, the cap of 50: "
                                     "released as stamped; a later step goes out as a clock_step event"]
    finally:
        await gw.queue.close()


async def test_a_stop_while_holding_releases_everything_into_the_queue(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    site = await Site.start(tmp_path)
    gw = site.gw
    for _ in range(35):
        await site.second()
    gw.state_lock.acquire()  # as start() does; shutdown releases it
    caplog.clear()
    await gw.shutdown()
    assert gw.counts["readings"] == 70
    assert hold_logs(caplog) == ["stopping while waiting for the clock's sync (35 s): 70 held reading(s) released "
                                 "as stamped"]


async def test_an_oracle_that_cannot_tell_or_says_synchronised_holds_nothing(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    for synced in (None, True):
        hold = ClockHold(lambda r: None, 900.0, Oracle(synced))
        caplog.clear()
        assert hold.begin() is False and not hold.holding
        assert hold.status() == {"state": "not_held", "source": f"fake: {synced}"}
        want = ["clock_sync_wait_s is 900 s, but whether the clock is synchronised cannot be told (fake: None): "
                "readings are not held"] if synced is None else []
        assert hold_logs(caplog) == want


# --- detectors: no dropout, no double correction -------------------------------------------------

DROPOUT = "detector: {threshold: 0.5, params: {weights: [0, 0, 0, 0, 0, 0, 1, 0]}}"


async def test_a_held_step_and_a_link_gap_while_holding_open_no_dropout(tmp_path):
    """600 s of a 1 Hz sensor held (its link down for 60 s in the middle), then NTP. The readings of the
    old link and the new one are released in one round; the sensor's dropout clocks are re-anchored
    between them, where the link came back, not when it came back (they were held then)."""
    site = await Site.start(tmp_path, detector=DROPOUT)
    gw = site.gw
    try:
        for _ in range(300):
            await site.second(node=False)
        gap_start = site.wall.t
        for _ in range(60):  # the link is down: no reading
            site.k += 1
            site.wall.t += 1.0
            site.steady.t += 1.0
            await gw.tick()
        gw._on_gap(LinkGap("s1", gap_start, site.wall.t, "unplugged"))  # the supervisor, on connected()
        for _ in range(300):
            await site.second(node=False)
        assert gw.hold.holding
        await site.second(node=False, step=BEHIND)
        for _ in range(30):
            await site.second(node=False)
        rows = await site.rows()
        assert events(rows) == ["link_gap", "clock_step"]
        assert aggs(rows, "s1")[:2] == [(T0, 9), (T0 + 10, 10)]
        assert gw.hold.ended.redated == 600
    finally:
        await gw.queue.close()


# --- the hold on its own: which readings a step moves ------------------------------------------------

def test_readings_that_arrived_since_the_last_check_are_moved_by_the_clock_they_were_stamped_on():
    for step_s in (3600.0, -3600.0):
        out = []
        steady = Clock(0.0)
        hold = ClockHold(out.append, 900.0, Oracle(False), steady=steady)
        assert hold.begin()
        hold.add(Reading("a", "x", 1.0, 1000.0, gateway_stamped=True))  # before a check: moved
        hold.add(Reading("n", "x", 2.0, 5000.0))  # the node's clock: never moved
        assert hold.poll(None) is None
        hold.add(Reading("a", "x", 3.0, 1000.2, gateway_stamped=True))  # old clock, since the check: moved
        hold.add(Reading("a", "x", 4.0, 1000.4 + step_s, gateway_stamped=True))  # new clock: not moved
        end = hold.poll(Step(step_s, 1000.5, 1000.5 + step_s))
        assert (end.reason, end.released, end.redated) == ("step", 4, 2)
        ((readings, shifts, resumed),) = hold.take()
        assert [(r.value, r.ts + s) for r, s in zip(readings, shifts)] == [
            (1.0, 1000.0 + step_s), (2.0, 5000.0), (3.0, 1000.2 + step_s), (4.0, 1000.4 + step_s)]
        assert resumed == [] and hold.take() == []
        hold.add(Reading("a", "x", 5.0, 2000.0))  # the hold is over: straight to the sink
        assert [r.value for r in out] == [5.0]


def test_the_oracle_is_asked_at_most_once_a_second():
    steady, oracle = Clock(0.0), Oracle(False)
    hold = ClockHold(lambda r: None, 900.0, oracle, steady=steady)
    hold.begin()
    for _ in range(40):  # 5 s of 0.125 s rounds
        steady.t += 0.125
        hold.poll(None)
    assert oracle.asked == 1 + 5


def test_a_held_reading_costs_under_200_bytes():
    """The cap (MAX_HELD = 200,000) is sized from this: about 30 MB."""
    hold = ClockHold(lambda r: None, 900.0, Oracle(False))
    hold.begin()
    channels = [f"c{i}" for i in range(8)]
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for k in range(20_000):
            hold.add(Reading("air-1", channels[k % 8], 20.0 + k, T0 + k, "ug/m3", gateway_stamped=True))
        per = (tracemalloc.get_traced_memory()[0] - before) / 20_000
    finally:
        tracemalloc.stop()
    assert 100 < per < 200


# --- the oracle -------------------------------------------------------------------------------------

def _adjtimex(*results):
    calls = []

    def call() -> int:
        calls.append(1)
        r = results[min(len(calls), len(results)) - 1]
        if isinstance(r, BaseException):
            raise r
        return r

    call.calls = calls
    return call


@pytest.mark.parametrize("state", [0, 1, 2, 3, 4])
def test_adjtimex_0_to_4_is_synchronised(tmp_path, state):
    assert ClockSync(_adjtimex(state), tmp_path / "none").state() == SyncState(True, "adjtimex")


def test_adjtimex_time_error_is_not_synchronised(tmp_path):
    assert ClockSync(_adjtimex(TIME_ERROR), tmp_path / "none").state() == SyncState(False, "adjtimex")


def test_adjtimex_refused_falls_back_to_timesyncd_and_is_not_asked_again(tmp_path):
    call = _adjtimex(OSError(errno.EPERM, "Operation not permitted"))
    folder = tmp_path / "timesync"
    sync = ClockSync(call, folder)
    assert sync.state() == SyncState(None, f"adjtimex refused (EPERM), and no {folder} (systemd-timesyncd not "
                                           "running)")
    folder.mkdir()
    assert sync.state() == SyncState(False, f"adjtimex refused (EPERM); {folder} without synchronized")
    (folder / "synchronized").touch()
    assert sync.state() == SyncState(True, f"adjtimex refused (EPERM); {folder / 'synchronized'} exists")
    assert len(call.calls) == 1


def test_the_real_adjtimex_reads_a_state_or_is_refused():
    try:
        state = read_adjtimex()
    except OSError as exc:
        assert exc.errno == errno.EPERM
    else:
        assert 0 <= state <= TIME_ERROR


# --- who stamped a reading ---------------------------------------------------------------------------

def test_serial_line_readings_are_gateway_stamped_unless_the_line_carries_a_time():
    out = []
    plain = SerialLineDriver("a", LineOptions(port="x", format="kv"), out.append, clock=Clock(T0))
    plain.on_open()
    plain.on_bytes(b"pm25=12.5\n", T0)
    timed = SerialLineDriver("b", LineOptions(port="x", format="csv", columns=("ts", "pm25"), timestamp_field="ts"),
                             out.append, clock=Clock(T0))
    timed.on_open()
    timed.on_bytes(b"1700000000.5,3\n", T0)
    assert [(r.sensor, r.ts, r.gateway_stamped) for r in out] == [("a", T0, True), ("b", 1700000000.5, False)]


def test_pms5003_readings_are_gateway_stamped():
    out = []
    d = Pms5003Driver("pm", Pms5003Options(port="x"), out.append, clock=Clock(T0))
    d.on_open()
    d.on_bytes(encode_frame(tuple(range(13))), T0 + 1)
    assert out and all(r.gateway_stamped and r.ts == T0 + 1 for r in out)


def test_senml_times_relative_to_now_are_the_gateway_s_and_absolute_ones_the_node_s():
    pack = senml.encode_json([{"n": "a", "v": 1, "t": T0 - 60}, {"n": "b", "v": 2}, {"n": "c", "v": 3, "t": -5},
                              {"n": "", "v": 4}, {"bn": "x:", "n": "d", "v": 5}])
    here: list[bool] = []
    samples, errors = decode_payload(pack, senml.CT_SENML_JSON, CoapResource("/t", strip_prefix="x:"), T0, None,
                                     here)
    assert [(s[0], s[2]) for s in samples] == [("a", T0 - 60), ("b", T0), ("c", T0 - 5), ("d", T0)]
    assert here == [False, True, True, True] and errors == 1
    here = []
    assert decode_payload(b'{"p": 1, "q": 2}', senml.CT_JSON, CoapResource("/t"), T0, None, here)[0]
    assert here == [True, True]


async def test_the_coap_driver_marks_what_it_stamped():
    node = CoapNode()
    node.add("/t").publish(senml.encode_json([{"n": "abs", "v": 1, "t": T0}, {"n": "rel", "v": 2}]),
                           senml.CT_SENML_JSON)
    await node.start()
    out = []
    driver = CoapDriver("n", CoapOptions(uri=node.uri, resources=(CoapResource("/t"),), mode="poll",
                                         interval_s=0.05), out.append)
    try:
        async with running(driver):
            assert await wait_until(lambda: len(out) >= 3)  # the absolute sample once, the relative each poll
    finally:
        await node.stop()
    assert [(r.channel, r.gateway_stamped) for r in out[:3]] == [("abs", False), ("rel", True), ("rel", True)]


async def test_modbus_readings_are_gateway_stamped(pty):  # noqa: F811
    bank = RegisterBank()
    bank.set_registers(1, "holding", 0, encode_value("uint16", "big", 7))
    sim = ModbusSlaveSim(bank)
    sim.attach(pty)
    out = []
    opts = ModbusOptions(port=pty.slave_path, timeout_s=0.15, blocks=(
        ModbusBlock(slave=1, address=0, count=1, interval_s=0.05, fields=(ModbusField("v", 0),)),))
    driver = ModbusRtuDriver("m", opts, out.append)
    async with running(driver):
        assert await wait_until(lambda: len(out) >= 2)
    sim.detach()
    assert all(r.gateway_stamped and r.value == 7.0 for r in out)


# --- config -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("value", ["-1", "86401", ".nan", "'soon'"])
def test_clock_sync_wait_s_refused_where_it_stands(value):
    with pytest.raises(config.ConfigError) as err:
        config.loads(f"gateway:\n  id: g\n  clock_sync_wait_s: {value}\n")
    assert str(err.value).startswith("<string>:3:22: gateway.clock_sync_wait_s: ")


def test_clock_sync_wait_s_default_and_reload():
    from edge_gateway import reload

    old = config.loads("gateway: {id: g}\n")
    assert old.gateway.clock_sync_wait_s == 0.0
    new = config.loads("gateway: {id: g, clock_sync_wait_s: 900}\n")
    plan = reload.plan(old, new)
    assert plan.ok and plan.other_changed == ("gateway.clock_sync_wait_s",)


def test_doctor_tells_an_unsynchronised_clock_with_what_the_config_does_about_it():
    from edge_gateway.cmd_doctor import Check, clock_wait_note

    bad = Check("clock", "fail", "not synchronised (timedatectl)", "timedatectl set-ntp true")
    assert clock_wait_note(bad, 900.0) == Check(
        "clock", "fail", "not synchronised (timedatectl); at start the gateway holds readings until it is, at most "
        "900 s (gateway.clock_sync_wait_s)", "timedatectl set-ntp true")
    assert clock_wait_note(bad, 0.0) == Check(
        "clock", "fail", "not synchronised (timedatectl)", "timedatectl set-ntp true; and set "
        "gateway.clock_sync_wait_s (e.g. 900) so that readings wait for the sync instead of going out "
        "wrong-dated")
    assert clock_wait_note(bad, None) == bad  # no config loaded
    good = Check("clock", "ok", "synchronised (timedatectl)")
    assert clock_wait_note(good, 0.0) == good and clock_wait_note(good, 900.0) == good
