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
import difflib
import math
from dataclasses import dataclass, field

import numpy as np

from . import detectors as _D
from . import ensemble as ens
from . import filters as _filters
from .detectors import DETECTOR_NAMES, N_DETECTORS, NOV_FEATURES, NOV_MAX_BINS, NOV_NF, new_state

_STATE_NAMES = ("ewma", "robust", "rate", "cusum", "flatline", "dropout", "novelty")
_EVENT_ROWS = 1024
# fields of the previous ensemble with a direct successor (the mute after an alarm)
_RENAMED = {"suppress_n": "nov_hold", "suppress_level": "nov_level"}


@dataclass(frozen=True)
class DetectorSettings:
    """Every tunable of the detector ensemble. ``weights`` follow ``DETECTOR_NAMES``."""

    ewma_alpha: float = 0.01
    ewma_warmup: float = 30.0
    ewma_half: float = 2.0
    robust_eta: float = 0.02
    robust_clip: float = 3.0
    robust_warmup: float = 30.0
    robust_floor: float = 0.03
    robust_half: float = 2.0
    rate_eta: float = 0.05
    rate_clip: float = 2.0
    rate_warmup: float = 30.0
    rate_half: float = 4.0
    cusum_eta: float = 0.01
    cusum_clip: float = 3.0
    cusum_warmup: float = 50.0
    cusum_k: float = 0.5
    cusum_h: float = 5.0
    range_lo: float = -math.inf
    range_hi: float = math.inf
    flat_eps: float = 0.0
    flat_min_run: float = 10.0
    flat_alpha: float = 0.01
    drop_k: float = 10.0
    drop_eta: float = 0.05
    drop_clip: float = 3.0
    # novelty detector (NAB-tuned): see detectors.novelty_step
    nov_warmup: float = 500.0
    nov_hold: float = 100.0
    nov_level: float = 0.25
    nov_half: float = 0.05
    nov_short_alpha: float = 0.05
    nov_season_alpha: float = 0.1
    nov_season_bins: float = 24.0
    nov_season_warmup: float = 50.0
    nov_vol_alpha: float = 0.03
    nov_long_alpha: float = 0.01
    nov_season_norm: float = 1.0
    nov_spread_alpha: float = 0.1
    nov_spread_floor: float = 0.0
    nov_bin_warmup: float = 5.0
    nov_bypass: float = 2.0
    # per feature (value, diff, short, season, vol, long): range shrink per reading, weight
    nov_decay: tuple = (0.0, 0.0, 1e-5, 0.001, 0.0, 1e-4)
    nov_weights: tuple = (1.0, 0.0, 0.5, 0.3, 0.5, 0.5)
    # the long feature as short minus long EWMA (a level shift) instead of the long EWMA itself
    nov_long_mode: float = 1.0
    # the season residual range's shrink is nov_decay[3] * m / (m + residuals seen) (0: constant)
    nov_season_mature: float = 30000.0
    # the squash's half of the season and vol features (0: nov_half)
    nov_half_season: float = 0.1
    nov_half_vol: float = 0.0
    # the season profile follows the value blended toward its short EWMA by this much
    nov_season_smooth: float = 0.25
    # refractory period: r readings after a hold ends, a novelty score is multiplied by
    # 1 - nov_refract_damp * (1 - r / nov_refract) while r < nov_refract (nov_refract 0: off)
    nov_refract: float = 0.0
    nov_refract_damp: float = 0.5
    # noise floors (0: off): the season residual range (in bin spreads) always holds
    # [-nov_season_floor, nov_season_floor], the level-shift range +-nov_shift_floor * volatility EWMA
    nov_season_floor: float = 3.0
    nov_shift_floor: float = 1.0
    # > 0 (with the season feature): the volatility EWMA takes in the step less the day profile's own
    # step since the previous reading when that is smaller (a regular daily jump is not volatility)
    nov_vol_season: float = 0.0
    # > 0: a new extreme of the value scores x min(1, |value - short EWMA| / (nov_value_gate x volatility
    # EWMA))**2, both EWMAs before the reading (a slow climb to a new extreme is not a spike); round 6, off
    nov_value_gate: float = 0.0
    guard_level: float = 0.5
    # ewma, robust, rate, cusum, range, flatline, dropout, novelty
    weights: tuple = (0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 1.0)
    event_threshold: float = 0.25
    event_close_after: float = 5.0

    def __post_init__(self) -> None:
        w = tuple(float(v) for v in self.weights)
        if len(w) == N_DETECTORS - 1:  # written before the novelty detector existed
            w = w + (0.0,)
        if len(w) != N_DETECTORS:
            raise ValueError(f"weights: needs {N_DETECTORS} entries ({', '.join(DETECTOR_NAMES)})")
        object.__setattr__(self, "weights", w)
        for key in ("nov_decay", "nov_weights"):
            v = tuple(float(x) for x in getattr(self, key))
            if len(v) != NOV_NF:
                raise ValueError(f"{key}: needs {NOV_NF} entries ({', '.join(NOV_FEATURES)})")
            object.__setattr__(self, key, v)
        if not 1.0 <= self.nov_season_bins <= NOV_MAX_BINS:
            raise ValueError(f"nov_season_bins: must be in [1, {NOV_MAX_BINS}]")
        if not 0.0 < self.ewma_alpha <= 1.0:
            raise ValueError("ewma_alpha: must be in (0, 1]")
        if not self.guard_level > 0.0:
            # every reading would be a guard alarm: events would open and never close
            raise ValueError("guard_level: must be positive (above 1: guards open no events)")
        for f in dataclasses.fields(self):
            if f.name in ("range_lo", "range_hi"):
                continue
            v = getattr(self, f.name)
            if any(not float(x) >= 0.0 for x in (v if isinstance(v, tuple) else (v,))):
                # a negative half, rate or count has no meaning, and some would divide by zero in a kernel
                raise ValueError(f"{f.name}: must be 0 or more")

    def only(self, name: str) -> "DetectorSettings":
        """The same settings with one detector weighted 1 and the rest 0 ("ensemble": unchanged)."""
        if name == "ensemble":
            return self
        if name not in DETECTOR_NAMES:
            raise ValueError(f"unknown detector {name!r}; choose from ensemble, {', '.join(DETECTOR_NAMES)}")
        w = tuple(1.0 if n == name else 0.0 for n in DETECTOR_NAMES)
        return dataclasses.replace(self, weights=w)

    def with_overrides(self, pairs: dict[str, str]) -> "DetectorSettings":
        """Apply ``key=value`` strings (as from ``--set``); raises ValueError on a bad key or value."""
        names = {f.name: f for f in dataclasses.fields(self)}
        changes: dict[str, object] = {}
        for key, text in pairs.items():
            key = _RENAMED.get(key, key)
            if key not in names:
                near = difflib.get_close_matches(key, list(names), n=1, cutoff=0.6)
                hint = f"did you mean {near[0]!r}?" if near else f"known: {', '.join(sorted(names))}"
                raise ValueError(f"unknown setting {key!r}; {hint}")
            try:
                if key in ("weights", "nov_decay", "nov_weights"):
                    changes[key] = tuple(float(v) for v in text.split(","))
                else:
                    changes[key] = float(text)
            except ValueError:
                raise ValueError(f"bad value for {key}: {text!r}") from None
        return dataclasses.replace(self, **changes)

    def params(self) -> tuple:
        """The parameter tuple :func:`detectors.detect` reads (``P_*`` layout).

        A tuple, not an array: Numba passes it by value, so reading a parameter
        never has to be repeated after a store to a state array it might alias.
        """
        p = np.empty(_D.N_PARAMS, dtype=np.float64)
        p[: _D.P_NOV_DECAY0] = [
            self.ewma_alpha, self.ewma_warmup, self.ewma_half,
            self.robust_eta, self.robust_clip, self.robust_warmup, self.robust_floor, self.robust_half,
            self.rate_eta, self.rate_clip, self.rate_warmup, self.rate_half,
            self.cusum_eta, self.cusum_clip, self.cusum_warmup, self.cusum_k, self.cusum_h,
            self.range_lo, self.range_hi,
            self.flat_eps, self.flat_min_run, self.flat_alpha,
            self.drop_k, self.drop_eta, self.drop_clip,
            self.nov_warmup, self.nov_hold, self.nov_level, self.nov_half, self.nov_short_alpha,
            self.nov_season_alpha, self.nov_season_bins, self.nov_season_warmup, self.nov_vol_alpha,
            self.nov_long_alpha, self.nov_season_norm, self.nov_spread_alpha, self.nov_spread_floor,
            self.nov_bin_warmup, self.nov_bypass,
        ]
        p[_D.P_NOV_DECAY0 : _D.P_NOV_W0] = self.nov_decay
        p[_D.P_NOV_W0 : _D.P_GUARD_LEVEL] = self.nov_weights
        p[_D.P_GUARD_LEVEL] = self.guard_level
        p[_D.P_EVENT_THRESHOLD] = self.event_threshold
        p[_D.P_EVENT_CLOSE] = self.event_close_after
        p[_D.P_W0 : _D.P_NOV_LONG_MODE] = self.weights
        p[_D.P_NOV_LONG_MODE :] = [self.nov_long_mode, self.nov_season_mature, self.nov_half_season,
                                   self.nov_half_vol, self.nov_season_smooth,
                                   1.0 / self.nov_refract if self.nov_refract > 0.0 else 0.0,
                                   self.nov_refract_damp, self.nov_season_floor, self.nov_shift_floor,
                                   self.nov_vol_season, self.nov_value_gate]
        return tuple(p.tolist())


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
        channels = channels[channels < self.n_channels]
        closing = self.open_events(channels)
        ev = self._state["events"]
        for e in closing:
            ev[e["channel"], _D.E_OPEN] = 0.0
            ev[e["channel"], _D.E_BELOW] = 0.0
        return closing

    def forget_events(self, sent: np.ndarray) -> int:
        """Drop, without a row, the events open on channel ``c`` that started at or before ``sent[c]`` (NaN:
        none): they were closed and sent after the state was saved. Returns how many."""
        n = min(sent.shape[0], self.n_channels)
        ev = self._state["events"]
        gone = np.nonzero((ev[:n, _D.E_OPEN] != 0.0) & (ev[:n, _D.E_START] <= sent[:n]))[0]
        ev[gone, _D.E_OPEN] = 0.0
        ev[gone, _D.E_BELOW] = 0.0
        return int(gone.size)

    def resume(self) -> None:
        """After a restore: the gateway's own downtime is not a sensor's dropout. Each channel's next
        reading re-anchors the gap clock; the typical interval learnt before is kept."""
        self._state["dropout"][:, 2] = 0.0

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
