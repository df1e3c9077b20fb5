"""``edge-gateway-sim NAME ...``: start one simulator by name."""

from __future__ import annotations

import importlib
import sys

SIMULATORS = {
    "serial-line": "simulators.serial_line",
    "pms5003": "simulators.pms5003",
    "city": "simulators.city",
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in SIMULATORS:
        print(f"usage: edge-gateway-sim {{{','.join(sorted(SIMULATORS))}}} [options]", file=sys.stderr)
        return 2
    return importlib.import_module(SIMULATORS[argv[0]]).main(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
