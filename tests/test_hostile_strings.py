"""A rogue node's strings never reach a technician's terminal raw (security review s19, #1 and #8).

Two layers: the CoAP/SenML decoders refuse channel names and units that are not printable or too long
(counted as malformed, the payload's other values kept), and ``status``/``tail`` escape any control
character the daemon passes on anyway (an older daemon, a driver that forgets).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time

import cbor2
import pytest
from driver_fixtures import by_channel, running, wait_until
from ops_support import cli, polled_status, status_json, write_config
from support import REPO, GatewayProcess, wait_for

from drivers import senml
from drivers.coap import CoapDriver, CoapOptions, CoapResource, decode_payload
from edge_gateway.cmd_common import printable
from edge_gateway.cmd_status import render
from edge_gateway.cmd_tail import format_item
from simulators.coap_node import CoapNode

NOW = 1_700_000_000.0
ESC_KEY = "\x1b]0;owned-title\x07\x1b[2J\x1b[Hpm25"  # retitles the window, clears the screen
ESC_UNIT = "ug/m3\x1b[1A\x1b[2K\x1b[32mALL SENSORS OK\x1b[0m"  # rewrites the line above
LONG = "a" * 10_000  # 10 KB: RFC 8428 characters, printable, only too long


def _both(pack):
    """The pack decoded from SenML JSON and from SenML CBOR (the two must agree)."""
    got = senml.decode_json(senml.encode_json(pack), NOW)
    assert senml.decode_cbor(senml.encode_cbor(pack), NOW) == got
    return got


# ---- input: the decoders


def test_bounds():
    assert (senml.MAX_NAME, senml.MAX_UNIT) == (128, 32)


def test_coap_json_object_keys_must_be_printable_and_at_most_max_name():
    res = CoapResource("/j", units={"pm25": "ug/m3"})
    obj = {ESC_KEY: 1, LONG: 2, "pm25": 3, "x" * 128: 4, "y" * 129: 5, "a\nb": 6, "\x00": 7, "t\u202eu": 8,
           "pm10 µ": 9, "": 10}
    for cf, payload in ((senml.CT_JSON, json.dumps(obj).encode()), (60, cbor2.dumps(obj))):
        assert decode_payload(payload, cf, res, NOW) == (
            [("pm25", 3.0, NOW, "ug/m3"), ("x" * 128, 4.0, NOW, ""), ("pm10 µ", 9.0, NOW, "")], 7)


def test_senml_units_must_be_printable_and_at_most_max_unit():
    pack = [{"n": "no2", "u": ESC_UNIT, "v": 1}, {"n": "o3", "u": "ppb", "v": 2},
            {"n": "co", "u": "u" * 33, "v": 3}, {"n": "co2", "u": "u" * 32, "v": 4},
            {"n": "h", "u": "%\nRH", "v": 5}, {"n": "t", "u": "°C", "v": 6}]
    assert _both(pack) == ([senml.Record("o3", 2.0, NOW, "ppb"), senml.Record("co2", 4.0, NOW, "u" * 32),
                            senml.Record("t", 6.0, NOW, "°C")], 3)


def test_a_bad_base_unit_is_unusable_until_set_again():
    """As any invalid base field: not replaced by the previous base unit, the records relying on it refused."""
    pack = [{"bn": "d:", "bu": "Cel", "n": "a", "v": 1}, {"bu": "\x07", "n": "b", "v": 2}, {"n": "c", "v": 3},
            {"n": "d", "u": "%RH", "v": 4}, {"bu": "K" * 33, "n": "e", "v": 5}, {"bu": "K", "n": "f", "v": 6}]
    assert _both(pack) == ([senml.Record("d:a", 1.0, NOW, "Cel"), senml.Record("d:d", 4.0, NOW, "%RH"),
                            senml.Record("d:f", 6.0, NOW, "K")], 3)


def test_senml_names_longer_than_max_name_are_malformed():
    pack = [{"n": LONG, "v": 1}, {"n": "n" * 128, "v": 2}, {"n": "n" * 129, "v": 3},
            {"bn": "b" * 10_000, "n": "x", "v": 4}, {"bn": "b" * 100 + ":", "n": "n" * 27, "v": 5},
            {"n": "n" * 28, "v": 6}, {"bn": "", "n": "ok", "v": 7}]
    assert _both(pack) == ([senml.Record("n" * 128, 2.0, NOW, ""), senml.Record("b" * 100 + ":" + "n" * 27, 5.0, NOW, ""),
                            senml.Record("ok", 7.0, NOW, "")], 4)


def test_coap_senml_payload_keeps_the_good_records_and_counts_each_bad_one():
    res = CoapResource("/s", strip_prefix="node-1:")
    pack = [{"bn": "node-1:", "n": "no2", "u": ESC_UNIT, "v": 1}, {"n": LONG, "v": 2},
            {"n": "o3", "u": "ppb", "v": 3}, {"n": "\x1b[2Jx", "v": 4}]
    for cf, payload in ((senml.CT_SENML_JSON, senml.encode_json(pack)), (senml.CT_SENML_CBOR, senml.encode_cbor(pack))):
        assert decode_payload(payload, cf, res, NOW) == ([("o3", 3.0, NOW, "ppb")], 3)


def _hostile_payloads(k: int) -> dict[str, tuple[bytes, int]]:
    """Round ``k`` of a rogue node: per resource, a payload with two hostile parts and good ones."""
    obj = {ESC_KEY: 10.0 + k, LONG: 1.0, "pm25": 20.0 + k, "pm10": 30.0 + k}
    pack = [{"bn": "s:", "n": "no2", "u": ESC_UNIT, "v": 40.0 + k}, {"n": LONG, "v": 1.0},
            {"n": "o3", "u": "ppb", "v": 50.0 + k}, {"n": "co", "u": "u" * 33, "v": 1.0}]
    cpack = [{**pack[0], "bn": "c:"}, *pack[1:]]
    return {"/j": (json.dumps(obj).encode(), senml.CT_JSON),
            "/s": (senml.encode_json(pack), senml.CT_SENML_JSON),
            "/c": (senml.encode_cbor(cpack), senml.CT_SENML_CBOR)}


async def test_rogue_node_on_loopback_counts_each_bad_name_and_unit_and_keeps_the_good_channels():
    """A real aiocoap node (the 10 KB names go block-wise): exactly 2 + 3 + 3 malformed per round."""
    node = CoapNode()
    for path, (payload, cf) in _hostile_payloads(0).items():
        node.add(path).publish(payload, cf)
    await node.start()
    out = []
    opts = CoapOptions(uri=node.uri, observe_timeout_s=60,
                       resources=(CoapResource("/j", units={"pm25": "ug/m3"}), CoapResource("/s"), CoapResource("/c")))
    driver = CoapDriver("rogue", opts, out.append)
    try:
        async with running(driver):
            assert await wait_until(lambda: len(out) == 4 and driver.stats.malformed == 8, timeout=10)
            for path, (payload, cf) in _hostile_payloads(1).items():
                node.resources[path].publish(payload, cf)
            assert await wait_until(lambda: len(out) == 8 and driver.stats.malformed == 16, timeout=10)
            await asyncio.sleep(0.3)
    finally:
        await node.stop()
    assert driver.stats.malformed == 16
    got = {ch: [(r.value, r.unit) for r in rs] for ch, rs in by_channel(out).items()}
    assert got == {"pm25": [(20.0, "ug/m3"), (21.0, "ug/m3")], "pm10": [(30.0, ""), (31.0, "")],
                   "s:o3": [(50.0, "ppb"), (51.0, "ppb")], "c:o3": [(50.0, "ppb"), (51.0, "ppb")]}


# ---- output: the CLI


@pytest.mark.parametrize("text, shown", [
    ("ug/m3", "ug/m3"), ("µg/m³ °C", "µg/m³ °C"), (ESC_KEY, "\\x1b]0;owned-title\\x07\\x1b[2J\\x1b[Hpm25"),
    ("a\nb\tc\r", "a\\nb\\tc\\r"), ("\x00\x7f", "\\x00\\x7f"), ("\x9b2J", "\\x9b2J"), ("x\u202ey", "x\\u202ey"),
    ("a\u2028b", "a\\u2028b"), (42, "42"), ("C:\\dir", "C:\\dir")])
def test_printable_escapes_exactly_the_characters_that_are_not_printable(text, shown):
    assert printable(text) == shown
    assert printable(shown) == shown


def _hostile_status() -> dict:
    """What an older daemon (or a driver that forgets) could pass on: every sensor-supplied text hostile."""
    return {"gateway": "gw", "pid": 7, "uptime_s": 300, "link": "down", "inflight": 0,
            "link_error": "connect failed: \x1b[31mrefused", "queue": {"depth": 0},
            "sensors": {"rogue": {"driver": "coap", "rate_per_s": 1, "last_reading_age_s": 0.5, "malformed": 8,
                                  "last_values": {ESC_KEY: {"value": 10, "unit": ESC_UNIT},
                                                  "pm\n25": {"value": 3, "unit": "ug/m3"}},
                                  "last_error": "/s: 4.00 \x1b]0;pwned\x07\nALL OK", "last_error_age_s": 12}},
            "last_events": [{"start": NOW, "sensor": "rogue", "type": "anomaly\x1b[8m", "state": "open",
                             "channel": "no2\x1b[2K", "peak_value": 1.5, "peak_score": 2.0,
                             "reason": "range \x07\r"}]}


def _hms(ts: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(ts))


E_KEY = "\\x1b]0;owned-title\\x07\\x1b[2J\\x1b[Hpm25"
E_UNIT = "ug/m3\\x1b[1A\\x1b[2K\\x1b[32mALL SENSORS OK\\x1b[0m"
VALUES = f"{E_KEY}=10 {E_UNIT}, pm\\n25=3 ug/m3"


def _status_lines() -> list[str]:
    pad = " " * (len(VALUES) - len("LAST VALUES"))
    return [
        "gateway   gw   pid 7   up 5m",
        "broker    down: connect failed: \\x1b[31mrefused",
        "queue     0 messages, oldest -, in flight 0",
        "produced  0 readings, 0 aggregates, 0 events; published: 0 aggregates, 0 events",
        "",
        f"SENSOR  DRIVER  RATE    LAST  BAD  LINK ERR  LAST VALUES{pad}  LAST ERROR",
        f"------  ------  ------  ----  ---  --------  {'-' * len(VALUES)}  ----------",
        f"rogue   coap    1.00/s  0s    8    0         {VALUES}  12 s ago",
        "    last error: /s: 4.00 \\x1b]0;pwned\\x07\\nALL OK",
        "",
        f"TIME      SENSOR  {'EVENT':<21}  {'CHANNEL':<10}  VALUE  SCORE  REASON",
        f"--------  ------  {'-' * 21}  {'-' * 10}  -----  -----  {'-' * 12}",
        f"{_hms(NOW)}  rogue   anomaly\\x1b[8m (open)  no2\\x1b[2K  1.5    2.00   range \\x07\\r",
    ]


def test_status_render_escapes_every_sensor_supplied_text(capsys, monkeypatch):
    monkeypatch.delenv("COLUMNS", raising=False)
    render(_hostile_status(), now=NOW)
    out = capsys.readouterr().out
    assert out.splitlines() == _status_lines()
    assert "\x1b" not in out and "\x07" not in out and "\r" not in out


def test_tail_lines_escape_every_sensor_supplied_text():
    start = time.strftime("%H:%M:%S", time.localtime(NOW))
    reading = {"type": "reading", "sensor": "rogue", "channel": ESC_KEY, "value": 12.5, "unit": ESC_UNIT, "ts": NOW}
    assert format_item(reading) == f"{start}.000 rogue        {E_KEY}         12.5 {E_UNIT}"
    event = {"type": "event", "event": "anomaly\x1b[8m", "sensor": "rogue", "start": NOW, "channel": "no2\x1b[2K",
             "reason": "range \x07\r\nALL OK", "note\x1b": "x", "seq": 3}
    assert format_item(event) == (f"{start}.000 rogue        EVENT anomaly\\x1b[8m channel=no2\\x1b[2K "
                                  "reason=range \\x07\\r\\nALL OK note\\x1b=x")


class _OldDaemon:
    """A control socket that answers like a daemon passing hostile strings on: one status document, or
    a tail of the given items; one connection at a time, in a thread."""

    def __init__(self, path, status: dict, items: list[dict]) -> None:
        self.status, self.items = status, items
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(str(path))
        self.sock.listen(4)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn, conn.makefile("rwb") as f:
                req = json.loads(f.readline())
                lines = ([{"ok": True, "status": self.status}] if req["cmd"] == "status"
                         else [{"ok": True}, *self.items])
                f.write(b"".join(json.dumps(line).encode() + b"\n" for line in lines))
                f.flush()

    def close(self) -> None:
        self.sock.close()


def test_status_and_tail_commands_never_write_a_control_character_whatever_the_daemon_sends(tmp_path):
    sock = tmp_path / "control.sock"
    reading = {"type": "reading", "sensor": "rogue", "channel": ESC_KEY, "value": 12.5, "unit": ESC_UNIT, "ts": NOW}
    daemon = _OldDaemon(sock, _hostile_status(), [reading])
    try:
        r = cli("status", "--socket", sock)
        assert (r.returncode, r.stderr) == (0, "")
        assert r.stdout.splitlines() == _status_lines()
        r = cli("status", "--socket", sock, "--json")
        assert r.returncode == 0 and "\x1b" not in r.stdout and "\\u001b" in r.stdout  # JSON escapes them
        assert json.loads(r.stdout) == _hostile_status()
        r = cli("tail", "--socket", sock, "--count", "1")
        start = time.strftime("%H:%M:%S", time.localtime(NOW))
        assert (r.returncode, r.stdout) == (0, f"{start}.000 rogue        {E_KEY}         12.5 {E_UNIT}\n")
        r = cli("tail", "--socket", sock, "--count", "1", "--json")
        assert r.returncode == 0 and "\x1b" not in r.stdout and json.loads(r.stdout) == reading
    finally:
        daemon.close()


# ---- both: a real daemon reading a rogue node


def test_status_and_tail_of_a_real_daemon_reading_a_rogue_node(tmp_path):
    node = CoapNode("127.0.0.1")
    for path, (payload, cf) in _hostile_payloads(0).items():
        node.add(path).publish(payload, cf)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(node.start(), loop).result(10)

    def publish(k: int) -> None:
        for path, (payload, cf) in _hostile_payloads(k).items():
            node.resources[path].publish(payload, cf)

    cfg = write_config(tmp_path, sensors=f"""\
    - id: rogue
      driver: coap
      options:
        uri: "{node.uri}"
        observe_timeout_s: 60
        resources: [{{path: /j, units: {{pm25: ug/m3}}}}, {{path: /s}}, {{path: /c}}]
    """)
    gw = GatewayProcess(cfg, tmp_path / "gw.log").start()
    sock = tmp_path / "state" / "control.sock"
    tail = None
    try:
        gw.wait_ready(300)
        wait_for(lambda: polled_status(sock)["sensors"]["rogue"]["malformed"] == 8, 20, 0.2, "first round")
        tail = subprocess.Popen([sys.executable, "-m", "edge_gateway", "tail", "rogue", "--socket", str(sock),
                                 "--count", "4"], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
        wait_for(lambda: polled_status(sock)["control"]["clients"] >= 2, 10, 0.1, "tail connected")
        loop.call_soon_threadsafe(publish, 1)
        tout, terr = tail.communicate(timeout=30)
        assert (tail.returncode, terr) == (0, b"")
        s = status_json(sock)
        r = cli("status", "--socket", sock)
    finally:
        if tail is not None and tail.poll() is None:
            tail.kill()
            tail.wait()
        rc = gw.stop()
        asyncio.run_coroutine_threadsafe(node.stop(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
    assert rc == 0
    rogue = s["sensors"]["rogue"]
    assert rogue["malformed"] == 16
    assert {ch: (v["value"], v.get("unit", "")) for ch, v in rogue["last_values"].items()} == {
        "pm25": (21.0, "ug/m3"), "pm10": (31.0, ""), "s:o3": (51.0, "ppb"), "c:o3": (51.0, "ppb")}
    assert r.returncode == 0, r.stderr
    assert "\x1b" not in r.stdout and "\x07" not in r.stdout
    assert re.search(r"^rogue   coap    \S+  \S+ +16   0         c:o3=51 ppb, pm10=31, pm25=21 ug/m3, s:o3=51 ppb$",
                     r.stdout, re.M), r.stdout
    lines = tout.decode().splitlines()
    assert b"\x1b" not in tout and len(lines) == 4
    assert sorted(line.split()[2:] for line in lines) == [
        ["c:o3", "51", "ppb"], ["pm10", "31"], ["pm25", "21", "ug/m3"], ["s:o3", "51", "ppb"]]
