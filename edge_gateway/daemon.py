"""The daemon: the one place that wires drivers, batcher, analytics, queue and uplink together.

Start order follows Telegraf's agent: sinks first (queue, uplink, forwarder),
then the analytics (kernels warmed), then the drivers; stop in reverse, so
nothing a driver produced is dropped at shutdown.

Numba compiles in threads of their own, never on the event loop: every kernel
the config needs before ``READY=1``, and the kernels of new detector settings
(reload, downlink ``set``) before they replace the running ones. A compile
cannot be interrupted, so a stop does not wait for one (see :func:`run`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import json
import logging
import math
import os
import signal
import time
from typing import Callable

import msgpack

from . import aio, kernel_cache, memory, private_files, stall
from .config import GatewayConfig
from .clockhold import ClockHold
from .clockwatch import ClockWatch
from .statelock import AlreadyRunning, NotOurs, StateDirLock

log = logging.getLogger(__name__)

BROKER_WAIT_S = 5.0  # a reload with a new broker waits this long for its CONNACK (Gateway._apply)
CHECKPOINT_EVERY_S = 60.0  # written with the next append, and only when changed (docs/uplink.md)
STATS_EVERY_S = 5.0  # systemd's STATUS= line
STATS_LOG_EVERY_S = 900.0  # the same figures in the journal: 96 lines a day, not 17,280 (review 16, bounds #8)
EXTEND_S = 300  # start timeout granted after each warm-up step (EXTEND_TIMEOUT_USEC)
CACHE_DIR = "numba-cache"


class Gateway:
    """One running gateway; :meth:`run` returns when asked to stop."""

    def __init__(self, cfg: GatewayConfig, notify: Callable[[str], None] = lambda s: None,
                 clock: Callable[[], float] = time.time) -> None:
        import drivers

        from . import messages
        from .batcher import Batcher
        from .pipeline import Pipeline
        from .queue import DurableQueue, QueueLimits
        from .supervisor import Supervisor

        self.cfg = cfg
        self.notify = notify
        self.clock = clock
        self.started = clock()
        self.clockwatch = ClockWatch(clock)
        self.started_steady = self.clockwatch.steady()
        self._epoch_seq: int | None = None  # the last seq queued before this process started (see _clock_stepped)
        self.last_round: float | None = None  # loop.time() at the end of the last round; None outside the rounds
        self.topics = messages.Topics(cfg.gateway.topic_prefix, cfg.gateway.id)
        self.batcher = Batcher()
        self.pipeline = Pipeline(cfg, self.topics, self.batcher, wall_clock=clock)
        self.queue = DurableQueue(cfg.queue_path, messages.encode, clock, QueueLimits.from_config(cfg.queue),
                                  seed_seq=True)
        self.router = None  # downlink commands (see _start_uplink, docs/uplink.md)
        self.supervisor = Supervisor(self._on_gap, clock=clock)
        # gateway.clock_sync_wait_s: the drivers' readings wait for the clock's sync there (see start, tick)
        self.hold = ClockHold(self.batcher.add, cfg.gateway.clock_sync_wait_s,
                              steady=lambda: self.clockwatch.steady()) if cfg.gateway.clock_sync_wait_s > 0 else None
        self._sink = self.hold.add if self.hold is not None else self.batcher.add
        self.drivers = [
            drivers.get(s.driver)(s.id, s.options, self._sink, clock=clock) for s in cfg.sensors
        ]
        # messages for the next round: link gaps go before what its readings make (the gap ended before
        # the new link's first reading); a clock step after (its since_seq..seq are the rows stamped on the
        # clock before the step, and that round's output closes windows of the old clock), unless the
        # step ended a clock hold: then before, as that round's readings were all re-dated or stamped after it
        self._gaps_pending: list = []
        self._pending: list = []
        self._refused_seen: dict[str, int] = {}  # batcher.refused when _make_room last looked
        self._room_checked = -math.inf
        self._numbering_owed = False  # renumbered or regridded, and no checkpoint of the new one stored yet
        self.channels_forgotten: dict[str, int] = {}  # per sensor, by _make_room
        self._stop = asyncio.Event()
        self.link = None
        self.forwarder = None
        self.counts = {"readings": 0, "aggregates": 0, "events": 0}
        from .control import Tap
        from .metrics import Telemetry

        self.tap = Tap()  # readings/events for `edge-gateway tail`; never blocks
        self.telemetry = Telemetry(clock, channel_counters=self.pipeline.channel_counters,
                                   sensor_counters=self._sensor_counters)
        self.control = None
        self.prometheus = None
        self._reload_lock = asyncio.Lock()  # reloads and downlink ``set`` change the config one at a time
        self._background: set[asyncio.Task] = set()
        self._applying: set[asyncio.Task] = set()  # background tasks a shutdown lets finish
        self._started = asyncio.Event()  # the drivers run: reloads and ``set`` wait for it
        self.compiler = kernel_cache.Compiler()
        self.state_lock = StateDirLock(cfg.state_dir)

    # --- wiring -----------------------------------------------------------------------------

    def _sensor_counters(self) -> dict[str, dict[str, int]]:
        out = self.pipeline.conditioning.counters(self.batcher.keys)
        for sid, n in self.pipeline.rewind_counts().items():
            out.setdefault(sid, {})["clock_rewinds"] = n
        for sid, n in self.batcher.refused.items():
            out.setdefault(sid, {})["channels_refused"] = n
        for sid, n in self.batcher.bad_time.items():
            out.setdefault(sid, {})["bad_time"] = n
        for sid, n in self.channels_forgotten.items():
            out.setdefault(sid, {})["channels_forgotten"] = n
        return out

    def _on_gap(self, gap) -> None:
        """A sensor's link is back (the supervisor, from the driver's ``connected()``, before the driver
        reads anything on the new link): report the outage once, as a ``link_gap``, and re-anchor the
        dropout clock of every channel of the sensor, so the jump in its stamps is not also reported as a
        ``dropout`` anomaly on each channel. Readings of the new link reach the batcher only after this;
        those of the old one were scored by the rounds run while the supervisor waited to retry (a
        round every batch_interval_s, 0.2 s by default; the first retry waits at least 0.25 s)."""
        from . import messages

        if self.hold is None or not self.hold.link_back(gap.sensor):  # held: re-anchored at their release
            self.pipeline.resume_sensor(gap.sensor)
        self._gaps_pending.append(messages.event(self.topics, self.cfg.gateway.id, gap.sensor, "link_gap",
                                            start=gap.start, end=gap.end, reason=gap.reason))

    def _status_payload(self, state: str, full: bool = False) -> bytes:
        r = self.telemetry.reload
        doc = {"gw": self.cfg.gateway.id, "seq": self.queue.last_seq, "state": state, "ts": self.clock(),
               "reload": {k: r[k] for k in ("count", "ok", "failed", "last_ts", "last_ok")},
               "last_reload_error": r["last_error"]}
        if full and self.telemetry.cached:
            c = self.telemetry.cached
            doc.update({k: c[k] for k in ("uptime_s", "counts", "published", "queue", "link") if k in c})
            doc["sensors"] = {sid: {k: v[k] for k in ("rate_per_s", "readings", "malformed", "link_errors",
                                                      "late", "future", "bad_time") if k in v}
                              for sid, v in c.get("sensors", {}).items()}
        return msgpack.packb(doc)

    async def start(self) -> bool:
        """Lock the state directory, open the queue, connect, warm every kernel, start the drivers, READY=1.

        False when a stop is asked for during the warm-up: then nothing after the uplink was started
        and the compile goes on unawaited. Raises :class:`AlreadyRunning` before touching anything.
        """
        self.state_lock.acquire()
        kernel_cache.prune(self.cfg.state_dir / CACHE_DIR)
        await self.queue.open()
        self._epoch_seq = self.queue.last_seq
        other = await self.queue.claim(self.cfg.gateway.id)
        if other is not None:  # its queued messages, checkpoint and sequence numbers would go out as ours
            raise NotOurs(f"state directory {self.cfg.state_dir} belongs to gateway {other!r}, not "
                          f"{self.cfg.gateway.id!r}: give this gateway its own gateway.state_dir, or move that "
                          "folder away to start afresh (its unsent messages go with it)")
        log_config_warnings(self.cfg)
        await self._restore_checkpoint()
        await self._restore_events()  # before the control socket answers `status` (_start_operations)
        self._start_uplink()
        self.notify("STATUS=warming analytics kernels")
        t0 = time.perf_counter()
        if not await self._unless_stopped(self.compiler.submit(self._warm)):
            log.warning("stop requested while the kernels were warming (%.1f s in): not starting",
                        time.perf_counter() - t0)
            return False
        log.info("kernels ready in %.2f s", time.perf_counter() - t0)
        if self.hold is not None:
            self.hold.begin()  # after the warm-up (minutes, the first time), in which NTP may have synced
        for d in self.drivers:
            self.supervisor.start(d)
        self.forwarder.notify()
        await self._start_operations()
        log.info("gateway %s running: %d sensors, queue %s (%d queued)", self.cfg.gateway.id,
                 len(self.drivers), self.cfg.queue_path, self.queue.depth)
        memory.trim()
        self._started.set()
        if not self._stop.is_set():  # systemd must not hear READY=1 after its SIGTERM
            self.notify("READY=1")
        return True

    def _warm(self) -> None:
        with memory.numba_without_cffi():
            self.pipeline.warm(self._warm_progress)

    def _warm_progress(self) -> None:
        """After each kernel group compiled: systemd's start timeout (TimeoutStartSec=600) is for a Pi 4;
        a slower board, or a config with many detector variants, gets EXTEND_S more after each step,
        so a compile that progresses is never killed and one that hangs still is. Not once a stop is asked
        for: then systemd would read it as more time for the stop (TimeoutStopSec)."""
        if not self._stop.is_set():
            self.notify(f"EXTEND_TIMEOUT_USEC={EXTEND_S * 1_000_000}")

    async def _unless_stopped(self, fut: asyncio.Future) -> bool:
        """Wait for ``fut``; False, with ``fut`` cancelled, if a stop is asked for first."""
        stop = asyncio.ensure_future(self._stop.wait())
        try:
            await asyncio.wait({fut, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
        if fut.done():
            fut.result()
            return not self._stop.is_set()
        fut.cancel()
        return False

    def _start_uplink(self, history: tuple = (None, None)) -> None:
        """A forwarder and a link to the configured broker, started; ``history``: the replaced link's last
        outage and the time it went down if it was down (:meth:`.uplink.MqttLink.take_history`)."""
        from .forwarder import Forwarder
        from .uplink import MqttLink

        self.forwarder = Forwarder(self.queue, None, window=max(1, self.cfg.broker.max_inflight))  # type: ignore[arg-type]
        self.router = self._command_router()
        self.link = MqttLink(self.cfg.broker, f"edge-gateway-{self.cfg.gateway.id}", self.topics.status,
                             birth=lambda: self._status_payload("online"),
                             will=msgpack.packb({"gw": self.cfg.gateway.id, "seq": -1, "state": "offline"}),
                             on_ack=self.forwarder.on_ack, on_state=self._on_link_state,
                             credentials=self._credentials if self.cfg.broker.secrets_file else None,
                             subscriptions=(self.topics.cmd("+"),) if self.cfg.broker.commands else (),
                             on_message=self._on_command)
        self.link.take_history(*history)
        self.forwarder.link = self.link
        self.forwarder.start()
        self.link.start()

    async def run(self) -> None:
        try:
            ready = await self.start()
        except AlreadyRunning:
            raise
        except BaseException:
            await self.shutdown(started=False)
            raise
        if not ready:
            await self.shutdown(started=False)
            return
        loop = asyncio.get_running_loop()
        next_ckpt = loop.time() + CHECKPOINT_EVERY_S
        next_stats = loop.time() + STATS_EVERY_S
        next_stats_log = loop.time() + STATS_EVERY_S  # the first soon after the start, then every 15 min
        next_status = next_cache = self.last_round = loop.time()
        try:
            while not self._stop.is_set():
                try:
                    await aio.wait_for(self._stop.wait(), self.cfg.gateway.batch_interval_s)
                except asyncio.TimeoutError:
                    pass
                await self.tick()
                now = loop.time()
                if now >= next_ckpt:
                    await self._save_checkpoint()
                    next_ckpt = now + CHECKPOINT_EVERY_S
                if now >= next_stats_log:
                    self._log_stats()
                    next_stats_log = now + STATS_LOG_EVERY_S
                if now >= next_stats:
                    c = self.telemetry.cached
                    self.notify(f"STATUS=link {c.get('link')}, queue {c.get('queue_depth')}, "
                                f"{c.get('counts', {}).get('readings')} readings")
                    next_stats = now + STATS_EVERY_S
                if now >= next_cache:
                    self.telemetry.sample_rates(self.drivers)
                    self.telemetry.cached = await self.status()
                    next_cache = now + 1.0
                interval = self.cfg.gateway.status_interval_s
                if interval and now >= next_status:
                    self._publish_status()
                    next_status = now + interval
                self.last_round = loop.time()
        finally:
            self.last_round = None  # rounds are over: a slow shutdown is not a stuck pipeline
            await self.shutdown()

    def request_stop(self) -> None:
        self._stop.set()

    # --- the pipeline ------------------------------------------------------------------------

    async def tick(self) -> None:
        """Batch -> kernels -> messages -> one committed transaction."""
        from . import messages

        step = self.clockwatch.check()
        released, ended = self._release_held(step) if self.hold is not None else ([], None)
        if step is not None:
            await self._clock_stepped(step, ended.redated if ended is not None else None)
        batch = self.batcher.drain()
        self.counts["readings"] += len(batch)
        out = self._gaps_pending + released + self.pipeline.process(batch, self.clockwatch.steady()) + self._pending
        self._gaps_pending, self._pending = [], []
        self._observe(batch, out)
        if self.batcher.refused and self._make_room():
            self._numbering_owed = True
        if out:
            marks = self.pipeline.take_marks()
            ckpt = None
            if self._numbering_owed:
                # channels were renumbered: the marks of the new numbering go to disk only in the
                # transaction that stores a checkpoint of it, with this round's messages
                from .pipeline import pack_checkpoint

                state = self.pipeline.checkpoint_state()
                ckpt = ("analytics", await asyncio.get_running_loop().run_in_executor(None, pack_checkpoint, state))
            await self.queue.append(out, note=("marks", marks) if marks else None, checkpoint=ckpt)
            if ckpt is not None:
                if self.queue.checkpoint_stored("analytics") == ckpt[1]:
                    self._numbering_owed = False
                else:
                    self.pipeline.marks_unsaved()  # a full disk gave up the checkpoint and these marks
            if self.queue.stats_now().dropped_pending and self.link is not None and self.link.connected:
                await self._report_drops()
            for m in out:
                self.counts["aggregates" if m.kind == messages.KIND_AGG else "events"] += 1
            if self.forwarder is not None:
                self.forwarder.notify()

    def _make_room(self) -> bool:
        """A sensor at its channel cap refuses readings of new channels: forget its channels idle for
        ``CHANNEL_IDLE_S`` (at most every ``ROOM_CHECK_S``). Returns whether any was forgotten."""
        from .batcher import CHANNEL_IDLE_S, ROOM_CHECK_S

        grew = {s for s, n in self.batcher.refused.items() if n > self._refused_seen.get(s, 0)}
        now = self.clockwatch.steady()
        if not grew or now - self._room_checked < ROOM_CHECK_S:
            return False
        self._room_checked = now
        self._refused_seen = dict(self.batcher.refused)
        gone = self.pipeline.forget_idle(grew, now, CHANNEL_IDLE_S)
        if not gone:
            return False
        live = {(k.sensor, k.channel) for k in self.batcher.keys}
        for k in gone:
            if (k.sensor, k.channel) not in live:
                self.telemetry.last_values.pop((k.sensor, k.channel), None)
        for sensor in sorted({k.sensor for k in gone}):
            mine = [k.channel for k in gone if k.sensor == sensor]
            self.channels_forgotten[sensor] = self.channels_forgotten.get(sensor, 0) + len(mine)
            log.warning("sensor %s: at its cap of %d channels; %d channel(s) silent for %g s or more forgotten to "
                        "make room for new ones (first: %r)", sensor, self.batcher.max_channels_per_sensor,
                        len(mine), CHANNEL_IDLE_S, mine[0])
        return True

    def _release_held(self, step) -> tuple[list, object]:
        """Poll the clock hold with this round's clock check; if it ends, its readings go to the batcher in
        arrival order, and the messages of the ones before a link that came back meanwhile are returned:
        those are processed first, then the sensor's dropout clocks re-anchored, as :meth:`_on_gap` does
        for readings not held. No await in here: a driver must not add a reading before the held ones."""
        ended = self.hold.poll(step)
        out: list = []
        add = self.batcher.add
        for readings, shifts, resumed in self.hold.take():
            if shifts is None:
                for r in readings:
                    add(r)
            else:
                for r, shift in zip(readings, shifts):
                    add(r, shift)
            if resumed:
                batch = self.batcher.drain()
                self.counts["readings"] += len(batch)
                done = self.pipeline.process(batch, self.clockwatch.steady())
                self._observe(batch, [])  # the events: with the round's (tick)
                out += done
                for sensor in resumed:
                    self.pipeline.resume_sensor(sensor)
        return out, ended

    async def _clock_stepped(self, step, redated: int | None = None) -> None:
        """NTP's first sync on a gateway without an RTC, usually: readings and queued messages were stamped
        with a clock ``step.step_s`` off. The detectors must not take the jump for a dropout, the queue's
        ``max_age_s`` must not expire what it holds by the jump, and the cloud is told, so it can re-date
        what came before. ``redated``: the step ended a clock hold (:mod:`.clockhold`), which re-dated that
        many readings itself: none this process processed was stamped on the clock before the step."""
        from . import messages

        self.pipeline.clock_stepped()
        # every row this process queued is on the clock before the step (earlier steps' rows were shifted)
        after = self._epoch_seq if self._epoch_seq is not None else self.queue.last_seq
        shifted = await self.queue.shift_created(step.step_s, after)
        stamped = ("readings stamped before it are off by that much" if redated is None else
                   f"the {redated} reading(s) held for it were re-dated by it")
        log.warning("the wall clock stepped by %+.3f s (%s -> %s; NTP's first sync?): %s; %d queued message(s) "
                    "re-aged", step.step_s, _iso(step.before), _iso(step.at), stamped, shifted)
        extra = {} if redated is None else {"redated": redated}
        ev = messages.event(self.topics, self.cfg.gateway.id, "_gateway", "clock_step", step_s=step.step_s,
                            before=step.before, at=step.at, since_seq=after + 1, **extra)
        (self._pending if redated is None else self._gaps_pending).append(ev)

    # --- state -------------------------------------------------------------------------------

    async def _save_checkpoint(self) -> None:
        """The analytics state and, with it, ``status``'s recent events (:func:`.metrics.pack_events`
        says what a power cut loses); both ride the next write transaction, and an unchanged blob is
        not written again."""
        from .metrics import EVENTS_CHECKPOINT
        from .pipeline import pack_checkpoint

        state = self.pipeline.checkpoint_state()
        blob = await asyncio.get_running_loop().run_in_executor(None, pack_checkpoint, state)
        await self.queue.save_checkpoint("analytics", blob)
        await self.queue.save_checkpoint(EVENTS_CHECKPOINT, self.telemetry.events_blob())

    async def _restore_checkpoint(self) -> None:
        blob = await self.queue.load_checkpoint("analytics")
        if blob:
            n = self.pipeline.restore(blob, await self.queue.load_note("marks"))
            log.info("restored analytics state of %d channels", n)
            if self.pipeline.regridded:
                # another window geometry: a crash before a checkpoint of the new grid is stored would restore
                # this one again, whose old-grid windows closed at this start the marks of the new grid cannot
                # drop; the first round's transaction stores one, as after a renumbering
                self._numbering_owed = True

    async def _restore_events(self) -> None:
        """``status``'s recent events of the runs before this one, marked as from before this restart
        (:meth:`.metrics.Telemetry.restore_events`). A blob that is not one is logged and left: the
        table starts empty, the gateway starts all the same (the next checkpoint replaces it)."""
        from .metrics import EVENTS_CHECKPOINT

        blob = await self.queue.load_checkpoint(EVENTS_CHECKPOINT)
        if not blob:
            return
        try:
            n = self.telemetry.restore_events(blob, self.started)
        except ValueError as exc:
            log.warning("recent events of the last run not restored (%s): `edge-gateway status` lists only "
                        "the events from now on", exc)
            return
        log.info("restored %d recent event(s) of the last run", n)

    def snapshot(self) -> dict:
        fw = self.forwarder
        return {
            "gateway": self.cfg.gateway.id,
            "uptime_s": round(self.clockwatch.steady() - self.started_steady, 1),
            "clock": self.clockwatch.status() if self.hold is None else {**self.clockwatch.status(),
                                                                            "hold": self.hold.status()},
            "windows": {"seconds": self.cfg.windows.seconds, "hop_s": self.cfg.windows.hop_s,
                        "grace_s": self.cfg.windows.grace_s},
            "counts": dict(self.counts),
            "published": dict(fw.stats.acked_by_kind) if fw else {},
            "queue_depth": self.queue.depth,
            "inflight": fw.inflight if fw else 0,
            "link": "up" if self.link is not None and self.link.connected else "down",
            "last_seq": self.queue.last_seq,
            "uplink": self.uplink_status(),
            "sensors": self.telemetry.sensors(self.drivers, self.started),
            "last_events": list(self.telemetry.events),
            "reload": dict(self.telemetry.reload),
            "last_reload_error": self.telemetry.reload["last_error"],
        }

    # --- uplink: drops report, downlink commands (see docs/uplink.md) ---------------------------

    def _credentials(self):
        from . import secrets

        return secrets.load(self.cfg.broker.secrets_file, strict=self.cfg.broker.strict_secrets)

    def _on_link_state(self, up: bool) -> None:
        if self.forwarder is not None:
            self.forwarder.on_link(up)
        if up and self.queue.stats_now().dropped_pending:
            self._spawn(self._report_drops(), "dropped-report")

    def _spawn(self, coro, name: str) -> asyncio.Task:
        """A background task, cancelled by a shutdown unless it is applying a change (:meth:`_applying_change`)."""
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    @contextlib.contextmanager
    def _applying_change(self):
        """Mark the current task as changing the running gateway: a shutdown waits for it, never cuts it
        in half (drivers stopped but not restarted, a link stopped but not replaced)."""
        task = asyncio.current_task()
        self._applying.add(task)
        try:
            yield
        finally:
            self._applying.discard(task)

    async def _cancel_background(self) -> None:
        """Cancel what is still waiting (for the start, the reload lock, a compile); let a change being
        applied finish."""
        await aio.cancel_and_wait([t for t in self._background if t not in self._applying])
        applying = [t for t in self._background if not t.done()]
        if applying:
            await asyncio.wait(applying, timeout=15.0)

    async def _report_drops(self) -> None:
        """Commit a ``dropped`` event with what the queue discarded since the last report."""
        from . import messages

        seq = await self.queue.take_dropped(lambda c: messages.dropped_event(self.topics, self.cfg.gateway.id, c))
        if seq is not None:
            log.warning("reported dropped messages (event seq %d)", seq)
            self.counts["events"] += 1
            if self.forwarder is not None:
                self.forwarder.notify()

    def uplink_status(self) -> dict:
        """Queue bounds and link health for ``status`` (backlog size, age of the oldest unsent message;
        while down, since when and the seconds until the next connect attempt; while up, since when,
        and the last outage as ``{start, end}`` wall times)."""
        q = self.queue.stats_now()
        age = self.queue.oldest_age()
        fw, link = self.forwarder, self.link
        next_at = getattr(link, "next_attempt_at", None)
        outage = getattr(link, "last_outage", None)
        return {"backlog": q.depth, "backlog_bytes": q.bytes, "max_bytes": self.cfg.queue.max_bytes,
                "oldest_age_s": None if age is None else round(age, 1), "queue_full": q.full,
                "dropped": q.dropped_total, "dropped_unreported": q.dropped_pending, "rolled_up": q.rolled_up,
                "file_cap_bytes": q.file_cap_bytes, "queue_recovered_from": self.queue.recovered_from,
                "link_error": getattr(link, "last_error", ""),
                "down_since": getattr(link, "down_since", None),
                "next_attempt_in_s": None if next_at is None else round(max(0.0, next_at - time.time()), 1),
                "up_since": getattr(link, "up_since", None),
                "last_outage": dict(outage) if outage else None,
                "connects": getattr(link, "connects", 0),
                "rejected": fw.stats.rejected if fw else 0, "rewinds": fw.stats.rewinds if fw else 0,
                "rejected_by_reason": {f"0x{code:02x}": n for code, n in fw.stats.rejected_by_reason.items()}
                if fw else {},
                "refused_dropped": fw.stats.refused_dropped if fw else 0,
                "quota_backoffs": fw.stats.backoffs if fw else 0,
                "receive_maximum": getattr(link, "receive_maximum", None),
                "refused_large": getattr(link, "refused_large", 0),
                "poisoned": getattr(link, "poisoned", 0),
                "gave_up": getattr(link, "gave_up", 0),
                "commands": dict(self.router.counts) if self.router else {},
                "commands_refused": self.router.refused if self.router else 0,
                "commands_busy": self.router.busy if self.router else 0,
                "commands_retained": self.router.retained if self.router else 0,
                "inbound_dropped": getattr(link, "inbound_dropped", 0),
                "inbound_overflow": getattr(link, "inbound_overflow", 0),
                "replies_dropped": getattr(link, "replies_dropped", 0),
                "refused_topics": getattr(link, "refused_topics", 0),
                "callback_errors": getattr(link, "callback_errors", 0),
                "thread_restarts": getattr(link, "thread_restarts", 0)}

    def _command_router(self):
        from .downlink import CommandRouter

        router = CommandRouter(self.cfg.broker.commands)
        router.register("ping", lambda args: {"pong": self.clock(), "last_seq": self.queue.last_seq})
        router.register("status", lambda args: self.snapshot())
        router.register("set", lambda args: self.set_parameter(args.get("name"), args.get("value")))
        router.register("reload", self._mqtt_reload)
        return router

    def _on_command(self, topic: str, payload: bytes, retain: bool = False) -> None:
        """One downlink request from the link (event loop). Refused without a task: an invalid name
        (never echoed into a reply topic, review 14 #1) and, while ``downlink.MAX_IN_FLIGHT`` commands
        are running, any (review 19 #4: a flood grew a task per message). A request delivered with the
        retain flag is answered with an error and never run (review 19 #5: the broker delivers it again
        at every subscribe, i.e. every reconnect and restart)."""
        from .downlink import valid_name

        name = topic.rsplit("/", 1)[-1]
        router = self.router
        if router is None or self.link is None:
            return
        if not valid_name(name):
            router.refuse()
            log.debug("command with an invalid name refused (%d bytes)", len(name))
            return
        if not router.admit():
            return

        async def run() -> None:
            reply = router.refuse_retained(name, payload) if retain else await router.handle(name, payload)
            link = self.link
            if link is None:
                return
            try:
                link.publish(self.topics.cmd_res(name), reply)
            except RuntimeError as exc:
                log.warning("command reply not sent: %s", exc)

        task = self._spawn(run(), f"cmd:{name[:32]}")
        task.add_done_callback(lambda t: router.done())  # also when cancelled before it ran

    async def set_parameter(self, name, value) -> dict:
        """Downlink ``set``: the event ``threshold`` or one detector parameter, at run time.

        A bad value is refused at once. A good one waits for the start-up, then for its kernels to
        compile off the event loop (the reply waits, the watchdog pings do not), and applies only then.
        """
        if not isinstance(name, str) or not name:
            raise ValueError("name: give the detector parameter to set")
        if isinstance(value, bool) or not isinstance(value, (int, float, list)):
            raise ValueError(f"value: {name} needs a number")
        _with_parameter(self.cfg.detector, name, value)
        await self._wait_started("set")
        async with self._reload_lock:
            det = _with_parameter(self.cfg.detector, name, value)  # on top of any reload applied meanwhile
            await self._warm_detector(det, self.cfg.sensors)
            self.pipeline.set_detector(det)
            self.cfg = dataclasses.replace(self.cfg, detector=det)
        log.info("detector parameter %s set to %r (downlink)", name, value)
        return {name: value}

    async def _warm_detector(self, section, sensors) -> None:
        """Compile (or load) the detector kernels ``section`` needs for ``sensors``, off the event loop."""
        from .detector_groups import warm_detectors

        t0 = time.perf_counter()
        n = await self.compiler.submit(warm_detectors, section, [s.id for s in sensors])
        log.info("detector kernels for the new settings ready in %.2f s (%d variants)", time.perf_counter() - t0, n)

    async def _wait_started(self, what: str) -> None:
        if not self._started.is_set():
            log.info("%s asked for during the start-up: it applies once the gateway is ready", what)
            await self._started.wait()

    # --- operations: control socket, metrics, status, reload (see docs/operations.md) --------

    async def status(self) -> dict:
        """The ``edge-gateway status`` document: :meth:`snapshot` plus queue age and config source."""
        s = self.snapshot()
        q = await self.queue.stats()
        s["pid"] = os.getpid()
        s["config"] = self.cfg.source
        s["queue"] = {"depth": q.depth, "bytes": q.bytes, "last_seq": q.last_seq,
                      "oldest_age_s": round(max(0.0, self.clock() - q.oldest_created), 1) if q.oldest_created else None}
        s["link_error"] = getattr(self.link, "last_error", "") if s["link"] == "down" else ""
        s["tail_dropped"] = self.tap.dropped
        if self.control is not None:
            s["control"] = {"clients": self.control.clients, "refused": self.control.refused,
                            "accept_errors": self.control.accept_errors}
        if self.prometheus is not None:
            s["prometheus"] = self.prometheus.stats()
        return s

    def _observe(self, batch, out: list) -> None:
        from . import messages

        self.telemetry.observe_batch(batch.chan, batch.ts, batch.val, self.batcher.keys)
        tap = self.tap
        if tap.active and len(batch):
            keys = self.batcher.keys
            for c, t, v in zip(batch.chan.tolist(), batch.ts.tolist(), batch.val.tolist()):
                k = keys[c]
                if tap.wants(k.sensor):
                    tap.publish({"type": "reading", "sensor": k.sensor, "channel": k.channel,
                                 "value": v, "ts": t, "unit": k.unit})
        for m in out:
            if m.kind == messages.KIND_EVENT:
                self.telemetry.observe_event(m.fields)
                if tap.active:
                    tap.publish({**m.fields, "event": m.fields.get("type"), "type": "event"})

    def _publish_status(self) -> None:
        """The retained status message (state ``online`` plus the figures of ``status``)."""
        if self.link is not None and self.link.connected:
            try:
                self.link.publish(self.topics.status, self._status_payload("online", full=True), retain=True)
            except RuntimeError as exc:
                log.warning("status message not sent: %s", exc)

    async def _start_operations(self) -> None:
        from .control import ControlServer
        from .metrics import PrometheusEndpoint

        self.control = ControlServer(self.cfg.control_socket, self.status, self.tap,
                                     commands={"reload": lambda req: asyncio.shield(
                                         self._spawn(self.reload_from_file(), "reload"))})
        await self.control.start()
        self.telemetry.cached = await self.status()
        if self.cfg.metrics.prometheus_port:
            self.prometheus = PrometheusEndpoint(self.cfg.metrics.prometheus_port, lambda: self.telemetry.cached)
            await self.prometheus.start()

    async def _stop_operations(self) -> None:
        if self.control is not None:
            await self.control.stop()
            self.control = None
        if self.prometheus is not None:
            await self.prometheus.stop()
            self.prometheus = None

    async def _mqtt_reload(self, args: dict) -> dict:
        """Downlink ``reload``: reload the config file and reply with what applied (refused: an error
        reply). The reply waits for the reload, as ``set``'s does, so that it can say whether a new broker
        connected, and that the previous broker was put back when it did not (:meth:`_apply`)."""
        summary = await self.reload_from_file(origin="mqtt")
        return {"reload": "applied", **summary}

    def request_reload(self) -> None:
        """Reload the config file in the background (SIGHUP, MQTT ``reload``); see :meth:`reload`.

        Asked for during the start-up, it waits until the drivers run (a sensor it adds is started
        once); asked for once stopping, it is ignored.
        """
        if self._stop.is_set():
            return

        async def _reload() -> None:
            try:
                await self.reload_from_file()
            except ValueError:
                pass  # logged and reported on the status topic by reload()

        self._spawn(_reload(), "reload")

    async def reload_from_file(self, origin: str = "local") -> dict:
        """Read ``cfg.source`` again and :meth:`reload` it; raise ValueError if it is refused.
        ``origin``: ``"mqtt"`` for the downlink command, else ``"local"`` (see :meth:`_apply`)."""
        from . import config

        await self._wait_started("reload")
        try:
            new_cfg = await asyncio.get_running_loop().run_in_executor(None, config.load, self.cfg.source)
        except config.ConfigError as exc:
            self._reload_refused(str(exc), None)
            raise ValueError(str(exc)) from None
        return await self.reload(new_cfg, origin=origin)

    def _reload_refused(self, reason: str, plan: dict | None) -> None:
        log.error("reload refused, the running config stays: %s", reason)
        self.telemetry.reload_done(False, reason, plan)
        self._publish_status()

    async def reload(self, new_cfg: GatewayConfig, origin: str = "local") -> dict:
        """Apply a validated config: restart only the sensors that changed, keep queue and analytics state.

        Refused (ValueError; the old config keeps running) when the change needs a restart. A new
        broker is waited for (:meth:`_apply`); ``origin`` ``"mqtt"`` (the downlink) puts the previous
        broker back when the new one does not connect.
        """
        from . import reload as reload_planning

        await self._wait_started("reload")
        async with self._reload_lock:
            plan = reload_planning.plan(self.cfg, new_cfg)
            if not plan.ok:
                self._reload_refused(plan.reason(), plan.summary())
                raise ValueError(plan.reason())
            if plan.detector_changed or plan.start:
                try:
                    await self._warm_detector(new_cfg.detector, new_cfg.sensors)  # the old settings run meanwhile
                except Exception as exc:  # noqa: BLE001 - refused like any other reload that cannot apply
                    self._reload_refused(f"detector kernels did not compile: {exc!r}", plan.summary())
                    raise ValueError(str(exc)) from exc
            with self._applying_change():
                summary = await self._apply(plan, new_cfg, origin)
            log_config_warnings(new_cfg)
            return summary

    async def _apply(self, plan, new_cfg: GatewayConfig, origin: str = "local") -> dict:
        """Apply ``plan``. With new broker settings, the new link's CONNACK is waited for (at most
        :data:`BROKER_WAIT_S`, asynchronously: the gateway keeps serving) and the outcome goes into the
        result as ``broker_link``: ``{host, port, connected, waited_s, error, rolled_back}``.

        A broker that does not connect in that time is kept, not rolled back: a broker down for
        maintenance at reload time is not a wrong setting, and the link keeps trying it (the result and
        ``edge-gateway status`` say so; to undo, set the broker back and reload). Except for a reload
        that came over MQTT (``origin="mqtt"``): losing the link would lose the very channel needed to
        undo it, so the previous broker settings are put back (the rest of the reload stays applied;
        the file still names the new broker, so the next reload tries it again) and
        ``rolled_back`` says so in the reply.
        """
        import drivers

        new_sensors = {s.id: s for s in new_cfg.sensors}
        for sid in plan.stop:
            await self.supervisor.stop(sid)
        self.drivers = [d for d in self.drivers if d.sensor_id not in plan.stop]
        for sid in plan.start:
            s = new_sensors[sid]
            d = drivers.get(s.driver)(s.id, s.options, self._sink, clock=self.clock)
            self.drivers.append(d)
            self.supervisor.start(d)
        order = {s.id: i for i, s in enumerate(new_cfg.sensors)}
        self.drivers.sort(key=lambda d: order.get(d.sensor_id, 0))
        if plan.detector_changed:
            self.pipeline.set_detector(new_cfg.detector)
        self.pipeline.set_filters(new_cfg.sensors)
        if self.hold is not None:  # a wait in progress takes the new length; a hold begins only at a start
            self.hold.wait_s = new_cfg.gateway.clock_sync_wait_s
        if new_cfg.log_level != self.cfg.log_level:
            logging.getLogger().setLevel(new_cfg.log_level.upper())
        old_cfg, self.cfg = self.cfg, new_cfg
        summary = plan.summary()
        if plan.broker_changed:
            await self._replace_uplink(old_cfg)
            summary["broker_link"] = await self._await_new_link(old_cfg, origin)
        log.info("config reloaded from %s: %s", new_cfg.source, json.dumps(summary))
        self.telemetry.reload_done(True, "", summary)
        self._publish_status()
        return summary

    async def _replace_uplink(self, old_cfg: GatewayConfig) -> None:
        """New broker settings: a new link and forwarder; the queue resends what was not acknowledged."""
        old_fw, old_link = self.forwarder, self.link
        history: tuple = (None, None)
        if old_link is not None:  # read before the stop, which takes the link down
            history = (old_link.last_outage, None if old_link.connected else old_link.down_since)
        if old_fw is not None:
            await old_fw.stop()
        if old_link is not None:
            await old_link.stop(None)
        self._start_uplink(history)
        if old_fw is not None and self.forwarder is not None:
            self.forwarder.stats = old_fw.stats
        self.forwarder.notify()

    async def _await_new_link(self, old_cfg: GatewayConfig, origin: str) -> dict:
        """Wait (asynchronously) up to :data:`BROKER_WAIT_S` for the new link's CONNACK; the outcome for
        the reload result. Not connected and ``origin == "mqtt"``: the previous broker is put back."""
        b = self.cfg.broker
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        deadline = t0 + BROKER_WAIT_S
        while not (self.link is not None and self.link.connected) and not self._stop.is_set() \
                and loop.time() < deadline:
            await asyncio.sleep(0.05)
        connected = self.link is not None and self.link.connected
        out = {"host": b.host, "port": b.port, "connected": connected,
               "waited_s": round(loop.time() - t0, 1) if connected else BROKER_WAIT_S,
               "error": "" if connected else (getattr(self.link, "last_error", "") or "no CONNACK yet"),
               "rolled_back": False}
        if connected:
            return out
        if origin == "mqtt" and not self._stop.is_set():
            log.error("new broker %s:%d not connected after %g s (%s); the reload came over MQTT: putting "
                      "the previous broker %s:%d back", b.host, b.port, BROKER_WAIT_S, out["error"],
                      old_cfg.broker.host, old_cfg.broker.port)
            new_cfg = self.cfg
            self.cfg = dataclasses.replace(self.cfg, broker=old_cfg.broker)
            await self._replace_uplink(new_cfg)
            out["rolled_back"] = True
        else:
            log.warning("new broker %s:%d not connected after %g s: %s; the gateway keeps trying",
                        b.host, b.port, BROKER_WAIT_S, out["error"])
        return out

    def _log_stats(self) -> None:
        s = self.snapshot()
        log.info("readings=%d aggregates=%d events=%d published=%s queue=%d inflight=%d link=%s",
                 s["counts"]["readings"], s["counts"]["aggregates"], s["counts"]["events"],
                 s["published"], s["queue_depth"], s["inflight"], s["link"])

    async def shutdown(self, started: bool = True) -> None:
        """Stop in order, committing what was read and closing the queue cleanly.

        ``started=False`` undoes a start that did not finish: a tick only if drivers read something
        (then the kernels are warm), no draining of the backlog and no last-run.json.
        """
        self.notify("STOPPING=1")
        await self._cancel_background()
        await self._stop_operations()
        await self.supervisor.stop()
        if self.hold is not None:
            self.hold.stop()  # what it holds goes out with the last round, as stamped
        if started or self.batcher.pending():
            await self.tick()
            await self._save_checkpoint()
        if self.forwarder is not None:
            if started and self.link is not None and self.link.connected:
                await self.forwarder.drain(timeout=5.0)
            await self.forwarder.stop()
        if self.link is not None:
            await self.link.stop(self._status_payload("offline"))
        summary = self.snapshot() if started else None
        await self.queue.close()
        if summary is not None:
            path = self.cfg.state_dir / "last-run.json"
            private_files.write_text(path, json.dumps(summary, indent=1, default=str))
        self.state_lock.release()
        if summary is None:
            log.info("stopped before the gateway was ready")
        else:
            log.info("stopped: %s", json.dumps({k: summary[k] for k in ("counts", "published", "queue_depth")}))

async def run(cfg: GatewayConfig, notify: Callable[[str], None] = lambda s: None) -> int:
    """Run a gateway until SIGTERM or SIGINT (SIGHUP reloads); the exit status.

    1, after one line in the log, when another gateway holds the state directory. A compile still
    running at the end (a stop during the warm-up, or during a ``set``) is not waited for: once
    everything is closed the process ends with ``os._exit``, as an interpreter shutting down around
    a thread inside LLVM could crash on its way out.
    """
    loop = asyncio.get_running_loop()
    gw: Gateway

    def stop() -> None:
        gw.request_stop()

    def reload() -> None:
        gw.request_reload()

    # before Gateway(), which imports Numba: a signal meanwhile waits for the loop, never kills the process
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop)
    loop.add_signal_handler(signal.SIGHUP, reload)
    gw = Gateway(cfg, notify)
    monitor = stall.StallMonitor(loop, stall.STALL_AFTER_S).start()
    progress = stall.ProgressMonitor(loop, lambda: gw.last_round, stall.STALL_AFTER_S, stall.STUCK_AFTER_S).start()
    watchdog = getattr(notify, "watchdog_task", None)  # sdnotify.Notifier: pings from this loop
    pinger = loop.create_task(watchdog(progress.healthy), name="watchdog") if watchdog else None
    try:
        await gw.run()
    except AlreadyRunning as exc:
        log.error("%s", exc)
        return 1
    except NotOurs as exc:
        log.error("%s", exc)
        return 2  # the unit does not restart it (RestartPreventExitStatus=2): a restart cannot fix it
    finally:
        progress.stop()
        monitor.stop()
        if pinger is not None:
            pinger.cancel()
            await asyncio.gather(pinger, return_exceptions=True)
    if gw.compiler.busy:
        log.warning("exiting without waiting for the kernel compile still running")
        logging.shutdown()
        os._exit(0)
    return 0


def log_config_warnings(cfg: GatewayConfig) -> None:
    """Log each of :func:`.config.warnings_of` as a WARNING, ``file:line:col: key: text`` as ``config
    validate`` locates it: a gateway started or reloaded from a file nobody validated says in its
    journal why a sensor is never read or the broker never reached (a URL as broker.host)."""
    from .config_keys import located_warnings

    for where, key, text in located_warnings(cfg, cfg.source):  # the file is read only if there is one
        log.warning("%s: %s: %s", where, key, text)


def _with_parameter(det, name: str, value):
    """``det`` with a downlink ``set`` applied; ValueError, from the config's own checks, if it is refused."""
    if name == "threshold":
        if isinstance(value, list):
            raise ValueError("value: threshold needs a number")
        return dataclasses.replace(det, threshold=float(value))
    return dataclasses.replace(det, params={**det.params, name: value})


def prepare_environment(cfg: GatewayConfig) -> None:
    """Point Numba's cache at the state directory (a folder per code version, see :mod:`.kernel_cache`)
    before any kernel module is imported."""
    private_files.make_dir(cfg.state_dir, private_files.STATE_DIR_MODE)
    if not os.access(cfg.state_dir, os.W_OK | os.X_OK):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(cfg.state_dir))
    if "NUMBA_CACHE_DIR" not in os.environ:
        os.environ["NUMBA_CACHE_DIR"] = str(kernel_cache.cache_dir(private_files.make_dir(cfg.state_dir / CACHE_DIR)))
    memory.limit_arenas()


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t)) if abs(t) < 1e11 else repr(t)
