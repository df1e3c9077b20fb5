"""``edge-gateway-sim NAME ...``: start one simulator by name (``--help`` lists them)."""

from __future__ import annotations

import importlib
import sys

SIMULATORS = {
    "serial-line": "simulators.serial_line",
    "pms5003": "simulators.pms5003",
    "city": "simulators.city",
}
# One line each for the list; kept here so that listing them imports none (NumPy, aiocoap).
SUMMARIES = {
    "serial-line": "a line-protocol air-quality/noise sensor (kv, CSV or JSON lines) on a pty",
    "pms5003": "a Plantower PMS5003 particulate sensor (32-byte frames) on a pty",
    "city": "every sensor of a city block from a scenario file: serial, Modbus and CoAP, with faults",
}


def usage() -> str:
    width = max(map(len, SIMULATORS))
    rows = "".join(f"  {name:<{width}}  {SUMMARIES[name]}\n" for name in SIMULATORS)
    return (f"usage: edge-gateway-sim {{{','.join(sorted(SIMULATORS))}}} [options]\n\n"
            f"simulators (each prints its port path or endpoints; NAME --help for its options):\n{rows}")


def run_by_city(prog: str, doc: str | None, what: str, argv: list[str] | None = None) -> int:
    """``python -m PROG --help`` for a simulator module with no command line of its own (the CoAP node,
    the Modbus slave): its docstring as plain text, and that ``edge-gateway-sim city`` runs ``what``
    (the scenario's sensors of that kind). Anything but --help: exit 2 saying so."""
    import argparse

    from edge_gateway.cmd_common import plain_text

    ap = argparse.ArgumentParser(prog=prog, description=plain_text(doc or ""),
                                 epilog=f"Not a program of its own: edge-gateway-sim city SCENARIO.yaml runs {what}.")
    ap.parse_args(argv)
    ap.error("no command line of its own; run edge-gateway-sim city SCENARIO.yaml")
    return 2


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ("-h", "--help"):
        sys.stdout.write(usage())
        return 0
    if not argv or argv[0] not in SIMULATORS:
        if argv:
            print(f"edge-gateway-sim: unknown simulator {argv[0]!r}", file=sys.stderr)
        sys.stderr.write(usage())
        return 2
    module = importlib.import_module(SIMULATORS[argv[0]])
    return module.main(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
