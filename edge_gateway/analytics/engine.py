"""Tumbling- or hopping-window state for any number of channels, grown as channels appear.

An :class:`Engine` owns the window state tables indexed by a dense channel
number, so one kernel call serves a whole batch. It does no I/O; the pipeline
hands it arrays and receives closed-window rows back.
"""

from __future__ import annotations

import numpy as np

from . import hopping, quantiles, windows
from .tables import keep_rows

ROW_FIELDS = windows.AGG_FIELDS + ("p50", "p95")
ROW_WIDTH = len(ROW_FIELDS)
REWIND_AFTER = 3


class Engine:
    """Window aggregates (count, min, max, mean, std, first, last, p50, p95) per channel.

    The quantile windows are a second table run with the same boundaries on the
    same readings; their rows are joined to the aggregate rows on (channel, start)
    and must hold as many readings, so p50/p95 are NaN for a window the quantile
    table saw none or only part of (restored from a checkpoint from before it existed).

    Tumbling windows by default; with ``hop_s`` below ``window_s``, hopping windows: one of length
    ``window_s`` starting every ``hop_s`` (``hop_s == window_s`` is tumbling, with its tables).
    """

    def __init__(self, window_s: float, capacity: int = 16, rewind_margin_s: float | None = None,
                 hop_s: float | None = None) -> None:
        self.window_s = float(window_s)
        self.hop_s = None if hop_s is None or float(hop_s) == self.window_s else float(hop_s)
        self.rewind_margin_s = self.window_s if rewind_margin_s is None else float(rewind_margin_s)
        self.n_channels = 0
        if self.hop_s is None:
            self._t: _Tumbling | _Hopping = _Tumbling(self.window_s, capacity)
        else:
            self._t = _Hopping(self.window_s, self.hop_s, capacity)
        self._behind = np.zeros(capacity)  # late readings in a row, each far behind the channel's windows
        self.rewinds = np.zeros(capacity, dtype=np.int64)
        self.rewound = np.empty(0, dtype=np.int64)  # the channels the last process() rewound

    def ensure_channels(self, n: int) -> None:
        """Make room for channel numbers below ``n``."""
        self._t.grow(n)
        if n > self._behind.shape[0]:
            size = self._t.capacity
            self._behind = np.concatenate([self._behind, np.zeros(size - self._behind.shape[0])])
            self.rewinds = np.concatenate([self.rewinds, np.zeros(size - self.rewinds.shape[0], dtype=np.int64)])
        self.n_channels = max(self.n_channels, n)

    def process(self, chan: np.ndarray, ts: np.ndarray, val: np.ndarray) -> np.ndarray:
        """Fold one batch in; return the ``ROW_FIELDS`` rows of the windows it closed.

        A channel whose time went back (the gateway's clock stepped back, or a node's clock that was
        ahead was corrected) would otherwise drop every reading as late until real time passed the
        wrong one, days or a year later, and keep doing so across restarts, since the window state
        is checkpointed. So after ``REWIND_AFTER`` late readings in a row, each more than
        ``rewind_margin_s`` before the channel's window, its open windows are closed and its windows
        start afresh at the new time (see :attr:`rewound`); the readings dropped until then stay lost.
        """
        n = self.n_channels
        late_before = self._t.late(n)
        rows = self._t.update(chan, ts, val)
        new_late = self._t.late(n) - late_before
        self.rewound = np.empty(0, dtype=np.int64)
        if chan.shape[0] and (new_late.any() or self._behind[:n].any()):
            rows = np.concatenate([rows, self._rewind(chan, ts, val, new_late)])
        return rows

    def _rewind(self, chan: np.ndarray, ts: np.ndarray, val: np.ndarray, new_late: np.ndarray) -> np.ndarray:
        have = ~np.isnan(val)
        chan, ts = chan[have], ts[have]
        rev = chan[::-1]
        seen, first = np.unique(rev, return_index=True)
        newest = ts[::-1][first]
        far = newest < self._t.newest_start(seen) - self.rewind_margin_s
        self._behind[seen] = np.where(far, self._behind[seen] + new_late[seen], 0.0)
        due = seen[self._behind[seen] >= REWIND_AFTER]
        self.rewound = due
        if not due.size:
            return np.empty((0, ROW_WIDTH), dtype=np.float64)
        rows = self.flush_channels(due)
        self._t.reset(due)
        self._behind[due] = 0.0
        self.rewinds[due] += 1
        return rows

    def flush_channels(self, idx: np.ndarray) -> np.ndarray:
        """Close the open windows of channels ``idx`` whatever their end (an idle sensor)."""
        if idx.size == 0:
            return np.empty((0, ROW_WIDTH), dtype=np.float64)
        return self._t.flush(idx)

    def close_through(self, marks: np.ndarray) -> int:
        """Treat every window of channel ``c`` starting at or before ``marks[c]`` as closed and sent (NaN:
        no mark): its open one is dropped without a row, and its readings now count as late. After a
        crash the restored state can be older than what was already committed. Returns how many
        open windows were dropped."""
        n = min(marks.shape[0], self.n_channels)
        m = marks[:n]
        has = np.nonzero(~np.isnan(m))[0]
        return self._t.close_through(has, m[has])

    def keep_channels(self, keep: np.ndarray) -> None:
        """Keep only channels ``keep`` (ascending), renumbered 0, 1, ... (see :meth:`.Pipeline.forget_idle`)."""
        self._t.keep(keep)
        self._behind = keep_rows(self._behind, keep)
        self.rewinds = keep_rows(self.rewinds, keep)
        self.n_channels = int(np.count_nonzero(keep < self.n_channels))

    def late_counts(self) -> np.ndarray:
        """Readings each channel dropped as late (the aggregate table's count; the quantile table drops the same)."""
        return self._t.late(self.n_channels)

    def open_mask(self) -> np.ndarray:
        """Which channels have a window open."""
        return self._t.open_mask(self.n_channels)

    def state(self) -> dict[str, np.ndarray]:
        """The window tables (``win``/``q`` tumbling, ``hop``/``hopq`` hopping), and per channel the late
        readings in a row toward a rewind (``behind``) and the rewinds so far (``rewinds``)."""
        n = self.n_channels
        out = self._t.state(n)
        out["behind"] = self._behind[:n].copy()
        out["rewinds"] = self.rewinds[:n].astype(np.float64)  # a checkpoint holds float64 tables
        return out

    def load_state(self, state: dict[str, np.ndarray]) -> None:
        """Restore :meth:`state`. Without a ``q`` table (older checkpoints) the quantile windows start
        empty, each channel's open tumbling window counting as closed for them: p50/p95 of a window
        that saw only part of its readings would be wrong, so that window gets none. Without
        ``behind``/``rewinds`` (older checkpoints) both start at zero. ValueError for tables of another
        kind or shape (another window length or hop) than this engine's."""
        n = self._t.rows_in(state)
        self.ensure_channels(n)
        self._t.load_state(state, n)
        for name, table, kind in (("behind", self._behind, np.float64), ("rewinds", self.rewinds, np.int64)):
            got = state.get(name)
            if got is not None and got.ndim == 1:
                k = min(n, got.shape[0])
                table[:k] = got[:k].astype(kind)

    def load_counts(self, late: np.ndarray, rewinds: np.ndarray) -> None:
        """Set the late and rewind counts of the first channels (carried over from an :class:`Engine` of
        another window length or hop across a restart: counters never go down)."""
        n = late.shape[0]
        self.ensure_channels(n)
        self._t.set_late(late)
        self.rewinds[:n] = rewinds

    def adopt(self, old: Engine) -> tuple[np.ndarray, int]:
        """Take over the channels of ``old``, restored from a checkpoint of another window length or hop.

        Its open windows that are windows of this grid too (the same start and end) go on here, so each is
        sent once, with all its readings, and not a second time in part by this grid. The others are closed
        on the old grid: returned as ``ROW_FIELDS`` rows (starts on the old grid), with how many windows
        carried over. Late and rewind counts carry over, and so does each channel's time: a window of this
        grid ending at or before the newest time of the old one counts as closed, so a late reading cannot
        open a window the old grid already sent."""
        n = old.n_channels
        self.ensure_channels(n)
        self.load_counts(old.late_counts(), old.rewinds[:n])
        newest = old._t.newest_time(n)
        adopted = 0
        for table, c, where, start, end in old._t.windows_open(n):
            slot = self._t.fits(table, c, start, end)
            if slot is not None:
                self._t.put(table, c, slot, start, end, old._t.take(table, c, where))
                adopted += int(table == 0)
        rows = old.flush_channels(np.arange(n))
        self._t.hold(newest)
        return rows, adopted

    def warm(self) -> None:
        """Compile (or load from the cache) the window kernels before the daemon reports ready."""
        probe = Engine(self.window_s, capacity=1, hop_s=self.hop_s)
        probe.ensure_channels(1)
        probe.process(np.zeros(2, dtype=np.int64), np.array([0.0, self.window_s]), np.ones(2))
        probe.flush_channels(np.zeros(1, dtype=np.int64))


class _Tumbling:
    """The tumbling aggregate table (:mod:`.windows`) and its quantile table (:mod:`.quantiles`)."""

    def __init__(self, window_s: float, capacity: int) -> None:
        self.window_s = window_s
        self._win = windows.new_state(capacity)
        self._q = quantiles.new_window_state(capacity)

    @property
    def capacity(self) -> int:
        return self._win.shape[0]

    def grow(self, n: int) -> None:
        self._win = _grown(self._win, n, windows.new_state)
        self._q = _grown(self._q, n, quantiles.new_window_state)

    def update(self, chan: np.ndarray, ts: np.ndarray, val: np.ndarray) -> np.ndarray:
        out = np.empty((chan.shape[0], windows.AGG_WIDTH), dtype=np.float64)
        m = windows.tumbling_update(chan, ts, val, self.window_s, self._win, out)
        qout = np.empty((chan.shape[0], len(quantiles.WINDOW_FIELDS)), dtype=np.float64)
        k = quantiles.window_update(chan, ts, val, self.window_s, self._q, qout)
        return _join(out[:m], qout[:k])

    def newest_start(self, idx: np.ndarray) -> np.ndarray:
        """The start of each channel's open (or last closed) window; NaN: none yet."""
        return self._win[idx, windows.S_START]

    def flush(self, idx: np.ndarray) -> np.ndarray:
        return _flush(idx, idx.size, self._win,
                      lambda sub, out: windows.tumbling_flush(np.inf, self.window_s, sub, out),
                      self._q, lambda sub, out: quantiles.window_flush(np.inf, self.window_s, sub, out))

    def reset(self, idx: np.ndarray) -> None:
        """No window of channels ``idx`` open or closed any more (their late counts kept)."""
        late = self._win[idx, windows.S_LATE]
        self._win[idx] = windows.new_state(idx.size)
        self._win[idx, windows.S_LATE] = late
        self._q[idx] = quantiles.new_window_state(idx.size)

    def close_through(self, has: np.ndarray, marks: np.ndarray) -> int:
        win = self._win
        sent = has[(win[has, windows.S_COUNT] > 0) & (win[has, windows.S_START] <= marks)]
        if sent.size:
            self.flush(sent)
        win[has, windows.S_START] = np.fmax(win[has, windows.S_START], marks)
        self._q[has, 0] = np.fmax(self._q[has, 0], marks)
        return int(sent.size)

    def newest_time(self, n: int) -> np.ndarray:
        """A time up to which every window of each channel is closed: its open window's start, or the end
        of the last one closed; NaN: none yet."""
        win = self._win[:n]
        starts = win[:, windows.S_START]
        ends = np.array(windows.window_ends(np.nan_to_num(starts), self.window_s), dtype=np.float64)
        return np.where(win[:, windows.S_COUNT] > 0, starts, np.where(np.isnan(starts), np.nan, ends))

    def windows_open(self, n: int) -> list[tuple[int, int, None, float, float]]:
        """Each open window as ``(table, channel, where, start, end)``; table 0 the aggregates, 1 the quantiles."""
        out = []
        for table, count, start in ((0, self._win[:n, windows.S_COUNT], self._win[:n, windows.S_START]),
                                    (1, self._q[:n, 1], self._q[:n, 0])):
            for c in np.nonzero(count > 0)[0].tolist():
                s = float(start[c])
                out.append((table, c, None, s, windows.window_ends([s], self.window_s)[0]))
        return out

    def fits(self, table: int, c: int, start: float, end: float) -> int | None:
        """Where window ``[start, end)`` of channel ``c`` would go in this table (0: its row), None when it
        is no window of this grid or the row has another open."""
        if windows.grid_index(start, end, self.window_s) is None:
            return None
        busy = self._win[c, windows.S_COUNT] > 0 if table == 0 else self._q[c, 1] > 0
        return None if busy else 0

    def take(self, table: int, c: int, where: None) -> np.ndarray:
        """Remove the open window of channel ``c`` (see :meth:`windows_open`) and return its state."""
        if table == 0:
            got = self._win[c, windows.S_START: windows.S_LATE].copy()
            self._win[c, windows.S_COUNT] = 0.0
            return got
        got = self._q[c, 1:].copy()
        self._q[c, 1:] = 0.0
        return got

    def put(self, table: int, c: int, slot: int, start: float, end: float, got: np.ndarray) -> None:
        """Open the window :meth:`take` gave (of another table) in the place :meth:`fits` found."""
        if table == 0:
            self._win[c, windows.S_START: windows.S_LATE] = got  # the late count is not the window's
        else:
            self._q[c, 0] = start
            self._q[c, 1:] = got

    def hold(self, newest: np.ndarray) -> None:
        """Count every window ending at or before ``newest[c]`` as closed on channel ``c`` (NaN: none)."""
        n = newest.shape[0]
        closed = np.array([windows.closed_before(t, self.window_s) for t in newest.tolist()], dtype=np.float64)
        for count, start in ((self._win[:n, windows.S_COUNT], self._win[:n, windows.S_START]),
                             (self._q[:n, 1], self._q[:n, 0])):
            free = count == 0
            start[free] = np.fmax(start[free], closed[free])

    def keep(self, keep: np.ndarray) -> None:
        self._win = keep_rows(self._win, keep, windows.new_state)
        self._q = keep_rows(self._q, keep, quantiles.new_window_state)

    def late(self, n: int) -> np.ndarray:
        return self._win[:n, windows.S_LATE].copy()

    def set_late(self, late: np.ndarray) -> None:
        self._win[: late.shape[0], windows.S_LATE] = late

    def open_mask(self, n: int) -> np.ndarray:
        return self._win[:n, windows.S_COUNT] > 0

    def state(self, n: int) -> dict[str, np.ndarray]:
        return {"win": self._win[:n].copy(), "q": self._q[:n].copy()}

    @staticmethod
    def rows_in(state: dict[str, np.ndarray]) -> int:
        win = state.get("win")
        if win is None or win.ndim != 2 or win.shape[1] != windows.STATE_WIDTH:
            raise ValueError("no tumbling window table")
        return win.shape[0]

    def load_state(self, state: dict[str, np.ndarray], n: int) -> None:
        self._win[:n] = state["win"]
        q = state.get("q")
        fresh = quantiles.new_window_state(n)
        if q is not None and q.ndim == 2 and q.shape[1] == quantiles.WINDOW_WIDTH:
            fresh[: min(n, q.shape[0])] = q[:n]
        else:
            fresh[:, 0] = self._win[:n, windows.S_START]
        self._q[:n] = fresh


class _Hopping:
    """The hopping aggregate table (:func:`.windows.hopping_update`) and its quantile table (:mod:`.hopping`).

    Both keep ``windows.hopping_slots`` windows per channel and the newest time seen or closed in their
    last column; the aggregate table's late count is in slot 0.
    """

    def __init__(self, window_s: float, hop_s: float, capacity: int) -> None:
        self.window_s, self.hop_s = window_s, hop_s
        self.k = windows.hopping_slots(window_s, hop_s)
        self._h = self._new_h(capacity)
        self._q = self._new_q(capacity)

    def _new_h(self, n: int) -> np.ndarray:
        return windows.new_hopping_state(n, self.window_s, self.hop_s)

    def _new_q(self, n: int) -> np.ndarray:
        return hopping.new_state(n, self.window_s, self.hop_s)

    @property
    def capacity(self) -> int:
        return self._h.shape[0]

    def grow(self, n: int) -> None:
        self._h = _grown(self._h, n, self._new_h)
        self._q = _grown(self._q, n, self._new_q)

    def update(self, chan: np.ndarray, ts: np.ndarray, val: np.ndarray) -> np.ndarray:
        size = chan.shape[0] * self.k
        out = np.empty((size, windows.AGG_WIDTH), dtype=np.float64)
        m = windows.hopping_update(chan, ts, val, self.window_s, self.hop_s, self._h, out)
        qout = np.empty((size, len(quantiles.WINDOW_FIELDS)), dtype=np.float64)
        k = hopping.window_update(chan, ts, val, self.window_s, self.hop_s, self._q, qout)
        return _join(out[:m], qout[:k])

    def _starts(self, rows) -> np.ndarray:
        return rows[:, windows.S_START: self.k * windows.HOP_SLOT: windows.HOP_SLOT]

    def newest_start(self, idx: np.ndarray) -> np.ndarray:
        """The start of each channel's newest window, open or closed, or of the newest closed by a mark
        (:meth:`close_through`); NaN: none yet."""
        h = self._h[idx]
        starts = np.fmax.reduce(self._starts(h), axis=1)
        return np.fmax(starts, np.where(np.isfinite(h[:, -1]), h[:, -1] - self.window_s, np.nan))

    def flush(self, idx: np.ndarray) -> np.ndarray:
        return _flush(idx, idx.size * self.k, self._h,
                      lambda sub, out: windows.hopping_flush(np.inf, self.window_s, sub, out),
                      self._q, lambda sub, out: hopping.window_flush(np.inf, sub, out))

    def reset(self, idx: np.ndarray) -> None:
        late = self._h[idx, windows.S_LATE]
        self._h[idx] = self._new_h(idx.size)
        self._h[idx, windows.S_LATE] = late
        self._q[idx] = self._new_q(idx.size)

    def close_through(self, has: np.ndarray, marks: np.ndarray) -> int:
        """Drop the open windows of channels ``has`` starting at or before their mark, and make every such
        window count as closed: the newest-time column moves to the end of the window starting at the mark."""
        dropped = 0
        h, q = self._h, self._q
        for j in range(self.k):
            o = j * windows.HOP_SLOT
            sent = has[(h[has, o + windows.S_COUNT] > 0) & (h[has, o + windows.S_START] <= marks)]
            h[sent, o + windows.S_COUNT] = 0.0
            dropped += sent.size
            o = j * hopping.Q_SLOT
            sent = has[(q[has, o + hopping.Q_SKETCH] > 0) & (q[has, o + hopping.Q_START] <= marks)]
            q[sent, o + hopping.Q_SKETCH: o + hopping.Q_SLOT] = 0.0
        ends = np.array(windows.window_ends(marks, self.window_s, self.hop_s), dtype=np.float64)
        h[has, -1] = np.fmax(h[has, -1], ends)
        q[has, -1] = np.fmax(q[has, -1], ends)
        return int(dropped)

    def newest_time(self, n: int) -> np.ndarray:
        """Each channel's newest time (reading, or end of a window closed); ``-inf``: none yet."""
        return self._h[:n, -1].copy()

    def windows_open(self, n: int) -> list[tuple[int, int, int, float, float]]:
        """Each open window as ``(table, channel, slot, start, end)``; table 0 the aggregates, 1 the quantiles."""
        out = []
        for j in range(self.k):
            o, qo = j * windows.HOP_SLOT, j * hopping.Q_SLOT
            for table, tab, count, start, end in ((0, self._h, o + windows.S_COUNT, o + windows.S_START,
                                                   o + windows.H_END),
                                                  (1, self._q, qo + hopping.Q_SKETCH, qo + hopping.Q_START,
                                                   qo + hopping.Q_END)):
                for c in np.nonzero(tab[:n, count] > 0)[0].tolist():
                    out.append((table, c, j, float(tab[c, start]), float(tab[c, end])))
        return out

    def fits(self, table: int, c: int, start: float, end: float) -> int | None:
        """The slot window ``[start, end)`` of channel ``c`` would take in this table, None when it is no
        window of this grid or the slot holds another."""
        b = windows.grid_index(start, end, self.window_s, self.hop_s)
        if b is None:
            return None
        j = b % self.k
        busy = (self._h[c, j * windows.HOP_SLOT + windows.S_COUNT] > 0 if table == 0
                else self._q[c, j * hopping.Q_SLOT + hopping.Q_SKETCH] > 0)
        return None if busy else j

    def take(self, table: int, c: int, j: int) -> np.ndarray:
        """Remove the open window in slot ``j`` of channel ``c`` (see :meth:`windows_open`); return its state."""
        if table == 0:
            o = j * windows.HOP_SLOT
            got = self._h[c, o + windows.S_START: o + windows.S_LATE].copy()
            self._h[c, o + windows.S_COUNT] = 0.0
            return got
        o = j * hopping.Q_SLOT
        got = self._q[c, o + hopping.Q_SKETCH: o + hopping.Q_SLOT].copy()
        self._q[c, o + hopping.Q_SKETCH: o + hopping.Q_SLOT] = 0.0
        return got

    def put(self, table: int, c: int, j: int, start: float, end: float, got: np.ndarray) -> None:
        """Open the window :meth:`take` gave (of another table) in slot ``j``, the one :meth:`fits` found."""
        if table == 0:
            o = j * windows.HOP_SLOT
            self._h[c, o + windows.S_START: o + windows.S_LATE] = got  # slot 0's late count is the channel's
            self._h[c, o + windows.H_END] = end
        else:
            o = j * hopping.Q_SLOT
            self._q[c, o + hopping.Q_START] = start
            self._q[c, o + hopping.Q_END] = end
            self._q[c, o + hopping.Q_SKETCH: o + hopping.Q_SLOT] = got

    def hold(self, newest: np.ndarray) -> None:
        """Count every window ending at or before ``newest[c]`` as closed on channel ``c`` (NaN: none)."""
        n = newest.shape[0]
        for tab in (self._h, self._q):
            tab[:n, -1] = np.fmax(tab[:n, -1], newest)

    def keep(self, keep: np.ndarray) -> None:
        self._h = keep_rows(self._h, keep, self._new_h)
        self._q = keep_rows(self._q, keep, self._new_q)

    def late(self, n: int) -> np.ndarray:
        return self._h[:n, windows.S_LATE].copy()

    def set_late(self, late: np.ndarray) -> None:
        self._h[: late.shape[0], windows.S_LATE] = late

    def open_mask(self, n: int) -> np.ndarray:
        return (self._h[:n, windows.S_COUNT: self.k * windows.HOP_SLOT: windows.HOP_SLOT] > 0).any(axis=1)

    def state(self, n: int) -> dict[str, np.ndarray]:
        return {"hop": self._h[:n].copy(), "hopq": self._q[:n].copy()}

    def rows_in(self, state: dict[str, np.ndarray]) -> int:
        h, q = state.get("hop"), state.get("hopq")
        if h is None or q is None or h.ndim != 2 or q.ndim != 2 or h.shape[0] != q.shape[0]:
            raise ValueError("no hopping window tables")
        if h.shape[1] != self._h.shape[1] or q.shape[1] != self._q.shape[1]:
            raise ValueError(f"hopping tables of {(h.shape[1] - 1) // windows.HOP_SLOT} slots, not {self.k}")
        return h.shape[0]

    def load_state(self, state: dict[str, np.ndarray], n: int) -> None:
        self._h[:n] = state["hop"]
        self._q[:n] = state["hopq"]


def _grown(table: np.ndarray, n: int, new_table) -> np.ndarray:
    """``table`` with room for ``n`` channels (doubling, so growth is amortised); itself if it has room."""
    if n <= table.shape[0]:
        return table
    grown = new_table(max(n, 2 * table.shape[0]))
    grown[: table.shape[0]] = table
    return grown


def _flush(idx: np.ndarray, size: int, table: np.ndarray, flush, qtable: np.ndarray, qflush) -> np.ndarray:
    """Close every open window of channels ``idx`` in an aggregate table and its quantile table (``flush``
    and ``qflush`` run the kernels on the rows of ``idx``, at most ``size`` windows), joined, numbered
    by channel again."""
    joined = []
    for tab, fn, width in ((table, flush, windows.AGG_WIDTH), (qtable, qflush, len(quantiles.WINDOW_FIELDS))):
        sub = tab[idx]
        out = np.empty((size, width), dtype=np.float64)
        rows = out[: fn(sub, out)]
        tab[idx] = sub
        rows[:, 0] = idx[rows[:, 0].astype(np.int64)]
        joined.append(rows)
    return _join(*joined)


def _join(rows: np.ndarray, qrows: np.ndarray) -> np.ndarray:
    """``rows`` (``AGG_FIELDS``) with p50/p95 from the quantile row of the same (channel, start) and count, else NaN."""
    joined = np.full((rows.shape[0], ROW_WIDTH), np.nan)
    joined[:, : windows.AGG_WIDTH] = rows
    found = {(r[0], r[1]): r for r in qrows.tolist()}
    for i, (c, start, count) in enumerate(rows[:, :3].tolist()):
        q = found.get((c, start))
        if q is not None and q[2] == count:
            joined[i, windows.AGG_WIDTH:] = q[3:5]
    return joined
