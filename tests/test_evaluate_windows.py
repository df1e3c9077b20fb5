"""Windows ``evaluate`` cannot score, and CSV edge cases of ``analyze``/``evaluate`` (review s20/4 M3, L4, L5).

M3: a window outside the data, reversed, or wholly in the probationary period was counted as a miss
without a word, so even a perfect detector could not reach 100. Now a reversed window is refused
(exit 2, naming the file and window), and a window with no scorable row is warned about and not scored.
L4: a whitespace-only line was a hard error. L5: epoch milliseconds were silently read as seconds.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import numpy as np
import pytest

from edge_gateway import nab
from edge_gateway.cli import main

T0 = dt.datetime(2020, 1, 1)


def iso(k: int) -> str:
    return (T0 + dt.timedelta(minutes=5 * k)).strftime("%Y-%m-%d %H:%M:%S")


def run(capsys, *argv) -> tuple[int, str, str]:
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.fixture
def corpus(tmp_path):
    """Two files of 1000 rows (probation: 150); f1 has a spike at row 600."""
    data = tmp_path / "data" / "cat"
    data.mkdir(parents=True)
    for name in ("f1.csv", "f2.csv"):
        rows = [f"{iso(k)},{100.0 if name == 'f1.csv' and k == 600 else 20.0 + k % 5}" for k in range(1000)]
        (data / name).write_text("timestamp,value\n" + "\n".join(rows) + "\n")
    return tmp_path / "data"


def windows(tmp_path: Path, content: dict) -> Path:
    path = tmp_path / "w.json"
    path.write_text(json.dumps(content))
    return path


def test_reversed_window_is_refused_naming_file_and_window(tmp_path, capsys, corpus):
    w = windows(tmp_path, {"cat/f1.csv": [[iso(590), iso(610)], [iso(700), iso(690)]], "cat/f2.csv": []})
    rc, out, err = run(capsys, "evaluate", corpus, w)
    assert (rc, out) == (2, "")
    assert err == (f"edge-gateway evaluate: {w}: cat/f1.csv: window 2 [{iso(700)}, {iso(690)}] "
                   "ends before it starts (start and end swapped?)\n")


def test_every_bad_window_is_named_at_once(tmp_path, capsys, corpus):
    """A walkthrough found the first reversed window only, and a bad date as a bare numpy ValueError."""
    w = windows(tmp_path, {"cat/f1.csv": [[iso(700), iso(690)], ["yesterday", "today"], [iso(800), iso(790)]],
                           "cat/f2.csv": [[iso(5)]]})
    rc, out, err = run(capsys, "evaluate", corpus, w)
    assert (rc, out) == (2, "")
    assert err.splitlines() == [
        f"edge-gateway evaluate: {w}: cat/f1.csv: window 1 [{iso(700)}, {iso(690)}] ends before it starts "
        "(start and end swapped?)",
        f"edge-gateway evaluate: {w}: cat/f1.csv: window 2 [yesterday, today]: not two times "
        "(write 2014-04-01 00:00:00)",
        f"edge-gateway evaluate: {w}: cat/f1.csv: window 3 [{iso(800)}, {iso(790)}] ends before it starts "
        "(start and end swapped?)",
        f"edge-gateway evaluate: {w}: cat/f2.csv: window 1: expected [start, end], got ['{iso(5)}']"]


@pytest.mark.parametrize("window, why", [
    (["2030-01-01 00:00:00", "2030-01-02 00:00:00"], "it holds no row of the data"),
    ([iso(100), iso(120)], "it holds only rows of the probationary period (the first 150 rows)"),
])
def test_unscorable_window_is_warned_about_and_not_scored(tmp_path, capsys, corpus, window, why):
    base = {"cat/f1.csv": [[iso(590), iso(610)]], "cat/f2.csv": []}
    rc, ref, err = run(capsys, "evaluate", corpus, windows(tmp_path, base))
    assert rc == 0 and err == "" and ref.startswith("2 files, 1 windows\n")
    w = windows(tmp_path, {**base, "cat/f2.csv": [window]})
    rc, out, err = run(capsys, "evaluate", corpus, w)
    assert rc == 0
    assert err == (f"edge-gateway evaluate: warning: {w}: window 1 of cat/f2.csv [{window[0]}, {window[1]}] "
                   f"is not scored: {why}\n")
    first, rest = out.split("\n", 1)
    assert first == "2 files, 1 windows (1 more not scored: see the warnings)"
    assert rest == ref.split("\n", 1)[1]  # the same scores as without the window


def test_a_perfect_detector_still_scores_100(corpus):
    ts, _ = nab.read_series(corpus / "cat" / "f1.csv")
    wins = [(nab.to_epoch([iso(a)])[0], nab.to_epoch([iso(b)])[0])
            for a, b in ((590, 610), (100, 120), (-50, -10), (800, 820))]
    lab = nab.label_rows(ts, wins)
    assert lab.n_windows == 2 and [j for j, _ in lab.unscored] == [1, 2]
    oracle = np.zeros(ts.shape[0])
    for w in range(lab.n_windows):
        oracle[np.flatnonzero(lab.window == w)[0]] = 1.0
    for name, r in nab.score_corpus({"f1": oracle}, {"f1": lab}, nab.PROFILES_DEFAULT).items():
        assert r["score"] == pytest.approx(100.0), name


def test_nab_labels_are_unchanged_when_every_window_is_scorable(corpus):
    ts, _ = nab.read_series(corpus / "cat" / "f1.csv")
    wins = [(nab.to_epoch([iso(a)])[0], nab.to_epoch([iso(b)])[0]) for a, b in ((300, 340), (590, 610))]
    lab = nab.label_rows(ts, wins)
    assert lab.n_windows == 2 and lab.unscored == ()
    assert (lab.window[300:341] == 0).all() and (lab.window[590:611] == 1).all()


# --- L4: blank lines -----------------------------------------------------------------------------------

def test_whitespace_only_lines_are_blank_lines(tmp_path, capsys):
    src = tmp_path / "blank.csv"
    src.write_text(f"timestamp,value\n{iso(0)},1\n   \n\t\n{iso(1)},2\n , \n{iso(2)},3\n\n")
    stamps, _, val = nab.read_table(src)
    assert stamps == [iso(0), iso(1), iso(2)] and val.tolist() == [1.0, 2.0, 3.0]
    rc, out, _ = run(capsys, "analyze", src, "--out-dir", tmp_path / "out")
    assert rc == 0 and out.startswith(f"{src}: 3 rows")
    # a row with a value but no timestamp is still an error, on its own line number
    src.write_text(f"timestamp,value\n{iso(0)},1\n  \n ,2\n")
    with pytest.raises(nab.SeriesError, match=r"blank.csv, row 4: empty timestamp"):
        nab.read_table(src)


# --- L5: epoch milliseconds ----------------------------------------------------------------------------

def test_epoch_milliseconds_are_refused_naming_file_and_row(tmp_path, capsys):
    src = tmp_path / "ms.csv"
    src.write_text("timestamp,value\n1577836800,1\n1577836800000,2\n")
    rc, out, err = run(capsys, "analyze", src, "--out-dir", tmp_path / "out")
    assert (rc, out) == (1, "")
    assert err == (f"edge-gateway analyze: {src}, row 3: timestamp 1577836800000 is too large for epoch seconds "
                   "(above 1e11, the year 5138): it looks like epoch milliseconds; give epoch seconds "
                   "(milliseconds divided by 1000) or YYYY-MM-DD hh:mm:ss\n"
                   "edge-gateway analyze: 1 of 1 file(s) refused; nothing written\n")
    src.write_text("1577836800000000,1\n")
    with pytest.raises(nab.SeriesError, match="it looks like epoch microseconds"):
        nab.read_table(src)
    src.write_text("1577836800.5,1\n99999999999,2\n-99999999999,3\n")  # up to 1e11 s (either side) is seconds
    assert nab.read_table(src)[1].tolist() == [1577836800.5, 99999999999.0, -99999999999.0]
