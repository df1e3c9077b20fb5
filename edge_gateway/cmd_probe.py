"""``edge-gateway probe PORT``: what is talking on this serial port, at which speed, in which protocol?

For each baud rate (9600, 19200, 38400, 57600, 115200 unless ``--baud``) the
port is opened 8N1 and listened to for ``--listen`` seconds; the bytes are
tried against our decoders: PMS5003 frames (:mod:`drivers.pms5003`), text
lines in ``kv``, ``json`` or ``csv`` (:class:`drivers.serial_line.LineDecoder`).
Modbus RTU devices speak only when asked, so ``--modbus-slave N`` also sends a
read-holding-registers request (address 0, 1 register) to slave N at each speed
and looks for a valid answer; without it probe never writes to the port.

Prints one line per speed as soon as it is tried (``9600 baud: 0 bytes in
2.5 s``, ``9600 baud: 384 bytes, looks like PMS5003 frames (12 valid, 0
bad)``), then what was found, e.g. ``found at 9600 baud (8N1): PMS5003 frames,
PM1.0=8 PM2.5=12 PM10=20``, and a sensor entry to paste under ``sensors:``
with the settings that carry units spelt out at their defaults (durations in
seconds, channel units to fill in; for Modbus: the slave, the register read and
8N1 spelt out, as one block to extend from the meter's register map).
Ctrl-C prints what was found so far (a protocol recognised in the bytes the cut-short speed had read
counts, in the text as in ``--json``). ``--json`` prints every attempt instead.
Probing stops at the first speed that decodes cleanly (``--all`` tries every
one). A pty (simulator, ``replay``) ignores the baud rate, so the first speed
tried wins there.

Exit statuses: 0 a known protocol was found; 1 nothing recognised, or the port
cannot be opened (the message says why: missing, not a serial port,
permission, busy); 2 bad usage; 130 Ctrl-C (after the summary so far).
"""

from __future__ import annotations

import dataclasses
import json
import re
import time
import typing

BAUDS = (9600, 19200, 38400, 57600, 115200)
MAX_BYTES = 65536  # listening at one speed stops when this much was read


def add_to(sub) -> None:
    from .cmd_common import doc_part, int_in, positive_float

    p = sub.add_parser("probe", help="find the speed and protocol of a serial device",
                       description=doc_part(__doc__, 1), epilog=doc_part(__doc__, 3))
    p.add_argument("port", help="device path (/dev/ttyUSB0, /dev/serial/by-id/...) or pyserial URL")
    p.add_argument("--baud", type=int_in(1), action="append", help="try only this speed (repeatable)")
    p.add_argument("--listen", type=positive_float, default=2.5, metavar="S",
                   help="seconds to listen at each speed (default 2.5)")
    p.add_argument("--modbus-slave", type=int_in(1, 247), metavar="N",
                   help="also query Modbus RTU slave N, 1..247 (writes!)")
    p.add_argument("--all", action="store_true", help="try every speed, do not stop at the first match")
    p.add_argument("--json", action="store_true", help="machine-readable result")
    p.set_defaults(func=handle)


def analyse(data: bytes) -> dict | None:
    """The protocol these bytes are in, with a sample of values; None if none of ours fits."""
    pms = _pms(data)
    if pms:
        return pms
    return _lines(data)


def _pms(data: bytes) -> dict | None:
    try:
        from drivers.pms5003 import Pms5003Decoder
    except ImportError:  # pragma: no cover - the PMS5003 driver is optional
        return None
    dec = Pms5003Decoder()
    frames = dec.feed(data)
    if not frames or dec.bad_frames > len(frames):
        return None
    f = frames[-1]
    return {"protocol": "pms5003", "driver": "pms5003", "frames": len(frames), "bad_frames": dec.bad_frames,
            "summary": f"PMS5003 frames, PM1.0={f.pm1_0} PM2.5={f.pm2_5} PM10={f.pm10}",
            "values": {"pm1_0": f.pm1_0, "pm2_5": f.pm2_5, "pm10": f.pm10}, "options": {}}


def _lines(data: bytes) -> dict | None:
    from drivers.serial_line import LineDecoder

    parts = re.split(rb"\r\n|\r|\n", data)  # as the driver ends lines: CR, LF or CRLF
    if len(parts) < 2:
        return None
    # the first line is probably cut (we started listening mid-line), and the last is not ended yet
    raw_lines = [ln.strip(b" \t") for ln in parts[1:-1]]
    raw_lines = [ln for ln in raw_lines if ln]
    if not raw_lines:
        return None
    candidates = [("json", ()), ("kv", ())]
    first = raw_lines[-1].split(b",")
    if len(first) > 1:
        candidates.append(("csv", tuple(f"col{i + 1}" for i in range(len(first)))))
    for fmt, columns in candidates:
        dec = LineDecoder(fmt, columns)
        samples = [s for ln in raw_lines if (s := dec.parse_line(ln)) is not None]
        if samples and len(samples) >= 0.8 * len(raw_lines):
            last = samples[-1]
            values = {ch: v for ch, v, _ in last}
            shown = ", ".join(f"{ch}={v:g}" for ch, v in list(values.items())[:4])
            opts = {"format": fmt}
            if columns:
                opts["columns"] = list(columns)
            return {"protocol": f"line-{fmt}", "driver": "serial_line", "lines": len(raw_lines),
                    "good_lines": len(samples), "channels": list(values),
                    "summary": f"text lines ({fmt}, channels {', '.join(values)}), {shown}",
                    "values": values, "options": opts}
    return None


def _modbus(ser, slave: int, listen: float) -> dict | None:
    try:
        from drivers.modbus_frames import RtuResponseDecoder, build_request
    except ImportError:  # pragma: no cover
        return None
    ser.reset_input_buffer()
    ser.write(build_request(slave, "holding", 0, 1))
    dec = RtuResponseDecoder(slave, 3, 1)
    deadline = time.monotonic() + min(listen, 1.0)
    while time.monotonic() < deadline:
        for resp in dec.feed(ser.read(256)):
            return _modbus_found(slave, resp)
    return None


def _modbus_found(slave: int, resp) -> dict:
    """What one answer to "holding register 0 of ``slave``" tells, as options the modbus_rtu driver takes.

    The driver has no per-sensor slave: it polls ``blocks``, so the suggestion is the block probe read.
    Parity and stop bits are spelt out: probe talks 8N1 only, while many meters default to 8E1.
    """
    block = {"slave": slave, "function": "holding", "address": 0, "count": 1,
             "fields": [{"name": "reg0", "offset": 0}]}
    found = {"protocol": "modbus-rtu", "driver": "modbus_rtu", "slave": slave, "values": {},
             "options": {"parity": "N", "stopbits": 1, "blocks": [block]}}
    if resp.exception:
        found["answer"] = f"holding register 0: exception {resp.exception}"
        found["summary"] = f"Modbus RTU slave {slave}, {found['answer']}"
        found["note"] = (f"slave {slave} answers but refused holding register 0: set the block's function, "
                         "address, count and fields to registers from the meter's manual")
    else:
        value = int.from_bytes(resp.data, "big")
        found["answer"] = f"holding register 0 = {value}"
        found["summary"] = f"Modbus RTU slave {slave}, {found['answer']}"
        found["values"] = {"reg0": value}
    return found


def probe(port: str, bauds, listen: float, modbus_slave: int | None = None, stop_at_first: bool = True,
          report=None, attempts: list[dict] | None = None) -> list[dict]:
    """One attempt per speed (appended to ``attempts`` as it ends, and given to ``report``), until a
    protocol is found (``stop_at_first``), the port cannot be opened, or every speed was tried.

    Ctrl-C (KeyboardInterrupt) is raised on, with the speed it cut short (while listening, asking or closing
    the port) in ``attempts``: ``interrupted``, with the bytes read so far analysed. The caller still holds
    what was found.
    """
    from drivers.serial_port import open_serial

    attempts = [] if attempts is None else attempts
    for baud in bauds:
        attempt = {"baud": baud, "framing": "8N1", "bytes": 0, "seconds": 0.0, "found": None}
        try:
            ser = open_serial(port, baudrate=baud, bytesize=8, parity="N", stopbits=1, timeout=0.1)
        except Exception as exc:  # noqa: BLE001 - reported, not raised
            attempt["error"] = f"cannot open: {_open_error(port, exc)}"
            attempts.append(attempt)
            if report:
                report(attempt)
            break
        buf = bytearray()
        start = time.monotonic()
        recorded = False
        try:
            try:
                ser.reset_input_buffer()
                deadline = start + listen
                while time.monotonic() < deadline and len(buf) < MAX_BYTES:
                    buf += ser.read(max(1, min(ser.in_waiting, 4096)))
                    if len(buf) >= 256 and analyse(bytes(buf)):
                        break
                attempt["found"] = analyse(bytes(buf))
                if attempt["found"] is None and modbus_slave is not None:
                    attempt["modbus_slave"] = modbus_slave
                    attempt["found"] = _modbus(ser, modbus_slave, listen)
            except Exception as exc:  # noqa: BLE001
                attempt["error"] = f"read failed: {exc}"
            finally:
                ser.close()  # a Ctrl-C here too is caught below
            attempt["bytes"] = len(buf)
            attempt["seconds"] = round(time.monotonic() - start, 2)
            attempts.append(attempt)
            recorded = True
        except KeyboardInterrupt:
            if not recorded:  # recorded first, analysed after: a second Ctrl-C during the analysis loses nothing
                attempt.update(interrupted=True, bytes=len(buf), seconds=round(time.monotonic() - start, 2))
                attempts.append(attempt)
                if attempt["found"] is None:
                    attempt["found"] = analyse(bytes(buf))
            raise
        if report:
            report(attempt)
        if attempt["found"] and stop_at_first:
            break
    return attempts


def _open_error(port: str, exc: Exception) -> str:
    import errno
    import os

    text = str(exc)
    err = getattr(exc, "errno", None) or getattr(exc.__context__, "errno", None)
    if err == errno.EACCES or "Permission denied" in text:
        return f"{text} (add the user to the device's group, e.g. `usermod -aG dialout $USER`, then log in again)"
    if "://" not in port and not os.path.exists(port):
        if not port.startswith("/"):  # "ttyUSB0" as dmesg names it
            if os.path.exists(f"/dev/{port}"):
                return f"{port}: no such device; did you mean /dev/{port}?"
            return f"{port}: no such device"
        return f"{port}: no such device (is it plugged in? see `ls -l /dev/serial/by-id/`)"
    if err == errno.ENOENT:
        return f"{port}: no such device (is it plugged in? see `ls -l /dev/serial/by-id/`)"
    if err in (errno.ENOTTY, errno.EISDIR) or "Inappropriate ioctl" in text:  # a file, a folder, /dev/null
        return f"{port} is not a serial port"
    if "exclusively lock" in text:  # the gateway's drivers lock the ports they read
        return f"{port}: in use by another program (the gateway?): stop it first, e.g. `systemctl stop edge-gateway`"
    if err == errno.EBUSY or "busy" in text.lower():
        return f"{text} (another program holds the port: stop it, e.g. `systemctl stop edge-gateway`)"
    return text


NO_BYTES = "no bytes at any speed: is the sensor powered, TX wired to RX, and the port right?"


def _seconds(s: float) -> str:
    """``s`` for people: one decimal (``1.0``) unless that would round it (``0.25``)."""
    return f"{s:.1f}" if abs(round(s, 1) - s) < 1e-9 else f"{s:g}"


def _looks_like(found: dict) -> str:
    """What a found protocol looks like, with how much of the bytes agreed."""
    if found["protocol"] == "pms5003":
        return f"PMS5003 frames ({found['frames']} valid, {found['bad_frames']} bad)"
    fmt = found["options"]["format"]
    return f"{fmt} text lines ({found['good_lines']} of {found['lines']} parse)"


def speed_line(attempt: dict, listen: float) -> str:
    """The line printed as soon as the attempt at one speed ends."""
    head = f"{attempt['baud']} baud: "
    if attempt.get("error"):
        return head + attempt["error"]
    n = attempt["bytes"]
    if attempt.get("interrupted"):
        head += f"interrupted after {_seconds(attempt['seconds'])} s, "
    if attempt["found"]:
        if attempt["found"]["protocol"] == "modbus-rtu":
            f = attempt["found"]
            return head + f"{n} bytes; Modbus RTU slave {f['slave']} answered, {f['answer']}"
        return head + f"{n} bytes, looks like {_looks_like(attempt['found'])}"
    asked = f", no answer from Modbus slave {attempt['modbus_slave']}" if "modbus_slave" in attempt else ""
    if n == 0:
        return head + (f"0 bytes{asked}" if attempt.get("interrupted") else f"0 bytes in {_seconds(listen)} s{asked}")
    return head + f"{n} bytes, no known protocol{asked}"


def found_attempts(attempts: list[dict]) -> list[dict]:
    """The attempts that recognised a protocol, in the order tried: one rule for the text and ``--json``. An
    attempt Ctrl-C cut short counts when the bytes it had read decode (it is marked ``interrupted``)."""
    return [a for a in attempts if a["found"]]


def _listed(attempts: list[dict]) -> str:
    return ", ".join(str(a["baud"]) for a in attempts)


def summary(port: str, attempts: list[dict], bauds, interrupted: bool = False,
            shown: int | None = None, listen: float = 0.0) -> list[str]:
    """The lines after the per-speed ones: what was found (and its sensor entry), or why nothing was.

    Interrupted, the speed lines not printed yet come first: those of ``attempts[shown:]`` (by default
    those of the attempts cut short), as :func:`speed_line` with ``listen``.
    """
    lines = []
    if interrupted:
        done = [a for a in attempts if not a.get("interrupted")]
        unshown = [a for a in attempts if a.get("interrupted")] if shown is None else attempts[shown:]
        lines.append(f"interrupted (Ctrl-C): tried {_listed(done) or 'none'} of {', '.join(map(str, bauds))} baud")
        lines += [speed_line(a, listen) for a in unshown]
    found = found_attempts(attempts)
    if found:
        a = found[0]
        how = f"{a['framing']}, in the bytes read before Ctrl-C" if a.get("interrupted") else a["framing"]
        lines.append(f"found at {a['baud']} baud ({how}): {a['found']['summary']}")
        lines += ["", "suggested sensor config:", suggestion(port, a)]
        if a["found"].get("note"):
            lines += ["", f"note: {a['found']['note']}"]
    else:
        line = _nothing_found(attempts, bauds, interrupted)
        if line:
            lines.append(line)
    return lines


def _nothing_found(attempts: list[dict], bauds, interrupted: bool) -> str | None:
    """The last line when no protocol was recognised. None only after a single attempt that failed: its
    line said why (a port that cannot be opened)."""
    done = [a for a in attempts if not a.get("interrupted")]
    read = [a for a in attempts if not a.get("error")]
    failed = [a for a in attempts if a.get("error")]
    if failed and len(attempts) == 1 and not interrupted:
        return None
    note = f"; {_listed(failed)} baud failed (see above)" if failed else ""
    if any(a["bytes"] for a in read):
        return (f"no known protocol at {_listed(read)} baud (a longer --listen may help; edge-gateway record PORT "
                f"FILE captures the bytes to look at){note}")
    if interrupted and len(done) < len(bauds):  # the wiring hint would be a guess: most speeds were not tried
        return f"no bytes so far ({len(done)} of {len(bauds)} speeds tried){note}"
    if not failed:
        return NO_BYTES
    return f"no bytes at {_listed(read)} baud{note}" if read else f"nothing read{note}"


def handle(args) -> int:
    bauds = tuple(args.baud) if args.baud else BAUDS
    attempts: list[dict] = []
    shown = 0  # attempts[:shown] were reported (a Ctrl-C between recording and reporting one leaves it out)

    def report(attempt: dict) -> None:
        nonlocal shown
        if not args.json:
            print(speed_line(attempt, args.listen), flush=True)
        shown += 1

    interrupted = False
    try:
        probe(args.port, bauds, args.listen, args.modbus_slave, stop_at_first=not args.all, report=report,
              attempts=attempts)
    except KeyboardInterrupt:
        interrupted = True
    found = found_attempts(attempts)
    if args.json:
        doc = {"port": args.port, "found": found[0] if found else None, "attempts": attempts}
        if interrupted:
            doc["interrupted"] = True
        print(json.dumps(doc, indent=2, default=str), flush=True)
    else:
        lines = summary(args.port, attempts, bauds, interrupted, shown, args.listen)
        if lines:
            print("\n" + "\n".join(lines), flush=True)
    if interrupted:
        return 130
    return 0 if found else 1


def suggestion(port: str, attempt: dict) -> str:
    """The sensor entry for an attempt that found a protocol, indented to paste under ``sensors:``.

    Options are JSON, which YAML reads as a flow mapping: no quoting rule of YAML to get wrong. The settings
    of the driver's options that carry a unit are spelt out (:func:`with_units`).
    """
    f = attempt["found"]
    opts = {"port": port, "baudrate": attempt["baud"], **f["options"]}
    try:
        import drivers

        opts = with_units(drivers.get(f["driver"]).Options, opts, f.get("channels", ()))
    except (ImportError, KeyError, AttributeError):  # pragma: no cover - a driver left out of this install
        pass
    entry = f"  - id: CHANGE-ME\n    driver: {f['driver']}\n    options: {json.dumps(opts)}"
    text = json.dumps(opts)
    said = (["durations (*_s) are in seconds"] if re.search(r'_s": ', text) else []) + (
        ['fill in the units ("" for none)'] if re.search(r'"units?": ', text) else [])
    return entry + (f"\n    # {'; '.join(said)}" if said else "")


def with_units(options_type, given: dict, channels=()) -> dict:
    """``given`` (options of ``options_type``, a driver's options dataclass) with the settings that carry a
    unit added where missing: durations (``*_s``, seconds) at their defaults, and ``unit``/``units`` to fill
    in (one per channel), also inside nested lists of settings (Modbus blocks and their fields)."""
    out = dict(given)
    hints = typing.get_type_hints(options_type)
    for f in dataclasses.fields(options_type):
        if not f.init or f.metadata.get("internal"):
            continue
        tp = hints[f.name]
        if f.name in out:
            item = typing.get_args(tp)[0] if typing.get_origin(tp) in (tuple, list) else None
            if dataclasses.is_dataclass(item) and isinstance(out[f.name], list):
                out[f.name] = [with_units(item, v) if isinstance(v, dict) else v for v in out[f.name]]
        elif f.name.endswith("_s") and f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.name == "unit" and tp is str:
            out[f.name] = ""
        elif f.name == "units" and typing.get_origin(tp) is dict and channels:
            out[f.name] = {ch: "" for ch in channels}
    return out
