"""``edge-gateway record PORT FILE`` and ``edge-gateway replay FILE``: take a field problem home.

``record`` captures the raw bytes a serial device sends, with their timing,
until Ctrl-C (or ``--duration``/``--max-bytes``). ``replay`` plays a capture into
a new pseudo-terminal and prints its path (``--link PATH`` adds a stable
symlink, as ``/dev/serial/by-id/...`` would be), so a laptop gateway, or
``edge-gateway probe``, can read exactly what the device sent.

Capture format (JSON lines, UTF-8)::

    {"format": "edge-gateway-capture", "version": 1, "port": "/dev/ttyUSB0", "baudrate": 9600, "started": 1700000000.0}
    {"t": 0.012345, "data": "<base64 of the bytes of one read>"}
    ...

``t`` is seconds since the capture started (monotonic clock); one line per read,
so splits across reads are kept too. ``replay --speed 2`` plays twice as fast;
``--speed 0`` writes everything at once.

Exit statuses: 0 done (Ctrl-C is the normal way to end ``record``: the file is
complete, exit 0); 1 the port cannot be opened, the capture cannot be written
or the file is not a capture; 2 bad usage (also a ``--link`` path that exists
and is not an old link to a pty, or whose folder is missing); 130 Ctrl-C
during ``replay``.
"""

from __future__ import annotations

import base64
import json
import sys
import time

FORMAT = "edge-gateway-capture"
MAX_T = 1e9  # seconds (about 31 years)


def add_to(sub) -> None:
    from .cmd_common import doc_part

    r = sub.add_parser("record", help="capture raw bytes with timing from a serial port",
                       description=doc_part(__doc__, 1))
    r.add_argument("port", help="device path or pyserial URL")
    r.add_argument("file", help="capture file to write (JSON lines)")
    r.add_argument("--baud", type=int, default=9600, help="speed (default 9600; edge-gateway probe finds it)")
    r.add_argument("--duration", type=float, default=0, metavar="S", help="stop after S seconds")
    r.add_argument("--max-bytes", type=int, default=0, metavar="N", help="stop after N bytes")
    r.set_defaults(func=record)
    p = sub.add_parser("replay", help="play a capture into a pty (prints its path)",
                       description="Play a capture file into a new pseudo-terminal; the first output line "
                                   "is the port path.")
    p.add_argument("file", help="capture file written by edge-gateway record")
    p.add_argument("--link", metavar="PATH", help="also make PATH a symlink to the pty")
    p.add_argument("--speed", type=float, default=1.0, help="time factor (2 = twice as fast, 0 = no delays)")
    p.add_argument("--no-wait", action="store_true", help="start at once, not when a reader opens the pty")
    p.add_argument("--loop", action="store_true", help="play the capture again and again")
    p.add_argument("--linger", type=float, default=1.0, metavar="S", help="keep the pty open S seconds at the end")
    p.set_defaults(func=replay)


def record(args) -> int:
    import serial

    from drivers.serial_port import open_serial

    from .cmd_common import error
    from .cmd_probe import _open_error

    try:
        ser = open_serial(args.port, baudrate=args.baud, timeout=0.05)
    except Exception as exc:  # noqa: BLE001
        error(f"cannot open {args.port}: {_open_error(args.port, exc)}")
        return 1
    total = 0
    t0 = time.monotonic()
    try:
        try:
            out = open(args.file, "w", encoding="utf-8")
        except OSError as exc:
            error(f"cannot write {args.file}: {exc.strerror or exc}")
            return 1
        with out:
            out.write(json.dumps({"format": FORMAT, "version": 1, "port": args.port, "baudrate": args.baud,
                                  "started": time.time()}) + "\n")
            out.flush()
            print(f"recording {args.port} at {args.baud} baud into {args.file} (Ctrl-C to stop)",
                  file=sys.stderr, flush=True)
            try:
                while True:
                    now = time.monotonic()
                    if args.duration and now - t0 >= args.duration:
                        break
                    data = ser.read(max(1, min(ser.in_waiting, 65536)))
                    if data:
                        total += len(data)
                        out.write(json.dumps({"t": round(now - t0, 6),
                                              "data": base64.b64encode(data).decode()}) + "\n")
                        out.flush()
                        if args.max_bytes and total >= args.max_bytes:
                            break
            except KeyboardInterrupt:
                pass
            except serial.SerialException as exc:
                error(f"{args.port}: {exc} (the capture so far is kept)")
    finally:
        ser.close()
    print(f"recorded {total} bytes in {time.monotonic() - t0:.1f} s", file=sys.stderr)
    return 0


def read_capture(path: str) -> tuple[dict, list[tuple[float, bytes]]]:
    """(header, [(t, bytes), ...]) of a capture file; ValueError if it is not one."""
    with open(path, encoding="utf-8") as f:
        header = json.loads(f.readline() or "null")
        if not isinstance(header, dict) or header.get("format") != FORMAT:
            raise ValueError(f"{path}: not an edge-gateway capture (first line must name format {FORMAT!r})")
        chunks = []
        for n, line in enumerate(f, start=2):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
                t = float(item["t"])
                if not 0 <= t <= MAX_T:  # also NaN; a huge t would overflow time.sleep
                    raise ValueError(f"t must be 0..{MAX_T:g} seconds, got {item['t']!r}")
                chunks.append((t, base64.b64decode(item["data"], validate=True)))
            except (ValueError, KeyError, TypeError) as exc:
                raise ValueError(f"{path}:{n}: bad capture line: {exc}") from None
    return header, chunks


def replay(args) -> int:
    from simulators.pty_port import PtyPort

    from .cmd_common import error

    try:
        header, chunks = read_capture(args.file)
    except (OSError, ValueError) as exc:
        error(str(exc))
        return 1
    try:
        port = PtyPort(args.link)
    except OSError as exc:
        error(f"--link {args.link}: {exc.strerror or exc}")
        return 2
    try:
        print(port.path, flush=True)
        print(f"replaying {sum(len(c) for _, c in chunks)} bytes from {header.get('port')} "
              f"({header.get('baudrate')} baud)", file=sys.stderr, flush=True)
        if not args.no_wait:
            port.wait_opened(timeout=3600)
        while True:
            start = time.monotonic()
            for t, data in chunks:
                if args.speed > 0:
                    delay = start + t / args.speed - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)
                port.write(data)
            if not args.loop:
                break
        time.sleep(max(0.0, args.linger))
    except KeyboardInterrupt:
        return 130
    finally:
        port.close()
    return 0
