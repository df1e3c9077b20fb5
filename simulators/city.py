"""``edge-gateway-sim city SCENARIO.yaml``: every sensor of a city block, from one scenario.

Serial sensors (``line``, ``pms5003``) and Modbus buses get a pty each behind
a stable symlink ``RUN_DIR/<sensor>.tty``; CoAP nodes get an aiocoap server on
``--coap-port`` + n (n counts CoAP sensors in file order, or the sensor's
``port`` option). Sample ``k`` of a sensor carries the time ``t0 + k /
rate_hz`` and is sent ``k / rate_hz`` seconds after the run starts (``t0``,
past or not, only sets the values and timestamps), with the scenario's faults
applied; ``disconnect`` closes the pty (the symlink disappears) or stops the
node, and brings a new one up afterwards. The ground truth lists the faulty
samples of the ``count`` samples the run sends.

Every path and URI printed exists when ``ready`` is printed. SIGTERM and
SIGHUP stop the run as Ctrl-C does: links removed, nodes stopped.

Standard output, one line each, fields separated by single spaces::

    t0 1700000000.0
    truth RUN_DIR/ground_truth.jsonl
    serial air-1 RUN_DIR/air-1.tty
    modbus meters RUN_DIR/meters.tty
    coap bins-1 uri=coap://127.0.0.1:5683 resources=/bins
    coap traffic-1 uri=coap://127.0.0.1:5684 resources=/counts,/speed
    ready

A ``coap`` line is one sensor's node as a ``coap`` sensor's options take it: ``uri``
(the node only, no path) and the ``path`` of each of its ``resources`` (comma-separated).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import sys
import time

import cbor2

from drivers import senml

from . import scenario as sc
from .coap_node import CONTENT_FORMATS, CoapNode
from .modbus_slave import ModbusSlaveSim, RegisterBank
from .pms5003 import corrupt as corrupt_frame
from .pms5003 import frame_bytes
from .pty_port import LinkError, PtyPort
from .serial_line import format_line
from .stopping import cancel_on_signals, remove_signal_handlers


def encode_line(sensor: sc.SensorSpec, names: list[str], vals: list[float], ts: float) -> bytes:
    opts = sensor.options
    return format_line(opts.get("format", "kv"), names, vals, ts if opts.get("timestamps", True) else None)


def corrupt_line(line: bytes) -> bytes:
    """A line no line decoder accepts: its separators and digits are damaged."""
    return line.replace(b"=", b"#").replace(b",", b";").replace(b":", b"#").replace(b".", b"!")


def encode_coap(fmt: str, prefix: str, chans: list[sc.Channel], vals: list[float], ts: float) -> bytes:
    """One resource's payload for one sample in the given wire format."""
    if fmt == "text":
        return repr(vals[0]).encode()
    if fmt in ("json", "cbor"):
        obj = {c.name: v for c, v in zip(chans, vals)}
        return json.dumps(obj).encode() if fmt == "json" else cbor2.dumps(obj)
    recs = [{"n": c.name, "u": c.unit, "v": v} for c, v in zip(chans, vals)]
    recs[0] = {"bn": prefix, "bt": ts, **recs[0]}
    return senml.encode_json(recs) if fmt == "senml-json" else senml.encode_cbor(recs)


def coap_ports(scenario: sc.Scenario, first_port: int) -> dict[str, int]:
    """The port of each CoAP sensor: its ``port`` option, else ``first_port`` + n (n counts CoAP sensors)."""
    ports = {}
    n = 0
    for s in scenario.sensors:
        if s.kind == "coap":
            ports[s.id] = int(s.options.get("port", first_port + n))
            n += 1
    return ports


class City:
    """Runs the sensors of a scenario until ``count`` samples each (0: forever).

    Ports and nodes stay up after the last sample (the last line is still in the pty for its reader)
    until :meth:`close`.
    """

    def __init__(self, scenario: sc.Scenario, run_dir: str, t0: float, count: int,
                 coap_host: str = "127.0.0.1", coap_port: int = 5683) -> None:
        self.scenario = scenario
        self.run_dir = run_dir
        self.t0 = t0
        self.count = count
        self.coap_host = coap_host
        self.coap_port = coap_port
        self.endpoints: list[tuple[str, str, str]] = []
        self.sent: dict[str, int] = {}
        self._ports: dict[str, PtyPort | None] = {}
        self._sims: dict[str, ModbusSlaveSim] = {}
        self.banks: dict[str, RegisterBank] = {}
        self._nodes: dict[str, tuple[CoapNode, dict[str, list[sc.Channel]]]] = {}
        self._epoch: float | None = None

    def link(self, sensor_id: str) -> str:
        return os.path.join(self.run_dir, f"{sensor_id}.tty")

    async def start(self) -> list:
        """Open every pty (and its link) and start every node; returns the coroutines that then send
        the samples. Every endpoint exists when this returns; if one cannot be opened, the ones
        already open are closed and the error is raised."""
        ports = coap_ports(self.scenario, self.coap_port)
        for sid, port in ports.items():
            if not 1 <= port <= 65535:
                raise ValueError(f"CoAP node of {sid}: port {port} is outside 1..65535")
        try:
            os.makedirs(self.run_dir, exist_ok=True)
            for s in self.scenario.sensors:
                if s.kind in ("line", "pms5003"):
                    self._ports[s.id] = PtyPort(self.link(s.id), nonblocking=True)
                    self.endpoints.append(("serial", s.id, self.link(s.id)))
                elif s.kind == "modbus":
                    bank = self.banks[s.id] = RegisterBank()
                    for c in s.channels:
                        bank.add_slave(int(c.wire["slave"]))
                    sim = self._sims[s.id] = ModbusSlaveSim(bank)
                    sim.attach(PtyPort(self.link(s.id), nonblocking=True))
                    self.endpoints.append(("modbus", s.id, self.link(s.id)))
                else:
                    node = CoapNode(self.coap_host, ports[s.id])
                    groups = self._coap_groups(s)
                    for path in groups:
                        node.add(path)
                    self._nodes[s.id] = (node, groups)
                    try:
                        await node.start()
                    except OSError as exc:
                        raise OSError(exc.errno, f"CoAP node of {s.id} on {node.uri}: "
                                                 f"{exc.strerror or exc}") from None
                    # as the coap driver's options take them: uri is the node only, the paths are resources
                    self.endpoints.append(("coap", s.id, f"uri={node.uri} resources={','.join(groups)}"))
        except BaseException:
            await self.close()
            raise
        self._epoch = asyncio.get_running_loop().time()
        jobs = []
        for s in self.scenario.sensors:
            if s.kind in ("line", "pms5003"):
                jobs.append(self._serial(s))
            elif s.kind == "modbus":
                jobs.append(self._modbus(s))
            else:
                jobs.append(self._coap(s))
        return jobs

    async def _ticks(self, sensor: sc.SensorSpec):
        """Yield (k, values of sample k) when sample k is due: ``k * interval`` after the run started
        (never all at once, whatever ``t0`` is), yielding to the loop at every sample."""
        loop = asyncio.get_running_loop()
        start = loop.time() if self._epoch is None else self._epoch
        names = [c.name for c in sensor.channels]
        chunk = 256
        k = 0
        while not self.count or k < self.count:
            n = chunk if not self.count else min(chunk, self.count - k)
            vals = sc.values(sensor, self.scenario.seed, self.t0, k, n)
            for i in range(n):
                delay = start + (k + i) * sensor.interval_s - loop.time()
                await asyncio.sleep(max(delay, 0.0))
                yield k + i, [float(vals[c][i]) for c in names]
            k += n

    async def _serial(self, s: sc.SensorSpec) -> None:
        names = [c.name for c in s.channels]
        async for k, vals in self._ticks(s):
            state = s.delivery(k)
            port = self._ports.get(s.id)
            if state == "disconnect":
                if port is not None:
                    port.close()
                    self._ports[s.id] = None
                continue
            if port is None:
                port = self._ports[s.id] = PtyPort(self.link(s.id), nonblocking=True)
            if state == "dropout":
                continue
            ts = round(self.t0 + k * s.interval_s, 6)
            if s.kind == "pms5003":
                v = dict(zip(names, vals))
                data = frame_bytes(v.get("pm1_0", 0.0), v.get("pm2_5", 0.0), v.get("pm10", 0.0))
                data = corrupt_frame(data) if state == "corrupt" else data
            else:
                data = encode_line(s, names, vals, ts)
                data = corrupt_line(data) if state == "corrupt" else data
            port.try_write(data)
            self.sent[s.id] = self.sent.get(s.id, 0) + 1

    async def _modbus(self, s: sc.SensorSpec) -> None:
        bank, sim = self.banks[s.id], self._sims[s.id]
        async for k, vals in self._ticks(s):
            state = s.delivery(k)
            if state == "disconnect":
                sim.close()
                continue
            if sim.port is None:
                sim.attach(PtyPort(self.link(s.id), nonblocking=True))
            sim.silent = state == "dropout"
            sim.corrupt = state == "corrupt"
            for c, v in zip(s.channels, vals):
                bank.set_value(c.wire, v)
            self.sent[s.id] = self.sent.get(s.id, 0) + 1

    @staticmethod
    def _coap_groups(s: sc.SensorSpec) -> dict[str, list[sc.Channel]]:
        groups: dict[str, list[sc.Channel]] = {}
        for c in s.channels:
            groups.setdefault(str(c.wire.get("path", f"/{c.name}")), []).append(c)
        return groups

    async def _coap(self, s: sc.SensorSpec) -> None:
        node, groups = self._nodes[s.id]
        index = {c.name: i for i, c in enumerate(s.channels)}
        prefix = str(s.options.get("senml_base_name", f"{s.id}:"))
        async for k, vals in self._ticks(s):
            state = s.delivery(k)
            if state == "disconnect":
                if node.running:
                    await node.stop()
                continue
            if not node.running:
                await node.start()
            if state == "dropout":
                continue
            ts = round(self.t0 + k * s.interval_s, 6)
            for path, chans in groups.items():
                fmt = str(chans[0].wire.get("format", "text"))
                payload = encode_coap(fmt, prefix, chans, [vals[index[c.name]] for c in chans], ts)
                if state == "corrupt":
                    payload = b"\xff\x00not a payload"
                node.resources[path].publish(payload, CONTENT_FORMATS[fmt])
            self.sent[s.id] = self.sent.get(s.id, 0) + 1

    async def close(self) -> None:
        """Close every pty (removing its link), slave and node; safe to call more than once."""
        ports, self._ports = self._ports, {}
        for port in ports.values():
            if port is not None:
                port.close()
        sims, self._sims = self._sims, {}
        for sim in sims.values():
            sim.close()
        nodes, self._nodes = self._nodes, {}
        for node, _ in nodes.values():
            await node.stop()


async def _run(args, scenario: sc.Scenario) -> int:
    loop = asyncio.get_running_loop()
    received = cancel_on_signals(loop, asyncio.current_task())
    city = None
    tasks: list[asyncio.Task] = []
    try:
        t0 = scenario.t0 if args.t0 is None else args.t0
        t0 = time.time() if t0 is None else float(t0)
        count = scenario.count if args.count is None else args.count
        city = City(scenario, args.run_dir, t0, count, args.coap_host, args.coap_port)
        truth = args.truth or os.path.join(args.run_dir, "ground_truth.jsonl")
        os.makedirs(os.path.dirname(os.path.abspath(truth)), exist_ok=True)
        sc.write_ground_truth(truth, scenario, t0, count)
        jobs = await city.start()
        tasks = [asyncio.ensure_future(j) for j in jobs]
        print(f"t0 {t0!r}")
        print(f"truth {truth}")
        for kind, sensor, where in city.endpoints:
            print(f"{kind} {sensor} {where}")
        print("ready", flush=True)
        await asyncio.gather(*tasks)
        await asyncio.sleep(args.linger)
    except asyncio.CancelledError:
        if not received:
            raise
        return 128 + received[0]
    except LinkError as exc:  # a file in the way of RUN_DIR/<sensor>.tty, as --link of the others
        print(f"edge-gateway-sim city: --run-dir {args.run_dir}: {exc.filename}: {exc.strerror}", file=sys.stderr)
        return 2
    except (OSError, ValueError) as exc:
        print(f"edge-gateway-sim city: {exc}", file=sys.stderr)
        return 1
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if city is not None:
            await city.close()
        remove_signal_handlers(loop)
    return 0


def main(argv: list[str] | None = None) -> int:
    from edge_gateway.cmd_common import plain_text  # --help as plain text, also run as python -m

    ap = argparse.ArgumentParser(prog="edge-gateway-sim city", description=plain_text(__doc__ or ""),
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("scenario", help="scenario YAML file")
    ap.add_argument("--run-dir", default=os.environ.get("EG_RUN_DIR", "/tmp/edge-gateway-city"),
                    help="where the pty symlinks and the ground truth go")
    ap.add_argument("--coap-host", default="127.0.0.1",
                    help="address the CoAP nodes listen on (default 127.0.0.1)")
    ap.add_argument("--coap-port", type=int, default=int(os.environ.get("EG_COAP_PORT", "5683")),
                    help="port of the first CoAP node; the next ones count up")
    ap.add_argument("--t0", type=float, default=None, help="simulated start time (default: now)")
    ap.add_argument("--count", type=int, default=None, help="samples per sensor (0: forever)")
    ap.add_argument("--truth", default="", help="ground-truth JSON lines file")
    ap.add_argument("--linger", type=float, default=1.0, help="seconds to stay up after the last sample")
    args = ap.parse_args(argv)
    if args.count is not None and args.count < 0:
        ap.error(f"--count: must be >= 0 (0: forever), not {args.count}")
    if args.t0 is not None and not math.isfinite(args.t0):
        ap.error(f"--t0: must be a finite time, not {args.t0:g}")
    try:
        scenario = sc.load(args.scenario)
    except (OSError, ValueError) as exc:
        print(f"edge-gateway-sim city: {args.scenario}: {exc}", file=sys.stderr)
        return 2
    for sid, port in coap_ports(scenario, args.coap_port).items():
        if not 1 <= port <= 65535:
            ap.error(f"--coap-port: the CoAP node of {sid} would be on port {port}, outside 1..65535")
    try:
        return asyncio.run(_run(args, scenario))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
