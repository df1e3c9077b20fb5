"""``edge-gateway run CONFIG``: what the service runs."""

from __future__ import annotations

import asyncio
import faulthandler
import sys


def add_to(sub) -> None:
    p = sub.add_parser("run", help="run the gateway daemon (what the service runs)",
                       description="Run the gateway until SIGTERM or Ctrl-C. Exit 2 on an invalid config.")
    p.add_argument("config", help="YAML config file")
    p.add_argument("--log-level", choices=("debug", "info", "warning", "error"), help="override log_level")
    p.set_defaults(func=handle)


def handle(args) -> int:
    from . import config, daemon, logs

    try:
        cfg = config.load(args.config)
    except config.ConfigError as exc:
        print(f"edge-gateway: {exc}", file=sys.stderr)
        return 2
    logs.setup(args.log_level or cfg.log_level)
    # systemd's watchdog ends a hung daemon with SIGABRT: print every thread's stack to the journal first.
    # It works where the stall monitor cannot, when native code (a kernel) holds the GIL.
    faulthandler.enable()
    daemon.prepare_environment(cfg)
    from .sdnotify import Notifier

    notifier = Notifier()  # no-op unless systemd set $NOTIFY_SOCKET
    try:
        return asyncio.run(daemon.run(cfg, notifier))
    finally:
        notifier.close()
