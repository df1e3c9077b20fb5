"""``edge-gateway config validate|show|get|set|options``: check, inspect and safely change the YAML config.

* ``validate FILE``: parse and check; errors name ``file:line:column: key.path``.
* ``show FILE``: the effective config (``${ENV}`` expanded, defaults filled,
  paths resolved, ``queue.path`` too) as YAML, or ``--json``. An unset
  ``detector.threshold`` shows the detectors' event threshold it stands for,
  marked ``# default`` (``get`` prints the bare value and says so on stderr). Secrets are masked: values of keys
  named like password/secret/token/psk are printed as ``********``, and for
  secret files (``broker.secrets_file``, ``*key_file``) only the path is shown,
  never the file's contents (this command never opens them).
* ``get FILE KEY``: one value of the effective config. ``KEY`` is a dotted
  path; list items by index or by ``id``: ``sensors[0].options.port`` or
  ``sensors.air-1.options.port``. Scalars print bare, the rest as JSON.
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
* ``options [DRIVER]``: every driver with a one-line summary, or one driver's options (dotted
  for nested ones, ``blocks[].fields[].type``) with type, default and the text the code documents
  them with (field metadata ``doc``, or the options class docstring's part about the field);
  ``--markdown`` is docs/drivers.md.

Exit statuses: 0 ok; 2 invalid config (nothing written by ``set``), unknown
key, or bad usage; 1 the file could not be written.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import re
import sys
import tempfile
from pathlib import Path

from .cmd_common import error

MASK = "********"
_SECRET_NAME = re.compile(r"(password|passwd|secret|token|psk|api_key|private_key)", re.I)
_PATH_NAME = re.compile(r"(_file|_path|_dir)$")


def add_to(sub) -> None:
    key_help = ("dotted path of the value, list items by index or id, e.g. gateway.id, "
                "sensors[0].options.port or sensors.air-1.options.port")
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
    o = csub.add_parser("options", help="list the drivers, or the options of one: type, default, meaning")
    o.add_argument("driver", metavar="DRIVER", nargs="?",
                   help="the driver whose options to list (serial_line, pms5003, modbus_rtu, coap); "
                        "without it, every driver with a one-line summary")
    o.add_argument("--markdown", action="store_true", help="Markdown, as in docs/drivers.md")
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


def located_warnings(cfg, path: str) -> list[tuple[str, str, str]]:
    """:func:`.config.warnings_of` ``cfg`` as ``(where, key, text)``: ``where`` is ``file:line:column`` of
    the key's value, as errors name it (just the file if it is not written there). The file is read and
    composed once, and only when there is a warning (``validate``; the daemon's journal at start and reload)."""
    from . import config

    warnings = config.warnings_of(cfg)
    if not warnings:
        return []
    try:
        root = config.compose(config.read_text(path), path)
    except config.ConfigError:
        root = None  # as an empty file: every key is "not written there"
    out = []
    for key, text in warnings:
        try:
            node = _locate(root, split_key(key)).node
        except KeyError:
            node = None
        out.append((path if node is None else f"{path}:{node.start_mark.line + 1}:{node.start_mark.column + 1}",
                    key, text))
    return out


# --- show / get -------------------------------------------------------------------------------

def effective(cfg) -> dict:
    """The config as plain data with secrets masked (see the module docstring), ``queue.path`` resolved
    (against the state directory) and the values the config leaves to the code filled in (:func:`filled`)."""
    data = _plain(cfg, "")
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


def _plain(obj, name: str):
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        out = {}
        for f in dataclasses.fields(obj):
            if f.metadata.get("internal"):
                continue
            value = getattr(obj, f.name)
            if f.metadata.get("secret_path") or f.metadata.get("secret"):
                out[f.name] = value if (value and f.metadata.get("secret_path")) else (MASK if value else value)
                continue
            out[f.name] = _plain(value, f.name)
        return out
    if isinstance(obj, dict):
        return {str(k): _plain(v, str(k)) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v, name) for v in obj]
    if isinstance(obj, str) and obj and _SECRET_NAME.search(name) and not _PATH_NAME.search(name):
        return MASK
    return obj


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


_TOKEN = re.compile(r"([^.\[\]]+)|\[(\d+)\]")


def split_key(key: str) -> list[str | int]:
    """``sensors[0].options.port`` -> ['sensors', 0, 'options', 'port']; ValueError if malformed."""
    parts: list[str | int] = []
    pos = 0
    while pos < len(key):
        if key[pos] == ".":
            pos += 1
            continue
        m = _TOKEN.match(key, pos)
        if not m:
            raise ValueError(f"cannot read key {key!r} at {key[pos:]!r}")
        parts.append(int(m.group(2)) if m.group(2) is not None else m.group(1))
        pos = m.end()
    if not parts:
        raise ValueError("empty key")
    return parts


def lookup(data, parts: list[str | int]):
    """Follow a key path through dicts and lists (list items also by their ``id``); KeyError with a hint."""
    import difflib

    node = data
    done: list[str] = []
    for part in parts:
        if isinstance(node, list):
            idx = _list_index(node, part)
            if idx is None:
                ids = [str(x.get("id")) for x in node if isinstance(x, dict) and "id" in x]
                near = difflib.get_close_matches(str(part), ids, n=1)
                hint = f"; did you mean {near[0]!r}?" if near else (f"; ids: {', '.join(ids)}" if ids else "")
                raise KeyError(f"{'.'.join(done) or 'config'} has no item {part!r}{hint}")
            node = node[idx]
        elif isinstance(node, dict):
            if str(part) not in node:
                near = difflib.get_close_matches(str(part), [str(k) for k in node], n=1)
                hint = f"; did you mean {near[0]!r}?" if near else f"; keys: {', '.join(map(str, node))}"
                raise KeyError(f"{'.'.join(done) or 'config'} has no key {part!r}{hint}")
            node = node[str(part)]
        else:
            raise KeyError(f"{'.'.join(done)} is a single value, it has no {part!r}")
        done.append(str(part))
    return node


def _list_index(seq, part) -> int | None:
    if isinstance(part, int) or (isinstance(part, str) and part.isdigit() and not any(
            isinstance(x, dict) and str(x.get("id")) == part for x in seq)):
        i = int(part)
        return i if -len(seq) <= i < len(seq) else None
    for i, item in enumerate(seq):
        if isinstance(item, dict) and str(item.get("id")) == str(part):
            return i
    return None


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
        if tuple(parts) in filled(cfg):
            print(f"note: {args.key} is not set in the file; this is its default", file=sys.stderr)
    return 0


# --- set --------------------------------------------------------------------------------------

_PLAIN_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-/]*")
_STR_TAG = "tag:yaml.org,2002:str"
_BREAKS = re.compile("[\r\n\x85\u2028\u2029]")  # YAML 1.1 line breaks: written raw, they split a value


class _Unspliceable(Exception):
    """The edit cannot be made as a text splice; the round-trip dump is used instead."""


@dataclasses.dataclass
class _Target:
    """Where the value goes: an existing node, or ``create`` keys below ``parent`` or below a null ``node``."""

    path: list = dataclasses.field(default_factory=list)  # keys and indexes as in the loaded data
    chain: list = dataclasses.field(default_factory=list)  # nodes passed on the way
    parent: object = None
    key: object = None
    node: object = None
    create: list = dataclasses.field(default_factory=list)
    old: object = None


def _round_trip_yaml(text: str):
    from ruamel.yaml import YAML
    from ruamel.yaml.util import load_yaml_guess_indent

    _, seq_indent, offset = load_yaml_guess_indent(text)
    y = YAML()  # round-trip: comments, order, quotes and flow style survive
    y.preserve_quotes = True
    y.width = 4096
    y.indent(mapping=_mapping_indent(text), sequence=seq_indent or 2, offset=offset or 0)
    return y


def _mapping_indent(text: str) -> int:
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    for a, b in zip(lines, lines[1:]):
        if not a.startswith(" ") and a.rstrip().endswith(":") and not b.lstrip().startswith("-"):
            n = len(b) - len(b.lstrip(" "))
            if n:
                return n
    return 2


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
        target = _locate(root, parts)
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
            new_text = _splice(text, root, target, value, args.value)
        except _Unspliceable:
            new_text = None
        faithful = new_text is not None and _only_change(text, new_text, target.path, value)
        rewritten = not faithful
        if rewritten:
            try:
                new_text = _round_trip_set(text, root is None, parts, value)
            except Exception as exc:  # noqa: BLE001 - ruamel raises many kinds; all mean "cannot edit this"
                error(exc, lead=f"{path}: ")
                return 2
            faithful = _only_change(text, new_text, target.path, value)
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
    if parts == ["gateway", "id"]:
        _warn_state_dir_taken(new_cfg)
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


def _warn_state_dir_taken(cfg) -> None:
    """A warning (the file is still written) when ``cfg``'s state directory holds another gateway's queue:
    with the new ``gateway.id`` the gateway would not start there (exit 2, which systemd does not restart)."""
    import sqlite3

    from .queue import read_owner
    from .reload import new_id_advice, state_dir_taken

    try:
        found = read_owner(cfg.queue_path)
    except (sqlite3.Error, OSError):
        return  # unreadable here: `edge-gateway doctor` says so
    if found is None or found[0] is None or found[0] == cfg.gateway.id:
        return
    print(f"edge-gateway: warning: {state_dir_taken(cfg.state_dir, found[0], cfg.gateway.id)}: "
          f"{new_id_advice(cfg.state_dir, found[0])}; or set gateway.id back to {found[0]!r}", file=sys.stderr)


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


# --- set: finding the node --------------------------------------------------------------------

def _locate(root, parts: list[str | int]) -> _Target:
    """Follow the key through the composed nodes as ``lookup`` does through data; KeyError if it cannot."""
    import yaml

    from . import schema

    t = _Target()
    node = root
    for i, part in enumerate(parts):
        where = ".".join(map(str, parts[:i])) or "config"
        last = i == len(parts) - 1
        if node is None:  # an empty document: everything is created
            t.create = parts[i:]
            t.path += [str(p) for p in parts[i:]]
            return t
        t.chain.append(node)
        if isinstance(node, yaml.SequenceNode):
            idx = _list_index(_item_ids(node), part)
            if idx is None:
                raise KeyError(f"no list item {part!r}" if last else f"{where} has no item {part!r}")
            t.parent, t.key, child = node, None, node.value[idx]
            t.path.append(idx)
        elif isinstance(node, yaml.MappingNode):
            hits = [(k, v) for k, v in node.value if isinstance(k, yaml.ScalarNode) and k.value == str(part)]
            if not hits:
                t.parent, t.create = node, parts[i:]
                t.path += [str(p) for p in parts[i:]]
                return t
            t.parent, (t.key, child) = node, hits[-1]  # the one PyYAML keeps
            t.path.append(_construct(t.key))
            if not last and schema.is_null(child):
                t.node, t.create = child, parts[i + 1:]
                t.path += [str(p) for p in parts[i + 1:]]
                return t
        else:
            raise KeyError(f"{where} is a single value" + ("" if last else f", it has no {part!r}"))
        node = child
    t.node, t.old = node, _construct(node)
    return t


def _item_ids(seq) -> list:
    """The ``id`` (as written) of each mapping item, in the shape ``_list_index`` takes."""
    import yaml

    out: list = []
    for item in seq.value:
        ids = [v.value for k, v in item.value if isinstance(k, yaml.ScalarNode) and k.value == "id"
               and isinstance(v, yaml.ScalarNode)] if isinstance(item, yaml.MappingNode) else []
        out.append({"id": ids[-1]} if ids else None)
    return out


def _construct(node):
    import yaml

    try:
        return yaml.constructor.SafeConstructor().construct_object(node, deep=True)
    except (yaml.YAMLError, RecursionError):
        return getattr(node, "value", None) if isinstance(getattr(node, "value", None), str) else None


def _shared(root) -> set[int]:
    """Nodes reached more than once (through aliases): their text is in one place, their use in several."""
    import yaml

    seen: set[int] = set()
    shared: set[int] = set()
    stack = [root] if root is not None else []
    while stack:
        node = stack.pop()
        if id(node) in seen:
            shared.add(id(node))
            continue
        seen.add(id(node))
        if isinstance(node, yaml.MappingNode):
            stack.extend(n for pair in node.value for n in pair)
        elif isinstance(node, yaml.SequenceNode):
            stack.extend(node.value)
    return shared


# --- set: splicing ----------------------------------------------------------------------------

def _splice(text: str, root, t: _Target, value, raw: str) -> str:
    """``text`` with the value written at ``t``; every other byte kept. _Unspliceable if not safe."""
    shared = _shared(root)
    if any(id(n) in shared for n in [*t.chain, t.node] if n is not None):
        raise _Unspliceable
    if not t.create:
        return _replace(text, t, value, raw, shared)
    if t.node is not None:
        return _fill_null(text, t, value, raw)
    if t.parent is None:  # an empty document
        return _insert_lines(text, len(text), 0, _mapping_indent(text), t.create, value, raw)
    return _add_key(text, t, value, raw, shared)


def _replace(text: str, t: _Target, value, raw: str, shared: set[int]) -> str:
    import yaml

    node = t.node
    if node.end_mark.index > node.start_mark.index and text[node.start_mark.index] in "&!":
        raise _Unspliceable  # an anchor or tag belongs to the old value
    in_seq = isinstance(t.parent, yaml.SequenceNode)
    style = node.style if isinstance(node, yaml.ScalarNode) and isinstance(value, str) else None
    context = ("flow" if t.parent.flow_style else "block") + ("seq" if in_seq else "map")
    new = _render(value, raw, style, context)
    start, end = node.start_mark.index, _end(text, node, shared)
    if isinstance(node, yaml.ScalarNode) or node.flow_style:
        if start == end and start and text[start - 1] not in " \t":
            new = " " + new  # an empty value right after its ':' or '-'
        return text[:start] + new + text[end:]
    end = _line_end(text, end)  # a block collection goes with the comment on its last line
    if in_seq:
        return text[:start] + new + text[end:]
    colon = text.index(":", t.key.end_mark.index) + 1
    tail = text[colon:start].split("\n", 1)[0].rstrip("\r")  # the key's own comment stays
    return text[:colon] + " " + new + (tail if tail.lstrip().startswith("#") else "") + text[end:]


def _fill_null(text: str, t: _Target, value, raw: str) -> str:
    """A key whose value is null (``metrics:`` with nothing or only comments below) gets the new keys."""
    start, end = t.node.start_mark.index, t.node.end_mark.index
    if t.parent.flow_style:
        new = _flow_entry(t.create[0], t.create[1:], value, raw, nest=True)
        return text[:start] + (" " if start and text[start - 1] not in " \t" else "") + new + text[end:]
    if start != end:  # ``key: ~`` or ``key: null``: the null goes
        while start and text[start - 1] in " \t":
            start -= 1
        text = text[:start] + text[end:]
    step = _mapping_indent(text)
    return _insert_lines(text, start, _indent(text, t.key) + step, step, t.create, value, raw)


def _add_key(text: str, t: _Target, value, raw: str, shared: set[int]) -> str:
    """A new key in an existing mapping: after its last entry, before any comments that follow it."""
    parent = t.parent
    if parent.flow_style:
        if not parent.value:
            if text[parent.start_mark.index] != "{":
                raise _Unspliceable
            pos, sep = parent.start_mark.index + 1, ""
        else:
            last_key, last = parent.value[-1]
            pos, sep = max(_end(text, last, shared), last_key.end_mark.index), ", "
        return text[:pos] + sep + _flow_entry(t.create[0], t.create[1:], value, raw, nest=False) + text[pos:]
    indent = _indent(text, parent.value[0][0])
    pos = _end(text, parent.value[-1][1], shared)
    return _insert_lines(text, pos, indent, _mapping_indent(text), t.create, value, raw)


def _end(text: str, node, shared: set[int]) -> int:
    """Where the node's own text ends: its last character, not the comments or blank lines after it.

    A block collection's end mark is where the next item starts (after any comments in between), so
    its end is that of its last entry.
    """
    import yaml

    if id(node) in shared:
        raise _Unspliceable
    if isinstance(node, yaml.ScalarNode):
        start, end = node.start_mark.index, node.end_mark.index
        if node.style in ("|", ">"):
            header = text[start:_line_end(text, start)].split("#", 1)[0]
            if "+" not in header:
                return start + len(text[start:end].rstrip())
            if text[end - 1:end] == "\n":  # "keep": the trailing blank lines are the value's
                return end - 1
        return end
    if node.flow_style or not node.value:
        return node.end_mark.index
    last = node.value[-1][1] if isinstance(node, yaml.MappingNode) else node.value[-1]
    return _end(text, last, shared)


def _line_end(text: str, pos: int) -> int:
    """The index of the line break (CR LF or LF) that ends the line holding ``pos``, or the text's end."""
    j = text.find("\n", pos)
    if j < 0:
        return len(text)
    return j - 1 if j > pos and text[j - 1] == "\r" else j


def _newline(text: str) -> str:
    return "\r\n" if text.count("\r\n") * 2 > text.count("\n") else "\n"


def _indent(text: str, key) -> int:
    """The column of a block mapping's keys, from its first key's line (``- `` counts, a BOM does not)."""
    line_start = text.rfind("\n", 0, key.start_mark.index) + 1
    prefix = text[line_start:key.start_mark.index].replace("\ufeff", "")
    if set(prefix) - {" ", "-"}:
        raise _Unspliceable  # ``? key``, ``--- key:`` and the like
    return len(prefix)


def _insert_lines(text: str, pos: int, indent: int, step: int, keys: list, value, raw: str) -> str:
    """New block lines for ``keys`` (nested) and the value, on their own lines after the line of ``pos``."""
    j = text.find("\n", pos)
    nl = ("\r\n" if j > 0 and text[j - 1] == "\r" else "\n") if j >= 0 else _newline(text)
    lines = [f"{' ' * (indent + i * step)}{_render_key(k)}:" for i, k in enumerate(keys)]
    lines[-1] += " " + _render(value, raw, None, "blockmap")
    block = nl.join(lines)
    if j < 0:  # the last line: kept without a final line break if it had none
        lead = nl if text and not text.endswith("\n") else ""
        return text + lead + block + (nl if not text or text.endswith("\n") else "")
    return text[:j + 1] + block + nl + text[j + 1:]


def _flow_entry(key, rest: list, value, raw: str, *, nest: bool) -> str:
    """``key: value`` for a flow mapping, nested as ``{k: {k2: value}}`` for keys still to create."""
    inner = _render(value, raw, None, "flowmap")
    for k in reversed(rest):
        inner = f"{{{_render_key(k)}: {inner}}}"
    return f"{{{_render_key(key)}: {inner}}}" if nest else f"{_render_key(key)}: {inner}"


def _render_key(key) -> str:
    s = str(key)
    if _PLAIN_KEY.fullmatch(s) and _resolves_to_str(s):
        return s
    return _dump(s, '"')


def _render(value, raw: str, style, context: str) -> str:
    """One line of YAML that the loader (PyYAML, YAML 1.1) reads back as ``value`` in ``context``.

    Preferred, in order: the old quote style, VALUE as typed, PyYAML's own form (``1.0e+20``,
    ``'yes'``), single quotes, double quotes.
    """
    candidates = []
    if isinstance(value, str) and style in ("'", '"'):
        candidates.append(_dump(value, style))
    if raw and raw == raw.strip():
        candidates.append(raw)
    candidates.append(_dump(value, None))
    if isinstance(value, str):
        candidates += [_dump(value, "'"), _dump(value, '"')]
    for c in candidates:
        if not _BREAKS.search(c) and _reads_as(c, value, context):
            return c
    raise _Unspliceable


def _dump(value, style) -> str:
    import yaml

    out = yaml.safe_dump(value, default_style=style, default_flow_style=True, width=1 << 30,
                         allow_unicode=True)
    if out.endswith("\n...\n"):
        out = out[:-4]
    return out[:-1] if out.endswith("\n") else out


def _reads_as(text: str, value, context: str) -> bool:
    import yaml

    doc = {"blockmap": "k: {}", "blockseq": "- {}", "flowmap": "{{k: {}}}", "flowseq": "[{}]"}[context]
    try:
        got = yaml.safe_load(doc.format(text))
    except yaml.YAMLError:
        return False
    if context.endswith("map"):
        return isinstance(got, dict) and list(got) == ["k"] and _same(got["k"], value)
    return isinstance(got, list) and len(got) == 1 and _same(got[0], value)


def _resolves_to_str(s: str) -> bool:
    import yaml

    return yaml.resolver.Resolver().resolve(yaml.ScalarNode, s, (True, False)) == _STR_TAG


def _same(a, b) -> bool:
    """Equal and of the same types all the way down (``True`` is not ``1``, ``1`` is not ``1.0``)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(map(_same, a, b))
    if type(a) is not type(b):
        return False
    if isinstance(a, float) and a != a:
        return b != b
    return a == b


def _only_change(old_text: str, new_text: str, path: list, value) -> bool:
    """``new_text`` loads as ``old_text`` with ``value`` at ``path`` and nothing else changed."""
    import yaml

    try:
        expected = yaml.safe_load(old_text) or {}
        got = yaml.safe_load(new_text)
        node = expected
        for part in path[:-1]:
            if isinstance(node, dict) and node.get(part) is None:
                node[part] = {}
            node = node[part]
        node[path[-1]] = value
        return _same(expected, got)
    except (yaml.YAMLError, RecursionError, LookupError, TypeError):
        return False


# --- set: the round-trip fallback ---------------------------------------------------------------

def _round_trip_set(text: str, empty: bool, parts: list[str | int], value) -> str:
    """The edit made by loading and re-dumping with ruamel.yaml: the whole file is re-emitted.

    Only for what a splice cannot do; line endings and a ``...`` end marker are restored, and new
    floats and strings are written as the loader reads them.
    """
    from ruamel.yaml.comments import CommentedMap

    lf = text.replace("\r\n", "\n")
    y = _round_trip_yaml(lf)
    y.Representer, new_str = _loader_types()
    doc = CommentedMap() if empty else y.load(lf)
    node = doc
    for part in parts[:-1]:
        if isinstance(node, list):
            node = node[_list_index(node, part)]
        else:
            if part not in node or node[part] is None:
                node[part] = CommentedMap()
            node = node[part]
    key = _list_index(node, parts[-1]) if isinstance(node, list) else parts[-1]
    old = node[key] if isinstance(node, list) else node.get(key)
    if isinstance(value, str):
        value = type(old)(value) if getattr(old, "style", None) in ("'", '"') else new_str(value)
    node[key] = value
    y.explicit_end = re.search(r"^\.\.\.\s*$", lf, re.M) is not None
    buf = io.StringIO()
    if empty and lf.strip():  # comments only: ruamel would drop them, so the new key goes below
        buf.write(lf if lf.endswith("\n") else lf + "\n")
    y.dump(doc, buf)
    out = buf.getvalue()
    return out.replace("\n", "\r\n") if _newline(text) == "\r\n" else out


def _loader_types():
    """ruamel's round-trip representer, writing new floats and strings as YAML 1.1 (the loader) reads them.

    Also the type for a new string: ruamel gives a plain ``str`` the type (so the style) of the string it
    replaces, and a plain ``yes`` there would load as a boolean.
    """
    from ruamel.yaml.representer import RoundTripRepresenter
    from ruamel.yaml.scalarstring import ScalarString

    class Representer(RoundTripRepresenter):
        pass

    class NewStr(ScalarString):
        __slots__ = ()

    def float_(self, data):
        return self.represent_scalar("tag:yaml.org,2002:float", _dump(data, None))

    def str_(self, data):
        return self.represent_scalar(_STR_TAG, str(data), style=None if _resolves_to_str(data) else "'")

    Representer.add_representer(float, float_)
    Representer.add_representer(str, str_)
    Representer.add_representer(NewStr, str_)
    return Representer, NewStr


def atomic_write(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and rename; keep mode and owner.

    A symlinked config (``/etc/edge-gateway/gateway.yaml -> /opt/...``) stays a link: the file it
    points to is the one replaced, with the temporary file in that file's folder so the rename is atomic.
    """
    path = Path(os.path.realpath(path))
    st = path.stat()
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=str(path.parent))
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:  # CRLF stays CRLF
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, st.st_mode & 0o7777)
        if os.geteuid() == 0:
            os.chown(tmp, st.st_uid, st.st_gid)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    dfd = os.open(str(path.parent), os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


# --- options: the reference of every driver's options ------------------------------------------

_OPTIONS_HINT = "edge-gateway config options DRIVER: the options of one driver (the keys under a sensor's options:)"
_FIELD_LEAD = re.compile(r"``\w+``(?:(?:/|, | and | or )``\w+``)*(:?)(?= |$)")
_DESC_WIDTH = 100  # descriptions are wrapped here, whatever the terminal: the output is the same everywhere


@dataclasses.dataclass(frozen=True)
class OptionDoc:
    """One line of the options reference: a dotted key, its type and default in YAML words, its text."""

    key: str
    type: str
    default: str  # YAML text of the default, or "required"
    text: str  # reST as the code holds it ("" where it holds none)


def _doc_paragraphs(doc: str | None) -> list[str]:
    import inspect

    return [" ".join(p.split()) for p in inspect.cleandoc(doc or "").split("\n\n") if p.strip()]


def _segments(paragraph: str, names: set[str]):
    """(field names, text) of every part of ``paragraph`` about fields, and where the first one starts.

    A part starts where a sentence or clause (after ``. ``, ``; `` or ``: `` outside parentheses)
    begins with a field name in double backquotes, or several joined by "/", ", ", " and " or " or ".
    One begun by a sentence runs to the next such part or the paragraph's end; one begun
    by a clause, to the end of that clause. A name followed by ``:`` is the label of its text.
    """
    cuts = [(0, ".")]
    depth = 0
    literal = False
    for i, ch in enumerate(paragraph):
        if paragraph.startswith("``", i):
            literal = not literal if i == 0 or paragraph[i - 1] != "`" else literal
        if literal:
            continue
        depth += (ch == "(") - (ch == ")")
        if depth == 0 and ch in ".;:" and paragraph[i + 1:i + 2] == " ":
            cuts.append((i + 2, ch))
    starts = []
    for pos, kind in cuts:
        m = _FIELD_LEAD.match(paragraph, pos)
        if m:
            found = re.findall(r"``(\w+)``", m.group(0))
            if all(n in names for n in found):
                starts.append((pos, kind, found, m))
    out = []
    for j, (pos, kind, found, m) in enumerate(starts):
        end = starts[j + 1][0] if j + 1 < len(starts) else len(paragraph)
        if kind != ".":  # a clause: to its end
            end = min([end] + [c for c, k in cuts if c > pos and k in ".;"])
        text = paragraph[m.end() + 1:end] if m.group(1) else paragraph[pos:end]
        text = text.strip().rstrip(";").rstrip()
        if text:
            out.append((found, text))
    return out, (starts[0][0] if starts else None)


def _field_texts(cls) -> dict[str, str]:
    """The text the class docstring gives each field (see :func:`_segments`)."""
    names = {f.name for f in dataclasses.fields(cls)}
    texts: dict[str, list[str]] = {}
    for paragraph in _doc_paragraphs(cls.__doc__):
        for found, text in _segments(paragraph, names)[0]:
            for name in found:
                texts.setdefault(name, []).append(text)
    return {name: " ".join(parts) for name, parts in texts.items()}


def _class_summary(cls) -> str:
    """What one item of a nested class is: its docstring's first paragraph up to any part about a field."""
    paragraphs = _doc_paragraphs(cls.__doc__)
    if not paragraphs:
        return ""
    first = paragraphs[0]
    start = _segments(first, {f.name for f in dataclasses.fields(cls)})[1]
    text = (first if start is None else first[:start]).strip().rstrip(".;:,").strip()
    return text + "." if text else ""


def _yaml_type(tp) -> tuple[str, type | None]:
    """``tp`` in the words of the YAML file, and the dataclass its items are (or None)."""
    import types
    import typing

    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        rest = [a for a in args if a is not type(None)]
        words, inner = _yaml_type(rest[0]) if len(rest) == 1 else (" or ".join(_yaml_type(a)[0] for a in rest), None)
        return (words + " or null" if type(None) in args else words), inner
    if origin is typing.Literal:
        return "one of " + "|".join(str(a) for a in args), None
    if origin in (tuple, list):
        words, inner = _yaml_type(args[0]) if args else ("values", None)
        plural = {"mapping": "mappings", "string": "strings", "number": "numbers", "integer": "integers",
                  "boolean": "booleans"}
        return "list of " + plural.get(words, words), inner
    if origin is dict:
        return f"mapping of {_yaml_type(args[0])[0]} to {_yaml_type(args[1])[0]}", None
    if dataclasses.is_dataclass(tp):
        return "mapping", tp
    return {str: "string", int: "integer", float: "number", bool: "boolean"}.get(tp, "any value"), None


def option_docs(cls, prefix: str = "") -> list[OptionDoc]:
    """Every option of the options dataclass ``cls``, nested ones dotted (``blocks[].fields[].type``)."""
    import typing

    hints = typing.get_type_hints(cls)
    texts = _field_texts(cls)
    out = []
    for f in dataclasses.fields(cls):
        if not f.init or f.metadata.get("internal"):
            continue
        words, inner = _yaml_type(hints[f.name])
        if f.default is not dataclasses.MISSING:
            default = _dump(_plain(f.default, f.name), None)
        elif f.default_factory is not dataclasses.MISSING:
            default = _dump(_plain(f.default_factory(), f.name), None)
        else:
            default = "required"
        text = next((str(f.metadata[k]) for k in ("doc", "help", "description") if f.metadata.get(k)), "")
        text = text or texts.get(f.name, "") or (_class_summary(inner) if inner else "")
        out.append(OptionDoc(prefix + f.name, words, default, text))
        if inner is not None:
            nested = "[]." if words.startswith("list of") else "."
            out += option_docs(inner, f"{prefix}{f.name}{nested}")
    return out


def driver_summary(name: str) -> str:
    """The first line of the driver module's docstring (reST as written)."""
    import drivers

    module = sys.modules[drivers.get(name).__module__]
    return _doc_paragraphs(module.__doc__)[0] if module.__doc__ else ""


def _md(text: str) -> str:
    """Our docstrings' reST as Markdown, safe in a table cell."""
    from .cmd_common import _ROLE

    text = _ROLE.sub(lambda m: f"``{m.group(1)}``", text)
    text = re.sub(r"``(.+?)``", lambda m: f"`{m.group(1)}`", text)
    return text.replace("|", "\\|")


def options_text(name: str | None = None, *, markdown: bool = False) -> str:
    """The options reference: every driver with its summary (no ``name``), or one driver's options;
    ``markdown``: docs/drivers.md (all drivers), or one driver's section of it. KeyError: no such driver."""
    import textwrap

    import drivers

    from .cmd_common import plain_text

    if name is not None and name not in drivers.names():
        raise KeyError(name)
    if markdown:
        if name is not None:
            return _options_markdown(name)
        head = ("# Driver options\n\n"
                "<!-- generated by `edge-gateway config options --markdown`; "
                "tests/test_config_options.py checks that it is current -->\n\n"
                "The keys under a sensor's `options:` in the config, for each `driver:`. "
                "`a[].b` is the key `b` of every item of the list `a`; `a.b`, the key `b` of the mapping `a`. "
                "The same reference on a gateway: `edge-gateway config options [DRIVER]`.\n\n"
                "| driver | |\n|---|---|\n"
                + "".join(f"| [`{n}`](#{n}) | {_md(driver_summary(n))} |\n" for n in drivers.names()))
        return head + "".join("\n" + _options_markdown(n) for n in drivers.names())
    if name is None:
        width = max(map(len, drivers.names()))
        lines = [f"{n:<{width}}  {plain_text(driver_summary(n))}" for n in drivers.names()]
        return "\n".join(lines + ["", _OPTIONS_HINT]) + "\n"
    docs = option_docs(drivers.get(name).Options)
    width = max(len(d.key) for d in docs)
    lines = [f"{name}: {plain_text(driver_summary(name))}", "options (the keys under the sensor's options:):"]
    for d in docs:
        default = "required" if d.default == "required" else f"default {d.default}"
        lines.append(f"  {d.key:<{width}}  {d.type}, {default}")
        if d.text:
            lines += textwrap.wrap(plain_text(d.text), _DESC_WIDTH, initial_indent=" " * 6,
                                   subsequent_indent=" " * 6, break_on_hyphens=False)
    return "\n".join(lines) + "\n"


def _options_markdown(name: str) -> str:
    import drivers

    rows = [f"| `{d.key}` | {_md(d.type)} | {'required' if d.default == 'required' else _md(f'`{d.default}`')} "
            f"| {_md(d.text)} |".replace("|  |", "| |")
            for d in option_docs(drivers.get(name).Options)]
    return (f"## {name}\n\n{_md(driver_summary(name))}\n\n| option | type | default | description |\n"
            "|---|---|---|---|\n" + "\n".join(rows) + "\n")


def options(args) -> int:
    import difflib

    import drivers

    try:
        sys.stdout.write(options_text(args.driver, markdown=args.markdown))
    except KeyError:
        known = drivers.names()
        near = difflib.get_close_matches(args.driver, known, n=1)
        hint = f"; did you mean {near[0]!r}?" if near else ""
        print(f"edge-gateway: unknown driver {args.driver!r}{hint} (known drivers: {', '.join(known)})",
              file=sys.stderr)
        return 2
    return 0
