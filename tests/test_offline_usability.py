"""What a technician sees from ``analyze``/``evaluate`` (and ``replay --csv``): the walkthrough's findings.

In-process through :func:`edge_gateway.cli.main` on small files written here and two NAB files.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest

from drivers.pms5003 import encode_frame
from edge_gateway import offline
from edge_gateway.analytics.chain import DetectorSettings
from edge_gateway.cli import main

NAB = Path("/work/shared/nab")
T0 = dt.datetime(2014, 4, 1)


def write(path: Path, n: int, spike: int | None = None, stamp=lambda t: f"{t:%Y-%m-%d %H:%M:%S}") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [f"{stamp(T0 + dt.timedelta(minutes=5 * k))},{100.0 if k == spike else 20.0 + k % 5}" for k in range(n)]
    path.write_text("timestamp,value\n" + "\n".join(rows) + "\n")
    return path


def run(capsys, *argv) -> tuple[int, str, str]:
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def test_analyze_says_per_file_what_it_found_and_warns_a_short_file(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write(Path("short.csv"), 100, spike=50)
    write(Path("long.csv"), 1200, spike=1000)
    rc, out, err = run(capsys, "analyze", "short.csv", "long.csv", "--out-dir", "out")
    assert (rc, out, err) == (0, (
        "short.csv: 100 rows, 100 spent learning, max score 0.064 at 2014-04-01 07:30:00, "
        "0 at or above the event threshold 0.25\n"
        "long.csv: 1200 rows, 500 spent learning, max score 0.997 at 2014-04-04 11:20:00, "
        "1 at or above the event threshold 0.25\n"
        "analyzed 2 file(s) into out\n"), (
        "edge-gateway analyze: warning: short.csv: only 100 rows: the detectors learn for 500 before they "
        "score; record longer\n"))
    # the output files are as before: timestamp as written, repr of value and score
    ts = np.arange(1200) * 300.0
    val = np.array([100.0 if k == 1000 else 20.0 + k % 5 for k in range(1200)])
    score = offline.stream_scores(DetectorSettings(), ts, val)
    expected = "timestamp,value,anomaly_score\r\n" + "".join(
        f"{T0 + dt.timedelta(minutes=5 * k):%Y-%m-%d %H:%M:%S},{float(val[k])!r},{float(score[k])!r}\r\n" for k in range(1200))
    assert Path("out/long.csv").read_bytes() == expected.encode()
    # the warm-up is the configured chain's: a shorter novelty warm-up, or a detector without one
    rc, out, err = run(capsys, "analyze", "short.csv", "--out-dir", "out", "--set", "nov_warmup=40")
    assert (rc, err) == (0, "") and out.startswith("short.csv: 100 rows, 40 spent learning, max score ")
    rc, out, err = run(capsys, "analyze", "short.csv", "--out-dir", "out", "--detector", "ewma")
    assert (rc, err) == (0, "") and out.startswith("short.csv: 100 rows, 30 spent learning, max score ")
    rc, out, err = run(capsys, "analyze", "short.csv", "--out-dir", "out", "--detector", "range",
                       "--set", "range_hi=99")
    assert (rc, out, err) == (0, "short.csv: 100 rows, 0 spent learning, max score 1.000 at 2014-04-01 04:10:00, "
                                 "1 at or above the event threshold 0.25\nanalyzed 1 file(s) into out\n", "")


def test_missing_readings_do_not_count_as_learning(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rows = [f"{T0 + dt.timedelta(minutes=5 * k):%Y-%m-%d %H:%M:%S},{'' if 10 <= k < 20 else 20.0 + k % 5}"
            for k in range(600)]
    Path("gaps.csv").write_text("timestamp,value\n" + "\n".join(rows) + "\n")
    rc, out, err = run(capsys, "analyze", "gaps.csv", "--out-dir", "out")
    assert (rc, err) == (0, "") and out.startswith("gaps.csv: 600 rows, 510 spent learning, ")


def test_a_folder_without_csv_files_is_bad_usage(tmp_path, capsys):
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "notes.txt").write_text("x\n")
    rc, out, err = run(capsys, "analyze", tmp_path / "empty", "--out-dir", tmp_path / "out")
    assert (rc, out) == (2, "")
    assert err == (f"edge-gateway analyze: no CSV files in folder {tmp_path / 'empty'}: analyze reads "
                   "timestamp,value files named *.csv (searched for in it and every folder below it)\n")
    assert not (tmp_path / "out").exists()


def test_utc_z_timestamps_parse_without_a_warning(tmp_path, capsys):
    src = tmp_path / "z.csv"
    src.write_text("timestamp,value\n2014-04-01T00:00:00Z,1\n2014-04-01 00:05:00.5Z,2\n2014-04-01T00:10:00Z,3\n")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        stamps, ts, val = offline.read_table(src)
        rc, out, err = run(capsys, "analyze", src, "--out-dir", tmp_path / "out", "--detector", "range")
    assert [str(w.message) for w in caught] == []
    assert stamps == ["2014-04-01T00:00:00Z", "2014-04-01 00:05:00.5Z", "2014-04-01T00:10:00Z"]
    assert ts.tolist() == [1396310400.0, 1396310700.5, 1396311000.0] and val.tolist() == [1.0, 2.0, 3.0]
    assert (rc, err) == (0, "")
    assert (tmp_path / "out" / "z.csv").read_text().splitlines()[1:] == [
        "2014-04-01T00:00:00Z,1.0,0.0", "2014-04-01 00:05:00.5Z,2.0,0.0", "2014-04-01T00:10:00Z,3.0,0.0"]


@pytest.mark.skipif(not NAB.exists(), reason="NAB corpus not present")
def test_evaluate_reads_flat_results_of_one_category(tmp_path, capsys):
    keys = ["realKnownCause/rogue_agent_key_hold.csv", "realAWSCloudwatch/ec2_cpu_utilization_fe7f93.csv"]
    data = tmp_path / "data"
    for k in keys:
        (data / k).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(NAB / "data" / k, data / k)
    allw = json.loads((NAB / "labels/combined_windows.json").read_text())
    windows = tmp_path / "windows.json"
    windows.write_text(json.dumps({k: allw[k] for k in keys}))
    nested, flat = tmp_path / "nested", tmp_path / "flat"
    assert run(capsys, "analyze", data, "--out-dir", nested)[0] == 0
    assert run(capsys, "analyze", data / "realKnownCause", "--out-dir", flat)[0] == 0
    assert (flat / "rogue_agent_key_hold.csv").is_file()
    want = run(capsys, "evaluate", data, windows, "--results-dir", nested, "--only", "realKnownCause")
    got = run(capsys, "evaluate", data, windows, "--results-dir", flat, "--only", "realKnownCause")
    assert got == want and got[0] == 0 and got[1].startswith("1 files, 2 windows\nstandard ")
    # two categories: a flat name could be either, so it is not guessed
    rc, out, err = run(capsys, "evaluate", data, windows, "--results-dir", flat)
    assert (rc, out) == (2, "")
    k = "realAWSCloudwatch/ec2_cpu_utilization_fe7f93.csv"
    assert err == (f"edge-gateway evaluate: no results for {k} in {flat}: expected {flat / k}, NAB's layout "
                   f"(write it with `edge-gateway analyze DATA_DIR --out-dir {flat}` on the corpus root), or "
                   f"{flat / 'ec2_cpu_utilization_fe7f93.csv'} when {flat} holds the results of one category "
                   f"flat (`edge-gateway analyze DATA_DIR/realAWSCloudwatch --out-dir {flat}`, evaluated with "
                   "--only realAWSCloudwatch)\n")
    shutil.copy(nested / k, flat / Path(k).name)
    rc, out, err = run(capsys, "evaluate", data, windows, "--results-dir", flat)
    assert (rc, out) == (2, "") and err.endswith(
        f"; {flat / 'ec2_cpu_utilization_fe7f93.csv'} exists, but flat results are read only when the selected "
        "files are of one category (select it with --only), as 2 categories are selected\n")


def capture(path: Path, chunks: list[bytes], started: float = 1396310400.0) -> Path:
    lines = [json.dumps({"format": "edge-gateway-capture", "version": 1, "port": "/dev/ttyUSB0",
                         "baudrate": 9600, "started": started})]
    lines += [json.dumps({"t": 0.000211 + i, "data": base64.b64encode(c).decode()}) for i, c in enumerate(chunks)]
    path.write_text("\n".join(lines) + "\n")
    return path


CONFIG = """\
gateway: {id: g}
broker: {host: localhost}
sensors:
  - id: air-1
    driver: serial_line
    options: {port: /dev/ttyUSB0, units: {pm25: ug/m3}}
  - id: pm-1
    driver: pms5003
    options: {port: /dev/ttyUSB1}
"""


def test_analyze_refuses_a_capture_with_what_to_do(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    capture(Path("cap.csv"), [b"pm25=10\n"])
    rc, out, err = run(capsys, "analyze", "cap.csv", "--out-dir", "out")
    assert (rc, out) == (1, "")
    assert err == ("edge-gateway analyze: cap.csv: this is a raw capture from `edge-gateway record`, not a "
                   "timestamp,value CSV; decode it first: `edge-gateway replay cap.csv --csv OUT_DIR --config "
                   "CONFIG --sensor ID` writes one CSV per channel, which analyze reads\n"
                   "edge-gateway analyze: 1 of 1 file(s) refused; nothing written\n")


def test_replay_csv_decodes_a_serial_line_capture_for_analyze(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("gw.yaml").write_text(CONFIG)
    # a line split across reads, and a malformed one
    capture(Path("cap.jsonl"), [b"pm25=10,pm10=20\npm25=1", b"1,pm10=21\ngarbage\n", b"pm25=12,pm10=22\n"])
    rc, out, err = run(capsys, "replay", "cap.jsonl", "--csv", "dec", "--config", "gw.yaml", "--sensor", "air-1")
    assert (rc, out, err) == (0, "dec/pm10.csv: 3 rows of air-1/pm10\ndec/pm25.csv: 3 rows of air-1/pm25\n",
                              "edge-gateway: warning: 1 malformed line(s), field(s) or frame(s) skipped, as the driver "
                              "skips them\n")
    assert Path("dec/pm25.csv").read_text().splitlines() == [
        "timestamp,value", "2014-04-01 00:00:00.000211,10.0", "2014-04-01 00:00:01.000211,11.0",
        "2014-04-01 00:00:02.000211,12.0"]
    rc, out, _ = run(capsys, "analyze", "dec", "--out-dir", "scored")
    assert rc == 0 and out.splitlines()[-1] == "analyzed 2 file(s) into scored"
    rc, out, err = run(capsys, "replay", "cap.jsonl", "--csv", "dec", "--config", "gw.yaml", "--sensor", "air-9")
    assert (rc, out, err) == (2, "", "edge-gateway: gw.yaml: no sensor 'air-9'; sensors: air-1, pm-1\n")
    rc, out, err = run(capsys, "replay", "cap.jsonl", "--csv", "dec")
    assert (rc, out) == (2, "") and err.startswith("edge-gateway: replay --csv needs --config FILE and --sensor ID")


def test_replay_csv_decodes_pms5003_frames(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("gw.yaml").write_text(CONFIG)
    f1 = encode_frame((1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 0))
    f2 = encode_frame((1, 2, 3, 14, 15, 16, 7, 8, 9, 10, 11, 12, 0))
    capture(Path("pm.jsonl"), [f1[:10], f1[10:] + f2])  # the second read holds the end of one frame and another
    rc, out, err = run(capsys, "replay", "pm.jsonl", "--csv", "dec", "--config", "gw.yaml", "--sensor", "pm-1")
    assert (rc, out, err) == (0, "dec/pm10.csv: 2 rows of pm-1/pm10\ndec/pm1_0.csv: 2 rows of pm-1/pm1_0\n"
                                 "dec/pm2_5.csv: 2 rows of pm-1/pm2_5\n", "")
    # two frames in one read are spread over the time since the previous read, as the driver stamps them
    assert Path("dec/pm2_5.csv").read_text().splitlines() == [
        "timestamp,value", "2014-04-01 00:00:00.500211,5.0", "2014-04-01 00:00:01.000211,15.0"]


def test_help_describes_analyze_and_evaluate(capsys):
    texts = {}
    for cmd in ("analyze", "evaluate"):
        with pytest.raises(SystemExit):
            main([cmd, "--help"])
        texts[cmd] = " ".join(capsys.readouterr().out.split())
    assert ("Writes one CSV (timestamp,value,anomaly_score) per input below --out-dir and prints one line per "
            "input") in texts["analyze"]
    assert ("Exit statuses: 0 done; 1 an input is not readable or its content is refused (nothing written), "
            "or a result cannot be written; 2 bad usage (a missing PATH, a folder without CSV files, a bad --set).") in texts["analyze"]
    assert ("The threshold is the one that gives the profile its best corpus total, chosen per profile as NAB "
            "does: it is not the gateway's event threshold (event_threshold). raw is that best total before "
            "normalising") in texts["evaluate"]
    assert ("Exit statuses: 0 done; 1 a data file is not readable or its content is refused (nothing scored); "
            "2 bad usage") in texts["evaluate"]
    assert "at FILE.csv when the selected files are of one category" in texts["evaluate"]


def test_analyze_warns_of_rows_stamped_before_the_row_above(tmp_path, capsys, monkeypatch):
    """The live gateway would leave such readings out of windows it already sent; analyze scores them in file
    order. Said, with the first place, so a technician can sort the capture. Equal stamps are not warned of."""
    monkeypatch.chdir(tmp_path)
    stamps = [f"{T0 + dt.timedelta(minutes=5 * k):%Y-%m-%d %H:%M:%S}" for k in range(600)]
    stamps[300], stamps[301] = stamps[301], stamps[300]
    stamps[400] = stamps[399]
    stamps[500], stamps[501] = stamps[501], stamps[500]
    Path("mixed.csv").write_text("timestamp,value\n" + "".join(f"{s},{20.0 + k % 5}\n" for k, s in enumerate(stamps)))
    rc, _, err = run(capsys, "analyze", "mixed.csv", "--out-dir", "out")
    assert (rc, err) == (0, (
        f"edge-gateway analyze: warning: mixed.csv: 2 row(s) stamped before the row above them, the first at line "
        f"303 ({stamps[301]} after {stamps[300]}): scored in file order; the live gateway leaves such a reading out "
        "of its aggregates when its window was already sent (sort the file by time?)\n"))
