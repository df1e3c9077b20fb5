"""Slow, obvious reference versions of the analytics kernels.

Each one splits the batch per channel and spells the recurrence out with plain
Python numbers and lists, so a bug in the array bookkeeping of a kernel (wrong
column, state shared between channels, off-by-one in a ring buffer) shows up
as a mismatch. They take and return plain lists; state is a dict per channel.
"""

from __future__ import annotations

import math
import statistics


def per_channel(chan, *cols):
    out = {}
    for i, c in enumerate(chan):
        out.setdefault(int(c), []).append((i,) + tuple(col[i] for col in cols))
    return out


def squash(z, half):
    if not z > 0:
        return 0.0
    if math.isinf(z):
        return 1.0
    return z / (z + half)


def tumbling(chan, ts, val, window_s):
    """Closed windows as (channel, start, count, min, max, mean, std, first, last), arrival order."""
    rows, open_ = [], {}
    for c, t, x in zip(chan, ts, val):
        if x != x:
            continue
        start = math.floor(t / window_s) * window_s
        w = open_.get(c)
        if w and start < w[0]:
            continue
        if w and start > w[0]:
            rows.append(_agg(c, *w))
            w = None
        if not w:
            w = open_[c] = (start, [])
        w[1].append(x)
    return rows


def _agg(c, start, xs):
    return (c, start, len(xs), min(xs), max(xs), statistics.fmean(xs), statistics.pstdev(xs), xs[0], xs[-1])


def ewma_z(chan, val, alpha, warmup):
    out = [0.0] * len(chan)
    for c, rows in per_channel(chan, val).items():
        mean = var = None
        n = 0
        for i, x in rows:
            if x != x:
                continue
            if n == 0:
                mean, var, n = x, 0.0, 1
                continue
            d = x - mean
            if n >= warmup:
                sd = math.sqrt(var)
                out[i] = abs(d) / sd if sd > 0 else (math.inf if d != 0 else 0.0)
            mean += alpha * d
            var = (1 - alpha) * (var + alpha * d * d)
            n += 1
    return out


def huber_z(xs, eta, clip, warmup, floor_rel):
    """z of each value of one channel's sequence against a Huber location/spread."""
    out, loc, sc = [], None, 0.0
    for n, x in enumerate(xs):
        if loc is None:
            loc = x
            out.append(0.0)
            continue
        spread = max(sc, floor_rel * abs(loc))
        d = x - loc
        z = 0.0
        if n >= warmup:
            z = abs(d) / spread if spread > 0 else (math.inf if d != 0 else 0.0)
        dc = min(max(d, -clip * spread), clip * spread) if spread > 0 else d
        loc += eta * dc
        sc += eta * (abs(dc) - sc)
        out.append(z)
    return out


def robust(chan, val, eta, clip, warmup, floor_rel, half):
    out = [0.0] * len(chan)
    for c, rows in per_channel(chan, val).items():
        rows = [r for r in rows if r[1] == r[1]]
        for (i, _), z in zip(rows, huber_z([x for _, x in rows], eta, clip, warmup, floor_rel)):
            out[i] = squash(z, half)
    return out


def rate(chan, ts, val, eta, clip, warmup, half):
    out = [0.0] * len(chan)
    for c, rows in per_channel(chan, ts, val).items():
        rows = [r for r in rows if r[2] == r[2]]
        idx, rates = [], []
        for (i0, t0, x0), (i, t, x) in zip(rows, rows[1:]):
            if t > t0:
                idx.append(i)
                rates.append((x - x0) / (t - t0))
        for i, z in zip(idx, huber_z(rates, eta, clip, warmup, 0.0)):
            out[i] = squash(z, half)
    return out


def cusum(chan, val, eta, clip, warmup, k, h):
    out = [0.0] * len(chan)
    for c, rows in per_channel(chan, val).items():
        loc, sc, n, hi, lo = None, 0.0, 0, 0.0, 0.0
        for i, x in rows:
            if x != x:
                continue
            if loc is None:
                loc, n = x, 1
                continue
            old_loc, old_sc = loc, sc
            d = x - loc
            dc = min(max(d, -clip * sc), clip * sc) if sc > 0 else d
            loc += eta * dc
            sc += eta * (abs(dc) - sc)
            if n >= warmup and old_sc > 0:
                u = min(max((x - old_loc) / old_sc, -clip), clip)
                hi, lo = max(0.0, hi + u - k), max(0.0, lo - u - k)
                stat = max(hi, lo)
                out[i] = stat / (stat + h)
                if stat >= h:
                    hi = lo = 0.0
                    loc = x
            n += 1
    return out


def flatline(chan, val, eps, min_run, alpha):
    out = [0.0] * len(chan)
    for c, rows in per_channel(chan, val).items():
        xs = [(i, x) for i, x in rows if x == x]
        run, rate_, owed = 0, 0.0, 0
        for (_, prev), (i, x) in zip(xs, xs[1:]):
            same = abs(x - prev) <= eps
            if same:
                run += 1
                if run >= min_run:  # stuck: score, and learn these repeats only when it ends
                    out[i] = 1.0 - rate_
                    owed += 1
                    continue
            else:
                for _ in range(owed):
                    rate_ += alpha * (1.0 - rate_)
                run, owed = 0, 0
            rate_ += alpha * ((1.0 if same else 0.0) - rate_)
    return out


def dropout(chan, ts, val, k, eta, clip):
    out = [0.0] * len(chan)
    for c, rows in per_channel(chan, ts, val).items():
        ts_ = [(i, t) for i, t, x in rows if x == x]
        typ = None
        for (_, t0), (i, t) in zip(ts_, ts_[1:]):
            gap = t - t0
            if gap <= 0:
                continue
            if typ is None:
                typ = gap
                continue
            out[i] = 1.0 - k * typ / gap if gap > k * typ else 0.0
            typ += eta * (min(gap, clip * typ) - typ)
    return out


def hampel(chan, val, window, n_sigma):
    out, flags = list(val), [False] * len(chan)
    for c, rows in per_channel(chan, val).items():
        past = []
        for i, x in rows:
            if x != x:
                continue
            if len(past) >= window:
                med = statistics.median(past[-window:])
                mad = 1.4826 * statistics.median(abs(v - med) for v in past[-window:])
                if abs(x - med) > n_sigma * mad:
                    out[i], flags[i] = med, True
            past.append(x)
    return out, flags


def lowpass(chan, val, alpha):
    out, ys = list(val), {}
    for i, (c, x) in enumerate(zip(chan, val)):
        if x != x:
            continue
        ys[c] = x if c not in ys else ys[c] + alpha * (x - ys[c])
        out[i] = ys[c]
    return out


def deadband(chan, ts, val, band, heartbeat_s):
    out, sent = [], {}
    for c, t, x in zip(chan, ts, val):
        if x != x:
            out.append(False)
            continue
        last = sent.get(c)
        send = last is None or abs(x - last[0]) > band or abs(t - last[1]) >= heartbeat_s
        if send:
            sent[c] = (x, t)
        out.append(send)
    return out


def nearest_rank(xs, p):
    s = sorted(xs)
    return s[max(0, math.ceil(p * len(s)) - 1)]


def _phase_bin(t, bins):
    nb = int(bins)
    ph = t - math.floor(t / 86400.0) * 86400.0
    return min(max(int(ph * nb / 86400.0), 0), nb - 1)


def novelty(chan, ts, val, cfg):
    """The novelty detector spelt out per channel with dicts and lists (``cfg``: DetectorSettings)."""
    w, decay, half = cfg.nov_weights, cfg.nov_decay, cfg.nov_half
    out = [0.0] * len(chan)

    halves = [half] * 6
    if cfg.nov_half_season > 0:
        halves[3] = cfg.nov_half_season
    if cfg.nov_half_vol > 0:
        halves[4] = cfg.nov_half_vol

    def novel(rng, f, ok, k, dec=None):
        lo, hi = rng
        v = 0.0
        if ok and w[k] > 0:
            e = max(f - hi, lo - f)
            if e > 0:
                # w * z / (z + half) with z = e / (hi - lo), w for an empty range
                v = w[k] * e / (e + halves[k] * (hi - lo) + 1e-300)
        lo, hi = min(lo, f), max(hi, f)
        c = (decay[k] if dec is None else dec) * 0.5 * (hi - lo)
        rng[0], rng[1] = lo + c, hi - c
        return v

    for c, rows in per_channel(chan, ts, val).items():
        st = None
        for i, t, x in rows:
            if x != x:
                continue
            if st is None:
                lr = [0.0, 0.0] if cfg.nov_long_mode > 0 else [x, x]
                st = {"n": 1, "prev": x, "short": x, "long": x, "vol": 0.0, "hold": 0.0, "peak": 0.0, "nr": 0, "since": 0,
                      "rng": [[x, x], [0.0, 0.0], [x, x], [0.0, 0.0], [0.0, 0.0], lr], "bins": {}}
                if w[3] > 0:
                    st["pb"] = _phase_bin(t, cfg.nov_season_bins)
                    st["bins"][st["pb"]] = [x, 1, 0.0]
                continue
            rng = st["rng"]
            d = x - st["prev"]
            st["prev"] = x
            ok = st["n"] >= cfg.nov_warmup
            vs = [0.0]
            if w[0] > 0:
                v0 = novel(rng[0], x, ok, 0)
                k = cfg.nov_value_gate
                if k > 0 and v0 > 0 and abs(x - st["short"]) < k * st["vol"]:
                    # a new extreme close to the short EWMA, in usual steps, scores less (squared)
                    g = abs(x - st["short"]) / (k * st["vol"])
                    v0 = v0 * (g * g)
                vs.append(v0)
            if w[1] > 0:
                vs.append(novel(rng[1], d, ok, 1))
            if w[2] > 0 or cfg.nov_long_mode > 0 or cfg.nov_season_smooth > 0 or cfg.nov_value_gate > 0:
                st["short"] += cfg.nov_short_alpha * (x - st["short"])
                if w[2] > 0:
                    vs.append(novel(rng[2], st["short"], ok, 2))
            dv = d
            if w[3] > 0:
                b = _phase_bin(t, cfg.nov_season_bins)
                if cfg.nov_vol_season > 0 and b in st["bins"]:
                    # the step less the profile's step from the previous reading's bin, if smaller
                    ds = d - (st["bins"][b][0] - st["bins"][st["pb"]][0])
                    if abs(ds) < abs(d):
                        dv = ds
                st["pb"] = b
                xs = x + cfg.nov_season_smooth * (st["short"] - x)
                if b in st["bins"]:
                    mean, cnt, spread = st["bins"][b]
                    r = xs - mean
                    f = r
                    if cfg.nov_season_norm > 0:
                        scale = max(spread, cfg.nov_spread_floor * (rng[0][1] - rng[0][0]))
                        f = r / scale if scale > 0 else 0.0
                        spread += cfg.nov_spread_alpha * (abs(r) - spread)
                    st["bins"][b] = [mean + cfg.nov_season_alpha * r, cnt + 1, spread]
                    if cnt >= cfg.nov_bin_warmup:
                        nr = st["nr"]
                        st["nr"] += 1
                        if nr == 0:
                            rng[3] = [f, f]
                        else:
                            dec = decay[3]
                            if cfg.nov_season_mature > 0:
                                dec = dec * cfg.nov_season_mature / (cfg.nov_season_mature + nr)
                            fl = cfg.nov_season_floor  # the range always holds [-fl, fl]
                            if fl > 0:
                                rng[3] = [min(rng[3][0], -fl), max(rng[3][1], fl)]
                            vs.append(novel(rng[3], f, nr >= cfg.nov_season_warmup, 3, dec))
                else:
                    st["bins"][b] = [xs, 1, 0.0]
            if w[4] > 0 or cfg.nov_shift_floor > 0 or cfg.nov_value_gate > 0:
                st["vol"] += cfg.nov_vol_alpha * (abs(dv) - st["vol"])
                if w[4] > 0:
                    vs.append(novel(rng[4], st["vol"], ok, 4))
            if w[5] > 0:
                st["long"] += cfg.nov_long_alpha * (x - st["long"])
                f = st["short"] - st["long"] if cfg.nov_long_mode > 0 else st["long"]
                if cfg.nov_long_mode > 0:  # the level-shift range always holds +-floor * vol
                    fl = cfg.nov_shift_floor * st["vol"]
                    if fl > 0:
                        rng[5] = [min(rng[5][0], -fl), max(rng[5][1], fl)]
                vs.append(novel(rng[5], f, ok, 5))
            st["n"] += 1
            v = max(vs)
            if st["hold"] > 0:
                st["hold"] -= 1
                st["since"] = 0
                if not v > cfg.nov_bypass * st["peak"]:
                    continue
            else:
                st["since"] += 1  # readings since the last hold ended
                if st["peak"] > 0 and cfg.nov_refract > 0 and st["since"] < cfg.nov_refract:
                    v *= 1 - cfg.nov_refract_damp * (1 - st["since"] / cfg.nov_refract)
            if v >= cfg.nov_level:
                st["hold"] = cfg.nov_hold
                st["peak"] = v
            out[i] = v
    return out
