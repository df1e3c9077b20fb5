"""What the stream simulators (``serial-line``, ``pms5003``) share: the checks of their common arguments,
made before any pty exists so that a bad one leaves nothing behind, and the paced write loop."""

from __future__ import annotations

import argparse
import math
import sys
import time
from typing import Callable

from .pty_port import LinkError, PtyPort


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


def run_stream(name: str, args: argparse.Namespace, chunk: Callable[[float, float, int, int], bytes],
               step: int = 1, *, wait_open: bool = False, backpressure: bool = False) -> int:
    """Open the pty (``--link``), print its path, then write ``chunk(t0, interval, k, n)`` (samples
    ``k .. k+n-1``, ``n`` up to ``step``) as each is due at ``--rate``, until ``--count`` samples (0:
    forever) or Ctrl-C. ``t0`` is ``--t0``, else the time writing starts (after a reader opened the port).

    Without ``backpressure`` what nobody reads is dropped, as a UART does, and counted on stderr.
    The exit status: 2 for a ``--link`` that cannot be made, 1 with no pty to be had, else 0.
    """
    port = None
    try:
        try:
            port = PtyPort(args.link, nonblocking=not backpressure)
        except LinkError as exc:
            print(f"edge-gateway-sim {name}: --link {args.link}: {exc.strerror}", file=sys.stderr)
            return 2
        except OSError as exc:  # no pty to be had
            print(f"edge-gateway-sim {name}: {exc}", file=sys.stderr)
            return 1
        print(port.path, flush=True)
        if wait_open:
            port.wait_opened()
        interval = 1.0 / args.rate
        t0 = time.time() if args.t0 is None else args.t0
        started = time.monotonic()
        k = 0
        while not args.count or k < args.count:
            n = step if not args.count else min(step, args.count - k)
            data = chunk(t0, interval, k, n)
            if backpressure:
                port.write(data)
            else:
                port.try_write(data)
            k += n
            delay = started + k * interval - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        time.sleep(1.0)
    except KeyboardInterrupt:
        pass
    finally:
        if port is not None:
            port.close()
            if port.dropped:
                print(f"edge-gateway-sim {name}: dropped {port.dropped} bytes nobody read", file=sys.stderr)
    return 0
