"""The ``edge-gateway`` command: one parser, subcommands contributed by their modules.

Each module named in ``_COMMANDS`` exposes ``add_to(subparsers)``, which adds
its subcommand(s) with ``set_defaults(func=handler)``; a handler takes the parsed
arguments and returns the exit status. Modules are imported lazily so that
``edge-gateway config validate`` does not pay for Numba or paho, and a command
named on the command line imports its own module only: the daemon (``run``)
does not keep the other commands' code resident for its whole life.

Exit statuses: 0 success, 1 the check or operation failed, 2 bad usage or an
invalid config, 3 the daemon is not running (``status``/``tail``), 130 Ctrl-C.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# the subcommands each module adds (the rest of the parser is built only for --help and typos)
_COMMANDS = {
    "run": "edge_gateway.cmd_run",
    "config": "edge_gateway.cmd_config",
    "analyze": "edge_gateway.offline",
    "evaluate": "edge_gateway.offline",
    "status": "edge_gateway.cmd_status",
    "reload": "edge_gateway.cmd_status",
    "tail": "edge_gateway.cmd_tail",
    "probe": "edge_gateway.cmd_probe",
    "record": "edge_gateway.cmd_record",
    "replay": "edge_gateway.cmd_record",
    "doctor": "edge_gateway.cmd_doctor",
    "service": "edge_gateway.cmd_service",
}
_COMMAND_MODULES = tuple(dict.fromkeys(_COMMANDS.values()))


def _command_of(argv: list[str]) -> str | None:
    """The subcommand named by ``argv`` (its first word not starting with ``-``), if known."""
    for word in argv:
        if not word.startswith("-"):
            return word if word in _COMMANDS else None
    return None


class _PlainHelp:
    """HelpFormatter mixin: descriptions, epilogs and argument help without the reST markup of the module
    docstrings they come from (``cmd_common.plain_text``, imported only when help is shown: ``run`` does
    not keep the commands' helpers resident)."""

    def _format_text(self, text: str) -> str:
        from .cmd_common import plain_text

        return super()._format_text(plain_text(text))

    def _expand_help(self, action) -> str:
        from .cmd_common import plain_text

        return plain_text(super()._expand_help(action))


class _PlainHelpFormatter(_PlainHelp, argparse.HelpFormatter):
    pass


class HelpParser(argparse.ArgumentParser):
    """The parser of ``edge-gateway`` and of every subcommand (``add_subparsers`` makes its parsers of the
    same class): whatever ``formatter_class`` a subcommand asks for (doctor's raw layout), its help is plain
    text: a module docstring's double-backquoted literals, :func: style roles and single backquotes read as
    the plain words they quote."""

    def __init__(self, *args, formatter_class=_PlainHelpFormatter, **kwargs) -> None:
        if not issubclass(formatter_class, _PlainHelp):
            formatter_class = type(f"Plain{formatter_class.__name__}", (_PlainHelp, formatter_class), {})
        super().__init__(*args, formatter_class=formatter_class, **kwargs)


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The parser; given ``argv`` naming a known command, with that command's module only."""
    from . import __version__

    parser = HelpParser(
        prog="edge-gateway",
        description="Street-cabinet IoT gateway: drivers, edge analytics, durable MQTT uplink.",
    )
    parser.add_argument("--version", action="version", version=f"edge-gateway {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    command = _command_of(argv) if argv is not None else None
    for name in (_COMMANDS[command],) if command else _COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
            continue
        module.add_to(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    parser = build_parser(argv)
    try:
        args = parser.parse_args(argv)
    except SystemExit:  # --help, or a usage error: argparse has printed and exits
        _flushed(0)
        raise
    try:
        return _flushed(int(args.func(args) or 0))
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # ``status | head``: the reader has what it wanted
        return _flushed(0)


def _flushed(status: int) -> int:
    """``status``, once stdout is flushed here rather than by the interpreter at exit, where a reader that
    has gone (``edge-gateway --help | head -3``) is reported as "Exception ignored ... BrokenPipeError"
    and exit status 120."""
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        from .cmd_common import quiet_closed

        quiet_closed(sys.stdout)
    return status


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
