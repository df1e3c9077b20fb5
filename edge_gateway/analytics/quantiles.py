"""Streaming p50/p95 per channel in constant memory: the P² algorithm (Jain & Chlamtac, 1985).

Five markers per quantile follow the minimum, p/2, p, (1+p)/2 and the maximum;
the middle one is the estimate. Until five readings are seen the estimate is
the exact nearest-rank quantile of those readings. Two uses: a running
estimate (:func:`p2_update` + :func:`p2_estimate`) and tumbling windows that
report p50/p95 of each window as it closes (:func:`window_update`).
"""

from __future__ import annotations

import math

import numpy as np

from ._jit import kernel

P2_WIDTH = 16
QUANTILES = (0.5, 0.95)
STATE_WIDTH = 2 * P2_WIDTH
WINDOW_WIDTH = 1 + STATE_WIDTH
WINDOW_FIELDS = ("channel", "start", "count", "p50", "p95")


def new_state(n_channels: int) -> np.ndarray:
    """Running p50/p95 state: two P² blocks of [count, heights x5, positions x5, desired x5]."""
    return np.zeros((n_channels, STATE_WIDTH), dtype=np.float64)


def new_window_state(n_channels: int) -> np.ndarray:
    s = np.zeros((n_channels, WINDOW_WIDTH), dtype=np.float64)
    s[:, 0] = np.nan
    return s


@kernel
def _p2_add(s, o, x, p):
    """Fold ``x`` into the P² block ``s[o:o+16]`` for quantile ``p``."""
    n = int(s[o])
    q = o + 1
    pos = o + 6
    want = o + 11
    if n < 5:
        j = n
        while j > 0 and s[q + j - 1] > x:
            s[q + j] = s[q + j - 1]
            j -= 1
        s[q + j] = x
        s[o] = n + 1
        if n + 1 == 5:
            for i in range(5):
                s[pos + i] = i + 1.0
            s[want] = 1.0
            s[want + 1] = 1.0 + 2.0 * p
            s[want + 2] = 1.0 + 4.0 * p
            s[want + 3] = 3.0 + 2.0 * p
            s[want + 4] = 5.0
        return
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
    s[o] = n + 1


@kernel
def _p2_value(s, o, p):
    n = int(s[o])
    if n == 0:
        return math.nan
    if n < 5:
        return s[o + 1 + min(n - 1, int(math.ceil(p * n)) - 1)]
    return s[o + 3]


@kernel
def p2_update(chan, val, state):
    """Fold a batch into the running p50/p95 of each channel (NaN skipped)."""
    for i in range(chan.shape[0]):
        x = val[i]
        if x != x:
            continue
        s = state[chan[i]]
        _p2_add(s, 0, x, 0.5)
        _p2_add(s, P2_WIDTH, x, 0.95)


@kernel
def p2_estimate(state, out):
    """Current (p50, p95) per channel into ``out`` (n_channels x 2); NaN before any reading."""
    for c in range(state.shape[0]):
        out[c, 0] = _p2_value(state[c], 0, 0.5)
        out[c, 1] = _p2_value(state[c], P2_WIDTH, 0.95)


@kernel
def _close(c, s, out, m):
    out[m, 0] = c
    out[m, 1] = s[0]
    out[m, 2] = s[1]
    out[m, 3] = _p2_value(s[1:], 0, 0.5)
    out[m, 4] = _p2_value(s[1:], P2_WIDTH, 0.95)
    for j in range(1, s.shape[0]):
        s[j] = 0.0


@kernel
def window_update(chan, ts, val, window_s, state, out):
    """p50/p95 per tumbling window (same boundaries as :func:`.windows.tumbling_update`).

    Writes a ``WINDOW_FIELDS`` row to ``out`` for each window a reading closes
    and returns the row count; readings older than the open window, or than the
    last closed one (its start stays in column 0), are dropped.
    """
    m = 0
    for i in range(chan.shape[0]):
        x = val[i]
        if x != x:
            continue
        c = chan[i]
        s = state[c]
        start = math.floor(ts[i] / window_s) * window_s
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
        _p2_add(s, 1, x, 0.5)
        _p2_add(s, 1 + P2_WIDTH, x, 0.95)
    return m


@kernel
def window_flush(watermark, window_s, state, out):
    """Close every open quantile window ending at or before ``watermark``."""
    m = 0
    for c in range(state.shape[0]):
        s = state[c]
        if s[1] > 0 and s[0] + window_s <= watermark:
            _close(c, s, out, m)
            m += 1
    return m
