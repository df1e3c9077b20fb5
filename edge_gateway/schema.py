"""A small typed-schema validator for YAML: frozen dataclasses in, with file:line:column errors.

The YAML is composed into nodes (which remember where they were written), then
walked against the dataclass types, so every error names the file, line,
column and key path, says what was expected and suggests a near key name.
Supported field types: str, int, float, bool, Literal, Optional, tuple[X, ...],
dict[str, X], and nested dataclasses. A key with nothing after it (YAML's null: a
``metrics:`` whose keys are all commented out) given for a section or a mapping is
an empty one, so its defaults (its required keys are still reported missing); for
a list whose default is empty, an empty list. A field whose metadata has
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
    """A config mistake, located: ``file:line:column: key.path: what is wrong``.

    One error may carry several independent mistakes (:meth:`combine`): ``errors`` lists them in file
    order, ``str()`` gives one per line, and ``line``, ``column``, ``path`` and ``message`` are the
    first one's. A single mistake's ``errors`` is ``[self]``.
    """

    def __init__(self, source: str, line: int, column: int, path: str, message: str) -> None:
        self.source, self.line, self.column, self.path, self.message = source, line, column, path, message
        self.errors: list[ConfigError] = [self]
        self.omitted = 0  # mistakes found beyond those in ``errors``
        super().__init__(self.located())

    def located(self) -> str:
        """This one mistake as ``file:line:column: key.path: what``."""
        where = f"{self.source}:{self.line}:{self.column}" if self.line else self.source  # line 0: the whole file
        return f"{where}: {self.path}: {self.message}" if self.path else f"{where}: {self.message}"

    @classmethod
    def combine(cls, errors: list[ConfigError], limit: int = 0) -> ConfigError:
        """One error for all of ``errors`` (sorted into file order; only the first ``limit`` kept if > 0)."""
        ordered = sorted(errors, key=lambda e: (e.line, e.column))
        if len(ordered) == 1:
            return ordered[0]
        first = ordered[0]
        out = cls(first.source, first.line, first.column, first.path, first.message)
        kept = ordered[:limit] if limit > 0 else ordered
        out.errors, out.omitted = kept, len(ordered) - len(kept)
        text = "\n".join(e.located() for e in kept)
        if out.omitted:
            text += f"\n{first.source}: ... and {out.omitted} more mistake{'s' if out.omitted > 1 else ''}"
        out.args = (text,)
        return out


class Problems(ValueError):
    """Several independent ``key: what is wrong`` messages from one dataclass's ``__post_init__``."""

    def __init__(self, messages: list[str]) -> None:
        self.messages = messages
        super().__init__(messages[0] if messages else "")


class _Failed(Exception):
    """A value could not be converted; its mistakes are recorded in ``Validator.errors`` already."""


class _Stop(Exception):
    """Stop validating (the document is too large): report what was recorded."""


MAX_ERRORS = 20  # mistakes listed in one ConfigError; the rest are counted

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


_FAIL = object()  # a value that could not be converted (its mistakes are recorded)


class Validator:
    """Walks composed YAML nodes against a dataclass type, collecting every independent mistake.

    A mistake in one value does not stop the walk: the other keys, list items and sections are still
    checked, and :meth:`convert` raises one :class:`ConfigError` listing them all in file order. The
    checks of a section (``__post_init__``) still run when some of its keys are wrong, with defaults
    for those: what they find in the other keys is reported, unless it names a wrong key (a
    ``reconnect_max_s`` below a ``reconnect_min_s`` that is no number waits for it). Mistakes found
    before (e.g. unset ``${NAME}`` references) may be put in ``errors`` first, and the ids of their
    nodes in ``failed_nodes``.
    """

    def __init__(self, source: str, resolve_options: Callable[[str], type] | None = None) -> None:
        self.source = source
        self.resolve_options = resolve_options
        self.errors: list[ConfigError] = []
        self.failed_nodes: set[int] = set()  # ids of nodes whose mistakes are in ``errors`` already
        self._visited = 0
        self._constructor = yaml.constructor.SafeConstructor()  # per load: it keeps every node it built

    def error(self, node: yaml.Node, path: str, message: str) -> ConfigError:
        mark = node.start_mark
        return ConfigError(self.source, mark.line + 1, mark.column + 1, path, message)

    def convert(self, node: yaml.Node, tp: Any, path: str = "") -> Any:
        """``node`` as a ``tp``; ConfigError with every mistake found (and those in ``errors`` before)."""
        try:
            value = self._convert(node, tp, path)
        except ConfigError as exc:
            self.errors.append(exc)
        except (_Failed, _Stop):
            if not self.errors:  # cannot happen: a failure is recorded before it is raised
                self.errors.append(self.error(node, path, "invalid"))
        if self.errors:
            raise ConfigError.combine(self.errors, MAX_ERRORS)
        return value

    def _child(self, node: yaml.Node, tp: Any, path: str) -> Any:
        """``node`` as a ``tp``, or ``_FAIL`` with its mistakes recorded."""
        try:
            return self._convert(node, tp, path)
        except ConfigError as exc:
            self.errors.append(exc)
        except _Failed:
            pass
        return _FAIL

    def _convert(self, node: yaml.Node, tp: Any, path: str) -> Any:
        self._visited += 1
        if self._visited > MAX_NODES:
            self.errors.append(self.error(node, path, f"document too large (over {MAX_NODES} nodes)"))
            raise _Stop
        if id(node) in self.failed_nodes:
            raise _Failed
        origin = typing.get_origin(tp)
        args = typing.get_args(tp)
        if origin in (typing.Union, types.UnionType):
            if is_null(node) and type(None) in args:
                return None
            rest = [a for a in args if a is not type(None)]
            if len(rest) == 1:
                return self._convert(node, rest[0], path)
            raise TypeError(f"unsupported union {tp}")
        if (dataclasses.is_dataclass(tp) or origin is dict) and _empty_value(node, path):
            node = yaml.MappingNode("tag:yaml.org,2002:map", [], node.start_mark, node.end_mark)
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
            items = tuple(self._child(n, item, f"{path}[{i}]") for i, n in enumerate(node.value))
            if any(v is _FAIL for v in items):
                raise _Failed
            return items
        if origin is dict:
            if not isinstance(node, yaml.MappingNode):
                raise self.error(node, path, f"expected a mapping, got {_describe(node)}")
            out = {}
            failed = False
            for knode, vnode in node.value:
                try:
                    key = self._key(knode, path)
                    if key in out:
                        raise self.error(knode, _join(path, key), "key given twice")
                except ConfigError as exc:
                    self.errors.append(exc)
                    failed = True
                    continue
                out[key] = self._child(vnode, args[1], _join(path, key))
                failed = failed or out[key] is _FAIL
            if failed:
                raise _Failed
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
            raise self.error(node, path,
                             f"{_expected_settings(path)}, got {_describe(node)}{_colon_hint(node, path)}")
        fields = {f.name: f for f in dataclasses.fields(tp) if f.init and not f.metadata.get("internal")}
        hints = typing.get_type_hints(tp)
        given: dict[str, tuple[yaml.Node, yaml.Node]] = {}
        suggested: set[str] = set()  # fields an unknown key was taken for: not also "missing"
        failed = False
        bad: set[str] = set()  # fields given wrong or missing
        for knode, vnode in node.value:
            try:
                key = self._key(knode, path)
                if key not in fields:
                    near = difflib.get_close_matches(key, list(fields), n=1, cutoff=0.6)
                    suggested.update(near)
                    hint = f"; did you mean {near[0]!r}?" if near else f"; known keys: {', '.join(sorted(fields))}"
                    raise self.error(knode, _join(path, key), f"unknown key{hint}")
                if key in given:
                    raise self.error(knode, _join(path, key), "key given twice")
            except ConfigError as exc:
                self.errors.append(exc)
                failed = True
                continue
            given[key] = (knode, vnode)
        bad.update(suggested - given.keys())  # meant under a misspelt key: its default is not what the file says
        values: dict[str, Any] = {}
        deferred = []
        for name, f in fields.items():
            if "options_of" in f.metadata:
                deferred.append((name, f))
                continue
            if name not in given:
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                    if name not in suggested:
                        self.errors.append(self.error(node, _join(path, name), "required key is missing"))
                    failed = True
                    bad.add(name)
                continue
            vnode = given[name][1]
            if (_empty_value(vnode, _join(path, name)) and f.default == ()
                    and typing.get_origin(hints[name]) in (tuple, list)):
                values[name] = ()  # ``sensors:`` with every item commented out: none, as when not given
                continue
            value = self._child(vnode, hints[name], _join(path, name))
            if value is _FAIL:
                failed = True
                bad.add(name)
            else:
                values[name] = value
        for name, f in deferred:
            sel_name = f.metadata["options_of"]
            if sel_name not in values:  # missing or wrong: recorded already
                continue
            assert self.resolve_options is not None
            try:
                opt_type = self.resolve_options(values[sel_name])
            except LookupError as exc:
                self.errors.append(self.error(given[sel_name][1], _join(path, sel_name), str(exc.args[0])))
                failed = True
                bad.update((name, sel_name))
                continue
            if name in given:
                value = self._child(given[name][1], opt_type, _join(path, name))
            elif name in suggested:  # written under a misspelt key, reported there
                continue
            else:
                empty = yaml.MappingNode("tag:yaml.org,2002:map", [], node.start_mark, node.end_mark)
                value = self._child(empty, opt_type, _join(path, name))
            if value is _FAIL:
                failed = True
                bad.add(name)
            else:
                values[name] = value
        if failed:
            self._check_the_rest(tp, node, path, fields, given, values, bad)
            raise _Failed
        try:
            return tp(**values)
        except Problems as exc:
            self.errors.extend(self._at_key(node, path, fields, given, m) for m in exc.messages)
            raise _Failed from None
        except (ValueError, TypeError) as exc:
            raise self._at_key(node, path, fields, given, str(exc)) from None

    def _check_the_rest(self, tp: type, node: yaml.Node, path: str, fields: dict, given: dict,
                        values: dict, bad: set[str]) -> None:
        """Run the checks of ``tp`` on the keys that converted (defaults for the others) and record the
        mistakes they find in those keys: ``port: 99999`` is wrong whatever the typo beside it. A mistake
        whose message names a key in ``bad`` may be one of its defaults: left for the next run."""
        required = [n for n, f in fields.items()
                    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
        if any(n not in values for n in required):
            return
        try:
            tp(**values)
            return
        except Problems as exc:
            messages = exc.messages
        except (ValueError, TypeError) as exc:
            messages = [str(exc)]
        except Exception:  # noqa: BLE001 - a check that did not expect a default here: no more to say
            return
        for message in messages:
            key, _, rest = message.partition(": ")
            if key not in values or key in bad or not rest:
                continue
            if not any(re.search(rf"\b{re.escape(n)}\b", rest) for n in bad):
                self.errors.append(self._at_key(node, path, fields, given, message))

    def _at_key(self, node: yaml.Node, path: str, fields: dict, given: dict, message: str) -> ConfigError:
        """The error for a ``key: what`` message of a dataclass's checks, at the key it names."""
        key, _, rest = message.partition(": ")
        if key in fields and rest:
            at = given[key][1] if key in given else node
            at, where, rest = _descend(at, _join(path, key), rest)
            return self.error(at, where, rest)
        return self.error(node, path, message)


def _expected_settings(path: str) -> str:
    """What a section at ``path`` should have been, in the words of the file: ``expected the broker
    settings as a mapping (key: value lines)``."""
    if not path:
        return "expected a mapping of sections (gateway:, broker:, sensors:, ...)"
    if path.startswith("detector.sensors."):  # a sensor id (a dotted one too), not a section's name
        return f"expected the detector settings for {path[len('detector.sensors.'):]!r} as a mapping (key: value lines)"
    name = re.split(r"[.]", path)[-1]
    item = re.fullmatch(r"(.+?)s?\[\d+\]", name)
    if item:  # sensors[0]: one sensor's settings
        name = item.group(1)
    what = "the driver options" if name == "options" else f"the {name} settings"
    return f"expected {what} as a mapping (key: value lines)"


_GLUED_KEY = re.compile(r"([A-Za-z_][\w.-]*):(\S.*)")


def _empty_value(node: yaml.Node, path: str) -> bool:
    """Whether ``node`` is a key's null value (``metrics:`` with nothing, or only comments, below it; ``~``),
    taken as an empty section. Not the whole document, nor a list item (``- `` alone is a mistake)."""
    return is_null(node) and bool(path) and not path.endswith("]")


def _colon_hint(node: yaml.Node, path: str) -> str:
    """For ``id:gw-1`` (one string to YAML): the space after ':' it lacks; for an empty list item, what to do."""
    if is_null(node) and path.endswith("]") and node.start_mark.index == node.end_mark.index:  # a '-' alone
        return "; give its settings after the '-', indented, or remove the item"
    if isinstance(node, yaml.ScalarNode) and node.style is None:
        m = _GLUED_KEY.fullmatch(node.value)
        if m and "://" not in node.value:
            return f"; put a space after ':' ({m.group(1)}: {m.group(2)})"
    return ""


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
