"""Digests of the analytics chain's outputs, to compare two machines (e.g. x86-64 and arm64) bit for bit.

Prints one JSON object: for each chain configuration, SHA-256 digests of the scores, the emit
flags, the reported values, the events and every state table after each batch, over a fixed
synthetic batch set (NaN, +-inf, dropouts, spikes, flat runs, duplicate and backwards timestamps)
and over the NAB *tuning split* series (one channel per file; no labels are read). Numba's output
is also compared here with the pure-Python twin on a small batch. Run it on both machines and diff
the two lines: equal digests mean equal results to the last bit (any NaN counted as one NaN).

    PYTHONPATH=. .venv/bin/python bench/digest.py [--nab /work/shared/nab/data]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
from pathlib import Path

import numpy as np

from edge_gateway.analytics.chain import Chain, ChainSettings, DetectorSettings

TUNING_SPLIT = ("artificialNoAnomaly", "artificialWithAnomaly", "realKnownCause", "realTraffic",
                "realAWSCloudwatch")

CONFIGS = {
    "default": ChainSettings(),
    "demo": ChainSettings(detector=DetectorSettings(flat_min_run=20, drop_k=3)),
    "filters": ChainSettings(hampel_window=5, lowpass_alpha=0.3, deadband=0.5),
    "all_detectors": ChainSettings(detector=DetectorSettings(
        weights=(0.5, 0.5, 0.5, 0.5, 1.0, 0.5, 0.5, 1.0), range_lo=-40.0, range_hi=40.0)),
}


def synthetic(n_ch: int, per_ch: int, seed: int) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Four batches of interleaved runs with the awkward values a live gateway sees."""
    rng = np.random.default_rng(seed)
    chan = np.repeat(np.tile(np.arange(n_ch), per_ch // 250), 250).astype(np.int64)
    ts = np.empty(chan.size)
    val = np.empty(chan.size)
    for c in range(n_ch):
        m = np.flatnonzero(chan == c)
        dt = np.full(m.size, 60.0)
        dt[rng.integers(0, m.size, 20)] = 3600.0 * rng.integers(1, 30, 20)  # dropouts
        dt[rng.integers(0, m.size, 10)] = 0.0  # duplicate timestamps
        t = 1.4e9 + np.cumsum(dt)
        t[rng.integers(1, m.size, 5)] -= 120.0  # backwards
        x = rng.normal(0, 1, m.size).cumsum() * 0.05 + rng.normal(0, 1, m.size)
        x[rng.integers(0, m.size, 40)] += rng.choice([-1, 1], 40) * rng.uniform(5, 50, 40)  # spikes
        s = int(rng.integers(0, m.size - 300))
        x[s:s + 300] = x[s]  # stuck
        x[s + 2000:s + 2600] += 8.0  # level shift
        x[rng.integers(0, m.size, 30)] = np.nan
        x[rng.integers(0, m.size, 2)] = np.inf
        x[rng.integers(0, m.size, 2)] = -np.inf
        x[rng.integers(0, m.size, 20)] = np.round(x[rng.integers(0, m.size, 20)], 1)
        ts[m] = t
        val[m] = x
    cuts = [0, chan.size // 5, chan.size // 2, chan.size // 2, chan.size]  # one batch empty
    return [(chan[a:b], ts[a:b], val[a:b]) for a, b in zip(cuts, cuts[1:])]


def nab_series(root: Path) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """The tuning split as one batch, one channel per file (values and timestamps only)."""
    chans, tss, vals = [], [], []
    files = sorted(p for cat in TUNING_SPLIT for p in (root / cat).glob("*.csv"))
    for c, f in enumerate(files):
        rows = np.genfromtxt(f, delimiter=",", skip_header=1, dtype=str)
        t = np.array([np.datetime64(s).astype("datetime64[s]").astype(np.int64) for s in rows[:, 0]], float)
        chans.append(np.full(t.size, c, np.int64))
        tss.append(t)
        vals.append(rows[:, 1].astype(float))
    return [(np.concatenate(chans), np.concatenate(tss), np.concatenate(vals))]


def _bits(a: np.ndarray, dtype) -> bytes:
    """The array's bytes with every NaN made the same NaN: x86-64 and arm64 give an invalid operation
    (inf - inf) NaNs of opposite sign, and a NaN's sign and payload carry no result."""
    a = np.ascontiguousarray(a, dtype)
    if a.dtype.kind == "f":
        a = np.where(np.isnan(a), np.nan, a)
    return a.tobytes()


def run(settings: ChainSettings, batches, pure: bool = False) -> dict[str, str]:
    chain = Chain(settings, capacity=4, pure=pure)
    h = {k: hashlib.sha256() for k in ("score", "emit", "filtered", "despiked", "events", "state")}
    n_events = 0
    for chan, ts, val in batches:
        out = chain.process(chan, ts, val)
        h["score"].update(_bits(out.score, np.float64))
        h["emit"].update(_bits(out.emit, np.bool_))
        h["filtered"].update(_bits(out.filtered, np.float64))
        h["despiked"].update(_bits(out.despiked, np.bool_))
        h["events"].update(repr(out.events).encode())
        n_events += len(out.events)
        for k, v in sorted(chain.state().items()):
            h["state"].update(k.encode() + _bits(v, np.float64))
    d = {k: v.hexdigest()[:16] for k, v in h.items()}
    d["n_events"] = n_events
    return d


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nab", type=Path, default=Path("/work/shared/nab/data"))
    args = ap.parse_args()
    res: dict = {"machine": platform.machine(), "python": platform.python_version(),
                 "numpy": np.__version__}
    try:
        import numba
        res["numba"] = numba.__version__
    except ImportError:
        res["numba"] = None
    syn = synthetic(8, 20_000, seed=7)
    nab = nab_series(args.nab) if args.nab.is_dir() else None
    for name, cfg in CONFIGS.items():
        res[f"{name}/synthetic"] = run(cfg, syn)
        if nab is not None:
            res[f"{name}/nab_tuning"] = run(cfg, nab)
    small = synthetic(3, 2_000, seed=11)
    for name in ("default", "filters"):
        res[f"{name}/numba_equals_pure"] = run(CONFIGS[name], small) == run(CONFIGS[name], small, pure=True)
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
