"""A CoAP sensor node: an aiocoap server whose resources are observable (RFC 7641).

Each resource holds its latest payload and content format; :meth:`publish`
replaces them and notifies observers. :meth:`CoapNode.stop` and
:meth:`CoapNode.start` on the same port play a node that reboots: its
observers are forgotten, as a real node forgets them.
"""

from __future__ import annotations

import socket

from aiocoap import Context, Message
from aiocoap import resource

from drivers import senml

CONTENT_FORMATS = {"text": 0, "json": senml.CT_JSON, "cbor": 60,
                   "senml-json": senml.CT_SENML_JSON, "senml-cbor": senml.CT_SENML_CBOR}


def free_udp_port(host: str = "127.0.0.1") -> int:
    """A UDP port nobody is bound to right now (for tests that restart a node on the same port)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class SampleResource(resource.ObservableResource):
    """The latest sample of one resource; GET returns it, observers get every new one."""

    def __init__(self) -> None:
        super().__init__()
        self.payload = b""
        self.content_format = 0
        self.gets = 0

    def publish(self, payload: bytes, content_format: int) -> None:
        self.payload = payload
        self.content_format = content_format
        self.updated_state()

    async def render_get(self, request):
        self.gets += 1
        return Message(payload=self.payload, content_format=self.content_format)


class CoapNode:
    """Resources by path, served on ``host:port`` while started."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host = host
        self.port = port or free_udp_port(host)
        self.resources: dict[str, SampleResource] = {}
        self._ctx: Context | None = None

    def add(self, path: str) -> SampleResource:
        res = self.resources[path] = SampleResource()
        return res

    @property
    def uri(self) -> str:
        return f"coap://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._ctx is not None

    async def start(self) -> None:
        site = resource.Site()
        for path, res in self.resources.items():
            site.add_resource([p for p in path.split("/") if p], res)
        self._ctx = await Context.create_server_context(site, bind=(self.host, self.port), transports=["udp6"])

    async def stop(self) -> None:
        ctx, self._ctx = self._ctx, None
        if ctx is not None:
            await ctx.shutdown()
        for res in self.resources.values():
            res._observations.clear()
