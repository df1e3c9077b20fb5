"""The detector ensemble's settings: every tunable, validated, and the parameter vector the kernels read.

Plain Python over :mod:`.layout`: importing it does not import Numba, so the config can be
validated before the daemon points Numba's cache at the state directory.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from dataclasses import dataclass

import numpy as np

from . import layout as _L
from .layout import DETECTOR_NAMES, GUARDS, N_DETECTORS, NOV_FEATURES, NOV_MAX_BINS, NOV_NF

# fields of the previous ensemble with a direct successor (the mute after an alarm)
_RENAMED = {"suppress_n": "nov_hold", "suppress_level": "nov_level"}


_UNBOUNDED = ("range_lo", "range_hi")  # -inf/inf: no limit (their default)
# +inf also means something for these: the guards open no events, a novelty hold is never bypassed
_INF_OK = _UNBOUNDED + ("guard_level", "nov_bypass")

# The domain of every field that is not just "a finite number, 0 or more" (each read from how
# detectors.py uses it); a value outside it makes a score leave [0, 1], divides by zero, or turns a
# detector into one that scores every reading. Each is a single-field check on purpose: a config's
# per-sensor layers are validated one by one, so a rule across fields could pass there and fail on a
# combined channel in the running pipeline.
_FRACTION = "an EWMA's weight of the new reading: 0 never learns, above 1 overshoots"
_CLIP = ("the spread estimate is updated with residuals clipped at clip x spread: at 1 or below it can "
         "only shrink, toward 0, and every reading then scores as an outlier")
_WEIGHT = "a score is weight x a detector's score in [0, 1], and the combined score must stay in [0, 1]"
_INF = math.inf
# name -> (lowest, whether the lowest itself is refused, highest (allowed), why)
_DOMAINS: dict[str, tuple[float, bool, float, str]] = {
    **{k: (0.0, True, 1.0, _FRACTION) for k in (
        "ewma_alpha", "robust_eta", "rate_eta", "cusum_eta", "drop_eta", "nov_short_alpha", "nov_season_alpha",
        "nov_vol_alpha", "nov_long_alpha", "nov_spread_alpha")},
    **{k: (1.0, True, _INF, _CLIP) for k in ("robust_clip", "rate_clip", "cusum_clip", "drop_clip")},
    "weights": (0.0, False, 1.0, _WEIGHT),
    "nov_weights": (0.0, False, 1.0, _WEIGHT),
    "flat_alpha": (0.0, False, 1.0, "the guard scores 1 - the repeat rate, an EWMA; 0: it never learns"),
    "nov_decay": (0.0, False, 1.0,
                  "the share of a range's width it shrinks by per reading: above 1 it turns inside out"),
    "nov_season_smooth": (0.0, False, 1.0, "a blend of the value (0) and its short EWMA (1)"),
    "nov_refract_damp": (0.0, False, 1.0, "scores are multiplied by 1 - damp x (0..1): above 1 they go negative"),
    "cusum_h": (0.0, True, _INF, "the score is stat / (stat + cusum_h)"),
    "drop_k": (1.0, False, _INF, ("a dropout is a gap over drop_k typical intervals: below 1 an ordinary gap scores, "
                                  "at 0 every reading is a dropout")),
    "event_threshold": (0.0, True, 1.0, "the combined score is in [0, 1]"),
}


def _interval(lo: float, lo_open: bool, hi: float) -> str:
    """``(lo, hi]``, ``[lo, inf)``...: a domain of :data:`_DOMAINS` as its messages write it."""
    return f"{'(' if lo_open else '['}{lo:g}, " + ("inf)" if hi == _INF else f"{hi:g}]")


def _out_of_domain(name: str, x: float) -> str | None:
    """What is wrong with ``x`` as (one entry of) field ``name``, or None when it is in its domain."""
    if name == "event_threshold" and not 0.0 < x <= 1.0:
        return "the combined score is in [0, 1]; give a value in (0, 1]"  # as config's ``threshold``
    if name == "guard_level" and not x > 0.0:
        # every reading would be a guard alarm: events would open and never close
        return "must be positive (above 1: guards open no events)"
    lo, lo_open, hi, why = _DOMAINS.get(name, (0.0, False, _INF, ""))
    if (x > lo if lo_open else x >= lo) and x <= hi:
        return None
    if lo == 0.0 and not lo_open and not x >= lo:
        # a negative half, rate or count has no meaning, and some would divide by zero in a kernel
        return "must be 0 or more"
    return f"must be in {_interval(lo, lo_open, hi)} ({why})"


def domain_text(name: str) -> str:
    """The values field ``name`` takes, in the words its refusal uses (``config options detector``)."""
    if name in _UNBOUNDED:
        return "any number; -.inf / .inf: no limit"
    if name == "event_threshold":
        return "in (0, 1] (the combined score is in [0, 1])"
    if name == "guard_level":
        return "positive; above 1 (or .inf) guards open no events"
    if name == "nov_season_bins":
        return f"in [1, {NOV_MAX_BINS}]"
    lo, lo_open, hi, why = _DOMAINS.get(name, (0.0, False, _INF, ""))
    domain = _interval(lo, lo_open, hi)
    if name == "nov_bypass":
        domain += ", or .inf"
    return f"in {domain} ({why})" if why else f"in {domain}"


def param_docs() -> list[tuple[str, str, str]]:
    """``(name, default, values)`` of every field ``detector.params`` takes, in declaration order; a list's
    default names its entries (``weights`` follow :data:`DETECTOR_NAMES`, ``nov_*`` :data:`NOV_FEATURES`)."""
    out = []
    for f in dataclasses.fields(DetectorSettings):
        v = f.default
        if isinstance(v, tuple):
            labels = DETECTOR_NAMES if f.name == "weights" else NOV_FEATURES
            default = "[" + ", ".join(f"{x:g} ({n})" for x, n in zip(v, labels)) + "]"
        else:
            default = {math.inf: ".inf", -math.inf: "-.inf"}.get(v, f"{v:g}")
        out.append((f.name, default, domain_text(f.name)))
    return out


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
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            labels = DETECTOR_NAMES if f.name == "weights" else NOV_FEATURES
            for i, x in enumerate(v if isinstance(v, tuple) else (v,)):
                x = float(x)
                which = f"; {f.name}[{i}] ({labels[i]}) is {x:g}" if isinstance(v, tuple) else ""
                if math.isnan(x) or (math.isinf(x) and f.name not in _INF_OK):
                    # inf would overflow a warm-up count or divide into NaN; range limits may be +-inf: no limit
                    raise ValueError(f"{f.name}: " + ("must be a number, not NaN" if f.name in _INF_OK
                                                       else "must be a finite number") + which)
                if f.name in _UNBOUNDED:
                    continue
                problem = _out_of_domain(f.name, x)
                if problem:
                    raise ValueError(f"{f.name}: {problem}{which}")

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
        p = np.empty(_L.N_PARAMS, dtype=np.float64)
        p[: _L.P_NOV_DECAY0] = [
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
        p[_L.P_NOV_DECAY0 : _L.P_NOV_W0] = self.nov_decay
        p[_L.P_NOV_W0 : _L.P_GUARD_LEVEL] = self.nov_weights
        p[_L.P_GUARD_LEVEL] = self.guard_level
        p[_L.P_EVENT_THRESHOLD] = self.event_threshold
        p[_L.P_EVENT_CLOSE] = self.event_close_after
        p[_L.P_W0 : _L.P_NOV_LONG_MODE] = self.weights
        p[_L.P_NOV_LONG_MODE :] = [self.nov_long_mode, self.nov_season_mature, self.nov_half_season,
                                   self.nov_half_vol, self.nov_season_smooth,
                                   1.0 / self.nov_refract if self.nov_refract > 0.0 else 0.0,
                                   self.nov_refract_damp, self.nov_season_floor, self.nov_shift_floor,
                                   self.nov_vol_season, self.nov_value_gate]
        return tuple(p.tolist())


# settings that only open and close events: they never change anomaly_score
EVENT_ONLY_PREFIXES = ("event_", "guard_")


def detector_of(key: str) -> str | None:
    """The detector a setting belongs to, by its prefix (``flat_eps`` -> flatline), if exactly one."""
    prefix = key.split("_", 1)[0]
    owners = [d for d in DETECTOR_NAMES if d.startswith(prefix)]
    return owners[0] if "_" in key and len(owners) == 1 else None


def why_no_effect(settings: DetectorSettings, key: str, *, live: bool = False) -> str | None:
    """Why setting ``key`` changes nothing under ``settings`` (None: it can change something).

    Without ``live``, what counts is the anomaly score (``analyze``/``evaluate --set``). With ``live``,
    the events of the running gateway count too: the event settings and the guards (range, flatline,
    dropout) open events whatever their weight, unless ``guard_level`` is above 1 (a guard's score never is).
    """
    key = _RENAMED.get(key, key)
    if key.startswith(EVENT_ONLY_PREFIXES):
        return None if live else "it only opens and closes events"
    owner = detector_of(key)
    if owner is None or settings.weights[DETECTOR_NAMES.index(owner)] != 0.0:
        return None
    if not live or DETECTOR_NAMES.index(owner) not in GUARDS:
        return f"the {owner} detector has weight 0"
    if settings.guard_level <= 1.0:
        return None
    return f"the {owner} detector has weight 0, and guard_level {settings.guard_level:g} (above 1) lets it open no events"
