"""``edge-gateway run CONFIG``: what the service runs."""

from __future__ import annotations

import asyncio
import errno
import faulthandler
import sys

# not retried by the unit (RestartPreventExitStatus=2): a restart cannot make the folder writable
_NOT_ALLOWED = (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR)
_SANDBOX_HINT = " (under the service unit only /var/lib/edge-gateway is writable)"


def add_to(sub) -> None:
    p = sub.add_parser("run", help="run the gateway daemon (what the service runs)",
                       description="Run the gateway until SIGTERM or Ctrl-C. Exit 2 on an invalid config or a state "
                                   "directory it may not write.")
    p.add_argument("config", help="YAML config file")
    p.add_argument("--log-level", choices=("debug", "info", "warning", "error"), help="override log_level")
    p.set_defaults(func=handle)


def handle(args) -> int:
    from . import config, daemon, logs

    try:
        cfg = config.load(args.config)
    except config.ConfigError as exc:
        from .cmd_common import error  # only now: the daemon does not keep the commands' helpers resident

        error(exc)  # every mistake, one a line
        return 2
    logs.setup(args.log_level or cfg.log_level)
    # systemd's watchdog ends a hung daemon with SIGABRT: print every thread's stack to the journal first.
    # It works where the stall monitor cannot, when native code (a kernel) holds the GIL.
    faulthandler.enable()
    try:
        daemon.prepare_environment(cfg)
    except OSError as exc:
        print(f"edge-gateway: gateway.state_dir: cannot use {cfg.state_dir}: {exc.strerror or exc}"
              f"{_SANDBOX_HINT if exc.errno in _NOT_ALLOWED else ''}", file=sys.stderr)
        return 2 if exc.errno in _NOT_ALLOWED else 1
    from .sdnotify import Notifier

    notifier = Notifier()  # no-op unless systemd set $NOTIFY_SOCKET
    try:
        return asyncio.run(daemon.run(cfg, notifier))
    finally:
        notifier.close()
