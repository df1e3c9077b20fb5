"""The offline ``analyze``/``evaluate`` subcommands, in-process and through ``python -m edge_gateway``."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edge_gateway.analytics.chain import DetectorSettings
from edge_gateway.offline import stream_scores

NAB = Path("/work/shared/nab")
REAL = NAB / "data/realKnownCause/rogue_agent_key_hold.csv"


def write_series(path: Path, n: int = 1200) -> None:
    rng = np.random.default_rng(5)
    x = rng.normal(10, 1, n)
    x[min(1000, n - 1)] = 40.0  # after the novelty detector's warm-up (500 readings)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["timestamp", "value"])
        for i, v in enumerate(x):
            w.writerow([f"2014-04-01 {i // 60:02d}:{i % 60:02d}:00", f"{v:.4f}"])


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "edge_gateway", *map(str, args)], capture_output=True,
                          text=True, cwd=Path(__file__).resolve().parents[1], timeout=120)


def test_batch_size_does_not_change_scores():
    rng = np.random.default_rng(2)
    ts = np.arange(1500.0) * 60
    val = rng.normal(0, 1, 1500)
    val[1000:] += 6
    ref = stream_scores(DetectorSettings(), ts, val, batch=1500)
    for b in (1, 7, 64):
        np.testing.assert_array_equal(stream_scores(DetectorSettings(), ts, val, batch=b), ref)
    assert ref[1000:1100].max() >= DetectorSettings().nov_level


def test_analyze_cli(tmp_path):
    src = tmp_path / "in"
    write_series(src / "a" / "one.csv")
    write_series(src / "two.csv", 120)
    out = tmp_path / "out"
    r = run_cli("analyze", src, "--out-dir", out, "--batch", "1")
    assert r.returncode == 0, r.stderr
    rows = list(csv.DictReader(open(out / "a" / "one.csv")))
    assert list(rows[0]) == ["timestamp", "value", "anomaly_score"] and len(rows) == 1200
    assert rows[0]["timestamp"] == "2014-04-01 00:00:00"
    s1 = np.array([float(r["anomaly_score"]) for r in rows])
    assert ((s1 >= 0) & (s1 <= 1)).all() and s1[1000] == s1[800:].max() > 0.5 and (out / "two.csv").exists()
    r = run_cli("analyze", src / "a" / "one.csv", "--out-dir", tmp_path / "o64", "--batch", "64",
                "--detector", "ensemble")
    assert r.returncode == 0, r.stderr
    s64 = np.array([float(r["anomaly_score"]) for r in csv.DictReader(open(tmp_path / "o64" / "one.csv"))])
    np.testing.assert_array_equal(s1, s64)
    r = run_cli("analyze", src, "--out-dir", out, "--detector", "rate", "--set", "rate_half=3")
    assert r.returncode == 0, r.stderr


def test_analyze_reads_an_infinite_value_as_missing(tmp_path):
    src = tmp_path / "in"
    write_series(src / "gap.csv")
    lines = (src / "gap.csv").read_text().splitlines()
    for name, v in (("inf", "inf"), ("minus_inf", "-inf"), ("gap", "")):
        lines[901] = lines[901].split(",")[0] + "," + v
        (src / f"{name}.csv").write_text("\n".join(lines) + "\n")
    r = run_cli("analyze", src, "--out-dir", tmp_path / "out")
    assert r.returncode == 0, r.stderr
    rows = {n: list(csv.DictReader(open(tmp_path / "out" / f"{n}.csv"))) for n in ("inf", "minus_inf", "gap")}
    score = {n: [row["anomaly_score"] for row in rs] for n, rs in rows.items()}
    assert score["inf"] == score["minus_inf"] == score["gap"]
    assert [rows[n][900]["value"] for n in ("inf", "minus_inf", "gap")] == ["inf", "-inf", "nan"]
    s = np.array(score["inf"], dtype=float)
    assert s[900] == 0.0 and s[1000] == s[800:].max() > 0.5


def test_analyze_bad_usage(tmp_path):
    write_series(tmp_path / "x.csv", 20)
    r = run_cli("analyze", tmp_path / "x.csv", "--out-dir", tmp_path / "o", "--set", "bogus=1")
    assert r.returncode == 2 and "unknown setting 'bogus'" in r.stderr and "Traceback" not in r.stderr
    r = run_cli("analyze", tmp_path / "x.csv", "--out-dir", tmp_path / "o", "--detector", "nope")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    r = run_cli("analyze", tmp_path / "missing.csv", "--out-dir", tmp_path / "o")
    assert r.returncode == 2


@pytest.mark.skipif(not REAL.exists(), reason="NAB corpus not present")
def test_evaluate_real_file_both_ways(tmp_path):
    data, windows = NAB / "data", NAB / "labels/combined_windows.json"
    direct = run_cli("evaluate", data, windows, "--only", "realKnownCause", "--files-glob", "*key_hold*")
    assert direct.returncode == 0, direct.stderr
    assert "1 files, 2 windows" in direct.stdout
    out = tmp_path / "scores"
    r = run_cli("analyze", REAL, "--out-dir", out / "realKnownCause", "--batch", "64")
    assert r.returncode == 0, r.stderr
    via = run_cli("evaluate", data, windows, "--results-dir", out, "--files-glob", "*key_hold*")
    assert via.returncode == 0, via.stderr
    lines = lambda s: [l for l in s.splitlines() if l.startswith(("standard", "reward"))]  # noqa: E731
    assert lines(direct.stdout) == lines(via.stdout) and len(lines(via.stdout)) == 3


GOLDEN_EVALUATE = {  # `edge-gateway evaluate` on two real NAB files with the default settings
    "*speed_7578*": ["standard               93.38  (threshold 0.196078, raw 3.471)",
                     "reward_low_FP_rate     92.01  (threshold 0.196078, raw 3.361)",
                     "reward_low_FN_rate     95.59  (threshold 0.196078, raw 3.471)"],
    "*ec2_cpu_utilization_5f5533*": ["standard               93.08  (threshold 0.669512, raw 1.723)",
                                     "reward_low_FP_rate     93.08  (threshold 0.669512, raw 1.723)",
                                     "reward_low_FN_rate     95.39  (threshold 0.669512, raw 1.723)"],
}


@pytest.mark.skipif(not NAB.exists(), reason="NAB corpus not present")
@pytest.mark.parametrize("glob", sorted(GOLDEN_EVALUATE))
def test_evaluate_golden(glob):
    r = run_cli("evaluate", NAB / "data", NAB / "labels/combined_windows.json", "--files-glob", glob)
    assert r.returncode == 0, r.stderr
    assert [l for l in r.stdout.splitlines() if l.startswith(("standard", "reward"))] == GOLDEN_EVALUATE[glob]


def test_analyze_bad_paths_are_messages_not_tracebacks(tmp_path):
    write_series(tmp_path / "in" / "x.csv", 20)
    not_a_dir = tmp_path / "file.txt"
    not_a_dir.write_text("keep me\n")
    r = run_cli("analyze", tmp_path / "in" / "x.csv", "--out-dir", not_a_dir)
    assert r.returncode == 1 and f"edge-gateway analyze: cannot create folder {not_a_dir}: " in r.stderr
    assert "Traceback" not in r.stderr and not_a_dir.read_text() == "keep me\n"
    (tmp_path / "in" / "folder.csv").mkdir()  # a folder named like a CSV is not a CSV
    r = run_cli("analyze", tmp_path / "in", "--out-dir", tmp_path / "out")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "out" / "x.csv").is_file()


def test_evaluate_bad_inputs_are_messages_not_tracebacks(tmp_path):
    data = tmp_path / "data"
    write_series(data / "cat" / "a.csv", 200)
    windows = tmp_path / "windows.json"
    windows.write_text('{"cat/a.csv": [["2014-04-01 02:00:00", "2014-04-01 02:10:00"]]}')
    results = tmp_path / "res"
    (results / "cat").mkdir(parents=True)
    (results / "cat" / "a.csv").write_text("timestamp,value\n2014-04-01 00:00:00,1\n")
    for args, message in (
            ([windows, "--results-dir", tmp_path / "none"], f"no results for cat/a.csv in {tmp_path / 'none'}: expected "
                                                         f"{tmp_path / 'none' / 'cat' / 'a.csv'}, NAB's layout"),
            ([windows, "--results-dir", results], f"{results / 'cat' / 'a.csv'}: not a results file"),
            (["LIST"], "not a NAB windows file"),
            (["INT"], "not a NAB windows file"),
            (["YAML"], "not a NAB windows file"),
            ([tmp_path / "missing.json"], f"cannot read {tmp_path / 'missing.json'}"),
            ([windows, "--profiles", windows], "not a NAB profiles file")):
        if args[0] in ("LIST", "INT", "YAML"):
            bad = tmp_path / f"{args[0]}.json"
            bad.write_text({"LIST": "[1, 2]", "INT": '{"cat/a.csv": 5}', "YAML": "gateway: {id: g}\n"}[args[0]])
            args = [bad]
        r = run_cli("evaluate", data, *args)
        assert r.returncode == 2, (args, r.stderr)
        assert message in r.stderr and "Traceback" not in r.stderr, (args, r.stderr)
        if "not a NAB" in message:
            assert str(args[-1]) in r.stderr
