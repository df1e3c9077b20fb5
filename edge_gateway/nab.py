"""Scoring by the Numenta Anomaly Benchmark method, written from its published description.

A detection is a row whose score is at or above the threshold. Rows of the
probationary period (first 15% of a file, at most 750 rows) are not scored.
In a window only the earliest detection counts, worth ``tp * S(x) / S(-1)``
with ``S(x) = 2 / (1 + exp(5x)) - 1`` and ``x = -(right - i + 1) / width``;
a missed window costs ``fn``; a detection outside windows costs
``fp * S(|i - prev_right| / (prev_width - 1))`` (``S = -1`` past ``x = 3``)
after a window and ``-fp`` before any. The threshold is chosen per profile to
maximise the corpus total, which is normalised to 100 * (raw - null) / (perfect - null).

Because earlier detections in a window are worth more, a window's value as the
threshold falls is a running maximum; one descending sweep over all rows of the
corpus therefore gives the exact optimum (see :func:`_sweep`).
"""

from __future__ import annotations

import csv
import json
import math
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .analytics._jit import kernel
from .readings import LATEST_EPOCH_S

PROFILES_DEFAULT = {
    "standard": {"tp": 1.0, "fp": 0.11, "fn": 1.0},
    "reward_low_FP_rate": {"tp": 1.0, "fp": 0.22, "fn": 1.0},
    "reward_low_FN_rate": {"tp": 1.0, "fp": 0.11, "fn": 2.0},
}


def scaled_sigmoid(x: float) -> float:
    """NAB's S(x): 1 well before a window's end, 0 at it, -1 from 3 widths after it."""
    if x > 3.0:
        return -1.0
    return 2.0 / (1.0 + math.exp(5.0 * x)) - 1.0


def probation_length(n_rows: int, percent: float = 0.15) -> int:
    return int(min(math.floor(percent * n_rows), percent * 5000))


_TZ_WARNING = "no explicit representation of timezones available for np.datetime64"


def to_epoch(stamps) -> np.ndarray:
    """``2014-04-01 00:00:00`` (optionally with fractions) -> float64 epoch seconds, UTC.

    numpy reads a ``Z`` or ``+hh:mm`` suffix as UTC or that offset and converts to UTC, as wanted, but
    warns that datetime64 has no time zone: the warning says nothing to the user, so it is not shown."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_TZ_WARNING, category=UserWarning)
        return np.array(list(stamps), dtype="datetime64[us]").astype(np.int64) / 1e6


class SeriesError(ValueError):
    """A data file that cannot be read as ``timestamp,value`` rows; the message names the file (and row)."""


# epoch seconds beyond this (the year 5138) are no real reading's: a larger stamp is epoch milliseconds (1e12
# today) or finer, which read as seconds would put every phase bin, gap and window boundary wrong (as the
# gateway's batcher and serial_line refuse it)
EPOCH_MAX = LATEST_EPOCH_S
_EPOCH = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)")  # all-numeric: epoch seconds, int or float
_DATE = re.compile(r"\s*\d{4}-\d\d-\d\d")  # what an ISO date-time starts with (not "NaT", "now", a number)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _is_header(row: list[str]) -> bool:
    stamp, value = (row + [""])[:2]
    return (bool(value.strip()) and not _is_number(value)
            and not (_DATE.match(stamp) or _EPOCH.fullmatch(stamp.strip())))


def read_table(path: str | Path) -> tuple[list[str], np.ndarray, np.ndarray]:
    """A ``timestamp,value`` CSV as (timestamps as written, epoch seconds, values), for both commands.

    The first row is a header (and skipped) only when its value field is text that is not a
    number and its timestamp field is not a timestamp. Timestamps are ISO date-times
    (``2014-04-01 00:00:00``, the NAB layout) or, if the first row's is all-numeric, epoch
    seconds in every row. An empty value is missing (NaN); an infinite one is returned as
    written. Anything else raises :class:`SeriesError` naming the file and its first bad row
    (1-based, counting every line of the file).
    """
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            # a line of blanks only (spaces, tabs, a lone comma or two) is a blank line, not a row
            rows = [(reader.line_num, r) for r in reader if any(x.strip() for x in r)]
    except OSError as exc:
        raise SeriesError(f"cannot read {path}: {exc.strerror or exc}") from None
    except (UnicodeDecodeError, csv.Error) as exc:
        raise SeriesError(f"{path}: not a timestamp,value CSV ({exc})") from None
    if rows and _is_header(rows[0][1]):
        rows = rows[1:]
    stamps: list[str] = []
    val = np.empty(len(rows), dtype=np.float64)
    epoch = bool(rows) and _EPOCH.fullmatch(rows[0][1][0].strip()) is not None
    for i, (line, r) in enumerate(rows):
        if len(r) < 2:
            raise SeriesError(f"{path}, row {line}: expected two fields (timestamp,value), got 1")
        s, v = r[0], r[1].strip()
        if not s.strip():
            raise SeriesError(f"{path}, row {line}: empty timestamp")
        if epoch and not _EPOCH.fullmatch(s.strip()):
            raise SeriesError(f"{path}, row {line}: timestamp {s!r} is not epoch seconds "
                              "(the first row's timestamp is)")
        if not epoch and not _DATE.match(s):
            raise SeriesError(f"{path}, row {line}: timestamp {s!r} is not a date-time "
                              "(YYYY-MM-DD hh:mm:ss) or epoch seconds")
        try:
            val[i] = float(v) if v else math.nan
        except ValueError:
            raise SeriesError(f"{path}, row {line}: value {r[1]!r} is not a number") from None
        stamps.append(s)
    if epoch:
        ts = np.array([float(s) for s in stamps], dtype=np.float64)
        big = np.flatnonzero(~(np.abs(ts) <= EPOCH_MAX))
        if big.size:
            line, s = rows[int(big[0])][0], stamps[int(big[0])]
            unit = next((u for u, f in (("milliseconds", 1e3), ("microseconds", 1e6), ("nanoseconds", 1e9))
                         if abs(float(s)) / f <= EPOCH_MAX), "")
            raise SeriesError(f"{path}, row {line}: timestamp {s.strip()} is too large for epoch seconds (above "
                              f"1e11, the year 5138){f': it looks like epoch {unit}' if unit else ''}; "
                              "give epoch seconds (milliseconds divided by 1000) or YYYY-MM-DD hh:mm:ss")
        return stamps, ts, val
    try:
        return stamps, to_epoch(stamps), val
    except ValueError:
        for (line, _), s in zip(rows, stamps):
            try:
                to_epoch([s])
            except ValueError:
                raise SeriesError(f"{path}, row {line}: timestamp {s!r} is not a valid date-time "
                                  "(YYYY-MM-DD hh:mm:ss)") from None
        raise


def read_series(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """A NAB CSV (``timestamp,value``) as (epoch seconds, values); an infinite value is read as missing.

    Raises :class:`SeriesError` (see :func:`read_table`).
    """
    _, ts, val = read_table(path)
    val[np.isinf(val)] = math.nan
    return ts, val


def load_profiles(path: str | Path | None = None) -> dict[str, dict[str, float]]:
    """Profiles as ``{name: {tp, fp, fn}}`` from NAB's ``profiles.json`` (or the defaults)."""
    if path is None:
        return dict(PROFILES_DEFAULT)
    raw = json.loads(Path(path).read_text())
    return {
        name: {"tp": p["CostMatrix"]["tpWeight"], "fp": p["CostMatrix"]["fpWeight"],
               "fn": p["CostMatrix"]["fnWeight"]}
        for name, p in raw.items()
    }


class LabelError(ValueError):
    """A windows file whose windows cannot be scored as given; the message names the data file and window."""


def load_windows(path: str | Path) -> dict[str, list[tuple[float, float]]]:
    """NAB's windows file as ``{file: [(start, end), ...]}`` in epoch seconds.

    Raises :class:`LabelError` for a window that ends before it starts (it could hold no row).
    """
    raw = json.loads(Path(path).read_text())
    out, problems = {}, []
    for k, v in raw.items():
        out[k] = []
        for i, pair in enumerate(v):
            where = f"{k}: window {i + 1}"
            if not isinstance(pair, (list, tuple)) or len(pair) != 2:
                problems.append(f"{where}: expected [start, end], got {pair!r}")
                continue
            a, b = pair
            try:
                ta, tb = to_epoch([a, b])
            except (ValueError, TypeError):
                problems.append(f"{where} [{a}, {b}]: not two times (write 2014-04-01 00:00:00)")
                continue
            if tb < ta:
                problems.append(f"{where} [{a}, {b}] ends before it starts (start and end swapped?)")
            out[k].append((float(ta), float(tb)))
    if problems:
        raise LabelError("\n".join(problems))
    return out


@dataclass(frozen=True)
class Labels:
    """Per-row scoring weights of one file, independent of the profile.

    ``window`` is the window index of each row (-1 outside), counting only the ``n_windows``
    windows scored; ``unit`` is S(x)/S(-1) inside a window and the (negative) unweighted
    false-positive cost outside. ``unscored`` lists ``(index in the windows given, why)`` of the
    windows not scored: those holding no row, or only rows of the probationary period (which no
    detection can reach: counted, they would be misses whatever the detector, and a perfect
    detector could not score 100). NAB's own windows always hold scorable rows.
    """

    window: np.ndarray
    unit: np.ndarray
    probation: int
    n_windows: int
    unscored: tuple = ()


def label_rows(ts: np.ndarray, windows: list[tuple[float, float]], probation_percent: float = 0.15) -> Labels:
    n = ts.shape[0]
    win = np.full(n, -1, dtype=np.int64)
    unit = np.full(n, -1.0)
    probation = probation_length(n, probation_percent)
    bounds, unscored = [], []
    k = 0  # the next scored window's index
    for j, (a, b) in enumerate(windows):
        idx = np.flatnonzero((ts >= a) & (ts <= b))
        if idx.size == 0:
            unscored.append((j, "it holds no row of the data"))
            continue
        left, right = int(idx[0]), int(idx[-1])
        width = right - left + 1
        bounds.append((left, right, width))  # (a detection after it is still weighed by its distance)
        if right < probation:
            unscored.append((j, f"it holds only rows of the probationary period (the first {probation} rows)"))
            continue
        win[left : right + 1] = k
        k += 1
        s1 = scaled_sigmoid(-1.0)
        for i in range(left, right + 1):
            unit[i] = scaled_sigmoid(-(right - i + 1) / width) / s1
    bounds.sort()
    for j, (left, right, width) in enumerate(bounds):
        stop = bounds[j + 1][0] if j + 1 < len(bounds) else n
        for i in range(right + 1, stop):
            unit[i] = scaled_sigmoid(abs(i - right) / (width - 1)) if width > 1 else -1.0
    return Labels(win, unit, probation, k, tuple(unscored))


@kernel
def _sweep(score, win, unit, n_windows, tp, fp, fn):
    """Rows sorted by descending score -> (best threshold, best raw total).

    Lowering the threshold past a row adds its FP cost, or raises its window's
    value to ``tp * unit`` if that beats the best detection seen in the window.
    """
    cur = np.full(n_windows, -fn)
    total = -fn * n_windows
    best = total
    best_thr = math.inf
    n = score.shape[0]
    i = 0
    while i < n:
        s = score[i]
        while i < n and score[i] == s:
            w = win[i]
            if w < 0:
                total += fp * unit[i]
            else:
                v = tp * unit[i]
                if v > cur[w]:
                    total += v - cur[w]
                    cur[w] = v
            i += 1
        if total > best:
            best = total
            best_thr = s
    return best_thr, best


def raw_score(score: np.ndarray, labels: Labels, threshold: float, profile: dict[str, float]) -> float:
    """One file's raw score at a fixed threshold (the direct, row-by-row definition)."""
    total = 0.0
    seen: dict[int, float] = {}
    for i in range(labels.probation, score.shape[0]):
        if not score[i] >= threshold:
            continue
        w = int(labels.window[i])
        if w < 0:
            total += profile["fp"] * labels.unit[i]
        elif w not in seen:
            seen[w] = profile["tp"] * labels.unit[i]
    total += sum(seen.values()) - profile["fn"] * (labels.n_windows - len(seen))
    return total


def optimise(items: list[tuple[np.ndarray, Labels]], profile: dict[str, float]) -> dict[str, float]:
    """Best corpus threshold for one profile: ``{threshold, raw, null, perfect, score}``."""
    scores, wins, units = [], [], []
    offset = 0
    for score, lab in items:
        p = lab.probation
        w = lab.window[p:].copy()
        w[w >= 0] += offset
        offset += lab.n_windows
        scores.append(np.asarray(score[p:], dtype=np.float64))
        wins.append(w)
        units.append(lab.unit[p:])
    s = np.concatenate(scores) if scores else np.zeros(0)
    s = np.where(np.isnan(s), -math.inf, s)
    order = np.argsort(-s, kind="stable")
    thr, raw = _sweep(s[order], np.concatenate(wins)[order] if wins else np.zeros(0, np.int64),
                      np.concatenate(units)[order] if units else np.zeros(0), offset,
                      profile["tp"], profile["fp"], profile["fn"])
    null = -profile["fn"] * offset
    perfect = profile["tp"] * offset
    norm = 100.0 * (raw - null) / (perfect - null) if perfect > null else 0.0
    return {"threshold": float(thr), "raw": float(raw), "null": null, "perfect": perfect, "score": norm}


def score_corpus(scores: dict[str, np.ndarray], labels: dict[str, Labels],
                 profiles: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    """Optimise and normalise each profile over the files in ``scores``."""
    items = [(scores[k], labels[k]) for k in sorted(scores)]
    return {name: optimise(items, prof) for name, prof in profiles.items()}
