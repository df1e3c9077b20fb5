"""Simulates a Plantower PMS5003 on a pty: one 32-byte frame per sample, seeded values.

The atmospheric PM1.0/PM2.5/PM10 words come from the seeded signals (integers,
as the sensor reports); the CF=1 words equal them (as the real sensor does
below about 30 ug/m3) and the particle counts are derived from them, so a test
can check every word. ``--corrupt-every N`` flips one data bit in every Nth
frame so the checksum fails, as line noise would. Frames nobody reads once
the pty buffer is full are dropped, as a UART drops them (counted on stderr
at exit). SIGTERM and SIGHUP stop it as Ctrl-C does, removing the ``--link``.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from drivers.pms5003 import encode_frame

from .signals import ChannelSignal, channel_values
from .stopping import exit_on_signals
from .stream import check_stream_args, run_stream

DEFAULT_CHANNELS = (
    ChannelSignal("pm1_0", baseline=8.0, amplitude=3.0, noise=1.0, decimals=0),
    ChannelSignal("pm2_5", baseline=12.0, amplitude=4.0, noise=1.5, decimals=0),
    ChannelSignal("pm10", baseline=20.0, amplitude=6.0, noise=2.0, decimals=0),
)


def frame_words(pm1_0: float, pm2_5: float, pm10: float) -> tuple[int, ...]:
    """The 13 data words of a frame whose atmospheric values are the given ones."""
    a, b, c = (int(min(65535, max(0, round(v)))) for v in (pm1_0, pm2_5, pm10))
    counts = (a * 150 + b * 30, a * 45 + b * 9, b * 8, c * 2, c // 2, c // 5)
    return (a, b, c, a, b, c) + tuple(min(65535, n) for n in counts) + (0,)


def frame_bytes(pm1_0: float, pm2_5: float, pm10: float) -> bytes:
    return encode_frame(frame_words(pm1_0, pm2_5, pm10))


def corrupt(frame: bytes) -> bytes:
    """The frame with one bit of a data word flipped: the checksum no longer matches."""
    b = bytearray(frame)
    b[10] ^= 0x01
    return bytes(b)


def scenario_values(seed: int, t0: float, interval_s: float, count: int, start: int = 0) -> np.ndarray:
    """(count, 3) atmospheric values pm1_0, pm2_5, pm10 of samples ``start..``, as sent."""
    cols = [np.clip(channel_values(c, seed, t0, interval_s, count, start), 0, 65535) for c in DEFAULT_CHANNELS]
    return np.stack(cols, axis=1)


def scenario_frames(seed: int, t0: float, interval_s: float, count: int, start: int = 0):
    """The exact frames the simulator writes for samples ``start .. start+count-1``."""
    for row in scenario_values(seed, t0, interval_s, count, start):
        yield frame_bytes(*row)


def main(argv: list[str] | None = None) -> int:
    from edge_gateway.cmd_common import plain_text  # --help as plain text, also run as python -m

    ap = argparse.ArgumentParser(prog="edge-gateway-sim pms5003", description=plain_text(__doc__ or ""))
    ap.add_argument("--seed", type=int, default=1, help="seed of the values (the same seed, the same frames)")
    ap.add_argument("--rate", type=float, default=1.0, help="frames per second")
    ap.add_argument("--count", type=int, default=0, help="stop after N frames (0: run forever)")
    ap.add_argument("--t0", type=float, default=None, help="simulated start time (default: now)")
    ap.add_argument("--link", help="make this path a symlink to the pty")
    ap.add_argument("--corrupt-every", type=int, default=0, metavar="N",
                    help="flip one data bit in every Nth frame, so its checksum fails (0: never)")
    args = ap.parse_args(argv)
    check_stream_args(ap, args, "frames")
    with exit_on_signals():
        return _run(args)


def _run(args) -> int:
    def frame(t0: float, interval: float, k: int, n: int) -> bytes:
        data = next(scenario_frames(args.seed, t0, interval, 1, k))
        return corrupt(data) if args.corrupt_every and (k + 1) % args.corrupt_every == 0 else data

    return run_stream("pms5003", args, frame)

if __name__ == "__main__":
    sys.exit(main())
