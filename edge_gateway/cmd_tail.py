"""``edge-gateway tail [SENSOR]``: live readings and events as they flow, until Ctrl-C.

Streams through the daemon's control socket. One line per reading
(``TIME SENSOR CHANNEL VALUE UNIT``) and per event (``TIME SENSOR EVENT ...``), all in
local time: TIME as ``14:02:11.123``, an event's other times (``end=``) as
``2024-05-01T14:02:11``, and no ``gw=`` (one gateway is asked); ``--json`` prints the
daemon's JSON lines unchanged (``gw`` included); ``--events`` shows events
only; ``--count N`` stops after N lines (for scripts and tests). The daemon
keeps about 1 MiB of unread lines per client (several pipeline rounds); a
client that falls further behind (a slow terminal, pipe or ssh link) loses
lines, for itself only, and a ``(N lines dropped ...)`` note says so; the
gateway itself never waits. At most 32 clients may be connected to the daemon;
more are refused with an error.

Exit statuses: 0 stopped by --count, or the reader of the output went away
(``tail | head -30``: quietly, no "Broken pipe"; 0 rather than the shell's 141 for a
process killed by SIGPIPE, so that a pipeline under ``set -o pipefail`` does not fail
for it), or the daemon closed the stream; 1 error;
2 bad usage (a SENSOR the gateway does not have: the error names those it
has); 3 the daemon is not running; 130 Ctrl-C.
"""

from __future__ import annotations

import json
import sys
import time


def add_to(sub) -> None:
    from .cmd_common import doc_part

    from .cmd_common import add_socket_args

    p = sub.add_parser("tail", help="follow live readings and events (Ctrl-C to stop)",
                       description=doc_part(__doc__, 1))
    p.add_argument("sensor", nargs="?", help="only this sensor")
    add_socket_args(p)
    p.add_argument("--json", action="store_true", help="JSON lines as the daemon sends them")
    p.add_argument("--events", action="store_true", help="events only")
    p.add_argument("--count", type=int, default=0, metavar="N", help="stop after N lines")
    p.set_defaults(func=handle)


def handle(args) -> int:
    from . import config, control
    from .cmd_common import error, not_running, socket_path

    try:
        path = socket_path(args)
    except config.ConfigError as exc:
        error(str(exc))
        return 2
    shown = 0
    try:
        items = control.stream(path, {"cmd": "tail", "sensor": args.sensor})
        first = next(items, None)
        if first is None or not first.get("ok"):
            error((first or {}).get("error", "the daemon closed the connection"))
            return 2 if (first or {}).get("unknown_sensor") else 1
        for item in items:
            if args.events and item.get("type") == "reading":
                continue
            if not write_line(json.dumps(item, separators=(",", ":")) if args.json else format_item(item)):
                return 0  # the reader went away (tail | head): not an error
            shown += 1
            if args.count and shown >= args.count:
                break
        else:
            error("the gateway closed the connection (stopped or restarting): see edge-gateway status")
            return 1
    except control.DaemonNotRunning as exc:
        return not_running(path, exc)
    except PermissionError:
        error(f"{path}: permission denied (run as root or as a member of the service's group)")
        return 1
    except KeyboardInterrupt:
        return 130
    except (OSError, ValueError) as exc:
        error(f"{path}: {exc}")
        return 1
    finally:
        sys.stdout.flush()
    return 0


def write_line(line: str, out=None) -> bool:
    """Print ``line`` to ``out`` (default stdout) and flush it; False once the reader has gone away
    (``tail | head -30``: a closed pipe).

    Then ``out`` goes to /dev/null (:func:`.cmd_common.quiet_closed`): whatever is still buffered, and
    any later write, goes nowhere, quietly."""
    out = sys.stdout if out is None else out
    try:
        out.write(line + "\n")
        out.flush()
        return True
    except BrokenPipeError:
        from .cmd_common import quiet_closed

        quiet_closed(out)
        return False


TIME_FIELDS = ("start", "end", "ts")  # epoch seconds in events: shown as local date and time


def clock(ts: float) -> str:
    """``14:02:11.123``, local time: how every line of ``tail`` starts, readings and events alike."""
    return time.strftime("%H:%M:%S", time.localtime(ts)) + f".{int(ts * 1000) % 1000:03d}"


def local_iso(ts: float) -> str:
    """``2024-05-01T14:02:11``: an event's other times to the second, in the same local time as the
    line's start (an event may end on another day), not an epoch float."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(ts))


def format_item(item: dict) -> str:
    """One line for people; ``--json`` prints the daemon's items (raw epoch floats) instead.

    Every text from the daemon goes through :func:`.cmd_common.printable`: a node names its channels and
    units, and writes the text of errors; a control character in them is shown (``\\x1b``), never sent
    to the terminal. ``--json`` needs none of it: JSON escapes them (``\\u001b``)."""
    from .cmd_common import printable

    kind = item.get("type")
    if kind == "reading":
        return (f"{clock(item['ts'])} {printable(item['sensor']):<12} {printable(item['channel']):<12} "
                f"{item['value']:>12g} {printable(item.get('unit', ''))}").rstrip()
    if kind == "dropped":
        return f"({printable(item['count'])} lines dropped: this tail fell too far behind the gateway)"
    ts = item.get("start") or item.get("ts") or time.time()
    rest = " ".join(f"{printable(k)}={printable(_field(k, v))}" for k, v in item.items()
                    if k not in ("type", "event", "sensor", "start", "seq", "gw") and v not in (None, ""))
    return (f"{clock(ts)} {printable(item.get('sensor', '')):<12} EVENT {printable(item.get('event', ''))} "
            f"{rest}").rstrip()


def _field(key: str, value) -> str:
    if key in TIME_FIELDS and isinstance(value, (int, float)) and not isinstance(value, bool):
        return local_iso(value)
    if key.endswith("score") and isinstance(value, float):
        return f"{value:.2f}"
    return str(value)
