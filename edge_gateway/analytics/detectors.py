"""Per-sample anomaly detectors, each scoring a reading in [0, 1], and the fused kernel.

Every detector is a per-sample *step* (state table and channel in, score out;
``s[c, k]`` is field ``k`` of channel ``c``) plus a batch kernel that loops over
``chan``/``ts``/``val``. Steps are inlined into their callers at Numba-IR level
(:func:`hot`) and index the 2-D table directly: a row view would cost two
atomic reference-count updates per reading. :func:`detect` fuses every
detector, the weighted maximum and the event hysteresis in one pass. It walks
the batch as runs of consecutive readings of one channel and keeps that
channel's novelty, flatline, dropout, event and deadband state in local
variables over the run (written back once per run), through the scalar forms
of the steps (:func:`novelty_local`, :func:`flat_local`, :func:`drop_local`,
:func:`range_novelty_local`, :func:`phase_bin_local`: state in, ``(score,
state)`` out) that the table forms wrap, so the fused path and the
one-detector path cannot drift apart. The scalar forms take no array on
purpose: an inlined helper with an array argument inside a branch left an
``NRT_incref``/``NRT_decref`` call pair per reading in the fused loop (Numba's
reference-count pruning does not remove it). A reading is always scored
against the state *before* it is folded in. NaN readings score 0 and leave the
state untouched.

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
from .layout import (  # noqa: F401 - re-exported: callers index state tables by these
    DETECTOR_NAMES, N_DETECTORS, D_EWMA, D_ROBUST, D_RATE, D_CUSUM, D_RANGE, D_FLAT, D_DROP, D_NOV, GUARDS,
    NOV_FEATURES, NOV_NF, NOV_MAX_BINS, NS_N, NS_PREV, NS_SHORT, NS_HOLD, NS_NR, NS_VOL, NS_LONG, NS_BIN,
    NS_BIN_LO, NS_BIN_HI, NS_PEAK, NS_F0, NS_SEAS, NOVELTY_WIDTH, EWMA_WIDTH, ROBUST_WIDTH, RATE_WIDTH,
    CUSUM_WIDTH, FLAT_WIDTH, DROP_WIDTH, STATE_WIDTHS, P_EWMA_ALPHA, P_EWMA_WARMUP, P_EWMA_HALF, P_ROB_ETA,
    P_ROB_CLIP, P_ROB_WARMUP, P_ROB_FLOOR, P_ROB_HALF, P_RATE_ETA, P_RATE_CLIP, P_RATE_WARMUP, P_RATE_HALF,
    P_CUSUM_ETA, P_CUSUM_CLIP, P_CUSUM_WARMUP, P_CUSUM_K, P_CUSUM_H, P_RANGE_LO, P_RANGE_HI, P_FLAT_EPS,
    P_FLAT_MIN_RUN, P_FLAT_ALPHA, P_DROP_K, P_DROP_ETA, P_DROP_CLIP, P_NOV_WARMUP, P_NOV_HOLD, P_NOV_LEVEL,
    P_NOV_HALF, P_NOV_A_SHORT, P_NOV_A_SEASON, P_NOV_BINS, P_NOV_SEASON_WARMUP, P_NOV_A_VOL, P_NOV_A_LONG,
    P_NOV_SEASON_NORM, P_NOV_A_SPREAD, P_NOV_SPREAD_FLOOR, P_NOV_BIN_WARMUP, P_NOV_BYPASS, P_NOV_DECAY0,
    P_NOV_W0, P_GUARD_LEVEL, P_EVENT_THRESHOLD, P_EVENT_CLOSE, P_W0, P_NOV_LONG_MODE, P_NOV_SEASON_MATURE,
    P_NOV_HALF_SEASON, P_NOV_HALF_VOL, P_NOV_SEASON_SMOOTH, P_NOV_REFRACT_INV, P_NOV_REFRACT_DAMP,
    P_NOV_SEASON_FLOOR, P_NOV_SHIFT_FLOOR, P_NOV_VOL_SEASON, P_NOV_VALUE_GATE, N_PARAMS, P_AFTER_NORM, P_W_NOV,
    SPEC_NOV0, SPEC_NOV1, SPEC_NOV2, SPEC_NOV3, SPEC_NOV4, SPEC_NOV5, SPEC_NORM, SPEC_RANGE, SPEC_FLAT,
    SPEC_DROP, SPEC_VOL_SEASON, SPEC_VALUE_GATE, SPEC_NOV, SPEC_LONG_MODE, SPEC_MATURE, SPEC_SMOOTH, SPEC_REFRACT,
    SPEC_SHIFT_FLOOR, N_SPEC, SPEC_RUNTIME, EVENT_WIDTH, EVENT_FIELDS, E_OPEN, E_START, E_END,
    E_PEAK, E_PEAK_VAL, E_DOM, E_BELOW,
)

if _jit.HAVE_NUMBA and kernel.__module__ == _jit.__name__:
    from numba import njit as _njit

    def hot(fn):
        """A per-sample step: a kernel that Numba also inlines into its callers at IR level.

        An ordinary call would pass every array by reference count (atomic
        increments per reading) and block LLVM's optimisations across the call.
        """
        return _njit(cache=True, nogil=True, inline="always")(fn)

    from llvmlite import ir as _ir
    from numba.core import cgutils as _cgutils, types as _types
    from numba.extending import intrinsic as _intrinsic

    @_intrinsic
    def rare(typingctx, cond):
        """``cond``, with LLVM told it is rarely true.

        Without the hint LLVM if-converts a short branch, so the work guarded by a
        rare condition (a division) would run on every reading.
        """
        if not isinstance(cond, _types.Boolean):
            return None

        def codegen(context, builder, sig, args):
            i1 = _ir.IntType(1)
            fn = _cgutils.get_or_insert_function(builder.module, _ir.FunctionType(i1, [i1, i1]), "llvm.expect.i1")
            return builder.call(fn, [args[0], _ir.Constant(i1, 0)])

        return _types.boolean(cond), codegen

    @_intrinsic
    def known(typingctx, on, cond):
        """Tell LLVM that ``cond`` holds here (``llvm.assume``) when the switch ``on`` is True; else nothing.

        ``on`` is a :func:`spec_of` switch (None, True or a float), so the decision is made at compile
        time: a parameter's ``> 0`` test inside the loop then folds away with its branch.
        """
        if not isinstance(cond, _types.Boolean):
            return None

        def codegen(context, builder, sig, args):
            if isinstance(sig.args[0], _types.Boolean):
                i1 = _ir.IntType(1)
                fn = _cgutils.get_or_insert_function(builder.module, _ir.FunctionType(_ir.VoidType(), [i1]),
                                                     "llvm.assume")
                builder.call(fn, [args[1]])
            return context.get_dummy_value()

        return _types.none(on, cond), codegen
else:  # no Numba, or this is the pure-Python twin: the same as ``kernel``
    hot = kernel

    def rare(cond):
        """The identity (Numba's version only adds a branch hint)."""
        return cond

    def known(on, cond):
        """Nothing but a check (Numba's version tells LLVM that ``cond`` holds when ``on`` is True)."""
        assert on is not True or cond


def pure_module():
    """This module executed again with ``kernel`` = identity: every kernel *and* helper pure Python."""
    from ._pure import pure_twin

    return pure_twin(sys.modules[__name__])


def spec_of(p: tuple) -> tuple:
    """The ``spec`` of :func:`detect` for parameters ``p``: None for each part these parameters never use.

    A novelty feature, the seasonal normalisation, ``P_NOV_VOL_SEASON`` (also off without the season
    feature), ``P_NOV_VALUE_GATE``, the novelty detector's weight, ``P_NOV_LONG_MODE``,
    ``P_NOV_SEASON_MATURE``, ``P_NOV_SEASON_SMOOTH``, ``P_NOV_REFRACT_INV`` or ``P_NOV_SHIFT_FLOOR`` is
    off when its parameter is not > 0 (the only test the kernel applies to it), the range guard when its
    limits are infinite (it always scores 0), a guard's weighted score when its weight is 0 (it can never
    beat the running maximum). A part that is on is True: for those with a parameter, LLVM is told that
    it is > 0, so the loop does not test it for every reading.
    Each distinct spec is a distinct Numba type, so :func:`detect_spec` is compiled once per spec with
    the parts that are off gone from the loop.
    """
    def on(b):
        return True if b else None

    nov = tuple(on(p[P_NOV_W0 + k] > 0.0) for k in range(NOV_NF))
    return nov + (on(p[P_NOV_SEASON_NORM] > 0.0),
                  on(not (p[P_RANGE_LO] == -math.inf and p[P_RANGE_HI] == math.inf)),
                  on(p[P_W0 + D_FLAT] != 0.0), on(p[P_W0 + D_DROP] != 0.0),
                  on(p[P_NOV_VOL_SEASON] > 0.0 and p[P_NOV_W0 + 3] > 0.0), on(p[P_NOV_VALUE_GATE] > 0.0),
                  on(p[P_W0 + D_NOV] > 0.0), on(p[P_NOV_LONG_MODE] > 0.0), on(p[P_NOV_SEASON_MATURE] > 0.0),
                  on(p[P_NOV_SEASON_SMOOTH] > 0.0), on(p[P_NOV_REFRACT_INV] > 0.0), on(p[P_NOV_SHIFT_FLOOR] > 0.0))


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
    The standardised residual is clipped at ``clip`` like the location update, so a
    short loud burst (a passing truck, a bang) adds at most ``clip - k`` per reading
    and only a level that stays up reaches ``h``.
    """
    n = s[c, 2]
    loc = s[c, 0]
    spread = s[c, 1]
    huber_step(s, c, 0, x, eta, clip, warmup, 0.0)
    if n < warmup or spread <= 0.0:
        return 0.0
    u = min(max((x - loc) / spread, -clip), clip)
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
def flat_local(last, run, rate, n, x, eps, min_run, alpha):
    """:func:`flat_step` on state held in scalars: returns ``(score, last, run, rate, n)``."""
    if rare(n == 0.0):
        return 0.0, x, run, rate, 1.0
    if abs(x - last) <= eps:
        run = run + 1.0
        if run >= min_run:  # stuck: its repeats are learnt when it ends
            return 1.0 - rate, x, run, rate, n + 1.0
        return 0.0, x, run, rate + alpha * (1.0 - rate), n + 1.0
    if rare(run >= min_run):  # the repeats owed since the run reached min_run, at once
        rate = 1.0 - (1.0 - rate) * (1.0 - alpha) ** (run - min_run + 1.0)
    return 0.0, x, 0.0, rate + alpha * (0.0 - rate), n + 1.0


@hot
def flat_step(s, c, x, eps, min_run, alpha):
    """Stuck sensor: run of readings within ``eps`` of the previous; s = [last, run, repeat_rate, n].

    Scores ``1 - repeat_rate`` once the run reaches ``min_run``, so a channel
    that normally repeats itself (counters, quantised values) never alarms. The
    repeat rate (an EWMA) does not learn from a run while it lasts beyond
    ``min_run``: it takes those repeats in when the run ends, so a stuck sensor
    alarms for as long as it is stuck instead of teaching the guard that
    repeating is normal. No state field is needed: ``run - min_run + 1`` are owed.
    """
    g, s[c, 0], s[c, 1], s[c, 2], s[c, 3] = flat_local(s[c, 0], s[c, 1], s[c, 2], s[c, 3], x, eps, min_run, alpha)
    return g


@hot
def drop_local(last, typ, n, t, k, eta, clip):
    """:func:`drop_step` on state held in scalars: returns ``(score, last_t, typ, n)``."""
    if rare(n == 0.0):
        return 0.0, t, typ, 1.0
    gap = t - last
    if rare(gap <= 0.0):
        return 0.0, last, typ, n
    if rare(n == 1.0):  # a typical gap kept from before a restart (re-anchored: n = 0) is not relearnt
        return 0.0, t, gap if typ <= 0.0 else typ, n + 1.0
    score = 0.0
    if rare(gap > k * typ):
        score = 1.0 - k * typ / gap
    return score, t, typ + eta * (min(gap, clip * typ) - typ), n + 1.0


@hot
def drop_step(s, c, t, k, eta, clip):
    """Dropout: gap since the last reading vs ``k`` times the typical interval; s = [last_t, typ, n]."""
    g, s[c, 0], s[c, 1], s[c, 2] = drop_local(s[c, 0], s[c, 1], s[c, 2], t, k, eta, clip)
    return g


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
def range_novelty_local(lo, hi, f, ok, w, half, decay):
    """How far ``f`` falls outside the range [lo, hi] seen so far, weighted and squashed.

    Returns ``(w * e / (e + half), lo, hi)`` with ``e`` the excess over the range
    width (``w`` for any excess of an empty range), 0 inside it or when not ``ok``,
    and the range widened to include ``f`` then shrunk by ``decay`` of its
    width (toward its centre), so old extremes fade.
    """
    e = max(f - hi, lo - f)
    v = 0.0
    if e > 0.0 and ok:
        # = w * z / (z + half) with z = e / (hi - lo), and w for any excess over an empty range
        v = w * e / (e + half * (hi - lo) + 1e-300)
    lo = min(lo, f)
    hi = max(hi, f)
    shrink = decay * 0.5 * (hi - lo)
    return v, lo + shrink, hi - shrink


@hot
def floor_range(lo, hi, fl):
    """[lo, hi] widened to hold [-fl, fl] when ``fl > 0``, else unchanged.

    Written without a branch: ``min(lo, inf)`` is ``lo`` and ``max(hi, -inf)`` is ``hi`` for every
    float, NaN included, and a loop-invariant ``fl`` lets LLVM pick the bounds once per call (the
    branch cost the fused loop ~22 instructions a reading).
    """
    on = fl > 0.0
    return min(lo, -fl if on else math.inf), max(hi, fl if on else -math.inf)


@hot
def _range_novelty(s, c, o, f, ok, w, half, decay):
    """:func:`range_novelty_local` on the range ``s[o:o+2]`` = [lo, hi]."""
    v, s[c, o], s[c, o + 1] = range_novelty_local(s[c, o], s[c, o + 1], f, ok, w, half, decay)
    return v


@hot
def phase_bin_local(b0, lo, hi, t, bins):
    """Phase-of-day bin of epoch seconds ``t`` (UTC), in [0, bins): ``int((t mod 86400) * bins / 86400)``.

    ``b0`` is the cached bin and [lo, hi) its times: consecutive readings mostly
    fall in the same bin, and the divisions and rounding of the full computation
    cost more than the rest of the detector. Returns ``(bin, cached bin, lo, hi)``.
    """
    if lo <= t < hi:
        return int(b0), b0, lo, hi
    nb = int(bins)
    day = math.floor(t / 86400.0) * 86400.0
    b = min(max(int((t - day) * nb / 86400.0), 0), nb - 1)
    return b, float(b), day + b * 86400.0 / nb, day + (b + 1) * 86400.0 / nb


@hot
def _phase_bin(s, c, t, bins):
    """:func:`phase_bin_local` cached in ``s[NS_BIN:NS_BIN_HI+1]``."""
    b, s[c, NS_BIN], s[c, NS_BIN_LO], s[c, NS_BIN_HI] = phase_bin_local(s[c, NS_BIN], s[c, NS_BIN_LO],
                                                                        s[c, NS_BIN_HI], t, bins)
    return b


@hot
def novelty_load(s, c):
    """The scalar part of a channel's novelty state, ``s[c, :NS_SEAS]``, as a tuple (:func:`novelty_local`)."""
    return (s[c, 0], s[c, 1], s[c, 2], s[c, 3], s[c, 4], s[c, 5],
            s[c, 6], s[c, 7], s[c, 8], s[c, 9], s[c, 10], s[c, 11],
            s[c, 12], s[c, 13], s[c, 14], s[c, 15], s[c, 16], s[c, 17],
            s[c, 18], s[c, 19], s[c, 20], s[c, 21], s[c, 22])


@hot
def novelty_store(s, c, q):
    """Write a :func:`novelty_load` tuple back to ``s[c, :NS_SEAS]``."""
    s[c, 0] = q[0]
    s[c, 1] = q[1]
    s[c, 2] = q[2]
    s[c, 3] = q[3]
    s[c, 4] = q[4]
    s[c, 5] = q[5]
    s[c, 6] = q[6]
    s[c, 7] = q[7]
    s[c, 8] = q[8]
    s[c, 9] = q[9]
    s[c, 10] = q[10]
    s[c, 11] = q[11]
    s[c, 12] = q[12]
    s[c, 13] = q[13]
    s[c, 14] = q[14]
    s[c, 15] = q[15]
    s[c, 16] = q[16]
    s[c, 17] = q[17]
    s[c, 18] = q[18]
    s[c, 19] = q[19]
    s[c, 20] = q[20]
    s[c, 21] = q[21]
    s[c, 22] = q[22]


@hot
def season_cols(b):
    """Columns of phase bin ``b``'s day-profile mean, count and spread in the novelty table."""
    mi = NS_SEAS + b
    return mi, mi + NOV_MAX_BINS, mi + 2 * NOV_MAX_BINS


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
    divided by the bin's own EWMA of |residual|. Appended options:
    ``P_NOV_LONG_MODE`` makes the long feature the gap short EWMA - long EWMA
    (a level shift, a zero-centred feature); ``P_NOV_SEASON_SMOOTH`` blends the
    value toward its short EWMA before the day profile sees it (less noise in the
    residual); ``P_NOV_SEASON_MATURE`` = m makes the residual range shrink by
    ``decay * m / (m + residuals seen)``, forgetting less as it matures;
    ``P_NOV_HALF_SEASON``/``P_NOV_HALF_VOL`` give the season and volatility
    features their own squash half (0: ``P_NOV_HALF``). Once the score reaches
    ``P_NOV_LEVEL`` the channel is muted for ``P_NOV_HOLD`` readings (an anomaly
    is worth most at its first reading and repeats are false alarms), except for
    a score above ``P_NOV_BYPASS`` times the one that started the hold, so a
    small alarm cannot hide a big anomaly that follows it. After the hold, a
    refractory period: for ``nov_refract`` readings (``P_NOV_REFRACT_INV`` holds
    its inverse, 0: off) the score is multiplied by ``1 - P_NOV_REFRACT_DAMP *
    (1 - r / nov_refract)``, r readings since the hold ended (``hold`` counts
    on below 0 for that). Noise floors (0: off): the normalised season residual's range always
    holds [-``P_NOV_SEASON_FLOOR``, ``P_NOV_SEASON_FLOOR``] and, in ``P_NOV_LONG_MODE``, the
    level-shift range always holds +-``P_NOV_SHIFT_FLOOR`` times the volatility EWMA (tracked for
    it even when the volatility feature's weight is 0): a residual of a few bin spreads, or a gap
    between the EWMAs smaller than the usual reading-to-reading step, is noise however long the
    series has been quiet, so a shrinking range cannot re-arm on it. With ``P_NOV_VOL_SEASON`` (and
    the season feature on), the volatility EWMA takes in ``d - (m_b - m_prev)`` instead of the step
    ``d`` when that is smaller in size, ``m_b``/``m_prev`` the day profile's means in this reading's
    and the previous reading's bins: a jump the profile makes every day (a daily drop at 18:00) is not
    volatility, while a step the profile does not explain counts in full. With ``P_NOV_VALUE_GATE`` = k,
    a new extreme of the value closer to the short EWMA than k times the volatility EWMA (both before
    this reading; tracked for it whatever their weights) scores ``(|x - short| / (k * vol))**2`` of its
    score: a slow climb to a new level is not a spike. No per-file
    minimum, maximum or length: every range is learnt from the stream.
    s = [n, prev, short, hold, n_residuals, vol, long, bin, bin start, bin end, (lo, hi) x 6,
    bin means, bin counts, bin spreads].
    """
    q = novelty_load(s, c)
    b = 0
    pm = s[c, NS_SEAS + int(q[NS_BIN])]  # the day profile's mean in the previous reading's bin
    if p[P_NOV_W0 + 3] > 0.0:
        b, q = novelty_bin(q, t, p)
    mi, cnt, sp = season_cols(b)
    v, q, s[c, mi], s[c, cnt], s[c, sp] = novelty_local(t, x, p, q, s[c, mi], s[c, cnt], s[c, sp], s[c, mi] - pm)
    novelty_store(s, c, q)
    return v


@hot
def novelty_bin(q, t, p):
    """The phase-of-day bin of ``t`` and the novelty state tuple ``q`` with its bin cache updated."""
    (n, prev, short, hold, nres, vol, lng, b0, blo, bhi, peak,
     f0, f1, f2, f3, f4, f5, f6, f7, f8, f9, f10, f11) = q
    b, b0, blo, bhi = phase_bin_local(b0, blo, bhi, t, p[P_NOV_BINS])
    return b, (n, prev, short, hold, nres, vol, lng, b0, blo, bhi, peak,
            f0, f1, f2, f3, f4, f5, f6, f7, f8, f9, f10, f11)


@hot
def novelty_local(t, x, p, q, s_mean, s_cnt, s_spread, pstep):
    """:func:`novelty_step` on scalars: ``q`` is the state ``s[c, :NS_SEAS]`` (:func:`novelty_load`, its
    phase bin already updated by :func:`novelty_bin` when the season feature is on) and ``s_*`` the day
    profile's mean, count and spread in that bin, ``pstep`` that mean less the profile's mean in the
    previous reading's bin (0 in the same bin; used only by ``P_NOV_VOL_SEASON``).
    Returns ``(score, q, s_mean, s_cnt, s_spread)``.
    Taking no array, it lets :func:`detect` keep a channel's state in registers over a run of its
    readings (an array argument of an inlined helper costs reference-count calls per reading).
    """
    (n, prev, short, hold, nres, vol, lng, b0, blo, bhi, peak,
     f0, f1, f2, f3, f4, f5, f6, f7, f8, f9, f10, f11) = q
    if rare(n == 0.0):
        n = 1.0
        prev = x
        short = x
        lng = x
        f0 = x
        f1 = x
        f4 = x
        f5 = x
        if p[P_NOV_LONG_MODE] <= 0.0:
            f10 = x
            f11 = x
        if p[P_NOV_W0 + 3] > 0.0:
            s_mean = x
            s_cnt = 1.0
        return 0.0, (n, prev, short, hold, nres, vol, lng, b0, blo, bhi, peak,
            f0, f1, f2, f3, f4, f5, f6, f7, f8, f9, f10, f11), s_mean, s_cnt, s_spread
    d = x - prev
    prev = x
    dv = d
    if p[P_NOV_VOL_SEASON] > 0.0 and p[P_NOV_W0 + 3] > 0.0:
        if rare(pstep != 0.0) and s_cnt > 0.0:  # only at a change of phase bin
            # the step less the day profile's own step since the previous reading, when that is smaller:
            # a day profile's regular jump (a daily drop at 18:00) is not volatility
            ds = d - pstep
            if abs(ds) < abs(d):
                dv = ds
    ok = n >= p[P_NOV_WARMUP]
    half = p[P_NOV_HALF]
    out = 0.0
    w = p[P_NOV_W0]
    if w > 0.0:
        gate = 1.0
        k = p[P_NOV_VALUE_GATE]
        if k > 0.0 and rare(x > f1 or x < f0):
            # a new extreme only a few usual steps from the short EWMA (a slow climb) scores less
            g = abs(x - short)
            if g < k * vol:
                g = g / (k * vol)
                gate = g * g
        out, f0, f1 = range_novelty_local(f0, f1, x, ok, w, half, p[P_NOV_DECAY0])
        if k > 0.0:
            out = out * gate
    w = p[P_NOV_W0 + 1]
    if w > 0.0:
        v, f2, f3 = range_novelty_local(f2, f3, d, ok, w, half, p[P_NOV_DECAY0 + 1])
        out = max(out, v)
    w = p[P_NOV_W0 + 2]
    if w > 0.0 or p[P_NOV_LONG_MODE] > 0.0 or p[P_NOV_SEASON_SMOOTH] > 0.0 or p[P_NOV_VALUE_GATE] > 0.0:
        short = short + p[P_NOV_A_SHORT] * (x - short)
        if w > 0.0:
            v, f4, f5 = range_novelty_local(f4, f5, short, ok, w, half, p[P_NOV_DECAY0 + 2])
            out = max(out, v)
    w = p[P_NOV_W0 + 3]
    if w > 0.0:
        nb_seen = s_cnt
        xs = x + p[P_NOV_SEASON_SMOOTH] * (short - x)  # the value, or partly its short EWMA
        if nb_seen > 0.0:
            r = xs - s_mean
            f = r
            if p[P_NOV_SEASON_NORM] > 0.0:
                scale = max(s_spread, p[P_NOV_SPREAD_FLOOR] * (f1 - f0))
                f = r / scale if scale > 0.0 else 0.0
                s_spread += p[P_NOV_A_SPREAD] * (abs(r) - s_spread)
            s_mean += p[P_NOV_A_SEASON] * r
            s_cnt = nb_seen + 1.0
            if nb_seen >= p[P_NOV_BIN_WARMUP]:
                nr = nres
                nres = nr + 1.0
                if rare(nr == 0.0):
                    f6 = f
                    f7 = f
                else:
                    decay = p[P_NOV_DECAY0 + 3]
                    m = p[P_NOV_SEASON_MATURE]
                    if m > 0.0:  # the residual range forgets more slowly as it matures
                        decay = decay * m / (m + nr)
                    hs = p[P_NOV_HALF_SEASON]
                    f6, f7 = floor_range(f6, f7, p[P_NOV_SEASON_FLOOR])
                    v, f6, f7 = range_novelty_local(f6, f7, f, nr >= p[P_NOV_SEASON_WARMUP], w,
                                                    hs if hs > 0.0 else half, decay)
                    out = max(out, v)
        else:
            s_mean = xs
            s_cnt = 1.0
    w = p[P_NOV_W0 + 4]
    if w > 0.0 or p[P_NOV_SHIFT_FLOOR] > 0.0 or p[P_NOV_VALUE_GATE] > 0.0:
        vol = vol + p[P_NOV_A_VOL] * (abs(dv) - vol)
        if w > 0.0:
            hv = p[P_NOV_HALF_VOL]
            v, f8, f9 = range_novelty_local(f8, f9, vol, ok, w, hv if hv > 0.0 else half, p[P_NOV_DECAY0 + 4])
            out = max(out, v)
    w = p[P_NOV_W0 + 5]
    if w > 0.0:
        lng = lng + p[P_NOV_A_LONG] * (x - lng)
        f = lng
        if p[P_NOV_LONG_MODE] > 0.0:  # the gap between the short and the long EWMA: a level shift
            f = short - lng
            f10, f11 = floor_range(f10, f11, p[P_NOV_SHIFT_FLOOR] * vol)  # a gap under the usual step is noise
        v, f10, f11 = range_novelty_local(f10, f11, f, ok, w, half, p[P_NOV_DECAY0 + 5])
        out = max(out, v)
    n = n + 1.0
    hold -= 1.0  # below 0: -hold readings since the last hold ended
    if hold >= 0.0:
        if not out > p[P_NOV_BYPASS] * peak:
            return 0.0, (n, prev, short, hold, nres, vol, lng, b0, blo, bhi, peak,
            f0, f1, f2, f3, f4, f5, f6, f7, f8, f9, f10, f11), s_mean, s_cnt, s_spread
    elif peak > 0.0 and p[P_NOV_REFRACT_INV] > 0.0:
        # refractory: for nov_refract readings after a hold, scores are damped, by nov_refract_damp at
        # its end, fading linearly to 0 (follow-up alarms of a detected anomaly are false alarms)
        g = 1.0 + hold * p[P_NOV_REFRACT_INV]
        if g > 0.0:
            out = out * (1.0 - p[P_NOV_REFRACT_DAMP] * g)
    if rare(out >= p[P_NOV_LEVEL]):
        hold = p[P_NOV_HOLD]
        peak = out
    return out, (n, prev, short, hold, nres, vol, lng, b0, blo, bhi, peak,
            f0, f1, f2, f3, f4, f5, f6, f7, f8, f9, f10, f11), s_mean, s_cnt, s_spread


@kernel
def novelty_score(chan, ts, val, p, state, score):
    """:func:`novelty_step` over a batch (``p`` in the fused ``P_*`` layout).

    Like :func:`detect`, it keeps a channel's scalar state in locals over a run of its readings.
    """
    n = chan.shape[0]
    w_season = p[P_NOV_W0 + 3]
    i = 0
    while i < n:
        c = chan[i]
        q = novelty_load(state, c)
        while i < n and chan[i] == c:
            x = val[i]
            if x != x:
                score[i] = 0.0
            else:
                t = ts[i]
                b = 0
                pm = state[c, NS_SEAS + int(q[NS_BIN])]
                if w_season > 0.0:
                    b, q = novelty_bin(q, t, p)
                mi, cnt, sp = season_cols(b)
                score[i], q, state[c, mi], state[c, cnt], state[c, sp] = novelty_local(
                    t, x, p, q, state[c, mi], state[c, cnt], state[c, sp], state[c, mi] - pm)
            i += 1
        novelty_store(state, c, q)


@hot
def _switch(v, on):
    """``v``, or 0.0 when the switch ``on`` is None (then a constant for LLVM); known > 0 when ``on`` is True."""
    known(on, v > 0.0)
    return v if on is not None else 0.0


@hot
def _sign(v, on):
    """``v``, known > 0 when the switch ``on`` is True, unchanged when off: the parameter is also used as a
    number, and 0.0 in place of a -0.0 could flip the sign of a zero result."""
    known(on, v > 0.0)
    return v


@hot
def spec_params(p, sp):
    """``p`` with the parameters switched off in ``sp`` (see :func:`spec_of`) replaced by 0.0, those switched
    on known > 0."""
    return (p[:P_NOV_SEASON_NORM] + (_switch(p[P_NOV_SEASON_NORM], sp[SPEC_NORM]),)
            + p[P_AFTER_NORM:P_NOV_W0]
            + (_switch(p[P_NOV_W0], sp[SPEC_NOV0]), _switch(p[P_NOV_W0 + 1], sp[SPEC_NOV1]),
               _switch(p[P_NOV_W0 + 2], sp[SPEC_NOV2]), _switch(p[P_NOV_W0 + 3], sp[SPEC_NOV3]),
               _switch(p[P_NOV_W0 + 4], sp[SPEC_NOV4]), _switch(p[P_NOV_W0 + 5], sp[SPEC_NOV5]))
            + p[P_GUARD_LEVEL:P_W_NOV]
            + (_switch(p[P_W_NOV], sp[SPEC_NOV]), _switch(p[P_NOV_LONG_MODE], sp[SPEC_LONG_MODE]),
               _switch(p[P_NOV_SEASON_MATURE], sp[SPEC_MATURE]))
            + p[P_NOV_HALF_SEASON:P_NOV_SEASON_SMOOTH]
            + (_sign(p[P_NOV_SEASON_SMOOTH], sp[SPEC_SMOOTH]), _switch(p[P_NOV_REFRACT_INV], sp[SPEC_REFRACT]))
            + p[P_NOV_REFRACT_DAMP:P_NOV_SHIFT_FLOOR]
            + (_switch(p[P_NOV_SHIFT_FLOOR], sp[SPEC_SHIFT_FLOOR]), _switch(p[P_NOV_VOL_SEASON], sp[SPEC_VOL_SEASON]),
               _switch(p[P_NOV_VALUE_GATE], sp[SPEC_VALUE_GATE])))
    # (P_NOV_VALUE_GATE is the last parameter: a parameter appended after it must be added here)


@kernel
def detect(chan, ts, val, p, start, st_ewma, st_rob, st_rate, st_cusum, st_flat, st_drop, st_nov, st_ev,
           out, dominant, events, db_band=-1.0, db_heartbeat=0.0, st_db=None, emit=None, spec=None):
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
    caller resumes from ``next_row`` with an emptied buffer (a negative ``start``
    counts as 0). Readings are processed in order; only the write-back of state is
    batched per run of one channel. ``spec`` (:func:`spec_of`) compiles out the
    parts these parameters never use; omitted, all run, with every test at run time.
    """
    if spec is None:
        return detect_spec(chan, ts, val, p, start, st_ewma, st_rob, st_rate, st_cusum, st_flat, st_drop, st_nov,
                           st_ev, out, dominant, events, db_band, db_heartbeat, st_db, emit, SPEC_RUNTIME)
    return detect_spec(chan, ts, val, p, start, st_ewma, st_rob, st_rate, st_cusum, st_flat, st_drop, st_nov,
                       st_ev, out, dominant, events, db_band, db_heartbeat, st_db, emit, spec)


@kernel
def detect_spec(chan, ts, val, p, start, st_ewma, st_rob, st_rate, st_cusum, st_flat, st_drop, st_nov, st_ev,
                out, dominant, events, db_band, db_heartbeat, st_db, emit, sp):
    """:func:`detect` with its switches ``sp`` given (:func:`spec_of`), compiled once per distinct ``sp`` type.

    The chain calls it directly: going through :func:`detect` would compile the loop twice (LLVM
    inlines it into the wrapper).
    """
    p = spec_params(p, sp)
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
    w_season = p[P_NOV_W0 + 3]
    i = max(start, 0)  # known >= 0, so no array access pays for negative-index wraparound
    n = chan.shape[0]
    while i < n:
        # one run of readings of channel c: its state stays in locals (registers) over the run
        c = chan[i]
        q_nov = novelty_load(st_nov, c)
        fl_last, fl_run, fl_rate, fl_n = st_flat[c, 0], st_flat[c, 1], st_flat[c, 2], st_flat[c, 3]
        dr_last, dr_typ, dr_n = st_drop[c, 0], st_drop[c, 1], st_drop[c, 2]
        e_open, e_start, e_end = st_ev[c, E_OPEN], st_ev[c, E_START], st_ev[c, E_END]
        e_peak, e_peak_val, e_dom, e_below = st_ev[c, E_PEAK], st_ev[c, E_PEAK_VAL], st_ev[c, E_DOM], st_ev[c, E_BELOW]
        sb = -1
        pm0 = 0.0
        if sp[SPEC_VOL_SEASON] is not None:
            pm0 = st_nov[c, NS_SEAS + int(q_nov[NS_BIN])]
        s_mean = 0.0
        s_cnt = 0.0
        s_spread = 0.0
        db_x = 0.0
        db_t = 0.0
        db_seen = 0.0
        if emit is not None:
            db_x, db_t, db_seen = st_db[c, 0], st_db[c, 1], st_db[c, 2]
        full = False
        while i < n and chan[i] == c:
            x = val[i]
            if rare(x != x):
                out[i] = 0.0
                dominant[i] = -1
                if emit is not None:
                    emit[i] = False
                i += 1
                continue
            t = ts[i]
            if emit is not None:
                send = db_seen == 0.0 or abs(x - db_x) > db_band or abs(t - db_t) >= db_heartbeat
                emit[i] = send
                if send:
                    db_x = x
                    db_t = t
                    db_seen = 1.0
            best = 0.0
            arg = -1
            if st_ewma is not None:
                if w_ewma > 0.0:
                    v = w_ewma * ewma_step(st_ewma, c, x, p[P_EWMA_ALPHA], p[P_EWMA_WARMUP], p[P_EWMA_HALF])
                    if v > best:
                        best = v
                        arg = D_EWMA
            if st_rob is not None:
                if w_rob > 0.0:
                    z = huber_step(st_rob, c, 0, x, p[P_ROB_ETA], p[P_ROB_CLIP], p[P_ROB_WARMUP], p[P_ROB_FLOOR])
                    v = w_rob * squash(z, p[P_ROB_HALF])
                    if v > best:
                        best = v
                        arg = D_ROBUST
            if st_rate is not None:
                if w_rate > 0.0:
                    v = w_rate * rate_step(st_rate, c, t, x, p[P_RATE_ETA], p[P_RATE_CLIP], p[P_RATE_WARMUP],
                                           p[P_RATE_HALF])
                    if v > best:
                        best = v
                        arg = D_RATE
            if st_cusum is not None:
                if w_cusum > 0.0:
                    v = w_cusum * cusum_step(st_cusum, c, x, p[P_CUSUM_ETA], p[P_CUSUM_CLIP], p[P_CUSUM_WARMUP],
                                             p[P_CUSUM_K], p[P_CUSUM_H])
                    if v > best:
                        best = v
                        arg = D_CUSUM
            if w_nov > 0.0:
                b = 0
                if w_season > 0.0:
                    b, q_nov = novelty_bin(q_nov, t, p)
                pstep = 0.0  # the profile's step from the previous reading's bin (P_NOV_VOL_SEASON)
                if rare(b != sb):
                    pm = pm0  # the profile's mean in the previous reading's bin
                    if sb >= 0:
                        pm = s_mean
                        mi, cnt, sd = season_cols(sb)
                        st_nov[c, mi], st_nov[c, cnt], st_nov[c, sd] = s_mean, s_cnt, s_spread
                    mi, cnt, sd = season_cols(b)
                    s_mean, s_cnt, s_spread = st_nov[c, mi], st_nov[c, cnt], st_nov[c, sd]
                    sb = b
                    if sp[SPEC_VOL_SEASON] is not None:
                        pstep = s_mean - pm
                g, q_nov, s_mean, s_cnt, s_spread = novelty_local(t, x, p, q_nov, s_mean, s_cnt, s_spread,
                                                                  pstep)
                v = w_nov * g
                if v > best:
                    best = v
                    arg = D_NOV
            # guards: always run; their raw score can open an event by itself
            gbest = 0.0
            garg = D_RANGE
            if sp[SPEC_RANGE] is not None:
                g = range_step(x, p[P_RANGE_LO], p[P_RANGE_HI])
                gbest = g
                v = w_range * g
                if v > best:
                    best = v
                    arg = D_RANGE
            g, fl_last, fl_run, fl_rate, fl_n = flat_local(fl_last, fl_run, fl_rate, fl_n, x, p[P_FLAT_EPS],
                                                           p[P_FLAT_MIN_RUN], p[P_FLAT_ALPHA])
            if g > gbest:
                gbest = g
                garg = D_FLAT
            if sp[SPEC_FLAT] is not None:
                v = w_flat * g
                if v > best:
                    best = v
                    arg = D_FLAT
            g, dr_last, dr_typ, dr_n = drop_local(dr_last, dr_typ, dr_n, t, p[P_DROP_K], p[P_DROP_ETA],
                                                  p[P_DROP_CLIP])
            if g > gbest:
                gbest = g
                garg = D_DROP
            if sp[SPEC_DROP] is not None:
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
                if e_open == 0.0:
                    e_open = 1.0
                    e_start = t
                    e_end = t
                    e_peak = -1.0
                elif t > e_end:  # a reading stamped earlier never moves the end back
                    e_end = t
                e_below = 0.0
                if ev > e_peak:
                    e_peak = ev
                    e_peak_val = x
                    e_dom = float(evarg)
            elif e_open != 0.0:
                e_below += 1.0
                if rare(e_below >= close_after):
                    events[m, 0] = c
                    events[m, 1] = e_start
                    events[m, 2] = e_end
                    events[m, 3] = e_peak
                    events[m, 4] = e_peak_val
                    events[m, 5] = e_dom
                    m += 1
                    e_open = 0.0
                    e_below = 0.0
                    if m == cap:
                        full = True
                        break
        novelty_store(st_nov, c, q_nov)
        if sb >= 0:
            mi, cnt, sd = season_cols(sb)
            st_nov[c, mi], st_nov[c, cnt], st_nov[c, sd] = s_mean, s_cnt, s_spread
        st_flat[c, 0], st_flat[c, 1], st_flat[c, 2], st_flat[c, 3] = fl_last, fl_run, fl_rate, fl_n
        st_drop[c, 0], st_drop[c, 1], st_drop[c, 2] = dr_last, dr_typ, dr_n
        st_ev[c, E_OPEN], st_ev[c, E_START], st_ev[c, E_END] = e_open, e_start, e_end
        st_ev[c, E_PEAK], st_ev[c, E_PEAK_VAL], st_ev[c, E_DOM], st_ev[c, E_BELOW] = e_peak, e_peak_val, e_dom, e_below
        if emit is not None:
            st_db[c, 0], st_db[c, 1], st_db[c, 2] = db_x, db_t, db_seen
        if full:
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
                s[E_END] = ts[i]
                s[E_PEAK] = -1.0
            elif ts[i] > s[E_END]:
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
