"""Per-sensor ``filters`` in the live loop: despike and smooth what the windows aggregate, report the
aggregates by exception (review 15, analytics #14: the filter kernels existed, no config reached them)."""

from __future__ import annotations

import numpy as np

from edge_gateway import config, messages, reload
from edge_gateway.batcher import Batcher
from edge_gateway.pipeline import Pipeline
from edge_gateway.readings import Reading

TOPICS = messages.Topics("city", "gw")


def cfg_with(filters: str, second: str = "") -> config.GatewayConfig:
    return config.loads(f"""
gateway: {{id: gw}}
windows: {{seconds: 10, grace_s: 2}}
detector: {{threshold: 0.5, params: {{weights: [0, 0, 0, 0, 1, 0, 0, 0], range_hi: 50}}}}
sensors:
  - {{id: a, driver: serial_line, options: {{port: /dev/null}}, filters: {filters}}}
  - {{id: b, driver: serial_line, options: {{port: /dev/null}}{second}}}
""")


def run(cfg, readings: list[Reading], cut: int | None = None) -> list[messages.Message]:
    """One batch per reading (now = its time); with ``cut``, a restart through a checkpoint there."""
    pipe = Pipeline(cfg, TOPICS, batcher := Batcher())
    out = []
    for i, r in enumerate(readings):
        if i == cut:
            blob = pipe.checkpoint()
            pipe = Pipeline(cfg, TOPICS, batcher := Batcher())
            pipe.restore(blob)
        batcher.add(r)
        out += pipe.process(batcher.drain(), now=r.ts)
    return out


def aggs(out, sensor: str) -> list[dict]:
    return [m.fields for m in out if m.kind == messages.KIND_AGG and m.fields["sensor"] == sensor]


def noisy(sensor: str, n: int, spike_at: int | None = None) -> list[Reading]:
    vals = 20.0 + 0.1 * (np.arange(n) % 3)
    if spike_at is not None:
        vals[spike_at] = 100.0
    return [Reading(sensor, "x", float(v), 1000.0 + k, "C") for k, v in enumerate(vals)]


def test_despiking_keeps_a_spike_out_of_the_aggregates_but_not_out_of_the_events():
    cfg = cfg_with("{despike_window: 5}")
    out = run(cfg, sorted(noisy("a", 40, 25) + noisy("b", 40, 25), key=lambda r: r.ts))
    assert [f["max"] for f in aggs(out, "a")] == [20.2, 20.2, 20.2]  # 1025's 100 replaced by the median
    assert [f["max"] for f in aggs(out, "b")] == [20.2, 20.2, 100.0]  # b has no filters
    events = [(m.fields["sensor"], m.fields["state"], m.fields["start"]) for m in out
              if m.kind == messages.KIND_EVENT and m.fields["state"] == "closed"]
    assert events == [("a", "closed", 1025.0), ("b", "closed", 1025.0)]  # both scored on the raw value


def test_smoothing_aggregates_the_low_pass_of_the_readings():
    cfg = cfg_with("{lowpass_alpha: 0.5}")
    raw = [0.0] * 10 + [10.0] * 10 + [0.0]
    out = run(cfg, [Reading("a", "x", v, 1000.0 + k, "C") for k, v in enumerate(raw)])
    y, ema = [], None
    for v in raw[:20]:
        ema = v if ema is None else ema + 0.5 * (v - ema)
        y.append(ema)
    got = aggs(out, "a")
    assert [(f["start"], f["count"], f["first"], f["last"], f["max"]) for f in got] == [
        (1000.0, 10, 0.0, 0.0, 0.0), (1010.0, 10, 5.0, y[19], y[19])]
    assert got[1]["mean"] == np.mean(y[10:20])


def test_the_deadband_sends_a_window_when_its_mean_moved_or_the_heartbeat_is_due():
    cfg = cfg_with("{deadband: 0.5, heartbeat_s: 40}")
    means = [20.0, 20.1, 20.2, 21.0, 21.2, 21.3, 21.4, 21.4, 30.0]  # one window of 10 equal readings each
    readings = [Reading("a", "x", m, 1000.0 + 10 * w + k, "C") for w, m in enumerate(means) for k in range(10)]
    out = run(cfg, readings + [Reading("a", "x", 0.0, 1090.0, "C")])
    # 1000 first; 1030: 21.0 moved 1.0 from 20.0; 1070: 40 s after 1030; 1080: 30.0 moved
    assert [(f["start"], f["mean"]) for f in aggs(out, "a")] == [(1000.0, 20.0), (1030.0, 21.0), (1070.0, 21.4),
                                                                 (1080.0, 30.0)]


def test_filter_state_survives_a_restart():
    cfg = cfg_with("{despike_window: 5, lowpass_alpha: 0.3, deadband: 0.05}")
    rng = np.random.default_rng(5)
    readings = [Reading("a", "x", float(v), 1000.0 + k, "C") for k, v in enumerate(20 + rng.normal(0, 1, 300))]
    whole = [m.fields for m in run(cfg, readings)]
    assert len(aggs(run(cfg, readings), "a")) > 10
    assert [m.fields for m in run(cfg, readings, cut=155)] == whole


def test_a_filters_change_applies_on_reload_without_restarting_the_driver():
    old, new = cfg_with("{despike_window: 5}"), cfg_with("{despike_window: 7}")
    p = reload.plan(old, new)
    assert (p.stop, p.start, p.keep, p.other_changed) == ((), (), ("a", "b"), ("sensors.a.filters",))
    pipe = Pipeline(old, TOPICS, batcher := Batcher())
    for r in noisy("a", 12):
        batcher.add(r)
    pipe.process(batcher.drain(), now=1012.0)
    pipe.set_filters(new.sensors)
    for r in noisy("a", 40, 30)[12:]:  # the 7-reading window is full again by 1030
        batcher.add(r)
    out = pipe.process(batcher.drain(), now=1040.0)
    assert [f["max"] for f in aggs(out, "a")] == [20.2, 20.2]


def test_a_checkpoint_carries_filter_tables_only_when_a_sensor_has_filters():
    """Zero tables in every checkpoint cost two more 1 KiB pages a minute on the SD card."""
    import msgpack

    for filters, want in (("{}", []), ("{lowpass_alpha: 0.5}", ["filters.deadband", "filters.lowpass"])):
        pipe = Pipeline(cfg_with(filters), TOPICS, batcher := Batcher())
        for r in noisy("a", 5):
            batcher.add(r)
        pipe.process(batcher.drain(), now=1005.0)
        names = msgpack.unpackb(pipe.checkpoint())["arrays"]
        assert sorted(k for k in names if k.startswith("filters.")) == want


def test_reloads_that_change_despike_windows_while_channels_appear_keep_working():
    """Review of the stop's change #1: the table of a window length no longer used did not grow with new channels,
    and the next filters change indexed past it (IndexError on every reload from then on)."""
    from edge_gateway.batcher import ChannelKey
    from edge_gateway.conditioning import Conditioning
    from edge_gateway.config import FilterSection, SensorSection

    def sensors(a, b):
        return (SensorSection("a", "sim", None, a), SensorSection("b", "sim", None, b))

    c = Conditioning(sensors(FilterSection(despike_window=5), FilterSection()))
    keys = [ChannelKey("a", "x", ""), ChannelKey("a", "y", "")]
    c.ensure(keys)
    c.set_sensors(sensors(FilterSection(despike_window=7), FilterSection()))
    c.ensure(keys + [ChannelKey("b", "p", ""), ChannelKey("b", "q", "")])
    c.set_sensors(sensors(FilterSection(despike_window=7), FilterSection(lowpass_alpha=0.5)))
    assert {k: v.shape for k, v in c.state().items()} == {"lowpass": (4, 2), "deadband": (4, 3), "hampel.7": (4, 9)}
    y = c.values(np.array([2, 3], dtype=np.int64), np.array([1.0, 2.0]))
    assert y.tolist() == [1.0, 2.0]  # b's first readings initialise its low-pass



def test_status_counts_readings_despiked_and_aggregates_held_back_per_sensor():
    """What the filters did shows in ``status`` and Prometheus (a technician tuning a deadband sees its
    effect); a sensor without filters has no such counters."""
    from drivers.base import DriverStats
    from edge_gateway.metrics import Telemetry, _collector

    cfg = config.loads("""
gateway: {id: gw}
windows: {seconds: 10, grace_s: 2}
sensors:
  - {id: a, driver: serial_line, options: {port: /dev/null}, filters: {despike_window: 5}}
  - {id: b, driver: serial_line, options: {port: /dev/null}, filters: {deadband: 0.5, heartbeat_s: 40}}
  - {id: c, driver: serial_line, options: {port: /dev/null}}
""")
    pipe = Pipeline(cfg, TOPICS, batcher := Batcher())
    means = [20.0, 20.1, 20.2, 21.0, 21.2, 21.3, 21.4, 21.4, 30.0]  # as in the deadband test above
    readings = [Reading("b", "x", m, 1000.0 + 10 * w + k, "C") for w, m in enumerate(means) for k in range(10)]
    readings += noisy("a", 40, 25) + noisy("c", 40, 25) + noisy("a", 40, 33)[33:34]
    readings += [Reading("b", "x", 0.0, 1090.0, "C")]
    out = []
    for r in sorted(readings, key=lambda r: r.ts):
        batcher.add(r)
        out += pipe.process(batcher.drain(), now=r.ts)
    assert [f["start"] for f in aggs(out, "b")] == [1000.0, 1030.0, 1070.0, 1080.0]  # 9 windows closed
    counters = pipe.conditioning.counters(batcher.keys)
    assert counters == {"a": {"despiked": 2, "deadband_held": 0}, "b": {"despiked": 0, "deadband_held": 5}}

    class Driver:
        def __init__(self, sensor_id: str) -> None:
            self.sensor_id, self.stats, self.name = sensor_id, DriverStats(), "fake"

    doc = Telemetry(lambda: 1090.0, sensor_counters=lambda: counters).sensors([Driver(s) for s in "abc"], 0.0)
    assert [(doc[s]["despiked"], doc[s]["deadband_held"]) for s in "ab"] == [(2, 0), (0, 5)]
    assert "deadband_held" not in doc["c"]
    families = {f.name: f for f in _collector(lambda: {"gateway": "gw", "sensors": doc}).collect()}
    got = {tuple(s.labels.values()): s.value for s in families["edge_gateway_sensor_filtered"].samples}
    assert got == {("gw", "a", "despiked"): 2.0, ("gw", "a", "deadband_held"): 0.0,
                   ("gw", "b", "despiked"): 0.0, ("gw", "b", "deadband_held"): 5.0}
