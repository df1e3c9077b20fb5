"""``doctor``'s coap check against real aiocoap nodes on loopback, and the driver's words for a node that is down.

Each CoAP sensor gets one row ``coap ID``: one confirmable GET per configured resource, with a bounded wait.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from pathlib import Path

import pytest
from ops_support import cli, write_config

from drivers import senml
from drivers.base import LinkLost
from drivers.coap import CoapDriver, CoapOptions, CoapResource, no_answer
from edge_gateway import cmd_doctor, config
from simulators.coap_node import CoapNode, free_udp_port

ENV = senml.encode_json([{"bn": "env-1:", "n": "temp", "u": "Cel", "v": 21.5}])
REFUSED = "(node off, unplugged or unreachable) [Connection refused]"


def _sensors(tmp_path: Path, text: str):
    """The sensors of a config holding ``text`` under ``sensors:``, as the loader makes them."""
    cfg = write_config(tmp_path, sensors=text)
    return config.load(cfg).sensors


def _coap(sid: str, uri: str, *paths: str, **extra) -> str:
    resources = ", ".join(f"{{path: {p}}}" for p in paths)
    more = "".join(f", {k}: {v}" for k, v in extra.items())
    return (f"- id: {sid}\n  driver: coap\n"
            f'  options: {{uri: "{uri}", mode: poll, resources: [{resources}]{more}}}\n')


async def _node(**paths: tuple[bytes, int]) -> CoapNode:
    node = CoapNode()
    for path, (payload, cf) in paths.items():
        node.add("/" + path).publish(payload, cf)
    await node.start()
    return node


async def test_a_node_that_answers_every_resource_is_ok(tmp_path):
    node = await _node(env=(ENV, senml.CT_SENML_JSON), speed=(b"31.5", 0))
    try:
        sensors = _sensors(tmp_path, _coap("env-1", node.uri, "/env", "/speed"))
        (check,) = await cmd_doctor.coap_checks(sensors, 2.0)
    finally:
        await node.stop()
    assert check == cmd_doctor.Check(
        "coap env-1", "ok", f"{node.uri}/env: 2.05 Content, application/senml+json, {len(ENV)} bytes, 1 value; "
                            "/speed: 2.05 Content, text/plain, 4 bytes, 1 value", "")
    assert [node.resources[p].gets for p in ("/env", "/speed")] == [1, 1]  # one GET per resource


async def test_a_resource_the_node_does_not_have_is_a_4_04_with_the_fix(tmp_path):
    node = await _node(env=(ENV, senml.CT_SENML_JSON))
    try:
        sensors = _sensors(tmp_path, _coap("env-1", node.uri, "/env", "/enviro"))
        (check,) = await cmd_doctor.coap_checks(sensors, 2.0)
    finally:
        await node.stop()
    assert (check.name, check.status) == ("coap env-1", "fail")
    assert check.detail == (f"{node.uri}/env: 2.05 Content, application/senml+json, {len(ENV)} bytes, 1 value; "
                            "/enviro: 4.04 Not Found: the node has no resource /enviro")
    assert check.fix == "check `resources` in the config: is the path /enviro right?"


async def test_a_payload_that_is_not_valid_senml_for_the_driver_is_said_so(tmp_path):
    node = await _node(env=(b'[{"n": "temp", "v": "21.5"}]', senml.CT_SENML_JSON))
    try:
        (check,) = await cmd_doctor.coap_checks(_sensors(tmp_path, _coap("env-1", node.uri, "/env")), 2.0)
    finally:
        await node.stop()
    assert check == cmd_doctor.Check(
        "coap env-1", "fail", f"{node.uri}/env: 2.05 Content, application/senml+json, 28 bytes: not valid SenML "
                              "JSON for the driver, it reads nothing from it",
        "the driver reads SenML JSON (content-format 110) or CBOR (112), JSON (50), CBOR (60) or a plain number "
        "(0): check what the node's firmware sends")


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
async def test_an_unreachable_node_is_one_line_with_the_fix_within_the_timeout(tmp_path, host):
    """A closed port: the host says so at once (ICMP port unreachable). A port where nothing answers: the
    check gives up after --timeout, having sent a confirmable GET."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        closed = free_udp_port(host)
    except OSError:
        pytest.skip(f"no {host} here")
    uri = f"coap://{f'[{host}]' if ':' in host else host}"
    with socket.socket(family, socket.SOCK_DGRAM) as silent:
        silent.settimeout(5)
        silent.bind((host, 0))
        mute = silent.getsockname()[1]
        sensors = _sensors(tmp_path, _coap("off", f"{uri}:{closed}", "/env", "/speed")
                           + _coap("mute", f"{uri}:{mute}", "/env"))
        t0 = time.monotonic()
        off, quiet = await cmd_doctor.coap_checks(sensors, 0.5)
        took = time.monotonic() - t0
        datagram = silent.recv(64)
    assert off == cmd_doctor.Check(
        "coap off", "fail", f"no answer from {uri}:{closed} {REFUSED}",
        f"{host} is up but nothing listens on UDP port {closed}: is the node's CoAP server running, and is the port "
        "in `uri` right?")
    assert quiet == cmd_doctor.Check("coap mute", "fail", f"no answer from {uri}:{mute} within 0.5 s",
                                     f"is the node powered and on the network? try `ping {host}`")
    assert 0.5 <= took < 30, took  # bounded by --timeout, not aiocoap's 93 s of retransmissions (slack for a loaded CI)
    assert datagram[0] >> 4 == 0b0100 and datagram[1] == 0x01  # CoAP version 1, type CON; code 0.01 GET


async def test_doctor_from_the_command_line(tmp_path):
    """The CLI end to end: exit status 1 for the failing node, the table, the fixes and the counts, exactly;
    ``--skip coap NAME`` leaves one node out (no wait for it), ``--skip coap`` all of them."""
    node = await _node(env=(ENV, senml.CT_SENML_JSON))
    closed = free_udp_port()
    try:
        cfg = write_config(tmp_path, sensors=_coap("env-1", node.uri, "/env") + _coap("env-2", node.uri, "/nope")
                           + _coap("env-3", f"coap://127.0.0.1:{closed}", "/env"))
        skip = ["--skip", "user", "--skip", "state", "--skip", "broker", "--skip", "clock", "--skip", "daemon"]
        r = await asyncio.to_thread(cli, "doctor", cfg, *skip, "--timeout", "2", timeout=30)
        only_one = await asyncio.to_thread(cli, "doctor", cfg, *skip, "--skip", "coap env-2", "--skip", "coap env-3",
                                           "--json", timeout=30)
        none = await asyncio.to_thread(cli, "doctor", cfg, *skip, "--skip", "coap", "--json", timeout=30)
        gets = node.resources["/env"].gets
    finally:
        await node.stop()
    rows = [("OK", "config", f"{cfg}: valid, 3 sensors"),
            ("OK", "coap env-1", f"{node.uri}/env: 2.05 Content, application/senml+json, {len(ENV)} bytes, 1 value"),
            ("FAIL", "coap env-2", f"{node.uri}/nope: 4.04 Not Found: the node has no resource /nope"),
            ("FAIL", "coap env-3", f"no answer from coap://127.0.0.1:{closed} {REFUSED}")]
    w = [max(len(x) for x in col) for col in zip(("STATUS", "CHECK", "DETAIL"), *rows)]
    assert r.stdout.splitlines() == [
        f"{'STATUS'.ljust(w[0])}  {'CHECK'.ljust(w[1])}  DETAIL",
        f"{'-' * w[0]}  {'-' * w[1]}  {'-' * w[2]}",
        *(f"{s.ljust(w[0])}  {c.ljust(w[1])}  {d}" for s, c, d in rows),
        "",
        "to fix:",
        "  coap env-2: check `resources` in the config: is the path /nope right?",
        f"  coap env-3: 127.0.0.1 is up but nothing listens on UDP port {closed}: is the node's CoAP server running, "
        "and is the port in `uri` right?",
        "",
        "FAILED: 2 failed, 0 warnings, 0 unknown, 2 ok"], r.stdout
    assert (r.returncode, r.stderr) == (1, "")
    report = json.loads(only_one.stdout)
    assert only_one.returncode == 0 and report["ok"], only_one.stdout
    assert [(c["name"], c["status"]) for c in report["checks"]] == [("config", "ok"), ("coap env-1", "ok")]
    assert none.returncode == 0 and [c["name"] for c in json.loads(none.stdout)["checks"]] == ["config"]
    assert gets == 2  # one GET from each run that checked env-1, none from the run that skipped coap


async def test_the_driver_says_a_node_is_down_in_plain_words(tmp_path):
    """Not aiocoap's bare "Network error: NetworkError": which node, that it does not answer, and the system's reason
    only where there is one."""
    closed = free_udp_port()
    for mode in ("poll", "observe"):
        opts = CoapOptions(uri=f"coap://127.0.0.1:{closed}/", mode=mode, resources=(CoapResource("/env"),),
                           request_timeout_s=5)
        driver = CoapDriver("env-1", opts, lambda r: None)
        with pytest.raises(LinkLost) as got:
            await asyncio.wait_for(driver.run(), 5)
        assert str(got.value) == f"no answer from coap://127.0.0.1:{closed} {REFUSED}", mode
    from aiocoap import error

    assert no_answer("coap://node-7.local/env", error.NetworkError()) == (
        "no answer from coap://node-7.local:5683 (node off, unplugged or unreachable)")
    assert no_answer("coap://[fe80::1]:5700", error.ResolutionError("no such host")) == (
        "no answer from coap://[fe80::1]:5700 (node off, unplugged or unreachable) [Name resolution error: no such "
        "host]")
