"""Check our NAB scorer (``edge_gateway/nab.py``) against NAB's published scoreboard.

Runs a published baseline detector, NAB's ``windowedGaussian``, written here from its
description: the score of a value is 1 minus the two-sided Gaussian tail probability
of its distance from the mean, with mean and population std over the last 6,400 values
(the first 6,400 values grow the window one by one; after that it slides by 100 values
at a time); 0 for the first value; a std of 0 counts as 1e-6. The scores go
unrounded (with NAB's old three-decimal result files, 5,367 rows tie at 1.000 and no
threshold beats the null detector) to a temporary folder in ``analyze``'s layout and
are scored by ``edge-gateway evaluate --results-dir``. Prints one JSON object: our
figure and the published one per profile, and our detector's figures beside them.

    .venv/bin/python bench/nab_reference.py [--nab /work/shared/nab]
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
WINDOW, STEP = 6400, 100


def tail_score(x: float, mean: float, std: float) -> float:
    """1 - P(|X - mean| beyond |x - mean|) one-sided, X ~ N(mean, std): 0 at the mean, towards 1 far out."""
    z = abs(x - mean) / std
    return 1.0 - 0.5 * math.erfc(z / math.sqrt(2.0))


def windowed_gaussian(values: np.ndarray) -> np.ndarray:
    out = np.zeros(values.shape[0])
    window: list[float] = []
    pending: list[float] = []
    mean, std = 0.0, 1.0
    for i, x in enumerate(values.tolist()):
        if window:
            out[i] = tail_score(x, mean, std)
        if len(window) < WINDOW:
            window.append(x)
        else:
            pending.append(x)
            if len(pending) < STEP:
                continue
            window = window[STEP:] + pending
            pending = []
        mean = float(np.mean(window))
        std = float(np.std(window)) or 1e-6
    return out


def write_scores(dest: Path, key: str, ts: np.ndarray, values: np.ndarray, scores: np.ndarray) -> None:
    path = dest / key
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["timestamp", "value", "anomaly_score"])
        for t, v, s in zip(ts.tolist(), values.tolist(), scores.tolist()):
            w.writerow([t, v, repr(s)])


def evaluate(nab: Path, results: Path | None) -> dict[str, float]:
    cmd = [sys.executable, "-m", "edge_gateway", "evaluate", str(nab / "data"),
           str(nab / "labels" / "combined_windows.json")]
    if results is not None:
        cmd += ["--results-dir", str(results)]
    text = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=REPO).stdout
    return {line.split()[0]: float(line.split()[1]) for line in text.splitlines() if line.startswith(("standard", "reward"))}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--nab", type=Path, default=REPO.parent / "shared" / "nab")
    args = ap.parse_args()
    sys.path.insert(0, str(REPO))
    from edge_gateway import nab as scorer

    windows = scorer.load_windows(args.nab / "labels" / "combined_windows.json")
    keys = sorted(k for k in windows if (args.nab / "data" / k).exists())
    published = json.loads((args.nab / "results" / "final_results.json").read_text())
    with tempfile.TemporaryDirectory() as d:
        wg = Path(d) / "windowedGaussian"
        for k in keys:
            ts, values = scorer.read_series(args.nab / "data" / k)
            write_scores(wg, k, ts, values, windowed_gaussian(values))
        result = {
            "windowedGaussian": evaluate(args.nab, wg),
            "windowedGaussian_published": published["windowedGaussian"],
            "ours": evaluate(args.nab, None),
        }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
