"""Offline subcommands: ``analyze`` CSV series and ``evaluate`` against NAB labels.

``analyze`` replays each file through a fresh :class:`~.analytics.chain.Detector`
in small batches, exactly as the daemon would see it live (no look-ahead, no
per-file ranges), so the scores written are the scores the gateway would have
produced. ``evaluate`` scores a labelled corpus with :mod:`.nab`. Both read their
data files with :func:`.nab.read_table`, and neither writes or scores anything
until every input has been read: a bad file is one line naming it and its row.
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
    a.add_argument("--out-dir", required=True, type=Path, metavar="DIR",
                   help="folder for the results: one CSV (timestamp,value,anomaly_score) per input, named as "
                        "the input (below a folder PATH: at its path inside it)")
    a.add_argument("--batch", type=int, default=64, help="rows per streaming batch (default 64)")
    a.set_defaults(func=cmd_analyze)

    e = subparsers.add_parser("evaluate", help="NAB scores of the detector (or of written scores)")
    e.add_argument("data_dir", type=Path, metavar="DATA_DIR",
                   help="folder of the labelled CSV files (NAB's data/): the windows file names them relative to it")
    e.add_argument("windows", type=Path, metavar="WINDOWS.json",
                   help='anomaly windows per file, as NAB\'s labels/combined_windows.json: '
                        '{"dir/file.csv": [["start", "end"], ...], ...}')
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


# settings that only open and close events: they never change anomaly_score
_EVENT_ONLY_PREFIXES = ("event_", "guard_")


def _settings(args, prog: str):
    """The settings of ``--detector``/``--set``; warns on stderr about a key that cannot change the score."""
    from .analytics.chain import DetectorSettings

    pairs = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--set needs KEY=VALUE, got {item!r}")
        pairs[key.strip()] = value.strip()
    settings = DetectorSettings().with_overrides(pairs).only(args.detector)
    if "weights" in pairs and args.detector != "ensemble":
        raise ValueError(f"--set weights cannot be combined with --detector {args.detector}, which sets "
                         "the weights itself (use --detector ensemble)")
    for key in pairs:
        why = _why_scoreless(settings, key)
        if why:
            print(f"edge-gateway {prog}: warning: --set {key} has no effect on anomaly_score ({why})",
                  file=sys.stderr)
    return settings


def _detector_of(key: str) -> str | None:
    """The detector a setting belongs to, by its prefix (``flat_eps`` -> flatline), if exactly one."""
    from .analytics.chain import DETECTOR_NAMES

    prefix = key.split("_", 1)[0]
    owners = [d for d in DETECTOR_NAMES if d.startswith(prefix)]
    return owners[0] if "_" in key and len(owners) == 1 else None


def _why_scoreless(settings, key: str) -> str | None:
    """Why ``--set key=...`` cannot change the anomaly score under ``settings``' weights (None: it can)."""
    from .analytics.chain import _RENAMED, DETECTOR_NAMES

    key = _RENAMED.get(key, key)
    if key.startswith(_EVENT_ONLY_PREFIXES):
        return "it only opens and closes events"
    owner = _detector_of(key)
    if owner is not None and settings.weights[DETECTOR_NAMES.index(owner)] == 0.0:
        return f"the {owner} detector has weight 0"
    return None


def _csv_files(path: Path, skip: Path | None = None) -> list[tuple[Path, Path]]:
    """(file, path relative to what was given) for a file or every CSV below a folder.

    ``skip`` (a resolved folder strictly inside ``path``, such as the out-dir) is not searched.
    """
    if not path.is_dir():
        return [(path, Path(path.name))]
    if skip is not None and (skip == path.resolve() or not skip.is_relative_to(path.resolve())):
        skip = None
    return [(f, f.relative_to(path)) for f in sorted(path.rglob("*.csv"))
            if f.is_file() and not (skip is not None and f.parent.resolve().is_relative_to(skip))]


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


def _jobs(paths: list[str], out_dir: Path) -> list[tuple[Path, Path]]:
    """(source, destination) of every input.

    ValueError if a PATH is missing, two inputs would be written to one file, or a result over an input.
    """
    skip = out_dir.resolve()
    by_dst: dict[Path, tuple[Path, Path]] = {}
    for p in paths:
        path = Path(p)
        if not path.exists():
            raise ValueError(f"no such file or folder: {p}")
        for src, rel in _csv_files(path, skip):
            dst = out_dir / rel
            prev = by_dst.setdefault(dst.resolve(), (src, dst))
            if prev[0] != src and prev[0].resolve() != src.resolve():
                raise ValueError(f"{prev[0]} and {src} would both be written to {dst} "
                                 "(analyze them in separate runs, with separate --out-dir)")
    sources = {src.resolve() for src, _ in by_dst.values()}
    for key, (src, dst) in by_dst.items():
        if key in sources:
            raise ValueError(f"{dst} is an input: its results would overwrite it (choose another --out-dir)")
    return list(by_dst.values())


def cmd_analyze(args) -> int:
    from . import nab

    try:
        settings = _settings(args, "analyze")
        jobs = _jobs(args.paths, args.out_dir)
    except ValueError as exc:
        print(f"edge-gateway analyze: {exc}", file=sys.stderr)
        return 2
    inputs, bad = [], 0
    for src, dst in jobs:  # every input is read before anything is written
        try:
            inputs.append((dst, *nab.read_table(src)))
        except nab.SeriesError as exc:
            print(f"edge-gateway analyze: {exc}", file=sys.stderr)
            bad += 1
    if bad:
        print(f"edge-gateway analyze: {bad} of {len(jobs)} file(s) not readable; nothing written",
              file=sys.stderr)
        return 1
    for dst, stamps, ts, val in inputs:
        score = stream_scores(settings, ts, np.where(np.isinf(val), math.nan, val), args.batch)
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


def corpus_scores(settings, data_dir: Path, keys: list[str],
                  series: dict[str, tuple[np.ndarray, np.ndarray]] | None = None) -> dict[str, np.ndarray]:
    """Run the detector over every file at once, one channel per file (``series``: as already read)."""
    from .analytics.chain import Detector
    from .nab import read_series

    read = [series[k] if series is not None else read_series(data_dir / k) for k in keys]
    if not read:
        return {}
    chan = np.concatenate([np.full(ts.shape[0], c, dtype=np.int64) for c, (ts, _) in enumerate(read)])
    ts = np.concatenate([s[0] for s in read])
    val = np.concatenate([s[1] for s in read])
    score, _ = Detector(settings, capacity=len(keys)).process(chan, ts, val)
    out, start = {}, 0
    for k, (t, _) in zip(keys, read):
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
        settings = _settings(args, "evaluate")
        windows = _load_json(nab.load_windows, args.windows,
                             'a NAB windows file ({"dir/file.csv": [["start", "end"], ...], ...})')
        profiles = _load_json(nab.load_profiles, args.profiles, "a NAB profiles file")
    except ValueError as exc:
        print(f"edge-gateway evaluate: {exc}", file=sys.stderr)
        return 2
    only = {c for c in args.only.split(",") if c}
    keys = [k for k in sorted(windows)
            if (not only or k.split("/")[0] in only) and fnmatch.fnmatch(k, args.files_glob)]
    missing = [k for k in keys if not (args.data_dir / k).exists()]
    if missing:
        names = ", ".join(str(args.data_dir / k) for k in missing[:5])
        names += f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        if not only and args.files_glob == "*":
            print(f"edge-gateway evaluate: labelled file(s) missing from {args.data_dir}: {names} "
                  "(to score part of the corpus, select it with --only or --files-glob)", file=sys.stderr)
            return 2
        print(f"edge-gateway evaluate: warning: skipping labelled file(s) missing from {args.data_dir}: "
              f"{names}", file=sys.stderr)
        keys = [k for k in keys if k not in set(missing)]
    if not keys:
        print("edge-gateway evaluate: no labelled files selected", file=sys.stderr)
        return 2
    try:  # every data file is read (once) before anything is scored
        series = {k: nab.read_series(args.data_dir / k) for k in keys}
    except nab.SeriesError as exc:
        print(f"edge-gateway evaluate: {exc}", file=sys.stderr)
        return 1
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
        scores = corpus_scores(settings, args.data_dir, keys, series)
    labels = {k: nab.label_rows(series[k][0], windows[k]) for k in keys}
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
