"""Instructions per reading of the default chain's compiled code: a speed figure this shared VM cannot blur.

Wall and CPU time on this VM move by up to 1.7x between runs (the host shares the core and its
caches); callgrind's count of executed instructions does not. The kernels are compiled for a
generic CPU (``NUMBA_CPU_NAME=generic``) into a private cache first, natively, so that valgrind loads
them instead of compiling; then a child under callgrind runs ``Chain(capacity=64).process`` three
times on 64 channels x 5k readings, and only the instructions in JIT-compiled code are counted
(callgrind's entries with neither file nor object, ``???:0x... [???]``). Prints one JSON object.
``--settings`` counts the chain of another detector (``bench/tradeoff.py`` compares variants).

    .venv/bin/python bench/kernels_instructions.py      # about 1 min; needs valgrind
    .venv/bin/python bench/kernels_instructions.py --settings '{"nov_weights": [1, 0, 0, 0, 0, 0.5]}'
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CALLS, CHANNELS, PER_CHANNEL = 3, 64, 5_000


def child(calls: int, settings: dict) -> None:
    sys.path.insert(0, str(REPO / "bench"))
    from kernels import data

    from edge_gateway.analytics.chain import Chain, ChainSettings, DetectorSettings

    batch = data(CHANNELS, PER_CHANNEL)
    cs = ChainSettings(detector=DetectorSettings(**settings))
    Chain(cs).warm()
    for _ in range(calls):
        Chain(cs, capacity=CHANNELS).process(*batch)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--settings", default="{}", metavar="JSON",
                    help="DetectorSettings fields of the chain's detector, over the defaults")
    ap.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    settings = json.loads(args.settings)
    if args.child is not None:
        child(args.child, settings)
        return 0
    if shutil.which("valgrind") is None or shutil.which("callgrind_annotate") is None:
        print(json.dumps({"error": "valgrind (callgrind) is not installed"}))
        return 1
    with tempfile.TemporaryDirectory() as d:
        env = dict(os.environ, NUMBA_CPU_NAME="generic", NUMBA_CPU_FEATURES="", NUMBA_CACHE_DIR=str(Path(d) / "cache"),
                   PYTHONHASHSEED="0", PYTHONPATH=str(REPO))
        me = [sys.executable, str(Path(__file__).resolve()), "--settings", args.settings, "--child"]
        subprocess.run(me + ["1"], env=env, check=True)
        out = Path(d) / "callgrind.out"
        subprocess.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", *me, str(CALLS)],
                       env=env, check=True, capture_output=True)
        text = subprocess.run(["callgrind_annotate", "--threshold=100", str(out)], check=True, capture_output=True,
                              text=True).stdout
    # JIT code lives in anonymous mappings: no file and no object ("???:0x... [???]")
    jit = sum(int(line.split()[0].replace(",", "")) for line in text.splitlines()
              if "???:" in line and line.rstrip().endswith("[???]"))
    readings = CALLS * CHANNELS * PER_CHANNEL
    res = {"jit_instructions_per_reading": round(jit / readings, 1), "readings": readings,
           "batch": f"{CHANNELS} channels x {PER_CHANNEL} samples, {CALLS} calls"}
    if settings:
        res["settings"] = settings
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
