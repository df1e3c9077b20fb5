"""``edge-gateway status`` and ``edge-gateway reload``: ask the running daemon through its control socket.

``status`` prints uptime, broker link (down since when, when the next connect
attempt is due, and why; up since when, and the last outage), queue depth and
the age of its oldest message, one row per sensor (rate, last values, error
counts, how old its last error is, the error in full below it, and a warning
when a connected sensor has sent nothing for long), the last events (oldest
first, kept across restarts: a line says when the gateway restarted) and the
outcome of the last reload. ``--json`` prints the daemon's whole
status document (stable keys) for scripts.

``reload`` asks the daemon to read its config file again (as SIGHUP does) and
prints what changed (sensors started, stopped and kept; broker; detector; other
live settings), or why the new config was refused (mistakes of a ``--config`` file
that does not load are listed once, before the daemon is asked).

A new broker is waited for (up to 5 s) and a second line says whether it connected
(``broker changed: connected to HOST:PORT``) or not (``broker changed: NOT connected after 5 s:
...``); not connected is still exit 0: the reload applied and the gateway keeps trying.

Exit statuses: 0 ok (also a new broker not connected yet); 1 the daemon refused the reload / answered with an error;
2 bad usage or an unreadable ``--config``; 3 the daemon is not running
(nothing listens on the control socket); 130 Ctrl-C.
"""

from __future__ import annotations

import datetime as _dt
import os
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


_HOLD_ENDS = {"synced": "until the clock was synchronised without a step; released as stamped",
              "waited_out": "and it was still not synchronised (clock_sync_wait_s); released as stamped",
              "cap": "until the cap on held readings; released as stamped",
              "stopped": "until the stop; released as stamped"}


def hold_text(hold: dict) -> str:
    """The clock hold (gateway.clock_sync_wait_s) in words: while it lasts, or how it ended; "" if none was needed."""
    if hold.get("state") == "waiting":
        return (f"waiting for sync: {hold.get('waited_s', 0):g} s of {hold.get('wait_s', 0):g} s, "
                f"{hold.get('held', 0)} readings held")
    if hold.get("state") != "ended":
        return ""
    head = f"held {hold.get('released', 0)} readings {hold.get('waited_s', 0):g} s "
    if hold.get("reason") == "step":
        return head + f"until NTP stepped the clock by {hold.get('step_s') or 0:+g} s; {hold.get('redated', 0)} re-dated"
    return head + _HOLD_ENDS.get(str(hold.get("reason")), f"({hold.get('reason')})")


def render(s: dict, now: float | None = None) -> None:
    """The human view of a status document; ``now`` (wall time, default the clock) dates "down since".

    What a node or the network supplied (channel names, units, errors, event fields) is shown through
    :func:`.cmd_common.printable`: a control character in it is written as ``\\x1b``, never sent to the
    terminal, whatever the daemon passes on. ``--json`` escapes them itself (``\\u001b``)."""
    from .cmd_common import fmt_age, printable

    q = s.get("queue", {})
    print(f"gateway   {s.get('gateway')}   pid {s.get('pid')}   up {fmt_age(s.get('uptime_s'))}")
    print(broker_line(s, time.time() if now is None else now))
    print(f"queue     {q.get('depth', s.get('queue_depth'))} messages, oldest {fmt_age(q.get('oldest_age_s'))}, "
          f"in flight {s.get('inflight')}")
    c = s.get("counts", {})
    print(f"produced  {c.get('readings', 0)} readings, {c.get('aggregates', 0)} aggregates, "
          f"{c.get('events', 0)} events; {published_text(s.get('published') or {})}")
    win = s.get("windows")
    if win:
        every = "tumbling" if win.get("hop_s") is None else f"hopping, one every {win['hop_s']:g} s"
        print(f"windows   {win['seconds']:g} s, {every} (grace {win['grace_s']:g} s)")
    clk = s.get("clock") or {}
    if clk.get("steps"):
        at = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(clk["last_step_at"])) if clk.get("last_step_at") else "?"
        print(f"clock     stepped {clk['steps']} time(s), last by {clk['last_step_s']:+g} s at {at}")
    held = hold_text(clk.get("hold") or {})
    if held:
        print(("          " if clk.get("steps") else "clock     ") + held)
    r = s.get("reload", {})
    if r.get("count"):
        when = _dt.datetime.fromtimestamp(r["last_ts"]).strftime("%H:%M:%S") if r.get("last_ts") else "?"
        why = [printable(line) for line in str(r.get("last_error") or "").splitlines()] or [""]
        outcome = "ok" if r.get("last_ok") else f"REFUSED: {why[0]}"
        print(f"reload    {r['count']} ({r.get('failed', 0)} refused), last at {when}: {outcome}")
        for more in [] if r.get("last_ok") else why[1:]:  # a config with several mistakes: one a line
            print(f"          {more}")
    print()
    sensors_table(s.get("sensors", {}))
    filtered = [f"{sid}: {st['despiked']} despiked, {st['deadband_held']} held by the deadband"
                for sid, st in sorted(s.get("sensors", {}).items()) if "deadband_held" in st]
    if filtered:
        print("filters   " + "; ".join(filtered))
    events = s.get("last_events", [])
    if events:
        print()
        events_table(events)


def ago(seconds: float) -> str:
    """A duration for a sentence ("12 s", "3 min", "5.2 h", "2.0 d"): fmt_age's "12s" reads as a unit code."""
    from .cmd_common import duration

    return duration(max(0.0, float(seconds)), (" s", " min", " h", " d"))


def broker_line(s: dict, now: float) -> str:
    """The broker link in one line, times local (a technician compares them with the broker's log).

    Down: since when (and how long), when the next connect attempt is due while the link waits in its
    reconnect backoff (a broker back up is not taken for one still refusing), and why::

        broker    down since 19:45:30 (99 s): connect to ... failed: Connection refused; next attempt in 12 s

    Up: since when, and the last outage, if any::

        broker    up since 19:47:14; last down 19:45:30-19:47:14 (104 s)

    A daemon that does not report these ``uplink`` keys (older) gets the plain state."""
    link = s.get("link")
    up = s.get("uplink") or {}
    line = f"broker    {link}"
    if link == "up":
        outage = up.get("last_outage") or {}
        since = up.get("up_since") or outage.get("end")
        if since:
            line += f" since {_hms(since)}"
        if outage.get("start") and outage.get("end"):
            line += (f"; last down {_hms(outage['start'])}-{_hms(outage['end'])} "
                     f"({ago(outage['end'] - outage['start'])})")
        return line
    since = up.get("down_since")
    if since:
        line += f" since {_hms(since)} ({ago(now - since)})"
    if s.get("link_error"):
        from .cmd_common import printable

        line += f": {printable(s['link_error'])}"
    wait = up.get("next_attempt_in_s")
    if wait is not None:
        line += f"; next attempt in {ago(wait) if wait >= 1 else 'under 1 s'}"
    return line


def _hms(ts: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(ts))


KIND_NAMES = {"agg": "aggregates", "event": "events"}


def published_text(published: dict) -> str:
    """``published: 266 aggregates, 12 events`` (then any other kind by its own name), not a dict."""
    counts = {"agg": 0, "event": 0, **published}
    return "published: " + ", ".join(f"{n} {KIND_NAMES.get(k, k)}" for k, n in counts.items())


def sensor_notes(st: dict) -> list[str]:
    """The lines under a sensor's row: its last error in full (the row says how old it is), and a
    warning when a connected sensor has been silent past ``no_data_after_s`` (see
    :func:`.metrics.no_data_after`)."""
    from .cmd_common import printable

    notes = []
    if st.get("last_error"):
        notes.append(f"last error: {printable(st['last_error'])}")
    if st.get("bad_time"):
        n = st["bad_time"]
        notes.append(f"warning: {n} reading{'s' * (n != 1)} dropped, stamped outside epoch seconds 0 to 1e11 "
                     "(the sensor's clock not set, or milliseconds)")
    quiet, limit = st.get("no_data_s"), st.get("no_data_after_s")
    if quiet is not None and limit is not None and quiet >= limit:
        since_connect = (st.get("last_reading_ts") or 0) < (st.get("last_connect_ts") or 0)
        expected = st.get("expected_interval_s")
        notes.append(f"warning: no data for {ago(quiet)}" + (" since connect" if since_connect else "")
                     + (f" (expected every {expected:g} s)" if expected else ""))
    return notes


def sensors_table(sensors: dict) -> None:
    """One row per sensor; the LAST ERROR column says how old the error is, the full text follows on
    an indented line (a reason cut at a column width loses what it says). Channel names and units (a
    node's) are shown through :func:`.cmd_common.printable`, as the error is."""
    from .cmd_common import fmt_age, table

    rows, notes = [], []
    for sid, st in sorted(sensors.items()):
        values = ", ".join(f"{ch}={v['value'] + 0.0:g}{v.get('unit') and ' ' + v['unit'] or ''}"  # no "-0"
                           for ch, v in sorted(st.get("last_values", {}).items()))
        err = ""
        if st.get("last_error"):
            age = st.get("last_error_age_s")
            err = "yes" if age is None else f"{ago(age)} ago"
            if st.get("last_error_before_reconnect"):
                err += " (before reconnect)"
        rows.append(_printable([sid, st.get("driver"), f"{st.get('rate_per_s', 0):.2f}/s",
                                fmt_age(st.get("last_reading_age_s")), st.get("malformed", 0),
                                st.get("link_errors", 0), values or "-", err]))
        notes.append(sensor_notes(st))
    table(rows, ["SENSOR", "DRIVER", "RATE", "LAST", "BAD", "LINK ERR", "LAST VALUES", "LAST ERROR"], notes=notes)


def events_table(events: list[dict]) -> None:
    """The recent events, oldest first; an anomaly's REASON is the detector that raised it.

    EVENT says how long an event lasted once it is over (``anomaly 5.9 s``, ``link_gap 11.1 s``),
    ``(open)`` while an anomaly still runs, ``(closed)`` for one closed without an end.

    The daemon keeps them across restarts (see :func:`.metrics.pack_events` for what a power cut
    loses). Those from before a restart (``before_restart``: when it restarted) come first, each run's
    oldest first, and a line under them says when it restarted::

        12:00:05  air-1    anomaly (open)   pm25     100    1.00   detector range
            -- gateway restarted at 12:03:10 --
        12:03:40  air-1    anomaly (open)   pm25     100    1.00   detector range

    A run's events stay above the restart that ended it even if the clock stepped back at the restart."""
    from .cmd_common import table

    runs: dict = {}  # before_restart -> events, in the order the daemon kept them (runs oldest first)
    for e in events:
        runs.setdefault(e.get("before_restart"), []).append(e)
    rows, notes = [], []
    for restart in sorted(runs, key=lambda r: r is None):  # this run's events (None) last
        for at, e in sorted(((e.get("start") or e.get("ts") or 0, e) for e in runs[restart]), key=lambda p: p[0]):
            reason = e.get("reason") or (f"detector {e['detector']}" if e.get("detector") else "")
            rows.append(_printable([_hms(at), e.get("sensor"), event_name(e), e.get("channel", ""),
                                    _g(e.get("peak_value")), _score(e.get("peak_score")), reason]))
            notes.append([])
        if restart is not None:
            notes[-1] = [restart_line(restart)]
    table(rows, ["TIME", "SENSOR", "EVENT", "CHANNEL", "VALUE", "SCORE", "REASON"], notes=notes)


def _printable(row: list) -> list:
    """A table row with each text cell through :func:`.cmd_common.printable` (a line end in one would
    also have split it into several lines)."""
    from .cmd_common import printable

    return [printable(c) if isinstance(c, str) else c for c in row]


def restart_line(at: float) -> str:
    """The line under the events of a run that ended with a restart at ``at`` (local time)."""
    return f"-- gateway restarted at {_hms(at)} --"


def event_name(e: dict) -> str:
    """The EVENT cell: the type, then ``(open)``, the duration once it ended, or ``(closed)``."""
    kind = e.get("type", "")
    if e.get("state") == "open":
        return f"{kind} (open)"
    start, end = e.get("start"), e.get("end")
    if isinstance(start, (int, float)) and isinstance(end, (int, float)) and end >= start:
        d = end - start
        return f"{kind} {d:.1f} s" if d < 120 else f"{kind} {ago(d)}"
    return f"{kind} (closed)" if e.get("state") == "closed" else kind


def _g(x) -> str:
    return "" if x is None else f"{x:g}"


def _score(x) -> str:
    """Scores to 2 decimals: more digits are noise to a reader."""
    return "" if x is None else f"{x:.2f}"


def reload(args) -> int:
    from .cmd_common import error, print_json

    noted = _load_note(args)
    reply, rc = _ask(args, {"cmd": "reload"}, args.timeout)
    if reply is None:
        return rc
    if args.json:
        print_json(reply)
    if not reply.get("ok"):
        why = str(reply.get("error"))
        lines = why.splitlines()
        new = [line for line in lines if not _said(line, noted)]
        if lines and not new:
            error("reload refused, the running config stays: for the mistakes above")
        elif len(new) < len(lines):
            error("\n".join(new), lead="reload refused, the running config stays: for the mistakes above and ")
        else:
            error(f"reload refused, the running config stays: {why}")
        return 1
    if not args.json:
        print(reload_line(reply.get("reload", {})))
        link = broker_link_line(reply.get("reload", {}))
        if link:
            print(link)
    return 0


def _load_note(args) -> tuple[str, list[str]]:
    """The mistakes :func:`.cmd_common.socket_path` is about to print about ``--config`` (the file does
    not load; the daemon is asked anyway): ``(source, lines)``, ``("", [])`` if it prints none. A
    daemon that reads the same file refuses the reload for the same mistakes: said once, not twice."""
    from . import config

    if getattr(args, "socket", None) or not getattr(args, "config", None):
        return "", []
    try:
        config.load(args.config)
    except config.ConfigError as exc:
        return exc.source, str(exc).splitlines()
    except Exception:  # noqa: BLE001 - socket_path says what is wrong with the file
        pass
    return "", []


def _said(line: str, noted: tuple[str, list[str]]) -> bool:
    """``line`` of the daemon's refusal is one of the ``noted`` mistakes, wherever the daemon names its
    file from (``gw.yaml:3:21: ...`` here, ``/etc/edge-gateway/gw.yaml:3:21: ...`` in the daemon)."""
    source, lines = noted
    for mine in lines:
        if line == mine:
            return True
        rest = mine[len(source):] if source and mine.startswith(source) else ""
        if rest and line.endswith(rest) and line[:-len(rest)].endswith(os.path.basename(source)):
            return True
    return False


def reload_line(plan: dict) -> str:
    """What a reload applied, for people: lists as comma-separated names, clauses apart by ';'."""
    def names(key: str) -> str:
        return ", ".join(map(str, plan.get(key) or ())) or "-"

    def changed(key: str) -> str:
        return "changed" if plan.get(key) else "unchanged"

    return (f"reloaded: started {names('start')}; stopped {names('stop')}; kept {names('keep')}; "
            f"broker {changed('broker_changed')}; detector {changed('detector_changed')}; "
            f"other live changes: {names('other_changed')}")


def broker_link_line(plan: dict) -> str:
    """The outcome of a new broker, on the line after :func:`reload_line` (empty when the broker did
    not change, or from an older daemon that does not wait for it)::

        broker changed: connected to 10.0.0.5:1883
        broker changed: NOT connected after 5 s: connect to ... failed: ...; the gateway keeps trying
        (edge-gateway status); to undo, set broker back and reload

    Still exit 0: the reload applied; the link keeps trying (a broker down for maintenance is not a
    wrong setting). Exit 1 stays "refused"."""
    b = plan.get("broker_link")
    if not plan.get("broker_changed") or not isinstance(b, dict):
        return ""
    where = f"{b.get('host')}:{b.get('port')}"
    if b.get("connected"):
        return f"broker changed: connected to {where}"
    line = f"broker changed: NOT connected after {b.get('waited_s', 0):g} s: {b.get('error') or 'no answer'}; "
    if b.get("rolled_back"):
        return line + "the previous broker settings were put back (the reload came over MQTT)"
    return line + "the gateway keeps trying (edge-gateway status); to undo, set broker back and reload"

