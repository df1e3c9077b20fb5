"""CoAP sensor nodes: periodic GET polling, or Observe (RFC 7641) with re-registration.

Payloads are recognised by their content format: text/plain (0) a single
number, JSON (50) a number or an object of numbers, SenML JSON (110) and SenML
CBOR (112) through :mod:`drivers.senml`, CBOR (60) like JSON. A payload that
does not decode is counted in ``stats.malformed`` and skipped. Block-wise
responses (RFC 7959) are put together here, so a payload over
``max_payload_bytes`` is refused after at most that many bytes rather than
fetched whole; a pack (or JSON object) over ``max_records`` is refused whole.
Both count one ``malformed`` and one ``oversize`` for the resource. A channel
name a node gives (a JSON object's key, a SenML name) must be printable and at
most :data:`.senml.MAX_NAME` characters, a SenML unit at most
:data:`.senml.MAX_UNIT`: another counts one ``malformed`` for its key or record,
and the payload's other values are kept.

Each resource fails on its own: a 4.xx/5.xx answer (or error notification) is
counted in :attr:`CoapDriver.resources` and that resource alone is asked again
later (with a doubling delay, or after a 5.03's Max-Age but, from the second 5.03
in a row, never sooner than that doubling delay of the error before), while the others
go on being read. Only a node that does not answer (timeout, network error), or
whose every resource answers with an error, raises LinkLost, and the supervisor
retries with backoff and reports the gap.

Observations are lossy by design, and a node that reboots forgets its
observers without telling them. So an observation whose last notification is
older than its Max-Age plus ``max_age_margin_s`` times 1 to 3 (RFC 7641 section
3.3.1 asks for 5 to 15 s), and never older than ``observe_timeout_s``, is
registered again. A node that notifies often is not given that long: the
driver learns each resource's rhythm (the longest of its last
``SILENCE_WINDOW`` intervals between notifications, once it has seen
``SILENCE_MIN_INTERVALS``) and registers again after ``SILENCE_FACTOR`` times
that, but never before ``SILENCE_FLOOR_S`` (a node notifying every second is
re-registered after 5 s of silence; one notifying every 2 s after 10 s; one
that notifies rarely keeps the Max-Age or ``observe_timeout_s`` limit, which
is always the upper bound). A silence that led to a re-registration counts as
one interval, so a node that has become quieter is not re-registered again and
again: its limit grows back toward ``observe_timeout_s``. A node that does not
answer the new registration is a lost link (LinkLost), reported as a gap. The
old one is ended on the node first (a GET with its token
and Observe=1, section 3.6), so observers do not pile up on a node that is
still running. The first response to a registration repeats the node's current
representation: a payload identical to the one last published for that resource
is not published again, and a SenML record whose time was already in its
channel's previous pack is dropped (times are kept for the ``KEEP_CHANNELS``
channels sent last, so a node whose names keep changing cannot grow the
gateway's memory). SenML with relative times cannot be told
apart otherwise, so for it byte-identity is the test: the same pack is the same
sample, and a changed one is stamped from when it arrived. A node's clock can be
corrected backwards (a bad RTC, then NTP): a pack whose times all lie more than
``CLOCK_STEP_S`` behind the newest the channels had is taken as that step, logged
and counted in ``clock_steps``, and its samples are published. Not here:
DTLS/OSCORE, block-wise uploads, discovery.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import json
import logging
import math
import os
import random
from dataclasses import asdict, dataclass, field
from typing import Callable, Literal

import cbor2

from edge_gateway import aio
from edge_gateway.readings import Reading

from . import senml
from .base import Driver, LinkLost

CT_TEXT = 0
CT_CBOR = 60
DEFAULT_MAX_AGE = 60
DEFAULT_PORT = 5683  # RFC 7252 (and RFC 8323 for coap+tcp)
MAX_RETRY_S = 300.0
CLOCK_STEP_S = 600.0  # a pack this far behind the node's newest times is its clock going back
KEEP_CHANNELS = 1024  # channels whose times a resource remembers: batcher.MAX_CHANNELS_PER_SENSOR
# an observation silent for SILENCE_FACTOR times its usual interval between notifications (the longest of the
# last SILENCE_WINDOW, learnt once SILENCE_MIN_INTERVALS were seen), but at least SILENCE_FLOOR_S, is registered
# again (never later than observe_timeout_s or Max-Age + margin)
SILENCE_FACTOR = 5.0
SILENCE_FLOOR_S = 5.0
SILENCE_WINDOW = 8
SILENCE_MIN_INTERVALS = 3
Sample = tuple[str, float, float, str]
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CoapResource:
    """One resource on the node.

    ``path``: the resource's path on the node, starting with '/' (``/bins``). ``channel``: the channel a
    plain-number payload is sent under (default: the last part of the path). ``unit``: that number's unit.
    ``units``: for a JSON object payload, the unit of each key (each key is a channel). ``strip_prefix``:
    taken off the front of SenML names before they become channels (a node's base name such as
    ``bins-1:``); SenML records carry their own units.
    """

    path: str
    channel: str = ""
    unit: str = ""
    units: dict[str, str] = field(default_factory=dict)
    strip_prefix: str = ""

    def __post_init__(self) -> None:
        if not self.path.startswith("/"):
            raise ValueError("path: must start with '/'")

    @property
    def default_channel(self) -> str:
        return self.channel or self.path.rstrip("/").rsplit("/", 1)[-1]


@dataclass(frozen=True)
class CoapOptions:
    """Options of a ``coap`` sensor (one node, one or more resources).

    ``observe_timeout_s``: the longest an observation may stay silent before it is registered again
    (a fresh GET with Observe; no answer is a lost link). It is an upper bound: a resource that
    notifies often is registered again sooner, after ``SILENCE_FACTOR`` (5) times its usual interval
    between notifications (learnt from the last few), but not before ``SILENCE_FLOOR_S`` (5 s), so
    a rebooted node that forgot its observers costs seconds of data, not ``observe_timeout_s``.
    ``max_age_margin_s``: how long past a notification's Max-Age (times 1 to 3, for jitter) a silent
    observation is trusted before it is registered again. ``max_payload_bytes`` and ``max_records``
    bound what one response may cost the gateway. ``uri`` names the node only
    (``coap://host:port``); the paths go in ``resources``. ``mode``: ``observe`` registers once and the
    node sends each new value (RFC 7641); ``poll`` asks with a GET every few seconds, as ``observe`` does
    for a resource that answers without Observe. ``interval_s``: seconds between two GETs of a polled
    resource, and the first wait before asking again a resource that answered with an error (doubled at
    each further error, up to 300 s). A 5.03 with Max-Age is asked again after its Max-Age, but from the
    second 5.03 in a row not sooner than the doubled wait of the error before it. ``request_timeout_s``: how long a request waits for the node's answer before the link counts as
    lost.
    """

    uri: str
    resources: tuple[CoapResource, ...]
    mode: Literal["observe", "poll"] = "observe"
    interval_s: float = 5.0
    request_timeout_s: float = 10.0
    observe_timeout_s: float = 60.0
    max_age_margin_s: float = 5.0
    max_payload_bytes: int = 65536
    max_records: int = 4096

    def __post_init__(self) -> None:
        if not self.uri.startswith(("coap://", "coap+tcp://")):
            raise ValueError("uri: expected coap://host[:port]")
        path = uri_path(self.uri)
        if path not in ("", "/"):
            raise ValueError(f"uri: give the node only (coap://host:port); put paths in resources: got path '{path}'")
        if not self.resources:
            raise ValueError("resources: give at least one resource")
        for name in ("interval_s", "request_timeout_s", "observe_timeout_s", "max_age_margin_s",
                     "max_payload_bytes", "max_records"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name}: must be positive")
        paths = [r.path for r in self.resources]
        if len(set(paths)) != len(paths):
            raise ValueError("resources: a path is listed twice")


def uri_path(uri: str) -> str:
    """The path of a node's URI (``""`` for ``coap://host:port``)."""
    from urllib.parse import urlsplit

    return urlsplit(uri).path


def adaptive_silence_limit(intervals) -> float | None:
    """How long an observation that notifies at ``intervals`` (seconds between its recent notifications) may
    stay silent: ``SILENCE_FACTOR`` times the longest of them, at least ``SILENCE_FLOOR_S``; None while fewer
    than ``SILENCE_MIN_INTERVALS`` are known (the rhythm is not learnt yet)."""
    if len(intervals) < SILENCE_MIN_INTERVALS:
        return None
    return max(SILENCE_FLOOR_S, SILENCE_FACTOR * max(intervals))


def retry_delay(failures: int, interval_s: float, max_age: int | None = None) -> float:
    """Seconds before asking again a resource that answered with an error ``failures`` times in a row.

    ``interval_s`` doubled at each further error, up to ``MAX_RETRY_S`` (or ``interval_s`` if longer). A
    5.03's Max-Age (``max_age``) is when the node asks to be asked again (RFC 7252 section 5.9.3.4), a hint:
    the first 5.03 waits it, and a further one also at least the doubling delay of one error fewer, so a
    node answering 5.03 with Max-Age 0 again and again is not asked hundreds of times a second.
    """
    def doubling(k: int) -> float:
        return min(interval_s * 2.0 ** min(k - 1, 20), max(MAX_RETRY_S, interval_s))

    if max_age is None:
        return doubling(failures)
    return max(min(float(max_age), MAX_RETRY_S), doubling(failures - 1) if failures > 1 else 0.0)


def node_address(uri: str) -> str:
    """``coap://host:port`` of a node's URI, the port written out (5683 where the URI leaves it out)."""
    from urllib.parse import urlsplit

    parts = urlsplit(uri)
    host = parts.hostname or ""
    try:
        port = parts.port
    except ValueError:
        port = None
    return f"{parts.scheme}://{f'[{host}]' if ':' in host else host}:{port or DEFAULT_PORT}"


def network_reason(exc: BaseException | None) -> str:
    """What an aiocoap network error adds to "no answer", or "": the system's reason (``Connection refused``,
    ``No route to host``), else aiocoap's text unless that is only its class name (``Network error:
    NetworkError``)."""
    if exc is None:
        return ""
    cause = exc.__cause__
    if isinstance(cause, OSError) and (cause.errno or cause.strerror):
        if cause.errno and cause.errno > 0:
            return os.strerror(cause.errno)
        return str(cause.strerror or "")
    text = str(exc)
    name = type(exc).__name__
    return "" if not text or text == name or text.endswith(": " + name) else text


def no_answer(uri: str, exc: BaseException | None = None) -> str:
    """A node that does not answer, in plain words: ``no answer from coap://host:port (node off, unplugged or
    unreachable)``, and what the network said in brackets when that adds something (``[Connection refused]``)."""
    why = network_reason(exc)
    text = f"no answer from {node_address(uri)} (node off, unplugged or unreachable)"
    return f"{text} [{why}]" if why else text


def decode_payload(payload: bytes, content_format: int | None, res: CoapResource,
                   now: float, max_records: int | None = None,
                   stamped_here: list[bool] | None = None) -> tuple[list[Sample], int]:
    """(channel, value, ts, unit) samples of one response, and how many parts were rejected.

    ``stamped_here``, if given, gets one entry per sample: whether its time is ``now``, the gateway's
    clock (a plain number, JSON, or a SenML time relative to now), not the node's (SenML absolute time).
    Raises :class:`senml.TooLarge` for a pack or object of more than ``max_records`` entries, if given.
    """
    if content_format in (senml.CT_SENML_JSON, senml.CT_SENML_CBOR):
        relative: list[bool] = []
        records, errors = senml.decode(payload, content_format, now, max_records, relative)
        strip = res.strip_prefix
        out = [(r.name[len(strip):] if strip and r.name.startswith(strip) else r.name, r.value, r.ts, r.unit)
               for r in records]
        kept = [s for s in out if s[0]]
        if stamped_here is not None:
            stamped_here += [rel for s, rel in zip(out, relative) if s[0]]
        return kept, errors + len(out) - len(kept)
    try:
        if content_format == senml.CT_JSON:
            obj = json.loads(payload)
        elif content_format == CT_CBOR:
            obj = cbor2.loads(payload)
        else:
            text = payload.decode("ascii").strip()
            if "_" in text:  # Python's digit grouping, not a sensor's number
                return [], 1
            obj = float(text)
    except Exception:  # noqa: BLE001 - any undecodable payload is one error, never a crash
        return [], 1
    if isinstance(obj, dict):
        if max_records is not None and len(obj) > max_records:
            raise senml.TooLarge(f"object of {len(obj)} keys exceeds max_records={max_records}")
        out, errors = [], 0
        for key, value in obj.items():
            v = _finite(value)
            if v is None or not senml.channel_name_ok(key):  # no ESC for a terminal, no 60 KB label
                errors += 1
            else:
                out.append((key, v, now, res.units.get(key, "")))
        if stamped_here is not None:
            stamped_here += [True] * len(out)
        return out, errors
    v = _finite(obj)
    if v is None:
        return [], 1
    if stamped_here is not None:
        stamped_here.append(True)
    return [(res.default_channel, v, now, res.unit)], 0


def _finite(x) -> float | None:
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return None
    try:
        v = float(x)
    except OverflowError:
        return None
    return v if math.isfinite(v) else None


@dataclass
class ResourceStats:
    """Per-resource counters: which resource fails or is held back, and how often."""

    requests: int = 0  # GETs sent: polls, registrations, further blocks
    responses: int = 0  # 2.xx answers (blocks included) and notifications
    errors: int = 0  # 4.xx/5.xx answers (blocks included) and error notifications
    last_code: str = ""
    reregistrations: int = 0
    duplicates: int = 0  # readings a registration's first response repeated, not published again
    oversize: int = 0  # payloads over max_payload_bytes, packs over max_records
    clock_steps: int = 0  # packs taken as the node's clock going back (CLOCK_STEP_S)


@dataclass
class _Last:
    """What was last published for a resource, to recognise a registration's replay of it."""

    content_format: int | None
    payload: bytes
    count: int


class _State:
    def __init__(self) -> None:
        self.stats = ResourceStats()
        self.last: _Last | None = None
        # per channel sent lately (KEEP_CHANNELS, least recently sent first): its times in its last pack,
        # and the newest time the node sent
        self.recent: dict[str, frozenset[float]] = {}
        self.newest: dict[str, float] = {}
        self.failures = 0  # in a row, for the retry delay and to log once
        self.failing = False  # in this connection, for "every resource fails"
        self.retry_at = 0.0
        self.warned_oversize = False
        # seconds between the last notifications (and silences that led to a re-registration)
        self.intervals: collections.deque[float] = collections.deque(maxlen=SILENCE_WINDOW)


class CoapDriver(Driver):
    """Reads the resources of one CoAP node."""

    name = "coap"
    Options = CoapOptions

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._is_connected = False
        self._states = {res.path: _State() for res in self.options.resources}
        self._rng = random.Random()

    @property
    def reregistrations(self) -> int:
        return sum(st.stats.reregistrations for st in self._states.values())

    @property
    def resources(self) -> dict[str, ResourceStats]:
        return {path: st.stats for path, st in self._states.items()}

    def part_stats(self) -> dict[str, dict]:
        return {path: asdict(st) for path, st in self.resources.items()}

    async def run(self) -> None:
        from aiocoap import Context

        opts: CoapOptions = self.options
        self._is_connected = False
        for st in self._states.values():
            st.failing = False
            st.retry_at = 0.0
        ctx = await Context.create_client_context()
        try:
            if opts.mode == "poll":
                await self._poll_forever(ctx)
            else:
                await aio.run_together([self._observe_forever(ctx, res) for res in opts.resources],
                                       [f"observe:{res.path}" for res in opts.resources])
        finally:
            await ctx.shutdown()

    def _uri(self, res: CoapResource) -> str:
        return self.options.uri.rstrip("/") + res.path

    def _message(self, res: CoapResource, observe: bool):
        from aiocoap import GET, Message

        msg = Message(code=GET, uri=self._uri(res))
        if observe:
            msg.opt.observe = 0
        return msg

    async def _answer(self, request, res: CoapResource):
        """The request's first response, whatever its code; LinkLost when the node does not answer."""
        from aiocoap import error

        try:
            return await aio.wait_for(request.response, self.options.request_timeout_s)
        except asyncio.TimeoutError:
            raise LinkLost(f"{self._uri(res)}: no response in {self.options.request_timeout_s} s")
        except error.Error as exc:
            raise LinkLost(self._link_problem(res, exc)) from exc

    def _link_problem(self, res: CoapResource, exc: Exception) -> str:
        """An aiocoap error in plain words: a network error is a node that does not answer."""
        from aiocoap import error

        if isinstance(exc, error.NetworkError):
            return no_answer(self.options.uri, exc)
        return f"{self._uri(res)}: {exc}"

    async def _poll_forever(self, ctx) -> None:
        loop = asyncio.get_running_loop()
        due = loop.time()
        while True:
            for res in self.options.resources:
                st = self._states[res.path]
                if st.retry_at > loop.time():
                    continue
                st.stats.requests += 1
                response = await self._answer(ctx.request(self._message(res, False), handle_blockwise=False), res)
                if response.code.is_successful():
                    await self._handle(ctx, response, res)
                else:
                    self._failed(res, response)
            due += self.options.interval_s
            due = max(due, loop.time())
            await asyncio.sleep(due - loop.time())

    async def _observe_forever(self, ctx, res: CoapResource) -> None:
        loop = asyncio.get_running_loop()
        st = self._states[res.path]
        while True:
            delay = st.retry_at - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            msg = self._message(res, True)
            st.stats.requests += 1
            request = ctx.request(msg, handle_blockwise=False)
            deregister = None
            try:
                response = await self._answer(request, res)
                if not response.code.is_successful():
                    self._failed(res, response)
                    continue
                if response.opt.observe is None:
                    await self._handle(ctx, response, res)
                    st.retry_at = loop.time() + self.options.interval_s
                    continue
                deregister = await self._deregistration(ctx, msg)
                await self._handle(ctx, response, res, registration=True)
                if not await self._follow(ctx, request, res, response):
                    deregister = None
                    continue
                st.stats.reregistrations += 1
            finally:
                if request.observation is not None and not request.observation.cancelled:
                    request.observation.cancel()
                if deregister is not None:
                    deregister()

    async def _follow(self, ctx, request, res: CoapResource, response) -> bool:
        """Publish notifications until the observation ends; True if it went silent (the node may still hold it).

        The intervals between notifications are noted for :meth:`_silence_limit` (not the one from the
        registration's response to the first notification: the node notifies on its own schedule).
        """
        from aiocoap import error

        loop = asyncio.get_running_loop()
        st = self._states[res.path]
        notifications = request.observation.__aiter__()
        previous = None
        while True:
            limit = self._silence_limit(res, response)
            try:
                response = await aio.wait_for(notifications.__anext__(), limit)
            except asyncio.TimeoutError:
                st.intervals.append(limit)
                log.info("sensor %s: %s: no notification in %.1f s; registering again", self.sensor_id,
                         self._uri(res), limit)
                return True
            except StopAsyncIteration:
                return False
            except error.Error as exc:
                raise LinkLost(self._link_problem(res, exc)) from exc
            if not response.code.is_successful():
                self._failed(res, response)
                return False
            now = loop.time()
            if previous is not None:
                st.intervals.append(now - previous)
            previous = now
            await self._handle(ctx, response, res)

    def _silence_limit(self, res: CoapResource, response) -> float:
        """How long to wait for the next notification before registering again.

        RFC 7641 section 3.3.1: a notification is fresh for its Max-Age; re-register 1-3 margins after.
        Sooner for a resource that notifies often (:func:`adaptive_silence_limit`); never later than
        ``observe_timeout_s``.
        """
        max_age = response.opt.max_age
        margin = self.options.max_age_margin_s * self._rng.uniform(1.0, 3.0)
        limit = min(self.options.observe_timeout_s, (DEFAULT_MAX_AGE if max_age is None else max_age) + margin)
        adaptive = adaptive_silence_limit(self._states[res.path].intervals)
        return limit if adaptive is None else min(limit, adaptive)

    async def _deregistration(self, ctx, msg) -> Callable[[], None] | None:
        """A callable that ends this observation on the node: a GET with its token and Observe=1 (RFC 7641 3.6).

        aiocoap's own ``cancel()`` only forgets the observation locally, and its requests always get a
        new token, so the message goes to the token manager's message layer directly. Where that layer
        is not there (another aiocoap or transport), None: the node then drops the observer when it
        next notifies and gets a reset, as before.
        """
        try:
            iface = await ctx.find_remote_and_interface(msg)
            send = iface.token_interface.send_message
        except Exception as exc:  # noqa: BLE001 - only an optimisation is lost
            log.debug("sensor %s: cannot deregister observations explicitly: %r", self.sensor_id, exc)
            return None
        cancel = msg.copy(mid=None, observe=1)

        def deregister() -> None:
            try:
                send(cancel, lambda: log.debug("sensor %s: deregistration of %s got no answer",
                                               self.sensor_id, msg.get_request_uri()))
            except Exception as exc:  # noqa: BLE001 - the context may be shutting down
                log.debug("sensor %s: deregistration not sent: %r", self.sensor_id, exc)

        return deregister

    def _failed(self, res: CoapResource, response) -> None:
        """Count an error answer and set when to ask this resource again; LinkLost once every resource fails."""
        from aiocoap import SERVICE_UNAVAILABLE

        st = self._states[res.path]
        st.stats.errors += 1
        st.stats.last_code = str(response.code)
        st.failures += 1
        st.failing = True
        self.stats.note_error(f"{res.path}: {response.code}", self.clock())
        max_age = response.opt.max_age if response.code == SERVICE_UNAVAILABLE else None
        delay = retry_delay(st.failures, self.options.interval_s, max_age)
        st.retry_at = asyncio.get_running_loop().time() + delay
        if all(s.failing for s in self._states.values()):
            raise LinkLost(f"{self.options.uri}: every resource answers with an error, last {res.path}: "
                           f"{response.code}")
        if st.failures == 1:
            log.warning("sensor %s: %s answers %s; asking it again in %.2f s, the other resources go on",
                        self.sensor_id, self._uri(res), response.code, delay)

    def _recovered(self, res: CoapResource) -> None:
        st = self._states[res.path]
        st.stats.responses += 1
        if st.failures:
            log.info("sensor %s: %s answers again after %d errors", self.sensor_id, self._uri(res), st.failures)
        st.failures = 0
        st.failing = False

    def _oversize(self, res: CoapResource, what: str) -> None:
        st = self._states[res.path]
        st.stats.oversize += 1
        self.stats.malformed += 1
        self.stats.note_error(f"{res.path}: {what}", self.clock())
        if not st.warned_oversize:
            st.warned_oversize = True
            log.warning("sensor %s: %s: %s; such payloads are dropped", self.sensor_id, self._uri(res), what)

    async def _body(self, ctx, res: CoapResource, response, observed: bool) -> bytes | None:
        """The whole payload, fetching the other blocks of a block-wise one (RFC 7959); None if refused.

        An observation's response carries the first block only (section 2.6). The rest is fetched with
        plain GETs from block 0 again: a server may keep the representation for later blocks only
        when a plain GET asked for block 0 (aiocoap does), so asking straight for block 1 can fail.
        """
        from aiocoap import GET, Message

        cap = self.options.max_payload_bytes
        st = self._states[res.path]
        block = response.opt.block2
        self.stats.bytes += len(response.payload)
        if block is None or not block.more:
            if len(response.payload) > cap:
                self._oversize(res, f"payload of {len(response.payload)} bytes exceeds max_payload_bytes={cap}")
                return None
            return response.payload
        if block.block_number != 0 or block.size_exponent > 6:
            self.stats.malformed += 1
            return None
        parts = bytearray() if observed else bytearray(response.payload)
        etag = None if observed else response.opt.etag
        more = True
        while more:
            size2 = response.opt.size2
            if size2 is not None and size2 > cap:
                self._oversize(res, f"payload of {size2} bytes (Size2) exceeds max_payload_bytes={cap}")
                return None
            if len(parts) >= cap:
                self._oversize(res, f"payload of more than {cap} bytes exceeds max_payload_bytes={cap}")
                return None
            number = len(parts) >> (block.size_exponent + 4)
            st.stats.requests += 1
            msg = Message(code=GET, uri=self._uri(res), block2=(number, False, block.size_exponent))
            response = await self._answer(ctx.request(msg, handle_blockwise=False), res)
            self.stats.bytes += len(response.payload)
            block = response.opt.block2
            if not parts and etag is None:
                etag = response.opt.etag
            whole = block is None and not parts  # the representation shrank to one datagram meanwhile
            if response.code.is_successful():
                st.stats.responses += 1
            else:
                st.stats.errors += 1
                st.stats.last_code = str(response.code)
            if not response.code.is_successful() or not whole and (
                    block is None or block.start != len(parts) or response.opt.etag != etag):
                log.debug("sensor %s: %s: block-wise transfer broken at byte %d: %s %s", self.sensor_id,
                          self._uri(res), len(parts), response.code, block)
                self.stats.malformed += 1
                return None
            parts += response.payload
            more = not whole and block.more
        if len(parts) > cap:
            self._oversize(res, f"payload of {len(parts)} bytes exceeds max_payload_bytes={cap}")
            return None
        return bytes(parts)

    async def _handle(self, ctx, response, res: CoapResource, registration: bool = False) -> None:
        """Publish a successful response; a registration's first response only with what is new."""
        self._recovered(res)
        if not self._is_connected:
            self._is_connected = True
            self.connected()
        payload = await self._body(ctx, res, response, response.opt.observe is not None)
        if payload is None:
            return
        st = self._states[res.path]
        content_format = response.opt.content_format
        last = st.last if registration else None
        if last is not None and last.content_format == content_format and last.payload == payload:
            st.stats.duplicates += last.count
            return
        now = self.clock()
        here: list[bool] = []
        try:
            samples, errors = decode_payload(payload, content_format, res, now, self.options.max_records, here)
        except senml.TooLarge as exc:
            self._oversize(res, str(exc))
            return
        self.stats.malformed += errors
        st.last = _Last(content_format, payload, len(samples))
        fresh = self._unseen(res, samples, now)
        n = 0
        for (channel, value, ts, unit), new, stamped_here in zip(samples, fresh, here):
            if new:
                self.sink(Reading(self.sensor_id, channel, value, ts, unit, gateway_stamped=stamped_here))
                n += 1
        if n:
            self.stats.readings += n
            self.stats.last_reading_ts = now

    def _unseen(self, res: CoapResource, samples: list[Sample], now: float) -> list[bool]:
        """Which of the samples were not published before (one flag each), and the record of times
        updated with this pack.

        A sample stamped by the node is published once: a poll of an unchanged SenML pack, a
        re-notification or a registration repeats it, and only a time in the channel's previous pack is
        such a repeat (a bound of one pack per channel). A newer or an older time is a new sample, so a
        node whose clock was ahead and is then corrected is not silenced. One stamped on receipt
        (``now``) is always new. Only the channels sent last are remembered (:data:`KEEP_CHANNELS`, or
        the whole pack if larger): a node whose names change must not grow memory without end.
        """
        st = self._states[res.path]
        recent, newest = st.recent, st.newest
        stamped = [(channel, ts) for channel, _, ts, _ in samples if ts != now]
        behind = [newest[c] - ts for c, ts in stamped if c in newest]
        if behind and min(behind) > CLOCK_STEP_S and not any(ts in recent.get(c, ()) for c, ts in stamped):
            st.stats.clock_steps += 1
            log.warning("sensor %s: %s: the node's clock went back %.0f s; its samples are taken as new",
                        self.sensor_id, self._uri(res), min(behind))
            recent.clear()
            newest.clear()
        fresh = [s[2] == now or s[2] not in recent.get(s[0], ()) for s in samples]
        st.stats.duplicates += len(samples) - sum(fresh)
        times: dict[str, set[float]] = {}
        for c, ts in stamped:
            times.setdefault(c, set()).add(ts)
        for c, ts in times.items():
            newest[c] = max(newest.pop(c, -math.inf), max(ts))  # re-inserted: the dicts run oldest sent first
            recent.pop(c, None)
            recent[c] = frozenset(ts)
        excess = len(recent) - max(KEEP_CHANNELS, len(times))
        if excess > 0:
            for c in list(itertools.islice(recent, excess)):
                del recent[c], newest[c]
        return fresh


DRIVER = CoapDriver
