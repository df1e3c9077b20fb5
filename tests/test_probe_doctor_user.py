"""``probe``: one line per speed as it goes, Ctrl-C, hints, and suggestions the config loader accepts; and
``doctor --user`` judging the state directory as that user."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import pwd
import re
import select
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import termios
import threading
import time
from pathlib import Path

import pytest
from ops_support import cli, serial_sensor, write_config
from support import REPO

from drivers.pms5003 import Pms5003Decoder, encode_frame
from edge_gateway import cmd_probe, config
from simulators.modbus_slave import ModbusSlaveSim, RegisterBank
from simulators.pms5003 import scenario_frames
from simulators.pty_port import PtyPort

NO_USER = "eg-no-such-user-7q"
IN_TMP = ("; not inside /var/lib/edge-gateway: under the service /tmp is its own, emptied at each restart "
          "(PrivateTmp=yes): the queue would be lost")


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
    lines = r.stdout.splitlines()
    assert lines[:3] == ["9600 baud: 0 bytes; Modbus RTU slave 7 answered, holding register 0 = 1234", "",
                         "found at 9600 baud (8N1): Modbus RTU slave 7, holding register 0 = 1234"], r.stdout
    opts = sensor.options
    assert sensor.driver == "modbus_rtu"
    assert (opts.port, opts.baudrate, opts.parity, opts.stopbits) == (str(link), 9600, "N", 1)
    (block,) = opts.blocks
    assert (block.slave, block.function, block.address, block.count) == (7, "holding", 0, 1)
    assert [(f.name, f.offset, f.type) for f in block.fields] == [("reg0", 0, "uint16")]
    # the settings with units are spelt out: the poll interval and the reply timeout in seconds, the field's unit
    options = json.loads(_suggested_sensor(r.stdout).splitlines()[2].partition("options: ")[2])
    assert options["timeout_s"] == 0.5 and options["blocks"][0]["interval_s"] == 1.0
    assert options["blocks"][0]["fields"] == [{"name": "reg0", "offset": 0, "unit": ""}]
    assert (block.interval_s, block.fields[0].unit, opts.timeout_s) == (1.0, "", 0.5)
    assert '    # durations (*_s) are in seconds; fill in the units ("" for none)' in lines, r.stdout


def test_every_probe_suggestion_loads(tmp_path, capsys):
    """Each protocol probe can recognise (every branch) prints a sensor entry the loader accepts."""
    streams = {
        "pms5003": (encode_frame((1, 2, 3, 8, 12, 20, 0, 0, 0, 0, 0, 0, 0)) * 4, "PMS5003 frames, PM1.0=8 ",
                    "PMS5003 frames (", {"frame_interval_s": 1.0}),
        "kv": (b"pm25=12.5,pm10=20\n" * 4, "text lines (kv, channels pm25, pm10)", "kv text lines (",
               {"units": {"pm25": "", "pm10": ""}}),
        "json": (b'{"temp": 21.5, "rh": 40}\n' * 4, "text lines (json, channels temp, rh)", "json text lines (",
                 {"units": {"temp": "", "rh": ""}}),
        "csv": (b"21.5,40,3\n" * 4, "text lines (csv, channels col1, col2, col3)", "csv text lines (",
                {"units": {"col1": "", "col2": "", "col3": ""}}),
    }
    for name, (data, summary, looks, units) in streams.items():
        link = tmp_path / f"{name}.tty"
        with _device(link, stream=data):
            rc, out = _probe(capsys, link)
        assert rc == 0 and re.match(rf"9600 baud: \d+ bytes, looks like {re.escape(looks)}", out), (name, out)
        assert f"\n\nfound at 9600 baud (8N1): {summary}" in out, (name, out)
        sensor = _load_with(tmp_path, _suggested_sensor(out))
        assert (sensor.options.port, sensor.options.baudrate) == (str(link), 9600), name
        options = json.loads(_suggested_sensor(out).splitlines()[2].partition("options: ")[2])
        assert options.items() >= units.items(), (name, out)

    bank = RegisterBank()
    bank.set_registers(3, "holding", 0, [42])
    bank.add_slave(4)  # answers, but has no register 0: exception 2
    link = tmp_path / "bus.tty"
    with _device(link, bank=bank):
        rc, out = _probe(capsys, link, modbus_slave=3)
        assert rc == 0 and _load_with(tmp_path, _suggested_sensor(out)).options.blocks[0].slave == 3
        assert out.startswith("9600 baud: 0 bytes; Modbus RTU slave 3 answered, holding register 0 = 42\n"), out
        rc, out = _probe(capsys, link, modbus_slave=4)
    assert rc == 0 and _load_with(tmp_path, _suggested_sensor(out)).options.blocks[0].slave == 4
    assert out.startswith("9600 baud: 0 bytes; Modbus RTU slave 4 answered, holding register 0: exception 2\n"
                          "\nfound at 9600 baud (8N1): Modbus RTU slave 4, holding register 0: exception 2\n"), out
    assert "registers from the meter's manual" in out


# --- technician walkthrough: one line per speed as it goes, Ctrl-C keeps what was found, plain hints -------

SPEEDS = {getattr(termios, f"B{b}"): b for b in (50, 9600, 19200, 38400, 57600, 115200)}
FRAMES = b"".join(scenario_frames(1, 1_700_000_000.0, 1.0, 8))  # 8 frames of the pms5003 simulator, 256 bytes
NOISE = bytes(range(0x80, 0xE4))  # 100 bytes as a UART at the wrong speed reads them: no newline, no frame start
FLOOD = (NOISE * (cmd_probe.MAX_BYTES // len(NOISE) + 1))[:cmd_probe.MAX_BYTES]  # ends a speed by itself
WAIT = 30.0  # seconds before a test gives up on a sign from the probe: a hang, not a slow machine


def _found_summary(frames: bytes) -> str:
    f = Pms5003Decoder().feed(frames)[-1]
    return f"PMS5003 frames, PM1.0={f.pm1_0} PM2.5={f.pm2_5} PM10={f.pm10}"


def _proc(pid: int, name: str) -> str:
    try:
        return Path(f"/proc/{pid}/{name}").read_text()
    except OSError:  # it has ended
        return ""


def _asleep(pid: int) -> bool:
    """The process is sleeping (state S): the probe only does so in its read's select() once it listens."""
    return _proc(pid, "stat").rpartition(")")[2].split()[:1] == ["S"]


def _bytes_read(pid: int) -> int:
    """What the process has read (read() syscalls, all files): /proc/PID/io's rchar."""
    for line in _proc(pid, "io").splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    return -1


def _wait_for(condition, what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not condition():
        assert time.monotonic() < deadline, f"no sign in {WAIT} s that {what}"
        time.sleep(0.005)


class _Sensor:
    """A PMS5003 that talks at ``baud`` only, on a real pty behind ``link``, to the probe process ``watch`` names.

    Each time the probe opens the port at a new speed, the sensor first waits until the probe listens at it: the
    pty is at that speed, the probe is asleep (between setting the speed and flushing its input at open it makes
    no sleeping call: it sleeps only in its read's select()), and the pty is still at that speed. Only then does
    it write, once: the simulator's 8 frames if the speed is ``baud``, else ``noise`` (what a UART at the wrong
    speed would read). So the probe's flushes at open never discard what it writes, however late they run, and
    it never writes to a speed the probe has left. ``listening[b]`` is set once the probe listens at ``b``,
    ``sent[b]`` once the bytes are written (``read_before[b]``: the probe's bytes read just before); at a speed
    in ``hold`` the sensor waits for ``release(b)`` before writing. The pty starts at 50 baud, which probe never
    tries, so the first open is seen too."""

    def __init__(self, link: Path, baud: int | None, noise: bytes = NOISE, hold=()):
        self.baud, self.noise, self.pid = baud, noise, None
        self.port = PtyPort(str(link))
        os.set_blocking(self.port.master, False)
        attrs = termios.tcgetattr(self.port.slave)
        attrs[4] = attrs[5] = termios.B50
        termios.tcsetattr(self.port.slave, termios.TCSANOW, attrs)
        self.listening = {b: threading.Event() for b in SPEEDS.values()}
        self.sent = {b: threading.Event() for b in SPEEDS.values()}
        self.go = {b: threading.Event() for b in SPEEDS.values()}
        for b in SPEEDS.values():
            if b not in hold:
                self.go[b].set()
        self.read_before: dict[int, int] = {}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def watch(self, pid: int) -> None:
        self.pid = pid

    def release(self, baud: int) -> None:
        self.go[baud].set()

    def _speed(self) -> int:
        return termios.tcgetattr(self.port.master)[4]  # a pty's master reports its slave's settings

    def _serve(self) -> None:
        done = termios.B50
        while not self.stop.wait(0.002):
            speed = self._speed()
            if self.pid is None or speed == done or not _asleep(self.pid) or self._speed() != speed:
                continue
            done = speed
            baud = SPEEDS[speed]
            self.listening[baud].set()
            while not self.go[baud].wait(0.01):
                if self.stop.is_set():
                    return
            self.read_before[baud] = _bytes_read(self.pid)
            self._write(FRAMES if baud == self.baud else self.noise)
            self.sent[baud].set()

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        while view and not self.stop.is_set():
            if select.select([], [self.port.master], [], 0.05)[1]:
                view = view[os.write(self.port.master, view):]

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        self.port.close()


@contextlib.contextmanager
def _sensor_at(link: Path, baud: int | None, **kw):
    sensor = _Sensor(link, baud, **kw)
    try:
        yield sensor
    finally:
        sensor.close()


def _start_probe(sensor: _Sensor, *args) -> subprocess.Popen:
    """The probe with Ctrl-C as at a terminal: a suite started in the background by a non-interactive shell (bash
    ignores SIGINT in its ``&`` jobs) passes SIGINT down ignored, and Python then installs no KeyboardInterrupt."""
    p = subprocess.Popen([sys.executable, "-m", "edge_gateway", "probe", *map(str, args)], cwd=REPO, text=True,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    sensor.watch(p.pid)
    return p


def _interrupt(p: subprocess.Popen) -> tuple[str, str]:
    p.send_signal(signal.SIGINT)
    return p.communicate(timeout=WAIT)


def test_probe_prints_one_line_per_speed_as_it_goes(tmp_path):
    """Each speed's line is out (flushed) while the next speed is still being tried, in the order tried.

    --listen 60: each speed ends on what the sensor sent (MAX_BYTES of noise, or frames), never on time; the
    probe cannot leave 19200 before the sensor sends there, which it does only once the 9600 line was read."""
    link = tmp_path / "pm.tty"
    with _sensor_at(link, 38400, noise=FLOOD, hold={19200}) as sensor:
        p = _start_probe(sensor, link, "--baud", "9600", "--baud", "19200", "--baud", "38400", "--listen", "60")
        try:
            first = p.stdout.readline()
            still_running = p.poll() is None
            sensor.release(19200)
            rest, err = p.communicate(timeout=WAIT)
        finally:
            p.kill()
    assert p.returncode == 0, first + rest + err
    assert first == f"9600 baud: {cmd_probe.MAX_BYTES} bytes, no known protocol\n" and still_running, first
    lines = (first + rest).splitlines()
    assert lines[:6] == [f"9600 baud: {cmd_probe.MAX_BYTES} bytes, no known protocol",
                         f"19200 baud: {cmd_probe.MAX_BYTES} bytes, no known protocol",
                         "38400 baud: 256 bytes, looks like PMS5003 frames (8 valid, 0 bad)",
                         "",
                         f"found at 38400 baud (8N1): {_found_summary(FRAMES)}",
                         ""], first + rest
    sensor = _load_with(tmp_path, _suggested_sensor(first + rest))
    assert (sensor.driver, sensor.options.baudrate, sensor.options.frame_interval_s) == ("pms5003", 38400, 1.0)
    assert lines[-1] == "    # durations (*_s) are in seconds", rest


@pytest.mark.skipif(not os.path.exists("/proc/self/io"), reason="no /proc/PID/io (task I/O accounting) here")
def test_probe_ctrl_c_prints_what_was_found_so_far_and_exits_130(tmp_path):
    """--all at a sensor that answers at 9600: Ctrl-C during the next speed keeps the 9600 result and its entry.

    SIGINT goes once the probe has read the 100 bytes of noise sent at 19200 (--listen 60: it is still there)."""
    link = tmp_path / "pm.tty"
    with _sensor_at(link, 9600) as sensor:
        p = _start_probe(sensor, link, "--all", "--baud", "9600", "--baud", "19200", "--baud", "38400",
                         "--listen", "60")
        try:
            first = p.stdout.readline()
            assert sensor.sent[19200].wait(WAIT), first
            _wait_for(lambda: _bytes_read(p.pid) >= sensor.read_before[19200] + len(NOISE),
                      "the probe read the noise at 19200")
            rest, err = _interrupt(p)
        finally:
            p.kill()
    assert p.returncode == 130, first + rest + err
    assert "Traceback" not in err, err
    assert first == "9600 baud: 256 bytes, looks like PMS5003 frames (8 valid, 0 bad)\n", first + rest
    lines = rest.splitlines()
    assert lines[:2] == ["", "interrupted (Ctrl-C): tried 9600 of 9600, 19200, 38400 baud"], rest
    assert re.fullmatch(r"19200 baud: interrupted after [\d.]+ s, 100 bytes, no known protocol", lines[2]), rest
    assert lines[3] == f"found at 9600 baud (8N1): {_found_summary(FRAMES)}", rest
    sensor = _load_with(tmp_path, _suggested_sensor(rest))
    assert (sensor.driver, sensor.options.port, sensor.options.baudrate) == ("pms5003", str(link), 9600)


def test_probe_ctrl_c_before_anything_was_found(tmp_path):
    """Ctrl-C at a silent port while the first speed is listened to: what was tried, no wiring hint (most speeds
    were not tried), exit 130, no traceback. --listen 60: the probe is still at 9600 when SIGINT comes."""
    with _sensor_at(tmp_path / "quiet.tty", None, noise=b"") as sensor:
        p = _start_probe(sensor, tmp_path / "quiet.tty", "--listen", "60")
        try:
            assert sensor.listening[9600].wait(WAIT)
            out, err = _interrupt(p)
        finally:
            p.kill()
    assert (p.returncode, err) == (130, ""), out + err
    lines = out.splitlines()
    assert lines[:2] == ["", "interrupted (Ctrl-C): tried none of 9600, 19200, 38400, 57600, 115200 baud"], out
    assert re.fullmatch(r"9600 baud: interrupted after [\d.]+ s, 0 bytes", lines[2]), out
    assert lines[3:] == ["no bytes so far (0 of 5 speeds tried)"], out
    assert cmd_probe.NO_BYTES not in out


def test_probe_hints_at_wiring_when_no_byte_arrives_at_any_speed(tmp_path):
    port = PtyPort(str(tmp_path / "quiet.tty"))
    try:
        r = cli("probe", tmp_path / "quiet.tty", "--listen", "0.25", "--baud", "9600", "--baud", "115200")
    finally:
        port.close()
    assert r.returncode == 1, r.stdout + r.stderr
    assert r.stdout.splitlines() == [
        "9600 baud: 0 bytes in 0.25 s",
        "115200 baud: 0 bytes in 0.25 s",
        "",
        "no bytes at any speed: is the sensor powered, TX wired to RX, and the port right?"]


def test_probe_says_a_file_is_not_a_serial_port_and_suggests_dev_for_a_bare_name(tmp_path):
    r = cli("probe", "/etc/passwd", "--listen", "0.2")
    assert (r.returncode, r.stdout, r.stderr) == (1, "9600 baud: cannot open: /etc/passwd is not a serial port\n", "")
    r = cli("probe", tmp_path, "--listen", "0.2")
    assert (r.returncode, r.stdout) == (1, f"9600 baud: cannot open: {tmp_path} is not a serial port\n")
    name = "ttyEGnosuch7"  # no /dev/NAME either: nothing to suggest
    assert not os.path.exists(f"/dev/{name}") and not (REPO / name).exists()
    r = cli("probe", name, "--listen", "0.2")
    assert (r.returncode, r.stdout, r.stderr) == (1, f"9600 baud: cannot open: {name}: no such device\n", "")
    port = PtyPort()  # /dev/pts/N exists: "pts/N" as a bare name gets the suggestion
    try:
        name = port.slave_path.removeprefix("/dev/")
        assert not (REPO / name).exists()
        r = cli("probe", name, "--listen", "0.2")
    finally:
        port.close()
    assert (r.returncode, r.stdout, r.stderr) == (
        1, f"9600 baud: cannot open: {name}: no such device; did you mean /dev/{name}?\n", "")
    r = cli("probe", tmp_path / "gone.tty", "--listen", "0.2", "--json")
    assert r.returncode == 1 and json.loads(r.stdout)["attempts"][0]["error"] == (
        f"cannot open: {tmp_path / 'gone.tty'}: no such device (is it plugged in? see `ls -l /dev/serial/by-id/`)")


# --- probe's results on Ctrl-C and on failed reads, on a scripted port (no timing involved) -------------------

class _ScriptedPort:
    """A serial port whose reads follow ``reads`` (bytes to return, or an exception to raise), then read
    nothing; ``close`` raises ``close_raises`` if given."""

    def __init__(self, reads=(), close_raises: BaseException | None = None):
        self.reads, self.close_raises = list(reads), close_raises

    @property
    def in_waiting(self) -> int:
        return len(self.reads[0]) if self.reads and isinstance(self.reads[0], bytes) else 0

    def reset_input_buffer(self) -> None:
        pass

    def read(self, size: int) -> bytes:
        if not self.reads:
            return b""
        item = self.reads.pop(0)
        if isinstance(item, BaseException):
            raise item
        return item

    def close(self) -> None:
        if self.close_raises:
            raise self.close_raises


@pytest.fixture
def scripted(monkeypatch):
    """``scripted(ports)``: probe opens ``ports[baud]`` at each speed (a speed left out: read nothing)."""
    import drivers.serial_port

    def use(ports: dict):
        monkeypatch.setattr(drivers.serial_port, "open_serial",
                            lambda port, baudrate, **kw: ports.get(baudrate) or _ScriptedPort())
    return use


def test_probe_ctrl_c_before_every_speed_was_tried_gives_no_wiring_hint(capsys, scripted):
    """#1: Ctrl-C after one silent speed: "no bytes so far", not the wiring hint (4 speeds were never tried)."""
    scripted({19200: _ScriptedPort([KeyboardInterrupt()])})
    rc, out = _probe(capsys, "/dev/ttyUSB9", baud=None, listen=0.05)
    lines = out.splitlines()
    assert rc == 130 and lines[:3] == ["9600 baud: 0 bytes in 0.05 s", "",
                                       "interrupted (Ctrl-C): tried 9600 of 9600, 19200, 38400, 57600, 115200 baud"]
    assert re.fullmatch(r"19200 baud: interrupted after [\d.]+ s, 0 bytes", lines[3]), out
    assert lines[4:] == ["no bytes so far (1 of 5 speeds tried)"], out
    # Ctrl-C once every speed was tried (while the last line was printed): the hint holds
    every = [{"baud": b, "framing": "8N1", "bytes": 0, "seconds": 0.05, "found": None} for b in cmd_probe.BAUDS]
    assert cmd_probe.summary("/dev/ttyUSB9", every, cmd_probe.BAUDS, interrupted=True, shown=5)[1:] == [
        cmd_probe.NO_BYTES]


def test_probe_ctrl_c_reports_a_protocol_in_the_bytes_read_so_far_in_text_and_json(tmp_path, capsys, scripted):
    """#2: 2 frames read (64 bytes, fewer than probe waits for) then Ctrl-C: found, in the text as in --json."""
    part = FRAMES[:64]
    scripted({9600: _ScriptedPort([part, KeyboardInterrupt()])})
    rc, out = _probe(capsys, "/dev/ttyUSB9")
    lines = out.splitlines()
    assert rc == 130 and lines[:2] == ["", "interrupted (Ctrl-C): tried none of 9600 baud"], out
    assert re.fullmatch(r"9600 baud: interrupted after [\d.]+ s, 64 bytes, looks like PMS5003 frames "
                        r"\(2 valid, 0 bad\)", lines[2]), out
    assert lines[3] == f"found at 9600 baud (8N1, in the bytes read before Ctrl-C): {_found_summary(part)}", out
    assert _load_with(tmp_path, _suggested_sensor(out)).options.baudrate == 9600

    scripted({9600: _ScriptedPort([part, KeyboardInterrupt()])})
    rc, out = _probe(capsys, "/dev/ttyUSB9", json=True)
    doc = json.loads(out)
    assert rc == 130 and doc["interrupted"] is True, out
    found = doc["found"]
    assert (found["baud"], found["interrupted"], found["bytes"]) == (9600, True, 64), out
    assert (found["found"]["protocol"], found["found"]["frames"]) == ("pms5003", 2), out
    assert doc["attempts"] == [found]


def test_probe_always_ends_with_a_summary_line(capsys, scripted):
    """#4: a failed read at one speed and unknown bytes at the other: a summary line still ends the output."""
    scripted({9600: _ScriptedPort([OSError(5, "Input/output error")]), 19200: _ScriptedPort([NOISE])})
    rc, out = _probe(capsys, "/dev/ttyUSB9", baud=[9600, 19200], listen=0.05)
    assert rc == 1 and out.splitlines() == [
        "9600 baud: read failed: [Errno 5] Input/output error",
        "19200 baud: 100 bytes, no known protocol",
        "",
        "no known protocol at 19200 baud (a longer --listen may help; edge-gateway record PORT FILE captures the "
        "bytes to look at); 9600 baud failed (see above)"], out

    def attempt(baud, n=0, **kw):
        return {"baud": baud, "framing": "8N1", "bytes": n, "seconds": 0.05, "found": None, **kw}

    failed = attempt(9600, error="read failed: gone")
    assert cmd_probe.summary("p", [failed, attempt(19200)], (9600, 19200)) == [
        "no bytes at 19200 baud; 9600 baud failed (see above)"]
    assert cmd_probe.summary("p", [failed, dict(failed, baud=19200)], (9600, 19200)) == [
        "nothing read; 9600, 19200 baud failed (see above)"]
    assert cmd_probe.summary("p", [attempt(9600, 100), attempt(19200, error="cannot open: p: busy")],
                             (9600, 19200, 38400))[0].endswith("; 19200 baud failed (see above)")
    # a single attempt that failed: its line is the summary (the port cannot be opened)
    assert cmd_probe.summary("p", [attempt(9600, error="cannot open: p: no such device")], (9600, 19200)) == []


def test_probe_records_the_attempt_a_ctrl_c_in_close_cuts_short(capsys, scripted):
    """#5: Ctrl-C while the port is closed (after listening, or a second one after the first) keeps the attempt."""
    scripted({9600: _ScriptedPort([NOISE], close_raises=KeyboardInterrupt())})
    rc, out = _probe(capsys, "/dev/ttyUSB9", baud=[9600, 19200], listen=0.05, json=True)
    doc = json.loads(out)
    assert rc == 130 and doc["interrupted"] is True and doc["found"] is None, out
    assert [(a["baud"], a["bytes"], a.get("interrupted")) for a in doc["attempts"]] == [(9600, 100, True)], out

    part = FRAMES[:64]  # a second Ctrl-C, in close(), after the one in read(): one attempt, its frames kept
    scripted({9600: _ScriptedPort([part, KeyboardInterrupt()], close_raises=KeyboardInterrupt())})
    rc, out = _probe(capsys, "/dev/ttyUSB9", baud=[9600, 19200], listen=0.05, json=True)
    doc = json.loads(out)
    assert rc == 130 and doc["attempts"] == [doc["found"]] and doc["found"]["found"]["frames"] == 2, out

    scripted({9600: _ScriptedPort([FRAMES], close_raises=KeyboardInterrupt())})  # after frames that decode
    rc, out = _probe(capsys, "/dev/ttyUSB9", baud=[9600, 19200], listen=0.05, all=True)
    lines = out.splitlines()
    assert rc == 130 and lines[:2] == ["", "interrupted (Ctrl-C): tried none of 9600, 19200 baud"], out
    assert re.fullmatch(r"9600 baud: interrupted after [\d.]+ s, 256 bytes, looks like PMS5003 frames "
                        r"\(8 valid, 0 bad\)", lines[2]), out
    assert lines[3] == f"found at 9600 baud (8N1, in the bytes read before Ctrl-C): {_found_summary(FRAMES)}"


def test_probe_prints_the_line_of_an_attempt_a_ctrl_c_kept_from_being_printed(capsys, scripted, monkeypatch):
    """Ctrl-C once an attempt is recorded but before its line is out: the line comes after the header."""
    scripted({9600: _ScriptedPort([NOISE])})
    line, calls = cmd_probe.speed_line, []

    def interrupted_once(attempt, listen):
        calls.append(attempt)
        if len(calls) == 1:  # the line printed as the speed ends
            raise KeyboardInterrupt
        return line(attempt, listen)

    monkeypatch.setattr(cmd_probe, "speed_line", interrupted_once)
    rc, out = _probe(capsys, "/dev/ttyUSB9", baud=[9600, 19200], listen=0.05)
    assert rc == 130 and out.splitlines() == [
        "", "interrupted (Ctrl-C): tried 9600 of 9600, 19200 baud", "9600 baud: 100 bytes, no known protocol",
        "no known protocol at 9600 baud (a longer --listen may help; edge-gateway record PORT FILE captures the "
        "bytes to look at)"], out


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

    rc, rows, out = _doctor(write_config(rootonly))  # a WARN: the tree is in /tmp (PrivateTmp=yes)
    assert rc == 0 and rows["state dir"][0] == "WARN" and rows["state dir"][1].endswith(
        "; root may create it" + IN_TMP), out

    for folder in (shared, given):
        rc, rows, out = _doctor(write_config(folder), "--user", "nobody")
        assert rc == 0 and rows["state dir"][0] == "WARN", out
        assert rows["state dir"][1].endswith("; nobody may create it" + IN_TMP), out

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


# --- review 15 (operations): what the unit allows ---------------------------------------------

@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="mknod needs root")
def test_doctor_fails_a_port_whose_device_group_the_unit_does_not_allow(tmp_path):
    """#2: DevicePolicy=closed opens only the DeviceAllow= groups (by /proc/devices major), ptys and a few nodes.
    The Pi's mini UART ttyS0 (major 4) is allowed now; a device of another group fails, whatever its mode."""
    from edge_gateway import cmd_doctor

    uart, other = tmp_path / "ttyS0", tmp_path / "other0"
    os.mknod(uart, 0o660 | stat.S_IFCHR, os.makedev(4, 64))
    os.mknod(other, 0o660 | stat.S_IFCHR, os.makedev(1, 1))
    uart.chmod(0o660)
    other.chmod(0o660)
    bad = cmd_doctor.check_serial("meter", str(other), "root")
    assert (bad.status, bad.detail, bad.fix) == (
        "fail", f"{other} -> {other} mode 0660 group root; the service may not open it: major 1 (mem) is not one "
                "of the unit's DeviceAllow= groups (ttyUSB, ttyACM, ttyAMA, ttyS, ttySC)",
        "`systemctl edit edge-gateway` and add [Service] DeviceAllow=char-mem rw")
    ok = cmd_doctor.check_serial("air-1", str(uart), "root")
    assert (ok.status, ok.detail) == ("ok", f"{uart} -> {uart} mode 0660 group root; root may read and write it")
    assert "ttyS" in cmd_doctor.char_device_groups(4) and cmd_doctor.char_device_groups(1) == ["mem"]
    master, slave = os.openpty()
    try:
        pty = cmd_doctor.check_serial("sim", os.ttyname(slave), "root")
    finally:
        os.close(master)
        os.close(slave)
    assert pty.status == "ok", pty


def test_doctor_warns_about_a_state_dir_the_service_cannot_keep():
    """#6: only /var/lib/edge-gateway is writable under the unit; /tmp is private to it, /home and /root hidden."""
    from edge_gateway import cmd_doctor

    def state(path: str):
        c = cmd_doctor.check_state_dir(Path(path), 1000, "root")
        return c.status, c.detail.partition("; root may ")[2].partition("; ")[2], c.fix

    fix = "set gateway.state_dir: /var/lib/edge-gateway (the unit's StateDirectory=)"
    assert state("/var/lib/edge-gateway/site-a") == ("ok", "", "")
    assert state("/tmp/eg-state") == ("warn", IN_TMP[2:], fix)
    assert state("/home/pi/eg-state") == (
        "warn", "not inside /var/lib/edge-gateway: the service does not see /home (ProtectHome=yes)", fix)
    assert state("/srv/eg-state") == (
        "warn", "not inside /var/lib/edge-gateway: the service may write nothing else (ProtectSystem=strict)", fix)


def test_doctor_checks_as_the_service_user_when_it_exists():
    """#6: under sudo the default user was root, for whom every permission check passes."""
    from edge_gateway import cmd_doctor

    me = pwd.getpwuid(os.geteuid()).pw_name
    assert cmd_doctor.default_user(NO_USER) == (me, "")
    user, note = cmd_doctor.default_user("nobody")
    assert (user, note) == ("nobody", "checked as the service user (the default when it exists; --user NAME for "
                                      "another)")
    (row,) = cmd_doctor.check_user(user, shown=True, note=note)
    assert row.detail.startswith("nobody: uid 65534, groups ") and row.detail.endswith("; " + note)
    assert cmd_doctor.default_user()[0] == ("edge-gateway" if _exists("edge-gateway") else me)


def _exists(user: str) -> bool:
    try:
        pwd.getpwnam(user)
    except KeyError:
        return False
    return True


def test_doctor_checks_the_secrets_file(tmp_path):
    """#1: a secrets_file that is missing or empty fails doctor, with the fix (a broker without password needs none)."""
    from edge_gateway import cmd_doctor

    def check(name: str, text: str | None):
        path = tmp_path / name
        if text is not None:
            path.write_text(text)
            path.chmod(0o600)
        cfg = config.loads(f"gateway: {{id: s, state_dir: {tmp_path}/state}}\nbroker: {{secrets_file: {path}}}\n")
        (c,) = cmd_doctor.check_secrets(cfg.broker)
        return c.status, c.detail, c.fix

    fix = ("write 'username: ...' and 'password: ...' lines to {} (chmod 600); a broker without a password needs no "
           "secrets_file: remove broker.secrets_file")
    missing = tmp_path / "missing"
    assert check("missing", None) == ("fail", f"secrets file {missing}: cannot open: No such file or directory",
                                      fix.format(missing))
    empty = tmp_path / "empty"
    assert check("empty", "# nothing yet\n") == (
        "fail", f"secrets file {empty} is empty: a broker without a password needs no secrets_file: remove "
                "broker.secrets_file from the config; otherwise write its 'username: ...' and 'password: ...' lines",
        fix.format(empty))
    assert check("good", "username: gw-1\npassword: pw\n") == ("ok", f"{tmp_path}/good: username and password", "")
    assert config.loads("gateway: {id: s}\n").broker.secrets_file == ""
    assert cmd_doctor.check_secrets(config.loads("gateway: {id: s}\n").broker) == []


def test_a_password_in_clear_to_another_machine_and_a_tls_that_takes_any_name_are_warned_of(tmp_path, capsys):
    """Security review 19 #3: a secrets_file without broker.tls sent the password in clear (a fake broker read
    it from the CONNECT), and `validate`, the journal and doctor said nothing; check_hostname false neither.
    No connection is made here: 192.0.2.10 is a documentation address."""
    from edge_gateway import cmd_doctor
    from edge_gateway.cli import main

    secrets = tmp_path / "broker.secrets"
    secrets.write_text("username: gw-17\npassword: pw\n")
    secrets.chmod(0o600)
    clear = ("broker.secrets_file", "the broker's username and password go to 192.0.2.10 in clear text: there is no "
             "broker.tls (set it, or keep the password on a broker on this machine)")

    def load(broker: str):
        return config.loads(f"gateway: {{id: s, state_dir: {tmp_path}/state}}\nbroker: {broker}\n")

    cfg = load(f"{{host: 192.0.2.10, secrets_file: {secrets}}}")
    none = ("sensors", config.NO_SENSORS)
    assert config.warnings_of(cfg) == [clear, none]
    (c,) = cmd_doctor.check_secrets(cfg.broker)
    assert (c.status, c.detail, c.fix) == (
        "warn", f"{secrets}: {clear[1]}",
        "set broker.tls (the broker's port for TLS, usually 8883, and its CA in broker.tls.ca_file)")
    for safe in (f"{{host: 127.0.0.1, secrets_file: {secrets}}}", f"{{host: localhost, secrets_file: {secrets}}}",
                 f"{{host: '::1', secrets_file: {secrets}}}", "{host: 192.0.2.10}",
                 f"{{host: 192.0.2.10, secrets_file: {secrets}, tls: {{ca_file: /etc/ssl/ca.pem}}}}"):
        assert config.warnings_of(load(safe)) == [none], safe
    assert cmd_doctor.check_secrets(load(f"{{host: localhost, secrets_file: {secrets}}}").broker)[0].status == "ok"
    tls = load("{host: mqtt.example.net, tls: {ca_file: /etc/ssl/ca.pem, check_hostname: false}}")
    assert config.warnings_of(tls) == [("broker.tls.check_hostname", (
        "false: any certificate the CA signed is taken for mqtt.example.net, so whoever holds one can pose as the "
        "broker (set true, or give the broker a certificate naming it)")), none]
    path = tmp_path / "gw.yaml"
    path.write_text(f"gateway: {{id: s, state_dir: {tmp_path}/state}}\nbroker:\n  host: 192.0.2.10\n"
                    f"  secrets_file: {secrets}\nsensors: []\n")
    capsys.readouterr()
    assert main(["config", "validate", str(path)]) == 0
    assert f"edge-gateway: {path}:4:17: broker.secrets_file: warning: {clear[1]}\n" in capsys.readouterr().err


# --- review 15 walkthrough #7: the fix for a port the user may not open -------------------------

def test_doctor_fix_for_a_port_the_user_may_not_open_names_dialout_and_usermod(tmp_path, monkeypatch):
    from edge_gateway import cmd_doctor

    try:
        pwd.getpwnam("nobody")
        import grp

        dialout = grp.getgrnam("dialout").gr_gid
    except KeyError:
        pytest.skip("no user nobody or group dialout here")
    port = PtyPort(str(tmp_path / "air-1.tty"))
    try:
        os.chmod(port.slave_path, 0o600)
        real, name = port.slave_path, os.path.basename(port.slave_path)
        rule = (f'a udev rule that makes the device group dialout mode 0660, e.g. SUBSYSTEM=="tty", KERNEL=="{name}", '
                'GROUP="dialout", MODE="0660" in /etc/udev/rules.d/99-edge-gateway.rules (then `udevadm trigger`)')
        row = cmd_doctor.check_serial("air-1", port.path, "nobody")
        assert row.status == "fail" and row.detail.endswith("; nobody may not read and write it"), row
        assert row.fix == rule + "; and usermod -aG dialout nobody (then restart the service / log in again)"
        uid, gids = cmd_doctor.user_groups("nobody")
        monkeypatch.setattr(cmd_doctor, "user_groups", lambda user: (uid, gids | {dialout}))
        row = cmd_doctor.check_serial("air-1", port.path, "nobody")
        assert (row.status, row.fix) == ("fail", rule), row
    finally:
        port.close()
    assert real.startswith("/dev/pts/")
