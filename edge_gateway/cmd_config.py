"""``edge-gateway config validate|show|get|set``: check, inspect and safely change the YAML config.

* ``validate FILE``: parse and check; errors name ``file:line:column: key.path``.
* ``show FILE``: the effective config (``${ENV}`` expanded, defaults filled,
  paths resolved) as YAML, or ``--json``. Secrets are masked: values of keys
  named like password/secret/token/psk are printed as ``********``, and for
  secret files (``broker.secrets_file``, ``*key_file``) only the path is shown,
  never the file's contents (this command never opens them).
* ``get FILE KEY``: one value of the effective config. ``KEY`` is a dotted
  path; list items by index or by ``id``: ``sensors[0].options.port`` or
  ``sensors.air-1.options.port``. Scalars print bare, the rest as JSON.
* ``set FILE KEY VALUE``: change one value in place. The file is edited with
  ruamel.yaml's round-trip mode (comments, order, quoting and flow style are
  kept), the result is validated with :func:`edge_gateway.config.loads`, and
  only a valid result is written (temporary file in the same folder, fsync,
  rename: a crash leaves the old or the new file, never half of one). VALUE is
  read as YAML (``9600`` is a number, ``true`` a boolean); where the file
  already holds a string it stays a string, and ``--string`` forces one.
  Missing mapping keys along the path are created. Reload the daemon
  afterwards (``edge-gateway reload`` or ``systemctl reload edge-gateway``).

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

MASK = "********"
_SECRET_NAME = re.compile(r"(password|passwd|secret|token|psk|api_key|private_key)", re.I)
_PATH_NAME = re.compile(r"(_file|_path|_dir)$")


def add_to(sub) -> None:
    p = sub.add_parser("config", help="check, show, get and set values of the YAML config",
                       description="Check, inspect and safely change the YAML config.")
    csub = p.add_subparsers(dest="config_command", metavar="ACTION")
    csub.required = True
    v = csub.add_parser("validate", help="validate a config file; exit 0 if valid, 2 if not")
    v.add_argument("file")
    v.set_defaults(func=validate)
    s = csub.add_parser("show", help="print the effective config, secrets masked")
    s.add_argument("file")
    s.add_argument("--json", action="store_true", help="JSON instead of YAML")
    s.set_defaults(func=show)
    g = csub.add_parser("get", help="print one value: sensors[0].options.port or sensors.air-1.options.port")
    g.add_argument("file")
    g.add_argument("key")
    g.add_argument("--json", action="store_true", help="always print JSON")
    g.set_defaults(func=get)
    t = csub.add_parser("set", help="change one value in place, keeping comments; refuses an invalid result")
    t.add_argument("file")
    t.add_argument("key")
    t.add_argument("value")
    t.add_argument("--string", action="store_true", help="store VALUE as a string whatever it looks like")
    t.add_argument("--dry-run", action="store_true", help="print the new file instead of writing it")
    t.set_defaults(func=set_value)


def _load(path: str):
    from . import config

    try:
        return config.load(path), 0
    except config.ConfigError as exc:
        print(f"edge-gateway: {exc}", file=sys.stderr)
        return None, 2


def validate(args) -> int:
    cfg, rc = _load(args.file)
    if cfg is None:
        return rc
    print(f"{args.file}: valid ({len(cfg.sensors)} sensors, gateway {cfg.gateway.id})")
    return 0


# --- show / get -------------------------------------------------------------------------------

def effective(cfg) -> dict:
    """The config as plain data with secrets masked (see the module docstring)."""
    return _plain(cfg, "")


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
        _dump_yaml(data, sys.stdout)
    return 0


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
        value = lookup(effective(cfg), split_key(args.key))
    except (KeyError, ValueError) as exc:
        print(f"edge-gateway: {exc.args[0]}", file=sys.stderr)
        return 2
    if args.json or isinstance(value, (dict, list)):
        print(json.dumps(value))
    elif isinstance(value, bool):
        print("true" if value else "false")
    else:
        print("" if value is None else value)
    return 0


# --- set --------------------------------------------------------------------------------------

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
    from ruamel.yaml.comments import CommentedMap

    from . import config

    path = Path(args.file)
    try:
        text = config.read_text(path)
        empty = config.compose(text, str(path)) is None
    except config.ConfigError as exc:
        print(f"edge-gateway: {exc}", file=sys.stderr)
        return 2
    try:
        parts = split_key(args.key)
        y = _round_trip_yaml(text)
        doc = CommentedMap() if empty else y.load(text)
    except Exception as exc:  # noqa: BLE001 - ruamel raises many kinds; all mean "cannot edit this"
        print(f"edge-gateway: {path}: {exc}", file=sys.stderr)
        return 2
    if not isinstance(doc, dict):
        what = "a list" if isinstance(doc, list) else "a single value"
        print(f"edge-gateway: {path}: expected a mapping of sections (gateway:, broker:, ...), got {what}",
              file=sys.stderr)
        return 2
    node = doc
    for i, part in enumerate(parts[:-1]):
        if isinstance(node, list):
            idx = _list_index(node, part)
            if idx is None:
                print(f"edge-gateway: {'.'.join(map(str, parts[:i])) or 'config'} has no item {part!r}",
                      file=sys.stderr)
                return 2
            node = node[idx]
        elif isinstance(node, dict):
            if part not in node or node[part] is None:
                node[part] = CommentedMap()
            node = node[part]
        else:
            print(f"edge-gateway: {'.'.join(map(str, parts[:i]))} is a single value, it has no {part!r}",
                  file=sys.stderr)
            return 2
    last = parts[-1]
    if isinstance(node, list):
        idx = _list_index(node, last)
        if idx is None:
            print(f"edge-gateway: no list item {last!r}", file=sys.stderr)
            return 2
        old, key = node[idx], idx
    elif isinstance(node, dict):
        old, key = node.get(last), last
    else:
        print(f"edge-gateway: {'.'.join(map(str, parts[:-1]))} is a single value", file=sys.stderr)
        return 2
    node[key] = _new_value(args.value, old, args.string)
    buf = io.StringIO()
    if empty and text.strip():  # comments only: ruamel would drop them, so the new key goes below
        buf.write(text if text.endswith("\n") else text + "\n")
    y.dump(doc, buf)
    new_text = buf.getvalue()
    try:
        config.loads(new_text, str(path), path.resolve().parent)
    except config.ConfigError as exc:
        print(f"edge-gateway: refused, the result would be invalid (file unchanged): {exc}", file=sys.stderr)
        return 2
    if args.dry_run:
        sys.stdout.write(new_text)
        return 0
    try:
        atomic_write(path, new_text)
    except OSError as exc:
        print(f"edge-gateway: cannot write {path}: {exc}", file=sys.stderr)
        return 1
    was = "" if old is None else f" (was {old!s})"
    print(f"{path}: {args.key} = {node[key]!s}{was}")
    if isinstance(old, str) and "${" in old:
        print(f"note: this replaced the environment reference {old}", file=sys.stderr)
    return 0


def _new_value(raw: str, old, force_string: bool):
    from ruamel.yaml import YAML

    if isinstance(old, str) and type(old) is not str:  # a quoted scalar: keep its quote style
        return type(old)(raw)
    if force_string or (isinstance(old, str) and "${" not in old):
        return raw
    try:
        value = YAML(typ="safe", pure=True).load(raw)
    except Exception:  # noqa: BLE001 - not YAML: take it as text
        return raw
    return raw if value is None and raw.strip() not in ("null", "~") else value


def atomic_write(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and rename; keep mode and owner.

    A symlinked config (``/etc/edge-gateway/gateway.yaml -> /opt/...``) stays a link: the file it
    points to is the one replaced, with the temporary file in that file's folder so the rename is atomic.
    """
    path = Path(os.path.realpath(path))
    st = path.stat()
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=str(path.parent))
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
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
