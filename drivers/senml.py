"""SenML (RFC 8428) packs in JSON (content-format 110) or CBOR (112) to numeric records.

Resolution follows RFC 8428 section 4.6: the name is base name + name, the
value base value + value (``vb`` booleans count as 0/1, ``s`` sums are kept),
the unit the record's unit or the base unit, the time base time + time, and a
resolved time below 2**28 is relative to ``now``. Base fields carry over to
later records. String and data values (``vs``, ``vd``) are not numbers and are
left out without counting as errors.

This module never raises on input: :func:`decode` returns the records it could
resolve and the number of records (or whole payloads) it had to reject, so a
node sending rubbish shows up as a counter, not as a crashed driver.
"""

from __future__ import annotations

import json
import math
from typing import NamedTuple

import cbor2

CT_JSON = 50
CT_SENML_JSON = 110
CT_SENML_CBOR = 112
RELATIVE_LIMIT = 2 ** 28

# RFC 8428 table 6: CBOR labels of the JSON keys
_CBOR_LABELS = {-1: "bver", -2: "bn", -3: "bt", -4: "bu", -5: "bv", -6: "bs",
                0: "n", 1: "u", 2: "v", 3: "vs", 4: "vb", 5: "s", 6: "t", 7: "ut", 8: "vd"}


class Record(NamedTuple):
    name: str
    value: float
    ts: float
    unit: str


def _num(x) -> float | None:
    """A finite float from a JSON/CBOR number; None for anything else (bools are not numbers)."""
    if x.__class__ is float:
        return x if math.isfinite(x) else None
    if x.__class__ is int:
        try:
            return float(x)
        except OverflowError:
            return None
    return None


class _Keys(NamedTuple):
    bn: object
    bt: object
    bu: object
    bv: object
    bs: object
    n: object
    u: object
    v: object
    vs: object
    vb: object
    s: object
    t: object
    vd: object
    base: frozenset


JSON_KEYS = _Keys("bn", "bt", "bu", "bv", "bs", "n", "u", "v", "vs", "vb", "s", "t", "vd",
                  frozenset(("bver", "bn", "bt", "bu", "bv", "bs")))
CBOR_KEYS = _Keys(-2, -3, -4, -5, -6, 0, 1, 2, 3, 4, 5, 6, 8, frozenset((-1, -2, -3, -4, -5, -6)))


def resolve(pack, now: float, keys: _Keys = JSON_KEYS) -> tuple[list[Record], int]:
    """Resolve parsed records (dicts keyed by JSON names, or by CBOR labels with ``CBOR_KEYS``)."""
    if pack.__class__ is not list:
        return [], 1
    out: list[Record] = []
    errors = 0
    bn, bt, bu, bv, bs = "", 0.0, "", 0.0, 0.0
    K = keys
    base = K.base
    append = out.append
    isfinite = math.isfinite
    new = tuple.__new__
    for rec in pack:
        if rec.__class__ is not dict:
            errors += 1
            continue
        try:
            if not base.isdisjoint(rec):
                nbn, nbt, nbu = rec.get(K.bn, bn), _num(rec.get(K.bt, bt)), rec.get(K.bu, bu)
                nbv, nbs = _num(rec.get(K.bv, bv)), _num(rec.get(K.bs, bs))
                if nbn.__class__ is not str or nbu.__class__ is not str or None in (nbt, nbv, nbs):
                    errors += 1
                    continue
                bn, bt, bu, bv, bs = nbn, nbt, nbu, nbv, nbs
            name = rec.get(K.n, "")
            if name.__class__ is not str:
                errors += 1
                continue
            v = rec.get(K.v)
            if v is not None:
                v = _num(v)
                if v is None:
                    errors += 1
                    continue
                value = bv + v
            elif K.vb in rec:
                vb = rec[K.vb]
                if vb.__class__ is not bool:
                    errors += 1
                    continue
                value = 1.0 if vb else 0.0
            elif K.s in rec:
                s = _num(rec[K.s])
                if s is None:
                    errors += 1
                    continue
                value = bs + s
            elif K.vs in rec or K.vd in rec or not base.isdisjoint(rec):
                continue
            else:
                errors += 1
                continue
            t = rec.get(K.t)
            ts = bt if t is None else bt + _num(t)
            if ts < RELATIVE_LIMIT:
                ts += now
            unit = rec.get(K.u, bu)
            full = bn + name
            if unit.__class__ is not str or not full or not isfinite(value) or not isfinite(ts):
                errors += 1
                continue
            append(new(Record, (full, value, ts, unit)))
        except (TypeError, ValueError, OverflowError):
            errors += 1
    return out, errors


def decode_json(payload: bytes, now: float) -> tuple[list[Record], int]:
    try:
        pack = json.loads(payload)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return [], 1
    return resolve(pack, now, JSON_KEYS)


def decode_cbor(payload: bytes, now: float) -> tuple[list[Record], int]:
    try:
        pack = cbor2.loads(payload)
    except Exception:  # noqa: BLE001 - cbor2 raises many types on hostile input
        return [], 1
    return resolve(pack, now, CBOR_KEYS)


def decode(payload: bytes, content_format: int | None, now: float) -> tuple[list[Record], int]:
    """Decode a SenML payload of either content format."""
    if content_format == CT_SENML_CBOR:
        return decode_cbor(payload, now)
    return decode_json(payload, now)


def encode_json(records: list[dict]) -> bytes:
    return json.dumps(records, separators=(",", ":")).encode()


def encode_cbor(records: list[dict]) -> bytes:
    back = {v: k for k, v in _CBOR_LABELS.items()}
    return cbor2.dumps([{back.get(k, k): v for k, v in r.items()} for r in records])
