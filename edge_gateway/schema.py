"""A small typed-schema validator for YAML: frozen dataclasses in, with file:line:column errors.

The YAML is composed into nodes (which remember where they were written), then
walked against the dataclass types, so every error names the file, line,
column and key path, says what was expected and suggests a near key name.
Supported field types: str, int, float, bool, Literal, Optional, tuple[X, ...],
dict[str, X], and nested dataclasses. A field whose metadata has
``options_of="other_field"`` is validated against the dataclass that
``resolve_options(value of other_field)`` returns (how driver options work).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import types
import typing
from typing import Any, Callable

import yaml

MAX_NODES = 100_000


class ConfigError(Exception):
    """A config mistake, located: ``file:line:column: key.path: what is wrong``."""

    def __init__(self, source: str, line: int, column: int, path: str, message: str) -> None:
        self.source, self.line, self.column, self.path, self.message = source, line, column, path, message
        where = f"{source}:{line}:{column}" if line else source  # line 0: about the whole file
        super().__init__(f"{where}: {path}: {message}" if path else f"{where}: {message}")


EXPONENT_FLOAT = re.compile(r"[-+]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)[eE][-+]?[0-9]+")  # YAML 1.2 floats 1.1 reads as text
_TAG_NAMES = {
    "tag:yaml.org,2002:int": "an integer",
    "tag:yaml.org,2002:float": "a number",
    "tag:yaml.org,2002:bool": "true/false",
    "tag:yaml.org,2002:null": "nothing (null)",
    "tag:yaml.org,2002:str": "a string",
    "tag:yaml.org,2002:map": "a mapping",
    "tag:yaml.org,2002:seq": "a list",
}


class Validator:
    """Walks composed YAML nodes against a dataclass type."""

    def __init__(self, source: str, resolve_options: Callable[[str], type] | None = None) -> None:
        self.source = source
        self.resolve_options = resolve_options
        self._visited = 0
        self._constructor = yaml.constructor.SafeConstructor()  # per load: it keeps every node it built

    def error(self, node: yaml.Node, path: str, message: str) -> ConfigError:
        mark = node.start_mark
        return ConfigError(self.source, mark.line + 1, mark.column + 1, path, message)

    def convert(self, node: yaml.Node, tp: Any, path: str) -> Any:
        self._visited += 1
        if self._visited > MAX_NODES:
            raise self.error(node, path, f"document too large (over {MAX_NODES} nodes)")
        origin = typing.get_origin(tp)
        args = typing.get_args(tp)
        if origin in (typing.Union, types.UnionType):
            if is_null(node) and type(None) in args:
                return None
            rest = [a for a in args if a is not type(None)]
            if len(rest) == 1:
                return self.convert(node, rest[0], path)
            raise TypeError(f"unsupported union {tp}")
        if dataclasses.is_dataclass(tp):
            return self._dataclass(node, tp, path)
        if origin is typing.Literal:
            value = self._scalar(node, path)
            if value not in args:
                choices = ", ".join(repr(a) for a in args)
                raise self.error(node, path, f"expected one of {choices}, got {value!r}")
            return value
        if origin in (tuple, list):
            if not isinstance(node, yaml.SequenceNode):
                raise self.error(node, path, f"expected a list, got {_describe(node)}")
            item = args[0]
            return tuple(self.convert(n, item, f"{path}[{i}]") for i, n in enumerate(node.value))
        if origin is dict:
            if not isinstance(node, yaml.MappingNode):
                raise self.error(node, path, f"expected a mapping, got {_describe(node)}")
            out = {}
            for knode, vnode in node.value:
                key = self._key(knode, path)
                if key in out:
                    raise self.error(knode, _join(path, key), "key given twice")
                out[key] = self.convert(vnode, args[1], _join(path, key))
            return out
        if tp is bool:
            value = self._scalar(node, path)
            if not isinstance(value, bool):
                raise self.error(node, path, f"expected true or false, got {_describe(node)}")
            return value
        if tp is int:
            value = self._scalar(node, path)
            if isinstance(value, bool) or not isinstance(value, int):
                raise self.error(node, path, f"expected an integer, got {_describe(node)}")
            return value
        if tp is float:
            if isinstance(node, yaml.ScalarNode) and node.style is None and EXPONENT_FLOAT.fullmatch(node.value):
                node.tag = "tag:yaml.org,2002:float"  # 1e3, which YAML 1.1 resolves to a string
            value = self._scalar(node, path)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise self.error(node, path, f"expected a number, got {_describe(node)}")
            if not math.isfinite(value):  # NaN passes every "must be positive" check, .inf waits for ever
                raise self.error(node, path, f"expected a finite number, got {node.value}")
            return float(value)
        if tp is str:
            if not isinstance(node, yaml.ScalarNode) or is_null(node):
                raise self.error(node, path, f"expected a string, got {_describe(node)}")
            return str(node.value)
        if tp is Any:
            return self._constructor.construct_object(node, deep=True)
        raise TypeError(f"unsupported schema type {tp!r} at {path}")

    def _scalar(self, node: yaml.Node, path: str) -> Any:
        if not isinstance(node, yaml.ScalarNode):
            raise self.error(node, path, f"expected a single value, got {_describe(node)}")
        try:
            return self._constructor.construct_object(node)
        except yaml.constructor.ConstructorError as exc:
            raise self.error(node, path, str(exc.problem)) from None

    def _key(self, node: yaml.Node, path: str) -> str:
        if not isinstance(node, yaml.ScalarNode) or is_null(node):
            raise self.error(node, path, "keys must be plain names")
        return str(node.value)

    def _dataclass(self, node: yaml.Node, tp: type, path: str) -> Any:
        if not isinstance(node, yaml.MappingNode):
            raise self.error(node, path, f"expected a mapping of {tp.__name__} settings, got {_describe(node)}")
        fields = {f.name: f for f in dataclasses.fields(tp) if f.init and not f.metadata.get("internal")}
        hints = typing.get_type_hints(tp)
        given: dict[str, tuple[yaml.Node, yaml.Node]] = {}
        for knode, vnode in node.value:
            key = self._key(knode, path)
            if key not in fields:
                near = difflib.get_close_matches(key, list(fields), n=1, cutoff=0.6)
                hint = f"; did you mean {near[0]!r}?" if near else f"; known keys: {', '.join(sorted(fields))}"
                raise self.error(knode, _join(path, key), f"unknown key{hint}")
            if key in given:
                raise self.error(knode, _join(path, key), "key given twice")
            given[key] = (knode, vnode)
        values: dict[str, Any] = {}
        deferred = []
        for name, f in fields.items():
            if "options_of" in f.metadata:
                deferred.append((name, f))
                continue
            if name not in given:
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                    raise self.error(node, _join(path, name), "required key is missing")
                continue
            values[name] = self.convert(given[name][1], hints[name], _join(path, name))
        for name, f in deferred:
            sel_name = f.metadata["options_of"]
            if sel_name not in values:
                continue
            assert self.resolve_options is not None
            try:
                opt_type = self.resolve_options(values[sel_name])
            except LookupError as exc:
                raise self.error(given[sel_name][1], _join(path, sel_name), str(exc.args[0])) from None
            if name in given:
                values[name] = self.convert(given[name][1], opt_type, _join(path, name))
            else:
                empty = yaml.MappingNode("tag:yaml.org,2002:map", [], node.start_mark, node.end_mark)
                values[name] = self._dataclass(empty, opt_type, _join(path, name))
        try:
            return tp(**values)
        except (ValueError, TypeError) as exc:
            message = str(exc)
            key, _, rest = message.partition(": ")
            if key in fields and rest:
                at = given[key][1] if key in given else node
                at, where, rest = _descend(at, _join(path, key), rest)
                raise self.error(at, where, rest) from None
            raise self.error(node, path, message) from None


def _descend(node: yaml.Node, path: str, message: str) -> tuple[yaml.Node, str, str]:
    """Follow ``key: key: ...`` prefixes of ``message`` down nested mappings to the key they name.

    A check that spans sections (e.g. an override naming a sensor that does not
    exist) is made by the enclosing dataclass, yet the error should point at the
    key that is wrong, not at the start of the section.
    """
    while True:
        key, _, rest = message.partition(": ")
        hit = _entry(node, key)
        if hit is None or not rest:
            return node, path, message
        path, message = _join(path, key), rest
        if _entry(hit[1], rest.partition(": ")[0]) is None:
            return hit[0], path, message  # the key itself is what the message is about
        node = hit[1]


def _entry(node: yaml.Node, key: str) -> tuple[yaml.Node, yaml.Node] | None:
    """The (key node, value node) of ``key`` in a mapping node, or (item, item) of ``[i]`` in a list;
    None if absent."""
    if isinstance(node, yaml.SequenceNode) and key.startswith("[") and key.endswith("]") and key[1:-1].isdigit():
        i = int(key[1:-1])
        return (node.value[i], node.value[i]) if i < len(node.value) else None
    if not isinstance(node, yaml.MappingNode):
        return None
    return next(((k, v) for k, v in node.value if isinstance(k, yaml.ScalarNode) and k.value == key), None)


def is_null(node: yaml.Node) -> bool:
    return isinstance(node, yaml.ScalarNode) and node.tag == "tag:yaml.org,2002:null"


def _describe(node: yaml.Node) -> str:
    name = _TAG_NAMES.get(node.tag, node.tag)
    if isinstance(node, yaml.ScalarNode) and not is_null(node):
        return f"{name} {node.value!r}"
    return name


def _join(path: str, key: str) -> str:
    if key.startswith("[") and path:
        return f"{path}{key}"
    return f"{path}.{key}" if path else key
