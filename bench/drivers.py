"""Decoder throughput: each driver's decoder against the most obvious code for the same bytes.

Prints one JSON object: for ``line``, ``pms5003``, ``modbus`` and ``senml_cbor``
the decoded ``readings_per_s`` of the real decoder and ``baseline_readings_per_s``
of a naive decoder written here, on the same bytes in the same run, pinned to
one core. Each figure is the best of three timed passes; the whole run takes a
few seconds.

    .venv/bin/python bench/drivers.py
"""

from __future__ import annotations

import json
import os
import platform
import struct
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from drivers import senml  # noqa: E402
from drivers.modbus_frames import FieldLayout, FieldSpec, RtuResponseDecoder, encode_response, encode_value  # noqa: E402
from drivers.pms5003 import Pms5003Decoder  # noqa: E402
from drivers.serial_line import LineDecoder  # noqa: E402
from simulators.pms5003 import scenario_frames  # noqa: E402
from simulators.serial_line import scenario_lines  # noqa: E402

T0 = 1_700_000_000.0
CHUNK = 1024


def chunks(data: bytes, size: int = CHUNK) -> list[bytes]:
    return [data[i:i + size] for i in range(0, len(data), size)]


def best_rate(fn, pieces: list[bytes], repeat: int = 3) -> float:
    best = 0.0
    for _ in range(repeat):
        start = time.perf_counter()
        n = fn(pieces)
        elapsed = time.perf_counter() - start
        best = max(best, n / elapsed)
    return best


# ---- line: 3 channels per kv line

def line_real(pieces):
    d = LineDecoder("kv")
    return sum(len(s) for p in pieces for s in d.feed(p))


def line_naive(pieces):
    buf = b""
    out = []
    for p in pieces:
        buf += p
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            try:
                samples = []
                for pair in line.decode().strip().split(","):
                    key, value = pair.split("=")
                    samples.append((key, float(value)))
                out.append(samples)
            except ValueError:
                pass
    return sum(len(s) for s in out)


# ---- pms5003: 3 channels per frame, 5% of frames preceded by garbage

def pms_real(pieces):
    d = Pms5003Decoder()
    return 3 * sum(len(d.feed(p)) for p in pieces)


def pms_naive(pieces):
    buf = bytearray()
    out = []
    n = 0
    for p in pieces:
        buf += p
        while len(buf) >= 32:
            if buf[0] == 0x42 and buf[1] == 0x4D:
                total = 0
                for b in buf[:30]:
                    total += b
                if total == (buf[30] << 8 | buf[31]):
                    words = [int.from_bytes(buf[2 + 2 * i:4 + 2 * i], "big") for i in range(14)]
                    out.append((words[4], words[5], words[6]))
                    n += 3
                    del buf[:32]
                    continue
            del buf[0]
    return n


# ---- modbus: responses of one 6-register block with 4 fields

MB_FIELDS = [FieldSpec("voltage", 0, "uint16", scale=0.1), FieldSpec("power", 1, "int32"),
             FieldSpec("pressure", 3, "float32", "little"), FieldSpec("flow", 5, "uint16", scale=0.1)]


def modbus_stream(n: int) -> list[bytes]:
    out = []
    for k in range(n):
        regs = [2300 + k % 50] + encode_value("int32", "big", 1500 - k) + encode_value("float32", "little", 4.2) + [k]
        out.append(encode_response(1, 3, regs))
    return out


def modbus_real(frames):
    layout = FieldLayout(MB_FIELDS, 6)
    n = 0
    for f in frames:
        d = RtuResponseDecoder(1, 3, 6)
        for r in d.feed(f):
            n += len(layout.decode(r.data))
    return n


def modbus_naive(frames):
    from pymodbus.framer import FramerRTU
    from pymodbus.pdu import DecodePDU

    framer = FramerRTU(DecodePDU(is_server=False))
    out = []
    n = 0
    for f in frames:
        _, pdu = framer.handleFrame(f, 1, 0)
        regs = pdu.registers
        power = regs[1] << 16 | regs[2]
        out.append([("voltage", regs[0] * 0.1, ""),
                    ("power", float(power - (1 << 32) if power & 0x80000000 else power), ""),
                    ("pressure", struct.unpack(">f", struct.pack(">HH", regs[4], regs[3]))[0], ""),
                    ("flow", regs[5] * 0.1, "")])
        n += 4
    return n


# ---- senml cbor: packs of 10 records

def senml_packs(n: int) -> list[bytes]:
    out = []
    for k in range(n):
        recs = [{"n": f"bin{i}_fill", "u": "%", "v": 40.0 + i + k % 7, "t": i} for i in range(10)]
        recs[0] = {"bn": "bins-1:", "bt": T0 + k, **recs[0]}
        out.append(senml.encode_cbor(recs))
    return out


def senml_real(packs):
    return sum(len(senml.decode_cbor(p, T0)[0]) for p in packs)


def senml_naive(packs):
    import cbor2

    n = 0
    out = []
    for p in packs:
        bn, bt, bu = "", 0.0, ""
        for rec in cbor2.loads(p):
            bn = rec.get(-2, bn)
            bt = rec.get(-3, bt)
            bu = rec.get(-4, bu)
            if 2 not in rec:
                continue
            out.append((bn + rec.get(0, ""), float(rec[2]), bt + rec.get(6, 0), rec.get(1, bu)))
            n += 1
    return n


def main() -> int:
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    lines = b"".join(scenario_lines(1, T0, 0.1, 40_000, "kv"))
    frames = list(scenario_frames(1, T0, 1.0, 30_000))
    pms = b"".join((b"\x00\x42junk" if k % 20 == 0 else b"") + f for k, f in enumerate(frames))
    cases = {
        "line": (line_real, line_naive, chunks(lines)),
        "pms5003": (pms_real, pms_naive, chunks(pms)),
        "modbus": (modbus_real, modbus_naive, modbus_stream(20_000)),
        "senml_cbor": (senml_real, senml_naive, senml_packs(5_000)),
    }
    result = {}
    for name, (real, naive, data) in cases.items():
        assert real(data) == naive(data), name
        r, b = best_rate(real, data), best_rate(naive, data)
        result[name] = {"readings_per_s": round(r), "baseline_readings_per_s": round(b), "speedup": round(r / b, 2)}
    result["python"] = platform.python_version()
    result["machine"] = platform.machine()
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
