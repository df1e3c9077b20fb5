"""Instructions per reading of the default chain on arm64 (the gateway's CPU), counted under qemu-user.

No Raspberry Pi is at hand, so this counts what an arm64 core would execute: the kernels are compiled
by arm64 Numba (``NUMBA_CPU_NAME``, ``cortex-a72`` = Raspberry Pi 4 by default) inside qemu-aarch64, and
a small qemu plugin (``insncount.c`` below, built against QEMU's ``qemu-plugin.h``) counts the guest
instructions executed. The figure is the marginal count: a child that calls ``Chain(capacity=64).process``
``1 + CALLS`` times on 64 channels x 5k readings, less one that calls it once, over ``CALLS`` x 320,000
readings. So it includes the per-call Python work (a few thousand instructions a call, under 0.01 a
reading), which ``bench/kernels_instructions.py`` (x86-64, JIT code only) leaves out; ``--x86`` prints the
same marginal count for this machine's x86-64 under callgrind, for a like-for-like comparison.
Counts, not times: qemu's speed says nothing about a Pi's.

Set-up (as root, Debian 12; about 10 minutes):

    apt-get install qemu-user qemu-user-static debootstrap binfmt-support
    debootstrap --arch=arm64 --variant=minbase --include=python3,python3-venv,python3-pip bookworm ROOT \\
        http://deb.debian.org/debian
    chroot ROOT python3 -m venv /venv && chroot ROOT /venv/bin/pip install numpy numba   # the project's pins
    apt-get source --download-only qemu   # for include/qemu/qemu-plugin.h (needs a deb-src entry)
    gcc -O2 -shared -fPIC -I QEMU_SRC/include/qemu -o insncount.so insncount.c

    .venv/bin/python bench/kernels_instructions_arm64.py --root ROOT --plugin insncount.so [--cpu cortex-a76] [--x86]

insncount.c::

    #include <stdio.h>
    #include <stdint.h>
    #include <qemu-plugin.h>
    QEMU_PLUGIN_EXPORT int qemu_plugin_version = QEMU_PLUGIN_VERSION;
    static uint64_t insns;
    static void tb_trans(qemu_plugin_id_t id, struct qemu_plugin_tb *tb)
    {
        qemu_plugin_register_vcpu_tb_exec_inline(tb, QEMU_PLUGIN_INLINE_ADD_U64, &insns,
                                                 qemu_plugin_tb_n_insns(tb));
    }
    static void at_exit(qemu_plugin_id_t id, void *p)
    {
        fprintf(stderr, "INSNS %llu\\n", (unsigned long long)insns);
    }
    QEMU_PLUGIN_EXPORT int qemu_plugin_install(qemu_plugin_id_t id, const qemu_info_t *info,
                                               int argc, char **argv)
    {
        qemu_plugin_register_vcpu_tb_trans_cb(id, tb_trans);
        qemu_plugin_register_atexit_cb(id, at_exit, NULL);
        return 0;
    }
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from kernels_instructions import CALLS, CHANNELS, PER_CHANNEL, REPO, child


def arm64_count(root: Path, plugin: Path, cpu: str, cache: Path, calls: int) -> int:
    site = next((root / "venv" / "lib").glob("python3*/site-packages"))
    python = next(p for p in (root / "usr" / "bin").glob("python3.*") if re.fullmatch(r"python3\.\d+", p.name))
    env = dict(os.environ, QEMU_LD_PREFIX=str(root), PYTHONPATH=f"{site}:{REPO}", PYTHONHASHSEED="0",
               NUMBA_CPU_NAME=cpu, NUMBA_CPU_FEATURES="", NUMBA_CACHE_DIR=str(cache))
    r = subprocess.run(["qemu-aarch64", "-plugin", str(plugin), str(python), str(Path(__file__).resolve()),
                        "--child", str(calls)], env=env, check=True, capture_output=True, text=True)
    return int(re.search(r"INSNS (\d+)", r.stderr).group(1))


def x86_count(cache: Path, calls: int, out: Path) -> int:
    env = dict(os.environ, NUMBA_CPU_NAME="generic", NUMBA_CPU_FEATURES="", NUMBA_CACHE_DIR=str(cache),
               PYTHONHASHSEED="0", PYTHONPATH=str(REPO))
    subprocess.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable,
                    str(Path(__file__).resolve()), "--child", str(calls)], env=env, check=True, capture_output=True)
    text = out.read_text()
    return int(re.search(r"^(?:summary|totals): (\d+)", text, re.M).group(1))


def main() -> int:
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        child(int(sys.argv[2]))
        return 0
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, required=True, help="arm64 Debian root with /venv (numpy, numba)")
    ap.add_argument("--plugin", type=Path, required=True, help="the instruction-count plugin (.so)")
    ap.add_argument("--cpu", default="cortex-a72", help="NUMBA_CPU_NAME for the arm64 build")
    ap.add_argument("--x86", action="store_true", help="also the same marginal count on x86-64 (callgrind)")
    args = ap.parse_args()
    if shutil.which("qemu-aarch64") is None:
        print(json.dumps({"error": "qemu-aarch64 (Debian qemu-user) is not installed"}))
        return 1
    readings = CALLS * CHANNELS * PER_CHANNEL
    res: dict = {"cpu": args.cpu, "batch": f"{CHANNELS} channels x {PER_CHANNEL} samples, {CALLS} calls"}
    with tempfile.TemporaryDirectory() as d:
        cache = Path(d) / "arm64-cache"
        arm64_count(args.root, args.plugin, args.cpu, cache, 0)  # compile into the cache
        one = arm64_count(args.root, args.plugin, args.cpu, cache, 1)
        more = arm64_count(args.root, args.plugin, args.cpu, cache, 1 + CALLS)
        res["arm64_instructions_per_reading"] = round((more - one) / readings, 1)
        if args.x86:
            cache = Path(d) / "x86-cache"
            subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", "0"], check=True,
                           env=dict(os.environ, NUMBA_CPU_NAME="generic", NUMBA_CPU_FEATURES="",
                                    NUMBA_CACHE_DIR=str(cache), PYTHONPATH=str(REPO)))
            one = x86_count(cache, 1, Path(d) / "cg1")
            more = x86_count(cache, 1 + CALLS, Path(d) / "cg2")
            res["x86_64_generic_instructions_per_reading"] = round((more - one) / readings, 1)
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
