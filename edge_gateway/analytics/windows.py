"""Tumbling-window aggregates per channel, in one pass over a batch.

State is one row per channel (see the ``S_*`` columns); a window closes when a
reading of a later window arrives (event time) or when :func:`tumbling_flush`
is given a watermark past its end. Readings older than the open window, or than
the last closed one, are counted as late and not aggregated: a closed window is
never re-opened (``S_START`` keeps the last closed window's start while
``S_COUNT`` is 0), so the cloud never gets two aggregates of one window.
"""

from __future__ import annotations

import math

import numpy as np

from ._jit import kernel

S_START, S_COUNT, S_MIN, S_MAX, S_MEAN, S_M2, S_FIRST, S_LAST, S_LATE = range(9)
STATE_WIDTH = 9

AGG_FIELDS = ("channel", "start", "count", "min", "max", "mean", "std", "first", "last")
AGG_WIDTH = len(AGG_FIELDS)


def new_state(n_channels: int) -> np.ndarray:
    """An empty state table: no window open on any channel."""
    state = np.zeros((n_channels, STATE_WIDTH), dtype=np.float64)
    state[:, S_START] = np.nan
    return state


@kernel
def _emit(c, s, out, m):
    n = s[S_COUNT]
    out[m, 0] = c
    out[m, 1] = s[S_START]
    out[m, 2] = n
    out[m, 3] = s[S_MIN]
    out[m, 4] = s[S_MAX]
    out[m, 5] = s[S_MEAN]
    out[m, 6] = math.sqrt(s[S_M2] / n) if n > 0 else 0.0
    out[m, 7] = s[S_FIRST]
    out[m, 8] = s[S_LAST]
    s[S_COUNT] = 0.0


@kernel
def _fold(s, start, x):
    """Add ``x`` to the window slot ``s`` (Welford's update), opening it at ``start`` when empty."""
    if s[S_COUNT] == 0:
        s[S_START] = start
        s[S_COUNT] = 1.0
        s[S_MIN] = x
        s[S_MAX] = x
        s[S_MEAN] = x
        s[S_M2] = 0.0
        s[S_FIRST] = x
        s[S_LAST] = x
        return
    n = s[S_COUNT] + 1.0
    d = x - s[S_MEAN]
    s[S_MEAN] += d / n
    s[S_M2] += d * (x - s[S_MEAN])
    s[S_COUNT] = n
    if x < s[S_MIN]:
        s[S_MIN] = x
    if x > s[S_MAX]:
        s[S_MAX] = x
    s[S_LAST] = x


@kernel
def tumbling_update(chan, ts, val, window_s, state, out):
    """Fold a batch into the open windows; write each window it closes to ``out``.

    ``chan`` (int64), ``ts`` and ``val`` (float64) are parallel arrays in arrival
    order; ``out`` needs at least ``len(chan)`` rows of ``AGG_WIDTH``. Returns the
    number of rows written. NaN values are skipped. Population std (ddof=0).
    """
    m = 0
    for i in range(chan.shape[0]):
        x = val[i]
        if x != x:
            continue
        c = chan[i]
        s = state[c]
        start = math.floor(ts[i] / window_s) * window_s
        if s[S_COUNT] > 0:
            if start < s[S_START]:
                s[S_LATE] += 1.0
                continue
            if start > s[S_START]:
                _emit(c, s, out, m)
                m += 1
        elif start <= s[S_START]:
            s[S_LATE] += 1.0
            continue
        _fold(s, start, x)
    return m


@kernel
def tumbling_flush(watermark, window_s, state, out):
    """Close every open window that ends at or before ``watermark``; return rows written."""
    m = 0
    for c in range(state.shape[0]):
        s = state[c]
        if s[S_COUNT] > 0 and s[S_START] + window_s <= watermark:
            _emit(c, s, out, m)
            m += 1
    return m


def new_hopping_state(n_channels: int, window_s: float, hop_s: float) -> np.ndarray:
    """State for hopping windows: ``ceil(window_s / hop_s)`` window slots per channel.

    Each slot has the tumbling layout (``S_*`` columns); the late count lives in
    slot 0 and the last column holds the newest timestamp seen or the end of the
    newest window closed, whichever is later (a window ending there is closed for good).
    """
    if not (window_s > 0 and hop_s > 0):
        raise ValueError("window_s and hop_s must be > 0")
    k = int(math.ceil(window_s / hop_s - 1e-9))
    state = np.zeros((n_channels, k * STATE_WIDTH + 1), dtype=np.float64)
    for j in range(k):
        state[:, j * STATE_WIDTH + S_START] = np.nan
    state[:, -1] = -np.inf
    return state


@kernel
def _emit_due(c, row, limit, window_s, out, m):
    """Emit the channel's open windows ending at or before ``limit``, oldest first."""
    k = (row.shape[0] - 1) // STATE_WIDTH
    while True:
        best = -1
        for j in range(k):
            o = j * STATE_WIDTH
            if row[o + S_COUNT] > 0 and row[o + S_START] + window_s <= limit:
                if best < 0 or row[o + S_START] < row[best * STATE_WIDTH + S_START]:
                    best = j
        if best < 0:
            return m
        row[-1] = max(row[-1], row[best * STATE_WIDTH + S_START] + window_s)
        _emit(c, row[best * STATE_WIDTH : (best + 1) * STATE_WIDTH], out, m)
        m += 1


@kernel
def hopping_update(chan, ts, val, window_s, hop_s, state, out):
    """Fold a batch into hopping windows (length ``window_s``, a new one every ``hop_s``).

    Windows start at multiples of ``hop_s``; a reading joins every window with
    ``start <= ts < start + window_s``. Windows close on event time, like
    :func:`tumbling_update`; ``out`` needs ``len(chan) * ceil(window_s / hop_s)``
    rows. A reading whose window was already closed is counted late (once).
    """
    m = 0
    k = (state.shape[1] - 1) // STATE_WIDTH
    for i in range(chan.shape[0]):
        x = val[i]
        if x != x:
            continue
        c = chan[i]
        row = state[c]
        t = ts[i]
        m = _emit_due(c, row, t, window_s, out, m)
        newest = max(row[-1], t)
        row[-1] = newest
        first = math.floor((t - window_s) / hop_s) + 1
        last = math.floor(t / hop_s)
        late = False
        for b in range(first, last + 1):
            start = b * hop_s
            if start + window_s <= newest:
                late = True
                continue
            j = b % k
            s = row[j * STATE_WIDTH : (j + 1) * STATE_WIDTH]
            if s[S_COUNT] > 0 and s[S_START] != start:
                late = True
                continue
            _fold(s, start, x)
        if late:
            row[S_LATE] += 1.0
    return m


@kernel
def hopping_flush(watermark, window_s, state, out):
    """Close every hopping window ending at or before ``watermark``; return rows written."""
    m = 0
    for c in range(state.shape[0]):
        m = _emit_due(c, state[c], watermark, window_s, out, m)
    return m
