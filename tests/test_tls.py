"""TLS with client certificates against a real Mosquitto, and the secrets file (mode checks, no leaks).

Certificates are made by the test with the openssl CLI. Outcomes are read from
the gateway's log and retained status, never from timing.
"""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from edge_gateway import secrets
from support import Broker, GatewayProcess, Subscriber, free_port, wait_for
from uplink_support import gateway_config, make_certs, tls_listener

NO_SENSORS = "sensors: []"


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    if not shutil.which("openssl"):
        pytest.skip("openssl CLI not installed")
    return make_certs(tmp_path_factory.mktemp("certs"))


def online(sub: Subscriber, gw_id: str) -> bool:
    return any(m.topic == f"city/{gw_id}/status" and m.data.get("state") == "online" for m in sub.snapshot())


def test_mutual_tls_connects_and_bad_certificates_are_refused(tmp_path, certs):
    tls_port = free_port()
    broker = Broker(tmp_path / "broker", extra=tls_listener(tls_port, certs)).start()
    sub = Subscriber(broker.port, "city/+/status", client_id="tls-sub").start()
    cases = {
        "tls-ok": f"tls: {{ca_file: {certs['ca.crt']}, cert_file: {certs['client.crt']}, key_file: {certs['client.key']}}}",
        "tls-nocert": f"tls: {{ca_file: {certs['ca.crt']}}}",
        "tls-wrongca": f"tls: {{ca_file: {certs['wrong-ca.crt']}, cert_file: {certs['client.crt']}, "
                       f"key_file: {certs['client.key']}}}",
    }
    gws = {}
    try:
        for gw_id, tls in cases.items():  # all three at once: one start-up time
            d = tmp_path / gw_id
            d.mkdir()
            cfg = gateway_config(d, tls_port, gw_id, broker_extra=tls, sensors=NO_SENSORS)
            gws[gw_id] = GatewayProcess(cfg, d / "gateway.log").start()
        for gw in gws.values():
            gw.wait_ready()
        wait_for(lambda: online(sub, "tls-ok"), 20, what="the gateway with a client certificate online")
        wait_for(lambda: "CERTIFICATE_VERIFY_FAILED" in gws["tls-wrongca"].log_text(), 20,
                 what="wrong CA reported in the log")
        wait_for(lambda: "certificate required" in gws["tls-nocert"].log_text()
                 or "alert" in gws["tls-nocert"].log_text(), 20, what="missing client certificate reported")
    finally:
        rcs = {k: gw.stop() for k, gw in gws.items()}
    assert set(rcs.values()) == {0}
    for bad in ("tls-nocert", "tls-wrongca"):
        assert not online(sub, bad)
        assert "connected to" not in gws[bad].log_text()
        last = (tmp_path / bad / "state" / "last-run.json").read_text()
        assert '"link": "down"' in last and '"link_error": "' in last
    sub.stop()
    broker.close()


def write_secret(path, text: str, mode: int) -> str:
    path.write_text(text)
    path.chmod(mode)
    return str(path)


def test_secrets_file_parsing_and_modes(tmp_path, caplog):
    p = write_secret(tmp_path / "mqtt.secret", "# creds\nusername: gw-1\npassword: \"p4ss: word\"\n", 0o600)
    cred = secrets.load(p)
    assert cred == ("gw-1", "p4ss: word")
    assert "p4ss" not in repr(cred) and "p4ss" not in str(cred)
    loose = write_secret(tmp_path / "loose.secret", "username: gw-1\npassword: hunter2\n", 0o640)
    assert secrets.load(loose).password == "hunter2"
    assert "accessible by group/others" in caplog.text and "hunter2" not in caplog.text
    with pytest.raises(secrets.SecretsError, match="refused") as exc:
        secrets.load(loose, strict=True)
    assert "hunter2" not in str(exc.value)
    for bad in ("password: only\n", "user: x\n", "username: a\nusername: b\n"):
        with pytest.raises(secrets.SecretsError) as exc:
            secrets.load(write_secret(tmp_path / "bad.secret", bad, 0o600))
        assert "only" not in str(exc.value)
    with pytest.raises(secrets.SecretsError, match="cannot open"):
        secrets.load(str(tmp_path / "missing"))


EMPTY_HINT = ("a broker without a password needs no secrets_file: remove broker.secrets_file from the config; "
              "otherwise write its 'username: ...' and 'password: ...' lines")


def test_an_empty_secrets_file_says_a_broker_without_a_password_needs_none(tmp_path, monkeypatch):
    """Review 15 (operations) #1: the unit's fallback credential (its source file missing) is a file with no
    entries; the error must say so in one line instead of "no 'username:' line"."""
    from edge_gateway import cmd_service

    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    empty = write_secret(tmp_path / "empty.secret", "", 0o600)
    with pytest.raises(secrets.SecretsError) as exc:
        secrets.load(empty)
    assert str(exc.value) == f"secrets file {empty} is empty: {EMPTY_HINT}"
    creds = tmp_path / "credentials"
    creds.mkdir()
    (line,) = [ln for ln in cmd_service.render().splitlines() if ln.startswith("SetCredential=broker-secrets:")]
    fallback = write_secret(creds / "broker-secrets", line.partition(":")[2], 0o400)  # as systemd writes it
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    with pytest.raises(secrets.SecretsError) as exc:
        secrets.load(fallback, strict=True)
    assert str(exc.value) == (f"secrets file {fallback} is empty (in $CREDENTIALS_DIRECTORY: the unit's "
                              f"LoadCredential= source file is missing or empty): {EMPTY_HINT}")
    with pytest.raises(secrets.SecretsError, match="^empty: a broker without a password needs no secrets_file"):
        secrets.parse("\n  \n")


def _credential(path, mode: int) -> int:
    """A credential as systemd >= 254 writes it: 0400 plus an ACL granting the service user (nobody) read
    access, which stat() shows as group read (0440); plain chmod where the file system has no ACLs."""
    import struct

    path.write_text("username: gw-17\npassword: s3cret\n")
    path.chmod(0o400)
    acl = struct.pack("<I", 2) + b"".join(struct.pack("<HHI", tag, perm, uid) for tag, perm, uid in (
        (0x01, 4, 0xFFFFFFFF), (0x02, 4, 65534), (0x04, 0, 0xFFFFFFFF), (0x10, 4, 0xFFFFFFFF), (0x20, 0, 0xFFFFFFFF)))
    try:
        os.setxattr(path, "system.posix_acl_access", acl)
    except OSError:
        pass
    if mode != 0o440 or os.stat(path).st_mode & 0o777 != 0o440:
        path.chmod(mode)
    return os.stat(path).st_mode & 0o777


def test_a_credential_readable_through_systemds_acl_is_accepted_only_in_credentials_directory(
        tmp_path, monkeypatch, caplog):
    """Review 15 (operations) #10: group read is systemd's ACL in $CREDENTIALS_DIRECTORY, a real problem elsewhere;
    group/other write and any other bits stay refused there too."""
    creds = tmp_path / "credentials"
    creds.mkdir()
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    cred = creds / "broker-secrets"
    assert _credential(cred, 0o440) == 0o440
    assert secrets.load(str(cred), strict=True) == ("gw-17", "s3cret")
    assert caplog.text == ""
    for mode in (0o460, 0o444, 0o441):
        cred.unlink()
        assert _credential(cred, mode) == mode
        with pytest.raises(secrets.SecretsError) as exc:
            secrets.load(str(cred), strict=True)
        assert str(exc.value) == (f"secrets file {cred} is accessible by group/others (mode {mode:04o}); chmod 600 it "
                                  "(refused: broker.strict_secrets is true)")
    for elsewhere in (tmp_path / "broker-secrets", creds / "sub" / "broker-secrets"):
        elsewhere.parent.mkdir(exist_ok=True)
        assert _credential(elsewhere, 0o440) == 0o440
        with pytest.raises(secrets.SecretsError, match=r"is accessible by group/others \(mode 0440\)"):
            secrets.load(str(elsewhere), strict=True)


@pytest.mark.skipif(not shutil.which("mosquitto_passwd"), reason="mosquitto_passwd not installed")
def test_password_from_secrets_file_never_logged_and_strict_mode_refuses(tmp_path):
    pw_file = tmp_path / "passwd"
    password = "Zq9-very-secret-7781"
    subprocess.run(["mosquitto_passwd", "-c", "-b", str(pw_file), "gw-user", password], check=True,
                   capture_output=True)
    subprocess.run(["mosquitto_passwd", "-b", str(pw_file), "sub-user", "sub-pw"], check=True, capture_output=True)
    pw_file.chmod(0o644)
    port = free_port()
    broker = Broker(tmp_path / "broker", extra=f"listener {port} 127.0.0.1\npassword_file {pw_file}\n"
                    "allow_anonymous false").start()
    sub = Subscriber(broker.port, "city/+/status", client_id="pw-sub")
    sub.client.username_pw_set("sub-user", "sub-pw")
    sub.start()
    gws = {}
    try:
        for gw_id, mode, strict in (("pw-ok", 0o600, "false"), ("pw-strict", 0o644, "true")):
            d = tmp_path / gw_id
            d.mkdir()
            secret = write_secret(d / "mqtt.secret", f"username: gw-user\npassword: {password}\n", mode)
            cfg = gateway_config(d, port, gw_id, sensors=NO_SENSORS,
                                 broker_extra=f"secrets_file: {secret}, strict_secrets: {strict}")
            gws[gw_id] = GatewayProcess(cfg, d / "gateway.log", env={"EG_TEST": "1"}).start()
        for gw in gws.values():
            gw.wait_ready()
        wait_for(lambda: online(sub, "pw-ok"), 20, what="password login")
        wait_for(lambda: "refused: broker.strict_secrets" in gws["pw-strict"].log_text(), 20,
                 what="strict mode refusal")
    finally:
        for gw in gws.values():
            gw.stop()
    assert not online(sub, "pw-strict")
    for gw_id, gw in gws.items():
        assert password not in gw.log_text()
        assert password not in (tmp_path / gw_id / "state" / "last-run.json").read_text()
    sub.stop()
    broker.close()
    assert os.path.exists(pw_file)
