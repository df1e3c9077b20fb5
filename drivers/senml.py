"""SenML (RFC 8428) packs in JSON (content-format 110) or CBOR (112) to numeric records.

Resolution follows RFC 8428 section 4.6: the name is base name + name, the
value base value + value (``vb`` booleans count as 0/1, ``s`` sums are kept),
the unit the record's unit or the base unit, the time base time + time, and a
resolved time below 2**28 is relative to ``now``. Base fields carry over to
later records. String and data values (``vs``, ``vd``) are not numbers and are
left out without counting as errors.

Names and units reach a technician's terminal (``status``, ``tail``) and Prometheus labels, so they are
bounded here: a resolved name of more than :data:`MAX_NAME` characters, and a unit (``u``, ``bu``) that is
longer than :data:`MAX_UNIT` or not printable (:meth:`str.isprintable`: no ESC, BEL, NUL, line end), make
their record malformed, like any name that breaks section 4.5.1.

What RFC 8428 makes a receiver refuse is refused: a whole pack whose ``bver`` is
not a version up to 10 (section 4.4: a newer one may mean something else), or
that holds a field whose name ends in ``_`` (must-understand, section 4.4; none
is known here); and any record whose resolved name breaks section 4.5.1. A base
field that is invalid is not silently replaced by the previous base: it stays
unusable until a later record sets it again, so the records that rely on it are
rejected rather than published under another device's name or time.

This module never raises on input: :func:`decode` returns the records it could
resolve and the number of records (or whole payloads) it had to reject, so a
node sending rubbish shows up as a counter, not as a crashed driver. The one
exception is :class:`TooLarge`, raised only when the caller set ``max_records``.
"""

from __future__ import annotations

import json
import math
import re
from typing import NamedTuple

import cbor2

from edge_gateway.readings import MAX_NAME, MAX_UNIT

CT_JSON = 50
CT_SENML_JSON = 110
CT_SENML_CBOR = 112
RELATIVE_LIMIT = 2 ** 28
MAX_VERSION = 10
NAME = re.compile(r"[A-Za-z0-9][-A-Za-z0-9:./_]*")

# RFC 8428 table 6: CBOR labels of the JSON keys
_CBOR_LABELS = {-1: "bver", -2: "bn", -3: "bt", -4: "bu", -5: "bv", -6: "bs",
                0: "n", 1: "u", 2: "v", 3: "vs", 4: "vb", 5: "s", 6: "t", 7: "ut", 8: "vd"}


class TooLarge(ValueError):
    """A pack with more records than the caller allows: refused whole, before any work on its records."""


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
    bver: object
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
    known: frozenset


JSON_KEYS = _Keys("bver", "bn", "bt", "bu", "bv", "bs", "n", "u", "v", "vs", "vb", "s", "t", "vd",
                  frozenset(("bver", "bn", "bt", "bu", "bv", "bs")), frozenset(_CBOR_LABELS.values()) - {"bver"})
CBOR_KEYS = _Keys(-1, -2, -3, -4, -5, -6, 0, 1, 2, 3, 4, 5, 6, 8, frozenset((-1, -2, -3, -4, -5, -6)),
                  frozenset(_CBOR_LABELS) - {-1})
_valid_names: set[str] = set()
_VALID_NAMES_MAX = 4096


def valid_name(name: str) -> bool:
    """RFC 8428 section 4.5.1 and at most :data:`MAX_NAME` characters; names repeat in every pack, so the
    ones seen valid are remembered (boundedly)."""
    if name in _valid_names:
        return True
    if len(name) > MAX_NAME or NAME.fullmatch(name) is None:
        return False
    if len(_valid_names) >= _VALID_NAMES_MAX:
        _valid_names.clear()
    _valid_names.add(name)
    return True


def channel_name_ok(name: object) -> bool:
    """A channel name a node may give (a CoAP JSON object's key): a non-empty printable string
    (:meth:`str.isprintable`) of at most :data:`MAX_NAME` characters."""
    return name.__class__ is str and 0 < len(name) <= MAX_NAME and name.isprintable()


def unit_ok(unit: object) -> bool:
    """A unit a node may give (SenML ``u`` or ``bu``): a printable string of at most :data:`MAX_UNIT`
    characters; "" (no unit) is one."""
    return unit.__class__ is str and len(unit) <= MAX_UNIT and unit.isprintable()


def _refuses(rec: dict, K: _Keys) -> bool:
    """True when RFC 8428 section 4.4 forbids using the pack: an unknown version, or a must-understand field.

    ``bver`` is not among ``K.known``, so any record carrying it comes here.
    """
    if K.bver in rec:
        version = rec[K.bver]
        if version.__class__ is not int or not 0 < version <= MAX_VERSION:
            return True
    return any(k.__class__ is str and k.endswith("_") for k in rec if k not in K.known)


def resolve(pack, now: float, keys: _Keys = JSON_KEYS, max_records: int | None = None,
            relative: list[bool] | None = None) -> tuple[list[Record], int]:
    """Resolve parsed records (dicts keyed by JSON names, or by CBOR labels with ``CBOR_KEYS``).

    A base field that fails validation becomes None, so a later record that relies on it fails
    (TypeError) and is counted, until a record sets that field again. ``relative``, if given, gets one
    entry per record returned: whether its time is relative to ``now`` (the receiver's clock, which a
    step of that clock moves), not the node's own absolute time.
    """
    if pack.__class__ is not list:
        return [], 1
    if max_records is not None and len(pack) > max_records:
        raise TooLarge(f"pack of {len(pack)} records exceeds max_records={max_records}")
    out: list[Record] = []
    errors = 0
    bn, bt, bu, bv, bs = "", 0.0, "", 0.0, 0.0
    K = keys
    base = K.base
    known = K.known
    append = out.append
    isfinite = math.isfinite
    valid = _valid_names
    new = tuple.__new__
    for rec in pack:
        if rec.__class__ is not dict:
            errors += 1
            continue
        try:
            if not known.issuperset(rec) and _refuses(rec, K):
                return [], len(pack)
            if not base.isdisjoint(rec):
                ok = True
                if K.bn in rec:
                    bn = rec[K.bn] if rec[K.bn].__class__ is str else None
                    ok = bn is not None
                if K.bt in rec:
                    bt = _num(rec[K.bt])
                    ok = ok and bt is not None
                if K.bu in rec:
                    bu = rec[K.bu] if unit_ok(rec[K.bu]) else None
                    ok = ok and bu is not None
                if K.bv in rec:
                    bv = _num(rec[K.bv])
                    ok = ok and bv is not None
                if K.bs in rec:
                    bs = _num(rec[K.bs])
                    ok = ok and bs is not None
                if not ok:
                    errors += 1
                    continue
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
            rel = ts < RELATIVE_LIMIT
            if rel:
                ts += now
            unit = rec.get(K.u, bu)
            full = bn + name
            # bu was checked when set (a bad one is None); a record's own u is checked here
            if unit.__class__ is not str or (unit is not bu and not unit_ok(unit)) \
                    or not (full in valid or valid_name(full)) or not isfinite(value) or not isfinite(ts):
                errors += 1
                continue
            append(new(Record, (full, value, ts, unit)))
            if relative is not None:
                relative.append(rel)
        except (TypeError, ValueError, OverflowError):
            errors += 1
    return out, errors


def decode_json(payload: bytes, now: float, max_records: int | None = None,
                relative: list[bool] | None = None) -> tuple[list[Record], int]:
    try:
        pack = json.loads(payload)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return [], 1
    return resolve(pack, now, JSON_KEYS, max_records, relative)


def decode_cbor(payload: bytes, now: float, max_records: int | None = None,
                relative: list[bool] | None = None) -> tuple[list[Record], int]:
    try:
        pack = cbor2.loads(payload)
    except Exception:  # noqa: BLE001 - cbor2 raises many types on hostile input
        return [], 1
    return resolve(pack, now, CBOR_KEYS, max_records, relative)


def decode(payload: bytes, content_format: int | None, now: float,
           max_records: int | None = None, relative: list[bool] | None = None) -> tuple[list[Record], int]:
    """Decode a SenML payload of either content format; :class:`TooLarge` past ``max_records`` records.
    ``relative``: see :func:`resolve`."""
    if content_format == CT_SENML_CBOR:
        return decode_cbor(payload, now, max_records, relative)
    return decode_json(payload, now, max_records, relative)


def encode_json(records: list[dict]) -> bytes:
    return json.dumps(records, separators=(",", ":")).encode()


def encode_cbor(records: list[dict]) -> bytes:
    back = {v: k for k, v in _CBOR_LABELS.items()}
    return cbor2.dumps([{back.get(k, k): v for k, v in r.items()} for r in records])
