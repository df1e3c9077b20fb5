"""How close the P² p95 of one window comes to the exact nearest-rank p95 (the README's figures).

For windows of 60, 300 and 3,600 readings from a normal, an exponential and a lognormal (sigma 1.5)
distribution, 200 windows each, seeded: the estimate's rank (the share of the window at or below it)
and its relative error against the exact p95. Prints one JSON object.

    .venv/bin/python bench/p2_accuracy.py
"""

from __future__ import annotations

import json
import math

import numpy as np

from edge_gateway.analytics import quantiles as Q


def main() -> int:
    rng = np.random.default_rng(7)
    dists = {"normal": lambda n: rng.normal(20, 1, n), "exponential": lambda n: rng.exponential(1, n),
             "lognormal_1.5": lambda n: rng.lognormal(0, 1.5, n)}
    out = {}
    for n in (60, 300, 3600):
        for name, gen in dists.items():
            rank, rel = [], []
            for _ in range(200):
                x = gen(n)
                s = Q.new_state(1)
                Q.p2_update(np.zeros(n, np.int64), x, s)
                est = np.zeros((1, 2))
                Q.p2_estimate(s, est)
                exact = np.sort(x)[math.ceil(0.95 * n) - 1]
                rank.append(float(np.mean(x <= est[0, 1])))
                rel.append(abs(est[0, 1] / exact - 1))
            out[f"{name}_n{n}"] = {
                "rank_min": round(min(rank), 3), "rank_median": round(float(np.median(rank)), 3),
                "rank_max": round(max(rank), 3), "rel_err_median": round(float(np.median(rel)), 3),
                "rel_err_p90": round(float(np.quantile(rel, 0.9)), 3), "rel_err_max": round(max(rel), 3)}
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
