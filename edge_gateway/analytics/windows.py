"""Tumbling-window aggregates per channel, in one pass over a batch.

State is one row per channel (see the ``S_*`` columns); a window closes when a
reading of a later window arrives (event time) or when :func:`tumbling_flush`
is given a watermark past its end. Readings older than the open window, or than
the last closed one, are counted as late and not aggregated: a closed window is
never re-opened (``S_START`` keeps the last closed window's start while
``S_COUNT`` is 0), so the cloud never gets two aggregates of one window.

Window boundaries are the numbers ``b * hop / 10**d`` rounded once (see
:func:`_grid`), not ``floor(t / w) * w``: with w = 0.1 the latter puts t = 0.3 in
window 0.2, because 3 * 0.1 rounds to 0.30000000000000004. A reading goes to the
window(s) whose reported start is at or below it and whose end, computed the same
way, is above it; for whole-second lengths this is the arithmetic it always was.
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
    # M2 overflows to -inf (or NaN) on finite but extreme readings (1e308, -1e308): std NaN, as Numba's
    # sqrt gives it, where Python's math.sqrt would raise (review 4, M1)
    v = s[S_M2] / n if n > 0 else 0.0
    out[m, 6] = math.sqrt(v) if v >= 0.0 else math.nan
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
def _grid(window_s, hop_s):
    """``(scale, window, hop)`` with window and hop as whole numbers of ``1 / scale`` s (scale ``10**d``,
    d <= 6, the smallest that works), so that ``b * hop / scale`` is the decimal boundary rounded once;
    ``(1, window_s, hop_s)`` when the lengths are not such decimals (boundaries then ``b * hop_s``).
    Six places keep ``b * hop`` exact (below 2**53) for epoch timestamps."""
    scale = 1.0
    for _ in range(7):
        w = window_s * scale
        h = hop_s * scale
        rw = float(math.floor(w + 0.5))
        rh = float(math.floor(h + 0.5))
        if rw >= 1.0 and rh >= 1.0 and abs(w - rw) <= 1e-12 * rw and abs(h - rh) <= 1e-12 * rh:
            return scale, rw, rh
        scale *= 10.0
    return 1.0, float(window_s), float(hop_s)


@kernel
def _edge(b, n, scale):
    """``b * n / scale``: the start of window ``b``."""
    x = b * n
    if scale == 1.0:
        return x
    return x / scale


@kernel
def _end(b, n, length, scale):
    """``(b * n + length) / scale``: the end of window ``b`` (start + length, rounded once)."""
    x = b * n + length
    if scale == 1.0:
        return x
    return x / scale


@kernel
def _hop_range(t, window_s, hop_s, scale, nw, nh):
    """``(first, last)``: the hopping windows ``b`` holding ``t`` (``start <= t < end``), on the grid of
    :func:`_grid`. The floor divisions only guess; rounding can make each one off either way."""
    first = math.floor((t - window_s) / hop_s) + 1
    if _end(first, nh, nw, scale) <= t:
        first += 1
    elif _end(first - 1, nh, nw, scale) > t:
        first -= 1
    last = math.floor(t / hop_s)
    if _edge(last, nh, scale) > t:
        last -= 1
    elif _edge(last + 1, nh, scale) <= t:
        last += 1
    return first, last


@kernel
def _window_start(t, window_s, scale, n):
    """Start of the tumbling window holding ``t``: the last boundary (:func:`_edge`) at or below it. The
    floor division only guesses the index; rounding can make it one off either way. Calls no other
    kernel, so that :mod:`.quantiles` can share it and its pure twin stay pure."""
    b = math.floor(t / window_s)
    start = b * n if scale == 1.0 else b * n / scale
    if start > t:
        b -= 1
        return b * n if scale == 1.0 else b * n / scale
    nxt = (b + 1) * n if scale == 1.0 else (b + 1) * n / scale
    return nxt if nxt <= t else start


@kernel
def _window_end(start, scale, n):
    """The boundary after ``start`` (the next window's start), for closing a window on a watermark."""
    b = math.floor(start * scale / n + 0.5) + 1
    return b * n if scale == 1.0 else b * n / scale


def window_ends(starts, window_s: float, hop_s: float | None = None) -> list[float]:
    """The ends of the tumbling windows starting at ``starts``: each the next one's start, exactly as the
    kernels place it (``0.2 + 0.1`` is 0.30000000000000004, the boundary 0.3). Plain Python, for messages;
    the grid is worked out once per call. With ``hop_s`` (below ``window_s``): of the hopping windows, each
    ``start + window_s`` as :func:`hopping_update` places it."""
    if hop_s is None or hop_s == window_s:
        scale, n, _ = _grid.py_func(window_s, window_s)
        return [_window_end.py_func(float(s), scale, n) for s in starts]
    scale, nw, nh = _grid.py_func(float(window_s), float(hop_s))
    return [_end.py_func(math.floor(float(s) * scale / nh + 0.5), nh, nw, scale) for s in starts]


def grid_index(start: float, end: float, window_s: float, hop_s: float | None = None) -> int | None:
    """The number ``b`` of the window ``[start, end)`` on the grid of ``window_s`` (tumbling) or ``window_s``
    every ``hop_s``, exactly as the kernels place its boundaries; None when that grid has no window with
    this start and end. Plain Python: a restart with another window geometry asks it of each open window
    to carry over the ones both grids share (see :meth:`.Engine.adopt`)."""
    if not (math.isfinite(start) and math.isfinite(end)):
        return None
    if hop_s is None or hop_s == window_s:
        scale, n, _ = _grid.py_func(float(window_s), float(window_s))
        b = math.floor(start * scale / n + 0.5)
        ok = _edge.py_func(b, n, scale) == start and _edge.py_func(b + 1, n, scale) == end
    else:
        scale, nw, nh = _grid.py_func(float(window_s), float(hop_s))
        b = math.floor(start * scale / nh + 0.5)
        ok = _edge.py_func(b, nh, scale) == start and _end.py_func(b, nh, nw, scale) == end
    return int(b) if ok else None


def closed_before(t: float, window_s: float) -> float:
    """The start of the newest tumbling window that ends at or before ``t`` (NaN for a ``t`` that is not
    finite): a table whose start column holds it counts every window up to ``t`` as closed."""
    if not math.isfinite(t):
        return math.nan
    scale, n, _ = _grid.py_func(float(window_s), float(window_s))
    b = math.floor(_window_start.py_func(t, float(window_s), scale, n) * scale / n + 0.5)
    return _edge.py_func(b - 1, n, scale)


@kernel
def tumbling_update(chan, ts, val, window_s, state, out):
    """Fold a batch into the open windows; write each window it closes to ``out``.

    ``chan`` (int64), ``ts`` and ``val`` (float64) are parallel arrays in arrival
    order; ``out`` needs at least ``len(chan)`` rows of ``AGG_WIDTH``. Returns the
    number of rows written. NaN values are skipped. Population std (ddof=0).
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
    scale, n, _ = _grid(window_s, window_s)
    m = 0
    for c in range(state.shape[0]):
        s = state[c]
        if s[S_COUNT] > 0 and _window_end(s[S_START], scale, n) <= watermark:
            _emit(c, s, out, m)
            m += 1
    return m


HOP_SLOT = STATE_WIDTH + 1
H_END = STATE_WIDTH


def hopping_slots(window_s: float, hop_s: float) -> int:
    """How many hopping windows can hold one instant: ``ceil(window / hop)`` on a decimal grid (see
    :func:`_grid`), one more otherwise (a rounded end can overlap the start ``window / hop`` hops on)."""
    if not (window_s > 0 and hop_s > 0):
        raise ValueError("window_s and hop_s must be > 0")
    scale, n, h = _grid.py_func(float(window_s), float(hop_s))
    if scale == 1.0 and (n != math.floor(n) or h != math.floor(h)):
        return int(math.ceil(window_s / hop_s - 1e-9)) + 1
    return int(math.ceil(n / h))


def new_hopping_state(n_channels: int, window_s: float, hop_s: float) -> np.ndarray:
    """State for hopping windows: :func:`hopping_slots` window slots per channel.

    Each slot has the tumbling layout (``S_*`` columns) plus the window's end (``H_END``); the late
    count lives in slot 0 and the last column holds the newest timestamp seen or the end of the
    newest window closed, whichever is later (a window ending there is closed for good).
    """
    k = hopping_slots(window_s, hop_s)
    state = np.zeros((n_channels, k * HOP_SLOT + 1), dtype=np.float64)
    for j in range(k):
        state[:, j * HOP_SLOT + S_START] = np.nan
    state[:, -1] = -np.inf
    return state


@kernel
def _emit_due(c, row, limit, out, m):
    """Emit the channel's open windows ending at or before ``limit``, oldest first."""
    k = (row.shape[0] - 1) // HOP_SLOT
    while True:
        best = -1
        for j in range(k):
            o = j * HOP_SLOT
            if row[o + S_COUNT] > 0 and row[o + H_END] <= limit:
                if best < 0 or row[o + S_START] < row[best * HOP_SLOT + S_START]:
                    best = j
        if best < 0:
            return m
        o = best * HOP_SLOT
        row[-1] = max(row[-1], row[o + H_END])
        _emit(c, row[o : o + HOP_SLOT], out, m)
        m += 1


@kernel
def hopping_update(chan, ts, val, window_s, hop_s, state, out):
    """Fold a batch into hopping windows (length ``window_s``, a new one every ``hop_s``).

    Window ``b`` spans ``[b * hop, b * hop + window)`` on the grid of :func:`_grid`; a reading joins
    every window with ``start <= ts < end``. Windows close on event time, like
    :func:`tumbling_update`; ``out`` needs ``len(chan) * hopping_slots(window_s, hop_s)``
    rows. A reading whose window was already closed is counted late (once).
    """
    scale, nw, nh = _grid(window_s, hop_s)
    m = 0
    k = (state.shape[1] - 1) // HOP_SLOT
    for i in range(chan.shape[0]):
        x = val[i]
        if x != x:
            continue
        c = chan[i]
        row = state[c]
        t = ts[i]
        m = _emit_due(c, row, t, out, m)
        newest = max(row[-1], t)
        row[-1] = newest
        first, last = _hop_range(t, window_s, hop_s, scale, nw, nh)
        late = False
        for b in range(first, last + 1):
            end = _end(b, nh, nw, scale)
            if end <= newest:
                late = True
                continue
            start = _edge(b, nh, scale)
            j = b % k
            s = row[j * HOP_SLOT : (j + 1) * HOP_SLOT]
            if s[S_COUNT] > 0 and s[S_START] != start:
                late = True
                continue
            _fold(s, start, x)
            s[H_END] = end
        if late:
            row[S_LATE] += 1.0
    return m


@kernel
def hopping_flush(watermark, window_s, state, out):
    """Close every hopping window ending at or before ``watermark``; return rows written."""
    m = 0
    for c in range(state.shape[0]):
        m = _emit_due(c, state[c], watermark, out, m)
    return m
