"""The CLI's tables (``status``, ``doctor``): a cell of several lines takes several rows, in its column."""

from __future__ import annotations

import io

from edge_gateway.cmd_common import table
from ops_support import cli


def test_a_cell_of_several_lines_stays_in_its_column():
    out = io.StringIO()
    table([["FAIL", "config", "a.yaml:3:21: x: must be positive\na.yaml:5:9: broker.port: bad"], ["OK", "clock", "in sync"]],
          ["STATUS", "CHECK", "DETAIL"], out=out)
    assert out.getvalue().splitlines() == [
        "STATUS  CHECK   DETAIL",
        "------  ------  --------------------------------",
        "FAIL    config  a.yaml:3:21: x: must be positive",
        "                a.yaml:5:9: broker.port: bad",
        "OK      clock   in sync"]


def test_doctor_lists_each_config_mistake_on_its_own_line(tmp_path):
    """Several mistakes used to go into one DETAIL cell, the table as wide as all of them together."""
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("gateway:\n  id: gw\n  batch_interval_s: -1\nbroker:\n  port: 99999\n")
    r = cli("doctor", cfg, "--skip", "clock", "--skip", "user", env={"COLUMNS": ""})  # unwrapped (xdist sets 80)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    lines = r.stdout.splitlines()
    assert lines[2:4] == [f"FAIL    config  {cfg}:3:21: gateway.batch_interval_s: must be positive",
                          f"                {cfg}:5:9: broker.port: 99999 is not a TCP port"], r.stdout
    assert len(lines[1]) == len(lines[2])  # the rule is as wide as the longest line, not the two together
