"""Simulates a line-protocol air-quality/noise sensor on a pty.

Writes ``pm25=12.5,pm10=20.1,noise_db=48.2`` lines (or CSV, or JSON lines) at a
fixed rate from a seeded scenario, and prints the port path on stdout.
``--t0`` with ``--timestamps`` adds a ``ts=`` field holding the simulated time,
so a test knows exactly which window each sample falls in. Values are written
with ``repr`` (shortest exact text), so what a decoder reads is exactly the
value computed here.

Like a UART, the port does not wait for a reader: bytes nobody reads once the
pty buffer is full are dropped (and counted on stderr at exit);
``--backpressure`` makes writes wait instead. SIGTERM and SIGHUP stop it as
Ctrl-C does, removing the ``--link``.
"""

from __future__ import annotations

import argparse
import json
import sys

from .signals import ChannelSignal, channel_values
from .stopping import exit_on_signals
from .stream import check_stream_args, run_stream

DEFAULT_CHANNELS = (
    ChannelSignal("pm25", baseline=12.0, amplitude=4.0, noise=0.8),
    ChannelSignal("pm10", baseline=20.0, amplitude=6.0, noise=1.2),
    ChannelSignal("noise_db", baseline=48.0, amplitude=8.0, noise=1.5),
)


def format_value(v: float) -> str:
    """The shortest text that reads back as exactly ``v`` (``repr``), without a trailing ``.0``."""
    text = repr(float(v))
    return text[:-2] if text.endswith(".0") else text


def format_line(fmt: str, names: list[str], values: list[float], ts: float | None) -> bytes:
    """One line in the given wire format (``kv``, ``csv`` or ``json``)."""
    if fmt == "json":
        obj = dict(zip(names, values))
        if ts is not None:
            obj["ts"] = ts
        return (json.dumps(obj, separators=(",", ":")) + "\n").encode()
    cells = [format_value(v) for v in values]
    if fmt == "csv":
        return (",".join(([repr(ts)] if ts is not None else []) + cells) + "\n").encode()
    pairs = [f"{n}={c}" for n, c in zip(names, cells)]
    if ts is not None:
        pairs.insert(0, f"ts={ts!r}")
    return (",".join(pairs) + "\n").encode()


def parse_spike(text: str) -> tuple[int, str, float]:
    """``K:CHANNEL:MAGNITUDE`` (sample index, channel name, value added)."""
    k, channel, magnitude = text.split(":")
    if channel not in {c.name for c in DEFAULT_CHANNELS}:
        raise ValueError(f"unknown channel {channel!r}")
    return int(k), channel, float(magnitude)


def scenario_lines(seed: int, t0: float, interval_s: float, count: int, fmt: str = "kv",
                   timestamps: bool = False, start: int = 0, spikes: tuple = ()):
    """The exact lines the simulator writes for samples ``start .. start+count-1``.

    ``spikes`` holds ``(sample, channel, magnitude)`` faults added to the clean signal.
    """
    cols = [channel_values(c, seed, t0, interval_s, count, start) for c in DEFAULT_CHANNELS]
    names = [c.name for c in DEFAULT_CHANNELS]
    for k, channel, magnitude in spikes:
        if start <= k < start + count:
            col = cols[names.index(channel)]
            col[k - start] = round(col[k - start] + magnitude, 6)
    for i in range(count):
        ts = round(t0 + (start + i) * interval_s, 6) if timestamps else None
        yield format_line(fmt, names, [float(c[i]) for c in cols], ts)


def main(argv: list[str] | None = None) -> int:
    from edge_gateway.cmd_common import plain_text  # --help as plain text, also run as python -m

    ap = argparse.ArgumentParser(prog="edge-gateway-sim serial-line", description=plain_text(__doc__ or ""))
    ap.add_argument("--seed", type=int, default=1, help="seed of the values (the same seed, the same lines)")
    ap.add_argument("--rate", type=float, default=10.0, help="lines per second")
    ap.add_argument("--count", type=int, default=0, help="stop after N lines (0: run forever)")
    ap.add_argument("--format", choices=("kv", "csv", "json"), default="kv",
                    help="kv: pm25=12.5,pm10=20.1,...; csv: the values alone, pm25,pm10,noise_db (ts first with "
                         "--timestamps); json: one object a line (default kv)")
    ap.add_argument("--timestamps", action="store_true", help="add ts= with the simulated time")
    ap.add_argument("--t0", type=float, default=None, help="simulated start time (default: now)")
    ap.add_argument("--link", help="make this path a symlink to the pty")
    ap.add_argument("--batch", type=int, default=1, help="lines per write")
    ap.add_argument("--spike", type=parse_spike, action="append", default=[], metavar="K:CHANNEL:MAG",
                    help="add MAG to CHANNEL at sample K (repeatable)")
    ap.add_argument("--wait-open", action="store_true",
                    help="start writing only once a reader has opened the port")
    ap.add_argument("--backpressure", action="store_true",
                    help="wait for the reader when the pty is full instead of dropping bytes as a UART does")
    args = ap.parse_args(argv)
    check_stream_args(ap, args, "lines")
    with exit_on_signals():
        return _run(args)


def _run(args) -> int:
    def lines(t0: float, interval: float, k: int, n: int) -> bytes:
        return b"".join(scenario_lines(args.seed, t0, interval, n, args.format, args.timestamps, k,
                                       tuple(args.spike)))

    return run_stream("serial-line", args, lines, max(1, args.batch), wait_open=args.wait_open,
                      backpressure=args.backpressure)

if __name__ == "__main__":
    sys.exit(main())
