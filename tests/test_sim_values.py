"""Scenario values, wire text and ground truth of the simulators (review 15, simulators #4, #8, #9, #10, #12)."""

from __future__ import annotations

import tracemalloc
import zlib
from pathlib import Path

import numpy as np
import pytest

from drivers.serial_line import LineDecoder
from simulators import scenario as sc
from simulators import signals
from simulators.city import encode_line
from simulators.serial_line import format_line
from simulators.signals import ChannelSignal, channel_values

T0 = 1_700_000_000.0
SCENARIO = Path(__file__).resolve().parent.parent / "simulators" / "scenarios" / "city_block.yaml"
TEXT = """
seed: 4
sensors:
  - id: s
    kind: line
    rate_hz: 2.0
    channels:
      - {name: a, baseline: 10.0, noise: 1.0}
      - {name: b, baseline: 0.0, amplitude: 5.0, decimals: 2}
    faults:
      - {kind: spike, channel: a, at: 5, magnitude: 50.0}
      - {kind: level_shift, channel: a, at: 10, length: 4, magnitude: -3.0}
      - {kind: drift, channel: b, at: 20, length: 4, magnitude: 8.0}
      - {kind: stuck, channel: a, at: 30, length: 3}
      - {kind: dropout, at: 40, length: 2}
      - {kind: corrupt, at: 50}
"""


# 4: the ground truth of a run lists only the samples that run sends
def test_ground_truth_stops_at_the_runs_count(tmp_path):
    scen = sc.loads(TEXT)
    rows = sc.ground_truth(scen, T0, 41)
    assert [(r["index"], r["channel"], r["fault"]) for r in rows] == (
        [(5, "a", "spike")] + [(k, "a", "level_shift") for k in range(10, 14)]
        + [(k, "b", "drift") for k in range(20, 24)] + [(31, "a", "stuck"), (32, "a", "stuck")]
        + [(40, "a", "dropout"), (40, "b", "dropout")])
    path = tmp_path / "truth.jsonl"
    assert sc.write_ground_truth(str(path), scen, T0, 41) == 13 == len(path.read_text().splitlines())
    assert len(sc.ground_truth(scen, T0, 0)) == len(sc.ground_truth(scen, T0)) == 1 + 4 + 4 + 2 + 4 + 2


# 12: a stuck fault's truth starts at the first sample that repeats the frozen reading
def test_stuck_truth_starts_with_the_first_repeated_sample():
    scen = sc.load(str(SCENARIO))
    for sid, ch, at, length in (("pm-1", "pm10", 110, 30), ("bins-1", "bin2_fill", 60, 40)):
        s = scen.sensor(sid)
        truth = [r["index"] for r in sc.ground_truth(scen, T0) if r["sensor"] == sid and r["fault"] == "stuck"]
        assert truth == list(range(at + 1, at + length))
        sent = sc.values(s, scen.seed, T0, 0, at + length)[ch]
        clean = channel_values(s.channel(ch).signal, scen.seed, T0, s.interval_s, at + length)
        assert sent[at] == clean[at] and set(sent[at:]) == {clean[at]} and sent[at + 1] != clean[at + 1]
    with pytest.raises(ValueError, match=r"faults\[0\]\.length: a stuck fault needs length >= 2"):
        sc.from_dict({"sensors": [{"id": "s", "kind": "line", "channels": [{"name": "a", "baseline": 1}],
                                   "faults": [{"kind": "stuck", "channel": "a", "at": 3}]}]})


# 9: kv and csv cells carry the exact value (repr), not 6 significant digits
def test_kv_and_csv_values_are_exact():
    assert format_line("kv", ["e", "p", "t"], [18234.56, 123468.7, 12.0], 1.5) == b"ts=1.5,e=18234.56,p=123468.7,t=12\n"
    assert format_line("csv", ["e", "p"], [0.1 + 0.2, -48.2], None) == b"0.30000000000000004,-48.2\n"
    scen = sc.loads("""
seed: 3
sensors:
  - {id: meter, kind: line, format: kv, channels: [{name: energy_kwh, baseline: 18234.56, decimals: 2},
                                                   {name: pm25, baseline: 12.0}],
     faults: [{kind: spike, channel: pm25, at: 0, magnitude: 123456.7}]}
""")
    s = scen.sensors[0]
    v = sc.values(s, scen.seed, T0, 0, 1)
    vals = [float(v["energy_kwh"][0]), float(v["pm25"][0])]
    line = encode_line(s, ["energy_kwh", "pm25"], vals, T0)
    assert line == b"ts=1700000000.0,energy_kwh=18234.56,pm25=123468.7\n"
    got = LineDecoder("kv", timestamp_field="ts").feed(line)[0]
    assert [x for _, x, _ in got] == vals == [18234.56, 123468.7]


# 10: sample k costs the same at any k; the first block of samples is the stream it always was
def test_sample_cost_does_not_grow_with_k():
    sig = ChannelSignal("pm25", baseline=12.0, amplitude=4.0, noise=0.8)
    if hasattr(signals, "_noise_block"):
        signals._noise_block.cache_clear()
    tracemalloc.start()
    try:
        far = channel_values(sig, 1, T0, 0.1, 2, 10_000_000)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 3_000_000  # one 1 MB block, not 10**7 draws (240 MB before)
    key = zlib.crc32(b"pm25")
    b, i = divmod(10_000_000, signals.NOISE_BLOCK)
    z = np.random.Generator(np.random.PCG64([1, key, b])).normal(0.0, 1.0, i + 2)[i:]
    k = np.array([10_000_000, 10_000_001], dtype=np.float64)
    cycle = 4.0 * np.sin(2.0 * np.pi * ((T0 + k * 0.1) % 86400.0) / 86400.0)
    assert np.array_equal(far, np.round(12.0 + cycle + z * 0.8, 1))
    # determinism: the first NOISE_BLOCK samples are those of the single stream earlier versions drew
    legacy = np.random.Generator(np.random.PCG64([1, key])).normal(0.0, 1.0, signals.NOISE_BLOCK)
    assert np.array_equal(signals.noise(1, "pm25", 3, 1000), legacy[1000:1003])
    assert np.array_equal(signals.noise(1, "pm25", 4, signals.NOISE_BLOCK - 2)[:2], legacy[-2:])
    whole = signals.noise(1, "pm25", 6, signals.NOISE_BLOCK - 3)
    assert np.array_equal(whole[3:], signals.noise(1, "pm25", 3, signals.NOISE_BLOCK))


# 8: a bad scenario is one ValueError naming the place, never a TypeError or AttributeError
@pytest.mark.parametrize("text,message", [
    ("seed: 1\nsensors:\n  - id: a\n    channels: [{name: x, baseline: 1}\n", "not valid YAML"),
    ("sensors: [5]", r"sensors\[0\]: expected a mapping"),
    ("sensors: {a: 1}", "sensors: expected a list"),
    ("sensors: [{id: a, kind: line, channels: [{name: x, baseline: 1}], faults: [{kind: dropout, at: '5'}]}]",
     r"sensors\[0\]\.faults\[0\]\.at: expected an integer, got '5'"),
    ("sensors: [{id: a, kind: line, channels: [{baseline: 1}]}]", r"channels\[0\]\.name: required"),
    ("sensors: [{id: a, kind: line, channels: [{name: x}]}]", r"channels\[0\]\.baseline: required"),
    ("sensors: [{id: a, kind: line, channels: [{name: x, baseline: one}]}]", "baseline: expected a number"),
    ("sensors: [{id: a, kind: line, channels: [{name: x, baseline: 1, period_s: 0}]}]", "period_s: must be positive"),
    ("sensors: [{id: a, kind: line, channels: [x]}]", r"channels\[0\]: expected a mapping"),
    ("sensors: [{id: a, kind: line, channels: [{name: x, baseline: 1}], faults: [7]}]", r"faults\[0\]: expected"),
    ("sensors: [{kind: line, channels: [{name: x, baseline: 1}]}]", r"sensors\[0\]\.id: required"),
    ("seed: -1\nsensors: []", r"scenario\.seed: must be >= 0"),
    ("seed: 1.5\nsensors: []", r"scenario\.seed: expected an integer"),
    ("count: -3\nsensors: []", r"scenario\.count: must be >= 0"),
    ("sensors: [{id: m, kind: modbus, channels: [{name: v, baseline: 1, address: 0}]}]", r"\.slave: required"),
    ("sensors: [{id: m, kind: modbus, channels: [{name: v, baseline: 1, slave: 1, address: 0, type: u16}]}]",
     r"\.type: expected one of"),
    ("sensors: [{id: c, kind: coap, channels: [{name: v, baseline: 1, format: xml}]}]", r"\.format: expected one of"),
    ("sensors: [{id: a, kind: line, channels: [{name: x, baseline: 1}]}, "
     "{id: a, kind: line, channels: [{name: x, baseline: 1}]}]", r"sensors\[1\]\.id: 'a' is used twice"),
    ("[1, 2]", "scenario: expected a mapping"),
])
def test_bad_scenario_files_are_one_clear_error(text, message):
    with pytest.raises(ValueError, match=message):
        sc.loads(text)


def test_counts_never_go_below_their_minimum():
    """The demo showed ``traffic-1/bikes min=-1.00``: a count drawn below 0 by the noise. ``minimum``
    floors it, with no -0.0 left by the rounding; without ``minimum`` the values are unchanged."""
    free = ChannelSignal("bikes", baseline=4.0, amplitude=3.0, noise=1.0, decimals=0)
    floored = ChannelSignal("bikes", baseline=4.0, amplitude=3.0, noise=1.0, decimals=0, minimum=0.0)
    a = channel_values(free, 1, T0, 1.0, 86_400)
    b = channel_values(floored, 1, T0, 1.0, 86_400)
    low = a < 0.0
    assert low.sum() > 100  # the draws this test is about do happen
    assert np.array_equal(b[~low], a[~low]) and np.all(b[low] == 0.0)
    assert not np.signbit(b).any()
    city = sc.load(str(SCENARIO))
    traffic = next(s for s in city.sensors if s.id == "traffic-1")
    day = sc.values(traffic, city.seed, T0, 0, 86_400)
    assert day["vehicles"].min() == 0.0 and day["bikes"].min() == 0.0
    assert not np.signbit(day["bikes"]).any() and not np.signbit(day["vehicles"]).any()
    with pytest.raises(ValueError, match=r"sensors\[0\].channels\[0\].minimum: expected a number, got 'low'"):
        sc.loads(TEXT.replace("baseline: 10.0, noise: 1.0", "baseline: 10.0, noise: 1.0, minimum: low"))
