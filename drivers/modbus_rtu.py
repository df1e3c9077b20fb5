"""Modbus RTU energy and water meters on one RS-485 port, polled block by block.

One sensor entry in the config is one RS-485 bus: its ``port`` and every
slave on it, as a list of register blocks (slave, holding/input, address,
count, interval) each with its fields. Because a bus allows one request at a
time, one driver owning the port is the simplest way to serialise requests;
the port is opened with an exclusive lock so a second config entry naming the
same port fails loudly (LinkLost with the lock error) instead of interleaving
frames. A shared-owner registry was not needed for that and would have made
restart and gap reporting span several sensors.

A slave that does not answer loses only its own blocks' readings, though each
request to it holds the bus about twice ``timeout_s`` (the wait, then as long
again to throw away a late reply) before the next block's turn:
timeouts, exception responses and CRC errors are counted per block in
:attr:`ModbusRtuDriver.blocks` and the block's readings are skipped (a value
that was never read is not a bad value; the gap is visible downstream). A
value outside a field's ``min``/``max`` is sent with ``Quality.BAD``. When no
block at all has answered ``dead_after`` times in a row (each block counts
its own requests, so one dead meter polled often does not count for the
others) the driver raises LinkLost, so the supervisor reopens an adapter that
hung.

Why not pymodbus' client: it runs its own reconnect loop and hides a vanished
port behind retries, while here the supervisor owns reconnects and gap
reporting for every driver; requests are still built by pymodbus
(:mod:`drivers.modbus_frames`).
"""

from __future__ import annotations

import asyncio
from dataclasses import asdict, dataclass
from typing import Literal, Optional

from edge_gateway.readings import Quality, Reading

from .base import Driver, LinkLost
from .modbus_frames import FUNCTIONS, WIDTH, FieldLayout, FieldSpec, RtuResponseDecoder, build_request
from .serial_port import AsyncSerial


@dataclass(frozen=True)
class ModbusField:
    """One value inside a block: ``offset`` registers from the block's start.

    ``name``: the channel name it is sent under. ``type``: how its registers read (32-bit types take two).
    ``word_order``: ``big`` when the high word comes first, ``little`` for meters that send the low word
    first (32-bit types only). ``scale``: the register value times this is the value sent (0.1 for a
    register counting tenths). ``unit``: the unit it is sent with. ``min``, ``max``: a value outside them
    is sent marked bad (quality), not dropped; null: no limit.
    """

    name: str
    offset: int
    type: Literal["int16", "uint16", "int32", "uint32", "float32"] = "uint16"
    word_order: Literal["big", "little"] = "big"
    scale: float = 1.0
    unit: str = ""
    min: Optional[float] = None
    max: Optional[float] = None

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("name: must not be empty")
        if self.offset < 0:
            raise ValueError("offset: must be 0 or more")


@dataclass(frozen=True)
class ModbusBlock:
    """Registers read with one request, every ``interval_s``.

    ``slave``: the meter's Modbus address on the bus, 1..247. ``address``: the first register (0-based,
    as on the wire: register 40001 of a datasheet's holding registers is 0). ``count``: how many
    registers, 1..125. ``function``: ``holding`` registers (function 3) or ``input`` registers (function 4).
    ``interval_s``: seconds from one read of the block to the next.
    ``name``: the block's name in status and logs (default ``slave:function:address``).
    """

    slave: int
    address: int
    count: int
    fields: tuple[ModbusField, ...]
    function: Literal["holding", "input"] = "holding"
    interval_s: float = 1.0
    name: str = ""

    def __post_init__(self) -> None:
        if not 1 <= self.slave <= 247:
            raise ValueError("slave: a Modbus RTU slave id is 1..247")
        if not 0 <= self.address <= 0xFFFF:
            raise ValueError("address: must be 0..65535")
        if not 1 <= self.count <= 125:
            raise ValueError("count: one request reads 1..125 registers")
        if self.interval_s <= 0:
            raise ValueError("interval_s: must be positive")
        if not self.fields:
            raise ValueError("fields: a block needs at least one field")
        for f in self.fields:
            if f.offset + WIDTH[f.type] > self.count:
                raise ValueError(f"fields: {f.name} ends past the block's {self.count} registers")

    @property
    def label(self) -> str:
        return self.name or f"{self.slave}:{self.function}:{self.address}"


@dataclass(frozen=True)
class ModbusOptions:
    """Options of a ``modbus_rtu`` sensor (one RS-485 bus).

    ``port``: the RS-485 adapter's device (``/dev/ttyUSB0``) or a pyserial URL. ``baudrate``, ``parity``,
    ``stopbits``: the bus's line settings, the same on every meter of it (8 data bits). ``timeout_s``: how
    long a request waits for its answer; a slave that does not answer costs its own blocks about twice this long
    per request, and holds the bus meanwhile (the wait, then as long again listening for a late reply
    to throw away).
    ``dead_after``: how many times in a row every block must go unanswered before the port is closed and
    opened again (an adapter that hung); a block that answers keeps the bus open, however often a dead
    meter's blocks are polled. ``exclusive``: lock the port, so a second sensor entry naming the same
    bus fails at once instead of interleaving requests.
    """

    port: str
    blocks: tuple[ModbusBlock, ...]
    baudrate: int = 9600
    parity: Literal["N", "E", "O"] = "N"
    stopbits: int = 1
    timeout_s: float = 0.5
    dead_after: int = 5
    exclusive: bool = True

    def __post_init__(self) -> None:
        if not self.blocks:
            raise ValueError("blocks: give at least one register block")
        if self.baudrate <= 0:
            raise ValueError("baudrate: must be positive")
        if self.stopbits not in (1, 2):
            raise ValueError("stopbits: must be 1 or 2")
        if self.timeout_s <= 0:
            raise ValueError("timeout_s: must be positive")
        if self.dead_after < 1:
            raise ValueError("dead_after: must be at least 1")
        names = [f.name for b in self.blocks for f in b.fields]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"blocks: field name {dup[0]!r} is used twice (names are channels)")
        labels = [b.label for b in self.blocks]
        if len(set(labels)) != len(labels):
            raise ValueError("blocks: two blocks have the same name")


@dataclass
class BlockStats:
    """Per-block counters: which meter is silent or refusing, and how often."""

    requests: int = 0
    responses: int = 0
    timeouts: int = 0
    exceptions: int = 0
    bad_frames: int = 0
    late: int = 0  # replies that came after the timeout, thrown away
    last_exception: int = 0


class ModbusRtuDriver(Driver):
    """Polls every block of one bus in turn, each at its own interval."""

    name = "modbus_rtu"
    Options = ModbusOptions

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.blocks: dict[str, BlockStats] = {b.label: BlockStats() for b in self.options.blocks}

    def part_stats(self) -> dict[str, dict]:
        return {label: asdict(st) for label, st in self.blocks.items()}

    async def run(self) -> None:
        opts: ModbusOptions = self.options
        plans = [(b, build_request(b.slave, b.function, b.address, b.count),
                  FieldLayout([FieldSpec(f.name, f.offset, f.type, f.word_order, f.scale, f.unit)
                               for f in b.fields], b.count),
                  {f.name: (f.min, f.max) for f in b.fields})
                 for b in opts.blocks]
        port = AsyncSerial(opts.port, opts.baudrate, read_timeout=min(0.05, opts.timeout_s),
                           parity=opts.parity, stopbits=opts.stopbits,
                           exclusive=opts.exclusive)
        await port.open()
        loop = asyncio.get_running_loop()
        due = [loop.time()] * len(plans)
        failed = [0] * len(plans)  # per block, requests in a row without an answer
        is_connected = False
        try:
            while True:
                i = min(range(len(plans)), key=due.__getitem__)
                delay = due[i] - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                block, request, layout, limits = plans[i]
                answered = await self._poll(port, block, request, layout, limits)
                now = loop.time()
                due[i] += block.interval_s
                if due[i] < now:
                    due[i] = now + block.interval_s
                if answered:
                    failed[i] = 0
                    if not is_connected:
                        is_connected = True
                        self.connected()
                else:
                    failed[i] += 1
                    # a dead meter polled often must not take the bus down while another still answers
                    if min(failed) >= opts.dead_after:
                        raise LinkLost(f"{opts.port}: no slave answered: each of the {len(plans)} blocks "
                                       f"went unanswered {opts.dead_after} times in a row")
        finally:
            await port.close()
            port.shutdown()

    async def _poll(self, port: AsyncSerial, block: ModbusBlock, request: bytes, layout: FieldLayout,
                    limits: dict) -> bool:
        """One request/response; True when the slave answered (even with an exception)."""
        stats = self.blocks[block.label]
        decoder = RtuResponseDecoder(block.slave, FUNCTIONS[block.function], block.count)
        loop = asyncio.get_running_loop()
        stats.requests += 1
        self.stats.bytes += await port.discard_input()
        await port.write(request)
        deadline = loop.time() + self.options.timeout_s
        responses = []
        while not responses and loop.time() < deadline:
            data = await port.read()
            if data:
                self.stats.bytes += len(data)
                responses = decoder.feed(data)
        stats.bad_frames += decoder.bad_frames
        self.stats.malformed += decoder.bad_frames
        if not responses:
            stats.timeouts += 1
            self.stats.note_error(f"block {block.label}: no response within {self.options.timeout_s} s", self.clock())
            await self._outwait_late_reply(port, stats)
            return False
        stats.responses += 1
        response = responses[0]
        if response.exception:
            stats.exceptions += 1
            stats.last_exception = response.exception
            self.stats.note_error(f"block {block.label}: exception code {response.exception}", self.clock())
            return True
        now = self.clock()
        values = layout.decode(response.data)
        for name, value, unit in values:
            lo, hi = limits[name]
            bad = (lo is not None and value < lo) or (hi is not None and value > hi)
            self.sink(Reading(self.sensor_id, name, value, now, unit, Quality.BAD if bad else Quality.GOOD, True))
        self.stats.readings += len(values)
        self.stats.last_reading_ts = now
        return True

    async def _outwait_late_reply(self, port: AsyncSerial, stats: BlockStats) -> None:
        """Listen one more timeout after a timeout and throw away what comes (libmodbus's protocol recovery).

        RTU replies carry no transaction id: a late reply read during the next request would pass for
        that block's answer when slave, function and register count match.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.options.timeout_s
        late = 0
        while loop.time() < deadline:
            late += len(await port.read())
        if late:
            self.stats.bytes += late
            stats.late += 1


DRIVER = ModbusRtuDriver
