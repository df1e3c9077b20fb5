"""``edge-gateway config validate|show|get|set|options``: check, inspect and safely change the YAML config.

* ``validate FILE``: parse and check; errors name ``file:line:column: key.path``.
* ``show FILE``: the effective config (``${ENV}`` expanded, defaults filled,
  paths resolved, ``queue.path`` too) as YAML, or ``--json``. An unset
  ``detector.threshold`` shows the detectors' event threshold it stands for,
  marked ``# default`` (``get`` prints the bare value, and says on stderr when a value is not written in the
  file but the code's default). Secrets are masked: values of keys
  named like password/secret/token/psk are printed as ``********``, and for
  secret files (``broker.secrets_file``, ``*key_file``) only the path is shown,
  never the file's contents (this command never opens them).
* ``get FILE KEY``: one value of the effective config. ``KEY`` is a dotted
  path; list items by index or by ``id``: ``sensors[0].options.port`` or
  ``sensors.air-1.options.port``; a part with a dot in quotes: ``sensors["aq.1"].options.port``.
  Scalars print bare, the rest as JSON.
* ``set FILE KEY VALUE``: change one value in place. Only the text of that value
  (or the line(s) of an added key, below the last item of its mapping) changes:
  the composed YAML says where it is, the new text is spliced into the file, and
  every other byte stays (comments, flow maps as wrapped, CRLF, ``---``/``...``,
  quoting), so ``diff`` shows just the edit. ruamel.yaml's round-trip dump (which
  re-emits the whole file) is used only where a splice is not safe: a value
  behind an anchor or alias, or one with a tag. The result must load as the old
  document with only this value changed, and pass :func:`edge_gateway.config.loads`;
  only then is it written (temporary file in the same folder, fsync, rename: a
  crash leaves the old or the new file, never half of one; a symlink stays a
  link). VALUE is read as the loader would read it unquoted (``9600`` is a number,
  ``true`` a boolean, and ``1e-6`` a number too), and written so that the loader
  reads it back the same (``1.0e-06``, ``'yes'`` for a string); where the file
  already holds a string it stays a string, in its quote style (unless a string
  cannot load there: ``batch_interval_s: fast`` set to 0.5 becomes the number),
  and ``--string`` forces one; VALUE that YAML reads as a mapping or a list (``bins-1:``) where
  neither fits is taken as the string it is. Missing mapping keys along the path are created.
  ``--dry-run`` prints the edit as a unified diff (``--full``: the whole new file) and writes nothing. Reload the daemon
  afterwards (``edge-gateway reload`` or ``systemctl reload edge-gateway``).
* ``options [DRIVER|SECTION]``: every driver with a one-line summary and the names of the config's
  sections, or one driver's options (dotted for nested ones, ``blocks[].fields[].type``), or one
  section's keys (``windows``: ``hop_s`` ...), with type, default and the text the code documents them
  with (field metadata ``doc``, the class docstring's part about the field, or for a section the comment
  on the field's line); ``--markdown`` is docs/drivers.md.

Exit statuses: 0 ok; 2 invalid config (nothing written by ``set``), unknown
key, or bad usage; 1 the file could not be written.
"""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

from .cmd_common import error
from .config_docs import options_text, sections
from .config_keys import locate, located_warnings, lookup, split_key
from .plain_config import plain
from .yaml_edit import Unspliceable, atomic_write, only_change, round_trip_set, splice


def add_to(sub) -> None:
    key_help = ("dotted path of the value, list items by index or id, e.g. gateway.id, "
                "sensors[0].options.port or sensors.air-1.options.port (an id with a dot: sensors[\"aq.1\"])")
    p = sub.add_parser("config", help="check, show, get and set values of the YAML config",
                       description="Check, inspect and safely change the YAML config.")
    csub = p.add_subparsers(dest="config_command", metavar="ACTION")
    csub.required = True
    v = csub.add_parser("validate", help="validate a config file; exit 0 if valid, 2 if not")
    v.add_argument("file", metavar="FILE", help="the config file to check, e.g. /etc/edge-gateway/gateway.yaml")
    v.set_defaults(func=validate)
    s = csub.add_parser("show", help="print the effective config, secrets masked")
    s.add_argument("file", metavar="FILE", help="the config file to show")
    s.add_argument("--json", action="store_true", help="JSON instead of YAML")
    s.set_defaults(func=show)
    g = csub.add_parser("get", help="print one value: sensors[0].options.port or sensors.air-1.options.port")
    g.add_argument("file", metavar="FILE", help="the config file to read")
    g.add_argument("key", metavar="KEY", help=key_help)
    g.add_argument("--json", action="store_true", help="always print JSON")
    g.set_defaults(func=get)
    t = csub.add_parser("set", help="change one value in place, keeping comments; refuses an invalid result")
    t.add_argument("file", metavar="FILE", help="the config file to change (written only if the result is valid)")
    t.add_argument("key", metavar="KEY", help=key_help + "; missing mapping keys are created")
    t.add_argument("value", metavar="VALUE",
                   help="the new value, read as YAML: 9600 is a number, true a boolean, [a, b] a list; "
                        "where the file holds a string it stays one (--string forces a string)")
    t.add_argument("--string", action="store_true", help="store VALUE as a string whatever it looks like")
    t.add_argument("--dry-run", action="store_true",
                   help="print what would change (a unified diff) instead of writing the file")
    t.add_argument("--full", action="store_true", help="with --dry-run, print the whole new file instead of the diff")
    t.set_defaults(func=set_value)
    o = csub.add_parser("options", help="the options of a driver, or the keys of a config section: type, default, "
                                        "meaning",
                        description="List the options of a driver (the keys under a sensor's options:) or the keys "
                                    "of one section of the config (gateway, broker, windows, ...), each with its "
                                    "type, default and meaning; without one, every driver with a one-line "
                                    "summary, and the sections there are.")
    o.add_argument("name", metavar="DRIVER|SECTION", nargs="?",
                   help="a driver (serial_line, pms5003, modbus_rtu, coap) or a section of the config "
                        "(gateway, broker, tls, sensors, filters, windows, detector, queue, metrics)")
    o.add_argument("--markdown", action="store_true",
                   help="Markdown; without a driver or section, docs/drivers.md")
    o.set_defaults(func=options)


def _load(path: str):
    from . import config

    try:
        return config.load(path), 0
    except config.ConfigError as exc:
        error(exc)  # every mistake found, one a line, in file order
        return None, 2


def validate(args) -> int:
    cfg, rc = _load(args.file)
    if cfg is None:
        return rc
    for where, key, text in located_warnings(cfg, args.file):
        print(f"edge-gateway: {where}: {key}: warning: {text}", file=sys.stderr)
    n = len(cfg.sensors)
    print(f"{args.file}: valid ({n} sensor{'' if n == 1 else 's'}, gateway {cfg.gateway.id})")
    return 0


# --- show / get -------------------------------------------------------------------------------

def effective(cfg) -> dict:
    """The config as plain data with secrets masked (see the module docstring), ``queue.path`` resolved
    (against the state directory) and the values the config leaves to the code filled in (:func:`filled`)."""
    data = plain(cfg, "")
    if isinstance(data.get("queue"), dict) and hasattr(cfg, "queue_path"):
        data["queue"]["path"] = str(cfg.queue_path)
    for (section, key), value in filled(cfg).items():
        data[section][key] = value
    return data


def filled(cfg) -> dict[tuple[str, str], object]:
    """``{(section, key): value}`` of the settings left unset (null) whose value the code gives:
    ``detector.threshold`` is then the detectors' ``event_threshold`` (the tuned default, or the one
    ``detector.params`` gives)."""
    det = getattr(cfg, "detector", None)
    if det is None or getattr(det, "threshold", 0) is not None:
        return {}
    from .analytics.settings import DetectorSettings  # no Numba

    settings = DetectorSettings()
    if det.params:
        settings = settings.with_overrides(det.overrides())
    return {("detector", "threshold"): settings.event_threshold}


def show(args) -> int:
    cfg, rc = _load(args.file)
    if cfg is None:
        return rc
    data = effective(cfg)
    if args.json:
        print(json.dumps(data, indent=2))
    else:
        print(f"# effective config of {cfg.source} (env expanded, defaults filled, secrets masked)")
        out = io.StringIO()
        _dump_yaml(data, out)
        sys.stdout.write(_mark_defaults(out.getvalue(), filled(cfg)))
    return 0


def _mark_defaults(text: str, keys) -> str:
    """The dumped YAML with ``  # default`` after the lines of the ``(section, key)`` values in ``keys``."""
    lines = text.split("\n")
    section = None
    for i, line in enumerate(lines):
        if line and not line.startswith(" "):
            section = line.split(":", 1)[0]
        elif line.startswith("  ") and not line.startswith("   ") and (section, line[2:].split(":", 1)[0]) in keys:
            lines[i] = line + "  # default (the detectors' event_threshold)"
    return "\n".join(lines)


def _dump_yaml(data, stream) -> None:
    from ruamel.yaml import YAML

    y = YAML(typ="safe", pure=True)
    y.default_flow_style = False
    y.sort_base_mapping_type_on_output = False
    y.width = 1 << 16  # a long path stays on its key's line, where a technician greps for it
    y.dump(data, stream)


def get(args) -> int:
    cfg, rc = _load(args.file)
    if cfg is None:
        return rc
    try:
        parts = split_key(args.key)
        value = lookup(effective(cfg), parts)
    except (KeyError, ValueError) as exc:
        print(f"edge-gateway: {exc.args[0]}", file=sys.stderr)
        return 2
    if args.json or isinstance(value, (dict, list)):
        print(json.dumps(value))
    elif isinstance(value, bool):
        print("true" if value else "false")
    else:
        print("" if value is None else str(value))  # the bare value: scripts read it
        if tuple(parts) in filled(cfg) or not _in_file(args.file, parts):
            print(f"note: {args.key} is not set in the file; this is its default", file=sys.stderr)
    return 0


def _in_file(path, parts) -> bool:
    """Whether the key path is written in the file itself (a value ``get`` shows may be the code's default)."""
    import yaml

    try:
        raw = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        lookup(raw, parts)
    except (KeyError, TypeError, ValueError, OSError, yaml.YAMLError):
        return False
    return True


# --- set --------------------------------------------------------------------------------------

def set_value(args) -> int:
    import yaml

    from . import config

    path = Path(args.file)
    try:
        text = config.read_text(path, newline="")
        root = config.compose(text, str(path))
    except config.ConfigError as exc:
        error(exc)
        return 2
    try:
        parts = split_key(args.key)
    except ValueError as exc:
        print(f"edge-gateway: {path}: {exc}", file=sys.stderr)
        return 2
    if root is not None and not isinstance(root, yaml.MappingNode):
        what = "a list" if isinstance(root, yaml.SequenceNode) else "a single value"
        print(f"edge-gateway: {path}: expected a mapping of sections (gateway:, broker:, ...), got {what}",
              file=sys.stderr)
        return 2
    try:
        target = locate(root, parts)
    except KeyError as exc:
        print(f"edge-gateway: {exc.args[0]}", file=sys.stderr)
        return 2
    old = target.old
    value = _new_value(args.value, old, args.string)
    typed = _new_value(args.value, None, False)
    # "a string stays a string" (an id such as 007) unless the string cannot be right there: a
    # technician mending ``batch_interval_s: fast`` with 0.5 means the number
    retry = not args.string and isinstance(old, str) and "${" not in old and not isinstance(typed, str)
    candidates = [value, typed] if retry else [value]
    # ``bins-1:`` or ``- a`` is a mapping or a list to YAML, which a string setting (strip_prefix) refuses:
    # a technician typing it there means the text
    as_text = not args.string and isinstance(typed, (dict, list)) and not any(isinstance(c, str) for c in candidates)
    if as_text:
        candidates.append(args.value)
    errors = []
    for value in candidates:
        try:
            new_text = splice(text, root, target, value, args.value)
        except Unspliceable:
            new_text = None
        faithful = new_text is not None and only_change(text, new_text, target.path, value)
        rewritten = not faithful
        if rewritten:
            try:
                new_text = round_trip_set(text, root is None, parts, value)
            except Exception as exc:  # noqa: BLE001 - ruamel raises many kinds; all mean "cannot edit this"
                error(exc, lead=f"{path}: ")
                return 2
            faithful = only_change(text, new_text, target.path, value)
        try:
            new_cfg = config.loads(new_text, str(path), path.resolve().parent)
            break
        except config.ConfigError as exc:
            errors.append(exc)
    else:
        # with the text tried last too, the typed value's mistake says more ("expected a number, got a mapping")
        error(errors[-2] if as_text else errors[-1], lead="refused, the result would be invalid (file unchanged): ")
        return 2
    if as_text and len(errors) == len(candidates) - 1:
        print(f"note: {args.value!r} reads as {'a mapping' if isinstance(typed, dict) else 'a list'} in YAML, "
              f"which {args.key} cannot hold: it was taken as a string (--string says so up front)", file=sys.stderr)
    if not faithful:
        print(f"edge-gateway: refused, {args.key} cannot be written so that it reads back as {value!r} "
              "(file unchanged)", file=sys.stderr)
        return 2
    warned = parts == ["gateway", "id"] and _warn_state_dir_taken(new_cfg)
    if rewritten:
        print(f"note: {args.key} could not be changed in place (an anchor, alias or tag?), so the whole file "
              "was re-written: its layout may differ, check with diff", file=sys.stderr)
    if args.dry_run:
        sys.stdout.write(new_text if getattr(args, "full", False) else _diff(text, new_text, str(path)))
        return 0
    try:
        atomic_write(path, new_text)
    except OSError as exc:
        print(f"edge-gateway: cannot write {path}: {exc}", file=sys.stderr)
        return 1
    was = "" if old is None else f" (was {old!s})"
    print(f"{path}: {args.key} = {value!s}{was}")
    from .reload import RESTART_FIELDS, RESTART_HOW

    if any(args.key == f or args.key.startswith(f + ".") for f in RESTART_FIELDS) and old != value and not warned:
        print(f"note: {args.key} takes effect only when the gateway restarts: {RESTART_HOW}; until then "
              "`edge-gateway reload` refuses the whole file", file=sys.stderr)
    if isinstance(old, str) and "${" in old:
        print(f"note: this replaced the environment reference {old}", file=sys.stderr)
    return 0


def _diff(old: str, new: str, name: str) -> str:
    """A unified diff of the edit, as ``diff -u`` prints it (a last line without a line break says so)."""
    import difflib

    out = []
    for line in difflib.unified_diff(old.splitlines(keepends=True), new.splitlines(keepends=True),
                                     fromfile=name, tofile=f"{name} (after set)"):
        out.append(line if line.endswith("\n") else line + "\n\\ No newline at end of file\n")
    return "".join(out)


def _warn_state_dir_taken(cfg) -> bool:
    """A warning (the file is still written) when ``cfg``'s state directory holds another gateway's queue:
    with the new ``gateway.id`` the gateway would not start there (exit 2, which systemd does not restart).
    True if it warned (its advice says how to restart)."""
    import sqlite3

    from .queue import read_owner
    from .reload import new_id_advice, state_dir_taken

    try:
        found = read_owner(cfg.queue_path)
    except (sqlite3.Error, OSError):
        return False  # unreadable here: `edge-gateway doctor` says so
    if found is None or found[0] is None or found[0] == cfg.gateway.id:
        return False
    print(f"edge-gateway: warning: {state_dir_taken(cfg.state_dir, found[0], cfg.gateway.id)}: "
          f"{new_id_advice(cfg.state_dir, found[0])}; or set gateway.id back to {found[0]!r}", file=sys.stderr)
    return True


def _new_value(raw: str, old, force_string: bool):
    """VALUE as the loader would read ``key: VALUE``, except that ``1e20`` is the number it looks like.

    A string in the file stays a string (``--string`` forces one), unless it was a ``${VAR}``
    reference, which stood for any type.
    """
    import yaml

    from . import schema

    if force_string or (isinstance(old, str) and "${" not in old):
        return raw
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw
    if value is None and raw.strip() not in ("null", "~"):
        return raw
    if isinstance(value, str) and schema.EXPONENT_FLOAT.fullmatch(raw.strip()):
        return float(raw)
    return value


def options(args) -> int:
    import difflib

    import drivers

    try:
        sys.stdout.write(options_text(args.name, markdown=args.markdown))
    except KeyError:
        known, names = drivers.names(), list(sections())
        near = difflib.get_close_matches(args.name, known + names, n=1)
        hint = f"; did you mean {near[0]!r}?" if near else ""
        print(f"edge-gateway: unknown driver or section {args.name!r}{hint} (drivers: {', '.join(known)}; "
              f"sections: {', '.join(names)})", file=sys.stderr)
        return 2
    return 0
