"""Round 9 prototypes (tuning split only): "a state never seen before" features, screened post hoc.

The brief's feature (``occ``): per channel a grid of (level bin, volatility bin) cells, the level bin the short
EWMA's place in the value's all-time [lo, hi], the volatility bin the volatility EWMA's place in its own range
(linear) or the log2 of its ratio to the all-time mean |step|; a reading entering a cell seen never (or in at
most ``rare`` of the readings) scores ``w`` after the warm-up. Also screened: the occupancy share as a damper or
booster (``suppress``), how rare the missed windows' cells are (``occ-rank``), an ARTime-like shape code
(``shape``), (volatility, jump) and (hour, level) occupancy (``voljump``, ``day``), the jump in volatility units,
record calm spells and record runs of near-repeats as range features (``zstep``, ``calm``, ``run``,
``quantum-run``); ``paired-run`` (not run by default) pairs the run record over nab_tune's 60 fixed moves.
Each feature's stream is max-combined with the kernel's raw novelty stream (``nov_hold`` 0), the kernel's hold
is replayed (checked bit-equal to the kernel without the feature; bench/nab_posthoc.py) and the threshold
re-optimised. The held-out categories are never loaded.

    PYTHONPATH=. .venv/bin/python bench/nab_occ.py [--start JSON] [occ occ-rank suppress shape voljump zstep calm run
        quantum-run day paired-run]
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import math
import sys
from pathlib import Path

import numpy as np
from numba import njit

sys.path.insert(0, str(Path(__file__).resolve().parent))
import nab_posthoc as PH


@njit(cache=False)
def occ_stream(x, warm, nbl, nbv, a_short, a_vol, vmode, vscale, a_ref, rare, w, grade, start_count):
    n = x.shape[0]
    out = np.zeros(n)
    cnt = np.zeros(nbl * nbv)
    lo = x[0]
    hi = x[0]
    short = x[0]
    prev = x[0]
    vol = 0.0
    vlo = math.inf
    vhi = -math.inf
    ref = 0.0
    nref = 0.0
    for i in range(1, n):
        xi = x[i]
        d = xi - prev
        prev = xi
        lo = min(lo, xi)
        hi = max(hi, xi)
        short += a_short * (xi - short)
        vol += a_vol * (abs(d) - vol)
        # the reference for the log volatility: cumulative mean of |d| (a_ref 0) or a slow EWMA
        nref += 1.0
        if a_ref > 0.0:
            ref += (a_ref if nref * a_ref > 1.0 else 1.0 / nref) * (abs(d) - ref)
        else:
            ref += (abs(d) - ref) / nref
        if i >= 50:
            vlo = min(vlo, vol)
            vhi = max(vhi, vol)
        if hi > lo:
            lb = int((short - lo) / (hi - lo) * nbl)
        else:
            lb = 0
        lb = min(max(lb, 0), nbl - 1)
        if vmode == 0:
            vb = int((vol - vlo) / (vhi - vlo) * nbv) if vhi > vlo else 0
        else:
            if ref > 0.0 and vol > 0.0:
                vb = math.floor(math.log2(vol / ref) * vscale) + nbv // 2
            elif vol > 0.0:
                vb = nbv - 1
            else:
                vb = 0
        vb = min(max(vb, 0), nbv - 1)
        cell = lb * nbv + vb
        if i < start_count:
            continue
        if i >= warm:
            c = cnt[cell]
            if c <= rare * i:
                if grade > 0:
                    # graded by the distance (cells, Chebyshev) to the nearest visited cell
                    best = 99
                    for a in range(nbl):
                        for b in range(nbv):
                            if cnt[a * nbv + b] > rare * i:
                                dd = max(abs(a - lb), abs(b - vb))
                                best = min(best, dd)
                    out[i] = w * min(1.0, best / grade)
                else:
                    out[i] = w
        cnt[cell] += 1.0
    return out


def detections(streams, labels, thr):
    """Per file: (set of windows hit, list of FP rows)."""
    res = []
    for x, lab in zip(streams, labels):
        hit, fps = set(), []
        for i in np.flatnonzero(x >= thr):
            if i < lab.probation:
                continue
            w = int(lab.window[i])
            if w < 0:
                fps.append(int(i))
            else:
                hit.add(w)
        res.append((hit, fps))
    return res


def windows_of(lab):
    b = {}
    for i, w in enumerate(lab.window):
        if w >= 0:
            b.setdefault(int(w), [i, i])[1] = i
    return b


@njit(cache=False)
def rng_score(f, lo, hi, ok, w, half):
    e = max(f - hi, lo - f)
    if e > 0.0 and ok:
        return w * e / (e + half * (hi - lo) + 1e-300)
    return 0.0


@njit(cache=False)
def run_stream(x, warm, eps_rel, w, half, min_rec):
    """The length of the current run of repeated values (|step| <= eps_rel x the value range) against the
    longest run so far: a record scores like a range feature."""
    n = x.shape[0]
    out = np.zeros(n)
    lo = x[0]
    hi = x[0]
    run = 0.0
    rec = 0.0
    for i in range(1, n):
        d = abs(x[i] - x[i - 1])
        if d <= eps_rel * (hi - lo):
            run += 1.0
        else:
            run = 0.0
        lo = min(lo, x[i])
        hi = max(hi, x[i])
        if i >= warm and rec >= min_rec:
            out[i] = rng_score(run, 0.0, rec, True, w, half)
        rec = max(rec, run)
    return out


@njit(cache=False)
def zstep_stream(x, warm, a_short, a_vol, w, half, mode, zwarm):
    """The reading's distance from the short EWMA (mode 0) or its step (mode 1) in units of the volatility
    EWMA before it, against that ratio's all-time range."""
    n = x.shape[0]
    out = np.zeros(n)
    short = x[0]
    vol = 0.0
    zlo = math.inf
    zhi = -math.inf
    for i in range(1, n):
        d = x[i] - x[i - 1]
        g = (x[i] - short) if mode == 0 else d
        z = g / vol if vol > 0.0 else 0.0
        if i >= zwarm:
            if i >= warm and zhi > zlo:
                out[i] = rng_score(z, zlo, zhi, True, w, half)
            zlo = min(zlo, z)
            zhi = max(zhi, z)
        short += a_short * (x[i] - short)
        vol += a_vol * (abs(d) - vol)
    return out


@njit(cache=False)
def calm_stream(x, warm, k, mode, a_ref, a_vol, w, half, min_rec):
    """The length of the current calm spell against the longest so far (a record scores like a range
    feature). Calm: the step (mode 0) or the volatility EWMA (mode 1) at most k x the reference step size,
    the all-time mean |step| (a_ref 0) or a slow EWMA of it."""
    n = x.shape[0]
    out = np.zeros(n)
    run = 0.0
    rec = 0.0
    ref = 0.0
    vol = 0.0
    for i in range(1, n):
        d = abs(x[i] - x[i - 1])
        vol += a_vol * (d - vol)
        g = d if mode == 0 else vol
        if g <= k * ref:
            run += 1.0
        else:
            run = 0.0
        if a_ref > 0.0 and i * a_ref > 1.0:
            ref += a_ref * (d - ref)
        else:
            ref += (d - ref) / i
        if i >= warm and rec >= min_rec:
            out[i] = rng_score(run, 0.0, rec, True, w, half)
        rec = max(rec, run)
    return out


@njit(cache=False)
def shape_stream(x, warm, D, L, B, w, mode, rare):
    """ARTime-like: every D readings the block mean's bin among B bins of the value's all-time range
    (mode 0) or of the block-to-block change's sign/size (mode 1); the last L bins form a code; a code
    seen never (or in <= rare of the blocks) before scores w (after the warm-up)."""
    n = x.shape[0]
    out = np.zeros(n)
    ncode = B ** L
    cnt = np.zeros(ncode)
    lo = x[0]
    hi = x[0]
    acc = 0.0
    k = 0
    code = 0
    nb = 0
    prevm = x[0]
    dmax = 0.0
    for i in range(n):
        lo = min(lo, x[i])
        hi = max(hi, x[i])
        acc += x[i]
        k += 1
        if k < D:
            continue
        m = acc / D
        acc = 0.0
        k = 0
        if mode == 0:
            b = int((m - lo) / (hi - lo) * B) if hi > lo else 0
        else:
            dm = m - prevm
            dmax = max(dmax, abs(dm))
            # B bins symmetric in the change relative to the largest change so far (sqrt scale)
            z = dm / dmax if dmax > 0.0 else 0.0
            z = math.copysign(math.sqrt(abs(z)), z)
            b = int((z + 1.0) * 0.5 * B)
        prevm = m
        b = min(max(b, 0), B - 1)
        code = (code * B + b) % ncode
        nb += 1
        if nb < L:
            continue
        if i >= warm and cnt[code] <= rare * nb:
            out[i] = w
        cnt[code] += 1.0
    return out


@njit(cache=False)
def voljump_stream(x, warm, a_short, a_vol, nb, scale, w, rare):
    """Occupancy of (log volatility EWMA, log |x - short EWMA|), both before the reading and relative to
    the all-time mean |step|: a jump of this size at this volatility never seen before scores w."""
    n = x.shape[0]
    out = np.zeros(n)
    cnt = np.zeros(nb * nb)
    short = x[0]
    vol = 0.0
    ref = 0.0
    for i in range(1, n):
        d = abs(x[i] - x[i - 1])
        g = abs(x[i] - short)
        if ref > 0.0:
            a = math.floor(math.log2(vol / ref + 1e-12) * scale) + nb // 2
            b = math.floor(math.log2(g / ref + 1e-12) * scale) + nb // 2
            a = min(max(a, 0), nb - 1)
            b = min(max(b, 0), nb - 1)
            c = a * nb + b
            if i >= warm and cnt[c] <= rare * i:
                out[i] = w
            cnt[c] += 1.0
        ref += (d - ref) / i
        short += a_short * (x[i] - short)
        vol += a_vol * (d - vol)
    return out


@njit(cache=False)
def occ_frac(x, nbl, nbv, a_short, a_vol, vmode, vscale):
    """Per reading: the share of earlier readings spent in this reading's (level, volatility) cell."""
    n = x.shape[0]
    out = np.zeros(n)
    cnt = np.zeros(nbl * nbv)
    lo = x[0]
    hi = x[0]
    short = x[0]
    vol = 0.0
    vlo = math.inf
    vhi = -math.inf
    ref = 0.0
    for i in range(1, n):
        d = abs(x[i] - x[i - 1])
        lo = min(lo, x[i])
        hi = max(hi, x[i])
        short += a_short * (x[i] - short)
        vol += a_vol * (d - vol)
        ref += (d - ref) / i
        if i >= 50:
            vlo = min(vlo, vol)
            vhi = max(vhi, vol)
        lb = int((short - lo) / (hi - lo) * nbl) if hi > lo else 0
        lb = min(max(lb, 0), nbl - 1)
        if vmode == 0:
            vb = int((vol - vlo) / (vhi - vlo) * nbv) if vhi > vlo else 0
        else:
            vb = math.floor(math.log2(vol / ref + 1e-12) * vscale) + nbv // 2 if ref > 0.0 else 0
        vb = min(max(vb, 0), nbv - 1)
        c = lb * nbv + vb
        out[i] = cnt[c] / i
        cnt[c] += 1.0
    return out


@njit(cache=False)
def quantum_run_stream(x, warm, q, w, half, min_rec):
    """The current run of readings each within q x the data's resolution (the smallest nonzero |step|
    seen so far) of the previous, against the longest such run so far."""
    n = x.shape[0]
    out = np.zeros(n)
    run = 0.0
    rec = 0.0
    m = math.inf
    for i in range(1, n):
        d = abs(x[i] - x[i - 1])
        if d > 0.0 and d < m:
            m = d
        if d <= q * m:
            run += 1.0
        else:
            run = 0.0
        if i >= warm and rec >= min_rec:
            out[i] = rng_score(run, 0.0, rec, True, w, half)
        rec = max(rec, run)
    return out


@njit(cache=False)
def dayocc_stream(x, t, warm, nh, nl, use_short, a_short, w, min_bin, nbr):
    """Occupancy of (hour-of-day bin, level bin of the value (or its short EWMA) in its all-time range): a
    reading in a cell never visited, in an hour bin visited at least min_bin times, scores w. nbr 1: a
    cell next to a visited one in the same hour bin does not count (level-bin jitter)."""
    n = x.shape[0]
    out = np.zeros(n)
    cnt = np.zeros(nh * nl)
    hcnt = np.zeros(nh)
    lo = x[0]
    hi = x[0]
    short = x[0]
    for i in range(n):
        lo = min(lo, x[i])
        hi = max(hi, x[i])
        short += a_short * (x[i] - short)
        f = short if use_short else x[i]
        lb = int((f - lo) / (hi - lo) * nl) if hi > lo else 0
        lb = min(max(lb, 0), nl - 1)
        h = int((t[i] % 86400.0) / 86400.0 * nh)
        h = min(max(h, 0), nh - 1)
        c = h * nl + lb
        if i >= warm and hcnt[h] >= min_bin and cnt[c] == 0.0:
            ok = True
            if nbr > 0:
                if lb > 0 and cnt[c - 1] > 0.0:
                    ok = False
                if lb < nl - 1 and cnt[c + 1] > 0.0:
                    ok = False
            if ok:
                out[i] = w
        cnt[c] += 1.0
        hcnt[h] += 1.0
    return out


class Screen:
    """The tuning split, the kernel's scores at ``start`` (the reference) and its raw stream (``nov_hold`` 0)."""

    def __init__(self, start: dict):
        self.sp = sp = PH.Split(start)
        self.s = s = sp.s
        windows = PH.nab.load_windows("/work/shared/nab/labels/combined_windows.json")
        self.names = [n.split("/")[1][:-4] for n in sorted(windows) if n.split("/")[0] in PH.T.TUNING_SPLIT]
        kern = sp.run(s)
        self.ref = sp.score(kern)
        self.raws = sp.run(dataclasses.replace(s, nov_hold=0.0))
        if not all(np.array_equal(a, b) for a, b in zip(sp.hold(self.raws), kern)):
            raise SystemExit("the replayed hold differs from the kernel's")
        det = detections(kern, sp.labels, self.ref["threshold"])
        self.missed = [(k, w, a, b) for k, (lab, (hit, _)) in enumerate(zip(sp.labels, det))
                       for w, (a, b) in sorted(windows_of(lab).items()) if w not in hit]
        _chan, ts, val, spans = sp.data
        self.vals = [np.ascontiguousarray(val[x]) for x in spans]
        self.ts = [np.ascontiguousarray(ts[x]) for x in spans]
        print(f"start {self.ref['score']:.2f} (threshold {self.ref['threshold']:.4f}); missed windows: "
              + ", ".join(f"{self.names[k]} {w} [{a}, {b}]" for k, w, a, b in self.missed), flush=True)

    def show(self, label, feat, raws=None, level=None):
        """The feature max-combined with the raw stream, the hold replayed, the threshold re-optimised: the change
        in the standard score, the feature's episodes (nonzero, or >= level; readings > 100 apart) after
        probation outside and inside windows, and the missed windows where it is nonzero (>= level)."""
        sp = self.sp
        raws = self.raws if raws is None else raws
        r = sp.score(sp.hold([np.ascontiguousarray(np.maximum(a, f)) for a, f in zip(raws, feat)]))
        lv = 1e-12 if level is None else level
        out = inw = 0
        for f, lab in zip(feat, sp.labels):
            nz = np.flatnonzero(f[lab.probation:] >= lv) + lab.probation
            ep = [i for j, i in enumerate(nz) if j == 0 or i - nz[j - 1] > 100]
            out += sum(1 for i in ep if lab.window[i] < 0)
            inw += sum(1 for i in ep if lab.window[i] >= 0)
        reach = [f"{self.names[k][:24]} {w}" for k, w, a, b in self.missed if feat[k][a:b + 1].max() >= lv]
        print(f"{label}: {r['score'] - self.ref['score']:+.2f} (threshold {r['threshold']:.4f}); episodes outside "
              f"windows {out}, inside {inw}; missed windows reached: {reach or 'none'}", flush=True)
        return r["score"] - self.ref["score"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--start", default="{}", help="JSON of DetectorSettings fields (field or field.index)")
    ap.add_argument("screens", nargs="*", default=["occ", "occ-rank", "suppress", "shape", "voljump", "zstep", "calm",
                                                   "run", "quantum-run", "day"])
    args = ap.parse_args()
    S = Screen(json.loads(args.start))
    s, V = S.s, S.vals
    warm, a_s, a_v = s.nov_warmup, s.nov_short_alpha, s.nov_vol_alpha
    if "occ" in args.screens:  # the brief's feature: a never (or rarely) visited (level, volatility) cell
        for nb, vmode, vscale, rare in itertools.product([4, 6, 8, 12, 16], [0, 1], [1.0, 2.0], [0.0, 0.001, 0.005]):
            if vmode == 0 and vscale != 1.0:
                continue
            S.show(f"occ {nb}x{nb} vol {'lin' if vmode == 0 else f'log2 x{vscale}'} rare {rare}",
                   [occ_stream(v, warm, nb, nb, a_s, a_v, vmode, vscale, 0.0, rare, 0.3, 0, 0) for v in V])
        for nb, grade in itertools.product([8, 16], [2, 3]):
            S.show(f"occ {nb}x{nb} vol log2 graded by the distance to a visited cell / {grade}",
                   [occ_stream(v, warm, nb, nb, a_s, a_v, 1, 1.0, 0.0, 0.0, 0.3, grade, 0) for v in V])
    if "occ-rank" in args.screens:  # how rare the missed windows' cells are
        for nb, vmode, vscale in [(8, 0, 1.0), (8, 1, 1.0), (16, 1, 2.0), (4, 1, 1.0)]:
            for k, w, a, b in S.missed:
                f = occ_frac(V[k], nb, nb, a_s, a_v, vmode, vscale)
                lab = S.sp.labels[k]
                idx = np.arange(int(warm), len(f))
                idx = idx[lab.window[idx] < 0]
                m = f[a:b + 1].min()
                print(f"occ-rank {nb}x{nb} vmode {vmode} x{vscale} {S.names[k]} window {w}: least-visited cell holds "
                      f"{m:.4f} of earlier readings; {np.mean(f[idx] <= m):.3f} of the file's readings outside windows "
                      f"after warm-up are in a cell as rare or rarer", flush=True)
    if "suppress" in args.screens:  # occupancy as a damper: score x (1 - a min(1, share / o0)), or booster
        best = []
        for nb, vmode in [(4, 0), (6, 0), (8, 0), (12, 0), (4, 1), (8, 1), (12, 1)]:
            occ = [occ_frac(v, nb, nb, a_s, a_v, vmode, 1.0) for v in V]
            for a, o0 in itertools.product([0.1, 0.2, 0.3, 0.5], [0.05, 0.1, 0.2, 0.4]):
                comb = [np.ascontiguousarray(r * (1 - a * np.minimum(1.0, o / o0))) for r, o in zip(S.raws, occ)]
                d = S.sp.score(S.sp.hold(comb))["score"] - S.ref["score"]
                best.append((round(d, 2), f"nb {nb} vmode {vmode} a {a} o0 {o0}"))
        best.sort(reverse=True)
        print(f"suppress: {len(best)} settings, best {best[:3]}, median {best[len(best) // 2][0]:+.2f}, "
              f"worst {best[-1][0]:+.2f}", flush=True)
        best = []  # and as a booster: score x (1 + b (1 - min(1, share / o0)))
        for nb, vmode in [(4, 0), (8, 0), (12, 0), (4, 1), (8, 1), (12, 1)]:
            occ = [occ_frac(v, nb, nb, a_s, a_v, vmode, 1.0) for v in V]
            for b, o0 in itertools.product([0.1, 0.2, 0.4], [0.01, 0.03, 0.1, 0.3]):
                comb = [np.ascontiguousarray(r * (1 + b * (1 - np.minimum(1.0, o / o0)))) for r, o in zip(S.raws, occ)]
                d = S.sp.score(S.sp.hold(comb))["score"] - S.ref["score"]
                best.append((round(d, 2), f"nb {nb} vmode {vmode} b {b} o0 {o0}"))
        best.sort(reverse=True)
        print(f"boost: {len(best)} settings, best {best[:3]}, median {best[len(best) // 2][0]:+.2f}, "
              f"worst {best[-1][0]:+.2f}", flush=True)
    if "shape" in args.screens:  # ARTime-like: a never-seen code of the last L block means
        for mode, D, L, B in itertools.product([0, 1], [6, 12, 24], [3, 4, 6], [3, 4, 6]):
            S.show(f"shape {'level' if mode == 0 else 'change'} D {D} L {L} B {B}",
                   [shape_stream(v, warm, D, L, B, 0.3, mode, 0.0) for v in V])
    if "voljump" in args.screens:  # a never-seen (volatility, jump size) cell
        for nb, scale in itertools.product([8, 12, 16, 24], [0.5, 1.0, 2.0]):
            S.show(f"voljump {nb}x{nb} log2 x{scale}", [voljump_stream(v, warm, a_s, a_v, nb, scale, 0.3, 0.0) for v in V])
    if "zstep" in args.screens:  # the reading's distance from the short EWMA (or its step) in volatility units
        for m, w, half in itertools.product([0, 1], [0.5, 1.0], [0.05, 0.1, 0.3, 1.0]):
            S.show(f"zstep {'x - short' if m == 0 else 'step'} w {w} half {half}",
                   [zstep_stream(v, warm, a_s, a_v, w, half, m, 100) for v in V], level=0.25)
    if "calm" in args.screens:  # a record calm spell
        for mode, k, aref, mr, half in itertools.product([0, 1], [0.05, 0.1, 0.2, 0.3, 0.5], [0.0, 1e-3], [10, 50],
                                                         [0.05, 0.2]):
            S.show(f"calm {'step' if mode == 0 else 'vol'} <= {k} x ref (a_ref {aref}) minrec {mr} half {half}",
                   [calm_stream(v, warm, k, mode, aref, a_v, 1.0, half, mr) for v in V], level=0.25)
    if "run" in args.screens:  # a record run of near-repeats, |step| <= eps x the value range
        for eps in [2e-4, 5e-4, 6e-4, 8e-4, 8.5e-4, 9e-4, 1e-3, 1.1e-3, 1.2e-3, 1.35e-3, 1.5e-3, 2e-3, 3e-3, 5e-3]:
            for mr, half in itertools.product([5, 10, 20], [0.05, 0.1, 0.2]):
                S.show(f"run eps {eps} minrec {mr} half {half}", [run_stream(v, warm, eps, 1.0, half, mr) for v in V],
                       level=0.25)
    if "quantum-run" in args.screens:  # the same, eps in units of the data's resolution
        for q, mr, half in itertools.product([0.5, 1.0, 1.5, 2.0, 3.0], [5, 10, 20], [0.05, 0.1, 0.2]):
            S.show(f"quantum-run q {q} minrec {mr} half {half}",
                   [quantum_run_stream(v, warm, q, 1.0, half, mr) for v in V], level=0.25)
    if "day" in args.screens:  # a never-seen (hour of the day, level) cell, added or instead of the season feature
        w3 = list(s.nov_weights)
        w3[3] = 0.0
        raws_ns = S.sp.run(dataclasses.replace(s, nov_hold=0.0, nov_weights=tuple(w3)))
        for nh, nl, us, mb, nbr in itertools.product([12, 24], [8, 16, 32], [0, 1], [5, 20], [0, 1]):
            feat = [dayocc_stream(v, t, warm, nh, nl, us, a_s, 0.3, mb, nbr) for v, t in zip(V, S.ts)]
            lab = f"day {nh} hours x {nl} levels of the {'short EWMA' if us else 'value'} min_bin {mb} nbr {nbr}"
            S.show(lab + " added", feat)
            S.show(lab + " instead of the season feature", feat, raws=raws_ns)
    if "paired-run" in args.screens:  # the near-repeat run record, paired over nab_tune's 60 fixed moves
        for eps in [8e-4, 9e-4, 1e-3, 1.2e-3, 1.5e-3]:
            paired(json.loads(args.start), lambda st, vs, eps=eps: [run_stream(v, st.nov_warmup, eps, 1.0, 0.1, 10) for v in vs],
                   label=f"run eps {eps} minrec 10 half 0.1")
    return 0



@njit(cache=False)
def replay_full(raw, level, hlen, bypass, refract_inv, damp):
    """The kernel's hold and refractory period (``novelty_local``) on a raw score stream (run with ``nov_hold``
    0 and ``nov_refract`` 0)."""
    out = np.zeros_like(raw)
    hold = 0.0
    peak = 0.0
    for i in range(raw.shape[0]):
        x = raw[i]
        hold -= 1.0
        if hold >= 0.0:
            if not x > bypass * peak:
                continue
        elif peak > 0.0 and refract_inv > 0.0:
            g = 1.0 + hold * refract_inv
            if g > 0.0:
                x = x * (1.0 - damp * g)
        out[i] = x
        if x >= level:
            hold = hlen
            peak = x
    return out


def paired(start: dict, make_feat, n: int = 60, seed: int = 0, label: str = "") -> None:
    """Paired post-hoc comparison over nab_tune's fixed neighbourhood moves (``--compare``'s: seed + 4242): at the
    point and at each move, the kernel's score against the same with the feature max-combined before the hold.
    ``make_feat(settings, vals)`` gives the feature's streams. Per category too (each alone, own threshold)."""
    sp = PH.Split(start)
    _chan, _ts, val, spans = sp.data
    vals = [np.ascontiguousarray(val[x]) for x in spans]
    windows = PH.nab.load_windows("/work/shared/nab/labels/combined_windows.json")
    cats = [n.split("/")[0] for n in sorted(windows) if n.split("/")[0] in PH.T.TUNING_SPLIT]
    moves = [[]] + PH.T.perturbations(n, seed + 4242)
    diffs = []
    for j, mv in enumerate(moves):
        s = PH.T.neighbour(sp.s, mv)
        ref = sp.score(sp.run(s))["score"]
        raws = sp.run(dataclasses.replace(s, nov_hold=0.0, nov_refract=0.0))
        inv = 1.0 / s.nov_refract if s.nov_refract > 0 else 0.0

        def hold(rs, s=s, inv=inv):
            return [replay_full(r, s.nov_level, s.nov_hold, s.nov_bypass, inv, s.nov_refract_damp) for r in rs]
        base = sp.score(hold(raws))["score"]
        if abs(base - ref) > 1e-9:
            raise SystemExit(f"replay differs from the kernel at move {mv}: {base} against {ref}")
        feat = make_feat(s, vals)
        comb = hold([np.ascontiguousarray(np.maximum(r, f)) for r, f in zip(raws, feat)])
        d = sp.score(comb)["score"] - ref
        diffs.append(d)
        if j == 0:
            print(f"{label} point: {ref:.2f} -> {ref + d:.2f} ({d:+.2f})")
            base_h = hold(raws)
            for cat in PH.T.TUNING_SPLIT:
                idx = [k for k, c in enumerate(cats) if c == cat]
                if not any(sp.labels[k].n_windows for k in idx):
                    continue
                a = PH.nab.optimise([(base_h[k], sp.labels[k]) for k in idx], sp.prof)["score"]
                b = PH.nab.optimise([(comb[k], sp.labels[k]) for k in idx], sp.prof)["score"]
                print(f"  {cat}: {a:.2f} -> {b:.2f} ({b - a:+.2f})")
    d = np.asarray(diffs)
    print(f"{label} paired over the point and {n} moves (seed {seed}): mean {d.mean():+.3f}, better in "
          f"{np.mean(d > 1e-9):.0%}, worse in {np.mean(d < -1e-9):.0%}", flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
