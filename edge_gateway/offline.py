"""Offline subcommands: ``analyze`` CSV series and ``evaluate`` against NAB labels.

``analyze`` replays each file through a fresh :class:`~.analytics.chain.Detector`
in small batches, exactly as the daemon would see it live (no look-ahead, no
per-file ranges), so the scores written are the scores the gateway would have
produced. ``evaluate`` scores a labelled corpus with :mod:`.nab`.
"""

from __future__ import annotations

import argparse
import csv
import fnmatch
import math
import sys
from pathlib import Path

import numpy as np


def add_to(subparsers) -> None:
    a = subparsers.add_parser("analyze", help="score timestamp,value CSV files offline")
    a.add_argument("paths", nargs="+", metavar="PATH", help="CSV file or folder (searched recursively)")
    _detector_args(a)
    a.add_argument("--out-dir", required=True, type=Path)
    a.add_argument("--batch", type=int, default=64, help="rows per streaming batch (default 64)")
    a.set_defaults(func=cmd_analyze)

    e = subparsers.add_parser("evaluate", help="NAB scores of the detector (or of written scores)")
    e.add_argument("data_dir", type=Path, metavar="DATA_DIR")
    e.add_argument("windows", type=Path, metavar="WINDOWS.json")
    e.add_argument("--results-dir", type=Path, help="read anomaly_score from files written by analyze")
    e.add_argument("--files-glob", default="*", help="only files whose relative path matches")
    e.add_argument("--only", default="", help="comma-separated categories (first path part)")
    e.add_argument("--profiles", type=Path, help="NAB profiles.json (default: the three NAB profiles)")
    _detector_args(e)
    e.set_defaults(func=cmd_evaluate)


def _detector_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--detector", default="ensemble", help="ensemble (default) or one detector name")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a DetectorSettings field (repeatable)")


def _settings(args):
    from .analytics.chain import DetectorSettings

    pairs = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--set needs KEY=VALUE, got {item!r}")
        pairs[key.strip()] = value.strip()
    return DetectorSettings().with_overrides(pairs).only(args.detector)


def _csv_files(path: Path) -> list[tuple[Path, Path]]:
    """(file, path relative to what was given) for a file or every CSV below a folder."""
    if path.is_dir():
        return [(f, f.relative_to(path)) for f in sorted(path.rglob("*.csv")) if f.is_file()]
    return [(path, Path(path.name))]


def _read(path: Path) -> tuple[list[str], np.ndarray, np.ndarray]:
    from .nab import to_epoch

    with open(path, newline="") as f:
        rows = [r for r in csv.reader(f)][1:]
    rows = [r for r in rows if r]
    stamps = [r[0] for r in rows]
    val = np.array([float(r[1]) if r[1].strip() else math.nan for r in rows], dtype=np.float64)
    return stamps, to_epoch(stamps), val


def stream_scores(settings, ts: np.ndarray, val: np.ndarray, batch: int = 64) -> np.ndarray:
    """Scores of one series fed to a fresh Detector ``batch`` rows at a time."""
    from .analytics.chain import Detector

    det = Detector(settings, capacity=1)
    out = np.empty(ts.shape[0])
    chan = np.zeros(ts.shape[0], dtype=np.int64)
    step = max(1, batch)
    for i in range(0, ts.shape[0], step):
        out[i : i + step], _ = det.process(chan[i : i + step], ts[i : i + step], val[i : i + step])
    return out


def cmd_analyze(args) -> int:
    try:
        settings = _settings(args)
    except ValueError as exc:
        print(f"edge-gateway analyze: {exc}", file=sys.stderr)
        return 2
    jobs = []
    for p in args.paths:
        path = Path(p)
        if not path.exists():
            print(f"edge-gateway analyze: no such file or folder: {p}", file=sys.stderr)
            return 2
        jobs.extend(_csv_files(path))
    for src, rel in jobs:
        try:
            stamps, ts, val = _read(src)
        except OSError as exc:
            print(f"edge-gateway analyze: cannot read {src}: {exc.strerror or exc}", file=sys.stderr)
            return 1
        except (ValueError, IndexError) as exc:
            print(f"edge-gateway analyze: {src}: not a timestamp,value CSV ({exc})", file=sys.stderr)
            return 1
        score = stream_scores(settings, ts, np.where(np.isinf(val), math.nan, val), args.batch)
        dst = args.out_dir / rel
        try:
            dst.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            print(f"edge-gateway analyze: cannot create folder {exc.filename or dst.parent}: "
                  f"{exc.strerror or exc}", file=sys.stderr)
            return 1
        try:
            with open(dst, "w", newline="") as f:
                w = csv.writer(f)
                w.writerow(["timestamp", "value", "anomaly_score"])
                for s, v, a in zip(stamps, val, score):
                    w.writerow([s, repr(float(v)), repr(float(a))])
        except OSError as exc:
            print(f"edge-gateway analyze: cannot write {exc.filename or dst}: {exc.strerror or exc}",
                  file=sys.stderr)
            return 1
    print(f"analyzed {len(jobs)} file(s) into {args.out_dir}")
    return 0


def corpus_scores(settings, data_dir: Path, keys: list[str]) -> dict[str, np.ndarray]:
    """Run the detector over every file at once, one channel per file."""
    from .analytics.chain import Detector
    from .nab import read_series

    series = [read_series(data_dir / k) for k in keys]
    if not series:
        return {}
    chan = np.concatenate([np.full(ts.shape[0], c, dtype=np.int64) for c, (ts, _) in enumerate(series)])
    ts = np.concatenate([s[0] for s in series])
    val = np.concatenate([s[1] for s in series])
    score, _ = Detector(settings, capacity=len(keys)).process(chan, ts, val)
    out, start = {}, 0
    for k, (t, _) in zip(keys, series):
        out[k] = score[start : start + t.shape[0]]
        start += t.shape[0]
    return out


def _load_json(load, path: Path | None, what: str):
    """``load(path)``, with any failure as a ValueError that names the file."""
    try:
        return load(path)
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror or exc}") from None
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"{path}: not {what} ({type(exc).__name__}: {exc})") from None


def cmd_evaluate(args) -> int:
    from . import nab

    try:
        settings = _settings(args)
        windows = _load_json(nab.load_windows, args.windows,
                             'a NAB windows file ({"dir/file.csv": [["start", "end"], ...], ...})')
        profiles = _load_json(nab.load_profiles, args.profiles, "a NAB profiles file")
    except ValueError as exc:
        print(f"edge-gateway evaluate: {exc}", file=sys.stderr)
        return 2
    only = {c for c in args.only.split(",") if c}
    keys = [k for k in sorted(windows)
            if (not only or k.split("/")[0] in only) and fnmatch.fnmatch(k, args.files_glob)
            and (args.data_dir / k).exists()]
    if not keys:
        print("edge-gateway evaluate: no labelled files selected", file=sys.stderr)
        return 2
    if args.results_dir:
        scores = {}
        for k in keys:
            src = args.results_dir / k
            try:
                with open(src, newline="") as f:
                    scores[k] = np.array([float(r["anomaly_score"]) for r in csv.DictReader(f)])
            except OSError as exc:
                print(f"edge-gateway evaluate: cannot read {src}: {exc.strerror or exc} "
                      "(write it with `edge-gateway analyze`)", file=sys.stderr)
                return 2
            except (KeyError, ValueError, TypeError) as exc:
                print(f"edge-gateway evaluate: {src}: not a results file of `edge-gateway analyze` "
                      f"(no usable anomaly_score column: {exc})", file=sys.stderr)
                return 2
    else:
        scores = corpus_scores(settings, args.data_dir, keys)
    labels = {k: nab.label_rows(nab.read_series(args.data_dir / k)[0], windows[k]) for k in keys}
    for k in keys:
        if scores[k].shape[0] != labels[k].window.shape[0]:
            print(f"edge-gateway evaluate: {args.results_dir / k}: {scores[k].shape[0]} scores for "
                  f"{labels[k].window.shape[0]} rows of {args.data_dir / k}", file=sys.stderr)
            return 2
    result = nab.score_corpus(scores, labels, profiles)
    print(f"{len(keys)} files, {sum(l.n_windows for l in labels.values())} windows")
    for name, r in result.items():
        print(f"{name:20s} {r['score']:7.2f}  (threshold {r['threshold']:.6g}, raw {r['raw']:.3f})")
    return 0
