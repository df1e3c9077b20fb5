"""Tumbling-window state for any number of channels, grown as channels appear.

An :class:`Engine` owns the window state tables indexed by a dense channel
number, so one kernel call serves a whole batch. It does no I/O; the pipeline
hands it arrays and receives closed-window rows back.
"""

from __future__ import annotations

import numpy as np

from . import quantiles, windows
from .tables import keep_rows

ROW_FIELDS = windows.AGG_FIELDS + ("p50", "p95")
ROW_WIDTH = len(ROW_FIELDS)
REWIND_AFTER = 3


class Engine:
    """Window aggregates (count, min, max, mean, std, first, last, p50, p95) per channel.

    The quantile windows are a second table run with the same boundaries on the
    same readings; their rows are joined to the tumbling rows on (channel, start)
    and must hold as many readings, so p50/p95 are NaN for a window the quantile
    table saw none or only part of (restored from a checkpoint from before it existed).
    """

    def __init__(self, window_s: float, capacity: int = 16, rewind_margin_s: float | None = None) -> None:
        self.window_s = float(window_s)
        self.rewind_margin_s = self.window_s if rewind_margin_s is None else float(rewind_margin_s)
        self.n_channels = 0
        self._win = windows.new_state(capacity)
        self._q = quantiles.new_window_state(capacity)
        self._behind = np.zeros(capacity)  # late readings in a row, each far behind the channel's windows
        self.rewinds = np.zeros(capacity, dtype=np.int64)
        self.rewound = np.empty(0, dtype=np.int64)  # the channels the last process() rewound

    def ensure_channels(self, n: int) -> None:
        """Make room for channel numbers below ``n``."""
        self._win = _grown(self._win, n, windows.new_state)
        self._q = _grown(self._q, n, quantiles.new_window_state)
        if n > self._behind.shape[0]:
            size = self._win.shape[0]
            self._behind = np.concatenate([self._behind, np.zeros(size - self._behind.shape[0])])
            self.rewinds = np.concatenate([self.rewinds, np.zeros(size - self.rewinds.shape[0], dtype=np.int64)])
        self.n_channels = max(self.n_channels, n)

    def process(self, chan: np.ndarray, ts: np.ndarray, val: np.ndarray) -> np.ndarray:
        """Fold one batch in; return the ``ROW_FIELDS`` rows of the windows it closed.

        A channel whose time went back (the gateway's clock stepped back, or a node's clock that was
        ahead was corrected) would otherwise drop every reading as late until real time passed the
        wrong one, days or a year later, and keep doing so across restarts, since the window state
        is checkpointed. So after ``REWIND_AFTER`` late readings in a row, each more than
        ``rewind_margin_s`` before the channel's window, its open window is closed and its windows
        start afresh at the new time (see :attr:`rewound`); the readings dropped until then stay lost.
        """
        n = self.n_channels
        late_before = self._win[:n, windows.S_LATE].copy()
        out = np.empty((chan.shape[0], windows.AGG_WIDTH), dtype=np.float64)
        m = windows.tumbling_update(chan, ts, val, self.window_s, self._win, out)
        qout = np.empty((chan.shape[0], len(quantiles.WINDOW_FIELDS)), dtype=np.float64)
        k = quantiles.window_update(chan, ts, val, self.window_s, self._q, qout)
        rows = _join(out[:m], qout[:k])
        new_late = self._win[:n, windows.S_LATE] - late_before
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
        far = newest < self._win[seen, windows.S_START] - self.rewind_margin_s
        self._behind[seen] = np.where(far, self._behind[seen] + new_late[seen], 0.0)
        due = seen[self._behind[seen] >= REWIND_AFTER]
        self.rewound = due
        if not due.size:
            return np.empty((0, ROW_WIDTH), dtype=np.float64)
        rows = self.flush_channels(due)
        late = self._win[due, windows.S_LATE]
        self._win[due] = windows.new_state(due.size)
        self._win[due, windows.S_LATE] = late
        self._q[due] = quantiles.new_window_state(due.size)
        self._behind[due] = 0.0
        self.rewinds[due] += 1
        return rows

    def flush_channels(self, idx: np.ndarray) -> np.ndarray:
        """Close the open windows of channels ``idx`` whatever their end (an idle sensor)."""
        if idx.size == 0:
            return np.empty((0, ROW_WIDTH), dtype=np.float64)
        sub = self._win[idx]
        out = np.empty((idx.size, windows.AGG_WIDTH), dtype=np.float64)
        m = windows.tumbling_flush(np.inf, self.window_s, sub, out)
        self._win[idx] = sub
        qsub = self._q[idx]
        qout = np.empty((idx.size, len(quantiles.WINDOW_FIELDS)), dtype=np.float64)
        k = quantiles.window_flush(np.inf, self.window_s, qsub, qout)
        self._q[idx] = qsub
        rows, qrows = out[:m], qout[:k]
        rows[:, 0] = idx[rows[:, 0].astype(np.int64)]
        qrows[:, 0] = idx[qrows[:, 0].astype(np.int64)]
        return _join(rows, qrows)

    def close_through(self, marks: np.ndarray) -> int:
        """Treat every window of channel ``c`` starting at or before ``marks[c]`` as closed and sent (NaN:
        no mark): its open one is dropped without a row, and its readings now count as late. After a
        crash the restored state can be older than what was already committed. Returns how many
        open windows were dropped."""
        n = min(marks.shape[0], self.n_channels)
        m = marks[:n]
        has = np.nonzero(~np.isnan(m))[0]
        win = self._win
        sent = has[(win[has, windows.S_COUNT] > 0) & (win[has, windows.S_START] <= m[has])]
        self.flush_channels(sent)
        win[has, windows.S_START] = np.fmax(win[has, windows.S_START], m[has])
        self._q[has, 0] = np.fmax(self._q[has, 0], m[has])
        return int(sent.size)

    def restart_grid(self) -> np.ndarray:
        """Close every open window whatever its end and start the tables afresh (the late counts kept):
        for a window length changed across a restart. Returns the closed windows' rows."""
        rows = self.flush_channels(np.arange(self.n_channels))
        late = self._win[:, windows.S_LATE].copy()
        self._win[:] = windows.new_state(self._win.shape[0])
        self._win[:, windows.S_LATE] = late
        self._q[:] = quantiles.new_window_state(self._q.shape[0])
        self._behind[:] = 0.0
        return rows

    def keep_channels(self, keep: np.ndarray) -> None:
        """Keep only channels ``keep`` (ascending), renumbered 0, 1, ... (see :meth:`.Pipeline.forget_idle`)."""
        self._win = keep_rows(self._win, keep, windows.new_state)
        self._q = keep_rows(self._q, keep, quantiles.new_window_state)
        self._behind = keep_rows(self._behind, keep)
        self.rewinds = keep_rows(self.rewinds, keep)
        self.n_channels = int(np.count_nonzero(keep < self.n_channels))

    def late_counts(self) -> np.ndarray:
        """Readings each channel dropped as late (the tumbling table's count; the quantile table drops the same)."""
        return self._win[: self.n_channels, windows.S_LATE].copy()

    def open_mask(self) -> np.ndarray:
        """Which channels have a window open."""
        return self._win[: self.n_channels, windows.S_COUNT] > 0

    def state(self) -> dict[str, np.ndarray]:
        return {"win": self._win[: self.n_channels].copy(), "q": self._q[: self.n_channels].copy()}

    def load_state(self, state: dict[str, np.ndarray]) -> None:
        """Restore :meth:`state`. Without a ``q`` table (older checkpoints) the quantile windows start
        empty, each channel's open tumbling window counting as closed for them: p50/p95 of a window
        that saw only part of its readings would be wrong, so that window gets none."""
        n = state["win"].shape[0]
        self.ensure_channels(n)
        self._win[:n] = state["win"]
        q = state.get("q")
        fresh = quantiles.new_window_state(n)
        if q is not None and q.ndim == 2 and q.shape[1] == quantiles.WINDOW_WIDTH:
            fresh[: min(n, q.shape[0])] = q[:n]
        else:
            fresh[:, 0] = self._win[:n, windows.S_START]
        self._q[:n] = fresh

    def warm(self) -> None:
        """Compile (or load from the cache) the window kernels before the daemon reports ready."""
        probe = Engine(self.window_s, capacity=1)
        probe.ensure_channels(1)
        probe.process(np.zeros(2, dtype=np.int64), np.array([0.0, self.window_s]), np.ones(2))
        probe.flush_channels(np.zeros(1, dtype=np.int64))


def _grown(table: np.ndarray, n: int, new_table) -> np.ndarray:
    """``table`` with room for ``n`` channels (doubling, so growth is amortised); itself if it has room."""
    if n <= table.shape[0]:
        return table
    grown = new_table(max(n, 2 * table.shape[0]))
    grown[: table.shape[0]] = table
    return grown


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
