"""Where the detections on the NAB *tuning split* come from (the held-out categories are never loaded).

At the optimal standard-profile threshold, per file: every detection, whether it is a window's first
detection (TP), a later one in the same window (tp2) or a false positive (FP, with its cost), the
novelty feature whose own score is highest there (each feature run alone, without the hold), and the
highest score inside each missed window.

    PYTHONPATH=. .venv/bin/python bench/nab_diag.py ['{"nov_refract": 0}']
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import nab_tune as T  # noqa: E402

from edge_gateway import nab  # noqa: E402
from edge_gateway.analytics.chain import Detector, DetectorSettings  # noqa: E402
from edge_gateway.analytics.detectors import NOV_FEATURES  # noqa: E402


def main() -> int:
    windows = nab.load_windows("/work/shared/nab/labels/combined_windows.json")
    names, series, labels = T.load(Path("/work/shared/nab/data"), windows, T.TUNING_SPLIT)
    chan, ts, val, spans = T.batch(series)
    prof = nab.PROFILES_DEFAULT["standard"]
    s = DetectorSettings()
    for k, v in (json.loads(sys.argv[1]) if len(sys.argv) > 1 else {}).items():
        s = T.apply(s, k, tuple(v) if isinstance(v, list) else v)

    def run(st):
        return Detector(st, capacity=len(spans)).process(chan, ts, val)[0]

    sc = run(s)
    res = nab.optimise([(sc[sp], lab) for sp, lab in zip(spans, labels)], prof)
    thr = res["threshold"]
    feat = []
    for k, w in enumerate(s.nov_weights):
        alone = tuple(w if j == k else 0.0 for j in range(len(s.nov_weights)))
        feat.append(run(dataclasses.replace(s, nov_hold=0.0, nov_refract=0.0, nov_weights=alone)) if w else None)
    n_tp = n_fp = n_miss = 0
    for name, sp, lab in zip(names, spans, labels):
        x = sc[sp]
        bounds: dict[int, list[int]] = {}
        for i, w in enumerate(lab.window):
            if w >= 0:
                bounds.setdefault(int(w), [i, i])[1] = i
        lines, seen = [], set()
        for i in range(lab.probation, len(x)):
            if not x[i] >= thr:
                continue
            w = int(lab.window[i])
            by = NOV_FEATURES[int(np.argmax([f[sp][i] if f is not None else 0.0 for f in feat]))]
            if w < 0:
                n_fp += 1
                lines.append(f"  FP   row {i} score {x[i]:.3f} by {by} cost {prof['fp'] * lab.unit[i]:.3f}")
            else:
                lines.append(f"  {'TP ' if w not in seen else 'tp2'}  row {i} score {x[i]:.3f} by {by} window {w} "
                             f"{bounds[w]} credit {lab.unit[i]:.2f}")
                seen.add(w)
        for w, (a, b) in sorted(bounds.items()):
            if w not in seen:
                lines.append(f"  MISS window {w} [{a}, {b}] highest score inside {x[a:b + 1].max():.3f}")
        n_tp += len(seen)
        n_miss += lab.n_windows - len(seen)
        print(f"{name} rows {len(x)} probation {lab.probation} windows {lab.n_windows}")
        print("\n".join(lines))
    print(f"tuning split standard {res['score']:.2f} at threshold {thr:.4f}: {n_tp} windows detected, "
          f"{n_miss} missed, {n_fp} false positives")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
