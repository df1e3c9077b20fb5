"""The stateful side of the analytics: per-channel state tables and the kernel calls.

An :class:`Engine` owns state arrays indexed by a dense channel number and
grows them when a new channel appears, so one kernel call serves a whole batch.
It does no I/O; the pipeline hands it arrays and receives arrays back.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import ewma, windows


@dataclass(frozen=True)
class EngineSettings:
    window_s: float
    ewma_alpha: float
    ewma_threshold: float
    ewma_warmup: int


class Engine:
    """Window aggregates and EWMA z-score flags for any number of channels."""

    def __init__(self, settings: EngineSettings, capacity: int = 16) -> None:
        self.settings = settings
        self.n_channels = 0
        self._win = windows.new_state(capacity)
        self._ewma = ewma.new_state(capacity)

    def ensure_channels(self, n: int) -> None:
        """Make room for channel numbers below ``n``."""
        if n <= self._win.shape[0]:
            self.n_channels = max(self.n_channels, n)
            return
        cap = max(n, 2 * self._win.shape[0])
        win, ew = windows.new_state(cap), ewma.new_state(cap)
        win[: self._win.shape[0]] = self._win
        ew[: self._ewma.shape[0]] = self._ewma
        self._win, self._ewma = win, ew
        self.n_channels = n

    def process(self, chan: np.ndarray, ts: np.ndarray, val: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Return (closed window rows, |z| per reading) for one batch."""
        st = self.settings
        out = np.empty((chan.shape[0], windows.AGG_WIDTH), dtype=np.float64)
        m = windows.tumbling_update(chan, ts, val, st.window_s, self._win, out)
        score = np.empty(chan.shape[0], dtype=np.float64)
        ewma.ewma_zscore(chan, val, st.ewma_alpha, float(st.ewma_warmup), self._ewma, score)
        return out[:m], score

    def flush(self, watermark: float) -> np.ndarray:
        """Close windows that ended at or before ``watermark`` (wall clock minus grace)."""
        out = np.empty((self._win.shape[0], windows.AGG_WIDTH), dtype=np.float64)
        m = windows.tumbling_flush(watermark, self.settings.window_s, self._win, out)
        return out[:m]

    def flush_channels(self, idx: np.ndarray) -> np.ndarray:
        """Close the open windows of channels ``idx`` whatever their end (an idle sensor)."""
        if idx.size == 0:
            return np.empty((0, windows.AGG_WIDTH), dtype=np.float64)
        sub = self._win[idx]
        out = np.empty((idx.size, windows.AGG_WIDTH), dtype=np.float64)
        m = windows.tumbling_flush(np.inf, self.settings.window_s, sub, out)
        self._win[idx] = sub
        rows = out[:m]
        rows[:, 0] = idx[rows[:, 0].astype(np.int64)]
        return rows

    def open_mask(self) -> np.ndarray:
        """Which channels have a window open."""
        return self._win[: self.n_channels, windows.S_COUNT] > 0

    def state(self) -> dict[str, np.ndarray]:
        """Everything needed to resume after a restart."""
        return {"win": self._win[: self.n_channels].copy(), "ewma": self._ewma[: self.n_channels].copy()}

    def load_state(self, state: dict[str, np.ndarray]) -> None:
        n = state["win"].shape[0]
        self.ensure_channels(n)
        self._win[:n] = state["win"]
        self._ewma[:n] = state["ewma"]

    def late_counts(self) -> np.ndarray:
        return self._win[: self.n_channels, windows.S_LATE].copy()

    def warm(self) -> None:
        """Compile (or load from cache) every kernel before the daemon reports ready."""
        probe = Engine(self.settings, capacity=1)
        probe.ensure_channels(1)
        chan = np.zeros(2, dtype=np.int64)
        ts = np.array([0.0, self.settings.window_s], dtype=np.float64)
        probe.process(chan, ts, np.ones(2))
        probe.flush(1e18)
