"""Property tests for every decoder: arbitrary bytes never raise, and valid frames embedded in
garbage and split across arbitrary read boundaries are all recovered, in order."""

from __future__ import annotations

import json
import math
import re
import struct

import cbor2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from drivers import senml
from drivers.coap import CoapResource, decode_payload
from drivers.modbus_frames import TYPES, FieldLayout, FieldSpec, RtuResponseDecoder, encode_response, encode_value
from drivers.pms5003 import Pms5003Decoder, Pms5003Frame, encode_frame
from drivers.serial_line import LineDecoder

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
garbage = st.binary(max_size=80)


def feed_in_pieces(decoder, stream: bytes, cuts: list[int]) -> list:
    out = []
    last = 0
    for c in sorted(c % (len(stream) + 1) for c in cuts):
        out += decoder.feed(stream[last:c])
        last = max(last, c)
    return out + decoder.feed(stream[last:])


def is_subsequence(wanted: list, got: list) -> bool:
    it = iter(got)
    return all(any(w == g for g in it) for w in wanted)


# ---- line

finite = st.floats(allow_nan=False, allow_infinity=False, width=32, min_value=-1e6, max_value=1e6)
names = st.text("abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=8)


@SETTINGS
@given(st.binary(max_size=400), st.sampled_from(["kv", "csv", "json"]), st.lists(st.integers(0, 400)))
def test_line_decoder_never_raises(data, fmt, cuts):
    d = LineDecoder(fmt, ("a", "b") if fmt == "csv" else (), max_line=64)
    feed_in_pieces(d, data, cuts)


@SETTINGS
@given(st.lists(st.tuples(garbage, st.dictionaries(names, finite, min_size=1, max_size=4)), max_size=6),
       st.sampled_from(["kv", "json"]), st.lists(st.integers(0, 2000)))
def test_line_frames_in_garbage_are_recovered(items, fmt, cuts):
    stream = b""
    wanted = []
    for junk, values in items:
        if fmt == "kv":
            line = ",".join(f"{k}={v!r}" for k, v in values.items())
        else:
            line = json.dumps(values)
        stream += junk + b"\n" + line.encode() + b"\n"
        wanted.append([(k, float(v), None) for k, v in values.items()])
    got = feed_in_pieces(LineDecoder(fmt), stream, cuts)
    assert is_subsequence(wanted, got)


@SETTINGS
@given(st.lists(st.tuples(st.integers(0, 40), st.sampled_from([b"a=1", b"b=2,c=3", b"x", b" ", b"\r"])), max_size=12),
       st.sampled_from([b"", b"\n", b"a=9"]), st.lists(st.integers(0, 600)))
def test_line_reads_split_anywhere_decode_as_one_read(lines, tail, cuts):
    """Lines around the length limit (16 here), cut into arbitrary reads: the same readings and counts."""
    stream = b"\n".join(b" " * n + body for n, body in lines) + tail
    whole = LineDecoder("kv", max_line=16)
    pieces = LineDecoder("kv", max_line=16)
    assert feed_in_pieces(pieces, stream, cuts) == whole.feed(stream)
    assert (pieces.lines, pieces.malformed) == (whole.lines, whole.malformed)


# ---- pms5003

words = st.tuples(*[st.integers(0, 0xFFFF)] * 13)
# words that put "BM" (and a valid length after it) inside a frame's data, aligned or across two words
bm_words = st.tuples(*[st.one_of(st.integers(0, 0xFFFF), st.sampled_from([0x424D, 0x001C, 0x0042, 0x4D00]))] * 13)


def broken_checksum(frame: bytes) -> bytes:
    return frame[:-1] + bytes([frame[-1] ^ 1])


@SETTINGS
@given(st.binary(max_size=600), st.lists(st.integers(0, 600)))
def test_pms5003_never_raises(data, cuts):
    d = Pms5003Decoder()
    for frame in feed_in_pieces(d, data, cuts):
        assert len(frame) == 13


@SETTINGS
@given(st.lists(st.tuples(garbage, words, st.lists(bm_words, max_size=2)), max_size=8), garbage,
       st.lists(st.integers(0, 2000)))
def test_pms5003_frames_in_garbage_are_recovered(items, tail, cuts):
    """Also behind frames with a broken checksum whose data holds "BM"."""
    stream = b"".join(junk + b"".join(broken_checksum(encode_frame(b)) for b in bad) + encode_frame(w)
                      for junk, w, bad in items) + tail
    got = feed_in_pieces(Pms5003Decoder(), stream, cuts)
    assert is_subsequence([Pms5003Frame(*w) for _, w, _ in items], got)


@SETTINGS
@given(st.lists(st.tuples(bm_words, st.booleans()), max_size=8), st.lists(st.integers(0, 2000)))
def test_pms5003_one_bad_frame_per_corrupt_frame(items, cuts):
    """Good frames and frames with a broken checksum, their data full of "BM": every good frame is recovered
    and each corrupt one is counted once, however the stream is cut into reads."""
    stream = b"".join(broken_checksum(encode_frame(w)) if bad else encode_frame(w) for w, bad in items)
    d = Pms5003Decoder()
    assert feed_in_pieces(d, stream, cuts) == [Pms5003Frame(*w) for w, bad in items if not bad]
    assert (d.frames, d.bad_frames) == (sum(not bad for _, bad in items), sum(bad for _, bad in items))


# ---- modbus

@SETTINGS
@given(st.binary(max_size=400), st.integers(1, 247), st.sampled_from([3, 4]), st.integers(1, 125),
       st.lists(st.integers(0, 400)))
def test_modbus_response_decoder_never_raises(data, slave, fc, count, cuts):
    for r in feed_in_pieces(RtuResponseDecoder(slave, fc, count), data, cuts):
        assert len(r.data) == 2 * count or r.exception


@SETTINGS
@given(st.integers(1, 247), st.sampled_from([3, 4]), st.lists(st.integers(0, 0xFFFF), min_size=1, max_size=20),
       garbage, garbage, st.lists(st.integers(0, 500)))
def test_modbus_response_in_garbage_is_recovered(slave, fc, regs, before, after, cuts):
    stream = before + encode_response(slave, fc, regs) + after
    got = feed_in_pieces(RtuResponseDecoder(slave, fc, len(regs)), stream, cuts)
    assert any(r.data == struct.pack(f">{len(regs)}H", *regs) for r in got)


field_types = st.sampled_from(sorted(TYPES))


@SETTINGS
@given(st.binary(max_size=40), st.lists(st.tuples(field_types, st.sampled_from(["big", "little"]),
                                                  st.integers(0, 18)), max_size=6))
def test_modbus_fields_never_raise(data, specs):
    fields = [FieldSpec(f"f{i}", off, t, o, 0.1) for i, (t, o, off) in enumerate(specs)]
    layout = FieldLayout(fields, 20)
    for _, value, _ in layout.decode(data):
        assert math.isfinite(value)


@st.composite
def typed_values(draw):
    t = draw(field_types)
    lo, hi = {"int16": (-2**15, 2**15 - 1), "uint16": (0, 2**16 - 1), "int32": (-2**31, 2**31 - 1),
              "uint32": (0, 2**32 - 1)}.get(t, (None, None))
    if t == "float32":
        v = draw(st.floats(width=32, allow_nan=False, allow_infinity=False))
    else:
        v = draw(st.integers(lo, hi))
    return t, draw(st.sampled_from(["big", "little"])), v


@SETTINGS
@given(st.lists(typed_values(), min_size=1, max_size=6))
def test_modbus_register_fields_roundtrip(items):
    regs: list[int] = []
    fields = []
    for i, (t, order, v) in enumerate(items):
        fields.append(FieldSpec(f"f{i}", len(regs), t, order))
        regs += encode_value(t, order, v)
    data = struct.pack(f">{len(regs)}H", *regs)
    assert FieldLayout(fields, len(regs)).decode(data) == [(f"f{i}", float(v), "") for i, (_, _, v) in
                                                           enumerate(items)]


# ---- senml and coap payloads

json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
                           lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=4), c, max_size=4),
                           max_leaves=20)
senml_keys = st.sampled_from(["bn", "bt", "bu", "bv", "bs", "bver", "n", "u", "v", "vs", "vb", "vd", "s", "t", "ut"])
senml_like = st.lists(st.dictionaries(senml_keys, json_values, max_size=6) | json_values, max_size=6)
cbor_labels = st.integers(-6, 8) | st.text(max_size=3)
cbor_like = st.lists(st.dictionaries(cbor_labels, json_values | st.binary(max_size=4), max_size=6), max_size=6)


@SETTINGS
@given(st.binary(max_size=300))
def test_senml_arbitrary_bytes_never_raise(data):
    for fmt in (senml.CT_SENML_JSON, senml.CT_SENML_CBOR):
        records, errors = senml.decode(data, fmt, 1e9)
        assert errors >= 0
    for cf in (0, 50, 60, 110, 112, None):
        samples, _ = decode_payload(data, cf, CoapResource("/x"), 1e9)
        for channel, _, _, unit in samples:
            assert channel.isprintable() and 0 < len(channel) <= senml.MAX_NAME
            assert unit.isprintable() and len(unit) <= senml.MAX_UNIT


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(senml_like, cbor_like)
def test_senml_arbitrary_structures_never_raise(pack, cpack):
    try:
        payload = json.dumps(pack).encode()
    except ValueError:
        payload = b"[]"
    for r in senml.decode_json(payload, 1e9)[0] + senml.decode_cbor(cbor2.dumps(cpack), 1e9)[0]:
        assert isinstance(r.name, str) and r.name and math.isfinite(r.value) and math.isfinite(r.ts)
        assert RFC8428_NAME.fullmatch(r.name) and len(r.name) <= senml.MAX_NAME
        assert r.unit.isprintable() and len(r.unit) <= senml.MAX_UNIT


# RFC 8428 section 4.5.1, written out again here rather than imported
RFC8428_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9:./_-]*")
NAME_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-:./_"
valid_names = st.builds(lambda first, rest: first + rest, st.sampled_from(NAME_CHARS[:62]),
                        st.text(NAME_CHARS, max_size=30))
invalid_names = (st.text(max_size=12).filter(lambda n: not RFC8428_NAME.fullmatch(n))
                 | st.builds(lambda first, rest: first + rest, st.sampled_from("-:./_"),
                             st.text(NAME_CHARS, max_size=8))
                 | st.builds(lambda a, bad, b: a + bad + b, valid_names,
                             st.sampled_from(" \n\t+#$%&'\"*,;=?@[]{}|~ä\x00"), st.text(NAME_CHARS, max_size=8)))
formats = st.sampled_from(["json", "cbor"])


def _decode(pack: list[dict], fmt: str, now: float = 1e9):
    if fmt == "json":
        return senml.decode_json(senml.encode_json(pack), now)
    return senml.decode_cbor(senml.encode_cbor(pack), now)


@SETTINGS
@given(valid_names, st.integers(0, 40), finite, formats)
def test_senml_valid_names_round_trip(name, cut, v, fmt):
    """Any name RFC 8428 allows, split anywhere between bn and n, resolves to itself."""
    cut = min(cut, len(name))
    pack = [{"bn": name[:cut], "n": name[cut:], "v": v}, {"n": "", "v": v}]
    records, errors = _decode(pack, fmt)
    base_ok = bool(RFC8428_NAME.fullmatch(name[:cut]))
    assert records[0] == senml.Record(name, float(v), 1e9, "")
    assert records[1:] == ([senml.Record(name[:cut], float(v), 1e9, "")] if base_ok else [])
    assert errors == (0 if base_ok else 1)


@SETTINGS
@given(invalid_names, st.integers(0, 20), formats)
def test_senml_names_breaking_rfc8428_4_5_1_are_rejected(name, cut, fmt):
    cut = min(cut, len(name))
    pack = [{"n": "ok", "v": 1}, {"bn": name[:cut], "n": name[cut:], "v": 2}, {"bn": "", "n": "ok2", "v": 3}]
    assert _decode(pack, fmt) == ([senml.Record("ok", 1.0, 1e9, ""), senml.Record("ok2", 3.0, 1e9, "")], 1)


@SETTINGS
@given(st.lists(st.tuples(valid_names, finite), min_size=1, max_size=6), st.data(), formats)
def test_senml_must_understand_fields_and_newer_versions_refuse_the_whole_pack(recs, data, fmt):
    pack = [{"n": n, "v": v} for n, v in recs]
    at = data.draw(st.integers(0, len(pack) - 1))
    assert _decode(pack, fmt) == ([senml.Record(n, float(v), 1e9, "") for n, v in recs], 0)
    bad = data.draw(st.one_of(
        st.builds(lambda k: {k + "_": 0}, st.text(max_size=6)),
        st.builds(lambda b: {"bver": b}, st.integers(11, 2 ** 64) | st.integers(-2 ** 64, 0) | st.floats()
                  | st.text(max_size=3) | st.booleans() | st.none())))
    pack[at] = {**pack[at], **bad}
    assert _decode(pack, fmt) == ([], len(pack))
    if "bver" in bad:
        pack[at]["bver"] = data.draw(st.integers(1, 10))
        assert _decode(pack, fmt) == ([senml.Record(n, float(v), 1e9, "") for n, v in recs], 0)


@SETTINGS
@given(st.lists(st.tuples(valid_names, finite), min_size=2, max_size=8), st.data(), formats)
def test_senml_records_after_an_invalid_base_are_rejected_until_it_is_set_again(recs, data, fmt):
    """Never resolved with the base the sender replaced: each is rejected until the next valid base of that kind."""
    at = data.draw(st.integers(1, len(recs) - 1))
    again = data.draw(st.integers(at + 1, len(recs)))
    field, bad = data.draw(st.sampled_from([("bn", 7), ("bn", None), ("bn", ["x"]), ("bt", "2023-11-14T22:13:20Z"),
                                            ("bt", None), ("bt", True)]))
    good = {"bn": "c:", "bt": 1.6e9}[field]
    pack = [{"n": n, "v": v} for n, v in recs]
    pack[0].update(bn="b:", bt=1.5e9)
    pack[at][field] = bad
    if again < len(pack):
        pack[again][field] = good
    want = []
    for i, (n, v) in enumerate(recs):
        if at <= i < again:
            continue
        bn = "c:" if field == "bn" and i >= again else "b:"
        bt = 1.6e9 if field == "bt" and i >= again else 1.5e9
        want.append(senml.Record(bn + n, float(v), bt, ""))
    assert _decode(pack, fmt) == (want, again - at)


records = st.lists(st.tuples(valid_names, st.floats(-1e9, 1e9), st.floats(-1000, 1000),
                             st.sampled_from(["", "Cel", "%"])), min_size=1, max_size=8)


@SETTINGS
@given(valid_names, st.floats(1.5e9, 2e9), records, st.sampled_from(["json", "cbor"]))
def test_senml_valid_packs_decode_exactly(base, bt, recs, fmt):
    pack = [{"n": n, "v": v, "t": t, "u": u} for n, v, t, u in recs]
    pack[0] = {"bn": base + ":", "bt": bt, **pack[0]}
    payload = senml.encode_json(pack) if fmt == "json" else senml.encode_cbor(pack)
    got, errors = senml.decode(payload, senml.CT_SENML_JSON if fmt == "json" else senml.CT_SENML_CBOR, 0.0)
    assert errors == 0
    assert got == [senml.Record(f"{base}:{n}", v, bt + t, u) for n, v, t, u in recs]


# ---- what a node names and gives as a unit reaches a terminal and Prometheus labels (review s19 #1, #8)

CONTROLS = "\x1b\x07\x00\n\r\t\x7f\x9b\u202e\u2028"
units = (st.text(max_size=40)
         | st.builds(lambda a, c, b: a + c + b, st.text(max_size=8), st.sampled_from(CONTROLS), st.text(max_size=8)))
long_names = st.text(NAME_CHARS, min_size=120, max_size=140).map(lambda n: "n" + n)


def _unit_ok(unit: str) -> bool:
    """Written out again here: printable, at most 32 characters."""
    return len(unit) <= 32 and all(c.isprintable() for c in unit)


@SETTINGS
@given(units, finite, formats)
def test_senml_units_are_kept_iff_printable_and_short(unit, v, fmt):
    pack = [{"n": "ok", "v": 1}, {"n": "x", "u": unit, "v": v}, {"n": "ok2", "u": "Cel", "v": 3}]
    want = [senml.Record("ok", 1.0, 1e9, "")] + ([senml.Record("x", float(v), 1e9, unit)] if _unit_ok(unit) else [])
    assert _decode(pack, fmt) == (want + [senml.Record("ok2", 3.0, 1e9, "Cel")], 0 if _unit_ok(unit) else 1)
    pack = [{"bu": unit, "n": "a", "v": v}, {"n": "b", "v": v}, {"bu": "K", "n": "c", "v": 3}]
    kept = [senml.Record(n, float(v), 1e9, unit) for n in "ab"] if _unit_ok(unit) else []
    assert _decode(pack, fmt) == (kept + [senml.Record("c", 3.0, 1e9, "K")], 0 if _unit_ok(unit) else 2)


@SETTINGS
@given(valid_names | long_names, st.integers(0, 140), finite, formats)
def test_senml_names_are_kept_iff_at_most_128_characters(name, cut, v, fmt):
    cut = min(cut, len(name))
    pack = [{"bn": name[:cut], "n": name[cut:], "v": v}, {"bn": "", "n": "ok", "v": 2}]
    want = ([senml.Record(name, float(v), 1e9, "")] if len(name) <= 128 else []) + [senml.Record("ok", 2.0, 1e9, "")]
    assert _decode(pack, fmt) == (want, 0 if len(name) <= 128 else 1)


json_keys = st.text(max_size=12) | long_names | st.builds(lambda a, c, b: a + c + b, st.text(max_size=6),
                                                          st.sampled_from(CONTROLS), st.text(max_size=6))


@SETTINGS
@given(st.dictionaries(json_keys, finite, max_size=6), st.sampled_from([50, 60]))
def test_coap_object_keys_are_channels_iff_printable_non_empty_and_at_most_128(obj, cf):
    payload = json.dumps(obj).encode() if cf == 50 else cbor2.dumps(obj)
    good = [k for k in obj if 0 < len(k) <= 128 and all(c.isprintable() for c in k)]
    assert decode_payload(payload, cf, CoapResource("/x"), 1e9) == (
        [(k, float(obj[k]), 1e9, "") for k in good], len(obj) - len(good))
