"""What ``analyze`` and ``evaluate`` accept as input, and how they refuse the rest.

Review 15 (analytics) #5-#9 and #11.

Everything runs in-process through :func:`edge_gateway.cli.main` on small files: a traceback would
fail the test by itself, and ``capsys`` holds the exact messages.
"""

from __future__ import annotations

import csv
import datetime as dt
from pathlib import Path

import numpy as np
import pytest

from edge_gateway import nab
from edge_gateway.cli import main

T0 = dt.datetime(2014, 4, 1, tzinfo=dt.timezone.utc)


def iso(k: int) -> str:
    return (T0 + dt.timedelta(minutes=5 * k)).strftime("%Y-%m-%d %H:%M:%S")


def epoch(k: int) -> str:
    return str(int((T0 + dt.timedelta(minutes=5 * k)).timestamp()))


def write(path: Path, rows, header: bool = True) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = (["timestamp,value"] if header else []) + [f"{t},{v}" for t, v in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def series(n: int = 60, stamp=iso, base: float = 20.0, spike: int | None = None):
    return [(stamp(k), 100.0 if k == spike else base + k % 5) for k in range(n)]


def run(capsys, *argv) -> tuple[int, str, str]:
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def no_short(err: str) -> str:
    """``err`` without analyze's warnings about a file shorter than the detectors' warm-up."""
    return "".join(line for line in err.splitlines(keepends=True) if not line.endswith("; record longer\n"))


def scores(path: Path) -> list[str]:
    with open(path, newline="") as f:
        return [r["anomaly_score"] for r in csv.DictReader(f)]


# --- #5: two inputs mapping to one output -------------------------------------------------------------


def test_analyze_refuses_two_inputs_with_one_destination(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write(Path("site1/temp.csv"), series(base=20.0))
    write(Path("site2/temp.csv"), series(base=1000.0))
    for paths in (["site1/temp.csv", "site2/temp.csv"], ["site1", "site2"]):
        rc, out, err = run(capsys, "analyze", *paths, "--out-dir", "out")
        assert (rc, out) == (2, "")
        assert err == ("edge-gateway analyze: site1/temp.csv and site2/temp.csv would both be written to "
                       "out/temp.csv (analyze them in separate runs, with separate --out-dir)\n")
        assert not Path("out").exists()
    # the same file named twice is one input, not a collision
    rc, out, err = run(capsys, "analyze", "site1", "site1/temp.csv", "--out-dir", "out")
    assert (rc, out) == (0, "site1/temp.csv: 60 rows, 60 spent learning, max score 0, "
                            "0 at or above the event threshold 0.25\nanalyzed 1 file(s) into out\n")
    assert err == ("edge-gateway analyze: warning: site1/temp.csv: only 60 rows: the detectors learn for 500 "
                   "before they score; record longer\n")
    # results written over their own input
    rc, out, err = run(capsys, "analyze", "site1", "--out-dir", "site1")
    assert rc == 2 and err == ("edge-gateway analyze: site1/temp.csv is an input: its results would overwrite "
                               "it (choose another --out-dir)\n")
    assert Path("site1/temp.csv").read_text().startswith("timestamp,value\n2014-04-01 00:00:00,20.0\n")


# --- #6: timestamps ----------------------------------------------------------------------------------


def test_epoch_seconds_read_like_iso_and_score_the_same(tmp_path, capsys):
    a = write(tmp_path / "in" / "iso.csv", series(600, iso, spike=550))
    b = write(tmp_path / "in" / "epoch.csv", series(600, epoch, spike=550))
    c = write(tmp_path / "in" / "float.csv", [(f"{float(t)}", v) for t, v in series(600, epoch, spike=550)])
    rc, _, err = run(capsys, "analyze", tmp_path / "in", "--out-dir", tmp_path / "out")
    assert (rc, err) == (0, "")
    s = {n: scores(tmp_path / "out" / f"{n}.csv") for n in ("iso", "epoch", "float")}
    assert s["iso"] == s["epoch"] == s["float"] and float(s["iso"][550]) > 0.5
    with open(tmp_path / "out" / "epoch.csv") as f:
        assert f.readlines()[1] == "1396310400,20.0,0.0\n"  # stamps written back as given
    ta, tb, tc = (nab.read_table(p)[1] for p in (a, b, c))
    assert ta[0] == 1396310400.0 and ta[1] == 1396310700.0
    np.testing.assert_array_equal(ta, tb)
    np.testing.assert_array_equal(ta, tc)


@pytest.mark.parametrize("stamp, message", [
    ("", "row 3: empty timestamp"),
    ("NaT", "row 3: timestamp 'NaT' is not a date-time (YYYY-MM-DD hh:mm:ss) or epoch seconds"),
    ("now", "row 3: timestamp 'now' is not a date-time (YYYY-MM-DD hh:mm:ss) or epoch seconds"),
    ("1396310700", "row 3: timestamp '1396310700' is not a date-time (YYYY-MM-DD hh:mm:ss) or epoch seconds"),
    ("2014-13-01 00:00:00",
     "row 3: timestamp '2014-13-01 00:00:00' is not a valid date-time (YYYY-MM-DD hh:mm:ss)"),
])
def test_bad_timestamps_are_refused_with_the_row(tmp_path, capsys, stamp, message):
    src = write(tmp_path / "bad.csv", [(iso(0), 1), (stamp, 2), (iso(2), 3)])
    rc, out, err = run(capsys, "analyze", src, "--out-dir", tmp_path / "out")
    assert (rc, out) == (1, "")
    assert err == (f"edge-gateway analyze: {src}, {message}\n"
                   "edge-gateway analyze: 1 of 1 file(s) refused; nothing written\n")


def test_epoch_file_must_stay_epoch(tmp_path, capsys):
    src = write(tmp_path / "mixed.csv", [(epoch(0), 1), (epoch(1), 2), (iso(2), 3)])
    rc, _, err = run(capsys, "analyze", src, "--out-dir", tmp_path / "out")
    assert rc == 1 and err.splitlines()[0] == (
        f"edge-gateway analyze: {src}, row 4: timestamp '2014-04-01 00:10:00' is not epoch seconds "
        "(the first row's timestamp is)")


@pytest.mark.skipif(not Path("/work/shared/nab").exists(), reason="NAB corpus not present")
def test_nab_file_reads_as_before():
    ts, val = nab.read_series("/work/shared/nab/data/realKnownCause/rogue_agent_key_hold.csv")
    assert ts.shape == (1882,) and ts[0] == 1404677400.0 and ts[-1] == 1406278500.0
    assert float(ts.sum()) == 2645161848000.0 and val[0] == 0.06453452400000001


# --- #7: header-less files -----------------------------------------------------------------------------


def test_a_file_without_header_keeps_its_first_row(tmp_path, capsys):
    rows = [(iso(0), 1), (iso(1), 2), (iso(2), 3)]
    write(tmp_path / "in" / "bare.csv", rows, header=False)
    write(tmp_path / "in" / "head.csv", rows)
    write(tmp_path / "in" / "bare_epoch.csv", [(epoch(k), v) for k, (_, v) in enumerate(rows)], header=False)
    rc, _, err = run(capsys, "analyze", tmp_path / "in", "--out-dir", tmp_path / "out")
    assert (rc, no_short(err)) == (0, "")
    for name in ("bare", "head"):
        assert (tmp_path / "out" / f"{name}.csv").read_text().splitlines() == [
            "timestamp,value,anomaly_score", "2014-04-01 00:00:00,1.0,0.0",
            "2014-04-01 00:05:00,2.0,0.0", "2014-04-01 00:10:00,3.0,0.0"]
    assert len(scores(tmp_path / "out" / "bare_epoch.csv")) == 3
    # a first row with a timestamp is data, whatever its value
    src = write(tmp_path / "bad" / "bare.csv", [(iso(0), "n/a"), (iso(1), 2)], header=False)
    rc, _, err = run(capsys, "analyze", src, "--out-dir", tmp_path / "out2")
    assert rc == 1 and err.splitlines()[0] == f"edge-gateway analyze: {src}, row 1: value 'n/a' is not a number"


# --- #8: evaluate reads like analyze -------------------------------------------------------------------


@pytest.fixture
def corpus(tmp_path):
    data = tmp_path / "data"
    for name in ("f1", "f2"):
        write(data / "cat" / f"{name}.csv", series(200, spike=150))
    windows = tmp_path / "windows.json"
    windows.write_text(f'{{"cat/f1.csv": [["{iso(140)}", "{iso(160)}"]], '
                       f'"cat/f2.csv": [["{iso(140)}", "{iso(160)}"]]}}')
    return data, windows


def test_evaluate_malformed_data_file_is_one_line(corpus, capsys):
    data, windows = corpus
    f1 = data / "cat" / "f1.csv"
    lines = f1.read_text().splitlines()
    lines[99] = "2014-04-01 08:10:00,n/a"
    f1.write_text("\n".join(lines) + "\n")
    rc, out, err = run(capsys, "evaluate", data, windows)
    assert (rc, out) == (1, "")
    assert err == (f"edge-gateway evaluate: {f1}, row 100: value 'n/a' is not a number\n"
                   "edge-gateway evaluate: 1 of 2 file(s) refused; nothing scored\n")
    # analyze reads the same file the same way
    rc, _, err = run(capsys, "analyze", f1, "--out-dir", data.parent / "out")
    assert rc == 1 and err.splitlines()[0] == f"edge-gateway analyze: {f1}, row 100: value 'n/a' is not a number"
    lines[99] = "2014-04-01 08:10:00, "  # blank: missing for both commands
    f1.write_text("\n".join(lines) + "\n")
    rc, out, err = run(capsys, "evaluate", data, windows)
    assert (rc, err) == (0, "") and out.splitlines()[0] == "2 files, 2 windows"


def test_evaluate_labelled_file_missing_from_data_dir(corpus, capsys):
    data, windows = corpus
    (data / "cat" / "f2.csv").unlink()
    rc, out, err = run(capsys, "evaluate", data, windows)
    assert (rc, out) == (2, "")
    assert err == (f"edge-gateway evaluate: labelled file(s) missing from {data}: {data / 'cat' / 'f2.csv'} "
                   "(to score part of the corpus, select it with --only or --files-glob)\n")
    rc, out, err = run(capsys, "evaluate", data, windows, "--only", "cat")
    assert rc == 0 and out.splitlines()[0] == "1 files, 1 windows"
    assert err == (f"edge-gateway evaluate: warning: skipping labelled file(s) missing from {data}: "
                   f"{data / 'cat' / 'f2.csv'}\n")
    rc, out, err = run(capsys, "evaluate", data, windows, "--files-glob", "*f1*")
    assert (rc, err) == (0, "") and out.splitlines()[0] == "1 files, 1 windows"


# --- #9: all inputs read before anything is written ---------------------------------------------------


def test_analyze_bad_file_writes_nothing(tmp_path, capsys):
    data = tmp_path / "data"
    write(data / "a.csv", series())
    write(data / "sub" / "c.csv", [(iso(0), 1), (iso(1), "n/a")])
    write(data / "z.csv", [(iso(0), 1), (iso(1), 2)])
    (data / "short.csv").write_text("timestamp,value\n2014-04-01 00:00:00\n")
    rc, out, err = run(capsys, "analyze", data, "--out-dir", tmp_path / "out")
    assert (rc, out) == (1, "")
    assert err == (f"edge-gateway analyze: {data / 'short.csv'}, row 2: "
                   "expected two fields (timestamp,value), got 1\n"
                   f"edge-gateway analyze: {data / 'sub' / 'c.csv'}, row 3: value 'n/a' is not a number\n"
                   "edge-gateway analyze: 2 of 4 file(s) refused; nothing written\n")
    assert not (tmp_path / "out").exists()


def test_analyze_skips_its_out_dir_inside_the_input(tmp_path, capsys):
    data = tmp_path / "data"
    write(data / "a.csv", series())
    write(data / "sub" / "b.csv", series())
    for _ in range(2):
        rc, out, err = run(capsys, "analyze", data, "--out-dir", data / "scored")
        assert (rc, out.splitlines()[-1]) == (0, f"analyzed 2 file(s) into {data / 'scored'}")
        assert len(out.splitlines()) == 3 and err.count("warning: ") == 2
    assert sorted(p.relative_to(data).as_posix() for p in data.rglob("*.csv")) == [
        "a.csv", "scored/a.csv", "scored/sub/b.csv", "sub/b.csv"]


# --- #11: --set that cannot change the score ---------------------------------------------------------


def test_set_without_effect_warns_and_weights_with_detector_is_refused(tmp_path, capsys, corpus):
    src = write(tmp_path / "x.csv", series(20))
    rc, _, err = run(capsys, "analyze", src, "--out-dir", tmp_path / "o", "--set", "flat_eps=1",
                     "--set", "event_threshold=0.5", "--set", "nov_hold=50", "--set", "ewma_alpha=0.5",
                     "--set", "range_hi=60", "--set", "suppress_n=3")
    assert rc == 0 and no_short(err) == (
        "edge-gateway analyze: warning: --set flat_eps has no effect on anomaly_score "
        "(the flatline detector has weight 0)\n"
        "edge-gateway analyze: warning: --set event_threshold has no effect on anomaly_score "
        "(it only opens and closes events)\n"
        "edge-gateway analyze: warning: --set ewma_alpha has no effect on anomaly_score "
        "(the ewma detector has weight 0)\n")
    rc, _, err = run(capsys, "analyze", src, "--out-dir", tmp_path / "o", "--detector", "flatline",
                     "--set", "flat_eps=1", "--set", "nov_hold=50", "--set", "guard_level=0.3")
    assert rc == 0 and err == (
        "edge-gateway analyze: warning: --set nov_hold has no effect on anomaly_score "
        "(the novelty detector has weight 0)\n"
        "edge-gateway analyze: warning: --set guard_level has no effect on anomaly_score "
        "(it only opens and closes events)\n")
    rc, _, err = run(capsys, "analyze", src, "--out-dir", tmp_path / "o", "--set", "weights=1,0,0,0,0,0,0,0",
                     "--set", "ewma_alpha=0.5")
    assert (rc, no_short(err)) == (0, "")
    data, windows = corpus
    for cmd in (["analyze", src, "--out-dir", tmp_path / "o"], ["evaluate", data, windows]):
        rc, out, err = run(capsys, *cmd, "--detector", "novelty", "--set", "weights=0,1,0,0,1,1,1,0.5")
        assert (rc, out) == (2, "")
        assert err == (f"edge-gateway {cmd[0]}: --set weights cannot be combined with --detector novelty, "
                       "which sets the weights itself (use --detector ensemble)\n")
    rc, _, err = run(capsys, "evaluate", data, windows, "--set", "event_close_after=2")
    assert rc == 0 and err == ("edge-gateway evaluate: warning: --set event_close_after has no effect on "
                               "anomaly_score (it only opens and closes events)\n")
