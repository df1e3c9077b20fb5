"""Stateful wrappers the daemon and the offline tools call: :class:`Detector` and :class:`Chain`.

They own the per-channel state tables, grow them when a new channel appears,
and expose the state as plain arrays so it can be checkpointed and restored.
All tunables live in frozen settings dataclasses; the defaults of
:class:`DetectorSettings` are the ones tuned on the NAB tuning split
(see ``bench/NAB_RESULTS.md``): only the ``novelty`` detector scores, while the
``range``/``flatline``/``dropout`` guards open events on their own (see
:mod:`.ensemble` for the split).

Per call, :meth:`Detector.process` makes one pass over the batch (every
detector, the combination and the event hysteresis fused in
:func:`.detectors.detect`) and allocates only the score (8 bytes per reading)
and the dominant detector (1 byte); events come back from a fixed 1024-row
buffer. The default :class:`Chain` (no despiking, no low-pass) runs its
deadband inside the same pass.

Readings are finite or NaN (missing: scored 0, state untouched). An infinite
value is not checked for here, to keep the pass lean: it would enter the running
statistics and silence its channel for good, so the ways in (the daemon's
batcher, ``analyze`` and ``evaluate``) turn it into NaN first.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np

from . import detectors as _D
from . import ensemble as ens
from . import filters as _filters
from .detectors import DETECTOR_NAMES, N_DETECTORS, new_state
from .settings import _RENAMED, DetectorSettings  # noqa: F401 - re-exported
from .tables import keep_rows

_STATE_NAMES = ("ewma", "robust", "rate", "cusum", "flatline", "dropout", "novelty")
_EVENT_ROWS = 1024


def _grow(a: np.ndarray, n: int) -> np.ndarray:
    if a.shape[0] >= n:
        return a
    b = np.zeros((max(n, 2 * a.shape[0]),) + a.shape[1:], dtype=a.dtype)
    b[: a.shape[0]] = a
    return b


class Detector:
    """The detector ensemble over any number of channels, with events and checkpointable state.

    ``pure=True`` runs the pure-Python twin of every kernel and helper
    (:func:`.detectors.pure_module`): for tests and the speed comparison.
    """

    def __init__(self, settings: DetectorSettings | None = None, capacity: int = 16, pure: bool = False) -> None:
        self.settings = settings or DetectorSettings()
        self._p = self.settings.params()
        self._spec = _D.spec_of(self._p)
        # with ewma/robust/rate/cusum all unweighted, None tables compile them out of detect_spec
        self._stats_on = any(w > 0.0 for w in self.settings.weights[: _D.D_CUSUM + 1])
        self._k = _D.pure_module() if pure else _D
        self._state = {name: new_state(name, capacity) for name in _STATE_NAMES}
        self._state["events"] = ens.new_event_state(capacity)
        self._rows = np.empty((_EVENT_ROWS, len(ens.EVENT_FIELDS)), dtype=np.float64)
        self.n_channels = 0
        self.last_dominant = np.zeros(0, dtype=np.int8)

    def ensure_channels(self, n: int) -> None:
        """Make room for channel numbers below ``n``."""
        for k, a in self._state.items():
            self._state[k] = _grow(a, n)
        self.n_channels = max(self.n_channels, n)

    def process(self, chan: np.ndarray, ts: np.ndarray, val: np.ndarray) -> tuple[np.ndarray, list[dict]]:
        """Score one batch; return (score per reading, events closed by this batch).

        ``last_dominant`` then holds the dominant detector index of each reading (-1: none).
        """
        chan = np.ascontiguousarray(chan, dtype=np.int64)
        ts = np.ascontiguousarray(ts, dtype=np.float64)
        val = np.ascontiguousarray(val, dtype=np.float64)
        if chan.shape[0] and int(chan.max()) >= self.n_channels:
            self.ensure_channels(int(chan.max()) + 1)
        return self._run(chan, ts, val)

    def _run(self, chan, ts, val, db_band=0.0, db_heartbeat=0.0, st_db=None, emit=None):
        n = chan.shape[0]
        st = self._state
        out = np.empty(n, dtype=np.float64)
        dom = np.empty(n, dtype=np.int8)
        events: list[dict] = []
        stats = (st["ewma"], st["robust"], st["rate"], st["cusum"]) if self._stats_on else (None, None, None, None)
        i = 0
        while True:
            i, m = self._k.detect_spec(chan, ts, val, self._p, i, *stats, st["flatline"], st["dropout"],
                                       st["novelty"], st["events"], out, dom, self._rows, db_band, db_heartbeat,
                                       st_db, emit, self._spec)
            if m:
                events.extend(_event_dict(r) for r in self._rows[:m].tolist())
            if i >= n:
                break
        self.last_dominant = dom
        return out, events

    def open_events(self, channels: np.ndarray) -> list[dict]:
        """The events open on ``channels`` now, as far as they got: ``end`` is their last reading at or
        above the threshold so far, ``peak_*`` and ``detector`` their peak so far."""
        ev = self._state["events"]
        channels = channels[channels < self.n_channels]
        rows = channels[ev[channels, _D.E_OPEN] != 0.0]
        cols = [_D.E_START, _D.E_END, _D.E_PEAK, _D.E_PEAK_VAL, _D.E_DOM]
        return [_event_dict([c] + r) for c, r in zip(rows.tolist(), ev[np.ix_(rows, cols)].tolist())]

    def close_events(self, channels: np.ndarray) -> list[dict]:
        """Close the events open on ``channels`` now, as :meth:`open_events` shows them: for a channel that
        went silent (or sends only NaN), which the hysteresis would otherwise keep open for good."""
        closing = self.open_events(channels)
        self._end_events([e["channel"] for e in closing])
        return closing

    def forget_events(self, sent: np.ndarray) -> int:
        """Drop, without a row, the events open on channel ``c`` that started at or before ``sent[c]`` (NaN:
        none): they were closed and sent after the state was saved. Returns how many."""
        n = min(sent.shape[0], self.n_channels)
        ev = self._state["events"]
        gone = np.nonzero((ev[:n, _D.E_OPEN] != 0.0) & (ev[:n, _D.E_START] <= sent[:n]))[0]
        self._end_events(gone)
        return int(gone.size)

    def _end_events(self, channels) -> None:
        """No event open on ``channels`` any more (the hysteresis starts afresh there)."""
        ev = self._state["events"]
        ev[channels, _D.E_OPEN] = 0.0
        ev[channels, _D.E_BELOW] = 0.0

    def silence_after(self, channels: np.ndarray) -> np.ndarray:
        """Per channel, how long without a reading counts as silent: ``drop_k`` times its typical gap
        between readings (the dropout guard's own measure; 0 while it has not learnt one)."""
        return self.settings.drop_k * self._state["dropout"][channels, 1]

    def open_mask(self) -> np.ndarray:
        """Which channels have an event open."""
        return self._state["events"][: self.n_channels, _D.E_OPEN] != 0.0

    def keep_channels(self, keep: np.ndarray) -> None:
        """Keep only channels ``keep`` (ascending), renumbered 0, 1, ... (see :meth:`.Pipeline.forget_idle`)."""
        for k, a in self._state.items():
            self._state[k] = keep_rows(a, keep)
        self.n_channels = int(np.count_nonzero(keep < self.n_channels))

    def resume(self, channels: np.ndarray | None = None) -> None:
        """After a restore or a step of the clock (all channels, or ``channels``): the gateway's own
        downtime, or a jump of its clock, is not a sensor's dropout. Each channel's next reading
        re-anchors the gap clock; the typical interval learnt before is kept."""
        if channels is None:
            self._state["dropout"][:, 2] = 0.0
        else:
            self._state["dropout"][channels[channels < self._state["dropout"].shape[0]], 2] = 0.0

    def state(self) -> dict[str, np.ndarray]:
        """Copies of every state table (rows = channels), for a checkpoint."""
        return {k: a[: self.n_channels].copy() for k, a in self._state.items()}

    def load_state(self, d: dict[str, np.ndarray]) -> None:
        """Restore tables saved by :meth:`state`; widths must match this version's layout."""
        for k, a in self._state.items():
            if k not in d:
                raise ValueError(f"state {k!r} missing (saved by an older version?)")
            b = np.asarray(d[k], dtype=np.float64)
            if b.ndim != 2 or b.shape[1] != a.shape[1]:
                raise ValueError(f"state {k!r} has shape {b.shape}, expected (n, {a.shape[1]})")
        n = max(np.asarray(d[k]).shape[0] for k in self._state)
        self.ensure_channels(max(n, 1))
        for k in self._state:
            b = np.asarray(d[k], dtype=np.float64)
            self._state[k][: b.shape[0]] = b
            self._state[k][b.shape[0]:] = 0.0
        self.n_channels = n

    def warm(self) -> None:
        """Compile (or load from the cache) every kernel on a tiny input."""
        probe = Detector(self.settings, capacity=1)
        probe.process(np.zeros(2, np.int64), np.array([0.0, 1.0]), np.array([1.0, 2.0]))


def _event_dict(r: list) -> dict:
    dom = int(r[5])
    return {
        "channel": int(r[0]),
        "start": r[1],
        "end": r[2],
        "peak_score": r[3],
        "peak_value": r[4],
        "detector": DETECTOR_NAMES[dom] if 0 <= dom < N_DETECTORS else "none",
    }


@dataclass(frozen=True)
class ChainSettings:
    """Filters for the reported values, and the detector that scores the raw ones.

    ``hampel_window = 0`` turns despiking off; ``lowpass_alpha = 1`` passes values through.
    """

    hampel_window: int = 0
    hampel_sigma: float = 3.0
    lowpass_alpha: float = 1.0
    deadband: float = 0.0
    heartbeat_s: float = 300.0
    detector: DetectorSettings = field(default_factory=DetectorSettings)


@dataclass
class ChainOutput:
    filtered: np.ndarray
    despiked: np.ndarray
    emit: np.ndarray
    score: np.ndarray
    events: list


class Chain:
    """The full default chain: detector on raw readings; despike -> low-pass -> deadband for reporting."""

    def __init__(self, settings: ChainSettings | None = None, capacity: int = 16, pure: bool = False) -> None:
        self.settings = settings or ChainSettings()
        self.detector = Detector(self.settings.detector, capacity, pure=pure)
        filters = _filters.pure_module() if pure else _filters
        self._f = filters
        w = self.settings.hampel_window
        self._hampel = filters.new_hampel_state(capacity, w) if w > 0 else None
        self._lowpass = filters.new_lowpass_state(capacity)
        self._deadband = filters.new_deadband_state(capacity)

    def ensure_channels(self, n: int) -> None:
        self.detector.ensure_channels(n)
        if self._hampel is not None:
            self._hampel = _grow(self._hampel, n)
        self._lowpass = _grow(self._lowpass, n)
        self._deadband = _grow(self._deadband, n)

    def process(self, chan: np.ndarray, ts: np.ndarray, val: np.ndarray) -> ChainOutput:
        chan = np.ascontiguousarray(chan, dtype=np.int64)
        ts = np.ascontiguousarray(ts, dtype=np.float64)
        val = np.ascontiguousarray(val, dtype=np.float64)
        n = chan.shape[0]
        if n and int(chan.max()) >= self.detector.n_channels:
            self.ensure_channels(int(chan.max()) + 1)
        st = self.settings
        if self._hampel is None and st.lowpass_alpha >= 1.0:
            # default chain: the deadband runs inside the detector's single pass
            emit = np.empty(n, dtype=np.bool_)
            score, events = self.detector._run(chan, ts, val, max(st.deadband, 0.0), st.heartbeat_s,
                                               self._deadband, emit)
            return ChainOutput(val, np.zeros(n, dtype=np.bool_), emit, score, events)
        score, events = self.detector._run(chan, ts, val)
        spikes = np.zeros(n, dtype=np.bool_)
        x = val
        if self._hampel is not None:
            x = np.empty(n)
            self._f.hampel(chan, val, st.hampel_sigma, self._hampel, x, spikes)
        y = x
        if st.lowpass_alpha < 1.0:
            y = np.empty(n)
            self._f.lowpass(chan, x, st.lowpass_alpha, self._lowpass, y)
        emit = np.empty(n, dtype=np.bool_)
        self._f.deadband(chan, ts, y, st.deadband, st.heartbeat_s, self._deadband, emit)
        return ChainOutput(y, spikes, emit, score, events)

    def state(self) -> dict[str, np.ndarray]:
        d = {f"detector.{k}": v for k, v in self.detector.state().items()}
        n = self.detector.n_channels
        if self._hampel is not None:
            d["hampel"] = self._hampel[:n].copy()
        d["lowpass"] = self._lowpass[:n].copy()
        d["deadband"] = self._deadband[:n].copy()
        return d

    def load_state(self, d: dict[str, np.ndarray]) -> None:
        self.detector.load_state({k[9:]: v for k, v in d.items() if k.startswith("detector.")})
        n = self.detector.n_channels
        self.ensure_channels(n)
        for name in ("hampel", "lowpass", "deadband"):
            cur = getattr(self, "_" + name)
            if cur is None:
                continue
            b = np.asarray(d[name], dtype=np.float64)
            if b.shape[1] != cur.shape[1]:
                raise ValueError(f"state {name!r} has width {b.shape[1]}, expected {cur.shape[1]}")
            cur[: b.shape[0]] = b
            cur[b.shape[0]:] = 0.0

    def warm(self) -> None:
        probe = Chain(dataclasses.replace(self.settings), capacity=1)
        probe.process(np.zeros(2, np.int64), np.array([0.0, 1.0]), np.array([1.0, 2.0]))
