"""The reference of every driver's options (``config options``, docs/drivers.md) and of the keys of the
config's sections (``config options windows``), built from the dataclasses of the schema and the text their
code documents them with, so that it cannot drift from the code."""

from __future__ import annotations

import dataclasses
import re
import sys

from .plain_config import plain
from .yaml_edit import dump

_OPTIONS_HINT = "edge-gateway config options DRIVER: the options of one driver (the keys under a sensor's options:)"
_SECTIONS_HINT = "edge-gateway config options SECTION: the keys of one section of the config: "
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


def _own_doc(cls) -> str | None:
    """The class's docstring; None for the one ``dataclass`` makes up (``WindowSection(seconds: float = ...)``)."""
    doc = cls.__doc__
    return None if doc is None or doc.startswith(cls.__name__ + "(") else doc


def _field_comments(cls) -> dict[str, str]:
    """The comment at the end of each field's line in the class's source (``hop_s: float = 1.0  # why``)."""
    import inspect
    import io
    import tokenize

    try:
        source = inspect.getsource(cls)
        comments = {t.start[0]: t.string.lstrip("#").strip()
                    for t in tokenize.generate_tokens(io.StringIO(source).readline) if t.type == tokenize.COMMENT}
    except (OSError, TypeError, tokenize.TokenError, SyntaxError):  # no source (a frozen build): no comments
        return {}
    names = {f.name for f in dataclasses.fields(cls)}
    out: dict[str, str] = {}
    for n, line in enumerate(source.splitlines(), 1):
        if re.match(r"\s+def ", line):
            break
        m = re.match(r"\s+(\w+)\s*:", line)
        if m and m.group(1) in names and n in comments and not comments[n].startswith("noqa"):
            out.setdefault(m.group(1), comments[n])
    return out


def _field_texts(cls) -> dict[str, str]:
    """The text the class docstring gives each field (see :func:`_segments`)."""
    names = {f.name for f in dataclasses.fields(cls)}
    texts: dict[str, list[str]] = {}
    for paragraph in _doc_paragraphs(_own_doc(cls)):
        for found, text in _segments(paragraph, names)[0]:
            for name in found:
                texts.setdefault(name, []).append(text)
    return {name: " ".join(parts) for name, parts in texts.items()}


def _class_summary(cls) -> str:
    """What one item of a nested class is: its docstring's first paragraph up to any part about a field."""
    paragraphs = _doc_paragraphs(_own_doc(cls))
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


def option_docs(cls, prefix: str = "", *, comments: bool = False) -> list[OptionDoc]:
    """Every option of the options dataclass ``cls``, nested ones dotted (``blocks[].fields[].type``).

    ``comments``: a field the docstring says nothing about takes the comment at the end of its line (the
    config's sections are documented so; the drivers' reference, docs/drivers.md, keeps to docstrings)."""
    import typing

    hints = typing.get_type_hints(cls)
    texts = {**_field_comments(cls), **_field_texts(cls)} if comments else _field_texts(cls)
    out = []
    for f in dataclasses.fields(cls):
        if not f.init or f.metadata.get("internal"):
            continue
        words, inner = _yaml_type(hints[f.name])
        if inner is not None and dataclasses.is_dataclass(f.default):
            default = "{}"  # its own keys' defaults, listed below it
        elif f.default is not dataclasses.MISSING:
            default = dump(plain(f.default, f.name), None)
        elif f.default_factory is not dataclasses.MISSING:
            default = dump(plain(f.default_factory(), f.name), None)
        else:
            default = "required"
        text = next((str(f.metadata[k]) for k in ("doc", "help", "description") if f.metadata.get(k)), "")
        text = text or texts.get(f.name, "") or (_class_summary(inner) if inner else "")
        out.append(OptionDoc(prefix + f.name, words, default, text))
        if inner is not None:
            nested = "[]." if words.startswith("list of") else "."
            out += option_docs(inner, f"{prefix}{f.name}{nested}", comments=comments)
    return out


def sections() -> dict[str, tuple[str, type]]:
    """``{name: (key path in the file, dataclass)}`` of every section of the config (``GatewayConfig``'s
    keys that hold settings), in the file's order, each followed by the sections nested in it, which go by
    their own name too (``filters``: ``sensors[].filters``) when no other section or driver has it."""
    import typing

    import drivers

    from .config import GatewayConfig

    found: list[tuple[str, str, type, list]] = []
    for f in dataclasses.fields(GatewayConfig):
        words, inner = _yaml_type(typing.get_type_hints(GatewayConfig)[f.name])
        if inner is None:
            continue
        path = f.name + ("[]" if words.startswith("list of") else "")
        nested = [(g.name, f"{path}.{g.name}", deeper) for g in dataclasses.fields(inner)
                  if (deeper := _yaml_type(typing.get_type_hints(inner)[g.name])[1]) is not None]
        found.append((f.name, path, inner, nested))
    taken = {name for name, *_ in found} | set(drivers.names())
    out: dict[str, tuple[str, type]] = {}
    for name, path, cls, nested in found:
        out[name] = (path, cls)
        out.update((n, (p, c)) for n, p, c in nested if n not in taken)
    return out


def _where(path: str) -> str:
    """Where the keys of the section at ``path`` are written, as the header of their list says it."""
    parent, _, child = path.partition("[]")
    if child:
        return f"under {child[1:]}: in each item of {parent}:"
    return f"of each item of {parent}:" if parent != path else f"under {path}: in the config"


def _restarts(path: str) -> bool:
    """Whether a change of the key at ``path`` takes a restart (``reload`` refuses it)."""
    from .reload import RESTART_FIELDS

    return any(path == f or path.startswith(f + ".") for f in RESTART_FIELDS)


def _described(text: str) -> list[str]:
    """A key's description under its line: indented 6, wrapped at :data:`_DESC_WIDTH`."""
    import textwrap

    return textwrap.wrap(text, _DESC_WIDTH, initial_indent=" " * 6, subsequent_indent=" " * 6, break_on_hyphens=False)


def section_text(name: str, *, markdown: bool = False) -> str:
    """The keys of config section ``name`` (see :func:`sections`): type, default, text, and whether a change
    takes a restart. KeyError: no such section."""
    from .cmd_common import plain_text

    path, cls = sections()[name]
    where = path.removesuffix("[]")
    docs = option_docs(cls, comments=True)
    summary = _class_summary(cls)
    notes = {d.key: "needs a restart" for d in docs if _restarts(f"{where}.{d.key}")}
    if markdown:
        rows = [f"| `{d.key}` | {_md(d.type)} | {'required' if d.default == 'required' else _md(f'`{d.default}`')} "
                f"| {_md(' '.join(filter(None, (d.text, notes.get(d.key, '') and '(needs a restart)'))))} |"
                .replace("|  |", "| |") for d in docs]
        return (f"## {where}\n\n" + (f"{_md(summary)}\n\n" if summary else "")
                + "| key | type | default | description |\n|---|---|---|---|\n" + "\n".join(rows) + "\n")
    width = max(len(d.key) for d in docs)
    lines = [f"{where}: {plain_text(summary)}" if summary else f"{where}:", f"keys ({_where(path)}):"]
    for d in docs:
        default = "required" if d.default == "required" else f"default {d.default}"
        restart = f", {notes[d.key]}" if d.key in notes else ""
        lines.append(f"  {d.key:<{width}}  {d.type}, {default}{restart}")
        if d.text:
            lines += _described(plain_text(d.text))
    if name == "detector":
        lines += _params_lines()
    return "\n".join(lines) + "\n"


def _params_lines() -> list[str]:
    """What ``detector.params`` (and each ``detector.sensors`` entry's) takes: a technician tuning a channel on a
    gateway finds the names, defaults and ranges here, without the source."""
    from .analytics.settings import param_docs

    docs = param_docs()
    width = max(len(n) for n, _, _ in docs)
    lines = ["params (under detector.params: or a detector.sensors entry's params:, any of):"]
    for name, default, values in docs:
        lines.append(f"  {name:<{width}}  default {default}")
        lines += _described(values)
    return lines


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
    """The options reference: every driver with its summary (no ``name``), or one driver's options, or the
    keys of one section of the config (:func:`section_text`); ``markdown``: docs/drivers.md (all drivers),
    or one driver's or section's part of it. KeyError: no such driver or section."""
    import drivers

    from .cmd_common import plain_text

    if name is not None and name not in drivers.names():
        return section_text(name, markdown=markdown)
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
        return "\n".join(lines + ["", _OPTIONS_HINT, _SECTIONS_HINT + ", ".join(sections())] + _top_lines()) + "\n"
    docs = option_docs(drivers.get(name).Options)
    width = max(len(d.key) for d in docs)
    lines = [f"{name}: {plain_text(driver_summary(name))}", "options (the keys under the sensor's options:):"]
    for d in docs:
        default = "required" if d.default == "required" else f"default {d.default}"
        lines.append(f"  {d.key:<{width}}  {d.type}, {default}")
        if d.text:
            lines += _described(plain_text(d.text))
    return "\n".join(lines) + "\n"


def _top_lines() -> list[str]:
    """The config's own keys outside every section (``log_level``), which no ``config options SECTION`` shows."""
    from .cmd_common import plain_text
    from .config import GatewayConfig

    lines, named = [], sections()
    for d in option_docs(GatewayConfig, comments=True):
        if d.key in named or "." in d.key or "[" in d.key:
            continue
        lines.append(f"top-level key {d.key}: {d.type}, default {d.default}")
        if d.text:
            lines += _described(plain_text(d.text))
    return lines


def _options_markdown(name: str) -> str:
    import drivers

    rows = [f"| `{d.key}` | {_md(d.type)} | {'required' if d.default == 'required' else _md(f'`{d.default}`')} "
            f"| {_md(d.text)} |".replace("|  |", "| |")
            for d in option_docs(drivers.get(name).Options)]
    return (f"## {name}\n\n{_md(driver_summary(name))}\n\n| option | type | default | description |\n"
            "|---|---|---|---|\n" + "\n".join(rows) + "\n")
