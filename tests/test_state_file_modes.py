"""State files are private whatever the umask (security review: 0644 when the daemon was run by hand).

Each test sets umask 022, the usual login umask, explicitly (and restores it): under the unit's
``UMask=0077`` the old code already made private files, so only a permissive umask shows the bug.
"""

from __future__ import annotations

import os
import sqlite3
import stat
from pathlib import Path

import pytest

from edge_gateway import control, private_files
from edge_gateway.messages import encode
from edge_gateway.queue import DurableQueue
from edge_gateway.statelock import StateDirLock
from support import Clock, GatewayProcess
from test_queue import ev
from uplink_support import gateway_config


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def modes(root: Path) -> dict[str, int]:
    """``{relative path: mode}`` of everything under ``root``, ``root`` itself as ``"."``."""
    out = {".": mode(root)}
    for p in sorted(root.rglob("*")):
        out[str(p.relative_to(root))] = mode(p)
    return out


async def test_a_new_queue_and_its_wal_and_shm_are_0600_in_a_0700_folder(tmp_path, umask_022):
    q = DurableQueue(tmp_path / "state" / "sub" / "queue.db", encode, Clock())
    await q.open()
    try:
        assert await q.append([ev("link_gap", 1)]) == [1]
        assert modes(tmp_path / "state") == {".": 0o755, "sub": 0o700, "sub/queue.db": 0o600,
                                             "sub/queue.db-shm": 0o600, "sub/queue.db-wal": 0o600}
    finally:
        await q.close()


async def test_an_existing_queue_keeps_its_operators_mode_unless_everyone_may_write_it(tmp_path, umask_022):
    state = tmp_path / "state"
    state.mkdir(mode=0o755)
    for name, m in (("kept.db", 0o640), ("open.db", 0o666)):
        sqlite3.connect(state / name).close()  # an empty database file, as an older gateway left it
        os.chmod(state / name, m)
    for name in ("kept.db", "open.db"):
        q = DurableQueue(state / name, encode, Clock())
        await q.open()
        try:
            await q.append([ev("link_gap", 1)])
        finally:
            await q.close()
    assert modes(state) == {".": 0o755, "kept.db": 0o640, "open.db": 0o600}  # -wal/-shm removed at close


def test_the_lock_is_0600_and_a_new_state_directory_0750(tmp_path, umask_022):
    lock = StateDirLock(tmp_path / "state")
    lock.acquire()
    try:
        assert modes(tmp_path / "state") == {".": 0o750, "gateway.lock": 0o600}
    finally:
        lock.release()


def test_an_existing_state_directory_keeps_its_mode_unless_world_writable(tmp_path, umask_022):
    kept, loose = tmp_path / "kept", tmp_path / "loose"
    kept.mkdir()
    loose.mkdir()
    os.chmod(kept, 0o711)
    os.chmod(loose, 0o777)
    for d in (kept, loose):
        lock = StateDirLock(d)
        lock.acquire()
        lock.release()
    assert (mode(kept), mode(loose)) == (0o711, 0o750)


def test_a_sticky_world_writable_folder_is_left_alone(tmp_path, umask_022):
    """``/tmp`` as a state directory: chmod-ing it would break every other user of it."""
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o1777)
    assert private_files.make_dir(shared, 0o750) == shared
    assert mode(shared) == 0o1777


def test_write_text_makes_a_new_file_0600_and_keeps_an_existing_mode(tmp_path, umask_022):
    private_files.write_text(tmp_path / "new.json", "{}")
    (tmp_path / "old.json").write_text("x" * 100)
    os.chmod(tmp_path / "old.json", 0o644)
    private_files.write_text(tmp_path / "old.json", "{}")
    assert (mode(tmp_path / "new.json"), mode(tmp_path / "old.json")) == (0o600, 0o644)
    assert (tmp_path / "old.json").read_text() == "{}"


def test_the_numba_cache_folder_is_made_0700_in_the_state_directory(tmp_path, umask_022, monkeypatch):
    """prepare_environment points Numba at ``<state_dir>/numba-cache`` (Numba makes its files 0644)."""
    from edge_gateway import config, daemon

    monkeypatch.delenv("NUMBA_CACHE_DIR", raising=False)  # restored after the test
    cfg = config.loads(f"gateway: {{id: m-gw, state_dir: {tmp_path}/state}}\nbroker: {{host: 127.0.0.1}}\n")
    daemon.prepare_environment(cfg)
    assert modes(tmp_path / "state") == {".": 0o750, daemon.CACHE_DIR: 0o700}
    assert os.environ["NUMBA_CACHE_DIR"].startswith(str(tmp_path / "state" / daemon.CACHE_DIR) + "/")


def test_a_gateway_run_by_hand_with_umask_022_leaves_only_private_files(broker, tmp_path, umask_022):
    """The whole daemon (a subprocess inherits the umask): every file it creates in its state directory
    is 0600 and the directory 0750 (the control socket 0660, on purpose: control.py)."""
    cfg = gateway_config(tmp_path, broker.port, "m-gw", sensors="sensors: []")
    gw = GatewayProcess(cfg, tmp_path / "gateway.log").start()
    try:
        gw.wait_ready()
        state = tmp_path / "state"
        assert control.request(state / "control.sock", {"cmd": "status"})["ok"] is True
        running = modes(state)
    finally:
        rc = gw.stop()
    assert rc == 0, gw.log_text()
    assert running == {".": 0o750, "control.sock": 0o660, "gateway.lock": 0o600, "queue.db": 0o600,
                       "queue.db-shm": 0o600, "queue.db-wal": 0o600}
    assert modes(tmp_path / "state") == {".": 0o750, "gateway.lock": 0o600, "last-run.json": 0o600,
                                         "queue.db": 0o600}
