"""Instructions per reading of the default chain's compiled code: a speed figure this shared VM cannot blur.

Wall and CPU time on this VM move by up to 1.7x between runs (the host shares the core and its
caches); callgrind's count of executed instructions does not. The kernels are compiled for a
generic CPU (``NUMBA_CPU_NAME=generic``) into a private cache first, natively, so that valgrind loads
them instead of compiling; then a child under callgrind runs ``Chain(capacity=64).process`` three
times on 64 channels x 5k readings, and only the instructions in JIT-compiled code are counted
(callgrind's entries with neither file nor object, ``???:0x... [???]``). Prints one JSON object.

    .venv/bin/python bench/kernels_instructions.py      # about 1 min; needs valgrind
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CALLS, CHANNELS, PER_CHANNEL = 3, 64, 5_000


def child(calls: int) -> None:
    sys.path.insert(0, str(REPO / "bench"))
    from kernels import data

    from edge_gateway.analytics.chain import Chain

    batch = data(CHANNELS, PER_CHANNEL)
    Chain().warm()
    for _ in range(calls):
        Chain(capacity=CHANNELS).process(*batch)


def main() -> int:
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        child(int(sys.argv[2]))
        return 0
    if shutil.which("valgrind") is None or shutil.which("callgrind_annotate") is None:
        print(json.dumps({"error": "valgrind (callgrind) is not installed"}))
        return 1
    with tempfile.TemporaryDirectory() as d:
        env = dict(os.environ, NUMBA_CPU_NAME="generic", NUMBA_CPU_FEATURES="", NUMBA_CACHE_DIR=str(Path(d) / "cache"),
                   PYTHONHASHSEED="0", PYTHONPATH=str(REPO))
        me = [sys.executable, str(Path(__file__).resolve()), "--child"]
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
    print(json.dumps({"jit_instructions_per_reading": round(jit / readings, 1), "readings": readings,
                      "batch": f"{CHANNELS} channels x {PER_CHANNEL} samples, {CALLS} calls"}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
