"""What brokers refuse, and how one refused message, client id or setting must not stall the uplink (review 16).

Real Mosquitto (2.0) configured as a deployment would be: ``message_size_limit`` (MQTT 5 PUBACK 0x95,
which paho 2.2 cannot decode), ``max_packet_size`` (announced in the MQTT 5 CONNACK; under 3.1.1 it
closes the connection), ``retain_available false``; and, where Mosquitto cannot show it, a scripted
server that enforces the Receive Maximum (tests/strict_broker.py). Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import configparser
import contextlib
import logging
import textwrap

import paho.mqtt
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt import _packet
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.exception import MalformedPacket

from edge_gateway import config, messages, mqtt_rules
from edge_gateway.config import BrokerSection
from edge_gateway.uplink import MqttLink
from ops_support import cli
from strict_broker import StrictBroker
from support import REPO, Broker, Subscriber
from uplink_support import TcpProxy, until

TOPICS = messages.Topics("city", "ref-gw")
PRE_CONNACK = "connection closed by the broker before CONNACK: authentication, ACL or protocol refusal?"
POISON = 0x100  # uplink.POISON: spelled out so that this file imports on the code before it


def payload(seq: int, size: int = 0) -> bytes:
    """A gateway message of at least ``size`` bytes."""
    out = messages.encode({"sensor": "s"}, seq)
    return out if len(out) >= size else messages.encode({"sensor": "s", "pad": "x" * (size - len(out))}, seq)


def make_link(port: int, protocol: str = "5", acks: list | None = None, client_id: str = "ref-gw",
              **broker) -> MqttLink:
    cfg = BrokerSection(port=port, protocol=protocol, keepalive_s=5, reconnect_min_s=0.05, reconnect_max_s=0.3,
                        **broker)
    out = acks if acks is not None else []
    return MqttLink(cfg, client_id, TOPICS.status, birth=lambda: b"online", will=b"offline",
                    on_ack=lambda t, rc: out.append((t, rc)), on_state=lambda up: None)


class _Servers:
    """What a test starts besides its links: Mosquittos, scripted servers, subscribers, proxies."""

    def __init__(self, tmp_path) -> None:
        self.tmp_path = tmp_path
        self._closers: list = []

    def _keep(self, thing, close):
        self._closers.append(close)
        return thing

    def mosquitto(self, extra: str) -> Broker:
        """A Mosquitto with extra config lines, as a deployment would configure it."""
        b = Broker(self.tmp_path / "broker", persistence=False, extra=extra).start()
        return self._keep(b, b.close)

    def strict(self, **kwargs) -> StrictBroker:
        s = StrictBroker(**kwargs)
        return self._keep(s, s.close)

    def subscriber(self, broker: Broker) -> Subscriber:
        sub = Subscriber(broker.port, "city/#", client_id="ref-sub").start()
        return self._keep(sub, sub.stop)

    def proxy(self, broker: Broker) -> TcpProxy:
        p = TcpProxy(broker.port)
        return self._keep(p, p.close)

    def close(self) -> None:
        for close in reversed(self._closers):  # clients before the brokers they talk to
            close()


@pytest.fixture
def servers(tmp_path):
    """The test's servers and clients, closed after it whatever fails in it (its links first: ``running``)."""
    s = _Servers(tmp_path)
    yield s
    s.close()


@contextlib.asynccontextmanager
async def running(*links: MqttLink, connected: bool = True):
    """Start ``links``; unless told not to, wait (10 s) until they are connected; stop them on leaving."""
    for link in links:
        link.start()
    try:
        for link in links if connected else ():
            await until(lambda: link.connected, 10, "connected")  # noqa: B023 - awaited here
        yield
    finally:
        for link in links:
            await link.stop()


def seqs_at(sub: Subscriber) -> list[int]:
    return sorted(m.data["seq"] for m in sub.snapshot() if "/agg/" in m.topic)


# --- #1 (a): a PUBACK reason code paho does not list for PUBACK ----------------------------------

def test_paho_internals_the_link_overrides_are_as_pinned():
    """mqtt_client.Client overrides paho 2.x internals; setup.cfg pins paho to that major version. If this
    fails, paho changed: read mqtt_client.Client again before widening the pin."""
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    assert "paho-mqtt>=2.0,<3" in cfg["options"]["install_requires"]
    assert paho.mqtt.__version__.split(".")[0] == "2"
    c = mqtt.Client(CallbackAPIVersion.VERSION2)
    for name in ("_handle_pubackcomp", "_sock_recv", "_do_on_publish", "_in_packet", "_out_messages",
                 "_out_message_mutex", "_out_packet", "_protocol"):
        assert hasattr(c, name), name
    # paho itself still cannot decode Mosquitto's refusal of an oversized PUBLISH: the reason the
    # override handles it (if paho learns 0x95 for PUBACK, the override's branch is no longer needed)
    with pytest.raises(MalformedPacket):
        _packet.decode_puback(0x40, b"\x00\x01\x95", mqtt.MQTTv5)


async def test_puback_0x95_refuses_that_message_and_the_rest_flow(servers):
    broker = servers.mosquitto("message_size_limit 300")
    sub = servers.subscriber(broker)
    acks: list = []
    link = make_link(broker.port, acks=acks)
    async with running(link):
        tokens = link.publish_many([(TOPICS.agg("s"), payload(1)), (TOPICS.agg("s"), payload(2, 600)),
                                    (TOPICS.agg("s"), payload(3))])
        status = link.publish(TOPICS.status, payload(0, 600), retain=True)  # a link-level one, too large too
        await until(lambda: len(acks) == 4, 10, "four answers")
        assert sorted(acks) == sorted([(tokens[0], 0), (tokens[1], 0x95), (tokens[2], 0), (status, 0x95)])
        await until(lambda: len(seqs_at(sub)) == 2, 5, "two messages at the subscriber")
        await asyncio.sleep(0.3)
        assert seqs_at(sub) == [1, 3]
        assert link.connects == 1 and link.connected and link.pending_mids() == set()


async def test_any_puback_failure_code_paho_cannot_name_is_a_refusal_with_or_without_properties(servers):
    server = servers.strict(receive_maximum=100)
    server.refusals = {TOPICS.agg("big"): b"\x95\x05\x1f\x00\x02hi",  # Packet too large, Reason String "hi"
                       TOPICS.agg("odd"): b"\xa5"}  # no such reason code in MQTT 5
    acks: list = []
    link = make_link(server.port, acks=acks)
    async with running(link):
        tokens = link.publish_many([(TOPICS.agg(s), payload(i)) for i, s in enumerate(("a", "big", "odd", "b"))])
        await until(lambda: len(acks) == 4, 5, "four answers")
        assert sorted(acks) == sorted(zip(tokens, (0, 0x95, 0xA5, 0)))
        assert link.connects == 1 and server.connections == 1 and link.connected


# --- #1 (b): the CONNACK's Maximum Packet Size and broker.max_message_bytes ----------------------

async def test_connack_maximum_packet_size_refuses_larger_messages_unsent(servers):
    broker = servers.mosquitto("max_packet_size 400\nmax_inflight_messages 20")
    sub = servers.subscriber(broker)
    proxy = servers.proxy(broker)
    acks: list = []
    link = make_link(proxy.port, acks=acks)
    async with running(link):
        tokens = link.publish_many([(TOPICS.agg("s"), payload(s, 600 if s == 2 else 0)) for s in (1, 2, 3)])
        await until(lambda: len(acks) == 3, 10, "three answers")
        assert acks == [(tokens[1], 0x95), (tokens[0], 0), (tokens[2], 0)]
        assert [seq for _, _, seq, _ in proxy.sent] == [1, 3]  # the large one never went on the wire
        await until(lambda: len(seqs_at(sub)) == 2, 5, "two messages at the subscriber")
        assert seqs_at(sub) == [1, 3] and link.connects == 1 and link.refused_large == 1
        assert (link.max_packet_size, link.receive_maximum) == (400, 20)


async def test_max_message_bytes_refuses_locally_where_311_would_lose_silently(servers):
    broker = servers.mosquitto("message_size_limit 300")
    sub = servers.subscriber(broker)
    proxy = servers.proxy(broker)
    acks: list = []
    link = make_link(proxy.port, "3.1.1", acks, max_message_bytes=300)
    async with running(link):
        tokens = link.publish_many([(TOPICS.agg("s"), payload(s, 400 if s == 2 else 0)) for s in (1, 2, 3)])
        await until(lambda: len(acks) == 3, 10, "three answers")
        assert acks == [(tokens[1], 0x95), (tokens[0], 0), (tokens[2], 0)]
        assert [seq for _, _, seq, _ in proxy.sent] == [1, 3]
        await until(lambda: len(seqs_at(sub)) == 2, 5, "two messages at the subscriber")
        assert seqs_at(sub) == [1, 3] and link.connects == 1 and link.receive_maximum is None


# --- #1 (c) and (d): a broker that closes the connection on a message -------------------------

async def test_a_message_the_broker_closes_connections_on_is_refused_as_poison(servers, caplog):
    """Mosquitto with ``max_packet_size`` under MQTT 3.1.1 (nothing announced) closes the connection on
    a larger PUBLISH. The old link sent it first on every reconnect, forever, with nothing acknowledged."""
    caplog.set_level(logging.WARNING, logger="edge_gateway")
    broker = servers.mosquitto("max_packet_size 400")
    sub = servers.subscriber(broker)
    acks: list = []
    link = make_link(broker.port, "3.1.1", acks)
    async with running(link):
        tokens = link.publish_many([(TOPICS.agg("s"), payload(1))])
        await until(lambda: acks == [(tokens[0], 0)], 5, "the first acknowledged")
        tokens += link.publish_many([(TOPICS.agg("s"), payload(s, 600 if s == 2 else 0)) for s in (2, 3)])
        await until(lambda: len(acks) == 3, 15, "three answers")
        await asyncio.sleep(0.5)
        assert acks == [(tokens[0], 0), (tokens[1], POISON), (tokens[2], 0)]
        # closed with seqs 2 and 3 sent; then seq 2 alone (it is the oldest) on 3 connections; then seq 3
        assert link.connects == 5 and link.connected and link.poisoned == 1
        await until(lambda: len(seqs_at(sub)) >= 2, 5, "two messages at the subscriber")
        assert seqs_at(sub) == [1, 3]
        poison = [r for r in caplog.records if r.levelno == logging.ERROR and "refused as poison" in r.getMessage()]
        assert len(poison) == 1 and "'city/ref-gw/agg/s' (seq 2)" in poison[0].getMessage()


async def test_a_link_level_message_is_sent_again_once_only(servers):
    broker = servers.mosquitto("max_packet_size 400")
    link = make_link(broker.port, "3.1.1")
    link.stable_after_s = 1.0
    async with running(link):
        link.publish(TOPICS.status, payload(0, 600), retain=True)  # the full status, say, too large
        await until(lambda: link.connects == 3 and link.connected, 10, "the third connection")
        await asyncio.sleep(1.5)  # up long enough to count as stable: the backoff starts again
        assert link.connects == 3 and link.gave_up == 1 and link.pending_mids() == set()
        assert link._attempt == 0 and link.poisoned == 0


# --- #3: the CONNACK's Receive Maximum ----------------------------------------------------------

async def test_receive_maximum_is_kept_also_by_the_resend_after_a_reconnect(servers):
    server = servers.strict(receive_maximum=20, ack_delay=0.03)
    acks: list = []
    link = make_link(server.port, acks=acks)
    async with running(link):
        server.hold.set()  # nothing acknowledged: 20 outstanding, the rest waits in the link
        link.publish_many([(TOPICS.agg("s"), payload(s)) for s in range(1, 61)])
        await asyncio.sleep(0.5)
        assert server.max_outstanding == 20 and acks == [] and link.receive_maximum == 20
        server.receive_maximum = 5  # the next CONNACK announces less than is outstanding
        server.drop()
        await until(lambda: link.connects == 2, 10, "reconnected")
        server.hold.clear()
        await until(lambda: len(acks) == 60, 20, "all acknowledged")
        assert all(rc == 0 for _, rc in acks) and link.receive_maximum == 5
        assert server.disconnects_093 == 0 and server.connections == 2 and link.connects == 2
        assert sorted(set(server.seqs("ack"))) == list(range(1, 61))  # the status has no seq


# --- #5: closed before the CONNACK --------------------------------------------------------------

async def test_a_connection_closed_before_its_connack_is_reported_once(servers, caplog):
    """Mosquitto without retained messages closes a 3.1.1 CONNECT with a retained will, CONNACK-less."""
    caplog.set_level(logging.WARNING, logger="edge_gateway")
    broker = servers.mosquitto("retain_available false")
    link = make_link(broker.port, "3.1.1")
    async with running(link, connected=False):
        await until(lambda: link._attempt >= 4, 10, "four attempts")
        assert link.connects == 0 and link.last_error.startswith(PRE_CONNACK), link.last_error
        said = [r for r in caplog.records if r.getMessage().startswith(PRE_CONNACK)]
        assert len(said) == 1 and said[0].levelno == logging.WARNING


# --- #8: a broker without retained messages -----------------------------------------------------

async def test_retain_status_false_works_with_a_broker_without_retained_messages(servers):
    broker = servers.mosquitto("retain_available false")
    sub = servers.subscriber(broker)
    refused = make_link(broker.port, client_id="ref-retained")
    acks: list = []
    link = make_link(broker.port, acks=acks, retain_status=False)
    async with running(refused, link, connected=False):
        await until(lambda: link.connected, 10, "connected with retain_status false")
        token = link.publish(TOPICS.status, b"status", retain=True)  # the daemon's periodic status asks for retain
        await until(lambda: acks == [(token, 0)], 5, "the status acknowledged")
        await until(lambda: len(sub.snapshot()) == 2, 5, "birth and status at the subscriber")
        assert [(m.topic, m.payload, m.retain) for m in sub.snapshot()] == [
            (TOPICS.status, b"online", False), (TOPICS.status, b"status", False)]
        await until(lambda: refused._attempt >= 2, 10, "the retained will refused")
        assert refused.connects == 0 and refused.last_error == (
            "broker refused connection: Retain not supported; this broker keeps no retained messages: "
            "set broker.retain_status: false")
        assert link.connects == 1


# --- #6: another client with the same client id ------------------------------------------------

@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
async def test_a_session_taken_over_again_and_again_is_named_and_backs_off(servers, caplog, protocol):
    caplog.set_level(logging.WARNING, logger="edge_gateway")
    broker = servers.mosquitto("")
    a = make_link(broker.port, protocol, client_id="edge-gateway-twin")
    b = make_link(broker.port, protocol, client_id="edge-gateway-twin")
    async with running(a, b, connected=False):
        await until(lambda: a._attempt >= 4 and b._attempt >= 4, 20, "the backoff growing on both")
        named = [r for r in caplog.records if r.levelno == logging.ERROR and "'edge-gateway-twin'" in r.getMessage()]
        assert 1 <= len(named) <= 2 and "the same gateway.id on two gateways" in named[0].getMessage()
        assert any("client id 'edge-gateway-twin'" in x.last_error for x in (a, b))


# --- #9 and #7: config -------------------------------------------------------------------------

def config_error(text: str) -> config.ConfigError:
    with pytest.raises(config.ConfigError) as info:
        config.loads(text, "site.yaml")
    return info.value


@pytest.mark.parametrize("prefix, what", [
    ('"city/"', "empty topic level"), ('"/city"', "empty topic level"), ('"a//b"', "empty topic level"),
    ('"$city"', "must not start with '$'"), ('"$SYS/city"', "must not start with '$'"),
    ('"city\\0x"', "control character U+0000 at character 5"),
    ('"city\\tx"', "control character U+0009 at character 5"),
    ('"city\\x7f"', "control character U+007F at character 5"),
    ('"city\\x85x"', "control character U+0085 at character 5"),
    ('"city\\uFFFF"', "U+FFFF at character 5 is a Unicode noncharacter"),
    ('"city\\uFDD0"', "U+FDD0 at character 5 is a Unicode noncharacter"),
    ('"city\\ud800"', "U+D800 at character 5 is not valid UTF-8"),
    ("c" * 65460, "too long: topics would be up to 65538 bytes"),
    ('"ci+ty"', "MQTT wildcard '+' at character 3"),
])
def test_topic_prefix_mqtt_cannot_carry_is_refused_at_load(prefix, what):
    e = config_error(f"gateway:\n  id: gw-1\n  topic_prefix: {prefix}\n")
    assert (e.line, e.column, e.path) == (3, 17, "gateway.topic_prefix")
    assert what in e.message and str(e).startswith("site.yaml:3:17: gateway.topic_prefix: ")


def test_topic_prefix_that_fits_loads():
    assert config.loads("gateway: {id: gw-1, topic_prefix: city/zone-ü/ß}\n").gateway.topic_prefix == "city/zone-ü/ß"
    assert config.loads(f"gateway: {{id: gw-1, topic_prefix: {'c' * 65400}}}\n").gateway.id == "gw-1"


@pytest.mark.parametrize("setting, ok", [
    ("session_expiry_s: 0", True), ("session_expiry_s: 4294967295", True),
    ("session_expiry_s: -1", False), ("session_expiry_s: 4294967296", False),
    ("keepalive_s: 65535", True), ("keepalive_s: 65536", False), ("keepalive_s: 0", False),
    ("max_inflight: 65535", True), ("max_inflight: 65536", False),
    ("max_message_bytes: 0", True), ("max_message_bytes: 268435455", True), ("max_message_bytes: -1", False),
    ("retain_status: false", True), ("retain_status: maybe", False),
])
def test_broker_numbers_mqtt_cannot_carry_are_refused_at_load(setting, ok):
    text = f"gateway: {{id: gw-1}}\nbroker:\n  host: h\n  {setting}\n"
    if ok:
        config.loads(text)
        return
    e = config_error(text)
    key = setting.split(":")[0]
    assert (e.line, e.path) == (4, f"broker.{key}") and str(e).startswith("site.yaml:4:")


def test_config_validate_warns_that_311_cannot_report_refusals(tmp_path):
    cfg = tmp_path / "gw.yaml"
    cfg.write_text(textwrap.dedent("""\
        gateway: {id: gw-1, state_dir: state}
        broker:
          host: h
          protocol: "3.1.1"
        sensors: [{id: n, driver: coap, options: {uri: "coap://127.0.0.1", resources: [{path: /n}]}}]
        """))
    r = cli("config", "validate", cfg)
    assert r.returncode == 0 and r.stdout.strip() == f"{cfg}: valid (1 sensor, gateway gw-1)"
    assert r.stderr.startswith(f"edge-gateway: {cfg}:4:13: broker.protocol: warning: MQTT 3.1.1 cannot report")
    assert len(r.stderr.splitlines()) == 1
    cfg.write_text(cfg.read_text().replace('"3.1.1"', '"5"'))
    r = cli("config", "validate", cfg)
    assert r.returncode == 0 and r.stderr == ""


def test_the_link_knows_both_protocols_size_arithmetic():
    """publish_size counts what a CONNACK's Maximum Packet Size counts (MQTT 5: one byte of properties)."""
    assert mqtt_rules.publish_size("a/b", b"x" * 10, True) == 1 + 1 + 2 + 3 + 2 + 1 + 10
    assert mqtt_rules.publish_size("a/b", b"x" * 200, False) == 1 + 2 + 2 + 3 + 2 + 200
