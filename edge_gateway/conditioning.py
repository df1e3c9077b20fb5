"""Per-sensor signal conditioning in the live loop: what a sensor's ``filters`` section asks for.

Despiking (Hampel) and smoothing (one-pole low-pass) change the values the windows
aggregate; the detectors always score the raw readings, since despiking first would
hide the spikes an operator wants reported. The deadband is report by exception on
the aggregates: a channel's window is sent when its mean moved more than the band
since the last one sent, or when the heartbeat is due. Array code around the
kernels of :mod:`.analytics.filters`; state is per channel and checkpointed.
"""

from __future__ import annotations

import numpy as np

from .analytics import filters as _f
from .analytics.engine import ROW_FIELDS
from .analytics.tables import keep_rows
from .config import FilterSection, SensorSection

_MEAN = ROW_FIELDS.index("mean")
_START = ROW_FIELDS.index("start")
_OFF = FilterSection()


class Conditioning:
    """Filter state of every channel, grouped by the settings of its sensor."""

    def __init__(self, sensors: tuple[SensorSection, ...] = ()) -> None:
        self._keys: list = []
        self._of_channel: list[FilterSection] = []
        self._hampel: dict[int, np.ndarray] = {}  # by window length: rows = channels
        self._lowpass = _f.new_lowpass_state(0)
        self._deadband = _f.new_deadband_state(0)
        self.despiked = np.zeros(0, dtype=np.int64)  # per channel: readings the Hampel filter replaced
        self.held = np.zeros(0, dtype=np.int64)  # per channel: aggregates the deadband held back
        self._retired: dict[str, dict[str, int]] = {}  # the counts of forgotten channels, per sensor
        self.set_sensors(sensors)

    def set_sensors(self, sensors: tuple[SensorSection, ...]) -> None:
        """New settings (start, reload); a channel whose settings changed starts its filters afresh."""
        self._by_sensor = {s.id: s.filters for s in sensors if s.filters != _OFF}
        self.active = bool(self._by_sensor)
        self._refresh(self._keys)

    def keep_channels(self, keep: np.ndarray, keys: list) -> None:
        """Keep only channels ``keep`` (ascending), renumbered 0, 1, ...; ``keys`` are the kept ones'.
        The forgotten channels' counts stay in their sensor's: a counter never goes down."""
        gone = np.setdiff1d(np.arange(len(self._keys)), keep)
        for c in gone[gone < self.despiked.shape[0]].tolist():
            d = self._retired.setdefault(self._keys[c].sensor, {"despiked": 0, "deadband_held": 0})
            d["despiked"] += int(self.despiked[c])
            d["deadband_held"] += int(self.held[c])
        self._lowpass = keep_rows(self._lowpass, keep)
        self._deadband = keep_rows(self._deadband, keep)
        self._hampel = {w: keep_rows(t, keep) for w, t in self._hampel.items()}
        self.despiked = keep_rows(self.despiked, keep)
        self.held = keep_rows(self.held, keep)
        self._of_channel = [self._of_channel[c] for c in keep.tolist() if c < len(self._of_channel)]
        self._refresh(keys)

    def ensure(self, keys: list) -> None:
        """Settings for channels ``keys`` (the batcher's channel keys, by channel number)."""
        if len(keys) != len(self._keys):
            self._refresh(keys)

    def _refresh(self, keys: list) -> None:
        n = len(keys)
        self._keys = list(keys)
        old = self._of_channel
        new = [self._by_sensor.get(k.sensor, _OFF) for k in self._keys]
        self._lowpass = _rows(self._lowpass, n)
        self._deadband = _rows(self._deadband, n)
        self.despiked = _counts(self.despiked, n)
        self.held = _counts(self.held, n)
        used = {f.despike_window for f in new if f.despike_window}
        # a window length no channel uses any more has no state worth keeping (and would not grow)
        self._hampel = {w: _rows(self._hampel.get(w, _f.new_hampel_state(0, w)), n) for w in used}
        changed = [c for c in range(min(len(old), n)) if old[c] != new[c]]
        for table in (self._lowpass, self._deadband, *self._hampel.values()):
            table[changed] = 0.0
        self._of_channel = new
        groups: dict[FilterSection, list[int]] = {}
        for c, f in enumerate(new):
            if f != _OFF:
                groups.setdefault(f, []).append(c)
        self._groups = [(f, np.array(cs, dtype=np.int64)) for f, cs in groups.items()]
        self._group_of = np.full(n, -1, dtype=np.int64)
        for g, (_, cs) in enumerate(self._groups):
            self._group_of[cs] = g

    def values(self, chan: np.ndarray, val: np.ndarray) -> np.ndarray:
        """The values the windows aggregate: ``val`` despiked and smoothed where a sensor asks for it."""
        out = val
        for g, (f, _) in enumerate(self._groups):
            if not (f.despike_window or f.lowpass_alpha < 1.0):
                continue
            mine = np.nonzero(self._group_of[chan] == g)[0]
            if mine.size == 0:
                continue
            c, x = np.ascontiguousarray(chan[mine]), np.ascontiguousarray(val[mine])
            if f.despike_window:
                y, spikes = np.empty(x.size), np.empty(x.size, dtype=np.bool_)
                _f.hampel(c, x, f.despike_sigma, self._hampel[f.despike_window], y, spikes)
                if spikes.any():
                    np.add.at(self.despiked, c[spikes], 1)
                x = y
            if f.lowpass_alpha < 1.0:
                y = np.empty(x.size)
                _f.lowpass(c, x, f.lowpass_alpha, self._lowpass, y)
                x = y
            if out is val:
                out = val.copy()
            out[mine] = x
        return out

    def reportable(self, rows: np.ndarray) -> np.ndarray:
        """Which aggregate rows (``ROW_FIELDS``, closed in time order per channel) pass the deadbands."""
        keep = np.ones(rows.shape[0], dtype=np.bool_)
        if rows.shape[0] == 0:
            return keep
        chan = rows[:, 0].astype(np.int64)
        for g, (f, _) in enumerate(self._groups):
            if f.deadband <= 0.0:
                continue
            mine = np.nonzero(self._group_of[chan] == g)[0]
            if mine.size:
                emit = np.empty(mine.size, dtype=np.bool_)
                _f.deadband(chan[mine], np.ascontiguousarray(rows[mine, _START]),
                            np.ascontiguousarray(rows[mine, _MEAN]), f.deadband, f.heartbeat_s, self._deadband, emit)
                keep[mine] = emit
                if not emit.all():
                    np.add.at(self.held, chan[mine][~emit], 1)
        return keep

    def counters(self, keys: list) -> dict[str, dict[str, int]]:
        """Per sensor with filters: ``despiked`` readings and ``deadband_held`` aggregates so far
        (since the daemon started; not checkpointed)."""
        out = {sensor: dict(d) for sensor, d in self._retired.items()}
        for c, k in enumerate(keys[: len(self._of_channel)]):
            if self._of_channel[c] == _OFF and not (self.despiked[c] or self.held[c]):
                continue
            d = out.setdefault(k.sensor, {"despiked": 0, "deadband_held": 0})
            d["despiked"] += int(self.despiked[c])
            d["deadband_held"] += int(self.held[c])
        return out

    def state(self) -> dict[str, np.ndarray]:
        d = {"lowpass": self._lowpass.copy(), "deadband": self._deadband.copy()}
        d.update({f"hampel.{w}": t.copy() for w, t in self._hampel.items()})
        return d

    def load_state(self, state: dict[str, np.ndarray]) -> None:
        """Tables of the same layout are restored; others (a changed window length) start afresh."""
        for name, table in (("lowpass", self._lowpass), ("deadband", self._deadband),
                            *((f"hampel.{w}", t) for w, t in self._hampel.items())):
            saved = state.get(name)
            if saved is not None and saved.ndim == 2 and saved.shape[1] == table.shape[1]:
                k = min(saved.shape[0], table.shape[0])
                table[:k] = saved[:k]

    @staticmethod
    def warm() -> None:
        """Compile the three kernels: a reload may switch filters on, and must not compile on the loop."""
        c, x = np.zeros(2, dtype=np.int64), np.array([1.0, 2.0])
        y, flags = np.empty(2), np.empty(2, dtype=np.bool_)
        _f.hampel(c, x, 3.0, _f.new_hampel_state(1, 3), y, flags)
        _f.lowpass(c, x, 0.5, _f.new_lowpass_state(1), y)
        _f.deadband(c, x, x, 0.5, 60.0, _f.new_deadband_state(1), flags)


def _counts(counts: np.ndarray, n: int) -> np.ndarray:
    if counts.shape[0] >= n:
        return counts
    grown = np.zeros(n, dtype=np.int64)
    grown[: counts.shape[0]] = counts
    return grown


def _rows(table: np.ndarray, n: int) -> np.ndarray:
    """``table`` with room for ``n`` rows (new ones zero, the kernels' "nothing seen")."""
    if table.shape[0] >= n:
        return table
    grown = np.zeros((n, table.shape[1]), dtype=table.dtype)
    grown[: table.shape[0]] = table
    return grown
