"""Simulator entry points: stop signals, a serial line nobody reads, bad arguments
(review 15, simulators #5, #7, #8)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import types
from pathlib import Path

import pytest

from simulators import pms5003, serial_line, stream
from simulators.coap_node import free_udp_port
from simulators.pty_port import PtyPort

REPO = Path(__file__).resolve().parent.parent
SCENARIO = REPO / "simulators" / "scenarios" / "city_block.yaml"
T0 = 1_700_000_000.0


def _start(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "simulators.cli", *args], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(REPO)},
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


# 5: SIGTERM, SIGHUP (and Ctrl-C while waiting for a reader) run the cleanup: no link is left behind
def test_stop_signals_remove_every_link(tmp_path):
    procs = {
        "city": (_start(["city", str(SCENARIO), "--run-dir", str(tmp_path / "city"), "--count", "0",
                         "--coap-port", str(free_udp_port())]), signal.SIGTERM, "ready"),
        "line": (_start(["serial-line", "--link", str(tmp_path / "line.tty")]), signal.SIGTERM, None),
        "pms": (_start(["pms5003", "--link", str(tmp_path / "pm.tty")]), signal.SIGHUP, None),
        "wait": (_start(["serial-line", "--wait-open", "--link", str(tmp_path / "w.tty")]), signal.SIGINT, None),
    }
    try:
        for name, (proc, sig, until) in procs.items():
            for line in proc.stdout:  # the pty path, or for the city everything up to "ready"
                if until is None or line.strip() == until:
                    break
        links = [tmp_path / "line.tty", tmp_path / "pm.tty", tmp_path / "w.tty"] + [
            tmp_path / "city" / f"{s}.tty" for s in ("air-1", "noise-1", "pm-1", "meters")]
        deadline = time.monotonic() + 5
        while not all(os.path.islink(p) for p in links) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert all(os.readlink(p).startswith("/dev/pts/") for p in links)
        for proc, sig, _ in procs.values():
            proc.send_signal(sig)
        results = {name: (proc.wait(10), proc.stderr.read()) for name, (proc, _, _) in procs.items()}
    finally:
        for proc, _, _ in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait(5)
            proc.stdout.close()
            proc.stderr.close()
    assert {name: rc for name, (rc, _) in results.items()} == {"city": 143, "line": 143, "pms": 129, "wait": 0}
    assert not any("Traceback" in err for _, err in results.values()), results
    assert [p for p in links if os.path.lexists(p)] == []


# 7: with nobody reading, serial-line drops (and counts) what the pty cannot hold instead of blocking
def test_serial_line_without_reader_drops_bytes_as_a_uart(tmp_path, monkeypatch, capsys):
    ports: list = []

    class Port(PtyPort):  # on close, takes what the pty held, so every byte is accounted for
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            self.held = 0
            ports.append(self)

        def close(self) -> None:
            if self.slave >= 0:
                os.set_blocking(self.slave, False)
                idle = 0
                while idle < 3:  # the pty hands bytes to its slave side a moment after the write
                    try:
                        self.held += len(os.read(self.slave, 65536))
                        idle = 0
                    except BlockingIOError:
                        idle += 1
                        time.sleep(0.01)
            super().close()

    monkeypatch.setattr(stream, "PtyPort", Port)  # the write loop the stream simulators share
    monkeypatch.setattr(stream, "time", types.SimpleNamespace(sleep=lambda s: None, time=time.time,
                                                             monotonic=time.monotonic))
    rc: list[int] = []
    argv = ["--count", "3000", "--rate", "100000", "--t0", str(T0), "--link", str(tmp_path / "l.tty")]
    t = threading.Thread(target=lambda: rc.append(serial_line.main(argv)), daemon=True)
    t.start()
    t.join(5)
    if t.is_alive():  # blocked in a write: read to free it, then fail
        deadline = time.monotonic() + 10
        while t.is_alive() and time.monotonic() < deadline:
            try:
                os.read(ports[0].slave, 65536)
            except OSError:
                time.sleep(0.01)
        pytest.fail("serial-line blocked on a pty nobody reads")
    total = len(b"".join(serial_line.scenario_lines(1, T0, 1e-5, 3000, "kv", False)))
    port = ports[0]
    assert rc == [0] and port.held > 0 and port.dropped > 0 and port.held + port.dropped == total
    assert capsys.readouterr().err == f"edge-gateway-sim serial-line: dropped {port.dropped} bytes nobody read\n"
    assert not os.path.lexists(tmp_path / "l.tty")


# 8: bad arguments are refused before a pty or link exists
@pytest.mark.parametrize("sim,args,message", [
    (serial_line, ["--rate", "0"], "--rate: must be a positive number"),
    (serial_line, ["--rate", "-5"], "--rate: must be a positive number"),
    (serial_line, ["--rate", "nan"], "--rate: must be a positive number"),
    (serial_line, ["--seed", "-1"], "--seed: must be >= 0"),
    (serial_line, ["--count", "-2"], "--count: must be >= 0"),
    (pms5003, ["--seed", "-1"], "--seed: must be >= 0"),
])
def test_bad_arguments_are_refused(tmp_path, capsys, sim, args, message):
    link = tmp_path / "s.tty"
    with pytest.raises(SystemExit) as exc:
        sim.main([*args, *(["--count", "1"] if "--count" not in args else []), "--link", str(link)])
    assert exc.value.code == 2
    out = capsys.readouterr()
    assert message in out.err and out.out == ""
    assert not os.path.lexists(link)


# Review 15 walkthrough #3: `--link` into a folder that does not exist yet (the example config's "Try it"
# line on a fresh machine) creates the folder; what still cannot be linked is one line and exit 2.
def test_link_folder_is_created_and_link_errors_are_one_line(tmp_path, capsys):
    link = tmp_path / "edge-gateway-demo" / "sub" / "air-1.tty"
    assert serial_line.main(["--count", "1", "--rate", "1000", "--link", str(link)]) == 0
    out = capsys.readouterr()
    assert out.out == f"{link}\n" and out.err == ""
    assert (tmp_path / "edge-gateway-demo" / "sub").is_dir() and not os.path.lexists(link)  # removed at the end
    plain = tmp_path / "plain.tty"
    plain.write_text("keep me\n")
    for sim, name in ((serial_line, "serial-line"), (pms5003, "pms5003")):
        for path, reason in ((plain, "exists and is not a link to a pseudo-terminal, not replacing it"),
                             (plain / "x.tty", "Not a directory")):
            assert sim.main(["--count", "1", "--link", str(path)]) == 2
            out = capsys.readouterr()
            assert (out.out, out.err) == ("", f"edge-gateway-sim {name}: --link {path}: {reason}\n")
    assert plain.read_text() == "keep me\n"


def test_city_run_dir_link_error_is_one_line(tmp_path, capsys):
    from simulators import city

    run = tmp_path / "run"
    run.mkdir()
    (run / "air-1.tty").write_text("keep me\n")
    assert city.main([str(SCENARIO), "--run-dir", str(run), "--count", "1", "--coap-port",
                      str(free_udp_port())]) == 2
    out = capsys.readouterr()
    assert out.err == (f"edge-gateway-sim city: --run-dir {run}: {run / 'air-1.tty'}: exists and is not a link "
                       "to a pseudo-terminal, not replacing it\n")
    assert (run / "air-1.tty").read_text() == "keep me\n"


# Review 15 walkthrough #8: `edge-gateway-sim --help` lists the simulators, one line each
def test_help_lists_the_simulators():
    listing = ("usage: edge-gateway-sim {city,pms5003,serial-line} [options]\n\n"
               "simulators (each prints its port path or endpoints; NAME --help for its options):\n"
               "  serial-line  a line-protocol air-quality/noise sensor (kv, CSV or JSON lines) on a pty\n"
               "  pms5003      a Plantower PMS5003 particulate sensor (32-byte frames) on a pty\n"
               "  city         every sensor of a city block from a scenario file: serial, Modbus and CoAP, "
               "with faults\n")
    for args, rc, out, err in ((["--help"], 0, listing, ""), (["-h"], 0, listing, ""), ([], 2, "", listing),
                               (["nope"], 2, "", "edge-gateway-sim: unknown simulator 'nope'\n" + listing)):
        r = subprocess.run([sys.executable, "-m", "simulators.cli", *args], cwd=REPO, capture_output=True,
                           text=True, timeout=30, check=False)
        assert (r.returncode, r.stdout, r.stderr) == (rc, out, err), args
