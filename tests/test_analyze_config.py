"""``analyze --config FILE [--sensor ID[/CHANNEL]]`` scores with the live gateway's detector settings
(review s20/4 M4): before, analyze ignored the config's detector section, so a technician scored a capture
with other settings than the gateway's unless each key was retyped as ``--set``.
"""

from __future__ import annotations

import csv
import textwrap
from pathlib import Path

import numpy as np
import pytest

from edge_gateway import config, nab
from edge_gateway.cli import main
from edge_gateway.detector_groups import detector_settings
from edge_gateway.offline import stream_scores

CONFIG = textwrap.dedent("""\
    gateway: {id: gw-1}
    sensors:
      - {id: noise-1, driver: serial_line, options: {port: /dev/ttyUSB0}}
      - {id: air-1, driver: serial_line, options: {port: /dev/ttyUSB1}}
    detector:
      threshold: 0.4
      params: {range_hi: 30, nov_warmup: 50}
      sensors:
        noise-1: {params: {weights: [0, 0, 0, 1, 1, 0, 0, 1], cusum_h: 8, cusum_warmup: 20}}
        noise-1/db: {threshold: 0.3, params: {cusum_k: 2}}
    """)


def run(capsys, *argv) -> tuple[int, str, str]:
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.fixture
def files(tmp_path):
    cfg = tmp_path / "gw.yaml"
    cfg.write_text(CONFIG)
    rng = np.random.default_rng(3)
    val = 20 + rng.normal(0, 1, 300)
    val[200:] += 6  # a level that climbs and stays: CUSUM's, not the default ensemble's
    val[250] = 40  # above range_hi
    src = tmp_path / "db.csv"
    src.write_text("timestamp,value\n" + "".join(f"{1396310400 + 60 * i},{float(v)!r}\n" for i, v in enumerate(val)))
    return cfg, src


def scores(path: Path) -> np.ndarray:
    with open(path, newline="") as f:
        return np.array([float(r["anomaly_score"]) for r in csv.DictReader(f)])


@pytest.mark.parametrize("sensor", [None, "air-1", "noise-1", "noise-1/db"])
def test_config_settings_are_the_live_pipelines(tmp_path, capsys, files, sensor):
    cfg, src = files
    argv = ["analyze", src, "--out-dir", tmp_path / "out", "--config", cfg] + (["--sensor", sensor] if sensor else [])
    rc, out, err = run(capsys, *argv)
    assert rc == 0, err
    sid, _, channel = (sensor or "").partition("/")
    want = detector_settings(config.load(cfg).detector, sid, channel)  # what DetectorGroups gives the channel
    _, ts, val = nab.read_table(src)
    np.testing.assert_array_equal(scores(tmp_path / "out" / "db.csv"), stream_scores(want, ts, val))
    assert f"at or above the event threshold {want.event_threshold:g}\n" in out
    assert want != detector_settings(config.DetectorSection())  # (the config does change something)


def test_set_and_detector_apply_on_top_of_the_config(tmp_path, capsys, files):
    cfg, src = files
    rc, _, err = run(capsys, "analyze", src, "--out-dir", tmp_path / "out", "--config", cfg,
                     "--sensor", "noise-1/db", "--set", "cusum_h=3", "--detector", "cusum")
    assert rc == 0, err
    base = detector_settings(config.load(cfg).detector, "noise-1", "db")
    want = base.with_overrides({"cusum_h": "3"}).only("cusum")
    assert (want.cusum_k, want.cusum_h, want.event_threshold) == (2.0, 3.0, 0.3)
    _, ts, val = nab.read_table(src)
    np.testing.assert_array_equal(scores(tmp_path / "out" / "db.csv"), stream_scores(want, ts, val))


def test_evaluate_takes_the_config_too(tmp_path, capsys, files):
    cfg, src = files
    data = tmp_path / "data" / "cat"
    data.mkdir(parents=True)
    (data / "db.csv").write_text(src.read_text())
    win = tmp_path / "w.json"
    win.write_text('{"cat/db.csv": [["2014-04-01 03:15:00", "2014-04-01 04:00:00"]]}')
    results = []
    for extra in ([], ["--config", cfg, "--sensor", "noise-1"]):
        rc, out, err = run(capsys, "evaluate", tmp_path / "data", win, *extra)
        assert rc == 0, err
        results.append(out)
    assert results[0] != results[1]


@pytest.mark.parametrize("extra, message", [
    (["--sensor", "noise-1"], "--sensor needs --config FILE"),
    (["--config", "CFG", "--sensor", "nope"], "CFG: no sensor 'nope'; sensors: noise-1, air-1"),
    (["--config", "MISSING"], "cannot read"),
    (["--config", "CFG", "--sensor", "noise-1/"], "--sensor 'noise-1/': the channel after '/' is empty"),
])
def test_bad_config_or_sensor_is_one_line_exit_2(tmp_path, capsys, files, extra, message):
    cfg, src = files
    extra = [str(cfg) if a == "CFG" else str(tmp_path / "missing.yaml") if a == "MISSING" else a for a in extra]
    message = message.replace("CFG", str(cfg))
    rc, out, err = run(capsys, "analyze", src, "--out-dir", tmp_path / "out", *extra)
    assert (rc, out) == (2, "")
    assert err.startswith("edge-gateway analyze: ") and message in err and err.count("\n") == 1, err
    assert not (tmp_path / "out").exists()


def test_an_invalid_config_shows_its_located_error(tmp_path, capsys, files):
    cfg, src = files
    cfg.write_text(CONFIG.replace("cusum_h: 8", "cusum_h: 0"))
    rc, out, err = run(capsys, "analyze", src, "--out-dir", tmp_path / "out", "--config", cfg)
    assert (rc, out) == (2, "")
    assert err.startswith(f"edge-gateway analyze: {cfg}:9:") and "detector.sensors.noise-1.params.cusum_h" in err


def test_help_documents_config_and_sensor(capsys):
    with pytest.raises(SystemExit):
        main(["analyze", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "--config FILE" in out and "--sensor ID[/CHANNEL]" in out and "as the live gateway builds" in out


@pytest.mark.parametrize("sensor, used", [
    (None, "the detector section (event threshold 0.4)"),
    ("noise-1/db", "the detector section, then detector.sensors.noise-1, then detector.sensors.noise-1/db "
                   "(event threshold 0.3)"),
    ("noise-1/other", "the detector section, then detector.sensors.noise-1 (event threshold 0.4)"),
    ("air-1", "the detector section (event threshold 0.4)"),
])
def test_it_says_which_entries_of_the_config_it_scored_with(tmp_path, capsys, files, sensor, used):
    """A channel without an entry of its own takes its sensor's, or the section's: said, not silent."""
    cfg, src = files
    argv = ["analyze", src, "--out-dir", tmp_path / "out", "--config", cfg] + (["--sensor", sensor] if sensor else [])
    rc, _, err = run(capsys, *argv)
    assert rc == 0 and err.splitlines()[0] == f"settings: {cfg}: {used}"
