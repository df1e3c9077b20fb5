"""Collects readings from every driver into per-batch NumPy arrays with dense channel numbers.

Drivers call :meth:`Batcher.add` on the event loop (cheap: three list appends);
the pipeline calls :meth:`Batcher.drain` once per batch interval and gets
parallel ``chan``/``ts``/``val`` arrays that one kernel call can consume.
An infinite value becomes NaN (missing) there, whichever driver let it through:
the kernels take only finite or NaN readings (see :mod:`.analytics.chain`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .readings import Reading


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


class Batcher:
    """Maps (sensor, channel) to a dense index and buffers readings until drained."""

    def __init__(self) -> None:
        self.keys: list[ChannelKey] = []
        self._index: dict[tuple[str, str], int] = {}
        self._chan: list[int] = []
        self._ts: list[float] = []
        self._val: list[float] = []
        self.total = 0
        self.last_value: dict[int, tuple[float, float]] = {}

    def index_of(self, sensor: str, channel: str, unit: str = "") -> int:
        key = (sensor, channel)
        idx = self._index.get(key)
        if idx is None:
            idx = len(self.keys)
            self._index[key] = idx
            self.keys.append(ChannelKey(sensor, channel, unit))
        return idx

    def add(self, r: Reading) -> None:
        idx = self._index.get((r.sensor, r.channel))
        if idx is None:
            idx = self.index_of(r.sensor, r.channel, r.unit)
        self._chan.append(idx)
        self._ts.append(r.ts)
        self._val.append(r.value)

    def pending(self) -> int:
        return len(self._chan)

    def drain(self) -> Batch:
        val = np.array(self._val, dtype=np.float64)
        val[np.isinf(val)] = np.nan
        batch = Batch(np.array(self._chan, dtype=np.int64), np.array(self._ts, dtype=np.float64), val)
        self._chan, self._ts, self._val = [], [], []
        self.total += len(batch)
        return batch
