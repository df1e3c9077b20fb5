"""Every DetectorSettings field has a domain, and a value outside it is refused (review s20/4 H1, L2).

Before: only ``>= 0`` was checked, so weights above 1 published scores above 1, ``cusum_h: 0`` raised
ZeroDivisionError out of the live pipeline, ``drop_eta: 3`` scored 1e46, ``flat_alpha: 1.5`` -0.5,
and ``--set nov_warmup=inf`` ended analyze in an OverflowError traceback.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math

import numpy as np
import pytest
from support import REPO
from test_config_errors import GOOD, error_of

from edge_gateway import config
from edge_gateway.analytics.chain import Detector, DetectorSettings
from edge_gateway.analytics.layout import NOV_MAX_BINS
from edge_gateway.cli import main
from edge_gateway.detector_groups import detector_variants

# field -> (values accepted at the edges of its domain, values just outside it)
EDGES = {
    **{k: ([1e-9, 1.0], [0.0, 1.0 + 1e-9, -0.1]) for k in (
        "ewma_alpha", "robust_eta", "rate_eta", "cusum_eta", "drop_eta", "nov_short_alpha",
        "nov_season_alpha", "nov_vol_alpha", "nov_long_alpha", "nov_spread_alpha")},
    **{k: ([1.0 + 1e-9, 1e6], [1.0, 0.5, 0.0]) for k in ("robust_clip", "rate_clip", "cusum_clip", "drop_clip")},
    **{k: ([0.0, 1.0], [-1e-9, 1.0 + 1e-9]) for k in ("flat_alpha", "nov_season_smooth", "nov_refract_damp")},
    "cusum_h": ([1e-9, 1e6], [0.0, -1.0]),
    "drop_k": ([1.0, 1e6], [1.0 - 1e-9, 0.0]),
    "event_threshold": ([1e-9, 1.0], [0.0, 1.0 + 1e-9]),
    "guard_level": ([1e-9, 2.0, math.inf], [0.0, -1.0]),
    "nov_bypass": ([0.0, 2.0, math.inf], [-1e-9]),
    "nov_season_bins": ([1.0, float(NOV_MAX_BINS)], [0.5, NOV_MAX_BINS + 1.0]),
}
# every other scalar field: 0 or more, finite
OTHERS = [f.name for f in dataclasses.fields(DetectorSettings)
          if f.name not in EDGES and f.name not in ("range_lo", "range_hi", "weights", "nov_weights", "nov_decay")]


@pytest.mark.parametrize("name", sorted(EDGES))
def test_each_bounded_field_at_its_edges(name):
    ok, bad = EDGES[name]
    for v in ok:
        assert getattr(DetectorSettings(**{name: v}), name) == v
    for v in bad:
        with pytest.raises(ValueError, match=f"^{name}: "):
            DetectorSettings(**{name: v})


@pytest.mark.parametrize("name", OTHERS)
def test_every_other_field_is_finite_and_not_negative(name):
    DetectorSettings(**{name: 0.0})
    DetectorSettings(**{name: 1e6})
    for v in (-1e-9, math.nan, math.inf):
        with pytest.raises(ValueError, match=f"^{name}: "):
            DetectorSettings(**{name: v})


@pytest.mark.parametrize("name", ["weights", "nov_weights", "nov_decay"])
def test_list_fields_are_in_0_1_entry_by_entry(name):
    n = len(getattr(DetectorSettings(), name))
    for k in range(n):
        for v, good in ((0.0, True), (1.0, True), (1.0 + 1e-9, False), (-1e-9, False), (math.nan, False)):
            t = [0.0] * n
            t[k] = v
            if good:
                DetectorSettings(**{name: tuple(t)})
            else:
                with pytest.raises(ValueError, match=f"^{name}: "):
                    DetectorSettings(**{name: tuple(t)})


def test_range_limits_take_infinities_but_not_nan():
    s = DetectorSettings(range_lo=-math.inf, range_hi=math.inf)
    assert (s.range_lo, s.range_hi) == (-math.inf, math.inf)
    DetectorSettings(range_lo=-1e300, range_hi=-5.0)
    for name in ("range_lo", "range_hi"):
        with pytest.raises(ValueError, match=f"^{name}: must be a number, not NaN"):
            DetectorSettings(**{name: math.nan})


@pytest.mark.parametrize("pairs, message", [
    ({"weights": "0,0,0,0,3,0,0,1", "range_hi": "10"}, "weights: must be in [0, 1]"),
    ({"weights": "0,0,0,1,0,0,0,0", "cusum_h": "0"}, "cusum_h: must be in (0, inf)"),
    ({"drop_eta": "3"}, "drop_eta: must be in (0, 1]"),
    ({"flat_alpha": "1.5"}, "flat_alpha: must be in [0, 1]"),
    ({"nov_warmup": "inf"}, "nov_warmup: must be a finite number"),
    ({"nov_hold": "nan"}, "nov_hold: must be a finite number"),
])
def test_the_reviews_values_are_refused(pairs, message):
    with pytest.raises(ValueError) as info:
        DetectorSettings().with_overrides(pairs)
    assert str(info.value).startswith(message)


def test_defaults_grid_and_shipped_configs_stay_valid():
    DetectorSettings()
    spec = importlib.util.spec_from_file_location("nab_tune_for_test", REPO / "bench" / "nab_tune.py")
    tune = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tune)
    for key, values in tune.GRID.items():
        for v in values:
            tune.apply(DetectorSettings(), key, v)  # raises if the tuner's grid left the domain
    for path in sorted((REPO / "configs").glob("*.yaml")):
        cfg = config.load(path)
        assert detector_variants(cfg.detector, [s.id for s in cfg.sensors])


# the most extreme settings still accepted, every detector weighted 1
EXTREME = DetectorSettings(
    weights=(1.0,) * 8, nov_weights=(1.0,) * 6, nov_decay=(1.0,) * 6, range_lo=-1.0, range_hi=1.0,
    ewma_alpha=1.0, ewma_half=0.0, robust_eta=1.0, robust_clip=1.0 + 1e-9, robust_half=0.0, robust_warmup=0.0,
    rate_eta=1.0, rate_clip=1.0 + 1e-9, rate_warmup=0.0, rate_half=0.0, cusum_eta=1.0, cusum_clip=1.0 + 1e-9,
    cusum_warmup=0.0, cusum_k=0.0, cusum_h=1e-300, flat_alpha=1.0, flat_min_run=0.0, drop_k=1.0, drop_eta=1.0,
    drop_clip=1.0 + 1e-9, nov_warmup=0.0, nov_season_warmup=0.0, nov_bin_warmup=0.0, nov_half=0.0,
    nov_short_alpha=1.0, nov_season_alpha=1.0, nov_vol_alpha=1.0, nov_long_alpha=1.0, nov_spread_alpha=1.0,
    nov_season_smooth=1.0, nov_refract=1.0, nov_refract_damp=1.0, nov_value_gate=1e-9, nov_vol_season=1.0,
    nov_bypass=0.0, nov_level=0.0, event_threshold=1e-9, event_close_after=0.0)


@pytest.mark.parametrize("pure", [False, True])
def test_accepted_extremes_keep_every_score_in_0_1(pure):
    rng = np.random.default_rng(7)
    n = 400
    ts = np.cumsum(rng.choice([0.0, 1.0, 1.0, 5.0, 60.0], n)) + 1.4e9
    val = np.where(rng.random(n) < 0.3, rng.choice([0.0, 1.0], n), rng.normal(0, 3, n))
    val[::37] = np.nan
    chan = (np.arange(n) % 2).astype(np.int64)
    for s in (EXTREME, dataclasses.replace(EXTREME, nov_long_mode=0.0, nov_season_norm=0.0, drop_k=1e6)):
        score, _ = Detector(s, pure=pure).process(chan, ts, val)
        assert np.all((score >= 0.0) & (score <= 1.0)), score[~((score >= 0.0) & (score <= 1.0))]


def test_config_names_the_key_file_line_and_column():
    e = error_of(GOOD + "detector:\n  params: {flat_min_run: 20, cusum_h: 0}\n")
    assert str(e) == ("site.yaml:9:30: detector.params.cusum_h: must be in (0, inf) "
                      "(the score is stat / (stat + cusum_h))")
    e = error_of(GOOD + "detector:\n  params: {weights: [0, 0, 0, 0, 3, 0, 0, 1]}\n")
    assert str(e).startswith("site.yaml:9:12: detector.params.weights: must be in [0, 1] (")
    e = error_of(GOOD + "detector:\n  sensors:\n    air-1: {params: {drop_eta: 3}}\n")
    assert str(e).startswith("site.yaml:10:22: detector.sensors.air-1.params.drop_eta: must be in (0, 1] (")
    e = error_of(GOOD + "detector:\n  sensors:\n    air-1/pm25: {params: {flat_alpha: 1.5}}\n")
    assert str(e).startswith("site.yaml:10:27: detector.sensors.air-1/pm25.params.flat_alpha: must be in [0, 1]")


def test_the_reviews_live_config_is_refused():
    # r12_live.py ran the Pipeline on this (config validate said "valid"): a ZeroDivisionError per tick
    e = error_of(GOOD + "detector:\n  params:\n    cusum_h: 0\n    weights: [0, 0, 0, 5, 0, 0, 0, 0]\n")
    assert [x.path for x in e.errors][:1] in (["detector.params.cusum_h"], ["detector.params.weights"])


@pytest.mark.parametrize("argv, message", [
    (["--set", "nov_warmup=inf"], "nov_warmup: must be a finite number"),
    (["--detector", "cusum", "--set", "cusum_h=0"], "cusum_h: must be in (0, inf)"),
    (["--set", "weights=0,0,0,0,2,0,0,1", "--set", "range_hi=10"], "weights: must be in [0, 1]"),
])
def test_analyze_set_out_of_domain_is_one_line_exit_2(tmp_path, capsys, argv, message):
    src = tmp_path / "a.csv"
    src.write_text("timestamp,value\n" + "".join(f"2014-04-01 00:{m:02d}:00,{m % 7}\n" for m in range(60)))
    rc = main(["analyze", str(src), "--out-dir", str(tmp_path / "out"), *argv])
    out, err = capsys.readouterr()
    assert (rc, out) == (2, "")
    assert err.startswith(f"edge-gateway analyze: {message}") and err.count("\n") == 1
    assert not (tmp_path / "out").exists()
