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
    if "-h" in argv[1:] or "--help" in argv[1:]:
        return _plain_help(module, argv[1:])
    return module.main(argv[1:])


def _plain_help(module, argv: list[str]) -> int:
    """``NAME --help``: the simulator's help with the reST markup of its docstring taken out
    (argparse prints it and exits while parsing, before the simulator starts)."""
    import contextlib
    import io

    from edge_gateway.cmd_common import plain_text

    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            status = module.main(argv)
    except SystemExit as exc:
        status = exc.code
    sys.stdout.write(plain_text(out.getvalue()))
    return status if isinstance(status, int) else (0 if status is None else 1)


if __name__ == "__main__":
    sys.exit(main())
