"""Changing a running gateway (reload, downlink ``set``) against real parts: a reload during the start-up,
a corrected unit, detector settings that need a new kernel, and the checks ``event_threshold`` shares
with ``threshold``.
"""

from __future__ import annotations

import signal
import textwrap
import time
from pathlib import Path

import pytest

from edge_gateway import config
from edge_gateway.analytics.chain import Detector
from edge_gateway.analytics.engine import Engine
from edge_gateway.detector_groups import detector_settings
from ops_support import Commands, cli, polled_status, status_json
from support import GatewayProcess, Subscriber, wait_for
from test_daemon_startup import DETECTOR_KERNEL, Notifications, detector_lookups, numba_cache_copy, simulator


def gateway_yaml(tmp_path: Path, port: int, sensors: list[str], *, commands: str = "[ping]", extra: str = "",
                 units: str = "ug/m3") -> Path:
    """A gateway config whose serial sensors ``sensors`` read ``tmp_path/<id>.tty``."""
    cfg = tmp_path / "gw.yaml"
    body = "".join(f"  - {{id: {sid}, driver: serial_line, options: {{port: {tmp_path / sid}.tty, format: kv, "
                   f"units: {{pm25: {units}}}}}}}\n" for sid in sensors)
    cfg.write_text(textwrap.dedent(f"""\
        gateway: {{id: ops-gw, topic_prefix: city, state_dir: {tmp_path}/state, batch_interval_s: 0.05,
                  status_interval_s: 0.5}}
        broker: {{host: 127.0.0.1, port: {port}, keepalive_s: 5, commands: {commands}}}
        windows: {{seconds: 0.5, grace_s: 0.2}}
        """) + textwrap.dedent(extra) + ("sensors:\n" + body if sensors else ""))
    return cfg


def aggregates(sub: Subscriber, sensor: str) -> list[dict]:
    return sorted((m.data for m in sub.snapshot() if m.topic.endswith(f"/agg/{sensor}")), key=lambda d: d["seq"])


def test_a_reload_during_the_start_up_starts_a_new_sensor_once(tmp_path, broker):
    """The config gains air-2 while the kernels warm, and an MQTT ``reload`` command and a SIGHUP come in then:
    air-2 runs once, and once removed, nothing of it is read or published any more."""
    sims = [simulator(tmp_path / f"{sid}.tty", seed=i) for i, sid in enumerate(("air-1", "air-2"))]
    cfg = gateway_yaml(tmp_path, broker.port, ["air-1"], commands="[reload]")
    sock = tmp_path / "state" / "control.sock"
    sub = Subscriber(broker.port, "city/ops-gw/#").start()
    gw = GatewayProcess(cfg, tmp_path / "gw-1.log").start()  # its session subscribes to cmd/+
    try:
        gw.wait_ready()
        broker.wait_subscribed("edge-gateway-ops-gw", "city/ops-gw/cmd/+")  # in its session from now on
    finally:
        assert gw.stop() == 0, gw.log_text()[-3000:]
    cmd = Commands(broker.port)
    rx = Notifications(tmp_path / "notify.sock")
    try:
        gw = GatewayProcess(cfg, tmp_path / "gw-2.log", env=rx.env()).start()
        wait_for(lambda: "STATUS=warming analytics kernels" in rx.messages(), 30, 0.005, "the warm-up")
        gateway_yaml(tmp_path, broker.port, ["air-1", "air-2"], commands="[reload]")
        cmd.send("reload", 1)  # to the session, which holds it until the gateway has connected
        gw.proc.send_signal(signal.SIGHUP)
        assert "READY=1" not in rx.messages(), "the warm-up was too short"
        gw.wait_ready()
        assert cmd.reply(1)["ok"]
        wait_for(lambda: polled_status(sock)["reload"]["count"] == 2, 20, 0.1, "both reloads applied")
        wait_for(lambda: polled_status(sock)["sensors"].get("air-2", {}).get("readings", 0) >= 10, 20, 0.1, "air-2")
        s = status_json(sock)
        assert s["reload"]["ok"] == 2 and s["sensors"]["air-2"]["connects"] == 1, s["sensors"]["air-2"]
        assert s["sensors"]["air-2"]["link_errors"] == 0, s["sensors"]["air-2"]

        gateway_yaml(tmp_path, broker.port, ["air-1"], commands="[reload]")
        gw.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: polled_status(sock)["reload"]["count"] == 3, 20, 0.1, "air-2 removed")
        assert list(status_json(sock)["sensors"]) == ["air-1"]
        time.sleep(0.8)  # its last windows close (0.5 s + 0.2 s grace)
        n = len(aggregates(sub, "air-2"))
        time.sleep(1.0)
        assert len(aggregates(sub, "air-2")) == n, "air-2 is still read and published after its removal"
        assert len(aggregates(sub, "air-1")) > 0
    finally:
        cmd.stop()
        for sim in sims:
            sim.stop()
        rc = gw.stop()
        rx.close()
        sub.stop()
    assert rc == 0, gw.log_text()[-3000:]


def test_a_unit_corrected_by_reload_is_published_and_kept_after_a_restart(tmp_path, broker):
    """pm25 configured as ug/m3, corrected to mg/m3 by `edge-gateway reload`: the aggregates then carry mg/m3,
    the old unit's open window closes under ug/m3, and a restart (its checkpoint holds both) keeps mg/m3."""
    sim = simulator(tmp_path / "air-1.tty")
    cfg = gateway_yaml(tmp_path, broker.port, ["air-1"])
    sub = Subscriber(broker.port, "city/ops-gw/#").start()
    gw = GatewayProcess(cfg, tmp_path / "gw-1.log").start()
    try:
        gw.wait_ready()
        wait_for(lambda: len(aggregates(sub, "air-1")) >= 6, 20, 0.1, "aggregates in ug/m3")
        gateway_yaml(tmp_path, broker.port, ["air-1"], units="mg/m3")
        r = cli("reload", "--config", cfg, timeout=30)
        assert r.returncode == 0, r.stdout + r.stderr
        seq0 = max(d["seq"] for d in aggregates(sub, "air-1"))

        def pm25_after(seq: int) -> list[str]:
            return [d["unit"] for d in aggregates(sub, "air-1") if d["channel"] == "pm25" and d["seq"] > seq]

        wait_for(lambda: pm25_after(seq0).count("mg/m3") >= 4, 20, 0.1, "aggregates in mg/m3")
        after = pm25_after(seq0)
        assert after.count("ug/m3") <= 1 and after[-1] == "mg/m3", after  # ug/m3: the window open at the reload
        assert gw.stop() == 0, gw.log_text()[-3000:]

        seq1 = max(d["seq"] for d in aggregates(sub, "air-1"))
        gw = GatewayProcess(cfg, tmp_path / "gw-2.log").start()
        gw.wait_ready()
        wait_for(lambda: len(pm25_after(seq1)) >= 3, 20, 0.1, "aggregates after the restart")
        assert set(pm25_after(seq1)) == {"mg/m3"}, pm25_after(seq1)
    finally:
        sim.stop()
        rc = gw.stop()
        sub.stop()
    assert rc == 0, gw.log_text()[-3000:]


def test_a_reload_compiles_new_detector_settings_before_they_apply(tmp_path):
    """A reload that gives air-1 its own detector settings: the kernel for them is looked up (compiled, when
    not cached) before the reload applies, none after (that would be on the event loop)."""
    sim = simulator(tmp_path / "air-1.tty")
    cfg = gateway_yaml(tmp_path, 1, ["air-1"], commands="[]")
    sock = tmp_path / "state" / "control.sock"
    gw = GatewayProcess(cfg, tmp_path / "gw.log", env={"NUMBA_DEBUG_CACHE": "1"}).start()
    try:
        gw.wait_ready()
        gateway_yaml(tmp_path, 1, ["air-1"], commands="[]", extra="""\
            detector:
              sensors:
                air-1: {params: {weights: [0, 0, 0, 0.5, 1, 0, 0, 1], cusum_k: 1.5}}
            """)
        gw.proc.send_signal(signal.SIGHUP)  # `edge-gateway reload` gives up after 10 s: a cold compile may take more
        wait_for(lambda: polled_status(sock)["reload"]["ok"] == 1, 120, 0.1, "the reload applied")
        n = status_json(sock)["counts"]["readings"]
        wait_for(lambda: polled_status(sock)["counts"]["readings"] >= n + 30, 20, 0.1, "readings scored after it")
    finally:
        sim.stop()
        rc = gw.stop()
    log = gw.log_text()
    assert rc == 0, log[-3000:]
    ready, applied = log.index("running:"), log.index("config reloaded from")
    late = [p for p in detector_lookups(log) if p > ready]
    assert late and max(late) < applied, "the new detector kernel was looked up after the reload:\n" + log[applied:][:3000]


def test_set_compiles_new_detector_settings_off_the_event_loop(tmp_path, broker):
    """Downlink ``set range_hi`` switches the range guard on: a kernel the cache does not hold. The compile
    (seconds here, minutes on a Pi) runs beside the event loop: the watchdog pings and the aggregates go
    on, the reply comes when the settings apply. ``event_threshold`` is refused outside (0, 1], as
    ``threshold`` is."""
    _warm_shared_cache()
    sim = simulator(tmp_path / "air-1.tty")
    rx = Notifications(tmp_path / "notify.sock")
    cache = numba_cache_copy(tmp_path / "numba")
    cfg = gateway_yaml(tmp_path, broker.port, ["air-1"], commands="[set]")
    sub = Subscriber(broker.port, "city/ops-gw/#").start()
    gw = GatewayProcess(cfg, tmp_path / "gw.log", env={**rx.env(watchdog_usec=400_000),
                                                       "NUMBA_CACHE_DIR": str(cache)}).start()
    cmd = None
    try:
        gw.wait_ready()
        wait_for(lambda: len(aggregates(sub, "air-1")) >= 3, 20, 0.1, "aggregates")
        broker.wait_subscribed("edge-gateway-ops-gw", "city/ops-gw/cmd/+")
        cmd = Commands(broker.port)
        cmd.send("set", 1, name="event_threshold", value=5.0)
        refused = cmd.reply(1)
        assert refused["ok"] is False and "event_threshold" in refused["error"] and "(0, 1]" in refused["error"]

        for f in cache.glob(f"*/*.{DETECTOR_KERNEL}-*"):  # the running kernels are loaded: the next is compiled
            f.unlink()
        t_set = time.monotonic()
        cmd.send("set", 2, name="range_hi", value=1e6)
        counts = []  # (time, aggregates at the subscriber) while the reply is awaited
        while not any(r.get("id") == 2 for r in cmd.replies) and time.monotonic() - t_set < 120:
            counts.append((time.monotonic(), len(aggregates(sub, "air-1"))))
            time.sleep(0.1)
        assert cmd.reply(2) == {"id": 2, "ok": True, "result": {"range_hi": 1e6}}
        t_reply = time.monotonic()
        time.sleep(1.5)
        t_end = time.monotonic()
    finally:
        if cmd:
            cmd.stop()
        sim.stop()
        rc = gw.stop()
        rx.close()
        sub.stop()
    log = gw.log_text()
    assert rc == 0, log[-3000:]
    took = float(log.split("detector kernels for the new settings ready in ")[-1].split(" s")[0])
    assert took > 1.0, f"no compile to test: {took} s"
    pings = [t for t, m in rx.got if m == "WATCHDOG=1" and t >= t_set - 0.5] + [t_end]
    gap = max(b - a for a, b in zip(pings, pings[1:]))
    # a compile on the event loop would stop the pings for all of it; on a machine loaded by other
    # tests the pings themselves come late, and so does the compile's end
    assert gap < max(1.0, 0.5 * took), \
        f"{gap:.1f} s without a watchdog ping; compile {took:.1f} s, reply after {t_reply - t_set:.1f} s"
    assert "event loop blocked" not in log
    during = [n for t, n in counts if t_set + 0.5 < t < t_reply - 0.5]
    assert during and during[-1] > during[0], "no aggregate published during the compile"
    assert "detector parameter range_hi set to" in log


@pytest.mark.parametrize("where, line", [("params: {event_threshold: 5}", 9),
                                         ("sensors:\n    air-1: {params: {event_threshold: 0}}", 10)])
def test_event_threshold_is_checked_like_threshold(where, line):
    text = ("gateway: {id: gw-1}\nsensors:\n  - id: air-1\n    driver: serial_line\n    options:\n"
            "      port: /dev/ttyUSB0\ndetector:\n  threshold: 0.5\n  " + where + "\n")
    with pytest.raises(config.ConfigError) as info:
        config.loads(text, "site.yaml")
    e = info.value
    assert e.line == line and e.path.endswith("params.event_threshold"), str(e)
    assert str(e).endswith("event_threshold: the combined score is in [0, 1]; give a value in (0, 1]")
    assert config.loads(text.replace("event_threshold: 5", "event_threshold: 1").replace(
        "event_threshold: 0}", "event_threshold: 0.3}"), "site.yaml").detector


def _warm_shared_cache() -> None:
    """The default kernels into the session's shared Numba cache, so a copy of it starts warm."""
    Engine(0.5).warm()
    Detector(detector_settings(config.DetectorSection())).warm()
