"""Speed against NAB score: how much tuning-split NAB score each leaner detector gives up for how much speed.

Issue 4's two targets pull apart: 50 M samples/s for the full chain needs a detector with less
per-channel state, and the state is what scores on NAB. For each named variant of the default
``DetectorSettings`` (novelty features dropped: "ewma" and "shift" here are the features ``short``
and ``long`` of ``NOV_FEATURES``, the short EWMA and the level shift) this measures, for the chain
``Chain(ChainSettings(detector=variant))``:

* ``nab_tuning_<profile>``: the NAB score on the *tuning split only* (``nab_tune.TUNING_SPLIT``; the
  held-out categories are never loaded), each profile at its own optimal threshold, as NAB does;
* ``instructions_per_reading``: JIT instructions a reading (``bench/kernels_instructions.py --settings``:
  callgrind, generic CPU, 64 channels x 5k): exact, so it ranks variants on this noisy VM;
* ``chain_samples_per_s``: samples per CPU-second on ``bench/kernels.py``'s batch (64 x 100k), best of
  ``--repeat``, the variants alternated call by call so that the VM's slow minutes hit them all alike;
  one figure per ``--passes``.

``compiled_out`` lists the loop's parts that ``spec_of`` removes for the variant. Prints one JSON object,
variant -> figures, and ``_run``: the seconds it took.

    PYTHONPATH=. .venv/bin/python bench/tradeoff.py        # 14-20 min, mostly callgrind; needs valgrind
    PYTHONPATH=. .venv/bin/python bench/tradeoff.py --parts nab,speed --variants default,value_shift
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
import nab_tune as T  # noqa: E402
from kernels import data  # noqa: E402

from edge_gateway import nab  # noqa: E402
from edge_gateway.analytics import detectors as D  # noqa: E402
from edge_gateway.analytics import layout  # noqa: E402
from edge_gateway.analytics.chain import Chain, ChainSettings, Detector, DetectorSettings  # noqa: E402

NOV = ("value", "diff", "ewma", "season", "vol", "shift")  # NOV_FEATURES by what short and long track


def weights(**w: float) -> dict:
    """``nov_weights`` with only the features ``w`` names (by their :data:`NOV` names) on."""
    return {"nov_weights": [w.get(name, 0.0) for name in NOV]}


def drop(name: str) -> dict:
    """The default ``nov_weights`` with feature ``name`` off."""
    w = list(DetectorSettings().nov_weights)
    w[NOV.index(name)] = 0.0
    return {"nov_weights": w}


# variant -> DetectorSettings fields over the defaults (before :func:`lean`)
VARIANTS: dict[str, dict] = {
    "default": {},
    **{f"no_{f}": drop(f) for f in ("ewma", "season", "vol", "shift")},
    "value_only": weights(value=1.0),
    "value_shift": weights(value=1.0, shift=0.5),
    "value_vol": weights(value=1.0, vol=0.5),
    "value_ewma_shift": weights(value=1.0, ewma=0.5, shift=0.5),
    "value_vol_shift": weights(value=1.0, vol=0.5, shift=0.5),
    "value_season": weights(value=1.0, season=0.3),
    "no_novelty": {"weights": [0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0]},
}
# The lean variants re-tuned on the tuning split, each in under 5 minutes: ``nab_tune.py --rounds 6 --jobs 2
# --start <the variant's "settings" in this script's output> --keys <keys>``, a coordinate search on the point
# objective (--robust and --random would also move the features the variant turned off). The keys: always
# nov_warmup,nov_hold,nov_level,nov_half,nov_decay.0,nov_weights.0,nov_refract,nov_refract_damp,weights.5,weights.6;
# with vol: nov_vol_alpha,nov_decay.4,nov_weights.4,nov_half_vol; with shift: nov_long_alpha,nov_short_alpha,
# nov_decay.5,nov_weights.5,nov_long_mode,nov_vol_alpha; with season: nov_season_alpha,nov_season_bins,
# nov_season_warmup,nov_season_norm,nov_spread_alpha,nov_spread_floor,nov_bin_warmup,nov_decay.3,nov_weights.3,
# nov_season_mature,nov_half_season,nov_season_smooth,nov_short_alpha.
TUNED = {
    "value_only": {"nov_warmup": 300.0, "nov_level": 0.1, "nov_decay": [1e-05, 0.0, 1e-05, 0.001, 0.0, 0.0001]},
    "value_vol": {"nov_warmup": 300.0, "nov_level": 0.1, "nov_half_vol": 0.2, "nov_refract": 150.0,
                  "nov_refract_damp": 1.0, "nov_decay": [0.0, 0.0, 1e-05, 0.001, 1e-05, 0.0001]},
    "value_shift": {"nov_warmup": 300.0, "nov_hold": 800.0, "nov_half": 1.0, "nov_vol_alpha": 0.01,
                    "nov_long_alpha": 0.003, "nov_weights": [0.5, 0.0, 0.0, 0.0, 0.0, 0.5]},
    "value_vol_shift": {"nov_warmup": 300.0, "nov_level": 0.4, "nov_long_alpha": 0.003, "nov_refract": 150.0,
                        "nov_refract_damp": 0.4, "nov_weights": [1.0, 0.0, 0.0, 0.0, 0.5, 0.75]},
    "value_season": {"nov_warmup": 750.0, "nov_hold": 150.0, "nov_short_alpha": 0.1, "nov_season_mature": 3000.0,
                     "nov_season_smooth": 0.5, "weights": [0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.25, 1.0]},
}
VARIANTS.update({f"{name}_tuned": {**VARIANTS[name], **moves} for name, moves in TUNED.items()})


def lean(s: DetectorSettings) -> DetectorSettings:
    """``s`` with the switches that only serve features it has turned off turned off too, so that
    ``spec_of`` compiles them out: the same scores, fewer instructions. (The season feature's
    normalisation, maturity and smoothing; the level shift's mode and noise floor, which also keep the
    short and volatility EWMAs running; the value feature's gate.)"""
    w = dict(zip(NOV, s.nov_weights))
    off: dict = {}
    if w["season"] == 0.0:
        off.update(nov_season_norm=0.0, nov_season_mature=0.0, nov_season_smooth=0.0, nov_vol_season=0.0)
    if w["shift"] == 0.0:
        off.update(nov_long_mode=0.0, nov_shift_floor=0.0)
    if w["value"] == 0.0:
        off.update(nov_value_gate=0.0)
    return dataclasses.replace(s, **off)


def settings_of(fields: dict) -> DetectorSettings:
    return lean(DetectorSettings(**fields))


def overrides(s: DetectorSettings) -> dict:
    """The fields of ``s`` that differ from the defaults (JSON-ready)."""
    d = DetectorSettings()
    return {f.name: getattr(s, f.name) for f in dataclasses.fields(s) if getattr(s, f.name) != getattr(d, f.name)}


SPEC_NAMES = {getattr(layout, k): k[5:].lower() for k in dir(layout)
              if k.startswith("SPEC_") and isinstance(getattr(layout, k), int)}


def compiled_out(s: DetectorSettings) -> list[str]:
    return [SPEC_NAMES[i] for i, on in enumerate(D.spec_of(s.params())) if on is None]


def nab_scores(sets: dict[str, DetectorSettings], data_dir: Path, windows_path: str) -> dict[str, dict]:
    """Tuning-split score per profile: one pass of each detector over all files (a file a channel)."""
    _, series, labels = T.load(data_dir, nab.load_windows(windows_path), T.TUNING_SPLIT)
    chan, ts, val, spans = T.batch(series)
    out = {}
    for name, s in sets.items():
        score, _ = Detector(s, capacity=len(spans)).process(chan, ts, val)
        items = [(score[sp], lab) for sp, lab in zip(spans, labels)]
        out[name] = {f"nab_tuning_{prof}": round(nab.optimise(items, cost)["score"], 2)
                     for prof, cost in nab.PROFILES_DEFAULT.items()}
    return out


def instructions(s: DetectorSettings) -> float:
    cmd = [sys.executable, str(BENCH / "kernels_instructions.py"), "--settings", json.dumps(overrides(s))]
    res = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(res.stdout)["jit_instructions_per_reading"]


def throughput(sets: dict[str, DetectorSettings], repeat: int) -> dict[str, int]:
    """Samples per CPU-second, best of ``repeat``, each round running every variant once in turn."""
    big = data(64, 100_000)
    chains = {name: ChainSettings(detector=s) for name, s in sets.items()}
    for cs in chains.values():
        Chain(cs, capacity=64).process(*big)  # compile (or load) and warm the caches
    best = dict.fromkeys(chains, float("inf"))
    for _ in range(repeat):
        for name, cs in chains.items():
            t0 = time.process_time()
            Chain(cs, capacity=64).process(*big)
            best[name] = min(best[name], time.process_time() - t0)
    return {name: round(big[0].size / t) for name, t in best.items()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated names of VARIANTS")
    ap.add_argument("--extra", action="append", default=[], metavar="NAME=JSON",
                    help="(repeatable) one more variant: DetectorSettings fields over the defaults")
    ap.add_argument("--parts", default="nab,instructions,speed")
    ap.add_argument("--repeat", type=int, default=7, help="throughput: best of this many calls per variant")
    ap.add_argument("--passes", type=int, default=2, help="throughput: this many independent best-of figures")
    ap.add_argument("--jobs", type=int, default=2, help="callgrind runs at a time (counts do not depend on load)")
    ap.add_argument("--data", default="/work/shared/nab/data", type=Path)
    ap.add_argument("--windows", default="/work/shared/nab/labels/combined_windows.json")
    args = ap.parse_args()
    fields = {name: VARIANTS[name] for name in args.variants.split(",")}
    for item in args.extra:
        name, _, text = item.partition("=")
        fields[name] = json.loads(text)
    sets = {name: settings_of(f) for name, f in fields.items()}
    parts = args.parts.split(",")
    res = {name: {"settings": overrides(s), "compiled_out": compiled_out(s)} for name, s in sets.items()}
    t0 = time.time()
    if "nab" in parts:
        for name, sc in nab_scores(sets, args.data, args.windows).items():
            res[name].update(sc)
    if "speed" in parts:
        runs = [throughput(sets, args.repeat) for _ in range(args.passes)]
        for name in sets:
            res[name]["chain_samples_per_s"] = [r[name] for r in runs]
    if "instructions" in parts:
        with ThreadPoolExecutor(args.jobs) as pool:
            for name, n in zip(sets, pool.map(instructions, sets.values())):
                res[name]["instructions_per_reading"] = n
    res["_run"] = {"seconds": round(time.time() - t0), "nab_split": list(T.TUNING_SPLIT),
                   "speed_batch": "64 channels x 100000 samples, CPU time", "repeat": args.repeat}
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
