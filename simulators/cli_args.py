"""Checks of the arguments the stream simulators (``serial-line``, ``pms5003``) share, made before any
pty exists so that a bad one leaves nothing behind."""

from __future__ import annotations

import argparse
import math


def check_stream_args(ap: argparse.ArgumentParser, args: argparse.Namespace, unit: str) -> None:
    """``--rate`` (``unit`` per second), ``--seed``, ``--count`` and ``--t0``; ``ap.error`` (exit 2) on a bad one."""
    if not (args.rate > 0 and math.isfinite(args.rate)):
        ap.error(f"--rate: must be a positive number of {unit} per second, not {args.rate:g}")
    if args.seed < 0:
        ap.error(f"--seed: must be >= 0, not {args.seed}")
    if args.count < 0:
        ap.error(f"--count: must be >= 0 (0: run forever), not {args.count}")
    if args.t0 is not None and not math.isfinite(args.t0):
        ap.error(f"--t0: must be a finite time, not {args.t0:g}")
