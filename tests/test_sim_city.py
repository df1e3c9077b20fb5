"""The city block: scenario + simulators + configs/demo.yaml + every real driver.

The scenario runs twenty times faster than written (20 samples per second) for
a few seconds; the gateway config is the shipped one, with the run directory
and CoAP ports from the environment, exactly as a deployment would set them.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

import drivers
from edge_gateway import config
from edge_gateway.supervisor import Backoff, Supervisor
from simulators import scenario as sc
from simulators.city import City
from simulators.coap_node import free_udp_port

REPO = Path(__file__).resolve().parent.parent
SCENARIO = REPO / "simulators" / "scenarios" / "city_block.yaml"
CONFIG = REPO / "configs" / "demo.yaml"
RATE = 20.0
COUNT = 70


def _fast(scen: sc.Scenario) -> sc.Scenario:
    return dataclasses.replace(scen, sensors=tuple(dataclasses.replace(s, rate_hz=RATE) for s in scen.sensors))


async def test_city_block_end_to_end(tmp_path, monkeypatch):
    port = free_udp_port()
    monkeypatch.setenv("EG_RUN_DIR", str(tmp_path))
    monkeypatch.setenv("EG_COAP_PORT", str(port))
    monkeypatch.setenv("EG_COAP_PORT2", str(port + 1))
    scen = _fast(sc.load(str(SCENARIO)))
    t0 = round(time.time(), 3)
    city = City(scen, str(tmp_path), t0, COUNT, coap_port=port)
    cfg = config.load(CONFIG)
    out, gaps = [], []
    sup = Supervisor(gaps.append, Backoff(initial_s=0.05, max_s=0.2), seed=2)
    jobs = await city.start()
    try:
        for s in cfg.sensors:
            sup.start(drivers.get(s.driver)(s.id, s.options, out.append))
        await asyncio.wait_for(asyncio.gather(*jobs), 30)
        await asyncio.sleep(0.3)
    finally:
        await sup.stop()
        await city.close()

    by = {}
    for r in out:
        by.setdefault((r.sensor, r.channel), []).append(r)
    assert {s for s, _ in by} == {"air-1", "noise-1", "pm-1", "meters", "bins-1", "traffic-1"}

    def expected(sensor_id):
        s = scen.sensor(sensor_id)
        return s, sc.values(s, scen.seed, t0, 0, COUNT)

    # timestamped sensors: every received sample is exactly what was sent at that index
    for sensor_id, chans in (("air-1", ("pm25", "pm10", "no2")), ("noise-1", ("noise_db", "laeq")),
                             ("bins-1", ("bin1_fill", "bin2_fill", "bin3_fill"))):
        s, vals = expected(sensor_id)
        for ch in chans:
            got = by[(sensor_id, ch)]
            assert len(got) >= 10, (sensor_id, ch)
            for r in got:
                k = round((r.ts - t0) * RATE)
                assert r.value == pytest.approx(float(vals[ch][k])), (sensor_id, ch, k)
                assert s.delivery(k) == "ok"
    air_k = {round((r.ts - t0) * RATE) for r in by[("air-1", "pm25")]}
    assert 30 in air_k and by[("air-1", "pm25")][0].unit == "ug/m3"  # the spike arrived

    # particulates carry no time: the received sequence is the sent one minus corrupted frames
    s, vals = expected("pm-1")
    sent = [float(vals["pm2_5"][k]) for k in range(COUNT) if s.delivery(k) == "ok"]
    got = [r.value for r in by[("pm-1", "pm2_5")]]
    assert len(got) >= 20
    assert any(sent[i:i + len(got)] == got for i in range(len(sent) - len(got) + 1))

    # meters and traffic are polled: each value is one the device held at some index
    for sensor_id, ch in (("meters", "voltage"), ("meters", "pressure_bar"), ("traffic-1", "vehicles"),
                          ("traffic-1", "speed_kmh")):
        s, vals = expected(sensor_id)
        allowed = [float(v) for v in vals[ch]]
        assert by[(sensor_id, ch)], (sensor_id, ch)
        for r in by[(sensor_id, ch)]:
            assert any(r.value == pytest.approx(v, abs=1e-4) for v in allowed), (sensor_id, ch, r.value)
    assert gaps == []


def test_city_cli_prints_its_endpoints(tmp_path):
    port = free_udp_port()
    proc = subprocess.Popen([sys.executable, "-m", "simulators.cli", "city", str(SCENARIO), "--run-dir",
                             str(tmp_path), "--coap-port", str(port), "--count", "2", "--linger", "0"],
                            cwd=REPO, stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    lines, links_at_ready = [], None
    try:
        for line in proc.stdout:  # the printed ptys exist when "ready" is read (review 15 #3)
            lines.append(line.rstrip("\n"))
            if lines[-1] == "ready":
                links_at_ready = {p: os.path.realpath(p).startswith("/dev/pts/")
                                  for k, _, p in (x.split() for x in lines if x.split()[0] in ("serial", "modbus"))}
        proc.wait(30)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            proc.wait(5)
    assert proc.returncode == 0
    assert lines[0].startswith("t0 ") and lines[-1] == "ready"
    assert f"serial air-1 {tmp_path}/air-1.tty" in lines
    assert f"modbus meters {tmp_path}/meters.tty" in lines
    # what a coap sensor's options take (uri: the node only; resources: the paths), as in configs/demo.yaml
    assert [ln for ln in lines if ln.startswith("coap ")] == [
        f"coap bins-1 uri=coap://127.0.0.1:{port} resources=/bins",
        f"coap traffic-1 uri=coap://127.0.0.1:{port + 1} resources=/counts,/speed"]
    sensors = []
    for ln in lines:  # pasted into a config as printed, each is a valid coap sensor
        if ln.startswith("coap "):
            _, sid, uri, resources = ln.split(" ")
            sensors.append({"id": sid, "driver": "coap", "options": {
                "uri": uri.removeprefix("uri="),
                "resources": [{"path": p} for p in resources.removeprefix("resources=").split(",")]}})
    pasted = tmp_path / "pasted.yaml"
    pasted.write_text(yaml.safe_dump({"gateway": {"id": "g", "state_dir": str(tmp_path / "state")},
                                      "sensors": sensors}))
    assert [(s.id, s.options.uri, [r.path for r in s.options.resources]) for s in config.load(pasted).sensors] == [
        ("bins-1", f"coap://127.0.0.1:{port}", ["/bins"]),
        ("traffic-1", f"coap://127.0.0.1:{port + 1}", ["/counts", "/speed"])]
    assert links_at_ready == {str(tmp_path / f"{s}.tty"): True for s in ("air-1", "noise-1", "pm-1", "meters")}
    assert not any(tmp_path.glob("*.tty"))  # all removed at the end
    truth = tmp_path / "ground_truth.jsonl"
    assert f"truth {truth}" in lines and truth.read_text() == ""  # no fault before sample 2


def test_city_block_config_validates(monkeypatch):
    cfg = config.load(CONFIG)
    assert [s.driver for s in cfg.sensors] == ["serial_line", "serial_line", "pms5003", "modbus_rtu", "coap", "coap"]
