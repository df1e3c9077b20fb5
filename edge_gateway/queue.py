"""The durable store-and-forward queue: SQLite in WAL mode, one writer thread.

A message counts as produced only once its transaction has committed; it leaves
the queue only when the broker has acknowledged it. Sequence numbers are the
table's ``seq`` and a ``meta`` row remembers the last one, so they keep
increasing across restarts even when the queue was drained empty.

``synchronous=FULL``: a committed batch survives power loss (see README). Batches
are grouped into one transaction per pipeline tick, so the SD card sees one
fsync per tick, not one per message. All SQLite calls run on one worker thread,
never on the event loop.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from .messages import Message

SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY,
    kind TEXT NOT NULL,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value);
CREATE TABLE IF NOT EXISTS checkpoint (name TEXT PRIMARY KEY, blob BLOB NOT NULL, saved REAL NOT NULL);
"""


@dataclass(frozen=True)
class Row:
    seq: int
    kind: str
    topic: str
    payload: bytes
    created: float


@dataclass(frozen=True)
class QueueStats:
    depth: int
    bytes: int
    oldest_created: float | None
    last_seq: int


class DurableQueue:
    """Append in batches, read in order after a cursor, delete on acknowledgement."""

    def __init__(self, path: str | os.PathLike, encode: Callable[[dict, int], bytes],
                 clock: Callable[[], float] = time.time) -> None:
        self.path = Path(path)
        self.encode = encode
        self.clock = clock
        self._db: sqlite3.Connection | None = None
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="queue")
        self._last_seq = 0
        self._depth = 0
        self._bytes = 0

    async def _call(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    async def open(self) -> None:
        await self._call(self._open)

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.executescript(SCHEMA)
        row = db.execute("SELECT value FROM meta WHERE key='last_seq'").fetchone()
        max_seq = db.execute("SELECT COALESCE(MAX(seq), 0) FROM outbox").fetchone()[0]
        self._last_seq = max(int(row[0]) if row else 0, max_seq)
        self._depth, self._bytes = db.execute(
            "SELECT COUNT(*), COALESCE(SUM(LENGTH(payload)), 0) FROM outbox").fetchone()
        self._db = db

    async def append(self, messages: Iterable[Message]) -> list[int]:
        """Commit messages in one transaction; return their sequence numbers."""
        msgs = list(messages)
        if not msgs:
            return []
        return await self._call(self._append, msgs)

    def _append(self, msgs: list[Message]) -> list[int]:
        db = self._db
        assert db is not None
        now = self.clock()
        first = self._last_seq + 1
        rows = []
        size = 0
        for i, m in enumerate(msgs):
            payload = self.encode(m.fields, first + i)
            size += len(payload)
            rows.append((first + i, m.kind, m.topic, payload, now))
        last = first + len(msgs) - 1
        db.execute("BEGIN IMMEDIATE")
        try:
            db.executemany("INSERT INTO outbox(seq, kind, topic, payload, created) VALUES (?,?,?,?,?)", rows)
            db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('last_seq', ?)", (last,))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        self._last_seq = last
        self._depth += len(rows)
        self._bytes += size
        return list(range(first, last + 1))

    async def peek(self, after_seq: int, limit: int) -> list[Row]:
        """Up to ``limit`` rows with ``seq > after_seq``, oldest first."""
        return await self._call(self._peek, after_seq, limit)

    def _peek(self, after_seq: int, limit: int) -> list[Row]:
        assert self._db is not None
        cur = self._db.execute("SELECT seq, kind, topic, payload, created FROM outbox WHERE seq > ? "
                               "ORDER BY seq LIMIT ?", (after_seq, limit))
        return [Row(*r) for r in cur]

    async def ack(self, seqs: list[int]) -> None:
        """Delete acknowledged messages (one transaction)."""
        if seqs:
            await self._call(self._ack, seqs)

    def _ack(self, seqs: list[int]) -> None:
        db = self._db
        assert db is not None
        count = size = 0
        db.execute("BEGIN IMMEDIATE")
        try:
            for i in range(0, len(seqs), 500):
                chunk = seqs[i:i + 500]
                cur = db.execute(f"DELETE FROM outbox WHERE seq IN ({','.join('?' * len(chunk))}) "
                                 "RETURNING LENGTH(payload)", chunk)
                lengths = [r[0] for r in cur]
                count += len(lengths)
                size += sum(lengths)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        self._depth -= count
        self._bytes -= size

    async def stats(self) -> QueueStats:
        return await self._call(self._stats)

    def _stats(self) -> QueueStats:
        assert self._db is not None
        oldest = self._db.execute("SELECT created FROM outbox ORDER BY seq LIMIT 1").fetchone()
        return QueueStats(self._depth, self._bytes, oldest[0] if oldest else None, self._last_seq)

    @property
    def depth(self) -> int:
        return self._depth

    @property
    def last_seq(self) -> int:
        return self._last_seq

    async def save_checkpoint(self, name: str, blob: bytes) -> None:
        await self._call(self._save_checkpoint, name, blob)

    def _save_checkpoint(self, name: str, blob: bytes) -> None:
        assert self._db is not None
        self._db.execute("INSERT OR REPLACE INTO checkpoint(name, blob, saved) VALUES (?,?,?)",
                         (name, blob, self.clock()))

    async def load_checkpoint(self, name: str) -> bytes | None:
        return await self._call(self._load_checkpoint, name)

    def _load_checkpoint(self, name: str) -> bytes | None:
        assert self._db is not None
        row = self._db.execute("SELECT blob FROM checkpoint WHERE name = ?", (name,)).fetchone()
        return row[0] if row else None

    async def close(self) -> None:
        if self._db is not None:
            await self._call(self._close)
        self._pool.shutdown(wait=True)

    def _close(self) -> None:
        assert self._db is not None
        self._db.close()
        self._db = None
