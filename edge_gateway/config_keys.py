"""Dotted config keys (``sensors[0].options.port``, ``sensors.air-1.options.port``): read, looked up in
the loaded data, and located in the file's composed YAML. Not in the ``config`` command: the daemon too says
where a warning's key is written (``file:line:column``)."""

from __future__ import annotations

import dataclasses
import re

_TOKEN = re.compile(r'([^.\[\]]+)|\[(\d+)\]|\["([^"\]]+)"\]')


def split_key(key: str) -> list[str | int]:
    """``sensors[0].options.port`` -> ['sensors', 0, 'options', 'port']; ValueError if malformed. A part with a
    dot in it (a sensor id ``aq.1``) is written in quotes: ``sensors["aq.1"].options.port``."""
    parts: list[str | int] = []
    pos = 0
    while pos < len(key):
        if key[pos] == ".":
            pos += 1
            continue
        m = _TOKEN.match(key, pos)
        if not m:
            raise ValueError(f"cannot read key {key!r} at {key[pos:]!r}")
        parts.append(int(m.group(2)) if m.group(2) is not None else m.group(3) or m.group(1))
        pos = m.end()
    if not parts:
        raise ValueError("empty key")
    return parts


def key_part(name: str) -> str:
    """``name`` as one part of a dotted key: quoted when it holds a dot (see :func:`split_key`)."""
    return f'["{name}"]' if "." in name else f".{name}"


def lookup(data, parts: list[str | int]):
    """Follow a key path through dicts and lists (list items also by their ``id``); KeyError with a hint."""
    import difflib

    node = data
    done: list[str] = []
    for part in parts:
        if isinstance(node, list):
            idx = list_index(node, part)
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


def list_index(seq, part) -> int | None:
    """The index of item ``part`` (an index, or the ``id`` of a mapping item) in ``seq``; None if none."""
    if isinstance(part, int) or (isinstance(part, str) and part.isdigit() and not any(
            isinstance(x, dict) and str(x.get("id")) == part for x in seq)):
        i = int(part)
        return i if -len(seq) <= i < len(seq) else None
    for i, item in enumerate(seq):
        if isinstance(item, dict) and str(item.get("id")) == str(part):
            return i
    return None


@dataclasses.dataclass
class Target:
    """Where the value goes: an existing node, or ``create`` keys below ``parent`` or below a null ``node``."""

    path: list = dataclasses.field(default_factory=list)  # keys and indexes as in the loaded data
    chain: list = dataclasses.field(default_factory=list)  # nodes passed on the way
    parent: object = None
    key: object = None
    node: object = None
    create: list = dataclasses.field(default_factory=list)
    old: object = None


def locate(root, parts: list[str | int]) -> Target:
    """Follow the key through the composed nodes as ``lookup`` does through data; KeyError if it cannot."""
    import yaml

    from . import schema

    t = Target()
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
            idx = list_index(_item_ids(node), part)
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
    """The ``id`` (as written) of each mapping item, in the shape ``list_index`` takes."""
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


def located_warnings(cfg, path: str) -> list[tuple[str, str, str]]:
    """:func:`.config.warnings_of` ``cfg`` as ``(where, key, text)``: ``where`` is ``file:line:column`` of
    the key's value, as errors name it (just the file if it is not written there). The file is read and
    composed once, and only when there is a warning (``validate``; the daemon's journal at start and reload)."""
    from . import config

    warnings = config.warnings_of(cfg)
    if not warnings:
        return []
    wheres = where_written(path, [key for key, _ in warnings])
    return [(where, key, text) for where, (key, text) in zip(wheres, warnings)]


def where_written(path: str, keys: list[str]) -> list[str]:
    """``file:line:column`` of the value of each dotted key in the config file ``path``, or just the file
    for a key not written there (or a file that no longer parses). The file is read and composed once."""
    from . import config

    if not keys:
        return []
    try:
        root = config.compose(config.read_text(path), path)
    except config.ConfigError:
        root = None  # as an empty file: every key is "not written there"
    out = []
    for key in keys:
        try:
            node = locate(root, split_key(key)).node
        except (KeyError, ValueError):
            node = None
        out.append(path if node is None else f"{path}:{node.start_mark.line + 1}:{node.start_mark.column + 1}")
    return out
