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
``--speed 0`` writes everything at once. ``replay FILE --csv DIR --config CONFIG
--sensor ID`` opens no pty: it decodes the capture with the driver that sensor has
in the config (a serial_line or pms5003 sensor; each chunk at the time it was read)
and writes one ``timestamp,value`` CSV per channel into DIR, which
``edge-gateway analyze`` reads.

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
    p = sub.add_parser("replay", help="play a capture into a pty (prints its path), or decode it to CSV",
                       description="Play a capture file into a new pseudo-terminal; the first output line "
                                   "is the port path. With --csv DIR --config CONFIG --sensor ID: no pty; "
                                   "decode the capture with that sensor's driver and write one "
                                   "timestamp,value CSV per channel into DIR (for edge-gateway analyze).")
    p.add_argument("file", help="capture file written by edge-gateway record")
    p.add_argument("--link", metavar="PATH", help="also make PATH a symlink to the pty")
    p.add_argument("--speed", type=float, default=1.0, help="time factor (2 = twice as fast, 0 = no delays)")
    p.add_argument("--no-wait", action="store_true", help="start at once, not when a reader opens the pty")
    p.add_argument("--loop", action="store_true", help="play the capture again and again")
    p.add_argument("--linger", type=float, default=1.0, metavar="S", help="keep the pty open S seconds at the end")
    p.add_argument("--csv", metavar="DIR", help="decode instead of playing: write DIR/CHANNEL.csv "
                                                 "(timestamp,value, UTC) per channel (needs --config and --sensor)")
    p.add_argument("--config", metavar="FILE", help="with --csv: the gateway config that has the sensor")
    p.add_argument("--sensor", metavar="ID", help="with --csv: id of the sensor the capture was taken from")
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


def decode(header: dict, chunks: list[tuple[float, bytes]], sensor) -> tuple[dict[str, list], int]:
    """({channel: [Reading, ...]}, malformed count) of a capture read by ``sensor``'s stream driver.

    The driver is not opened: its decoder is made as on a connect (``on_open``) and each chunk is given to
    ``on_bytes`` at the wall-clock time it was read (``started + t``), as the daemon's read loop does.
    ValueError if the driver does not read a byte stream.
    """
    import drivers
    from drivers.serial_port import StreamDriver

    cls = drivers.get(sensor.driver)
    if not issubclass(cls, StreamDriver):
        streams = sorted(n for n in drivers.names() if issubclass(drivers.get(n), StreamDriver))
        raise ValueError(f"sensor {sensor.id!r} uses the {sensor.driver} driver, which does not read a byte "
                         f"stream: only captures of {', '.join(streams)} sensors can be decoded")
    by_channel: dict[str, list] = {}
    driver = cls(sensor.id, sensor.options, lambda r: by_channel.setdefault(r.channel, []).append(r))
    started = float(header.get("started") or 0.0)
    driver.on_open()
    for t, data in chunks:
        driver.stats.bytes += len(data)
        driver.on_bytes(data, started + t)
    return by_channel, driver.stats.malformed


def _stamp(ts: float) -> str:
    import datetime as dt

    return dt.datetime.fromtimestamp(ts, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f")


def _replay_csv(args, header: dict, chunks) -> int:
    import csv
    import re
    from pathlib import Path

    from . import config
    from .cmd_common import error

    if not (args.config and args.sensor):
        error("replay --csv needs --config FILE and --sensor ID (the sensor the capture was taken from: "
              "its driver decodes the bytes)")
        return 2
    try:
        cfg = config.load(args.config)
    except config.ConfigError as exc:
        error(exc)
        return 2
    sensor = next((s for s in cfg.sensors if s.id == args.sensor), None)
    if sensor is None:
        error(f"{args.config}: no sensor {args.sensor!r}; sensors: {', '.join(s.id for s in cfg.sensors) or 'none'}")
        return 2
    try:
        by_channel, malformed = decode(header, chunks, sensor)
    except ValueError as exc:
        error(str(exc))
        return 2
    if not by_channel:
        error(f"{args.file}: no readings decoded with sensor {sensor.id!r} ({sensor.driver}; {malformed} "
              "malformed): is it the sensor the capture was taken from?")
        return 1
    out = Path(args.csv)
    names = {ch: re.sub(r"[^A-Za-z0-9_.-]", "_", ch) + ".csv" for ch in by_channel}
    if len(set(names.values())) < len(names):
        error(f"channels {', '.join(sorted(by_channel))} do not have distinct file names")
        return 1
    try:
        out.mkdir(parents=True, exist_ok=True)
        for ch in sorted(by_channel):
            rows = [(_stamp(r.ts), repr(float(r.value))) for r in by_channel[ch]]
            with open(out / names[ch], "w", newline="") as f:
                w = csv.writer(f)
                w.writerow(["timestamp", "value"])
                w.writerows(rows)
            print(f"{out / names[ch]}: {len(rows)} rows of {sensor.id}/{ch}")
    except OSError as exc:
        error(f"cannot write {exc.filename or out}: {exc.strerror or exc}")
        return 1
    except (OverflowError, ValueError) as exc:
        error(f"{args.file}: a reading's time cannot be written as a date-time ({exc})")
        return 1
    if malformed:
        print(f"edge-gateway: warning: {malformed} malformed line(s), field(s) or frame(s) skipped, as the driver skips them",
              file=sys.stderr)
    return 0


def replay(args) -> int:
    from .cmd_common import error

    try:
        header, chunks = read_capture(args.file)
    except (OSError, ValueError) as exc:
        error(str(exc))
        return 1
    if args.csv:
        return _replay_csv(args, header, chunks)
    if args.config or args.sensor:
        error("--config and --sensor go with --csv DIR (decode the capture to CSV)")
        return 2
    from simulators.pty_port import PtyPort

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
