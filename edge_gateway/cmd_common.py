"""Helpers shared by the technician's subcommands: tables, JSON output, finding the control socket.

Not a subcommand itself (it is not in ``cli._COMMAND_MODULES``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
from pathlib import Path

DEFAULT_CONFIG = "/etc/edge-gateway/gateway.yaml"
DEFAULT_STATE_DIR = "/var/lib/edge-gateway"


def quiet_closed(out) -> None:
    """Point ``out``'s file descriptor at /dev/null once its reader has gone (a closed pipe: ``status |
    head``), as the Python docs advise (``signal`` module, "Note on SIGPIPE"): Python ignores SIGPIPE, so
    the interpreter's own flush at exit would raise BrokenPipeError again and print "Exception ignored"."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, out.fileno())
    finally:
        os.close(devnull)


def add_socket_args(p) -> None:
    p.add_argument("--socket", metavar="PATH",
                   help="control socket (default: <state_dir>/control.sock of --config, "
                        "$EG_CONTROL_SOCKET, or /var/lib/edge-gateway/control.sock)")
    p.add_argument("--config", "-c", metavar="FILE", help="config file to find the state directory in")


def not_running(path: Path, exc: Exception) -> int:
    """Say why nothing answers on the control socket ``path``; the exit status: 4 while a gateway
    holds its state directory but has not opened the socket yet (compiling kernels), else 3."""
    from .statelock import holder

    pid = holder(path.parent)
    if pid is not None:
        error(f"the gateway (pid {pid}) is starting: it answers once its analytics kernels are compiled "
              "(seconds; minutes at a Pi's first start); ask again shortly")
        return 4
    error(f"the daemon is not running: {exc}")
    error("start it with `systemctl start edge-gateway` or `edge-gateway run CONFIG`; "
          "if it runs with another config, pass --config FILE (or --socket PATH)")
    return 3


def socket_path(args) -> Path:
    """Where the daemon's control socket is, from --socket, --config, $EG_CONTROL_SOCKET or the default."""
    if getattr(args, "socket", None):
        return Path(args.socket)
    if getattr(args, "config", None):
        return _config_socket(args.config)
    env = os.environ.get("EG_CONTROL_SOCKET")
    if env:
        return Path(env)
    if os.path.exists(DEFAULT_CONFIG):
        from . import config

        try:
            return config.load(DEFAULT_CONFIG).control_socket
        except config.ConfigError:
            pass
    return Path(DEFAULT_STATE_DIR) / "control.sock"


def _config_socket(path: str) -> Path:
    """The control socket of the config ``path``. A file that does not load (edited, not reloaded yet)
    says so on stderr, and its ``gateway.state_dir`` is read leniently: the daemon keeps running the
    config it loaded last, and a technician must still reach it (status, tail, reload and its refusal).
    ConfigError only if the file cannot be read at all."""
    from . import config

    try:
        return config.load(path).control_socket
    except config.ConfigError as exc:
        state_dir = config.read_state_dir(path)
        error(exc)
    if state_dir is None:
        sock = Path(DEFAULT_STATE_DIR) / "control.sock"
        error(f"note: no gateway.state_dir could be read from {path}; asking the daemon at the default {sock}")
    else:
        sock = state_dir / config.CONTROL_SOCKET
        error(f"note: asking the daemon at {sock} anyway: it keeps running the config it loaded last")
    return sock


def printable(text: object) -> str:
    """``text`` (``str()`` of it) safe for a terminal: each character that is not printable
    (:meth:`str.isprintable`: ESC, BEL, NUL, line ends, C1 controls, bidi overrides) written as repr
    writes it (``\\x1b``, ``\\n``, ``\\u202e``), the rest unchanged (``µg/m³`` stays, and so does a
    backslash: the text is for reading, not for parsing back). For what a sensor or node supplied
    (channel names, units, errors, event fields): a rogue node must not retitle, clear or rewrite the
    technician's screen, whatever the daemon passes on."""
    text = str(text)
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def print_json(obj) -> None:
    print(json.dumps(obj, indent=2, sort_keys=True, default=str))


def table(rows: list[list], headers: list[str], out=None, notes: list[list[str]] | None = None) -> None:
    """A plain left-aligned table for people (scripts use --json). A cell of several lines (a config with
    several mistakes) takes as many rows, each line in its own column, and its longest line sets the width.

    When ``out`` is a terminal or ``COLUMNS`` is set, the LAST column is wrapped at spaces to fit the
    terminal's width (:func:`shutil.get_terminal_size`, which honours ``COLUMNS``), its continuation lines
    under that column: one long DETAIL no longer pads every row. Text is never cut: a word longer than
    the room left stays whole (at least :data:`MIN_LAST` columns are given to the last one).
    ``notes``: lines printed under each row (indented 4), after its wrapped lines."""
    out = out or sys.stdout
    cells = [[str(h).splitlines() or [""] for h in headers]]
    cells += [[("" if c is None else str(c)).splitlines() or [""] for c in r] for r in rows]
    widths = [max(len(line) for r in cells for line in r[i]) for i in range(len(headers))]
    room = _terminal_width(out)
    if room is not None and headers:
        last = max(MIN_LAST, room - sum(w + 2 for w in widths[:-1]))
        if widths[-1] > last:
            for r in cells[1:]:
                r[-1] = [part for line in r[-1] for part in _wrap(line, last)]
            widths[-1] = max(len(line) for r in cells for line in r[-1])
    for n, r in enumerate(cells):
        for k in range(max(len(c) for c in r)):
            print("  ".join((c[k] if k < len(c) else "").ljust(w) for c, w in zip(r, widths)).rstrip(), file=out)
        if n == 0:
            print("  ".join("-" * w for w in widths), file=out)
        elif notes is not None and n - 1 < len(notes):
            for note in notes[n - 1]:
                print(f"    {note}", file=out)


MIN_LAST = 20  # columns the wrapped last column gets at least, however wide the others are


def _terminal_width(out) -> int | None:
    """The width to wrap the last column at: ``COLUMNS`` if set, else the terminal's when ``out`` is
    one; None (no wrapping) for a pipe or file without ``COLUMNS``."""
    import shutil

    tty = False
    try:
        tty = out.isatty()
    except (AttributeError, ValueError):
        pass
    if not os.environ.get("COLUMNS") and not tty:
        return None
    return shutil.get_terminal_size().columns


def _wrap(line: str, width: int) -> list[str]:
    """``line`` in lines of at most ``width`` characters, broken at spaces only; a longer word stays whole."""
    import textwrap

    if len(line) <= width:
        return [line]
    return textwrap.wrap(line, width, break_long_words=False, break_on_hyphens=False) or [line]


def fmt_age(seconds) -> str:
    """An age for a table cell: "12s", "3m", "5.2h", "2.0d"; "-" for none."""
    if seconds is None:
        return "-"
    return duration(float(seconds), ("s", "m", "h", "d"))


def duration(s: float, units: tuple[str, str, str, str]) -> str:
    """``s`` seconds in the unit that reads best: seconds below 2 min, minutes below 2 h, hours below
    2 days, then days; ``units`` are the suffixes of those four."""
    if s < 120:
        return f"{s:.0f}{units[0]}"
    if s < 7200:
        return f"{s / 60:.0f}{units[1]}"
    if s < 172800:
        return f"{s / 3600:.1f}{units[2]}"
    return f"{s / 86400:.1f}{units[3]}"


_ROLE = re.compile(r":[A-Za-z]+(?::[A-Za-z]+)*:`~?([^`]+)`")  # :func:`x`, :py:class:`~a.b`
_LITERAL = re.compile(r"``(.+?)``", re.S)  # may span a line break of the docstring
_QUOTED = re.compile(r"(?<![`\w])`([^`\n]+)`(?:__?)?(?![`\w])")  # `x`, `link`_
_LITERAL_BLOCK = re.compile(r"(?<=\S)::$", re.M)  # "format::" before an indented block


def plain_text(text: str) -> str:
    """``text`` with the reST markup of our docstrings taken out, for ``--help`` (``cli.HelpParser`` applies
    it to every description and argument help): a double-backquoted literal, a :role: with its backquoted
    target, or a single-backquoted word becomes the word alone, and a paragraph's closing "::" becomes ":"."""
    text = _ROLE.sub(lambda m: m.group(1), text)
    text = _LITERAL.sub(lambda m: m.group(1), text)
    text = _QUOTED.sub(lambda m: m.group(1), text)
    return _LITERAL_BLOCK.sub(":", text)


def doc_part(doc: str | None, i: int) -> str:
    """Paragraph ``i`` of a module docstring for a parser's description, as plain text (:func:`plain_text`);
    empty under ``python -OO``."""
    parts = (doc or "").split("\n\n")
    return plain_text(parts[i]) if i < len(parts) else ""


def error(message: object, lead: str = "") -> None:
    """``message`` on stderr, each of its lines as its own ``edge-gateway: ...`` line: a ConfigError holds
    one mistake a line (``config validate``'s layout). ``lead`` (e.g. ``"refused, ...: "``) goes before a
    one-line message, or alone on the first line (without its trailing blank) before several."""
    lines = str(message).splitlines() or [""]
    if lead and len(lines) > 1:
        lines = [lead.rstrip(), *lines]
    elif lead:
        lines = [lead + lines[0]]
    for line in lines:
        print(f"edge-gateway: {line}", file=sys.stderr)


def positive_float(text: str) -> float:
    """argparse ``type=``: a finite number above 0 (a zero or NaN timeout would fail deep in a check)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a finite number above 0, got {text!r}")
    return value


def int_in(lo: int, hi: int | None = None):
    """argparse ``type=``: an integer in [lo, hi] (no upper bound when hi is None)."""
    def convert(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < lo or (hi is not None and value > hi):
            raise argparse.ArgumentTypeError(f"must be {lo}..{hi}, got {value}" if hi is not None
                                             else f"must be at least {lo}, got {value}")
        return value
    return convert
