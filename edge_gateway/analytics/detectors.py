"""Per-sample anomaly detectors, each scoring a reading in [0, 1], and the fused kernel.

Every detector is a per-sample *step* (state table and channel in, score out;
``s[c, k]`` is field ``k`` of channel ``c``) plus a batch kernel that loops over
``chan``/``ts``/``val``. Steps are inlined into their callers at Numba-IR level
(:func:`hot`) and index the 2-D table directly: a row view would cost two
atomic reference-count updates per reading. :func:`detect` fuses every
detector, the weighted maximum and the event hysteresis in one pass; it calls
the very same step functions, so the fused path and the one-detector path
cannot drift apart. A reading is always scored against the state *before* it
is folded in. NaN readings score 0 and leave the state untouched.

All hot code (steps, batch kernels, :func:`detect`) lives in this one module on
purpose: Numba's ``cache=True`` keys a compiled kernel on its own source file
only, so a helper imported from another module could be served stale from the
cache after an edit. :func:`pure_module` re-executes this file with ``kernel``
as the identity, giving an honestly pure-Python twin (helpers included).

Two families of detectors share the fused pass (see :mod:`.ensemble` for how
they are combined):

* **product guards** -- ``range`` (hard limits), ``flatline`` (stuck sensor),
  ``dropout`` (timestamp gap): always computed, and they open events on their
  own (``guard_level``) whatever their weight in the combined score.
* **statistical detectors** -- ``ewma`` z, ``robust`` (Huber/MAD-style z),
  ``rate`` (rate of change), ``cusum`` and ``novelty``, the NAB-tuned streaming
  novelty detector (:func:`novelty_step`). They feed the combined score through
  their weights; a weight of 0 skips the detector (its state is not updated).

Spread estimates are Huber-style: a residual is clipped at ``clip`` times the
current spread before it updates the location and the spread, so one spike
barely moves them while a level shift is absorbed within a few hundred samples.
"""

from __future__ import annotations

import math
import sys

import numpy as np

from . import _jit
from ._jit import kernel

if _jit.HAVE_NUMBA and kernel.__module__ == _jit.__name__:
    from numba import njit as _njit

    def hot(fn):
        """A per-sample step: a kernel that Numba also inlines into its callers at IR level.

        An ordinary call would pass every array by reference count (atomic
        increments per reading) and block LLVM's optimisations across the call.
        """
        return _njit(cache=True, nogil=True, inline="always")(fn)
else:  # no Numba, or this is the pure-Python twin: the same as ``kernel``
    hot = kernel

DETECTOR_NAMES = ("ewma", "robust", "rate", "cusum", "range", "flatline", "dropout", "novelty")
N_DETECTORS = len(DETECTOR_NAMES)
D_EWMA, D_ROBUST, D_RATE, D_CUSUM, D_RANGE, D_FLAT, D_DROP, D_NOV = range(N_DETECTORS)
GUARDS = (D_RANGE, D_FLAT, D_DROP)

# novelty detector: features tracked for "outside the range seen so far"
NOV_FEATURES = ("value", "diff", "short", "season", "vol", "long")
NOV_NF = len(NOV_FEATURES)
NOV_MAX_BINS = 96
(NS_N, NS_PREV, NS_SHORT, NS_HOLD, NS_NR, NS_VOL, NS_LONG, NS_BIN, NS_BIN_LO, NS_BIN_HI, NS_PEAK) = range(11)
NS_F0 = 11
NS_SEAS = NS_F0 + 2 * NOV_NF
NOVELTY_WIDTH = NS_SEAS + 3 * NOV_MAX_BINS

EWMA_WIDTH = 3
ROBUST_WIDTH = 3
RATE_WIDTH = 6
CUSUM_WIDTH = 5
FLAT_WIDTH = 4
DROP_WIDTH = 3
STATE_WIDTHS = {
    "ewma": EWMA_WIDTH,
    "robust": ROBUST_WIDTH,
    "rate": RATE_WIDTH,
    "cusum": CUSUM_WIDTH,
    "flatline": FLAT_WIDTH,
    "dropout": DROP_WIDTH,
    "novelty": NOVELTY_WIDTH,
}

# parameter vector of the fused kernel and of the novelty detector
(
    P_EWMA_ALPHA, P_EWMA_WARMUP, P_EWMA_HALF,
    P_ROB_ETA, P_ROB_CLIP, P_ROB_WARMUP, P_ROB_FLOOR, P_ROB_HALF,
    P_RATE_ETA, P_RATE_CLIP, P_RATE_WARMUP, P_RATE_HALF,
    P_CUSUM_ETA, P_CUSUM_CLIP, P_CUSUM_WARMUP, P_CUSUM_K, P_CUSUM_H,
    P_RANGE_LO, P_RANGE_HI,
    P_FLAT_EPS, P_FLAT_MIN_RUN, P_FLAT_ALPHA,
    P_DROP_K, P_DROP_ETA, P_DROP_CLIP,
    P_NOV_WARMUP, P_NOV_HOLD, P_NOV_LEVEL, P_NOV_HALF, P_NOV_A_SHORT, P_NOV_A_SEASON, P_NOV_BINS,
    P_NOV_SEASON_WARMUP, P_NOV_A_VOL, P_NOV_A_LONG,
    P_NOV_SEASON_NORM, P_NOV_A_SPREAD, P_NOV_SPREAD_FLOOR, P_NOV_BIN_WARMUP, P_NOV_BYPASS,
    P_NOV_DECAY0,
) = range(41)
P_NOV_W0 = P_NOV_DECAY0 + NOV_NF
P_GUARD_LEVEL = P_NOV_W0 + NOV_NF
P_EVENT_THRESHOLD = P_GUARD_LEVEL + 1
P_EVENT_CLOSE = P_EVENT_THRESHOLD + 1
P_W0 = P_EVENT_CLOSE + 1
N_PARAMS = P_W0 + N_DETECTORS

EVENT_WIDTH = 7
EVENT_FIELDS = ("channel", "start", "end", "peak_score", "peak_value", "detector")
E_OPEN, E_START, E_END, E_PEAK, E_PEAK_VAL, E_DOM, E_BELOW = range(EVENT_WIDTH)


def pure_module():
    """This module executed again with ``kernel`` = identity: every kernel *and* helper pure Python."""
    from ._pure import pure_twin

    return pure_twin(sys.modules[__name__])


def new_state(name: str, n_channels: int) -> np.ndarray:
    """Zeroed state for detector ``name``: zero means "no reading seen yet"."""
    return np.zeros((n_channels, STATE_WIDTHS[name]), dtype=np.float64)


@hot
def squash(z, half):
    """Map a non-negative z to [0, 1): ``z / (z + half)``; inf maps to 1."""
    if not z > 0.0:
        return 0.0
    if z == math.inf:
        return 1.0
    return z / (z + half)


@hot
def huber_step(s, c, o, x, eta, clip, warmup, floor_rel):
    """Score ``x`` as |x - loc| / spread on ``s[o:o+3]`` = [loc, spread, n]; return z."""
    n = s[c, o + 2]
    if n == 0.0:
        s[c, o] = x
        s[c, o + 1] = 0.0
        s[c, o + 2] = 1.0
        return 0.0
    loc = s[c, o]
    sc = s[c, o + 1]
    spread = max(sc, floor_rel * abs(loc))
    d = x - loc
    z = 0.0
    if n >= warmup:
        if spread > 0.0:
            z = abs(d) / spread
        elif d != 0.0:
            z = math.inf
    dc = d
    if spread > 0.0:
        lim = clip * spread
        dc = min(max(d, -lim), lim)
    s[c, o] = loc + eta * dc
    s[c, o + 1] = sc + eta * (abs(dc) - sc)
    s[c, o + 2] = n + 1.0
    return z


@hot
def ewma_step(s, c, x, alpha, warmup, half):
    """EWMA z-score of ``x`` (same recurrence as :mod:`.ewma`), squashed."""
    if s[c, 2] == 0.0:
        s[c, 0] = x
        s[c, 1] = 0.0
        s[c, 2] = 1.0
        return 0.0
    d = x - s[c, 0]
    z = 0.0
    if s[c, 2] >= warmup:
        sd = math.sqrt(s[c, 1])
        if sd > 0.0:
            z = abs(d) / sd
        elif d != 0.0:
            z = math.inf
    s[c, 0] += alpha * d
    s[c, 1] = (1.0 - alpha) * (s[c, 1] + alpha * d * d)
    s[c, 2] += 1.0
    return squash(z, half)


@hot
def rate_step(s, c, t, x, eta, clip, warmup, half):
    """Robust z of the rate of change; s = [last, last_t, loc, spread, n, seen]."""
    if s[c, 5] == 0.0:
        s[c, 0] = x
        s[c, 1] = t
        s[c, 5] = 1.0
        return 0.0
    dt = t - s[c, 1]
    r = (x - s[c, 0]) / dt if dt > 0.0 else 0.0
    s[c, 0] = x
    s[c, 1] = t
    if dt <= 0.0:
        return 0.0
    return squash(huber_step(s, c, 2, r, eta, clip, warmup, 0.0), half)


@hot
def cusum_step(s, c, x, eta, clip, warmup, k, h):
    """Two-sided CUSUM of the robust residual; s = [loc, spread, n, s_hi, s_lo].

    The sums restart after crossing ``h`` and the reference jumps to the new
    level, so a level shift fires once and a drift fires every ``h / k``-ish samples.
    """
    n = s[c, 2]
    loc = s[c, 0]
    spread = s[c, 1]
    huber_step(s, c, 0, x, eta, clip, warmup, 0.0)
    if n < warmup or spread <= 0.0:
        return 0.0
    u = (x - loc) / spread
    hi = max(0.0, s[c, 3] + u - k)
    lo = max(0.0, s[c, 4] - u - k)
    stat = max(hi, lo)
    if stat >= h:
        hi = 0.0
        lo = 0.0
        s[c, 0] = x
    s[c, 3] = hi
    s[c, 4] = lo
    return stat / (stat + h)


@hot
def range_step(x, lo, hi):
    """1 outside the hard limits [lo, hi], else 0."""
    return 1.0 if (x < lo or x > hi) else 0.0


@hot
def flat_step(s, c, x, eps, min_run, alpha):
    """Stuck sensor: run of readings within ``eps`` of the previous; s = [last, run, repeat_rate, n].

    Scores ``1 - repeat_rate`` once the run reaches ``min_run``, so a channel
    that normally repeats itself (counters, quantised values) never alarms.
    """
    if s[c, 3] == 0.0:
        s[c, 0] = x
        s[c, 3] = 1.0
        return 0.0
    same = 1.0 if abs(x - s[c, 0]) <= eps else 0.0
    rate = s[c, 2]
    run = s[c, 1] + 1.0 if same > 0.0 else 0.0
    s[c, 0] = x
    s[c, 1] = run
    s[c, 2] = rate + alpha * (same - rate)
    s[c, 3] += 1.0
    if run >= min_run:
        return 1.0 - rate
    return 0.0


@hot
def drop_step(s, c, t, k, eta, clip):
    """Dropout: gap since the last reading vs ``k`` times the typical interval; s = [last_t, typ, n]."""
    n = s[c, 2]
    if n == 0.0:
        s[c, 0] = t
        s[c, 2] = 1.0
        return 0.0
    gap = t - s[c, 0]
    if gap <= 0.0:
        return 0.0
    s[c, 0] = t
    s[c, 2] = n + 1.0
    typ = s[c, 1]
    if n == 1.0:
        s[c, 1] = gap
        return 0.0
    score = 0.0
    if gap > k * typ:
        score = 1.0 - k * typ / gap
    s[c, 1] = typ + eta * (min(gap, clip * typ) - typ)
    return score


@kernel
def ewma_score(chan, val, alpha, warmup, half, state, score):
    for i in range(chan.shape[0]):
        x = val[i]
        score[i] = 0.0 if x != x else ewma_step(state, chan[i], x, alpha, warmup, half)


@kernel
def robust_score(chan, val, eta, clip, warmup, floor_rel, half, state, score):
    for i in range(chan.shape[0]):
        x = val[i]
        if x != x:
            score[i] = 0.0
            continue
        z = huber_step(state, chan[i], 0, x, eta, clip, warmup, floor_rel)
        score[i] = squash(z, half)


@kernel
def rate_score(chan, ts, val, eta, clip, warmup, half, state, score):
    for i in range(chan.shape[0]):
        x = val[i]
        score[i] = 0.0 if x != x else rate_step(state, chan[i], ts[i], x, eta, clip, warmup, half)


@kernel
def cusum_score(chan, val, eta, clip, warmup, k, h, state, score):
    for i in range(chan.shape[0]):
        x = val[i]
        score[i] = 0.0 if x != x else cusum_step(state, chan[i], x, eta, clip, warmup, k, h)


@kernel
def range_score(chan, val, lo, hi, score):
    for i in range(chan.shape[0]):
        x = val[i]
        score[i] = 0.0 if x != x else range_step(x, lo, hi)


@kernel
def flat_score(chan, val, eps, min_run, alpha, state, score):
    for i in range(chan.shape[0]):
        x = val[i]
        score[i] = 0.0 if x != x else flat_step(state, chan[i], x, eps, min_run, alpha)


@kernel
def drop_score(chan, ts, val, k, eta, clip, state, score):
    for i in range(chan.shape[0]):
        x = val[i]
        score[i] = 0.0 if x != x else drop_step(state, chan[i], ts[i], k, eta, clip)


@hot
def _range_novelty(s, c, o, f, ok, w, half, decay):
    """How far ``f`` falls outside the range ``s[o:o+2]`` = [lo, hi] seen so far, weighted and squashed.

    Returns ``w * e / (e + half)`` with ``e`` the excess over the range width
    (``w`` for any excess of an empty range), 0 inside it or when not ``ok``.
    Then widens the range to include ``f`` and shrinks it by ``decay`` of its
    width (toward its centre), so old extremes fade.
    """
    lo = s[c, o]
    hi = s[c, o + 1]
    e = max(f - hi, lo - f)
    v = 0.0
    if e > 0.0 and ok:
        # = w * z / (z + half) with z = e / (hi - lo), and w for any excess over an empty range
        v = w * e / (e + half * (hi - lo) + 1e-300)
    lo = min(lo, f)
    hi = max(hi, f)
    shrink = decay * 0.5 * (hi - lo)
    s[c, o] = lo + shrink
    s[c, o + 1] = hi - shrink
    return v


@hot
def _phase_bin(s, c, t, bins):
    """Phase-of-day bin of epoch seconds ``t`` (UTC), in [0, bins): ``int((t mod 86400) * bins / 86400)``.

    The bin and its [start, end) times are cached in ``s[NS_BIN:NS_BIN_HI+1]``:
    consecutive readings mostly fall in the same bin, and the divisions and
    rounding of the full computation cost more than the rest of the detector.
    """
    if s[c, NS_BIN_LO] <= t < s[c, NS_BIN_HI]:
        return int(s[c, NS_BIN])
    nb = int(bins)
    day = math.floor(t / 86400.0) * 86400.0
    b = min(max(int((t - day) * nb / 86400.0), 0), nb - 1)
    s[c, NS_BIN] = b
    s[c, NS_BIN_LO] = day + b * 86400.0 / nb
    s[c, NS_BIN_HI] = day + (b + 1) * 86400.0 / nb
    return b


@hot
def novelty_step(s, c, t, x, p):
    """Streaming novelty: is ``x`` (or a feature of the recent past) beyond anything seen so far?

    Six features, each with its own [lo, hi] range (``NOV_FEATURES``): the value,
    its first difference, a short EWMA of it, its residual against the same
    phase of the day (``P_NOV_BINS`` phase bins per day from the timestamp,
    each an EWMA of the value there: a daily profile, no period estimate needed),
    an EWMA of |difference| (volatility) and a long EWMA. The score is the
    largest weighted :func:`_range_novelty` of the features after ``P_NOV_WARMUP``
    readings (season: ``P_NOV_SEASON_WARMUP`` residuals); a feature of weight 0
    is not tracked at all. With ``P_NOV_SEASON_NORM`` the seasonal residual is
    divided by the bin's own EWMA of |residual| (off by default: no gain on the
    NAB tuning split). Once the score reaches
    ``P_NOV_LEVEL`` the channel is muted for ``P_NOV_HOLD`` readings (an anomaly
    is worth most at its first reading and repeats are false alarms), except for
    a score above ``P_NOV_BYPASS`` times the one that started the hold, so a
    small alarm cannot hide a big anomaly that follows it. No per-file
    minimum, maximum or length: every range is learnt from the stream.
    s = [n, prev, short, hold, n_residuals, vol, long, bin, bin start, bin end, (lo, hi) x 6,
    bin means, bin counts, bin spreads].
    """
    n = s[c, NS_N]
    if n == 0.0:
        s[c, NS_N] = 1.0
        s[c, NS_PREV] = x
        s[c, NS_SHORT] = x
        s[c, NS_LONG] = x
        s[c, NS_F0] = x
        s[c, NS_F0 + 1] = x
        s[c, NS_F0 + 4] = x
        s[c, NS_F0 + 5] = x
        s[c, NS_F0 + 10] = x
        s[c, NS_F0 + 11] = x
        if p[P_NOV_W0 + 3] > 0.0:
            b = _phase_bin(s, c, t, p[P_NOV_BINS])
            s[c, NS_SEAS + b] = x
            s[c, NS_SEAS + NOV_MAX_BINS + b] = 1.0
        return 0.0
    d = x - s[c, NS_PREV]
    s[c, NS_PREV] = x
    ok = n >= p[P_NOV_WARMUP]
    half = p[P_NOV_HALF]
    out = 0.0
    w = p[P_NOV_W0]
    if w > 0.0:
        out = _range_novelty(s, c, NS_F0, x, ok, w, half, p[P_NOV_DECAY0])
    w = p[P_NOV_W0 + 1]
    if w > 0.0:
        out = max(out, _range_novelty(s, c, NS_F0 + 2, d, ok, w, half, p[P_NOV_DECAY0 + 1]))
    w = p[P_NOV_W0 + 2]
    if w > 0.0:
        sh = s[c, NS_SHORT] + p[P_NOV_A_SHORT] * (x - s[c, NS_SHORT])
        s[c, NS_SHORT] = sh
        out = max(out, _range_novelty(s, c, NS_F0 + 4, sh, ok, w, half, p[P_NOV_DECAY0 + 2]))
    w = p[P_NOV_W0 + 3]
    if w > 0.0:
        b = _phase_bin(s, c, t, p[P_NOV_BINS])
        mi = NS_SEAS + b
        cnt = NS_SEAS + NOV_MAX_BINS + b
        sp = NS_SEAS + 2 * NOV_MAX_BINS + b
        nb_seen = s[c, cnt]
        if nb_seen > 0.0:
            r = x - s[c, mi]
            f = r
            if p[P_NOV_SEASON_NORM] > 0.0:
                scale = max(s[c, sp], p[P_NOV_SPREAD_FLOOR] * (s[c, NS_F0 + 1] - s[c, NS_F0]))
                f = r / scale if scale > 0.0 else 0.0
                s[c, sp] += p[P_NOV_A_SPREAD] * (abs(r) - s[c, sp])
            s[c, mi] += p[P_NOV_A_SEASON] * r
            s[c, cnt] = nb_seen + 1.0
            if nb_seen >= p[P_NOV_BIN_WARMUP]:
                nr = s[c, NS_NR]
                s[c, NS_NR] = nr + 1.0
                if nr == 0.0:
                    s[c, NS_F0 + 6] = f
                    s[c, NS_F0 + 7] = f
                else:
                    out = max(out, _range_novelty(s, c, NS_F0 + 6, f, nr >= p[P_NOV_SEASON_WARMUP], w, half,
                                                  p[P_NOV_DECAY0 + 3]))
        else:
            s[c, mi] = x
            s[c, cnt] = 1.0
    w = p[P_NOV_W0 + 4]
    if w > 0.0:
        vol = s[c, NS_VOL] + p[P_NOV_A_VOL] * (abs(d) - s[c, NS_VOL])
        s[c, NS_VOL] = vol
        out = max(out, _range_novelty(s, c, NS_F0 + 8, vol, ok, w, half, p[P_NOV_DECAY0 + 4]))
    w = p[P_NOV_W0 + 5]
    if w > 0.0:
        lg = s[c, NS_LONG] + p[P_NOV_A_LONG] * (x - s[c, NS_LONG])
        s[c, NS_LONG] = lg
        out = max(out, _range_novelty(s, c, NS_F0 + 10, lg, ok, w, half, p[P_NOV_DECAY0 + 5]))
    s[c, NS_N] = n + 1.0
    if s[c, NS_HOLD] > 0.0:
        s[c, NS_HOLD] -= 1.0
        if not out > p[P_NOV_BYPASS] * s[c, NS_PEAK]:
            return 0.0
    if out >= p[P_NOV_LEVEL]:
        s[c, NS_HOLD] = p[P_NOV_HOLD]
        s[c, NS_PEAK] = out
    return out


@kernel
def novelty_score(chan, ts, val, p, state, score):
    """:func:`novelty_step` over a batch (``p`` in the fused ``P_*`` layout)."""
    for i in range(chan.shape[0]):
        x = val[i]
        score[i] = 0.0 if x != x else novelty_step(state, chan[i], ts[i], x, p)


@kernel
def detect(chan, ts, val, p, start, st_ewma, st_rob, st_rate, st_cusum, st_flat, st_drop, st_nov, st_ev,
           out, dominant, events, db_band=-1.0, db_heartbeat=0.0, st_db=None, emit=None):
    """Every detector, the weighted maximum and event hysteresis in one pass, from row ``start``.

    ``out[i]`` is the combined score (weighted max, in [0, 1]) and ``dominant[i]``
    its detector index (-1 when 0). Detectors of weight 0 are skipped, except the
    guards (range, flatline, dropout), which always run: an event opens when the
    combined score reaches ``P_EVENT_THRESHOLD`` *or* a guard's own score reaches
    ``P_GUARD_LEVEL``, and closes after ``P_EVENT_CLOSE`` readings below both.
    Closed events go to ``events`` (``EVENT_FIELDS`` rows). Given ``emit``,
    it also runs the deadband filter on the raw value (``st_db``/``emit`` as in
    :func:`.filters.deadband`), saving the chain a second pass. Returns
    ``(next_row, n_events)``: it stops early when ``events`` is full, so the
    caller resumes from ``next_row`` with an emptied buffer.
    """
    m = 0
    cap = events.shape[0]
    thr = p[P_EVENT_THRESHOLD]
    glevel = p[P_GUARD_LEVEL]
    close_after = p[P_EVENT_CLOSE]
    w_ewma = p[P_W0 + D_EWMA]
    w_rob = p[P_W0 + D_ROBUST]
    w_rate = p[P_W0 + D_RATE]
    w_cusum = p[P_W0 + D_CUSUM]
    w_range = p[P_W0 + D_RANGE]
    w_flat = p[P_W0 + D_FLAT]
    w_drop = p[P_W0 + D_DROP]
    w_nov = p[P_W0 + D_NOV]
    i = start
    n = chan.shape[0]
    while i < n:
        x = val[i]
        c = chan[i]
        if x != x:
            out[i] = 0.0
            dominant[i] = -1
            if emit is not None:
                emit[i] = False
            i += 1
            continue
        t = ts[i]
        if emit is not None:
            send = st_db[c, 2] == 0.0 or abs(x - st_db[c, 0]) > db_band or t - st_db[c, 1] >= db_heartbeat
            emit[i] = send
            if send:
                st_db[c, 0] = x
                st_db[c, 1] = t
                st_db[c, 2] = 1.0
        best = 0.0
        arg = -1
        if w_ewma > 0.0:
            v = w_ewma * ewma_step(st_ewma, c, x, p[P_EWMA_ALPHA], p[P_EWMA_WARMUP], p[P_EWMA_HALF])
            if v > best:
                best = v
                arg = D_EWMA
        if w_rob > 0.0:
            z = huber_step(st_rob, c, 0, x, p[P_ROB_ETA], p[P_ROB_CLIP], p[P_ROB_WARMUP], p[P_ROB_FLOOR])
            v = w_rob * squash(z, p[P_ROB_HALF])
            if v > best:
                best = v
                arg = D_ROBUST
        if w_rate > 0.0:
            v = w_rate * rate_step(st_rate, c, t, x, p[P_RATE_ETA], p[P_RATE_CLIP], p[P_RATE_WARMUP],
                                   p[P_RATE_HALF])
            if v > best:
                best = v
                arg = D_RATE
        if w_cusum > 0.0:
            v = w_cusum * cusum_step(st_cusum, c, x, p[P_CUSUM_ETA], p[P_CUSUM_CLIP], p[P_CUSUM_WARMUP],
                                     p[P_CUSUM_K], p[P_CUSUM_H])
            if v > best:
                best = v
                arg = D_CUSUM
        if w_nov > 0.0:
            v = w_nov * novelty_step(st_nov, c, t, x, p)
            if v > best:
                best = v
                arg = D_NOV
        # guards: always run; their raw score can open an event by itself
        g = range_step(x, p[P_RANGE_LO], p[P_RANGE_HI])
        gbest = g
        garg = D_RANGE
        v = w_range * g
        if v > best:
            best = v
            arg = D_RANGE
        g = flat_step(st_flat, c, x, p[P_FLAT_EPS], p[P_FLAT_MIN_RUN], p[P_FLAT_ALPHA])
        if g > gbest:
            gbest = g
            garg = D_FLAT
        v = w_flat * g
        if v > best:
            best = v
            arg = D_FLAT
        g = drop_step(st_drop, c, t, p[P_DROP_K], p[P_DROP_ETA], p[P_DROP_CLIP])
        if g > gbest:
            gbest = g
            garg = D_DROP
        v = w_drop * g
        if v > best:
            best = v
            arg = D_DROP
        out[i] = best
        dominant[i] = arg
        # event hysteresis
        ev = -1.0
        evarg = -1
        if best >= thr:
            ev = best
            evarg = arg
        if gbest >= glevel and gbest > ev:
            ev = gbest
            evarg = garg
        i += 1
        if ev >= 0.0:
            if st_ev[c, E_OPEN] == 0.0:
                st_ev[c, E_OPEN] = 1.0
                st_ev[c, E_START] = t
                st_ev[c, E_PEAK] = -1.0
            st_ev[c, E_END] = t
            st_ev[c, E_BELOW] = 0.0
            if ev > st_ev[c, E_PEAK]:
                st_ev[c, E_PEAK] = ev
                st_ev[c, E_PEAK_VAL] = x
                st_ev[c, E_DOM] = evarg
        elif st_ev[c, E_OPEN] != 0.0:
            st_ev[c, E_BELOW] += 1.0
            if st_ev[c, E_BELOW] >= close_after:
                events[m, 0] = c
                events[m, 1] = st_ev[c, E_START]
                events[m, 2] = st_ev[c, E_END]
                events[m, 3] = st_ev[c, E_PEAK]
                events[m, 4] = st_ev[c, E_PEAK_VAL]
                events[m, 5] = st_ev[c, E_DOM]
                m += 1
                st_ev[c, E_OPEN] = 0.0
                st_ev[c, E_BELOW] = 0.0
                if m == cap:
                    return i, m
    return i, m


@kernel
def events_update(chan, ts, val, score, dominant, threshold, close_after, state, out):
    """Hysteresis on a precomputed score: open at ``score >= threshold``, close after
    ``close_after`` readings below it (the same rule :func:`detect` applies inline).

    Writes one row per closed event to ``out`` (``EVENT_FIELDS`` order, detector
    as its index) and returns the number of rows. The end of an event is the
    time of its last reading at or above the threshold.
    """
    m = 0
    for i in range(chan.shape[0]):
        c = chan[i]
        s = state[c]
        v = score[i]
        if v >= threshold:
            if s[E_OPEN] == 0.0:
                s[E_OPEN] = 1.0
                s[E_START] = ts[i]
                s[E_PEAK] = -1.0
            s[E_END] = ts[i]
            s[E_BELOW] = 0.0
            if v > s[E_PEAK]:
                s[E_PEAK] = v
                s[E_PEAK_VAL] = val[i]
                s[E_DOM] = dominant[i]
        elif s[E_OPEN] != 0.0:
            s[E_BELOW] += 1.0
            if s[E_BELOW] >= close_after:
                out[m, 0] = c
                out[m, 1] = s[E_START]
                out[m, 2] = s[E_END]
                out[m, 3] = s[E_PEAK]
                out[m, 4] = s[E_PEAK_VAL]
                out[m, 5] = s[E_DOM]
                m += 1
                s[E_OPEN] = 0.0
                s[E_BELOW] = 0.0
    return m
