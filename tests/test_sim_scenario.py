"""Scenario files: signals with injected faults, delivery faults, ground truth."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from simulators import scenario as sc
from simulators.signals import channel_values

TEXT = """
seed: 4
count: 100
sensors:
  - id: s
    kind: line
    rate_hz: 2.0
    channels:
      - {name: a, baseline: 10.0, noise: 1.0, unit: V}
      - {name: b, baseline: 0.0, amplitude: 5.0, decimals: 2}
    faults:
      - {kind: spike, channel: a, at: 5, magnitude: 50.0}
      - {kind: level_shift, channel: a, at: 10, length: 4, magnitude: -3.0}
      - {kind: drift, channel: b, at: 20, length: 4, magnitude: 8.0}
      - {kind: stuck, channel: a, at: 30, length: 3}
      - {kind: dropout, at: 40, length: 2}
      - {kind: corrupt, at: 50}
      - {kind: disconnect, at: 60, length: 5}
"""
T0 = 1_700_000_000.0


def test_value_faults_are_applied_exactly():
    scen = sc.loads(TEXT)
    s = scen.sensor("s")
    got = sc.values(s, scen.seed, T0, 0, 40)
    clean_a = channel_values(s.channel("a").signal, 4, T0, 0.5, 40)
    clean_b = channel_values(s.channel("b").signal, 4, T0, 0.5, 40)
    expected_a = clean_a.copy()
    expected_a[5] += 50.0
    expected_a[10:14] -= 3.0
    expected_a[30:33] = clean_a[30]
    assert np.allclose(got["a"], np.round(expected_a, 1))
    assert np.allclose(got["b"][20:24], np.round(clean_b[20:24] + [2.0, 4.0, 6.0, 8.0], 2))
    assert np.allclose(got["b"][24:], clean_b[24:])


def test_values_of_a_window_equal_the_whole_run():
    scen = sc.loads(TEXT)
    s = scen.sensor("s")
    whole = sc.values(s, scen.seed, T0, 0, 70)
    part = sc.values(s, scen.seed, T0, 28, 10)
    assert np.array_equal(whole["a"][28:38], part["a"])


def test_delivery_faults():
    s = sc.loads(TEXT).sensor("s")
    assert [s.delivery(k) for k in (39, 40, 41, 42, 50, 51, 60, 64, 65)] == [
        "ok", "dropout", "dropout", "ok", "corrupt", "ok", "disconnect", "disconnect", "ok"]


def test_ground_truth(tmp_path):
    scen = sc.loads(TEXT)
    path = tmp_path / "truth.jsonl"
    n = sc.write_ground_truth(str(path), scen, T0)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(rows) == n == 1 + 4 + 4 + 2 + 2 * (2 + 1 + 5)  # stuck at 30: 31 and 32 repeat sample 30
    assert rows[0] == {"sensor": "s", "channel": "a", "index": 5, "ts": T0 + 2.5, "fault": "spike"}
    assert {r["fault"] for r in rows if r["index"] == 60} == {"disconnect"}
    assert {r["channel"] for r in rows if r["index"] == 60} == {"a", "b"}


@pytest.mark.parametrize("bad,message", [
    ("kind: serial", "kind"),
    ("faults: [{kind: spike, at: 1}]", "channel"),
    ("faults: [{kind: melt, at: 1}]", "unknown fault"),
    ("faults: [{kind: dropout, at: 1, when: 2}]", "when"),
    ("rate_hz: 0", "rate_hz"),
])
def test_bad_scenarios_are_rejected(bad, message):
    base = {"id": "s", "kind": "line", "rate_hz": 1.0, "channels": [{"name": "a", "baseline": 1.0}]}
    import yaml

    base.update(yaml.safe_load(bad))
    with pytest.raises(ValueError, match=message):
        sc.from_dict({"sensors": [base]})


def test_city_block_scenario_loads():
    scen = sc.load(str(Path(__file__).resolve().parent.parent / "simulators" / "scenarios" / "city_block.yaml"))
    kinds = {s.id: s.kind for s in scen.sensors}
    assert kinds == {"air-1": "line", "noise-1": "line", "pm-1": "pms5003", "meters": "modbus",
                     "bins-1": "coap", "traffic-1": "coap"}
    faults = {f.kind for s in scen.sensors for f in s.faults}
    assert faults == set(sc.VALUE_FAULTS + sc.DELIVERY_FAULTS)
