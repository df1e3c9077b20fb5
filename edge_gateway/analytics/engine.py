"""Tumbling-window state for any number of channels, grown as channels appear.

An :class:`Engine` owns the window state table indexed by a dense channel
number, so one kernel call serves a whole batch. It does no I/O; the pipeline
hands it arrays and receives closed-window rows back.
"""

from __future__ import annotations

import numpy as np

from . import windows


class Engine:
    """Window aggregates (count, min, max, mean, std, first, last) per channel."""

    def __init__(self, window_s: float, capacity: int = 16) -> None:
        self.window_s = float(window_s)
        self.n_channels = 0
        self._win = windows.new_state(capacity)

    def ensure_channels(self, n: int) -> None:
        """Make room for channel numbers below ``n``."""
        if n > self._win.shape[0]:
            win = windows.new_state(max(n, 2 * self._win.shape[0]))
            win[: self._win.shape[0]] = self._win
            self._win = win
        self.n_channels = max(self.n_channels, n)

    def process(self, chan: np.ndarray, ts: np.ndarray, val: np.ndarray) -> np.ndarray:
        """Fold one batch in; return the rows of the windows it closed."""
        out = np.empty((chan.shape[0], windows.AGG_WIDTH), dtype=np.float64)
        m = windows.tumbling_update(chan, ts, val, self.window_s, self._win, out)
        return out[:m]

    def flush_channels(self, idx: np.ndarray) -> np.ndarray:
        """Close the open windows of channels ``idx`` whatever their end (an idle sensor)."""
        if idx.size == 0:
            return np.empty((0, windows.AGG_WIDTH), dtype=np.float64)
        sub = self._win[idx]
        out = np.empty((idx.size, windows.AGG_WIDTH), dtype=np.float64)
        m = windows.tumbling_flush(np.inf, self.window_s, sub, out)
        self._win[idx] = sub
        rows = out[:m]
        rows[:, 0] = idx[rows[:, 0].astype(np.int64)]
        return rows

    def open_mask(self) -> np.ndarray:
        """Which channels have a window open."""
        return self._win[: self.n_channels, windows.S_COUNT] > 0

    def state(self) -> dict[str, np.ndarray]:
        return {"win": self._win[: self.n_channels].copy()}

    def load_state(self, state: dict[str, np.ndarray]) -> None:
        n = state["win"].shape[0]
        self.ensure_channels(n)
        self._win[:n] = state["win"]

    def warm(self) -> None:
        """Compile (or load from the cache) the window kernels before the daemon reports ready."""
        probe = Engine(self.window_s, capacity=1)
        probe.ensure_channels(1)
        probe.process(np.zeros(2, dtype=np.int64), np.array([0.0, self.window_s]), np.ones(2))
        probe.flush_channels(np.zeros(1, dtype=np.int64))
