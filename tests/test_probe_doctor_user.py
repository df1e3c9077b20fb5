"""``probe`` suggestions the config loader accepts, and ``doctor --user`` judging the state directory as that user."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import pwd
import shutil
import tempfile
import threading
from pathlib import Path

import pytest
from ops_support import cli, serial_sensor, write_config

from drivers.pms5003 import encode_frame
from edge_gateway import cmd_probe, config
from simulators.modbus_slave import ModbusSlaveSim, RegisterBank
from simulators.pty_port import PtyPort

NO_USER = "eg-no-such-user-7q"


@contextlib.contextmanager
def _device(link: Path, *, bank: RegisterBank | None = None, stream: bytes = b""):
    """A pty at ``link`` answering as Modbus slaves (``bank``) or sending ``stream`` over and over.

    Served from a thread: probe blocks the test's thread on the other end of the pty.
    """
    port = PtyPort(str(link), nonblocking=True)
    loop = asyncio.new_event_loop()
    stop = threading.Event()
    sim = ModbusSlaveSim(bank) if bank is not None else None

    async def attach():
        sim.attach(port)

    async def detach():
        sim.detach()

    def feed():
        while not stop.wait(0.02):
            port.try_write(stream)

    thread = threading.Thread(target=loop.run_forever if sim else feed, daemon=True)
    thread.start()
    try:
        if sim:
            asyncio.run_coroutine_threadsafe(attach(), loop).result(5)
        yield port
    finally:
        stop.set()
        if sim:
            asyncio.run_coroutine_threadsafe(detach(), loop).result(5)
            loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()
        port.close()


def _suggested_sensor(stdout: str) -> str:
    """The sensor entry probe printed, as the user would paste it under ``sensors:``."""
    lines = stdout.splitlines()
    start = lines.index("suggested sensor config:") + 1
    entry = [lines[start]]
    entry += [ln for ln in lines[start + 1:start + 3] if ln.startswith("    ")]
    assert entry[0] == "  - id: CHANGE-ME", stdout
    return "\n".join(entry) + "\n"


def _load_with(tmp_path: Path, sensor: str):
    text = f"gateway: {{id: probe-check, state_dir: {tmp_path}/state}}\nsensors:\n{sensor}"
    return config.loads(text, "probe-suggestion.yaml", tmp_path).sensors[0]


def _probe(capsys, link: Path, **kw) -> tuple[int, str]:
    args = argparse.Namespace(port=str(link), baud=[9600], listen=0.5, modbus_slave=None, all=False, json=False)
    for k, v in kw.items():
        setattr(args, k, v)
    rc = cmd_probe.handle(args)
    return rc, capsys.readouterr().out


def test_probe_modbus_suggestion_is_a_valid_config_naming_what_was_read(tmp_path):
    """The printed snippet must load as it is, with slave, register and serial settings probe found."""
    bank = RegisterBank()
    bank.set_registers(7, "holding", 0, [1234, 5])
    link = tmp_path / "meter.tty"
    with _device(link, bank=bank):
        r = cli("probe", link, "--baud", "9600", "--listen", "0.3", "--modbus-slave", "7", timeout=20)
    assert r.returncode == 0, r.stdout + r.stderr
    sensor = _load_with(tmp_path, _suggested_sensor(r.stdout))
    assert r.stdout.splitlines()[0] == "9600 8N1, Modbus RTU slave 7, holding register 0 = 1234"
    opts = sensor.options
    assert sensor.driver == "modbus_rtu"
    assert (opts.port, opts.baudrate, opts.parity, opts.stopbits) == (str(link), 9600, "N", 1)
    (block,) = opts.blocks
    assert (block.slave, block.function, block.address, block.count) == (7, "holding", 0, 1)
    assert [(f.name, f.offset, f.type) for f in block.fields] == [("reg0", 0, "uint16")]


def test_every_probe_suggestion_loads(tmp_path, capsys):
    """Each protocol probe can recognise (every branch) prints a sensor entry the loader accepts."""
    streams = {
        "pms5003": (encode_frame((1, 2, 3, 8, 12, 20, 0, 0, 0, 0, 0, 0, 0)) * 4, "PMS5003 frames, PM1.0=8 "),
        "kv": (b"pm25=12.5,pm10=20\n" * 4, "text lines (kv, channels pm25, pm10)"),
        "json": (b'{"temp": 21.5, "rh": 40}\n' * 4, "text lines (json, channels temp, rh)"),
        "csv": (b"21.5,40,3\n" * 4, "text lines (csv, channels col1, col2, col3)"),
    }
    for name, (data, summary) in streams.items():
        link = tmp_path / f"{name}.tty"
        with _device(link, stream=data):
            rc, out = _probe(capsys, link)
        assert rc == 0 and out.startswith(f"9600 8N1, {summary}"), (name, out)
        sensor = _load_with(tmp_path, _suggested_sensor(out))
        assert (sensor.options.port, sensor.options.baudrate) == (str(link), 9600), name

    bank = RegisterBank()
    bank.set_registers(3, "holding", 0, [42])
    bank.add_slave(4)  # answers, but has no register 0: exception 2
    link = tmp_path / "bus.tty"
    with _device(link, bank=bank):
        rc, out = _probe(capsys, link, modbus_slave=3)
        assert rc == 0 and _load_with(tmp_path, _suggested_sensor(out)).options.blocks[0].slave == 3
        assert out.startswith("9600 8N1, Modbus RTU slave 3, holding register 0 = 42"), out
        rc, out = _probe(capsys, link, modbus_slave=4)
    assert rc == 0 and _load_with(tmp_path, _suggested_sensor(out)).options.blocks[0].slave == 4
    assert out.startswith("9600 8N1, Modbus RTU slave 4, holding register 0: exception 2"), out
    assert "registers from the meter's manual" in out


def _rows(stdout: str) -> dict[str, tuple[str, str]]:
    """doctor's table as {CHECK: (STATUS, DETAIL)}, cut at the column widths of its dashes line."""
    lines = stdout.splitlines()
    assert lines[0].split() == ["STATUS", "CHECK", "DETAIL"], stdout
    w0, w1 = (len(d) for d in lines[1].split("  ")[:2])
    rows = {}
    for ln in lines[2:]:
        if not ln:
            break
        rows[ln[w0 + 2:w0 + 2 + w1].rstrip()] = (ln[:w0].rstrip(), ln[w0 + 4 + w1:])
    return rows


@pytest.fixture
def tree():
    """A folder everybody may enter (pytest's own tmp folders are 0700, which no other user may search)."""
    top = Path(tempfile.mkdtemp(prefix="eg-doctor-"))
    top.chmod(0o755)
    yield top
    shutil.rmtree(top)


def _doctor(cfg: Path, *extra) -> tuple[int, dict[str, tuple[str, str]], str]:
    r = cli("doctor", cfg, "--skip", "broker", "--skip", "clock", "--skip", "daemon", *extra, timeout=30)
    assert "Traceback" not in r.stderr, r.stderr
    return r.returncode, ({} if "--json" in extra else _rows(r.stdout)), r.stdout


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="makes folders owned by root")
def test_doctor_checks_the_state_dir_as_the_service_user(tree):
    """``--user nobody`` must fail where nobody cannot create the state directory, not pass because root can."""
    try:
        nobody = pwd.getpwnam("nobody").pw_uid
    except KeyError:
        pytest.skip("no user nobody here")
    rootonly, shared, given, locked = (tree / n for n in ("rootonly", "shared", "given", "locked"))
    for d, mode in ((rootonly, 0o755), (shared, 0o777), (given, 0o755), (locked, 0o700)):
        d.mkdir()
        d.chmod(mode)
    os.chown(given, nobody, -1)
    (locked / "inner").mkdir(mode=0o777)
    (locked / "inner").chmod(0o777)

    rc, rows, out = _doctor(write_config(rootonly), "--user", "nobody")
    assert rc == 1, out
    assert [(k, v[0]) for k, v in rows.items()] == [("config", "OK"), ("user", "OK"), ("state dir", "FAIL")]
    assert rows["state dir"][1].startswith(f"{rootonly}/state (not yet created): ")
    assert rows["state dir"][1].endswith(f"; nobody may not create it in {rootonly} (mode 0755, owner root, "
                                         "group root)"), out
    assert f"state dir: install -d -o nobody -m 0750 {rootonly}/state" in out

    rc, rows, out = _doctor(write_config(rootonly))
    assert rc == 0 and rows["state dir"][0] == "OK" and rows["state dir"][1].endswith("; root may create it"), out

    for folder in (shared, given):
        rc, rows, out = _doctor(write_config(folder), "--user", "nobody")
        assert rc == 0 and rows["state dir"][0] == "OK", out
        assert rows["state dir"][1].endswith("; nobody may create it"), out

    (given / "state").mkdir(mode=0o700)
    rc, rows, out = _doctor(write_config(given), "--user", "nobody")
    assert rc == 1 and rows["state dir"][0] == "FAIL", out
    assert rows["state dir"][1].endswith("; nobody may not write it (mode 0700, owner root, group root)"), out

    rc, rows, out = _doctor(write_config(locked / "inner"), "--user", "nobody")
    assert rc == 1 and rows["state dir"][0] == "FAIL", out
    assert rows["state dir"][1].endswith(f"; nobody may not enter {locked} (mode 0700, owner root, group root)")


def test_doctor_reports_a_missing_user_as_its_own_check(tmp_path):
    """A service user that does not exist fails doctor even when no check looks at a device."""
    with pytest.raises(KeyError):
        pwd.getpwnam(NO_USER)
    rc, rows, out = _doctor(write_config(tmp_path), "--user", NO_USER)
    assert rc == 1, out
    assert rows["user"] == ("FAIL", f"user {NO_USER!r} does not exist"), out
    assert rows["state dir"][0] == "FAIL" and rows["state dir"][1].endswith(f"; user {NO_USER!r} does not exist")
    assert f"user: useradd --system --no-create-home --groups dialout {NO_USER}" in out

    port = PtyPort(str(tmp_path / "air-1.tty"))
    try:
        cfg = write_config(tmp_path, sensors=serial_sensor("air-1", tmp_path / "air-1.tty"), name="serial.yaml")
        rc, rows, out = _doctor(cfg, "--user", NO_USER, "--json")
    finally:
        port.close()
    report = json.loads(out)
    assert rc == 1 and not report["ok"]
    assert [(c["name"], c["status"]) for c in report["checks"]] == [
        ("config", "ok"), ("user", "fail"), ("serial air-1", "fail"), ("state dir", "fail")]
    rc, rows, out = _doctor(cfg, "--user", NO_USER, "--skip", "serial", "--skip", "state")
    assert rc == 1 and list(rows) == ["config", "user"] and rows["user"][0] == "FAIL", out
