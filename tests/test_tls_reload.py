"""TLS files renewed in place are used by the running link, and the client key's mode is checked.

Real Mosquitto (``require_certificate true``) on a loopback ephemeral port; certificates made by the
test with the openssl CLI. The link runs in-process; outcomes are read from its state, its log and
what a subscriber receives.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import shutil
import subprocess

import pytest

from edge_gateway import cmd_doctor, secrets
from edge_gateway.config import BrokerSection, TlsSection
from edge_gateway.tls import TlsFilesError, tls_context
from edge_gateway.uplink import MqttLink
from support import Broker, Subscriber, free_port
from uplink_support import gateway_config, make_certs, tls_listener, until

MODE_WARNING = "accessible by group/others"


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    if not shutil.which("openssl"):
        pytest.skip("openssl CLI not installed")
    d = tmp_path_factory.mktemp("certs")
    made = make_certs(d)

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True, timeout=60)

    run("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=gateway-client", "-keyout", "old.key", "-out", "old.csr")
    run("x509", "-req", "-in", "old.csr", "-CA", "wrong-ca.crt", "-CAkey", "wrong-ca.key", "-CAcreateserial",
        "-days", "2", "-extfile", "client.ext", "-out", "old.crt")
    (d / "old.key").chmod(0o600)
    return {**made, "old.crt": d / "old.crt", "old.key": d / "old.key"}


@pytest.fixture
def tls_broker(tmp_path, certs):
    """(broker, TLS port): a plain listener for the test's subscriber, a mutual-TLS one for the link."""
    port = free_port()
    broker = Broker(tmp_path / "broker", extra=tls_listener(port, certs)).start()
    yield broker, port
    broker.close()


def make_link(port: int, tls: TlsSection, client_id: str, acks: list, strict: bool = False) -> MqttLink:
    cfg = BrokerSection(host="127.0.0.1", port=port, keepalive_s=5, reconnect_min_s=0.1, reconnect_max_s=0.4,
                        tls=tls, strict_secrets=strict)
    return MqttLink(cfg, client_id, f"gw/{client_id}/status", birth=lambda: b"online", will=b"offline",
                    on_ack=lambda token, rc: acks.append((token, rc)), on_state=lambda up: None)


def install(src, dst, mode: int = 0o600) -> str:
    shutil.copyfile(src, dst)
    dst.chmod(mode)
    return str(dst)


async def publish_once_and_count(link: MqttLink, sub: Subscriber, acks: list, payload: bytes) -> None:
    token = link.publish("reload/data", payload)
    await until(lambda: any(t == token for t, _ in acks), 10, "PUBACK of the message")
    await until(lambda: any(m.payload == payload for m in sub.snapshot()), 10, "the message at the subscriber")
    await asyncio.sleep(0.3)
    assert [(t, rc) for t, rc in acks if t == token] == [(token, 0)]
    assert [m.payload for m in sub.snapshot() if m.topic == "reload/data"] == [payload]


async def test_client_certificate_renewed_in_place_is_used_without_restart(tmp_path, certs, tls_broker):
    broker, port = tls_broker
    live = tmp_path / "live"
    live.mkdir()
    crt = install(certs["old.crt"], live / "client.crt")
    key = install(certs["old.key"], live / "client.key")
    sub = Subscriber(broker.port, "reload/#", client_id="reload-sub").start()
    acks: list = []
    link = make_link(port, TlsSection(ca_file=str(certs["ca.crt"]), cert_file=crt, key_file=key,
                                      check_hostname=False), "gw-cert", acks)
    link.start()
    try:
        await until(lambda: link._attempt >= 2, 15, "two failed handshakes with the old certificate")
        assert not link.connected and link.connects == 0 and link.last_error

        (live / "client.key").unlink()  # a renewal job between its two writes: no key for a while
        await until(lambda: f"TLS key file {key}: cannot open" in link.last_error, 10, "the missing key reported")
        assert link._thread is not None and link._thread.is_alive()
        assert not link.connected

        install(certs["client.crt"], live / "client.crt")
        install(certs["client.key"], live / "client.key")
        await until(lambda: link.connected, 15, "the running link connected with the renewed certificate")
        assert link.connects == 1 and link.last_error == ""
        await publish_once_and_count(link, sub, acks, b"after-renewal-1")
    finally:
        await link.stop()
        sub.stop()


async def test_ca_file_renewed_in_place_is_used_without_restart(tmp_path, certs, tls_broker):
    broker, port = tls_broker
    live = tmp_path / "live"
    live.mkdir()
    ca = install(certs["wrong-ca.crt"], live / "ca.crt", 0o644)
    sub = Subscriber(broker.port, "reload/#", client_id="reload-ca-sub").start()
    acks: list = []
    link = make_link(port, TlsSection(ca_file=ca, cert_file=str(certs["client.crt"]),
                                      key_file=str(certs["client.key"]), check_hostname=True), "gw-ca", acks)
    link.start()
    try:
        await until(lambda: "CERTIFICATE_VERIFY_FAILED" in link.last_error, 15, "the untrusted server reported")
        assert link.connects == 0
        install(certs["ca.crt"], live / "ca.crt", 0o644)
        await until(lambda: link.connected, 15, "the running link connected with the renewed CA file")
        assert link.connects == 1
        await publish_once_and_count(link, sub, acks, b"after-ca-renewal-1")
    finally:
        await link.stop()
        sub.stop()


def test_tls_context_names_the_file_that_cannot_be_used(tmp_path, certs):
    key = install(certs["client.key"], tmp_path / "client.key")
    good = dict(ca_file=str(certs["ca.crt"]), cert_file=str(certs["client.crt"]), key_file=key)
    ctx, warning = tls_context(TlsSection(**good))
    assert warning == ""
    for change, expected in ((dict(key_file=str(tmp_path / "gone.key")), "gone.key: cannot open"),
                             (dict(ca_file=str(tmp_path / "gone.crt")), "gone.crt: cannot load"),
                             (dict(key_file=install(certs["old.key"], tmp_path / "old.key")), "old.key: cannot load")):
        with pytest.raises(TlsFilesError, match=expected):
            tls_context(TlsSection(**{**good, **change}))


@pytest.mark.parametrize("mode,strict", [(0o600, False), (0o644, False), (0o640, True), (0o400, True)])
async def test_link_checks_the_client_key_mode(tmp_path, certs, tls_broker, caplog, mode, strict):
    _broker, port = tls_broker
    key = install(certs["client.key"], tmp_path / "client.key", mode)
    caplog.set_level(logging.WARNING, logger="edge_gateway")
    link = make_link(port, TlsSection(ca_file=str(certs["ca.crt"]), cert_file=str(certs["client.crt"]),
                                      key_file=key, check_hostname=False), f"gw-mode-{mode:o}", [], strict)
    link.start()
    loose = bool(mode & 0o077)
    expected = f"TLS key file {key} is {MODE_WARNING} (mode {mode:04o}); chmod 600 it"
    try:
        if loose and strict:
            await until(lambda: "refused: broker.strict_secrets is true" in link.last_error, 10, "the refusal")
            assert expected in link.last_error
            await asyncio.sleep(0.5)
            assert link.connects == 0 and not link.connected
        else:
            await until(lambda: link.connected, 10, "connected")
            link.kick()  # a reconnect: the warning is not repeated for the same file and mode
            await until(lambda: link.connects == 2, 10, "reconnected")
    finally:
        await link.stop()
    warnings = [r.getMessage() for r in caplog.records if MODE_WARNING in r.getMessage()]
    if not loose:
        assert warnings == []
    elif strict:
        assert warnings and all("refused" in w for w in warnings)
    else:
        assert warnings == [expected]


def test_doctor_checks_the_client_key_mode(tmp_path, certs, capsys):
    key = tmp_path / "client.key"
    install(certs["client.key"], key)

    def check(strict: bool):
        tls = TlsSection(ca_file=str(certs["ca.crt"]), cert_file=str(certs["client.crt"]), key_file=str(key))
        (c,) = cmd_doctor.check_tls_key(BrokerSection(tls=tls, strict_secrets=strict))
        assert c.name == "broker tls key"
        return c

    assert check(False).status == "ok" and check(True).status == "ok"
    key.chmod(0o644)
    c = check(False)
    assert c.status == "warn" and MODE_WARNING in c.detail and "chmod 600" in c.fix
    c = check(True)
    assert c.status == "fail" and "refused: broker.strict_secrets" in c.detail
    assert cmd_doctor.check_tls_key(BrokerSection()) == []
    with pytest.raises(secrets.SecretsError):  # the rule doctor shares with the secrets file and the link
        secrets.mode_problem(str(key), key.stat().st_mode, strict=True, what="TLS key file")

    d = tmp_path / "gw"
    d.mkdir()
    cfg = gateway_config(d, free_port(), "gw-doc", sensors="sensors: []",
                         broker_extra=f"tls: {{ca_file: {certs['ca.crt']}, cert_file: {certs['client.crt']}, "
                                      f"key_file: {key}}}, strict_secrets: true")
    args = argparse.Namespace(config=str(cfg), user=None, timeout=1.0, skip=["clock", "daemon", "state"], json=True)
    assert cmd_doctor.handle(args) == 1
    out = {c["name"]: c for c in json.loads(capsys.readouterr().out)["checks"]}
    assert out["broker tls key"]["status"] == "fail" and "(mode 0644)" in out["broker tls key"]["detail"]
