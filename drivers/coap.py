"""CoAP sensor nodes: periodic GET polling, or Observe (RFC 7641) with re-registration.

Payloads are recognised by their content format: text/plain (0) a single
number, JSON (50) a number or an object of numbers, SenML JSON (110) and SenML
CBOR (112) through :mod:`drivers.senml`, CBOR (60) like JSON. A payload that
does not decode is counted in ``stats.malformed`` and skipped.

Observations are lossy by design, and a node that reboots forgets its
observers without telling them. So an observation that has been silent for
``observe_timeout_s`` is cancelled and registered again; if that registration
gets no answer within ``request_timeout_s``, or the node answers with an
error, the driver raises LinkLost and the supervisor retries with backoff and
reports the gap. Not here: DTLS/OSCORE, block-wise uploads, discovery.
"""

from __future__ import annotations

import asyncio
import json
import math
from dataclasses import dataclass, field
from typing import Literal

import cbor2

from edge_gateway import aio
from edge_gateway.readings import Reading

from . import senml
from .base import Driver, LinkLost

CT_TEXT = 0
CT_CBOR = 60
Sample = tuple[str, float, float, str]


@dataclass(frozen=True)
class CoapResource:
    """One resource on the node. ``channel``/``unit`` name a plain number; ``units`` the keys of a
    JSON object; SenML names (minus ``strip_prefix``) are channels and carry their own units."""

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
    """Options of a ``coap`` sensor (one node, one or more resources)."""

    uri: str
    resources: tuple[CoapResource, ...]
    mode: Literal["observe", "poll"] = "observe"
    interval_s: float = 5.0
    request_timeout_s: float = 10.0
    observe_timeout_s: float = 60.0

    def __post_init__(self) -> None:
        if not self.uri.startswith(("coap://", "coap+tcp://")):
            raise ValueError("uri: expected coap://host[:port]")
        if not self.resources:
            raise ValueError("resources: give at least one resource")
        for name in ("interval_s", "request_timeout_s", "observe_timeout_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name}: must be positive")


def decode_payload(payload: bytes, content_format: int | None, res: CoapResource,
                   now: float) -> tuple[list[Sample], int]:
    """(channel, value, ts, unit) samples of one response, and how many parts were rejected."""
    if content_format in (senml.CT_SENML_JSON, senml.CT_SENML_CBOR):
        records, errors = senml.decode(payload, content_format, now)
        strip = res.strip_prefix
        out = [(r.name[len(strip):] if strip and r.name.startswith(strip) else r.name, r.value, r.ts, r.unit)
               for r in records]
        kept = [s for s in out if s[0]]
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
        out, errors = [], 0
        for key, value in obj.items():
            v = _finite(value)
            if v is None or not isinstance(key, str) or not key:
                errors += 1
            else:
                out.append((key, v, now, res.units.get(key, "")))
        return out, errors
    v = _finite(obj)
    if v is None:
        return [], 1
    return [(res.default_channel, v, now, res.unit)], 0


def _finite(x) -> float | None:
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return None
    try:
        v = float(x)
    except OverflowError:
        return None
    return v if math.isfinite(v) else None


class CoapDriver(Driver):
    """Reads the resources of one CoAP node."""

    name = "coap"
    Options = CoapOptions

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.reregistrations = 0
        self._is_connected = False

    async def run(self) -> None:
        from aiocoap import Context

        opts: CoapOptions = self.options
        self._is_connected = False
        ctx = await Context.create_client_context()
        try:
            if opts.mode == "poll":
                await self._poll_forever(ctx)
            else:
                await aio.run_together([self._observe_forever(ctx, res) for res in opts.resources],
                                       [f"observe:{res.path}" for res in opts.resources])
        finally:
            await ctx.shutdown()

    def _message(self, res: CoapResource, observe: bool):
        from aiocoap import GET, Message

        msg = Message(code=GET, uri=self.options.uri.rstrip("/") + res.path)
        if observe:
            msg.opt.observe = 0
        return msg

    async def _first_response(self, request, res: CoapResource):
        from aiocoap import error

        try:
            response = await aio.wait_for(request.response, self.options.request_timeout_s)
        except asyncio.TimeoutError:
            raise LinkLost(f"{self.options.uri}{res.path}: no response in {self.options.request_timeout_s} s")
        except error.Error as exc:
            raise LinkLost(f"{self.options.uri}{res.path}: {exc}") from exc
        if not response.code.is_successful():
            raise LinkLost(f"{self.options.uri}{res.path}: {response.code}")
        return response

    async def _poll_forever(self, ctx) -> None:
        loop = asyncio.get_running_loop()
        due = loop.time()
        while True:
            for res in self.options.resources:
                response = await self._first_response(ctx.request(self._message(res, False)), res)
                self._handle(response, res)
            due += self.options.interval_s
            due = max(due, loop.time())
            await asyncio.sleep(due - loop.time())

    async def _observe_forever(self, ctx, res: CoapResource) -> None:
        from aiocoap import error

        while True:
            request = ctx.request(self._message(res, True))
            try:
                response = await self._first_response(request, res)
                self._handle(response, res)
                if response.opt.observe is None:
                    await asyncio.sleep(self.options.interval_s)
                    continue
                notifications = request.observation.__aiter__()
                while True:
                    try:
                        response = await aio.wait_for(notifications.__anext__(),
                                                      self.options.observe_timeout_s)
                    except (asyncio.TimeoutError, StopAsyncIteration):
                        break
                    except error.Error as exc:
                        raise LinkLost(f"{self.options.uri}{res.path}: {exc}") from exc
                    if not response.code.is_successful():
                        break
                    self._handle(response, res)
                self.reregistrations += 1
            finally:
                if request.observation is not None and not request.observation.cancelled:
                    request.observation.cancel()

    def _handle(self, response, res: CoapResource) -> None:
        if not self._is_connected:
            self._is_connected = True
            self.connected()
        now = self.clock()
        payload = response.payload
        self.stats.bytes += len(payload)
        samples, errors = decode_payload(payload, response.opt.content_format, res, now)
        self.stats.malformed += errors
        for channel, value, ts, unit in samples:
            self.sink(Reading(self.sensor_id, channel, value, ts, unit))
        if samples:
            self.stats.readings += len(samples)
            self.stats.last_reading_ts = now


DRIVER = CoapDriver
