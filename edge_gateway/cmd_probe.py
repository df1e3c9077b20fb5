"""``edge-gateway probe PORT``: what is talking on this serial port, at which speed, in which protocol?

For each baud rate (9600, 19200, 38400, 57600, 115200 unless ``--baud``) the
port is opened 8N1 and listened to for ``--listen`` seconds; the bytes are
tried against our decoders: PMS5003 frames (:mod:`drivers.pms5003`), text
lines in ``kv``, ``json`` or ``csv`` (:class:`drivers.serial_line.LineDecoder`).
Modbus RTU devices speak only when asked, so ``--modbus-slave N`` also sends a
read-holding-registers request (address 0, 1 register) to slave N at each speed
and looks for a valid answer; without it probe never writes to the port.

Prints e.g. ``9600 8N1, PMS5003 frames, PM2.5=12`` and a sensor entry to
paste under ``sensors:`` (for Modbus: the slave, the register read and 8N1
spelt out, as one block to extend from the meter's register map);
``--json`` prints every attempt. Probing stops at the first speed that decodes
cleanly (``--all`` tries every one). A pty (simulator, ``replay``) ignores the
baud rate, so the first speed tried wins there.

Exit statuses: 0 a known protocol was found; 1 nothing recognised, or the port
cannot be opened (the message says why: missing, permission, busy); 2 bad usage.
"""

from __future__ import annotations

import json
import time

BAUDS = (9600, 19200, 38400, 57600, 115200)


def add_to(sub) -> None:
    from .cmd_common import doc_part, int_in, positive_float

    p = sub.add_parser("probe", help="find the speed and protocol of a serial device",
                       description=doc_part(__doc__, 1))
    p.add_argument("port", help="device path (/dev/ttyUSB0, /dev/serial/by-id/...) or pyserial URL")
    p.add_argument("--baud", type=int_in(1), action="append", help="try only this speed (repeatable)")
    p.add_argument("--listen", type=positive_float, default=2.5, metavar="S",
                   help="seconds to listen at each speed")
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

    nl = data.find(b"\n")
    if nl < 0:
        return None
    body = data[nl + 1:]  # the first line is probably cut: we started listening mid-line
    raw_lines = [ln.strip(b"\r \t") for ln in body.split(b"\n")[:-1]]
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
    found = {"protocol": "modbus-rtu", "driver": "modbus_rtu", "values": {},
             "options": {"parity": "N", "stopbits": 1, "blocks": [block]}}
    if resp.exception:
        found["summary"] = f"Modbus RTU slave {slave}, holding register 0: exception {resp.exception}"
        found["note"] = (f"slave {slave} answers but refused holding register 0: set the block's function, "
                         "address, count and fields to registers from the meter's manual")
    else:
        value = int.from_bytes(resp.data, "big")
        found["summary"] = f"Modbus RTU slave {slave}, holding register 0 = {value}"
        found["values"] = {"reg0": value}
    return found


def probe(port: str, bauds, listen: float, modbus_slave: int | None = None, stop_at_first: bool = True) -> list[dict]:
    from drivers.serial_port import open_serial

    attempts = []
    for baud in bauds:
        attempt = {"baud": baud, "framing": "8N1", "bytes": 0, "found": None}
        try:
            ser = open_serial(port, baudrate=baud, bytesize=8, parity="N", stopbits=1, timeout=0.1)
        except Exception as exc:  # noqa: BLE001 - reported, not raised
            attempt["error"] = _open_error(port, exc)
            attempts.append(attempt)
            break
        try:
            ser.reset_input_buffer()
            buf = bytearray()
            deadline = time.monotonic() + listen
            while time.monotonic() < deadline and len(buf) < 65536:
                buf += ser.read(max(1, min(ser.in_waiting, 4096)))
                if len(buf) >= 256 and analyse(bytes(buf)):
                    break
            attempt["bytes"] = len(buf)
            attempt["found"] = analyse(bytes(buf))
            if attempt["found"] is None and modbus_slave is not None:
                attempt["found"] = _modbus(ser, modbus_slave, listen)
        except Exception as exc:  # noqa: BLE001
            attempt["error"] = str(exc)
        finally:
            ser.close()
        attempts.append(attempt)
        if attempt["found"] and stop_at_first:
            break
    return attempts


def _open_error(port: str, exc: Exception) -> str:
    import errno
    import os

    text = str(exc)
    err = getattr(exc, "errno", None)
    if err == errno.EACCES or "Permission denied" in text:
        return f"{text} (add the user to the device's group, e.g. `usermod -aG dialout $USER`, then log in again)"
    if err == errno.ENOENT or not (os.path.exists(port) or "://" in port):
        return f"{port}: no such device (is it plugged in? see `ls -l /dev/serial/by-id/`)"
    if "exclusively lock" in text:  # the gateway's drivers lock the ports they read
        return f"{port}: in use by another program (the gateway?): stop it first, e.g. `systemctl stop edge-gateway`"
    if err == errno.EBUSY or "busy" in text.lower():
        return f"{text} (another program holds the port: stop it, e.g. `systemctl stop edge-gateway`)"
    return text


def handle(args) -> int:
    bauds = tuple(args.baud) if args.baud else BAUDS
    attempts = probe(args.port, bauds, args.listen, args.modbus_slave, stop_at_first=not args.all)
    found = [a for a in attempts if a["found"]]
    if args.json:
        print(json.dumps({"port": args.port, "found": found[0] if found else None, "attempts": attempts},
                         indent=2, default=str))
    else:
        for a in attempts:
            if a.get("error"):
                print(f"{a['baud']} {a['framing']}: cannot open: {a['error']}")
            elif a["found"]:
                print(f"{a['baud']} {a['framing']}, {a['found']['summary']}")
            else:
                print(f"{a['baud']} {a['framing']}: {a['bytes']} bytes, no known protocol")
        if found:
            print(f"\nsuggested sensor config:\n{suggestion(args.port, found[0])}")
            if found[0]["found"].get("note"):
                print(f"\nnote: {found[0]['found']['note']}")
    return 0 if found else 1


def suggestion(port: str, attempt: dict) -> str:
    """The sensor entry for an attempt that found a protocol, indented to paste under ``sensors:``.

    Options are JSON, which YAML reads as a flow mapping: no quoting rule of YAML to get wrong.
    """
    f = attempt["found"]
    opts = {"port": port, "baudrate": attempt["baud"], **f["options"]}
    return f"  - id: CHANGE-ME\n    driver: {f['driver']}\n    options: {json.dumps(opts)}"
