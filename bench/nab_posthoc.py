"""Screen output-level changes to the novelty detector on the NAB *tuning split*, without touching the kernel.

The novelty hold (``nov_hold``, ``nov_level``, ``nov_bypass``) only mutes the detector's output: no state
depends on it. So the kernel run once with ``nov_hold = 0`` gives the raw score stream, and any other hold
or damping scheme can be replayed on it in a few milliseconds. The replay of the shipped hold is checked
bit for bit against the kernel before anything else is printed. The held-out categories are never loaded.

Screens (each printed as the change in the tuning split's standard score against the kernel's):
- ``short-hold``: a score under ``nov_level`` but at least ``level2`` starts a hold of ``hold2`` readings
  (same bypass), so a two-reading alarm counts once;
- ``alarm-rate``: a channel's score divided by ``1 + gamma * k``, k its earlier holds, fading by ``mem``
  a reading;
- ``ramp``: the features scoring from ``nov_warmup = w0``, damped by a constant or a ramp until the
  shipped warm-up;
- ``combine``: the features' scores combined by max plus ``beta`` times the second largest, or by
  noisy-or, instead of their max.

    PYTHONPATH=. .venv/bin/python bench/nab_posthoc.py [--start JSON] [short-hold alarm-rate ramp combine]
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import nab_tune as T  # noqa: E402

from edge_gateway import nab  # noqa: E402
from edge_gateway.analytics.chain import Detector, DetectorSettings  # noqa: E402

try:
    from numba import njit
except ImportError:  # pragma: no cover
    def njit(f):
        return f


@njit
def replay_hold(raw, level, hlen, bypass, level2, hlen2, gamma, mem):
    """The kernel's hold on a raw score stream, plus a short hold from ``level2`` and an alarm-rate damping."""
    out = np.zeros_like(raw)
    hold = 0.0
    peak = 0.0
    k = 0.0
    for i in range(raw.shape[0]):
        x = raw[i] / (1.0 + gamma * k)
        k *= mem
        hold -= 1.0
        if hold >= 0.0 and not x > bypass * peak:
            continue
        out[i] = x
        if x >= level:
            hold, peak, k = hlen, x, k + 1.0
        elif x >= level2:
            hold, peak = hlen2, x
    return out


class Split:
    def __init__(self, start: dict):
        windows = nab.load_windows("/work/shared/nab/labels/combined_windows.json")
        _, series, self.labels = T.load(Path("/work/shared/nab/data"), windows, T.TUNING_SPLIT)
        self.data = T.batch(series)
        self.spans = self.data[3]
        s = DetectorSettings()
        for key, value in start.items():
            s = T.apply(s, key, tuple(value) if isinstance(value, list) else value)
        self.s = s
        self.prof = nab.PROFILES_DEFAULT["standard"]

    def run(self, s: DetectorSettings) -> list[np.ndarray]:
        chan, ts, val, spans = self.data
        sc = Detector(s, capacity=len(spans)).process(chan, ts, val)[0]
        return [np.ascontiguousarray(sc[sp]) for sp in spans]

    def score(self, streams) -> dict:
        return nab.optimise(list(zip(streams, self.labels)), self.prof)

    def hold(self, raws, level2=9.0, hold2=0.0, gamma=0.0, mem=1.0, level=None) -> list[np.ndarray]:
        s = self.s
        lv = s.nov_level if level is None else level
        return [replay_hold(r, lv, s.nov_hold, s.nov_bypass, level2, hold2, gamma, mem) for r in raws]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--start", default="{}", help="JSON of DetectorSettings fields (field or field.index)")
    ap.add_argument("screens", nargs="*", default=["short-hold", "alarm-rate", "ramp", "combine"])
    args = ap.parse_args()
    sp = Split(json.loads(args.start))
    s = sp.s
    kern = sp.run(s)
    ref = sp.score(kern)["score"]
    raws = sp.run(dataclasses.replace(s, nov_hold=0.0))
    same = all(np.array_equal(a, b) for a, b in zip(sp.hold(raws), kern))
    print(f"kernel {ref:.3f}; replayed hold bit-equal to the kernel: {same}", flush=True)
    if not same:
        return 1

    def show(label, streams):
        r = sp.score(streams)
        print(f"{label}: {r['score'] - ref:+.2f} (threshold {r['threshold']:.4f})", flush=True)

    if "short-hold" in args.screens:
        for l2, h2 in itertools.product([0.17, 0.19, 0.2, 0.21, 0.215], [1, 2, 3, 5, 8, 12]):
            show(f"short-hold level2 {l2} hold2 {h2}", sp.hold(raws, l2, h2))
    if "alarm-rate" in args.screens:
        for g, mem in itertools.product([0.05, 0.1, 0.2, 0.4], [1.0, 0.9999, 0.9995, 0.999]):
            show(f"alarm-rate gamma {g} mem {mem}", sp.hold(raws, gamma=g, mem=mem))
    if "ramp" in args.screens:
        w = s.nov_warmup
        for w0 in [100.0, 200.0, 300.0, 400.0]:
            early = sp.run(dataclasses.replace(s, nov_hold=0.0, nov_warmup=w0))
            for kind, d in itertools.product(["const", "linear", "square"], [0.3, 0.5, 0.7, 0.85]):
                damped = []
                for r in early:
                    n = np.arange(r.shape[0], dtype=float)
                    t = np.clip((n - w0) / (w - w0), 0.0, 1.0)
                    f = np.where(n < w, d, 1.0) if kind == "const" else d + (1 - d) * (t if kind == "linear" else t * t)
                    damped.append(np.ascontiguousarray(r * f))
                show(f"ramp from {w0:.0f} {kind} {d}", sp.hold(damped))
    if "combine" in args.screens:
        feats = []
        for k, wk in enumerate(s.nov_weights):
            if wk:
                alone = tuple(wk if j == k else 0.0 for j in range(len(s.nov_weights)))
                feats.append(sp.run(dataclasses.replace(s, nov_hold=0.0, nov_weights=alone)))
        per_file = [np.stack(f) for f in zip(*feats)]
        for beta, lv in itertools.product([0.1, 0.3, 0.5, 1.0], [0.25, 0.3, 0.35]):
            comb = [np.ascontiguousarray(np.sort(f, axis=0)[-1] + beta * np.sort(f, axis=0)[-2]) for f in per_file]
            show(f"combine max+{beta}*second level {lv}", sp.hold(comb, level=lv))
        for lv in [0.25, 0.3, 0.35, 0.4]:
            comb = [np.ascontiguousarray(1.0 - np.prod(1.0 - f, axis=0)) for f in per_file]
            show(f"combine noisy-or level {lv}", sp.hold(comb, level=lv))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
