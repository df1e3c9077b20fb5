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


ANALYZE_DESCRIPTION = (
    "Score timestamp,value CSV files offline with the gateway's detectors, fed row by row as the daemon "
    "would see them live. Writes one CSV (timestamp,value,anomaly_score) per input below --out-dir and "
    "prints one line per input: its rows, how many the detectors spent learning (their warm-up: nothing "
    "is scored before it ends), the highest score and the timestamp of its row, and how many rows are at "
    "or above the event threshold (event_threshold, the score at which the gateway opens an event). "
    "A file shorter than the warm-up is warned about on stderr. "
    "The detector settings are the tuned defaults, or with --config FILE the gateway config's detector "
    "section (its threshold and params) and, with --sensor ID[/CHANNEL], that sensor's and channel's "
    "detector.sensors entries on top, exactly as the live gateway builds a channel's detector; --set "
    "overrides a setting on top of either, and --detector scores with one detector alone. "
    "Timestamps are YYYY-MM-DD hh:mm:ss or epoch seconds: a file in epoch milliseconds is refused. "
    "Exit statuses: 0 done; 1 an input is not readable or its content is refused (nothing written), or a result "
    "cannot be written; "
    "2 bad usage (a missing PATH, a folder without CSV files, a bad --set). A bad --config or --sensor is "
    "bad usage too."
)

EVALUATE_DESCRIPTION = (
    "Score the detector on a labelled corpus (the Numenta Anomaly Benchmark's data/ and "
    "labels/combined_windows.json) by NAB's method, or score the anomaly_score columns written by "
    "analyze (--results-dir). Prints the files and windows scored, then one line per profile: the "
    "normalised score (100 perfect, 0 as if nothing were detected), the threshold and raw. The threshold "
    "is the one that gives the profile its best corpus total, chosen per profile as NAB does: it is not "
    "the gateway's event threshold (event_threshold). raw is that best total before normalising: the "
    "sum over windows and detections of the profile's weights (tp for the earliest detection in a window, "
    "scaled by how early; -fn for a missed window; -fp, scaled, for a detection outside the windows); "
    "score = 100 * (raw - null) / (perfect - null), null being every window missed and perfect every "
    "window found at once. "
    "A window that holds no row of its file, or only rows of the probationary period (the first 15% of "
    "the rows, at most 750, which NAB does not score), is not scored, with a warning naming it: no detector "
    "could find it, so counted as a miss it would only lower every score alike. A window that ends before "
    "it starts is refused. "
    "Exit statuses: 0 done; 1 a data file is not readable or its content is refused (nothing scored); "
    "2 bad usage (missing or unreadable labels, profiles or results files, no file selected)."
)


def add_to(subparsers) -> None:
    a = subparsers.add_parser("analyze", help="score timestamp,value CSV files offline",
                              description=ANALYZE_DESCRIPTION)
    a.add_argument("paths", nargs="+", metavar="PATH", help="CSV file or folder (searched recursively)")
    _detector_args(a)
    a.add_argument("--out-dir", required=True, type=Path, metavar="DIR",
                   help="folder for the results: one CSV (timestamp,value,anomaly_score) per input, named as "
                        "the input (below a folder PATH: at its path inside it)")
    a.add_argument("--batch", type=int, default=64, help="rows per streaming batch (default 64)")
    a.set_defaults(func=cmd_analyze)

    e = subparsers.add_parser("evaluate", help="NAB scores of the detector (or of written scores)",
                              description=EVALUATE_DESCRIPTION)
    e.add_argument("data_dir", type=Path, metavar="DATA_DIR",
                   help="folder of the labelled CSV files (NAB's data/): the windows file names them relative to it")
    e.add_argument("windows", type=Path, metavar="WINDOWS.json",
                   help='anomaly windows per file, as NAB\'s labels/combined_windows.json: '
                        '{"dir/file.csv": [["start", "end"], ...], ...}')
    e.add_argument("--results-dir", type=Path,
                   help="read anomaly_score from files written by analyze: at CATEGORY/FILE.csv (analyze the "
                        "corpus root), or at FILE.csv when the selected files are of one category "
                        "(analyze that category's folder)")
    e.add_argument("--files-glob", default="*", help="only files whose relative path matches")
    e.add_argument("--only", default="", help="comma-separated categories (first path part)")
    e.add_argument("--profiles", type=Path, help="NAB profiles.json (default: the three NAB profiles)")
    _detector_args(e)
    e.set_defaults(func=cmd_evaluate)


def _detector_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, metavar="FILE",
                   help="take the detector settings from this gateway config's detector section (threshold, "
                        "params and, with --sensor, its sensors entries), as the live gateway builds them; "
                        "without it, the tuned defaults")
    p.add_argument("--sensor", metavar="ID[/CHANNEL]",
                   help="with --config: score with the settings of this sensor (and channel): the detector "
                        "section's, then its detector.sensors entries for ID and for ID/CHANNEL on top")
    p.add_argument("--detector", default="ensemble",
                   help="ensemble (default) or one detector name: that detector alone (weight 1, the rest 0)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a DetectorSettings field (repeatable), on top of --config; lists as a,b,c")


def _settings(args, prog: str):
    """The settings of ``--detector``/``--set``; warns on stderr about a key that cannot change the score."""
    from .analytics.settings import DetectorSettings, why_no_effect

    pairs = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--set needs KEY=VALUE, got {item!r}")
        pairs[key.strip()] = value.strip()
    if args.config is None and args.sensor:
        raise ValueError("--sensor needs --config FILE (the gateway config whose detector settings it selects)")
    base, params = (DetectorSettings(), []) if args.config is None else _config_settings(args.config, args.sensor)
    settings = base.with_overrides(pairs).only(args.detector)
    if "weights" in pairs and args.detector != "ensemble":
        raise ValueError(f"--set weights cannot be combined with --detector {args.detector}, which sets "
                         "the weights itself (use --detector ensemble)")
    for key in pairs:
        why = why_no_effect(settings, key)
        if why:
            print(f"edge-gateway {prog}: warning: --set {key} has no effect on anomaly_score ({why})",
                  file=sys.stderr)
    # the config's own settings as `config validate` judges them (live: a guard's settings open events), but
    # against the settings scored here
    scoreless = [(key, why) for key, name in params if (why := why_no_effect(settings, name, live=True))]
    if scoreless:
        from .config_keys import where_written

        for where, (key, why) in zip(where_written(str(args.config), [k for k, _ in scoreless]), scoreless):
            print(f"edge-gateway {prog}: {where}: {key}: warning: has no effect on anomaly_score ({why})",
                  file=sys.stderr)
    return settings


def _config_settings(path: Path, sensor: str | None):
    """The detector settings a channel gets in the live gateway under config ``path`` (the section's, or
    sensor ``ID[/CHANNEL]``'s), and (key path, setting name) of the config's params they take; ValueError
    with a one-line reason (or the config's located errors)."""
    from . import config
    from .config_keys import key_part

    try:
        cfg = config.load(path)
    except config.ConfigError as exc:
        raise ValueError(str(exc)) from None
    sid, slash, channel = (sensor or "").partition("/")
    if sensor:
        ids = [s.id for s in cfg.sensors]
        if sid not in ids:
            raise ValueError(f"{path}: no sensor {sid!r}; sensors: {', '.join(ids) or 'none'}")
        if slash and not channel:
            raise ValueError(f"--sensor {sensor!r}: the channel after '/' is empty (give ID or ID/CHANNEL)")
    settings = cfg.detector.settings_for(sid, channel)
    # which entries the scores come from: a channel without an entry of its own silently takes its sensor's,
    # or the section's
    entries = [key for key in (sid, f"{sid}/{channel}") if sensor and key in cfg.detector.sensors]
    used = ["the detector section"] + [f"detector.sensors{key_part(key)}" for key in entries]
    print(f"settings: {path}: {', then '.join(used)} (event threshold {settings.event_threshold:g})",
          file=sys.stderr)
    layers = [("detector.params", cfg.detector)] + [(f"detector.sensors{key_part(key)}.params",
                                                     cfg.detector.sensors[key]) for key in entries]
    return settings, [(f"{prefix}.{name}", name) for prefix, layer in layers for name in layer.params]


# the warm-up setting of each detector that has one (readings it learns from before it scores)
_WARMUP_OF = {"ewma": "ewma_warmup", "robust": "robust_warmup", "rate": "rate_warmup",
              "cusum": "cusum_warmup", "novelty": "nov_warmup"}


def warmup(settings) -> int:
    """Readings the configured chain learns from before it can score: the longest warm-up of a weighted detector."""
    from .analytics.chain import DETECTOR_NAMES

    return int(max((math.ceil(getattr(settings, _WARMUP_OF[name]))
                    for name, w in zip(DETECTOR_NAMES, settings.weights) if w > 0.0 and name in _WARMUP_OF),
                   default=0))


def _is_capture(path: Path) -> bool:
    """Whether ``path`` starts with the header line of an ``edge-gateway record`` capture."""
    import json

    from .cmd_record import FORMAT

    try:
        with open(path, "rb") as f:
            header = json.loads(f.readline(4096))
    except (OSError, ValueError):
        return False
    return isinstance(header, dict) and header.get("format") == FORMAT


def _refuse_capture(path: Path) -> None:
    """A raw capture given where a timestamp,value CSV belongs: :class:`.nab.SeriesError` saying what to do."""
    from . import nab

    if _is_capture(path):
        raise nab.SeriesError(f"{path}: this is a raw capture from `edge-gateway record`, not a timestamp,value "
                              f"CSV; decode it first: `edge-gateway replay {path} --csv OUT_DIR --config CONFIG "
                              "--sensor ID` writes one CSV per channel, which analyze reads")


def read_table(path: Path):
    """:func:`.nab.read_table`, refusing a raw capture with what to do instead."""
    from . import nab

    _refuse_capture(path)
    return nab.read_table(path)


def read_series(path: Path):
    """:func:`.nab.read_series`, refusing a raw capture with what to do instead."""
    from . import nab

    _refuse_capture(path)
    return nab.read_series(path)


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
        found = _csv_files(path, skip)
        if not found:
            raise ValueError(f"no CSV files in folder {p}: analyze reads timestamp,value files named *.csv "
                             "(searched for in it and every folder below it)")
        for src, rel in found:
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
        for line in str(exc).splitlines():  # (a config's errors: one a line)
            print(f"edge-gateway analyze: {line}", file=sys.stderr)
        return 2
    inputs, failed = [], []
    for src, dst in jobs:  # every input is read before anything is written
        try:
            inputs.append((src, dst, *read_table(src)))
        except nab.SeriesError as exc:
            print(f"edge-gateway analyze: {exc}", file=sys.stderr)
            failed.append(exc)
    if failed:
        print(f"edge-gateway analyze: {_failed_files(failed, len(jobs))}; nothing written", file=sys.stderr)
        return 1
    learn = warmup(settings)
    summary = []
    for src, dst, stamps, ts, val in inputs:
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
        summary.append(_summary(src, stamps, val, score, learn, settings.event_threshold)
                       + (_backwards(src, stamps, ts),))
    for line, *warnings in summary:
        print(line)
        for warning in filter(None, warnings):
            print(f"edge-gateway analyze: warning: {warning}", file=sys.stderr)
    print(f"analyzed {len(jobs)} file(s) into {args.out_dir}")
    return 0


def _failed_files(failed: list[Exception], n: int) -> str:
    """``2 of 4 file(s) refused`` / ``not readable``: a file that could not be opened or read apart from one
    read whose content (a row, the encoding, a raw capture) was refused: the one needs permissions or a path,
    the other an edit of the file."""
    unreadable = sum(isinstance(exc.__context__, OSError) for exc in failed)  # nab raises it ``from None``
    refused = len(failed) - unreadable
    if not unreadable:
        return f"{refused} of {n} file(s) refused"
    if not refused:
        return f"{unreadable} of {n} file(s) not readable"
    return f"{refused} of {n} file(s) refused and {unreadable} not readable"


def _summary(src: Path, stamps: list[str], val: np.ndarray, score: np.ndarray, learn: int,
             threshold: float) -> tuple[str, str | None]:
    """The line ``analyze`` prints for one input, and the warning for a file shorter than the warm-up."""
    n = len(stamps)
    finite = np.flatnonzero(np.isfinite(val))  # a missing reading teaches the detectors nothing
    learning = int(finite[learn]) if learn < finite.shape[0] else n
    top = int(np.argmax(score)) if n else 0
    best = f"max score {score[top]:.3f} at {stamps[top]}" if n and score[top] > 0 else "max score 0"
    above = int(np.count_nonzero(score >= threshold))
    line = (f"{src}: {n} rows, {learning} spent learning, {best}, "
            f"{above} at or above the event threshold {threshold:g}")
    warning = None
    if n < learn:
        warning = (f"{src}: only {n} rows: the detectors learn for {learn} before they score; record longer")
    return line, warning


def _backwards(src: Path, stamps: list[str], ts: np.ndarray) -> str | None:
    """A warning for rows stamped before the row above: scored here in file order, but the live gateway
    would count a reading older than a window it already sent as late and leave it out of the aggregates."""
    back = np.flatnonzero(np.diff(ts) < 0.0) + 1
    if not back.size:
        return None
    first = int(back[0])
    return (f"{src}: {back.size} row(s) stamped before the row above them, the first at line {first + 2} "
            f"({stamps[first]} after {stamps[first - 1]}): scored in file order; the live gateway leaves such a "
            "reading out of its aggregates when its window was already sent (sort the file by time?)")


def corpus_scores(settings, data_dir: Path, keys: list[str],
                  series: dict[str, tuple[np.ndarray, np.ndarray]] | None = None) -> dict[str, np.ndarray]:
    """Run the detector over every file at once, one channel per file (``series``: as already read)."""
    from .analytics.chain import Detector

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
    from . import nab

    try:
        return load(path)
    except nab.LabelError as exc:  # one mistake a line, each naming the file
        raise ValueError("\n".join(f"{path}: {line}" for line in str(exc).splitlines())) from None
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror or exc}") from None
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"{path}: not {what} ({type(exc).__name__}: {exc})") from None


def _results_files(results_dir: Path, keys: list[str]) -> dict[str, Path]:
    """The results file of every labelled file ``keys[i]`` (``category/file.csv``) below ``results_dir``.

    NAB's layout, ``results_dir/category/file.csv`` (what ``analyze`` writes for the corpus root), is
    read first. Otherwise, when every selected file is of one category, ``results_dir/file.csv`` (what
    ``analyze`` writes for that category's folder); with several categories a flat name could be any of
    them, so it is not guessed. ValueError naming the first file found neither way.
    """
    categories = {k.split("/")[0] for k in keys}
    out = {}
    for k in keys:
        nested, flat = results_dir / k, results_dir / Path(k).name
        if nested.is_file() or (nested.exists() and not flat.is_file()):
            out[k] = nested  # (a folder there is reported when it is read)
        elif flat.is_file() and len(categories) == 1 and "/" in k:
            out[k] = flat
        else:
            category = k.split("/")[0] if "/" in k else None
            why = (f"; {flat} exists, but flat results are read only when the selected files are of one "
                   f"category (select it with --only), as {len(categories)} categories are selected"
                   if flat.is_file() and len(categories) > 1 else "")
            one = (f", or {flat} when {results_dir} holds the results of one category flat "
                   f"(`edge-gateway analyze DATA_DIR/{category} --out-dir {results_dir}`, evaluated with "
                   f"--only {category})" if category else "")
            raise ValueError(f"no results for {k} in {results_dir}: expected {nested}, NAB's layout "
                             f"(write it with `edge-gateway analyze DATA_DIR --out-dir {results_dir}` on the "
                             f"corpus root){one}{why}")
    return out


def _stamp(t: float) -> str:
    """Epoch seconds as NAB writes a time (``2014-04-01 00:00:00``, with fractions when it has any)."""
    import datetime as dt

    d = dt.datetime(1970, 1, 1) + dt.timedelta(seconds=t)
    return d.isoformat(" ", "microseconds" if d.microsecond else "seconds")


def cmd_evaluate(args) -> int:
    from . import nab

    try:
        settings = _settings(args, "evaluate")
        windows = _load_json(nab.load_windows, args.windows,
                             'a NAB windows file ({"dir/file.csv": [["start", "end"], ...], ...})')
        profiles = _load_json(nab.load_profiles, args.profiles, "a NAB profiles file")
    except ValueError as exc:
        for line in str(exc).splitlines():  # (a config's errors: one a line)
            print(f"edge-gateway evaluate: {line}", file=sys.stderr)
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
    series, failed = {}, []
    for k in keys:  # every data file is read (once) before anything is scored
        try:
            series[k] = read_series(args.data_dir / k)
        except nab.SeriesError as exc:
            print(f"edge-gateway evaluate: {exc}", file=sys.stderr)
            failed.append(exc)
    if failed:
        print(f"edge-gateway evaluate: {_failed_files(failed, len(keys))}; nothing scored", file=sys.stderr)
        return 1
    if args.results_dir:
        scores = {}
        try:
            sources = _results_files(args.results_dir, keys)
        except ValueError as exc:
            print(f"edge-gateway evaluate: {exc}", file=sys.stderr)
            return 2
        for k in keys:
            src = sources[k]
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
            print(f"edge-gateway evaluate: {sources[k]}: {scores[k].shape[0]} scores for "
                  f"{labels[k].window.shape[0]} rows of {args.data_dir / k}", file=sys.stderr)
            return 2
    unscored = 0
    for k in keys:
        for j, why in labels[k].unscored:
            a, b = windows[k][j]
            print(f"edge-gateway evaluate: warning: {args.windows}: window {j + 1} of {k} "
                  f"[{_stamp(a)}, {_stamp(b)}] is not scored: {why}", file=sys.stderr)
            unscored += 1
    result = nab.score_corpus(scores, labels, profiles)
    print(f"{len(keys)} files, {sum(l.n_windows for l in labels.values())} windows"
          + (f" ({unscored} more not scored: see the warnings)" if unscored else ""))
    for name, r in result.items():
        print(f"{name:20s} {r['score']:7.2f}  (threshold {r['threshold']:.6g}, raw {r['raw']:.3f})")
    return 0
