"""The control socket in-process: line-JSON protocol, socket mode, the tap's bounded buffers."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import stat

import pytest

from edge_gateway import control


async def _server(tmp_path, snapshot=None, tap=None, commands=None):
    srv = control.ControlServer(tmp_path / "control.sock", snapshot or (lambda: {"gateway": "t", "n": 1}),
                                tap, commands)
    await srv.start()
    return srv


async def test_status_reply_and_socket_mode_under_umask_0077(tmp_path):
    old = os.umask(0o077)
    try:
        srv = await _server(tmp_path)
    finally:
        os.umask(old)
    try:
        st = os.stat(srv.path)
        assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o660
        reply = await asyncio.to_thread(control.request, srv.path, {"cmd": "status"})
        assert reply == {"ok": True, "status": {"gateway": "t", "n": 1}}
    finally:
        await srv.stop()
    assert not srv.path.exists()


async def test_async_snapshot_commands_and_errors(tmp_path):
    async def snap():
        return {"async": True}

    def boom(req):
        raise ValueError("needs a restart to change gateway.id")

    srv = await _server(tmp_path, snap, commands={"reload": boom, "echo": lambda req: req.get("x")})
    try:
        assert (await asyncio.to_thread(control.request, srv.path, {"cmd": "status"}))["status"] == {"async": True}
        assert await asyncio.to_thread(control.request, srv.path, {"cmd": "echo", "x": 5}) == {"ok": True, "echo": 5}
        r = await asyncio.to_thread(control.request, srv.path, {"cmd": "reload"})
        assert r == {"ok": False, "error": "needs a restart to change gateway.id"}
        r = await asyncio.to_thread(control.request, srv.path, {"cmd": "nope"})
        assert not r["ok"] and "unknown cmd" in r["error"]

        def raw(data: bytes) -> dict:
            with socket.socket(socket.AF_UNIX) as s:
                s.settimeout(5)
                s.connect(str(srv.path))
                s.sendall(data)
                return json.loads(s.makefile("rb").readline())

        assert "bad request" in (await asyncio.to_thread(raw, b"not json\n"))["error"]
        assert "bad request" in (await asyncio.to_thread(raw, b"[1, 2]\n"))["error"]
        # deeper than json's stack (RecursionError): an answer, not a task dying with a traceback in the journal
        assert await asyncio.to_thread(raw, b"[" * 30_000 + b"\n") == {"ok": False,
                                                                       "error": "bad request: nested too deep"}
        assert (await asyncio.to_thread(control.request, srv.path, {"cmd": "echo", "x": 6}))["echo"] == 6
    finally:
        await srv.stop()


async def test_not_running_and_stale_socket(tmp_path):
    path = tmp_path / "control.sock"
    with pytest.raises(control.DaemonNotRunning):
        control.request(path, {"cmd": "status"})
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(path))  # a socket file left by a killed daemon: nobody listens
    stale.close()
    with pytest.raises(control.DaemonNotRunning):
        control.request(path, {"cmd": "status"})
    srv = await _server(tmp_path)  # removes the stale file
    try:
        with pytest.raises(RuntimeError, match="already running"):
            await _server(tmp_path)  # but never steals a live daemon's socket
    finally:
        await srv.stop()


async def test_tail_streams_filtered_items_and_drops_for_a_slow_client(tmp_path):
    tap = control.Tap(maxsize=5)
    srv = await _server(tmp_path, tap=tap)
    try:
        s = socket.socket(socket.AF_UNIX)
        s.connect(str(srv.path))
        s.sendall(b'{"cmd": "tail", "sensor": "air-1"}\n')
        f = s.makefile("rb")
        assert json.loads(await asyncio.to_thread(f.readline)) == {"ok": True, "tail": "air-1"}
        for _ in range(100):
            if tap.active:
                break
            await asyncio.sleep(0.01)
        assert tap.active and tap.wants("air-1") and not tap.wants("noise-1")
        # 50 items in one go, without yielding to the server: the publisher must never block
        for i in range(50):
            tap.publish({"type": "reading", "sensor": "air-1", "channel": "pm25", "value": float(i), "ts": 0.0})
            tap.publish({"type": "reading", "sensor": "noise-1", "channel": "db", "value": 1.0, "ts": 0.0})
        assert tap.dropped == 45  # 5 buffered for this client, the rest dropped for it only
        got = [json.loads(await asyncio.to_thread(f.readline)) for _ in range(6)]
        assert [g["value"] for g in got[:5]] == [0.0, 1.0, 2.0, 3.0, 4.0]
        assert all(g["sensor"] == "air-1" for g in got[:5])
        assert got[5] == {"type": "dropped", "count": 45}
        f.close()
        s.close()
        for _ in range(200):
            if not tap.active:
                break
            await asyncio.sleep(0.01)
        assert not tap.active  # a closed client unsubscribes
    finally:
        await srv.stop()


def test_tap_without_subscribers_is_inert():
    tap = control.Tap()
    assert not tap.active
    tap.publish({"sensor": "x"})
    assert tap.dropped == 0
