"""Review 16 (bounds), items 3 and 5: what a long unattended run must not let grow.

#3: a CoAP node whose channel names keep changing (a counter in the name) made the driver remember
every name it ever sent (439 B each). Real aiocoap nodes on 127.0.0.1.
#5: a broker that refuses the gateway's messages (an ACL, 0x87; a size limit, 0x95) made the
forwarder log a line or two per message. Real Mosquitto. Every wait is bounded; each test failed on
the code the review read.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from types import SimpleNamespace

from driver_fixtures import running, wait_until

from drivers import senml
from drivers.coap import CoapDriver, CoapOptions, CoapResource
from edge_gateway import messages
from edge_gateway.config import BrokerSection
from edge_gateway.forwarder import Forwarder
from edge_gateway.queue import DurableQueue
from edge_gateway.uplink import MqttLink
from simulators.coap_node import CoapNode
from support import Broker
from uplink_support import until

NOW = 1_700_000_000.0
FW = "edge_gateway.forwarder"
TOPICS = messages.Topics("city", "bf-gw")
SUFFIX = "; the others with this code are counted in a summary every %g s (each seq at debug level)"


# --- #3: the CoAP driver's per-channel times ------------------------------------------------------

def _pack(names: list[str], t: float) -> bytes:
    return senml.encode_json([{"bt": t, "n": names[0], "v": 0.0}] + [{"n": n, "v": float(i)}
                                                                     for i, n in enumerate(names[1:], 1)])


async def _poll(payload: bytes, **options):
    node = CoapNode()
    res = node.add("/p")
    res.publish(payload, senml.CT_SENML_JSON)
    await node.start()
    out = []
    opts = CoapOptions(uri=node.uri, mode="poll", interval_s=0.01, resources=(CoapResource("/p"),), **options)
    return node, res, out, CoapDriver("n", opts, out.append)


async def test_a_node_naming_new_channels_keeps_the_times_of_the_last_1024_only():
    """3,000 distinct names in 30 packs: the driver remembers the 1,024 sent last (before: all 3,000),
    every pack's samples are published once however often it is polled, and a channel among those
    1,024 is still recognised when a pack repeats it; one sent before them is taken as new."""
    names = [[f"c{k}_{i}" for i in range(100)] for k in range(30)]
    node, res, out, driver = await _poll(_pack(names[0], NOW))
    st = driver._states["/p"]
    try:
        async with running(driver):
            for k in range(30):
                res.publish(_pack(names[k], NOW + k), senml.CT_SENML_JSON)
                assert await wait_until(lambda: len(out) == 100 * (k + 1), 10), k
            dups = st.stats.duplicates
            assert await wait_until(lambda: st.stats.duplicates >= dups + 200, 10)  # two more polls of pack 29
            sent = [n for pack in names for n in pack]
            assert list(st.recent) == list(st.newest) == sent[-1024:]
            assert st.newest == {n: NOW + i // 100 for i, n in enumerate(sent) if i >= 3000 - 1024}
            assert st.recent == {n: frozenset({t}) for n, t in st.newest.items()}
            assert len(out) == 3000
            res.publish(_pack(["c29_0", "c0_0"], NOW + 29), senml.CT_SENML_JSON)  # c0_0 also at NOW + 29
            assert await wait_until(lambda: len(out) == 3001, 10)
            dups = st.stats.duplicates
            assert await wait_until(lambda: st.stats.duplicates >= dups + 4, 10)
    finally:
        await node.stop()
    assert [(r.channel, r.ts) for r in out[-1:]] == [("c0_0", NOW + 29)]
    assert len(out) == 3001 and st.stats.clock_steps == 0 and driver.stats.malformed == 0
    assert len(st.recent) == len(st.newest) == 1024 and list(st.recent)[-2:] == ["c29_0", "c0_0"]


async def test_a_pack_larger_than_the_bound_is_kept_whole_until_a_smaller_one_follows():
    """A 2,000-channel pack (max_records allows 4,096) polled again and again is published once: all
    its channels are remembered. The next, smaller pack trims the memory to 1,024 channels."""
    big = [f"a{i}" for i in range(2000)]
    node, res, out, driver = await _poll(_pack(big, NOW), max_payload_bytes=1 << 18)
    st = driver._states["/p"]
    try:
        async with running(driver):
            assert await wait_until(lambda: len(out) == 2000, 20)
            assert await wait_until(lambda: st.stats.duplicates >= 2 * 2000, 20)
            assert len(out) == 2000 and len(st.recent) == len(st.newest) == 2000
            res.publish(_pack([f"b{i}" for i in range(10)], NOW + 10), senml.CT_SENML_JSON)
            assert await wait_until(lambda: len(out) == 2010, 10)
            dups = st.stats.duplicates
            assert await wait_until(lambda: st.stats.duplicates >= dups + 20, 10)
    finally:
        await node.stop()
    assert len(out) == 2010
    assert list(st.recent) == list(st.newest) == big[-1014:] + [f"b{i}" for i in range(10)]


# --- #5: the forwarder's log lines while the broker refuses ---------------------------------------

@contextlib.asynccontextmanager
async def _refused_by(tmp_path, extra: str, **fw_kwargs):
    """Mosquitto configured with ``extra``, and a forwarder and link sending to it. On leaving, the
    forwarder, the link and the broker stop (the counters are final), ``up.dropped`` is read and the
    queue closes."""
    broker = Broker(tmp_path / "broker", persistence=False, extra=extra).start()
    queue = DurableQueue(tmp_path / "q.db", messages.encode)
    await queue.open()
    fw = Forwarder(queue, None, ack_batch_s=0.02, window=100, retry_s=0.02, retry_max_s=0.1,  # type: ignore[arg-type]
                   **fw_kwargs)
    link = MqttLink(BrokerSection(port=broker.port, protocol="5", keepalive_s=5, reconnect_min_s=0.05,
                                  reconnect_max_s=0.3),
                    "bf-gw", TOPICS.status, birth=lambda: b"online", will=b"offline", on_ack=fw.on_ack,
                    on_state=fw.on_link)
    fw.link = link
    up = SimpleNamespace(queue=queue, fw=fw, link=link, dropped=None)
    fw.start()
    link.start()
    try:
        yield up
    finally:
        try:
            await fw.stop()
            await link.stop()
            broker.close()
            up.dropped = queue.stats_now().dropped_total
        finally:
            await queue.close()


def _acl_denying_aggregates(tmp_path) -> str:
    """Mosquitto config lines: the gateway may publish its status, no aggregate (each refused with 0x87)."""
    acl = tmp_path / "acl"
    acl.write_text(f"topic read #\ntopic write {TOPICS.status}\n")
    return f"acl_file {acl}"


def _agg(i: int, pad: int = 0) -> messages.Message:
    return messages.Message("agg", TOPICS.agg("air-1"), {"i": i, "pad": "x" * pad})


def _journal(caplog) -> list[str]:
    """What the journal (INFO and up) got from the forwarder."""
    return [r.getMessage() for r in caplog.records if r.name == FW and r.levelno >= logging.INFO]


def _debug(caplog, pattern: str) -> int:
    return sum(1 for r in caplog.records
               if r.name == FW and r.levelno == logging.DEBUG and re.search(pattern, r.getMessage()))


async def test_an_acl_refusing_every_aggregate_logs_two_lines_not_two_per_message(tmp_path, caplog):
    """80 aggregates at 20/s, every one refused with 0x87 six times and dropped: the journal gets the
    first refusal and the summary with the seqs (before: 161 lines, a warning and an error per seq)."""
    caplog.set_level(logging.DEBUG, logger=FW)
    async with _refused_by(tmp_path, _acl_denying_aggregates(tmp_path)) as up:
        queue, fw = up.queue, up.fw
        seqs = []
        for k in range(20):
            seqs += await queue.append([_agg(4 * k + j) for j in range(4)])
            fw.notify()
            await asyncio.sleep(0.2)
        await until(lambda: fw.stats.refused_dropped == 80, 20, "80 refused 6 times")
    assert seqs == list(range(seqs[0], seqs[0] + 80))
    assert fw.stats.rejected == 480 and fw.stats.rejected_by_reason == {0x87: 480} and fw.stats.acked == 0
    assert (up.dropped["count"], up.dropped["reasons"]) == (80, {"rejected": 80})
    journal = _journal(caplog)
    assert len(journal) == 2
    assert journal[0] == (f"broker refused seq {seqs[0]} with 0x87 not authorized: resending with backoff, "
                          f"dropped after 6 refusals" + SUFFIX % 60)
    assert re.fullmatch(r"broker refusals in the last \d+ s: (.*)", journal[1])[1] == (
        f"480 x 0x87 not authorized (seq {seqs[0]} to {seqs[-1]}, 80 refused for the first time); "
        f"0 refused message(s) not yet accepted; dropped now: 80 rejected (seq {seqs[0]} to {seqs[-1]})")
    assert _debug(caplog, r"^broker refused seq \d+ with 0x87 .*resending with backoff") == 79
    assert _debug(caplog, r"^broker refused seq \d+ 6 time\(s\), last with 0x87 .*: dropped") == 80


async def test_summaries_count_every_refusal_and_a_new_episode_is_logged_again(tmp_path, caplog):
    """report_s 1 s, refusals for 2.5 s: the summaries add up to the counters exactly; once refusals
    stop for report_s, the next one opens a new episode and is logged again (one line each)."""
    caplog.set_level(logging.INFO, logger=FW)
    async with _refused_by(tmp_path, _acl_denying_aggregates(tmp_path), report_s=1.0) as up:
        queue, fw = up.queue, up.fw
        first = []
        for k in range(10):
            first += await queue.append([_agg(2 * k), _agg(2 * k + 1)])
            fw.notify()
            await asyncio.sleep(0.25)
        await until(lambda: fw.stats.refused_dropped == 20, 20, "20 dropped")
        await until(lambda: queue.depth == 0, 5, "dropped from the queue")
        await asyncio.sleep(1.2)
        second = await queue.append([_agg(100)])
        fw.notify()
        await until(lambda: fw.stats.refused_dropped == 21, 20, "the 21st dropped")
    journal = _journal(caplog)
    opened = [m for m in journal if m.startswith("broker refused seq")]
    assert opened == [f"broker refused seq {s} with 0x87 not authorized: resending with backoff, dropped after "
                      f"6 refusals" + SUFFIX % 1 for s in (first[0], second[0])]
    summaries = [re.fullmatch(r"broker refusals in the last \d+ s: (\d+) x 0x87 not authorized \(seq (\d+) to "
                              r"(\d+), (\d+) refused for the first time\); \d+ refused message\(s\) not yet "
                              r"accepted(?:; dropped now: (\d+) rejected \(seq (\d+) to (\d+)\))?", m)
                 for m in journal if m not in opened]
    assert all(summaries) and len(journal) == len(opened) + len(summaries)
    assert sum(int(m[1]) for m in summaries) == fw.stats.rejected == 21 * 6
    assert sum(int(m[4]) for m in summaries) == 21
    assert sum(int(m[5] or 0) for m in summaries) == fw.stats.refused_dropped == 21
    assert min(int(m[2]) for m in summaries) == first[0] and max(int(m[3]) for m in summaries) == second[0]


async def test_messages_too_large_for_the_broker_log_one_error_and_the_summary(tmp_path, caplog):
    """Mosquitto's message_size_limit refuses 30 of 40 messages with 0x95 (dropped at once): one error
    line and the summary, not an error per message (before: 31 lines)."""
    caplog.set_level(logging.DEBUG, logger=FW)
    async with _refused_by(tmp_path, "message_size_limit 300") as up:
        fw = up.fw
        seqs = await up.queue.append([_agg(i, 0 if i % 4 == 0 else 600) for i in range(40)])
        fw.notify()
        await until(lambda: fw.stats.acked == 10 and fw.stats.refused_dropped == 30, 20, "10 sent, 30 refused")
    large = [s for i, s in enumerate(seqs) if i % 4]
    assert fw.stats.rejected_by_reason == {0x95: 30}
    assert (up.dropped["count"], up.dropped["reasons"]) == (30, {"rejected": 30})
    journal = _journal(caplog)
    assert len(journal) == 2
    assert journal[0] == (f"broker refused seq {large[0]} 1 time(s), last with 0x95 packet too large: dropped "
                          f"with the next summary (reason rejected)" + SUFFIX % 60)
    assert re.fullmatch(r"broker refusals in the last \d+ s: (.*)", journal[1])[1] == (
        f"30 x 0x95 packet too large (seq {large[0]} to {large[-1]}, 30 refused for the first time); "
        f"0 refused message(s) not yet accepted; dropped now: 30 rejected (seq {large[0]} to {large[-1]})")
    assert _debug(caplog, r"^broker refused seq \d+ 1 time\(s\), last with 0x95 .*: dropped") == 29
