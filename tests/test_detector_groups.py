"""Detector groups (``detector.sensors``) answer for channels they have not been given yet.

The pipeline asks about channel numbers the batcher has handed out, which a group may not have
assigned yet (a batch still to come). With one group those were filtered out; with several, the
lookup of their group raised IndexError.
"""

from __future__ import annotations

from collections import namedtuple

import numpy as np

from edge_gateway import config
from edge_gateway.detector_groups import DetectorGroups

Key = namedtuple("Key", "sensor channel")

APART = """
gateway: {id: gw}
sensors:
  - {id: node, driver: coap, options: {uri: "coap://127.0.0.1", resources: [{path: /n}]}}
detector:
  params: {weights: [0, 0, 0, 0, 0, 0, 0, 0]}
  sensors: {"node/b": {params: {range_hi: 10}}}
"""
ONE = "gateway: {id: gw}\ndetector: {params: {weights: [0, 0, 0, 0, 0, 0, 0, 0]}}\n"
T0 = 1_750_000_000.0


def groups(text: str) -> DetectorGroups:
    g = DetectorGroups(config.loads(text).detector)
    g.assign([Key("node", "a"), Key("node", "b")])
    for k in range(6):  # a reading every 10 s on both: b is out of its range (20 > 10)
        chan = np.array([0, 1], dtype=np.int64)
        g.process(chan, np.full(2, T0 + 10.0 * k), np.array([1.0, 20.0]), chan)
    return g


def test_several_groups_skip_channels_not_yet_assigned():
    g = groups(APART)
    assert len(g.detectors) == 2
    asked = np.array([0, 1, 7], dtype=np.int64)  # 7: handed out by the batcher, not yet assigned
    assert [(e["channel"], e["start"]) for e in g.open_events(asked)] == [(1, T0)]
    after = g.silence_after(asked)
    assert after.shape == (3,) and after[2] == 0.0 and after[0] == after[1] > 0.0
    g.resume(asked)
    assert [(e["channel"], e["start"], e["end"]) for e in g.close_events(asked)] == [(1, T0, T0 + 50.0)]
    assert g.open_events(asked) == []


def test_one_group_gives_the_same_answers():
    g = groups(ONE)
    assert len(g.detectors) == 1
    asked = np.array([0, 1, 10_000], dtype=np.int64)  # beyond the detector's capacity too
    assert g.open_events(asked) == []
    after = g.silence_after(asked)
    assert after.shape == (3,) and after[2] == 0.0 and after[0] == after[1] > 0.0
