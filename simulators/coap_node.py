"""A CoAP sensor node: an aiocoap server whose resources are observable (RFC 7641).

Each resource holds its latest payload and content format; :meth:`publish`
replaces them and notifies observers (or, with ``notify=False``, plays a
notification the network lost), optionally with a Max-Age. :meth:`fail` makes a
resource answer with an error code, as a removed or overloaded resource does.
:meth:`CoapNode.stop` and :meth:`CoapNode.start` on the same port play a node
that reboots: its observers are forgotten, as a real node forgets them.

A payload over one block (1024 bytes) goes block-wise (RFC 7959): aiocoap does
that for plain GETs, and here for an observation's responses too, which carry
the first block only (section 2.6), as a constrained node's do; aiocoap itself
would send them whole, in a datagram the client's buffer cuts short.
"""

from __future__ import annotations

import socket

from aiocoap import Code, Context, Message
from aiocoap import resource

from drivers import senml

BLOCK_SIZE_EXP = 6
CONTENT_FORMATS = {"text": 0, "json": senml.CT_JSON, "cbor": 60,
                   "senml-json": senml.CT_SENML_JSON, "senml-cbor": senml.CT_SENML_CBOR}


def free_udp_port(host: str = "127.0.0.1") -> int:
    """A UDP port nobody is bound to right now on ``host`` (IPv4 or IPv6; for tests that restart a
    node on the same port)."""
    family, _, _, _, addr = socket.getaddrinfo(host, 0, type=socket.SOCK_DGRAM)[0]
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        s.bind(addr)
        return s.getsockname()[1]


def host_in_uri(host: str) -> str:
    """``host`` as a URI's authority writes it: an IPv6 address in brackets (RFC 3986, 3.2.2)."""
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


class SampleResource(resource.ObservableResource):
    """The latest sample of one resource; GET returns it, observers get every new one."""

    def __init__(self) -> None:
        super().__init__()
        self.payload = b""
        self.content_format = 0
        self.max_age: int | None = None
        self.error: tuple[Code, int | None] | None = None
        self.gets = 0

    @property
    def observers(self) -> int:
        """Observations the node holds for this resource (stale ones included)."""
        return len(self._observations)

    def publish(self, payload: bytes, content_format: int, max_age: int | None = None,
                notify: bool = True) -> None:
        self.payload = payload
        self.content_format = content_format
        self.max_age = max_age
        self.error = None
        if notify:
            self.updated_state()

    def fail(self, code: Code, max_age: int | None = None) -> None:
        """Answer every GET (and notify observers, which ends their observations) with ``code``."""
        self.error = (code, max_age)
        self.updated_state()

    async def render_get(self, request):
        self.gets += 1
        if self.error is not None:
            code, max_age = self.error
            return Message(code=code, max_age=max_age)
        size = 2 ** (BLOCK_SIZE_EXP + 4)
        if request.opt.observe == 0 and len(self.payload) > size:
            return Message(payload=self.payload[:size], content_format=self.content_format, max_age=self.max_age,
                           block2=(0, True, BLOCK_SIZE_EXP))
        return Message(payload=self.payload, content_format=self.content_format, max_age=self.max_age)


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
        return f"coap://{host_in_uri(self.host)}:{self.port}"

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


def main(argv: list[str] | None = None) -> int:
    """``python -m simulators.coap_node --help``: what the module is. It has no command line of its own:
    ``edge-gateway-sim city`` runs CoAP nodes from a scenario, and tests start them in-process."""
    from .cli import run_by_city

    return run_by_city("python -m simulators.coap_node", __doc__, "CoAP nodes (the scenario's coap sensors)", argv)


if __name__ == "__main__":
    import sys

    sys.exit(main())
