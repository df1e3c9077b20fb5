"""p50/p95 per hopping window: the quantile twin of :func:`.windows.hopping_update`.

The engine runs this table beside the hopping aggregate table on the same readings and joins their
rows on ``(channel, start)``, as it joins :func:`.quantiles.window_update` to the tumbling table. So
the slot bookkeeping here follows :func:`.windows.hopping_update` (the same ``windows._hop_range``): window ``b`` spans
``[b * hop, b * hop + window)`` on the decimal grid of :func:`.windows._grid`, lives in slot
``b % k``, closes when a reading at or past its end arrives (event time), and a reading whose window
was already closed is dropped for that window. Each slot holds one constant-size sketch of
:mod:`.quantiles` (an exact buffer of ``Q_EXACT`` readings, then P²), so a channel costs
``k * (2 + SKETCH_WIDTH) + 1`` numbers whatever its rate. Not a place for window arithmetic of its
own: every boundary comes from the helpers of :mod:`.windows`.
"""

from __future__ import annotations

import numpy as np

from . import quantiles as _q
from . import windows as _windows
from ._jit import kernel

Q_START, Q_END, Q_SKETCH = 0, 1, 2  # slot columns: the window's start and end, then its sketch (count first)
Q_SLOT = 2 + _q.SKETCH_WIDTH

# compiled helpers of the sibling modules (a pure twin of this module calls these compiled: equal results)
_grid = _windows._grid
_edge = _windows._edge
_end = _windows._end
_hop_range = _windows._hop_range
_add = _q._add
_value = _q._value
_P50 = _q.P50
_P95 = _q.P95


def new_state(n_channels: int, window_s: float, hop_s: float) -> np.ndarray:
    """``hopping_slots`` sketch slots per channel, none open, then the newest-time column (``-inf``)."""
    k = _windows.hopping_slots(window_s, hop_s)
    state = np.zeros((n_channels, k * Q_SLOT + 1), dtype=np.float64)
    for j in range(k):
        state[:, j * Q_SLOT + Q_START] = np.nan
    state[:, -1] = -np.inf
    return state


@kernel
def _close_due(c, row, limit, out, m):
    """Close the channel's open windows ending at or before ``limit``, oldest first (as ``windows._emit_due``)."""
    k = (row.shape[0] - 1) // Q_SLOT
    while True:
        best = -1
        for j in range(k):
            o = j * Q_SLOT
            if row[o + Q_SKETCH] > 0 and row[o + Q_END] <= limit:
                if best < 0 or row[o + Q_START] < row[best * Q_SLOT + Q_START]:
                    best = j
        if best < 0:
            return m
        o = best * Q_SLOT
        row[-1] = max(row[-1], row[o + Q_END])
        out[m, 0] = c
        out[m, 1] = row[o + Q_START]
        out[m, 2] = row[o + Q_SKETCH]
        out[m, 3] = _value(row, o + Q_SKETCH, _P50, 0.5)
        out[m, 4] = _value(row, o + Q_SKETCH, _P95, 0.95)
        for i in range(o + Q_SKETCH, o + Q_SLOT):
            row[i] = 0.0
        m += 1


@kernel
def window_update(chan, ts, val, window_s, hop_s, state, out):
    """Fold a batch into the hopping windows' sketches; write a ``quantiles.WINDOW_FIELDS`` row to ``out``
    for each window it closes (``out`` needs ``len(chan) * k`` rows) and return the row count."""
    scale, nw, nh = _grid(window_s, hop_s)
    m = 0
    k = (state.shape[1] - 1) // Q_SLOT
    for i in range(chan.shape[0]):
        x = val[i]
        if x != x:
            continue
        c = chan[i]
        row = state[c]
        t = ts[i]
        m = _close_due(c, row, t, out, m)
        newest = max(row[-1], t)
        row[-1] = newest
        first, last = _hop_range(t, window_s, hop_s, scale, nw, nh)
        for b in range(first, last + 1):
            end = _end(b, nh, nw, scale)
            if end <= newest:
                continue
            start = _edge(b, nh, scale)
            o = (b % k) * Q_SLOT
            if row[o + Q_SKETCH] > 0 and row[o + Q_START] != start:
                continue
            if row[o + Q_SKETCH] == 0:
                row[o + Q_START] = start
                row[o + Q_END] = end
            _add(row, o + Q_SKETCH, x)
    return m


@kernel
def window_flush(watermark, state, out):
    """Close every hopping window ending at or before ``watermark``; return rows written."""
    m = 0
    for c in range(state.shape[0]):
        m = _close_due(c, state[c], watermark, out, m)
    return m
