"""Streaming p50/p95 per channel in constant memory: an exact buffer, then P² (Jain & Chlamtac, 1985).

One sketch layout serves both uses, a running estimate (:func:`p2_update` +
:func:`p2_estimate`) and tumbling windows that report p50/p95 of each window
as it closes (:func:`window_update`): ``[count, sorted buffer x Q_EXACT,
P² block for p50, P² block for p95]``, each P² block being ``[heights x5,
positions x5, desired x5]``. City windows hold a few dozen readings, where
textbook P² (five readings, then the middle marker) reports the median for
p95; so the first ``Q_EXACT`` readings are kept sorted and the estimate is
their exact nearest-rank quantile. At reading ``Q_EXACT + 1`` each quantile's
five markers start from the buffer's order statistics nearest the desired
positions ``1 + (n-1)·(0, p/2, p, (1+p)/2, 1)``, then P² steps follow as usual.
"""

from __future__ import annotations

import math

import numpy as np

from . import windows as _windows
from ._jit import kernel

Q_EXACT = 32
QUANTILES = (0.5, 0.95)
P2_WIDTH = 15
SKETCH_WIDTH = 1 + Q_EXACT + 2 * P2_WIDTH
P50 = 1 + Q_EXACT
P95 = P50 + P2_WIDTH
STATE_WIDTH = SKETCH_WIDTH
WINDOW_WIDTH = 1 + SKETCH_WIDTH
WINDOW_FIELDS = ("channel", "start", "count", "p50", "p95")

# the tumbling windows' boundary code (the engine joins the two tables on start), wrapped again here
# so that this module's pure twin gets plain Python functions
_grid = kernel(_windows._grid.py_func)
_window_start = kernel(_windows._window_start.py_func)
_window_end = kernel(_windows._window_end.py_func)


def new_state(n_channels: int) -> np.ndarray:
    """Running p50/p95 state: one empty sketch per channel."""
    return np.zeros((n_channels, STATE_WIDTH), dtype=np.float64)


def new_window_state(n_channels: int) -> np.ndarray:
    """Window state ``[start, sketch]`` per channel; NaN start: no window seen yet."""
    s = np.zeros((n_channels, WINDOW_WIDTH), dtype=np.float64)
    s[:, 0] = np.nan
    return s


@kernel
def _p2_init(s, o, m, p):
    """Start the P² block at ``s[m:m+15]`` from the full sorted buffer of the sketch at ``o``."""
    fractions = (0.0, p / 2.0, p, (1.0 + p) / 2.0, 1.0)
    for i in range(5):
        d = 1.0 + (Q_EXACT - 1) * fractions[i]
        r = math.floor(d + 0.5)
        s[m + i] = s[o + r]
        s[m + 5 + i] = r
        s[m + 10 + i] = d


@kernel
def _p2_step(s, m, x, p):
    """One P² step of the block at ``s[m:m+15]`` for quantile ``p``."""
    q = m
    pos = m + 5
    want = m + 10
    if x < s[q]:
        s[q] = x
        k = 0
    elif x >= s[q + 4]:
        s[q + 4] = x
        k = 3
    else:
        k = 0
        while k < 3 and x >= s[q + k + 1]:
            k += 1
    for i in range(k + 1, 5):
        s[pos + i] += 1.0
    s[want + 1] += p / 2.0
    s[want + 2] += p
    s[want + 3] += (1.0 + p) / 2.0
    s[want + 4] += 1.0
    for i in range(1, 4):
        d = s[want + i] - s[pos + i]
        if (d >= 1.0 and s[pos + i + 1] - s[pos + i] > 1.0) or (d <= -1.0 and s[pos + i - 1] - s[pos + i] < -1.0):
            d = 1.0 if d > 0.0 else -1.0
            ni, nl, nr = s[pos + i], s[pos + i - 1], s[pos + i + 1]
            qi, ql, qr = s[q + i], s[q + i - 1], s[q + i + 1]
            qp = qi + d / (nr - nl) * ((ni - nl + d) * (qr - qi) / (nr - ni) + (nr - ni - d) * (qi - ql) / (ni - nl))
            if ql < qp < qr:
                s[q + i] = qp
            else:
                j = i + int(d)
                s[q + i] = qi + d * (s[q + j] - qi) / (s[pos + j] - ni)
            s[pos + i] = ni + d


@kernel
def _add(s, o, x):
    """Fold ``x`` into the sketch at ``s[o:o+SKETCH_WIDTH]``."""
    n = int(s[o])
    if n < Q_EXACT:
        b = o + 1
        j = n
        while j > 0 and s[b + j - 1] > x:
            s[b + j] = s[b + j - 1]
            j -= 1
        s[b + j] = x
        s[o] = n + 1
        return
    if n == Q_EXACT:
        _p2_init(s, o, o + P50, 0.5)
        _p2_init(s, o, o + P95, 0.95)
    _p2_step(s, o + P50, x, 0.5)
    _p2_step(s, o + P95, x, 0.95)
    s[o] = n + 1


@kernel
def _value(s, o, m, p):
    """Quantile ``p`` of the sketch at ``o`` (P² block at offset ``m`` of it); NaN when empty."""
    n = int(s[o])
    if n == 0:
        return math.nan
    if n <= Q_EXACT:
        return s[o + 1 + min(n - 1, int(math.ceil(p * n)) - 1)]
    return s[o + m + 2]


@kernel
def p2_update(chan, val, state):
    """Fold a batch into the running p50/p95 of each channel (NaN skipped)."""
    for i in range(chan.shape[0]):
        x = val[i]
        if x != x:
            continue
        _add(state[chan[i]], 0, x)


@kernel
def p2_estimate(state, out):
    """Current (p50, p95) per channel into ``out`` (n_channels x 2); NaN before any reading."""
    for c in range(state.shape[0]):
        out[c, 0] = _value(state[c], 0, P50, 0.5)
        out[c, 1] = _value(state[c], 0, P95, 0.95)


@kernel
def _close(c, s, out, m):
    out[m, 0] = c
    out[m, 1] = s[0]
    out[m, 2] = s[1]
    out[m, 3] = _value(s, 1, P50, 0.5)
    out[m, 4] = _value(s, 1, P95, 0.95)
    for j in range(1, s.shape[0]):
        s[j] = 0.0


@kernel
def window_update(chan, ts, val, window_s, state, out):
    """p50/p95 per tumbling window (same boundaries as :func:`.windows.tumbling_update`).

    Writes a ``WINDOW_FIELDS`` row to ``out`` for each window a reading closes
    and returns the row count; readings older than the open window, or than the
    last closed one (its start stays in column 0), are dropped.
    """
    scale, n, _ = _grid(window_s, window_s)
    m = 0
    for i in range(chan.shape[0]):
        x = val[i]
        if x != x:
            continue
        c = chan[i]
        s = state[c]
        start = _window_start(ts[i], window_s, scale, n)
        if s[1] > 0:
            if start < s[0]:
                continue
            if start > s[0]:
                _close(c, s, out, m)
                m += 1
        elif start <= s[0]:
            continue
        if s[1] == 0:
            s[0] = start
        _add(s, 1, x)
    return m


@kernel
def window_flush(watermark, window_s, state, out):
    """Close every open quantile window ending at or before ``watermark``."""
    scale, n, _ = _grid(window_s, window_s)
    m = 0
    for c in range(state.shape[0]):
        s = state[c]
        if s[1] > 0 and _window_end(s[0], scale, n) <= watermark:
            _close(c, s, out, m)
            m += 1
    return m
