"""The durable store-and-forward queue: SQLite in WAL mode, one writer thread.

A message counts as produced only once its transaction has committed; it leaves
the queue only when the broker has acknowledged it (or a documented bound drops
it, counted). Sequence numbers are the table's ``seq`` and a ``meta`` row
remembers the last one, so they keep increasing across restarts even when the
queue was drained empty.

``synchronous=FULL`` (default): a committed batch survives power loss;
``normal`` keeps the file consistent but may roll back the last commits on power
loss (docs/uplink.md). Batches are grouped into one transaction per pipeline
tick, so the SD card sees one fsync per tick, not one per message. Deferred
acknowledgements (``ack(defer=True)``) and checkpoints ride along in the next such
transaction instead of committing on their own (docs/uplink.md, "Flash writes"). All
SQLite calls run on one worker thread, never on the event loop.

Bounds (:class:`QueueLimits`): past ``high_water * max_bytes`` the oldest
aggregates of each channel are rolled up into coarser windows, and they keep
being rolled up while the queue drops, so a long outage keeps as much time as it
can; past ``max_bytes`` (or ``max_age_s``) messages are dropped, oldest
aggregates first, anomaly and ``dropped`` events last. Drops are counted in
``meta`` in the same transaction, so the count a ``dropped`` event reports is
exact. The file itself is capped with ``PRAGMA max_page_count`` below the free
space, so a full disk fails an insert cleanly instead of breaking deletes and
checkpoints; ``full`` then stays set until the file has stayed clear of its cap.

Rows once handed out by :meth:`DurableQueue.peek` are never rolled up or dropped,
since paho or the broker may already hold them (an acknowledged row can outlive a
crash: its delete is deferred). The highest seq handed out is saved with each
append, so after a restart those rows stay protected: a merge must never put a
seq the cloud already has on windows it has not.

The file is created 0600 before SQLite opens it, so its -wal and -shm (SQLite gives them the database's
mode) are private too whatever the umask (private_files.py).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from .messages import KIND_AGG, Message, decode, merge_aggregates, merged_seqs
from .private_files import FILE_MODE, create_file, make_dir, tighten

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY,
    kind TEXT NOT NULL,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS checkpoint (name TEXT PRIMARY KEY, blob BLOB NOT NULL, saved REAL NOT NULL);
"""
MAX_MERGED = 4096  # windows in one rolled-up aggregate, well below decode()'s 65,536-item arrays
PRIO_AGG, PRIO_EVENT, PRIO_KEEP = 0, 1, 2  # drop order: aggregates, other events, anomaly/dropped events
_KEEP_TYPES = ("anomaly", "dropped")
MiB = 1024 * 1024
ACK_DEFER_S = 30.0  # acknowledged rows are deleted with the next write, or at the latest after this
PAGE_SIZE = 1024  # a commit of a few small messages writes ~2 KB to the WAL instead of ~8 KB
ACK_DEFER_ROWS = 1000  # ... or as soon as this many are waiting (a drain)
FULL_SLICE = 0.05  # at the file cap, at least this share of the cap is dropped at once
FULL_MARGIN = 0.10  # `full` clears once the used pages stay this share under the cap ...
FULL_CLEAR_S = 300.0  # ... for this long
FULL_REPORT_S = 900.0  # while full, a summary this often


@dataclass(frozen=True)
class QueueLimits:
    max_bytes: int = 64 * MiB
    max_age_s: float = 0.0
    high_water: float = 0.8
    rollup_factor: int = 10
    max_file_bytes: int = 0
    reserve_bytes: int = 16 * MiB
    synchronous: str = "full"

    @classmethod
    def from_config(cls, q) -> "QueueLimits":
        return cls(q.max_bytes, q.max_age_s, q.high_water, q.rollup_factor, q.max_file_bytes,
                   q.reserve_bytes, q.synchronous)

    @property
    def file_cap(self) -> int:
        return self.max_file_bytes or 2 * self.max_bytes + 4 * MiB


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
    dropped_total: dict = field(default_factory=dict)
    dropped_pending: int = 0
    rolled_up: int = 0
    full: bool = False
    file_cap_bytes: int = 0


def _empty_counts() -> dict:
    return {"count": 0, "agg": 0, "event": 0, "anomaly": 0, "reasons": {}, "first_seq": 0, "last_seq": 0}


def read_owner(queue_path: Path) -> tuple[str | None, int] | None:
    """(the gateway id recorded in the queue file, or None if none is yet; its unsent messages), or None when
    there is no queue file. Raises sqlite3.Error or OSError when it cannot be read.

    What :meth:`DurableQueue.claim` compares at start-up, read without it (``doctor``, ``config set
    gateway.id``): opening a DurableQueue writes (its schema, and the owner itself on a first claim), and
    this must not, not even beside a running gateway. So: the file read-only (SQLite's ``mode=ro``), its
    ``meta`` row ``owner`` and the rows of ``outbox``.
    """
    if not queue_path.exists():
        return None
    db = sqlite3.connect(f"{queue_path.absolute().as_uri()}?mode=ro", uri=True, timeout=2.0)
    try:
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        row = db.execute("SELECT value FROM meta WHERE key = 'owner'").fetchone() if "meta" in tables else None
        depth = db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0] if "outbox" in tables else 0
    finally:
        db.close()
    return (None if row is None else str(row[0])), int(depth)


class DurableQueue:
    """Append in batches, read in order after a cursor, delete on acknowledgement."""

    def __init__(self, path: str | os.PathLike, encode: Callable[[dict, int], bytes],
                 clock: Callable[[], float] = time.time, limits: QueueLimits | None = None,
                 page_size: int = PAGE_SIZE, seed_seq: bool = False) -> None:
        self.path = Path(path)
        self.seed_seq = seed_seq  # a new file's seqs start from a time in ms (the daemon's; tests start at 1)
        self.page_size = page_size  # for a new file: every commit writes whole pages to the WAL
        self.encode = encode
        self.clock = clock
        self.limits = limits or QueueLimits()
        self._db: sqlite3.Connection | None = None
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="queue")
        self._last_seq = 0
        self._depth = 0
        self._bytes = 0
        self._oldest: float | None = None
        self._pending = _empty_counts()
        self._total = _empty_counts()
        self._rolled_up = 0
        self._since_rollup = math.inf  # payload bytes appended since the last rollup scan
        self.full = False  # at the file cap (or a full disk) and dropping, until it stayed clear (see _check_full)
        self.steady: Callable[[], float] = time.monotonic  # times the `full` episode (the wall clock may step)
        self._full: dict = {}  # the episode while full: since, reported, calm, hits, unstored, dropped0
        self._cap_checked = 0.0
        self.page_cap = 0
        self.recovered_from = ""  # where a corrupt queue file was moved at open ("" when none was)
        self._handed_out = 0  # highest seq ever returned by peek (saved with appends, see the module doc)
        self._handed_out_saved = 0
        self._page_size = 4096
        # flash writes (docs/uplink.md "Flash writes"): acknowledged rows and checkpoints wait for the
        # next write transaction (an append, usually) instead of committing (and fsyncing) on their own
        self.ack_defer_s = ACK_DEFER_S
        self.ack_defer_rows = ACK_DEFER_ROWS
        self._deferred: dict[int, int] = {}  # acknowledged seq -> payload length, not yet deleted
        self._deferred_since = 0.0
        self._ckpt_pending: dict[str, bytes] = {}
        self._ckpt_saved: dict[str, bytes] = {}  # last blob committed per name: unchanged ones are skipped
        self.commits: dict[str, int] = {}  # committed write transactions by cause (bench/uplink.py)

    async def _call(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    async def open(self) -> None:
        await self._call(self._open)

    def _open(self) -> None:
        make_dir(self.path.parent)  # 0700 if the queue creates it (the daemon makes the state directory first)
        disk_time = _newest_mtime(self.path.parent)  # before SQLite opens (and may rewrite or delete) a -wal
        try:
            self._open_file()
        except sqlite3.DatabaseError as exc:
            if isinstance(exc, sqlite3.OperationalError):  # locked, unreadable...: not the file's content
                raise
            moved = self._quarantine(exc)
            self._open_file()
            self._last_seq = max(self._last_seq, _last_seq_of(moved), int(self.clock() * 1000), int(disk_time * 1000))
            self._db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('last_seq', ?)", (self._last_seq,))
            log.error("queue: continuing with a new, empty queue file; sequence numbers resume at %d",
                      self._last_seq + 1)
        else:
            if self._prune_quarantined(None):
                self._set_page_cap(force=True)
            if self.seed_seq and self._last_seq == 0 and not self._depth:
                # a new queue under a gateway id that may have sent before (a replaced SD card, a state dir
                # moved away): seqs from 1 again would be duplicates to a cloud that drops seen seqs
                self._last_seq = max(int(self.clock() * 1000), int(disk_time * 1000))
                self._db.executemany("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)",
                                     [("last_seq", self._last_seq), ("first_seq", self._last_seq + 1)])
                log.info("queue: a new queue file; sequence numbers start at %d", self._last_seq + 1)

    def _quarantine(self, exc: Exception) -> Path:
        """Move a corrupt queue file (and its -wal/-shm) aside, so the gateway can start at all.

        What it held is lost to the uplink but kept on disk for a technician. Sequence numbers resume
        from a time in milliseconds (and above the old file's last one if that can still be read): the
        later of the clock and the newest modification time in the queue's folder before the file was
        opened, the file and its -wal included. The power cut that corrupts the file is also what makes a
        Pi without an RTC boot at 1970, but the disk still dates the last commit. Seqs grow by fewer than
        1000 a second, so a time in ms at or after that commit is above every seq the cloud has: it never
        sees a seq twice, and sees the jump. Only files all written with a clock as far behind defeat it.
        """
        if self._db is not None:
            self._db.close()
            self._db = None
        stamp = time.strftime('%Y%m%dT%H%M%S')
        moved = self.path.with_name(f"{self.path.name}.corrupt-{stamp}")
        n = 1
        while any(Path(f"{moved}{suffix}").exists() for suffix in ("", "-wal", "-shm")):  # within a second
            n += 1
            moved = self.path.with_name(f"{self.path.name}.corrupt-{stamp}.{n}")
        for suffix in ("", "-wal", "-shm"):
            src = Path(f"{self.path}{suffix}")
            if src.exists():
                os.replace(src, Path(f"{moved}{suffix}"))
        log.error("queue file %s is corrupt (%s): moved to %s", self.path, exc, moved)
        self.recovered_from = str(moved)
        self._prune_quarantined(moved)
        return moved

    def _prune_quarantined(self, keep: Path | None) -> int:
        """Delete every quarantined set (``<name>.corrupt-*`` with its -wal/-shm) but ``keep`` (None: the
        newest by modification time).

        A failing SD card corrupts the queue again and again; each set can be as large as the file cap, and
        the new queue's cap is its size plus the free space, so old sets would take its room until none
        is left. The newest is what a technician looks at first."""
        prefix = f"{self.path.name}.corrupt-"
        sets: dict[str, list[os.DirEntry]] = {}
        try:
            entries = list(os.scandir(self.path.parent))
        except OSError:
            return 0
        for entry in entries:
            if entry.name.startswith(prefix):
                base = entry.name.removesuffix("-wal").removesuffix("-shm")
                sets.setdefault(base, []).append(entry)
        if keep is None and sets:
            keep = self.path.with_name(max(sets, key=lambda b: _mtime(self.path.with_name(b))))
        removed, size = [], 0
        for base, files in sorted(sets.items()):
            if keep is not None and base == keep.name:
                continue
            for entry in files:
                try:
                    n = entry.stat(follow_symlinks=False).st_size
                    os.unlink(entry.path)
                except OSError as exc:
                    log.warning("queue: could not delete the old quarantined file %s: %s", entry.path, exc)
                    continue
                removed.append(entry.name)
                size += n
        if removed:
            log.warning("queue: deleted %d older quarantined file(s), %d bytes, to keep only %s: %s",
                        len(removed), size, keep.name, ", ".join(sorted(removed)))
        return len(removed)

    def _open_file(self) -> None:
        for suffix in ("-wal", "-shm"):  # SQLite reuses these as they are; it makes new ones as the database
            tighten(f"{self.path}{suffix}", FILE_MODE)
        create_file(self.path)  # 0600 whatever the umask, and so its -wal and -shm
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._db = db
        if self.page_size and not db.execute("PRAGMA page_count").fetchone()[0]:
            db.execute(f"PRAGMA page_size={int(self.page_size)}")  # a new file only (WAL cannot change it)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(f"PRAGMA synchronous={'NORMAL' if self.limits.synchronous == 'normal' else 'FULL'}")
        db.execute("PRAGMA journal_size_limit=4194304")
        db.executescript(SCHEMA)
        _meta_without_rowid(db)
        cols = [r[1] for r in db.execute("PRAGMA table_info(outbox)")]
        if "prio" not in cols:
            db.execute("ALTER TABLE outbox ADD COLUMN prio INTEGER NOT NULL DEFAULT 0")
            db.execute("UPDATE outbox SET prio = 1 WHERE kind != 'agg'")
        meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
        max_seq = db.execute("SELECT COALESCE(MAX(seq), 0) FROM outbox").fetchone()[0]
        self._last_seq = max(int(meta.get("last_seq", 0)), max_seq)
        self._handed_out = self._handed_out_saved = int(meta.get("handed_out", 0))
        self._pending = json.loads(meta["dropped_pending"]) if "dropped_pending" in meta else _empty_counts()
        self._total = json.loads(meta["dropped_total"]) if "dropped_total" in meta else _empty_counts()
        self._depth, self._bytes = db.execute(
            "SELECT COUNT(*), COALESCE(SUM(LENGTH(payload)), 0) FROM outbox").fetchone()
        self._set_page_cap(force=True)
        self._refresh_oldest()

    # --- file cap -----------------------------------------------------------------------------

    def _set_page_cap(self, force: bool = False) -> None:
        """``max_page_count`` = min(file cap, current size + free space - reserve), in pages."""
        now = time.monotonic()
        if not force and now - self._cap_checked < 1.0:
            return
        self._cap_checked = now
        db = self._db
        assert db is not None
        page = self._page_size = db.execute("PRAGMA page_size").fetchone()[0]
        used = db.execute("PRAGMA page_count").fetchone()[0]
        try:
            st = os.statvfs(self.path.parent)
            room = used * page + st.f_bavail * st.f_frsize - self.limits.reserve_bytes
        except OSError:
            room = self.limits.file_cap
        cap = max(used, min(self.limits.file_cap, room) // page)
        if cap != self.page_cap:
            self.page_cap = db.execute(f"PRAGMA max_page_count={int(cap)}").fetchone()[0]

    # --- append -------------------------------------------------------------------------------

    async def append(self, messages: Iterable[Message], protect: int = 0,
                     note: tuple[str, bytes] | None = None,
                     checkpoint: tuple[str, bytes] | None = None) -> list[int]:
        """Commit messages in one transaction; return their sequence numbers ([] if the disk is full).

        ``protect``: the highest seq that may be in flight (never rolled up or dropped).
        ``note``: ``(name, blob)``, a small blob stored in that same transaction, so it is saved exactly
        when the messages are (the pipeline's marks of what it sent: see :mod:`.pipeline`); read back
        with :meth:`load_note`. It goes in the ``meta`` page each append rewrites anyway.
        ``checkpoint``: ``(name, blob)``, a checkpoint stored in that same transaction, the note with it
        or neither (on a full disk the checkpoint is given up, and then the note too, since it describes
        that checkpoint's state): see :meth:`checkpoint_stored`.
        """
        msgs = list(messages)
        if not msgs:
            return []
        return await self._call(self._append, msgs, protect, note, checkpoint)

    def checkpoint_stored(self, name: str) -> bytes | None:
        """The last checkpoint of that name committed by this process (None: none yet)."""
        return self._ckpt_saved.get(name)

    def _append(self, msgs: list[Message], protect: int, note: tuple[str, bytes] | None = None,
                checkpoint: tuple[str, bytes] | None = None) -> list[int]:
        self._set_page_cap()
        if checkpoint is not None:
            self._ckpt_pending[checkpoint[0]] = checkpoint[1]
        try:
            seqs = self._insert(msgs, note)
        except sqlite3.OperationalError as exc:
            if not _is_full(exc):
                raise
            self._hit_cap()
            for name in self._ckpt_pending:
                log.error("queue full: checkpoint %r not saved", name)
            self._ckpt_pending.clear()
            if checkpoint is not None:
                note = None
            protect = max(protect, self._handed_out)
            need = max(sum(len(self.encode(m.fields, 0)) for m in msgs) * 2 + 64 * 1024,
                       int(FULL_SLICE * self.page_cap * self._page_size))
            self._drop_to(max(0, self._bytes - need), protect, "disk_full")
            self._set_page_cap(force=True)
            try:
                seqs = self._insert(msgs, note)
            except sqlite3.OperationalError as exc2:
                if not _is_full(exc2):
                    raise
                if not self._full["unstored"]:
                    log.error("queue full: %d new messages could not be stored (nothing left to drop); "
                              "counted as dropped, in the summary from now on", len(msgs))
                self._full["unstored"] += len(msgs)
                self._count_unstored(msgs)
                return []
        self._enforce(protect)
        return seqs

    def _hit_cap(self) -> None:
        """An insert failed at the file cap: log the episode once, then :meth:`_check_full` sums it up."""
        f = self._full
        if self.full:
            f["hits"] += 1
            f["calm"] = None
            return
        self.full = True
        now = self.steady()
        self._full = {"since": now, "reported": now, "calm": None, "hits": 1, "unstored": 0,
                      "dropped0": self._total["reasons"].get("disk_full", 0)}
        log.error("queue full (file cap %d bytes or disk full): dropping the oldest messages, at least %d%% of the "
                  "cap at a time; a summary every %.0f s until the file has stayed %d%% under the cap for %.0f s",
                  self.page_cap * self._page_size, FULL_SLICE * 100, FULL_REPORT_S, FULL_MARGIN * 100,
                  FULL_CLEAR_S)

    def _check_full(self) -> None:
        """While full: clear the flag once the used pages have stayed ``FULL_MARGIN`` under the cap for
        ``FULL_CLEAR_S`` (the file keeps its size: freed pages are reused), else log a summary every
        ``FULL_REPORT_S``. A flag cleared by the next insert would say "not full" while the queue keeps
        dropping, and log the episode again at every cap hit."""
        if not self.full:
            return
        f, now, db = self._full, self.steady(), self._db
        used = db.execute("PRAGMA page_count").fetchone()[0] - db.execute("PRAGMA freelist_count").fetchone()[0]
        dropped = self._total["reasons"].get("disk_full", 0) - f["dropped0"]
        if used <= (1 - FULL_MARGIN) * self.page_cap:
            f["calm"] = now if f["calm"] is None else f["calm"]
            if now - f["calm"] >= FULL_CLEAR_S:
                self.full = False
                log.warning("queue no longer full after %.0f s: %d inserts hit the cap, %d messages dropped "
                            "(disk_full), %d of them new ones that could not be stored",
                            now - f["since"], f["hits"], dropped, f["unstored"])
                return
        else:
            f["calm"] = None
        if now - f["reported"] >= FULL_REPORT_S:
            f["reported"] = now
            log.error("queue still full after %.0f s: %d inserts hit the cap, %d messages dropped (disk_full), "
                      "%d of them new ones that could not be stored",
                      now - f["since"], f["hits"], dropped, f["unstored"])

    def _insert(self, msgs: list[Message], note: tuple[str, bytes] | None = None) -> list[int]:
        db = self._db
        assert db is not None
        now = self.clock()
        first = self._last_seq + 1
        rows = []
        size = 0
        for i, m in enumerate(msgs):
            payload = self.encode(m.fields, first + i)
            size += len(payload)
            rows.append((first + i, m.kind, m.topic, payload, now, _prio(m.kind, m.fields)))
        last = first + len(msgs) - 1
        db.execute("BEGIN IMMEDIATE")
        try:
            self._write_deferred()
            db.executemany("INSERT INTO outbox(seq, kind, topic, payload, created, prio) VALUES (?,?,?,?,?,?)",
                           rows)
            db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('last_seq', ?)", (last,))
            if note is not None:
                db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (_NOTE + note[0], note[1]))
            db.execute("COMMIT")
        except BaseException:
            _rollback(db)
            raise
        self._deferred_written("append")
        self._last_seq = last
        self._depth += len(rows)
        self._bytes += size
        self._since_rollup += size
        if self._oldest is None:
            self._oldest = now
        return list(range(first, last + 1))

    def _count_unstored(self, msgs: list[Message]) -> None:
        """New messages refused by a full disk: counted (no seq was assigned), not stored."""
        for m in msgs:
            p = _prio(m.kind, m.fields)
            for c in (self._pending, self._total):
                _bump(c, p, 0, "disk_full")
        self._save_counts_quietly()

    def _save_counts_quietly(self) -> None:
        try:
            self._db.execute("BEGIN IMMEDIATE")
            self._save_counts()
            self._db.execute("COMMIT")
        except sqlite3.OperationalError:
            _rollback(self._db)

    # --- bounds -------------------------------------------------------------------------------

    def _enforce(self, protect: int) -> None:
        lim = self.limits
        protect = max(protect, self._handed_out)
        if lim.max_age_s and self._oldest is not None and self._oldest < self.clock() - lim.max_age_s:
            self._drop_where("created < ?", (self.clock() - lim.max_age_s,), protect, "max_age")
        high = int(lim.high_water * lim.max_bytes)
        if self._bytes > high and self._since_rollup >= max(1, min(lim.max_bytes // 20, lim.max_bytes - high)):
            self._rollup(protect, high)
            self._since_rollup = 0
        if self._bytes > lim.max_bytes:
            self._drop_to(lim.max_bytes, protect, "max_bytes")
        self._check_full()

    async def enforce(self, protect: int = 0) -> None:
        """Apply the age bound without an append (called periodically)."""
        await self._call(self._enforce, protect)

    def _rollup(self, protect: int, target: int) -> None:
        """Merge the oldest aggregates of each channel into coarser windows until under ``target``.

        A window of width w goes into the aligned bucket of width ``factor * w`` (``rollup_s``);
        a rolled-up message stays in its bucket, and when a whole pass is not enough, the next
        pass coarsens every bucket by ``factor`` again (at most 4 levels per call)."""
        factor = self.limits.rollup_factor
        for level in range(4):
            if self._bytes <= target or not self._rollup_pass(protect, target, factor ** level, factor):
                return

    def _rollup_pass(self, protect: int, target: int, coarsen: int, factor: int) -> bool:
        """One pass over the backlog; False when there was nothing left to look at."""
        db = self._db
        assert db is not None
        after = protect
        seen = False
        while self._bytes > target:
            rows = db.execute("SELECT seq, topic, payload FROM outbox WHERE prio = 0 AND seq > ? "
                              "ORDER BY seq LIMIT 4000", (after,)).fetchall()
            if not rows:
                return seen
            seen = True
            after = rows[-1][0]
            groups: dict[tuple, list] = {}
            sizes: dict[tuple, int] = {}
            for seq, topic, payload in rows:
                try:
                    d = decode(payload)
                    base = float(d.get("rollup_s") or round((float(d["end"]) - float(d["start"])) * factor, 6))
                    bucket_w = base * coarsen
                    key = (topic, d.get("channel"), d.get("unit"), bucket_w,
                           math.floor(round(float(d["start"]) / bucket_w, 6)))
                    d["rollup_s"] = bucket_w
                    n = _window_count(d)
                except Exception:
                    continue
                if sizes.get(key, 0) + n > MAX_MERGED:  # a row must stay readable: the drop policy takes over
                    continue
                sizes[key] = sizes.get(key, 0) + n
                groups.setdefault(key, []).append((seq, len(payload), d))
            merges = [plan for plan in map(_rollup_plan, groups.values()) if plan is not None]
            if not merges:
                continue
            db.execute("BEGIN IMMEDIATE")
            try:
                freed = 0
                for kept, covered in merges:
                    merged = merge_aggregates([d for _, _, d in kept], covered=tuple(s for s, _, _ in covered))
                    seq0 = merged["seq"]
                    payload = self.encode({k: v for k, v in merged.items() if k != "seq"}, seq0)
                    g = kept + covered
                    others = [s for s, _, _ in g if s != seq0]
                    db.execute(f"DELETE FROM outbox WHERE seq IN ({','.join('?' * len(others))})", others)
                    db.execute("UPDATE outbox SET payload = ? WHERE seq = ?", (payload, seq0))
                    freed += sum(n for _, n, _ in g) - len(payload)
                db.execute("COMMIT")
            except sqlite3.OperationalError as exc:
                _rollback(db)
                if not _is_full(exc):
                    raise
                log.debug("queue: rollup stopped at the file cap (%s); the drop policy takes over", exc)
                return False
            except BaseException:
                _rollback(db)
                raise
            self._bytes -= freed
            self._depth -= sum(len(k) + len(c) - 1 for k, c in merges)
            self._rolled_up += sum(len(k) + len(c) for k, c in merges)

    def _drop_to(self, target: int, protect: int, reason: str) -> None:
        """Drop oldest-first by priority (aggregates, other events, anomaly/dropped events) to ``target``."""
        db = self._db
        assert db is not None
        for prio in (PRIO_AGG, PRIO_EVENT, PRIO_KEEP):
            while self._bytes > target:
                rows = db.execute("SELECT seq, LENGTH(payload) FROM outbox WHERE prio = ? AND seq > ? "
                                  "ORDER BY seq LIMIT 2000", (prio, protect)).fetchall()
                if not rows:
                    break
                excess, chosen = self._bytes - target, []
                for seq, n in rows:
                    chosen.append(seq)
                    excess -= n
                    if excess <= 0:
                        break
                self._delete_counted(chosen, reason)

    def _drop_where(self, cond: str, args: tuple, protect: int, reason: str) -> None:
        rows = self._db.execute(f"SELECT seq FROM outbox WHERE {cond} AND seq > ? ORDER BY seq",
                                (*args, protect)).fetchall()
        for i in range(0, len(rows), 2000):
            self._delete_counted([r[0] for r in rows[i:i + 2000]], reason)

    def _delete_counted(self, seqs: list[int], reason: str) -> None:
        db = self._db
        old = self._pending, self._total
        db.execute("BEGIN IMMEDIATE")
        try:
            cur = db.execute(f"DELETE FROM outbox WHERE seq IN ({','.join('?' * len(seqs))}) "
                             "RETURNING seq, prio, LENGTH(payload), payload", seqs)
            gone = cur.fetchall()
            pending, total = json.loads(json.dumps(self._pending)), json.loads(json.dumps(self._total))
            for seq, prio, _, payload in gone:
                carried = _dropped_report(payload) if prio == PRIO_KEEP else None
                if carried:  # a dropped `dropped` event: its counts go back to pending, and its own seq is a gap
                    _merge_counts(pending, carried)
                    for c in (pending, total):
                        _bump(c, PRIO_EVENT, seq, reason)
                    continue
                members = _members(payload, seq) if prio == PRIO_AGG else [seq]
                for c in (pending, total):  # a rolled-up message counts as all the windows it holds
                    for s_ in members:
                        _bump(c, prio, s_, reason)
            self._pending, self._total = pending, total
            self._save_counts()
            db.execute("COMMIT")
        except BaseException:
            _rollback(db)
            self._pending, self._total = old
            raise
        self._depth -= len(gone)
        self._bytes -= sum(r[2] for r in gone)
        self._refresh_oldest()

    def _save_counts(self) -> None:
        self._db.executemany("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)",
                             [("dropped_pending", json.dumps(self._pending)),
                              ("dropped_total", json.dumps(self._total))])

    async def take_dropped(self, make: Callable[[dict], Message]) -> int | None:
        """If anything was dropped since the last report, commit ``make(counts)`` and reset the count
        in the same transaction; return its seq (None when there was nothing to report)."""
        return await self._call(self._take_dropped, make)

    def _take_dropped(self, make: Callable[[dict], Message]) -> int | None:
        if not self._pending["count"]:
            return None
        counts, self._pending = self._pending, _empty_counts()
        msg = make(counts)
        db = self._db
        seq = self._last_seq + 1
        payload = self.encode(msg.fields, seq)
        db.execute("BEGIN IMMEDIATE")
        try:
            db.execute("INSERT INTO outbox(seq, kind, topic, payload, created, prio) VALUES (?,?,?,?,?,?)",
                       (seq, msg.kind, msg.topic, payload, self.clock(), PRIO_KEEP))
            db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('last_seq', ?)", (seq,))
            self._save_counts()
            db.execute("COMMIT")
        except sqlite3.OperationalError as exc:
            _rollback(db)
            self._pending = counts
            if not _is_full(exc):
                raise
            self._hit_cap()  # the report waits for room: its counts stay pending, nothing is lost
            return None
        except BaseException:
            _rollback(db)
            self._pending = counts
            raise
        self._count_commit("dropped_event")
        self._last_seq = seq
        self._depth += 1
        self._bytes += len(payload)
        if self._oldest is None:
            self._oldest = self.clock()
        return seq

    async def shift_created(self, step_s: float, after_seq: int) -> int:
        """Add ``step_s`` to the ``created`` time of every row with ``seq > after_seq``; return how many.

        For a wall clock that stepped (NTP at boot): rows stamped with the old clock would otherwise be
        aged by the difference of the two clocks and dropped as ``max_age`` at the next append. One
        transaction, which also carries the deferred deletes and checkpoints, as every write does.
        """
        return await self._call(self._shift_created, float(step_s), int(after_seq))

    def _shift_created(self, step_s: float, after_seq: int) -> int:
        db = self._db
        assert db is not None
        db.execute("BEGIN IMMEDIATE")
        try:
            self._write_deferred()
            n = db.execute("UPDATE outbox SET created = created + ? WHERE seq > ?", (step_s, after_seq)).rowcount
            db.execute("COMMIT")
        except BaseException:
            _rollback(db)
            raise
        self._deferred_written("shift_created")
        self._refresh_oldest()
        return n

    # --- read and acknowledge -----------------------------------------------------------------

    async def peek(self, after_seq: int, limit: int) -> list[Row]:
        """Up to ``limit`` rows with ``seq > after_seq``, oldest first."""
        return await self._call(self._peek, after_seq, limit)

    def _peek(self, after_seq: int, limit: int) -> list[Row]:
        assert self._db is not None
        deferred = self._deferred
        cur = self._db.execute("SELECT seq, kind, topic, payload, created FROM outbox WHERE seq > ? "
                               "ORDER BY seq LIMIT ?", (after_seq, limit + len(deferred)))
        rows = [Row(*r) for r in cur]
        if deferred:  # acknowledged, deleted with the next write: gone already as far as anyone can see
            rows = [r for r in rows if r.seq not in deferred][:limit]
        if rows:  # handed out: may be in flight from now on, so never rolled up or dropped
            self._handed_out = max(self._handed_out, rows[-1].seq)
        return rows

    async def ack(self, seqs: list[int], defer: bool = False) -> None:
        """Delete acknowledged messages (one transaction).

        ``defer``: they leave the queue at once (depth, bytes, peek), but the rows are deleted in the
        next write transaction (an append, usually), or on their own once ``ack_defer_rows`` wait or
        the oldest waited ``ack_defer_s``. A crash meanwhile only sends them again (duplicates)."""
        if seqs:
            await self._call(self._ack_deferred if defer else self._ack, seqs)

    async def flush(self) -> None:
        """Commit deferred deletes and checkpoints now (if there are any)."""
        await self._call(self._flush)

    @property
    def deferred(self) -> int:
        """Acknowledged rows not deleted yet."""
        return len(self._deferred)

    def _ack_deferred(self, seqs: list[int]) -> None:
        db = self._db
        assert db is not None
        deferred = self._deferred
        count = size = 0
        for i in range(0, len(seqs), 500):
            chunk = [s for s in seqs[i:i + 500] if s not in deferred]
            if not chunk:
                continue
            for seq, n in db.execute(f"SELECT seq, LENGTH(payload) FROM outbox WHERE seq IN "
                                     f"({','.join('?' * len(chunk))})", chunk):
                deferred[seq] = n
                count += 1
                size += n
        if not count:
            return
        if len(deferred) == count:
            self._deferred_since = time.monotonic()
        self._depth -= count
        self._bytes -= size
        self._refresh_oldest()
        if len(deferred) >= self.ack_defer_rows or time.monotonic() - self._deferred_since >= self.ack_defer_s:
            self._flush()

    def _flush(self) -> None:
        if self._deferred or self._ckpt_pending:
            self._ack([])

    def _ack(self, seqs: list[int]) -> None:
        try:
            self._ack_once(seqs)
        except sqlite3.OperationalError as exc:
            if not (_is_full(exc) and self._ckpt_pending):
                raise
            for name in self._ckpt_pending:  # deletes must keep working on a full disk
                log.error("queue full: checkpoint %r not saved", name)
            self._ckpt_pending.clear()
            self._ack_once(seqs)

    def _ack_once(self, seqs: list[int]) -> None:
        db = self._db
        assert db is not None
        count = size = 0
        seqs = [s for s in seqs if s not in self._deferred]
        db.execute("BEGIN IMMEDIATE")
        try:
            self._write_deferred()
            for i in range(0, len(seqs), 500):
                chunk = seqs[i:i + 500]
                cur = db.execute(f"DELETE FROM outbox WHERE seq IN ({','.join('?' * len(chunk))}) "
                                 "RETURNING LENGTH(payload)", chunk)
                lengths = [r[0] for r in cur]
                count += len(lengths)
                size += sum(lengths)
            db.execute("COMMIT")
        except BaseException:
            _rollback(db)
            raise
        self._deferred_written("ack" if seqs or self._deferred else "checkpoint")
        self._depth -= count
        self._bytes -= size
        self._refresh_oldest()

    def _write_deferred(self) -> None:
        """Inside an open write transaction: delete the deferred rows, store the pending checkpoints
        and the highest seq handed out."""
        db = self._db
        if self._handed_out != self._handed_out_saved:
            db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('handed_out', ?)", (self._handed_out,))
        seqs = list(self._deferred)
        for i in range(0, len(seqs), 500):
            chunk = seqs[i:i + 500]
            db.execute(f"DELETE FROM outbox WHERE seq IN ({','.join('?' * len(chunk))})", chunk)
        now = self.clock()
        for name, blob in self._ckpt_pending.items():
            db.execute("INSERT OR REPLACE INTO checkpoint(name, blob, saved) VALUES (?,?,?)", (name, blob, now))

    def _deferred_written(self, cause: str) -> None:
        """After the COMMIT of a transaction that ran :meth:`_write_deferred`."""
        self._count_commit(cause)
        self._handed_out_saved = self._handed_out
        if self._deferred:
            self._count_commit("with_ack_deletes")
            self._deferred = {}
        if self._ckpt_pending:
            self._count_commit("with_checkpoint")
            self._ckpt_saved.update(self._ckpt_pending)
            self._ckpt_pending = {}

    def _count_commit(self, cause: str) -> None:
        self.commits[cause] = self.commits.get(cause, 0) + 1

    def _refresh_oldest(self) -> None:
        deferred = self._deferred
        for seq, created in self._db.execute("SELECT seq, created FROM outbox ORDER BY seq LIMIT ?",
                                             (len(deferred) + 1,)):
            if seq not in deferred:
                self._oldest = created
                return
        self._oldest = None

    async def drop(self, seqs: list[int], reason: str) -> None:
        """Drop given messages, counted (e.g. rejected by the broker as permanently invalid)."""
        if seqs:
            await self._call(self._delete_counted, seqs, reason)

    # --- state --------------------------------------------------------------------------------

    async def stats(self) -> QueueStats:
        return self.stats_now()

    def stats_now(self) -> QueueStats:
        """Counters kept in memory by the worker thread; safe to read from the event loop."""
        return QueueStats(self._depth, self._bytes, self._oldest, self._last_seq, dict(self._total),
                          self._pending["count"], self._rolled_up, self.full, self.page_cap * self._page_size)

    def oldest_age(self) -> float | None:
        oldest = self._oldest
        return None if oldest is None else max(0.0, self.clock() - oldest)

    @property
    def depth(self) -> int:
        return self._depth

    @property
    def bytes(self) -> int:
        return self._bytes

    @property
    def last_seq(self) -> int:
        return self._last_seq

    async def save_checkpoint(self, name: str, blob: bytes, defer: bool = True) -> None:
        """Store a state blob. Unchanged blobs are not written again. ``defer`` (default): it goes
        into the next write transaction (an append, usually) instead of a commit of its own; if the
        previous one of that name is still waiting, both are settled now (at most one commit per call).
        A crash loses at most the waiting blob: the previous one is restored."""
        await self._call(self._save_checkpoint, name, blob, defer)

    def _save_checkpoint(self, name: str, blob: bytes, defer: bool = True) -> None:
        assert self._db is not None
        if self._ckpt_saved.get(name) == blob and name not in self._ckpt_pending:
            return
        waiting = name in self._ckpt_pending
        self._ckpt_pending[name] = blob
        if defer and not waiting:
            return
        self._ack([])  # on a full disk the checkpoint is given up (logged), the deletes still go

    async def claim(self, owner: str) -> str | None:
        """Record ``owner`` (a gateway id) as whose queue this is, the first time; later, the id it
        belongs to when that is not ``owner`` (None when it is)."""
        return await self._call(self._claim, owner)

    def _claim(self, owner: str) -> str | None:
        assert self._db is not None
        row = self._db.execute("SELECT value FROM meta WHERE key = 'owner'").fetchone()
        if row is None:
            self._db.execute("INSERT INTO meta(key, value) VALUES ('owner', ?)", (owner,))
            return None
        return None if row[0] == owner else str(row[0])

    async def load_note(self, name: str) -> bytes | None:
        """The last ``note`` of that name committed with an :meth:`append`."""
        return await self._call(self._load_note, name)

    def _load_note(self, name: str) -> bytes | None:
        assert self._db is not None
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (_NOTE + name,)).fetchone()
        return bytes(row[0]) if row else None

    async def load_checkpoint(self, name: str) -> bytes | None:
        return await self._call(self._load_checkpoint, name)

    def _load_checkpoint(self, name: str) -> bytes | None:
        assert self._db is not None
        if name in self._ckpt_pending:
            return self._ckpt_pending[name]
        row = self._db.execute("SELECT blob FROM checkpoint WHERE name = ?", (name,)).fetchone()
        return row[0] if row else None

    async def close(self) -> None:
        if self._db is not None:
            await self._call(self._close)
        self._pool.shutdown(wait=True)

    def _close(self) -> None:
        assert self._db is not None
        try:
            self._flush()
        except sqlite3.Error as exc:  # a full disk: the rows are sent again, the old checkpoint stays
            log.error("queue close: deferred deletes/checkpoint not written: %s", exc)
        self._db.close()
        self._db = None


_NOTE = "note:"  # meta keys of append notes


def _meta_without_rowid(db: sqlite3.Connection) -> None:
    """Files made before: ``meta`` as a WITHOUT ROWID table, so its rewrite on every append
    touches one page instead of two (the table and its primary-key index)."""
    sql = db.execute("SELECT sql FROM sqlite_master WHERE type='table' AND name='meta'").fetchone()[0]
    if "WITHOUT ROWID" in sql.upper():
        return
    db.execute("BEGIN IMMEDIATE")
    try:
        db.execute("CREATE TABLE meta_new (key TEXT PRIMARY KEY, value) WITHOUT ROWID")
        db.execute("INSERT INTO meta_new SELECT key, value FROM meta")
        db.execute("DROP TABLE meta")
        db.execute("ALTER TABLE meta_new RENAME TO meta")
        db.execute("COMMIT")
    except BaseException:
        _rollback(db)
        raise


def _rollback(db: sqlite3.Connection) -> None:
    """SQLite rolls back by itself on SQLITE_FULL; roll back only what is still open."""
    if db.in_transaction:
        db.execute("ROLLBACK")


_SQLITE_FULL = 13


def _is_full(exc: sqlite3.OperationalError) -> bool:
    """Python 3.10's sqlite3 has neither `SQLITE_FULL` nor `sqlite_errorcode`: SQLite's code is
    stable, and the message ("database or disk is full") is the test there."""
    return getattr(exc, "sqlite_errorcode", None) == _SQLITE_FULL or "full" in str(exc)


def _prio(kind: str, fields: dict) -> int:
    if kind == KIND_AGG:
        return PRIO_AGG
    return PRIO_KEEP if fields.get("type") in _KEEP_TYPES else PRIO_EVENT


def _bump(c: dict, prio: int, seq: int, reason: str) -> None:
    c["count"] += 1
    c[("agg", "event", "anomaly")[prio]] += 1
    c["reasons"][reason] = c["reasons"].get(reason, 0) + 1
    if seq:
        c["first_seq"] = min(c["first_seq"] or seq, seq)
        c["last_seq"] = max(c["last_seq"], seq)


def _merge_counts(into: dict, other: dict) -> None:
    for k in ("count", "agg", "event", "anomaly"):
        into[k] += int(other.get(k, 0))
    for r, n in (other.get("reasons") or {}).items():
        into["reasons"][r] = into["reasons"].get(r, 0) + int(n)
    for k, fn in (("first_seq", min), ("last_seq", max)):
        v = int(other.get(k) or 0)
        if v:
            into[k] = fn(into[k] or v, v)


def _members(payload: bytes, seq: int) -> list[int]:
    """The original seqs inside a (possibly rolled-up) aggregate payload (``seq`` alone if unreadable)."""
    try:
        return merged_seqs(decode(payload))
    except Exception as exc:  # noqa: BLE001 - a row we cannot read is still dropped and counted
        log.error("queue: aggregate %d unreadable (%s): counted as one message", seq, exc)
        return [seq]


def _rollup_plan(group: list) -> tuple[list, list] | None:
    """What a rollup does with a group of a channel's aggregates in one bucket: ``(kept, covered)``, the
    members to merge and the rows to drop because the kept ones hold every reading they held; None: leave
    the group as it is.

    Hopping windows (``hop`` in the message) overlap, so they cannot all be merged. The ones aligned on
    their own length (start a multiple of ``end - start``) tile time, and hold every reading the others
    hold: so the others are dropped, their seqs listed in the merged message (``covered``), and the
    aligned ones merged as tumbling windows would be. Resolution is lost, not readings. A hopping window
    not wholly inside the aligned windows of the group (a hop that does not divide the length, or an
    aligned neighbour not in the group) is left as it is."""
    hop = [m for m in group if "hop" in m[2]]
    if not hop:
        return (group, []) if len(group) > 1 and not _overlapping(group) else None
    aligned = [m for m in hop if _aligned(m[2])]
    kept = [m for m in group if "hop" not in m[2]] + aligned
    if not kept or _overlapping(kept):
        return None
    cover = _intervals(sorted((float(d["start"]), float(d["end"])) for _, _, d in aligned))
    covered = [m for m in hop if not _aligned(m[2]) and _inside(float(m[2]["start"]), float(m[2]["end"]), cover)]
    if len(kept) + len(covered) < 2:
        return None
    return kept, covered


def _aligned(d: dict) -> bool:
    """A window whose start is a whole multiple of its length (1e-4 of a length: hops are at least 1/60)."""
    k = float(d["start"]) / (float(d["end"]) - float(d["start"]))
    return abs(k - round(k)) < 1e-4


def _intervals(spans: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Sorted spans joined where one ends where the next starts (to 1e-6 s)."""
    out: list[list[float]] = []
    for start, end in spans:
        if out and start <= out[-1][1] + 1e-6:
            out[-1][1] = max(out[-1][1], end)
        else:
            out.append([start, end])
    return [(a, b) for a, b in out]


def _inside(start: float, end: float, intervals: list[tuple[float, float]]) -> bool:
    return any(a - 1e-6 <= start and end <= b + 1e-6 for a, b in intervals)


def _overlapping(group: list) -> bool:
    """True when windows of a rollup group overlap in time: hopping windows (``windows.hop_s``), or
    windows sent again after a clock rewind. Merged, they would count a reading once per window that held
    it; such a group is left as it is, and the drop policy bounds the backlog instead. Only windows as the
    pipeline sent them are compared: a rolled-up one's span (its first start to its last end) may enclose
    windows merged elsewhere, and never holds overlapping ones, since those are never merged."""
    spans = sorted((float(d["start"]), float(d["end"])) for _, _, d in group if "seq_last" not in d)
    return any(start < end_before - 1e-6 for (_, end_before), (start, _) in zip(spans, spans[1:]))


def _window_count(d: dict) -> int:
    """``len(merged_seqs(d))`` without building the list."""
    if d.get("merged_runs"):
        return sum((last - first) // step + 1 for first, last, step in d["merged_runs"])
    return len(d.get("merged_seqs") or (1,))


def _newest_mtime(folder: Path) -> float:
    """The newest modification time of the entries of ``folder`` (0 when none can be read)."""
    newest = 0.0
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return newest
    for entry in entries:
        try:
            newest = max(newest, entry.stat(follow_symlinks=False).st_mtime)
        except OSError:
            continue
    return newest


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def _last_seq_of(path: Path) -> int:
    """The last seq recorded in a (corrupt) queue file, when that much can still be read; 0 otherwise."""
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            row = db.execute("SELECT value FROM meta WHERE key = 'last_seq'").fetchone()
        finally:
            db.close()
        return int(row[0]) if row else 0
    except (sqlite3.Error, TypeError, ValueError):
        return 0


def _dropped_report(payload: bytes) -> dict | None:
    try:
        d = decode(payload)
    except Exception:
        return None
    return d if d.get("type") == "dropped" else None
