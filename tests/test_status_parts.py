"""``status`` shows counters per Modbus block and per CoAP resource, not only per sensor."""

from __future__ import annotations

import drivers
from edge_gateway import config
from edge_gateway.metrics import Telemetry

CFG = """\
gateway: {id: gw}
sensors:
  - id: meter
    driver: modbus_rtu
    options:
      port: /dev/null
      blocks:
        - {name: main, slave: 1, address: 0, count: 2, fields: [{name: kwh, offset: 0, type: uint32}]}
        - {name: sub, slave: 2, address: 0, count: 1, fields: [{name: v, offset: 0}]}
  - id: node
    driver: coap
    options:
      uri: coap://127.0.0.1
      resources: [{path: /temp}, {path: /hum}]
  - id: line
    driver: serial_line
    options: {port: /dev/null}
"""


def test_status_has_per_block_and_per_resource_counters():
    cfg = config.loads(CFG)
    built = [drivers.get(s.driver)(s.id, s.options, lambda r: None) for s in cfg.sensors]
    meter, node, line = built
    meter.blocks["sub"].timeouts = 3
    meter.blocks["sub"].late = 1
    node.resources["/hum"].errors = 2
    node.resources["/hum"].last_code = "5.03"
    out = Telemetry(lambda: 100.0).sensors(built, started=0.0)
    assert out["meter"]["parts"]["sub"] == {"requests": 0, "responses": 0, "timeouts": 3, "exceptions": 0,
                                            "bad_frames": 0, "late": 1, "last_exception": 0}
    assert out["meter"]["parts"]["main"]["timeouts"] == 0
    assert sorted(out["node"]["parts"]) == ["/hum", "/temp"]
    assert out["node"]["parts"]["/hum"]["errors"] == 2
    assert out["node"]["parts"]["/hum"]["last_code"] == "5.03"
    assert "parts" not in out["line"]
