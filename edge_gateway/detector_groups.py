"""Every channel's detector: one :class:`~.analytics.chain.Detector` per distinct settings.

The config's ``detector.sensors`` tunes some sensors or channels apart; channels with equal settings
share one detector (one kernel call a batch). Each detector's tables hold rows for its own channels
only (review 16, bounds #10: a row for every channel in every group cost 7.2 MB a group at 4,096
channels). Channels are numbered by the batcher (global); a detector numbers its own (local), and
everything here takes and returns global numbers. The checkpoint's tables stay one row per global
channel, whatever the grouping, so a changed grouping restores the same state.
"""

from __future__ import annotations

from typing import Callable, Iterable

import numpy as np

from .analytics.chain import Detector, DetectorSettings
from .config import DetectorSection


def detector_settings(section: DetectorSection, sensor: str = "", channel: str = "") -> DetectorSettings:
    """The ensemble's settings for one channel: :meth:`.DetectorSection.settings_for`."""
    return section.settings_for(sensor, channel)


def detector_variants(section: DetectorSection, sensors: Iterable[str]) -> list[DetectorSettings]:
    """Every distinct settings a channel of ``sensors`` can be scored with under ``section``.

    A channel is scored with the section's settings, its sensor's, or its own ``sensor/channel``
    entry's; a channel of a sensor no longer configured (restored from a checkpoint) gets the section's.
    """
    found = {detector_settings(section): None}
    for sensor in sensors:
        found.setdefault(detector_settings(section, sensor))
    for key in section.sensors:
        sensor, _, channel = key.partition("/")
        if channel:
            found.setdefault(detector_settings(section, sensor, channel))
    return list(found)


def warm_detectors(section: DetectorSection, sensors: Iterable[str],
                   progress: Callable[[], None] = lambda: None) -> int:
    """Compile (or load from the Numba cache) the detector kernel of every variant in
    :func:`detector_variants`; returns how many there are.

    Each variant with another ``spec`` (or with the statistical detectors switched on or off) is a
    Numba specialization of its own. One left out would compile on the event loop at the first
    reading it scores: seconds on a PC, a watchdog abort on a Pi. Touches no pipeline state, so it
    can run in a thread while the pipeline goes on with the old settings.
    """
    variants = detector_variants(section, sensors)
    for settings in variants:
        Detector(settings).warm()
        progress()
    return len(variants)


class DetectorGroups:
    """The detectors of channels ``keys`` (the batcher's, by global number) under ``section``."""

    def __init__(self, section: DetectorSection) -> None:
        self.section = section
        self.detectors = [Detector(detector_settings(section))]
        self._index = {self.detectors[0].settings: 0}
        self.group = np.zeros(0, dtype=np.int64)  # per global channel: its detector
        self.local = np.zeros(0, dtype=np.int64)  # per global channel: its row in that detector
        self._members: list[list[int]] = [[]]  # per detector: its global channels, by local row

    def assign(self, keys: list) -> None:
        """Give channels ``len(self.group) .. len(keys) - 1`` their detector (created if new) and row."""
        n = len(keys)
        start = self.group.shape[0]
        if n <= start:
            return
        group, local = np.empty(n - start, dtype=np.int64), np.empty(n - start, dtype=np.int64)
        for i, key in enumerate(keys[start:n]):
            settings = detector_settings(self.section, key.sensor, key.channel)
            g = self._index.get(settings)
            if g is None:
                g = self._index[settings] = len(self.detectors)
                self.detectors.append(Detector(settings))
                self._members.append([])
            group[i], local[i] = g, len(self._members[g])
            self._members[g].append(start + i)
        self.group = np.concatenate([self.group, group])
        self.local = np.concatenate([self.local, local])
        for det, members in zip(self.detectors, self._members):
            det.ensure_channels(len(members))

    def settings_of(self, channel: int) -> DetectorSettings:
        return self.detectors[int(self.group[channel])].settings

    def _split(self, channels: np.ndarray):
        """``(g, detector, global channels, their local rows)`` for each detector with any of ``channels``."""
        if len(self.detectors) == 1:
            yield 0, self.detectors[0], channels, channels
            return
        channels = channels[channels < self.group.shape[0]]  # not yet assigned: no detector has a row
        group = self.group[channels]
        for g, det in enumerate(self.detectors):
            mine = channels[group == g]
            if mine.size:
                yield g, det, mine, self.local[mine]

    def _globalised(self, g: int, events: list[dict]) -> list[dict]:
        """``events`` of detector ``g`` with their global channel numbers."""
        if len(self.detectors) > 1:
            members = self._members[g]
            for ev in events:
                ev["channel"] = members[ev["channel"]]
        return events

    def process(self, chan: np.ndarray, ts: np.ndarray, val: np.ndarray,
                touched: np.ndarray) -> tuple[list[dict], list[dict]]:
        """Events closed by this batch, and events open at its end on the channels ``touched``."""
        if len(self.detectors) == 1:
            det = self.detectors[0]
            return det.process(chan, ts, val)[1], det.open_events(touched)
        group = self.group[chan]
        closed = []
        for g, det in enumerate(self.detectors):
            mine = group == g
            if mine.any():
                closed += self._globalised(g, det.process(self.local[chan[mine]], ts[mine], val[mine])[1])
        return closed, self.open_events(touched)

    def open_events(self, channels: np.ndarray) -> list[dict]:
        return [ev for g, det, _, rows in self._split(channels) for ev in self._globalised(g, det.open_events(rows))]

    def close_events(self, channels: np.ndarray) -> list[dict]:
        return [ev for g, det, _, rows in self._split(channels) for ev in self._globalised(g, det.close_events(rows))]

    def open_mask(self, n: int) -> np.ndarray:
        """Which of the first ``n`` channels have an event open."""
        out = np.zeros(n, dtype=bool)
        for _, det, members, rows in self._split(np.arange(min(n, self.group.shape[0]))):
            mask = det.open_mask()
            ok = rows < mask.shape[0]
            out[members[ok]] = mask[rows[ok]]
        return out

    def silence_after(self, channels: np.ndarray) -> np.ndarray:
        """:meth:`.Detector.silence_after` of each of ``channels``."""
        out = np.zeros(channels.size)  # a channel not yet assigned has learnt no gap: 0, as for a new one
        known = channels < self.group.shape[0]
        if len(self.detectors) == 1:
            out[known] = self.detectors[0].silence_after(channels[known])
            return out
        group = np.full(channels.size, -1, dtype=np.int64)
        group[known] = self.group[channels[known]]
        for g, det in enumerate(self.detectors):
            mine = group == g
            if mine.any():
                out[mine] = det.silence_after(self.local[channels[mine]])
        return out

    def resume(self, channels: np.ndarray | None = None) -> None:
        """See :meth:`.Detector.resume`; all channels when ``channels`` is None."""
        if channels is None:
            for det in self.detectors:
                det.resume()
            return
        for _, det, _, rows in self._split(channels):
            det.resume(rows)

    def forget_events(self, sent: np.ndarray) -> int:
        """:meth:`.Detector.forget_events` with ``sent`` by global channel."""
        n = 0
        for g, det in enumerate(self.detectors):
            members = np.array(self._members[g], dtype=np.int64)
            mine = np.full(len(members), np.nan)
            has = members < sent.shape[0]
            mine[has] = sent[members[has]]
            n += det.forget_events(mine)
        return n

    def state(self) -> dict[str, np.ndarray]:
        """Every channel's state rows by global channel, each from its own detector."""
        n = self.group.shape[0]
        states = [det.state() for det in self.detectors]
        if len(self.detectors) == 1:
            return states[0]
        out = {name: np.zeros((n, a.shape[1])) for name, a in states[0].items()}
        for g, st in enumerate(states):
            members = np.array(self._members[g], dtype=np.int64)
            for name, a in st.items():
                out[name][members[: a.shape[0]]] = a[: members.size]
        return out

    def load_state(self, state: dict[str, np.ndarray]) -> None:
        """Restore :meth:`state` (rows by global channel) into each channel's detector; ``assign`` first.
        Raises ValueError or KeyError for tables of another layout (see :meth:`.Detector.load_state`)."""
        tables = {name: np.asarray(a) for name, a in state.items()}
        for name, a in tables.items():
            if a.ndim != 2:
                raise ValueError(f"state {name!r} has shape {a.shape}, expected (n, width)")
        for g, det in enumerate(self.detectors):
            members = np.array(self._members[g], dtype=np.int64)
            det.load_state({name: a[members[members < a.shape[0]]] for name, a in tables.items()})

    def keep_channels(self, keep: np.ndarray) -> None:
        """Keep only global channels ``keep`` (ascending), renumbered 0, 1, ... (see
        :meth:`.Pipeline.forget_idle`); each detector keeps the rows of its kept channels."""
        keep = keep[keep < self.group.shape[0]]
        group = self.group[keep]
        for g, det in enumerate(self.detectors):
            det.keep_channels(self.local[keep[group == g]])
        self.group = group
        self._members = [np.flatnonzero(group == g).tolist() for g in range(len(self.detectors))]
        self.local = np.empty(group.shape[0], dtype=np.int64)
        for members in self._members:
            self.local[members] = np.arange(len(members))
