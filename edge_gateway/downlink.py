"""Downlink commands: ``<prefix>/<gw>/cmd/<name>`` in, ``<prefix>/<gw>/cmd-res/<name>`` out.

A request is a msgpack map or a JSON object ``{"id": ..., "args": {...}}``
(``id``: string or integer, echoed back; ``args``: optional map). The reply is
``{"id", "ok": true, "result"}`` or ``{"id", "ok": false, "error"}``, in the
encoding of the request (JSON for JSON, msgpack otherwise). Only commands listed
in ``broker.commands`` are accepted; anything malformed, unknown or not allowed
gets an error reply and changes nothing. Handlers are plain or async callables
the daemon registers: ``handler(args: dict) -> result``; a ``CommandError`` (or
``ValueError``) they raise becomes the error text. Nothing here raises to the caller.

A command name is the last topic level and is echoed into the reply topic, so
only short names (:func:`valid_name`) are looked up; anything else is refused
and counted (``refused``) without being echoed. Requests larger than
:data:`MAX_REQUEST` are refused before they are decoded.

At most :data:`MAX_IN_FLIGHT` commands run at once (:meth:`CommandRouter.admit`, called by the daemon
before it starts a task); more are refused without a task and without a reply, and counted (``busy``).
A request delivered with the MQTT retain flag is never run (:meth:`CommandRouter.refuse_retained`): it
gets an error reply and is counted (``retained``). Both are logged at most once a minute, not per message.

Not here: the MQTT side (``uplink.py`` subscribes, caps inbound size, refuses
invalid topics, drops inbound messages past ``uplink.MAX_INBOUND_PENDING`` waiting for a stalled
event loop before they reach :meth:`CommandRouter.admit`, and replies past ``uplink.MAX_WAITING``
waiting for an unreachable broker, oldest first) and what the commands do (``daemon.py``).
"""

from __future__ import annotations

import inspect
import json
import logging
import math
import re
import time
from typing import Any, Callable, Iterable

import msgpack

log = logging.getLogger(__name__)
MAX_REQUEST = 8 * 1024
MAX_NAME = 64  # characters; every real command name is far shorter
_NAME = re.compile(r"[A-Za-z0-9_-]{1,%d}" % MAX_NAME)
MAX_IN_FLIGHT = 8
"""Commands accepted and not yet answered, at most (security review 19 #4). Each one is a task holding
its request and, for ``status``, a full snapshot and its encoded reply; without a cap a flood of the
default-enabled ``status`` (90,000 QoS 0 requests in 32 s) queued a task per message and took the daemon
from 147 MB to 536 MB, past the unit's MemoryMax. A cloud sends one command at a time and waits for its
reply, so 8 leave room for a few operators at once; more are refused on arrival, without a task or a
reply (an answer per refused message would be a flood of our own), and counted."""
LOG_EVERY_S = 60.0  # at most one log line a minute per kind of refusal (busy, retained)
RETAINED = ("retained commands are refused (a retained request would run again at every reconnect): "
            "publish commands with retain false, and clear this one with an empty retained message")


def valid_name(name: object) -> bool:
    """True for a name that may be looked up and echoed into ``cmd-res/<name>``: short, no ``/``,
    no wildcard, so the reply topic stays far inside MQTT's 65,535 bytes."""
    return isinstance(name, str) and _NAME.fullmatch(name) is not None


class CommandError(Exception):
    """A command failed in a way its caller should be told about."""


def _jsonable(x: Any) -> Any:
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, bytes):
        return x.hex()
    if x is None or isinstance(x, (str, int, float, bool)):
        return x
    return str(x)


def parse_request(payload: bytes) -> tuple[Any, dict, bool]:
    """``(id, args, is_json)``; raise CommandError on anything malformed."""
    if len(payload) > MAX_REQUEST:
        raise CommandError(f"request larger than {MAX_REQUEST} bytes")
    is_json = payload.lstrip()[:1] == b"{"
    try:
        if is_json:
            req = json.loads(payload.decode("utf-8"))
        else:
            req = msgpack.unpackb(payload, raw=False, strict_map_key=True, max_bin_len=MAX_REQUEST,
                                  max_str_len=MAX_REQUEST, max_array_len=256, max_map_len=64)
    except Exception as exc:
        raise CommandError(f"not a msgpack map or JSON object: {type(exc).__name__}") from None
    if not isinstance(req, dict):
        raise CommandError("request must be a map {id, args}")
    unknown = set(req) - {"id", "args"}
    if unknown:
        raise CommandError(f"unknown request key {sorted(map(str, unknown))[0]!r}")
    rid = req.get("id")
    if isinstance(rid, bool) or not (isinstance(rid, int) or (isinstance(rid, str) and len(rid) <= 128)):
        raise CommandError("id: must be a string (at most 128 characters) or an integer")
    args = req.get("args", {})
    if args is None:
        args = {}
    if not isinstance(args, dict) or not all(isinstance(k, str) for k in args):
        raise CommandError("args: must be a map with string keys")
    return rid, args, is_json


class CommandRouter:
    """Validates requests, dispatches them to registered handlers, encodes replies."""

    def __init__(self, allowed: Iterable[str]) -> None:
        self.allowed = frozenset(allowed)
        self._handlers: dict[str, Callable[[dict], Any]] = {}
        self.counts = {"ok": 0, "error": 0}
        self.refused = 0  # requests whose name is not valid_name() (also counted as errors)
        self.max_in_flight = MAX_IN_FLIGHT
        self.in_flight = 0  # admitted by admit(), not yet done()
        self.busy = 0  # refused by admit(): MAX_IN_FLIGHT were in flight (no task, no reply)
        self.retained = 0  # requests delivered with the retain flag: error reply, never run
        self._logged = {"busy": float("-inf"), "retained": float("-inf")}  # monotonic time of the last line

    def register(self, name: str, handler: Callable[[dict], Any]) -> None:
        self._handlers[name] = handler

    def refuse(self) -> None:
        """Count a request whose name is not :func:`valid_name` (its reply topic would echo it)."""
        self.refused += 1
        self.counts["error"] += 1

    def admit(self) -> bool:
        """Take one of the :data:`MAX_IN_FLIGHT` slots for a command about to run (the caller calls
        :meth:`done` when its reply has been handed over); False, counted and logged (at most once a
        minute), when all are taken: the command is dropped without a reply."""
        if self.in_flight >= self.max_in_flight:
            self.busy += 1
            self._note("busy", "downlink: %d commands in flight, refusing more without a reply "
                               "(%d refused so far; logged at most once a minute)", self.max_in_flight)
            return False
        self.in_flight += 1
        return True

    def done(self) -> None:
        self.in_flight -= 1

    def refuse_retained(self, name: str, payload: bytes) -> bytes:
        """The error reply to a request that arrived with the retain flag (never run), counted and logged
        at most once a minute. A retained request is kept by the broker and delivered again at every
        subscribe (each reconnect and restart): run, it would undo every later command."""
        self.retained += 1
        self.counts["error"] += 1
        self._note("retained", "downlink: a retained command on cmd/%s was refused, not run: clear it with an "
                               "empty retained message (%d refused so far; logged at most once a minute)", name[:64])
        rid, is_json = None, payload[:MAX_REQUEST].lstrip()[:1] == b"{"
        try:
            rid, _, is_json = parse_request(payload)
        except CommandError:
            pass
        return encode_reply({"id": rid, "ok": False, "error": RETAINED}, is_json)

    def _note(self, kind: str, text: str, arg: object) -> None:
        now = time.monotonic()
        if now - self._logged[kind] >= LOG_EVERY_S:
            self._logged[kind] = now
            log.warning(text, arg, self.busy if kind == "busy" else self.retained)

    async def handle(self, name: str, payload: bytes) -> bytes:
        """Run one command; return the encoded reply (never raises, except on cancellation)."""
        rid, is_json = None, payload[:MAX_REQUEST].lstrip()[:1] == b"{"
        try:
            if not valid_name(name):
                self.refused += 1
                raise CommandError(f"not a command name (at most {MAX_NAME} of A-Z a-z 0-9 _ -)")
            rid, args, is_json = parse_request(payload)
            if name not in self.allowed or name not in self._handlers:
                raise CommandError(f"command {name[:64]!r} is not enabled (broker.commands)")
            result = self._handlers[name](args)
            if inspect.isawaitable(result):
                result = await result
            reply = {"id": rid, "ok": True, "result": result}
            self.counts["ok"] += 1
        except (CommandError, ValueError, TypeError, KeyError) as exc:
            reply = {"id": rid, "ok": False, "error": str(exc)[:300]}
            self.counts["error"] += 1
        except Exception as exc:  # a handler bug: reported, never raised into the MQTT loop
            log.exception("command %r failed", name[:64])
            reply = {"id": rid, "ok": False, "error": f"internal error: {type(exc).__name__}"}
            self.counts["error"] += 1
        return encode_reply(reply, is_json)


def encode_reply(reply: dict, as_json: bool) -> bytes:
    safe = _jsonable(reply)
    if as_json:
        return json.dumps(safe, separators=(",", ":"), allow_nan=False).encode()
    return msgpack.packb(safe, use_bin_type=True)
