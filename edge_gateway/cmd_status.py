"""``edge-gateway status`` and ``edge-gateway reload``: ask the running daemon through its control socket.

``status`` prints uptime, broker link, queue depth and the age of its oldest
message, one row per sensor (rate, last values, error counts), the last
anomaly events and the outcome of the last reload. ``--json`` prints the
daemon's whole status document (stable keys) for scripts.

``reload`` asks the daemon to read its config file again (as SIGHUP does) and
prints what changed (sensors started, stopped and kept; broker; detector; other
live settings), or why the new config was refused.

Exit statuses: 0 ok; 1 the daemon refused the reload / answered with an error;
2 bad usage or an unreadable ``--config``; 3 the daemon is not running
(nothing listens on the control socket); 130 Ctrl-C.
"""

from __future__ import annotations

import datetime as _dt
import time


def add_to(sub) -> None:
    from .cmd_common import add_socket_args, doc_part, positive_float

    p = sub.add_parser("status", help="show the running daemon's state (exit 3 if not running)",
                       description=doc_part(__doc__, 1))
    add_socket_args(p)
    p.add_argument("--json", action="store_true", help="print the whole status document as JSON")
    p.set_defaults(func=status)
    r = sub.add_parser("reload", help="make the daemon reload its config file (like SIGHUP)",
                       description="Reload the config; a refused config leaves the old one running (exit 1).")
    add_socket_args(r)
    r.add_argument("--json", action="store_true", help="print the daemon's answer as JSON")
    r.add_argument("--timeout", type=positive_float, default=600.0, metavar="S",
                   help="wait this long for the answer (default 600: new detector settings are compiled "
                        "first, minutes on a Pi with an empty cache)")
    r.set_defaults(func=reload)


def _ask(args, req: dict, timeout: float = 10.0):
    from . import config, control
    from .cmd_common import error, not_running, socket_path

    try:
        path = socket_path(args)
    except config.ConfigError as exc:
        error(str(exc))
        return None, 2
    try:
        return control.request(path, req, timeout), 0
    except control.DaemonNotRunning as exc:
        return None, not_running(path, exc)
    except PermissionError:
        error(f"{path}: permission denied (run as root or as a member of the service's group)")
        return None, 1
    except TimeoutError:
        error(f"{path}: no answer within {timeout:g} s; a reload may still apply (see `edge-gateway status`)")
        return None, 1
    except (OSError, ValueError) as exc:
        error(f"{path}: {exc}")
        return None, 1


def status(args) -> int:
    from .cmd_common import error, print_json

    reply, rc = _ask(args, {"cmd": "status"})
    if reply is None:
        return rc
    if not reply.get("ok"):
        error(reply.get("error", "the daemon answered with an error"))
        return 1
    s = reply["status"]
    if args.json:
        print_json(s)
    else:
        render(s)
    return 0


def render(s: dict) -> None:
    from .cmd_common import fmt_age, table

    q = s.get("queue", {})
    print(f"gateway   {s.get('gateway')}   pid {s.get('pid')}   up {fmt_age(s.get('uptime_s'))}")
    link = s.get("link")
    print(f"broker    {link}" + (f" ({s['link_error']})" if link != "up" and s.get("link_error") else ""))
    print(f"queue     {q.get('depth', s.get('queue_depth'))} messages, oldest {fmt_age(q.get('oldest_age_s'))}, "
          f"in flight {s.get('inflight')}, last seq {s.get('last_seq')}")
    c = s.get("counts", {})
    print(f"produced  {c.get('readings', 0)} readings, {c.get('aggregates', 0)} aggregates, "
          f"{c.get('events', 0)} events; published {s.get('published', {})}")
    clk = s.get("clock") or {}
    if clk.get("steps"):
        at = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(clk["last_step_at"])) if clk.get("last_step_at") else "?"
        print(f"clock     stepped {clk['steps']} time(s), last by {clk['last_step_s']:+g} s at {at}")
    r = s.get("reload", {})
    if r.get("count"):
        when = _dt.datetime.fromtimestamp(r["last_ts"]).strftime("%H:%M:%S") if r.get("last_ts") else "?"
        outcome = "ok" if r.get("last_ok") else f"REFUSED: {r.get('last_error')}"
        print(f"reload    {r['count']} ({r.get('failed', 0)} refused), last at {when}: {outcome}")
    print()
    rows = []
    for sid, st in sorted(s.get("sensors", {}).items()):
        values = ", ".join(f"{ch}={v['value'] + 0.0:g}{v.get('unit') and ' ' + v['unit'] or ''}"  # no "-0"
                           for ch, v in sorted(st.get("last_values", {}).items()))
        rows.append([sid, st.get("driver"), f"{st.get('rate_per_s', 0):.2f}/s", fmt_age(st.get("last_reading_age_s")),
                     st.get("malformed", 0), st.get("link_errors", 0), values or "-",
                     (st.get("last_error") or "")[:40]])
    table(rows, ["SENSOR", "DRIVER", "RATE", "LAST", "BAD", "LINK ERR", "LAST VALUES", "LAST ERROR"])
    filtered = [f"{sid}: {st['despiked']} despiked, {st['deadband_held']} held by the deadband"
                for sid, st in sorted(s.get("sensors", {}).items()) if "deadband_held" in st]
    if filtered:
        print("filters   " + "; ".join(filtered))
    events = s.get("last_events", [])
    if events:
        print()
        erows = [[time.strftime("%H:%M:%S", time.localtime(e.get("start", 0))), e.get("sensor"),
                  e.get("type", "") + (" (open)" if e.get("state") == "open" else ""),
                  e.get("channel", ""), _g(e.get("peak_value")), _g(e.get("peak_score")), e.get("reason", "")]
                 for e in events]
        table(erows, ["TIME", "SENSOR", "EVENT", "CHANNEL", "VALUE", "SCORE", "REASON"])


def _g(x) -> str:
    return "" if x is None else f"{x:g}"


def reload(args) -> int:
    from .cmd_common import error, print_json

    reply, rc = _ask(args, {"cmd": "reload"}, args.timeout)
    if reply is None:
        return rc
    if args.json:
        print_json(reply)
    if not reply.get("ok"):
        error(f"reload refused, the running config stays: {reply.get('error')}")
        return 1
    if not args.json:
        print(reload_line(reply.get("reload", {})))
    return 0


def reload_line(plan: dict) -> str:
    """What a reload applied, for people: lists as comma-separated names, clauses apart by ';'."""
    def names(key: str) -> str:
        return ", ".join(map(str, plan.get(key) or ())) or "-"

    def changed(key: str) -> str:
        return "changed" if plan.get(key) else "unchanged"

    return (f"reloaded: started {names('start')}; stopped {names('stop')}; kept {names('keep')}; "
            f"broker {changed('broker_changed')}; detector {changed('detector_changed')}; "
            f"other live changes: {names('other_changed')}")
