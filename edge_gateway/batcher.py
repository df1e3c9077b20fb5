"""Collects readings from every driver into per-batch NumPy arrays with dense channel numbers.

Drivers call :meth:`Batcher.add` on the event loop (cheap: three list appends);
the pipeline calls :meth:`Batcher.drain` once per batch interval and gets
parallel ``chan``/``ts``/``val`` arrays that one kernel call can consume.
An infinite value becomes NaN (missing) there, whichever driver let it through:
the kernels take only finite or NaN readings (see :mod:`.analytics.chain`).
A reading whose timestamp is not a time in epoch seconds (NaN, infinite, 0 or
before, from the year 5138 on: :data:`EPOCH_RANGE_S`) is dropped in :meth:`Batcher.add`,
logged once per sensor and counted per sensor in :attr:`Batcher.bad_time`: the
window and phase-of-day kernels floor timestamps to integers, which wrap in Numba
and not in Python beyond about 5e20 s and fail on NaN, so such a stamp would give
garbage windows and scores, or no two paths alike.
:class:`FutureFilter` keeps readings stamped far ahead of the gateway's clock
out of the window kernels.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np

from .analytics.tables import keep_rows
from .readings import LATEST_EPOCH_S, Reading


@dataclass(frozen=True)
class ChannelKey:
    sensor: str
    channel: str
    unit: str


@dataclass
class Batch:
    chan: np.ndarray
    ts: np.ndarray
    val: np.ndarray

    def __len__(self) -> int:
        return int(self.chan.shape[0])


# the times a reading may be stamped with, in epoch seconds, both ends excluded (readings.LATEST_EPOCH_S)
EPOCH_RANGE_S = (0.0, LATEST_EPOCH_S)
_T_LO, _T_HI = EPOCH_RANGE_S
MAX_CHANNELS_PER_SENSOR = 1024  # a device names its channels (SenML): one must not grow memory without end
CHANNEL_IDLE_S = 3600.0  # a sensor at the cap gets room by forgetting its channels silent this long
ROOM_CHECK_S = 60.0  # and looks for them at most this often while it refuses (each time frees: a checkpoint write)
log = logging.getLogger(__name__)


class Batcher:
    """Maps (sensor, channel, unit) to a dense index and buffers readings until drained.

    The unit is part of a channel's identity: when a reload or a restart corrects it, the readings in
    the new unit open windows of their own, and the window open in the old unit closes as idle under
    its own unit, so no aggregate mixes the two or carries the wrong one.
    """

    def __init__(self, max_channels_per_sensor: int = MAX_CHANNELS_PER_SENSOR) -> None:
        self.keys: list[ChannelKey] = []
        self._index: dict[tuple[str, str, str], int] = {}
        self.max_channels_per_sensor = max_channels_per_sensor
        self._per_sensor: dict[str, int] = {}
        self.refused: dict[str, int] = {}  # readings of channels over the cap, per sensor
        self.bad_time: dict[str, int] = {}  # readings dropped for a timestamp outside EPOCH_RANGE_S, per sensor
        self._chan: list[int] = []
        self._ts: list[float] = []
        self._val: list[float] = []
        self.total = 0

    def index_of(self, sensor: str, channel: str, unit: str = "") -> int:
        key = (sensor, channel, unit)
        idx = self._index.get(key)
        if idx is None:
            idx = len(self.keys)
            self._index[key] = idx
            self.keys.append(ChannelKey(sensor, channel, unit))
            self._per_sensor[sensor] = self._per_sensor.get(sensor, 0) + 1
        return idx

    def renumber(self, keys: list[ChannelKey]) -> None:
        """Number channels ``keys`` 0, 1, ... and forget every other (see :meth:`.Pipeline.forget_idle`);
        only between a drain and the next reading, when no reading holds an old number."""
        if self._chan:
            raise RuntimeError("renumber with readings pending")
        self.keys = list(keys)
        self._index = {(k.sensor, k.channel, k.unit): i for i, k in enumerate(self.keys)}
        self._per_sensor = {}
        for k in self.keys:
            self._per_sensor[k.sensor] = self._per_sensor.get(k.sensor, 0) + 1

    def add(self, r: Reading, shift: float = 0.0) -> None:
        """Buffer ``r``, its time moved by ``shift`` seconds (a reading re-dated by :mod:`.clockhold`)."""
        ts = r.ts + shift if shift else r.ts
        if not _T_LO < ts < _T_HI:  # NaN too
            self._bad_time(r)
            return
        idx = self._index.get((r.sensor, r.channel, r.unit))
        if idx is None:
            if self._per_sensor.get(r.sensor, 0) >= self.max_channels_per_sensor:
                if r.sensor not in self.refused:
                    log.warning("sensor %s: more than %d channels; readings of new channels are dropped "
                                "until channels silent for %g s make room (first: %r)", r.sensor,
                                self.max_channels_per_sensor, CHANNEL_IDLE_S, r.channel)
                self.refused[r.sensor] = self.refused.get(r.sensor, 0) + 1
                return
            idx = self.index_of(r.sensor, r.channel, r.unit)
        self._chan.append(idx)
        self._ts.append(ts)
        self._val.append(r.value)

    def _bad_time(self, r: Reading) -> None:
        if r.sensor not in self.bad_time:
            log.warning("sensor %s: reading of %r stamped %r, not a time in epoch seconds (%g to %g); such "
                        "readings are dropped and counted as bad_time", r.sensor, r.channel, r.ts, *EPOCH_RANGE_S)
        self.bad_time[r.sensor] = self.bad_time.get(r.sensor, 0) + 1

    def pending(self) -> int:
        return len(self._chan)

    def drain(self) -> Batch:
        val = np.array(self._val, dtype=np.float64)
        val[np.isinf(val)] = np.nan
        batch = Batch(np.array(self._chan, dtype=np.int64), np.array(self._ts, dtype=np.float64), val)
        self._chan, self._ts, self._val = [], [], []
        self.total += len(batch)
        return batch


FUTURE_TOLERANCE_S = 600.0  # as AWS IoT SiteWise's limit on future timestamps (10 min)
FUTURE_CONFIRM = 3


class FutureFilter:
    """Drops readings stamped more than ``tolerance_s`` ahead of the gateway's wall clock, per channel.

    One such reading (an RTC glitch, a bad parse) would open a window a day ahead, and every correct
    reading of the channel after it would then be late. But a gateway without an RTC can run hours
    behind until NTP syncs, and then it is the sensor that is right: once ``FUTURE_CONFIRM`` readings
    of a channel in a row are all ahead, each by a lead (``ts - now``) within ``tolerance_s`` of the
    one before's, that one and the following pass, until a reading in range ends the run. The lead,
    not the timestamp, is compared: a clock offset is the same at any reporting rate, so a node that
    reports every 15 min is recognised as well as a 1 Hz one. ``dropped`` counts per channel.
    """

    def __init__(self, tolerance_s: float = FUTURE_TOLERANCE_S) -> None:
        if not (math.isfinite(tolerance_s) and tolerance_s > 0):
            raise ValueError(f"future tolerance must be a finite number of seconds > 0, got {tolerance_s!r}")
        self.tolerance_s = float(tolerance_s)
        self.dropped = np.zeros(0)
        self._run = np.zeros(0)  # readings ahead in a row, per channel
        self._lead = np.zeros(0)  # how far the last of them was ahead of the clock

    def ensure_channels(self, n: int) -> None:
        if n > self.dropped.shape[0]:
            grow = n - self.dropped.shape[0]
            self.dropped = np.concatenate([self.dropped, np.zeros(grow)])
            self._run = np.concatenate([self._run, np.zeros(grow)])
            self._lead = np.concatenate([self._lead, np.zeros(grow)])

    def admit(self, batch: Batch, now: float) -> Batch:
        """``batch`` without the readings it drops; ``batch`` itself when none is ahead of ``now``.

        The common case is one comparison over the batch; only readings ahead are looked at one by one.
        """
        if not len(batch):
            return batch
        self.ensure_channels(int(batch.chan.max()) + 1)
        ahead = batch.ts > now + self.tolerance_s
        if not ahead.any():
            if self._run.any():
                self._run[batch.chan] = 0.0
            return batch
        suspects = np.unique(batch.chan[ahead])
        if self._run.any():
            self._run[np.setdiff1d(batch.chan, suspects)] = 0.0
        keep = np.ones(len(batch), dtype=bool)
        for c in suspects.tolist():
            self._follow(c, np.flatnonzero(batch.chan == c), ahead, batch.ts - now, keep)
        return Batch(batch.chan[keep], batch.ts[keep], batch.val[keep])

    def _follow(self, c: int, idx: np.ndarray, ahead: np.ndarray, lead: np.ndarray, keep: np.ndarray) -> None:
        """Channel ``c``'s readings ``idx`` (in order): continue its run through those ahead, reset it
        at each one in range; mark the dropped ones in ``keep``."""
        mine = ahead[idx]
        in_range = np.cumsum(~mine)  # readings in range up to each position
        run, last, seen = self._run[c], self._lead[c], 0
        tol = self.tolerance_s
        for j in np.flatnonzero(mine).tolist():
            if in_range[j] > seen:
                run, seen = 0.0, in_range[j]
            d = lead[idx[j]]
            run = run + 1.0 if run > 0 and abs(d - last) <= tol else 1.0
            last = d
            if run < FUTURE_CONFIRM:
                keep[idx[j]] = False
                self.dropped[c] += 1.0
        if in_range[-1] > seen:
            run = 0.0
        self._run[c], self._lead[c] = run, last

    def keep_channels(self, keep: np.ndarray) -> None:
        """Keep only channels ``keep`` (ascending), renumbered 0, 1, ..."""
        self.dropped = keep_rows(self.dropped, keep)
        self._run = keep_rows(self._run, keep)
        self._lead = keep_rows(self._lead, keep)

    def state(self) -> dict[str, np.ndarray]:
        return {"dropped": self.dropped.copy(), "run": self._run.copy(), "lead": self._lead.copy()}

    def load_state(self, state: dict[str, np.ndarray]) -> None:
        """Restore :meth:`state` (a checkpoint from before this filter has none: counts start at 0).

        An older checkpoint has ``last``, a timestamp, where this one has ``lead``: its runs are not
        restored, so a run in progress starts again (at most ``FUTURE_CONFIRM - 1`` more readings dropped).
        """
        names = [("dropped", "dropped")] + ([("run", "_run"), ("lead", "_lead")] if "lead" in state else [])
        for name, attr in names:
            a = state.get(name)
            if a is not None and a.ndim == 1:
                self.ensure_channels(a.shape[0])
                getattr(self, attr)[: a.shape[0]] = a
