"""Changing one value of a YAML file in place, every other byte kept (comments, layout, quoting, CRLF).

The new text is spliced in where the composed YAML says the value is; ruamel.yaml's round-trip dump only
where a splice is not safe; the result must load as the old document with only that value changed, and it
is written atomically. ``config set`` keeps only its arguments and its messages.
"""

from __future__ import annotations

import io
import os
import re
import tempfile
from pathlib import Path

from .config_keys import Target, list_index

_PLAIN_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-/]*")
_STR_TAG = "tag:yaml.org,2002:str"
_BREAKS = re.compile("[\r\n\x85\u2028\u2029]")  # YAML 1.1 line breaks: written raw, they split a value


class Unspliceable(Exception):
    """The edit cannot be made as a text splice; the round-trip dump is used instead."""


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


# --- splicing -----------------------------------------------------------------------------------

def splice(text: str, root, t: Target, value, raw: str) -> str:
    """``text`` with the value written at ``t``; every other byte kept. Unspliceable if not safe."""
    shared = _shared(root)
    if any(id(n) in shared for n in [*t.chain, t.node] if n is not None):
        raise Unspliceable
    if not t.create:
        return _replace(text, t, value, raw, shared)
    if t.node is not None:
        return _fill_null(text, t, value, raw)
    if t.parent is None:  # an empty document
        return _insert_lines(text, len(text), 0, _mapping_indent(text), t.create, value, raw)
    return _add_key(text, t, value, raw, shared)


def _replace(text: str, t: Target, value, raw: str, shared: set[int]) -> str:
    import yaml

    node = t.node
    if node.end_mark.index > node.start_mark.index and text[node.start_mark.index] in "&!":
        raise Unspliceable  # an anchor or tag belongs to the old value
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


def _fill_null(text: str, t: Target, value, raw: str) -> str:
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


def _add_key(text: str, t: Target, value, raw: str, shared: set[int]) -> str:
    """A new key in an existing mapping: after its last entry, before any comments that follow it."""
    parent = t.parent
    if parent.flow_style:
        if not parent.value:
            if text[parent.start_mark.index] != "{":
                raise Unspliceable
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
        raise Unspliceable
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
        raise Unspliceable  # ``? key``, ``--- key:`` and the like
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
    return dump(s, '"')


def _render(value, raw: str, style, context: str) -> str:
    """One line of YAML that the loader (PyYAML, YAML 1.1) reads back as ``value`` in ``context``.

    Preferred, in order: the old quote style, VALUE as typed, PyYAML's own form (``1.0e+20``,
    ``'yes'``), single quotes, double quotes.
    """
    candidates = []
    if isinstance(value, str) and style in ("'", '"'):
        candidates.append(dump(value, style))
    if raw and raw == raw.strip():
        candidates.append(raw)
    candidates.append(dump(value, None))
    if isinstance(value, str):
        candidates += [dump(value, "'"), dump(value, '"')]
    for c in candidates:
        if not _BREAKS.search(c) and _reads_as(c, value, context):
            return c
    raise Unspliceable


def dump(value, style) -> str:
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


def only_change(old_text: str, new_text: str, path: list, value) -> bool:
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


# --- the round-trip fallback ---------------------------------------------------------------------

def round_trip_set(text: str, empty: bool, parts: list[str | int], value) -> str:
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
            node = node[list_index(node, part)]
        else:
            if part not in node or node[part] is None:
                node[part] = CommentedMap()
            node = node[part]
    key = list_index(node, parts[-1]) if isinstance(node, list) else parts[-1]
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
        return self.represent_scalar("tag:yaml.org,2002:float", dump(data, None))

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
