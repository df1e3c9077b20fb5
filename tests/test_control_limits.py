"""Control socket limits on real Unix sockets: client cap, accept() failures, malformed requests, and
``tail`` buffers that hold whole pipeline rounds (review 14, #7, #8, #10)."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import subprocess
import sys
import textwrap
import threading
import time

from edge_gateway import control
from edge_gateway.cmd_tail import format_item
from ops_support import cli
from support import REPO


async def _server(tmp_path, snapshot=None, tap=None, commands=None):
    srv = control.ControlServer(tmp_path / "control.sock", snapshot or (lambda: {"gateway": "t"}), tap, commands)
    await srv.start()
    return srv


def _connect(path, data: bytes | None = None, timeout: float = 5.0) -> socket.socket:
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(timeout)
    s.connect(str(path))
    if data is not None:
        try:
            s.sendall(data)
        except BrokenPipeError:  # refused and closed before we wrote: the reply is still there to read
            pass
    return s


def _read_all(s: socket.socket) -> bytes:
    out = b""
    try:
        while chunk := s.recv(65536):
            out += chunk
    except ConnectionResetError:  # closed with our request unread: what it sent before is all there is
        pass
    return out


async def test_clients_beyond_the_cap_are_refused_with_one_json_line(tmp_path):
    """#7: 1,100 idle ``tail`` clients used up the daemon's 1024 descriptors; now 32 at most are served."""
    srv = await _server(tmp_path)
    tails: list[socket.socket] = []
    try:
        for _ in range(32):
            s = await asyncio.to_thread(_connect, srv.path, b'{"cmd": "tail"}\n')
            assert json.loads(await asyncio.to_thread(s.makefile("rb").readline)) == {"ok": True, "tail": None}
            tails.append(s)
        refused = []
        for _ in range(5):
            s = await asyncio.to_thread(_connect, srv.path, b'{"cmd": "status"}\n')
            refused.append(await asyncio.to_thread(_read_all, s))
            s.close()
        assert refused == [b'{"ok":false,"error":"too many clients (at most 32); try again later"}\n'] * 5
        r = await asyncio.to_thread(cli, "tail", "--socket", srv.path, "--count", "1", timeout=30)
        assert r.returncode == 1 and "too many clients" in r.stderr and r.stdout == ""
        assert srv.refused == 6 and srv.clients == 32 and len(srv.tap.subscriptions) == 32
        tails.pop().close()
        for _ in range(250):
            if srv.clients == 31:
                break
            await asyncio.sleep(0.01)
        reply = await asyncio.to_thread(control.request, srv.path, {"cmd": "status"})
        assert reply == {"ok": True, "status": {"gateway": "t"}} and srv.refused == 6
    finally:
        for s in tails:
            s.close()
        await srv.stop()


CHILD = textwrap.dedent("""\
    import asyncio, logging, os, resource, sys
    from edge_gateway import control

    async def main(path):
        logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
        srv = control.ControlServer(path, lambda: {"n": 1})
        await srv.start()
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
        hog = []
        try:
            while True:
                hog.append(os.open("/dev/null", os.O_RDONLY))
        except OSError:
            pass
        print("full", flush=True)
        await asyncio.sleep(1.0)
        for fd in hog:
            os.close(fd)
        print("released", flush=True)
        await asyncio.sleep(1.5)
        print(f"accept_errors={getattr(srv, 'accept_errors', -1)}", flush=True)
        await srv.stop()

    asyncio.run(main(sys.argv[1]))
    """)


def test_accept_failures_back_off_and_are_logged_once(tmp_path):
    """#7: with no descriptor left, asyncio's accept loop logged 11,188 errors in 10 s; ours backs off."""
    path = tmp_path / "control.sock"
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(path)], cwd=REPO, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    clients = []
    try:
        assert child.stdout.readline() == "full\n"
        clients = [_connect(path, b'{"cmd": "status"}\n') for _ in range(3)]  # queued in the backlog
        replies = [json.loads(s.makefile("rb").readline()) for s in clients]  # served once fds are back
        assert replies == [{"ok": True, "status": {"n": 1}}] * 3
        out, err = child.communicate(timeout=10)
    finally:
        for s in clients:
            s.close()
        if child.poll() is None:
            child.kill()
            child.communicate()
    assert child.returncode == 0, err
    errors = [ln for ln in err.splitlines() if ln.startswith(("ERROR", "CRITICAL"))]
    assert len(errors) == 1 and "accept failed" in errors[0] and "Too many open files" in errors[0], err[:2000]
    assert err.count("accepting again after") == 1 and "out of system resource" not in err
    n = int(out.split("accept_errors=")[1])
    assert 1 <= n <= 8  # backoff: 0.05, 0.1, 0.2, 0.4, 0.8 s ... within the second without descriptors


async def test_malformed_cmd_or_sensor_gets_a_json_error_and_a_failing_command_is_logged_once(tmp_path, caplog):
    """#10: a list or dict ``cmd`` used to get no reply (the handler task died with a traceback)."""
    calls = []

    def snapshot():
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("snapshot failed")
        return {"gateway": "t"}

    srv = await _server(tmp_path, snapshot)

    def ask(data: bytes) -> dict:
        with _connect(srv.path, data) as s:
            return json.loads(s.makefile("rb").readline())

    try:
        with caplog.at_level(logging.WARNING):
            for req, what in ((b'{"cmd": ["status"]}\n', "list"), (b'{"cmd": {"a": 1}}\n', "dict"),
                              (b'{"cmd": 5}\n', "int"), (b'{}\n', "null"),
                              (b'{"cmd": "tail", "sensor": ["air-1"]}\n', "list")):
                rep = await asyncio.to_thread(ask, req)
                assert rep["ok"] is False and rep["error"].startswith("bad request:") and what in rep["error"], rep
            assert await asyncio.to_thread(ask, b'{"cmd": "status"}\n') == {"ok": False, "error": "snapshot failed"}
            assert await asyncio.to_thread(ask, b'{"cmd": "status"}\n') == {"ok": True, "status": {"gateway": "t"}}
        assert not srv.tap.active
        problems = [r for r in caplog.records if r.levelno >= logging.WARNING]
        assert [r.getMessage() for r in problems] == ["control command 'status' failed"]
    finally:
        await srv.stop()


def _reading(i: int) -> dict:
    return {"type": "reading", "sensor": "air-1", "channel": "pm25", "value": float(i), "ts": 1.7e9 + i / 1e4,
            "unit": "ug/m3"}


class TailReader(threading.Thread):
    """A raw ``tail`` client reading as fast as it can; counts readings and reported drops."""

    def __init__(self, path, delay_start: threading.Event | None = None) -> None:
        super().__init__(daemon=True)
        self.sock = _connect(path, b'{"cmd": "tail"}\n', timeout=10)
        self.f = self.sock.makefile("rb")
        assert json.loads(self.f.readline()) == {"ok": True, "tail": None}
        self.gate = delay_start
        self.values: list[float] = []
        self.dropped = 0
        self.markers: list[dict] = []

    def run(self) -> None:
        if self.gate is not None:
            self.gate.wait(10)
        try:
            for line in self.f:
                item = json.loads(line)
                if item["type"] == "reading":
                    self.values.append(item["value"])
                else:
                    self.dropped += item["count"]
                    self.markers.append(item)
        except OSError:
            pass

    def close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes run(): closing the file under it would wait
        except OSError:
            pass
        self.join(5)
        self.f.close()
        self.sock.close()


async def _rounds(tap: control.Tap, rounds: int, per_round: int, pause: float) -> None:
    """What the daemon's ``_observe`` does: a whole round published without yielding, then the next tick."""
    i = 0
    for _ in range(rounds):
        for _ in range(per_round):
            if tap.wants("air-1"):
                tap.publish(_reading(i))
            i += 1
        await asyncio.sleep(pause)


async def _until(pred, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not pred() and time.monotonic() < deadline:
        await asyncio.sleep(0.02)


async def test_tail_client_that_keeps_up_gets_every_reading_of_large_rounds(tmp_path):
    """#8: 10,000 readings/s in 0.2 s rounds (2,000 per round) lost half of them with a 1,000-item buffer."""
    srv = await _server(tmp_path)
    reader = None
    try:
        reader = await asyncio.to_thread(TailReader, srv.path)
        reader.start()
        await _until(lambda: srv.tap.active, 2)
        await _rounds(srv.tap, rounds=10, per_round=2000, pause=0.2)
        await _until(lambda: len(reader.values) >= 20_000, 3)
        assert len(reader.values) == 20_000 and reader.dropped == 0 and srv.tap.dropped == 0
        assert reader.values == [float(i) for i in range(20_000)]
    finally:
        if reader is not None:
            await asyncio.to_thread(reader.close)
        await srv.stop()


async def test_tail_client_that_stops_reading_costs_bounded_memory_and_every_loss_is_counted(tmp_path):
    srv = await _server(tmp_path)
    gate = threading.Event()
    reader = None
    try:
        reader = await asyncio.to_thread(TailReader, srv.path, gate)
        reader.start()
        await _until(lambda: srv.tap.active, 2)
        sub = srv.tap.subscriptions[0]
        await _rounds(srv.tap, rounds=30, per_round=2000, pause=0.01)  # 60,000 readings, about 6 MB of lines
        assert 0 < sub.peak <= control.CLIENT_BUFFER_BYTES
        gate.set()
        await _until(lambda: len(reader.values) + reader.dropped >= 60_000, 4)
        assert len(reader.values) + reader.dropped == 60_000 and reader.dropped == srv.tap.dropped > 0
        assert reader.values == sorted(reader.values)  # what arrives stays in order
        assert "terminal" not in format_item(reader.markers[0])
    finally:
        if reader is not None:
            await asyncio.to_thread(reader.close)
        await srv.stop()
