"""``edge-gateway config validate FILE``: check a config without starting anything."""

from __future__ import annotations

import sys


def add_to(sub) -> None:
    p = sub.add_parser("config", help="check and inspect the YAML config")
    csub = p.add_subparsers(dest="config_command", metavar="ACTION")
    csub.required = True
    v = csub.add_parser("validate", help="validate a config file; exit 0 if valid, 2 if not")
    v.add_argument("file")
    v.set_defaults(func=validate)


def validate(args) -> int:
    from . import config

    try:
        cfg = config.load(args.file)
    except config.ConfigError as exc:
        print(f"edge-gateway: {exc}", file=sys.stderr)
        return 2
    print(f"{args.file}: valid ({len(cfg.sensors)} sensors, gateway {cfg.gateway.id})")
    return 0
