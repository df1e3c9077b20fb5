"""The daemon: the one place that wires drivers, batcher, analytics, queue and uplink together.

Start order follows Telegraf's agent: sinks first (queue, uplink, forwarder),
then the analytics (kernels warmed), then the drivers; stop in reverse, so
nothing a driver produced is dropped at shutdown.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import time
from typing import Callable

import msgpack
import numpy as np

from .config import GatewayConfig

log = logging.getLogger(__name__)

CHECKPOINT_EVERY_S = 10.0
STATS_EVERY_S = 5.0


class Gateway:
    """One running gateway; :meth:`run` returns when asked to stop."""

    def __init__(self, cfg: GatewayConfig, notify: Callable[[str], None] = lambda s: None,
                 clock: Callable[[], float] = time.time) -> None:
        import drivers

        from . import messages
        from .analytics.engine import Engine, EngineSettings
        from .batcher import Batcher
        from .queue import DurableQueue
        from .supervisor import Supervisor

        self.cfg = cfg
        self.notify = notify
        self.clock = clock
        self.started = clock()
        self.topics = messages.Topics(cfg.gateway.topic_prefix, cfg.gateway.id)
        self.batcher = Batcher()
        det = cfg.detector
        self.engine = Engine(EngineSettings(cfg.windows.seconds, det.ewma_alpha, det.threshold, det.warmup))
        self.queue = DurableQueue(cfg.queue_path, messages.encode, clock)
        self.supervisor = Supervisor(self._on_gap, clock=clock)
        self.drivers = [
            drivers.get(s.driver)(s.id, s.options, self.batcher.add, clock=clock) for s in cfg.sensors
        ]
        self._pending: list = []
        self._last_arrival = np.zeros(0)
        self._stop = asyncio.Event()
        self.link = None
        self.forwarder = None
        self.counts = {"readings": 0, "aggregates": 0, "events": 0}

    # --- wiring -----------------------------------------------------------------------------

    def _on_gap(self, gap) -> None:
        from . import messages

        self._pending.append(messages.event(self.topics, self.cfg.gateway.id, gap.sensor, "link_gap",
                                            start=gap.start, end=gap.end, reason=gap.reason))

    def _status_payload(self, state: str) -> bytes:
        return msgpack.packb({"gw": self.cfg.gateway.id, "seq": self.queue.last_seq, "state": state,
                              "ts": self.clock()})

    async def start(self) -> None:
        from .forwarder import Forwarder
        from .uplink import MqttLink

        await self.queue.open()
        await self._restore_checkpoint()
        self.forwarder = Forwarder(self.queue, None, window=max(1, self.cfg.broker.max_inflight))  # type: ignore[arg-type]
        self.link = MqttLink(self.cfg.broker, f"edge-gateway-{self.cfg.gateway.id}", self.topics.status,
                             birth=lambda: self._status_payload("online"),
                             will=msgpack.packb({"gw": self.cfg.gateway.id, "seq": -1, "state": "offline"}),
                             on_ack=self.forwarder.on_ack, on_state=lambda up: self.forwarder.notify())
        self.forwarder.link = self.link
        self.forwarder.start()
        self.link.start()
        self.notify("STATUS=warming analytics kernels")
        t0 = time.perf_counter()
        await asyncio.get_running_loop().run_in_executor(None, self.engine.warm)
        log.info("kernels ready in %.2f s", time.perf_counter() - t0)
        for d in self.drivers:
            self.supervisor.start(d)
        self.forwarder.notify()
        log.info("gateway %s running: %d sensors, queue %s (%d queued)", self.cfg.gateway.id,
                 len(self.drivers), self.cfg.queue_path, self.queue.depth)
        self.notify("READY=1")

    async def run(self) -> None:
        await self.start()
        loop = asyncio.get_running_loop()
        next_ckpt = loop.time() + CHECKPOINT_EVERY_S
        next_stats = loop.time() + STATS_EVERY_S
        try:
            while not self._stop.is_set():
                try:
                    await asyncio.wait_for(self._stop.wait(), self.cfg.gateway.batch_interval_s)
                except asyncio.TimeoutError:
                    pass
                await self.tick()
                now = loop.time()
                if now >= next_ckpt:
                    await self._save_checkpoint()
                    next_ckpt = now + CHECKPOINT_EVERY_S
                if now >= next_stats:
                    self._log_stats()
                    next_stats = now + STATS_EVERY_S
        finally:
            await self.shutdown()

    def request_stop(self) -> None:
        self._stop.set()

    # --- the pipeline ------------------------------------------------------------------------

    async def tick(self) -> None:
        """Batch -> kernels -> messages -> one committed transaction."""
        from . import messages

        cfg = self.cfg
        gw = cfg.gateway.id
        out: list = []
        batch = self.batcher.drain()
        n_keys = len(self.batcher.keys)
        if n_keys > self._last_arrival.shape[0]:
            grown = np.full(n_keys, self.clock())
            grown[: self._last_arrival.shape[0]] = self._last_arrival
            self._last_arrival = grown
        self.engine.ensure_channels(n_keys)
        now = self.clock()
        if len(batch):
            self.counts["readings"] += len(batch)
            rows, score = self.engine.process(batch.chan, batch.ts, batch.val)
            out += messages.aggregates(rows, self.batcher.keys, cfg.windows.seconds, self.topics, gw)
            self._last_arrival[np.unique(batch.chan)] = now
            for i in np.nonzero(score > cfg.detector.threshold)[0]:
                key = self.batcher.keys[int(batch.chan[i])]
                out.append(messages.event(self.topics, gw, key.sensor, "anomaly", channel=key.channel,
                                          unit=key.unit, detector="ewma_z", start=float(batch.ts[i]),
                                          end=float(batch.ts[i]), peak_value=float(batch.val[i]),
                                          peak_score=float(min(score[i], 1e9))))
        idle = np.nonzero(self.engine.open_mask()
                          & (now - self._last_arrival[:n_keys] >= cfg.windows.seconds + cfg.windows.grace_s))[0]
        if idle.size:
            out += messages.aggregates(self.engine.flush_channels(idle), self.batcher.keys,
                                       cfg.windows.seconds, self.topics, gw)
        out += self._pending
        self._pending = []
        if out:
            await self.queue.append(out)
            for m in out:
                self.counts["aggregates" if m.kind == messages.KIND_AGG else "events"] += 1
            if self.forwarder is not None:
                self.forwarder.notify()

    # --- state -------------------------------------------------------------------------------

    async def _save_checkpoint(self) -> None:
        st = self.engine.state()
        blob = msgpack.packb({
            "keys": [[k.sensor, k.channel, k.unit] for k in self.batcher.keys],
            "arrays": {name: [a.shape, a.tobytes()] for name, a in st.items()},
        })
        await self.queue.save_checkpoint("analytics", blob)

    async def _restore_checkpoint(self) -> None:
        blob = await self.queue.load_checkpoint("analytics")
        if not blob:
            return
        data = msgpack.unpackb(blob)
        for sensor, channel, unit in data["keys"]:
            self.batcher.index_of(sensor, channel, unit)
        arrays = {name: np.frombuffer(raw, dtype=np.float64).reshape(shape).copy()
                  for name, (shape, raw) in data["arrays"].items()}
        self.engine.load_state(arrays)
        log.info("restored analytics state of %d channels", len(data["keys"]))

    def snapshot(self) -> dict:
        fw = self.forwarder
        return {
            "gateway": self.cfg.gateway.id,
            "uptime_s": round(self.clock() - self.started, 1),
            "counts": dict(self.counts),
            "published": dict(fw.stats.acked_by_kind) if fw else {},
            "queue_depth": self.queue.depth,
            "inflight": fw.inflight if fw else 0,
            "link": "up" if self.link is not None and self.link.connected else "down",
            "last_seq": self.queue.last_seq,
            "sensors": {d.sensor_id: vars(d.stats).copy() for d in self.drivers},
        }

    def _log_stats(self) -> None:
        s = self.snapshot()
        log.info("readings=%d aggregates=%d events=%d published=%s queue=%d inflight=%d link=%s",
                 s["counts"]["readings"], s["counts"]["aggregates"], s["counts"]["events"],
                 s["published"], s["queue_depth"], s["inflight"], s["link"])

    async def shutdown(self) -> None:
        self.notify("STOPPING=1")
        await self.supervisor.stop()
        await self.tick()
        await self._save_checkpoint()
        if self.forwarder is not None:
            if self.link is not None and self.link.connected:
                await self.forwarder.drain(timeout=5.0)
            await self.forwarder.stop()
        if self.link is not None:
            await self.link.stop(self._status_payload("offline"))
        summary = self.snapshot()
        await self.queue.close()
        path = self.cfg.state_dir / "last-run.json"
        path.write_text(json.dumps(summary, indent=1, default=str))
        log.info("stopped: %s", json.dumps({k: summary[k] for k in ("counts", "published", "queue_depth")}))


async def run(cfg: GatewayConfig, notify: Callable[[str], None] = lambda s: None) -> int:
    gw = Gateway(cfg, notify)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, gw.request_stop)
    await gw.run()
    return 0


def prepare_environment(cfg: GatewayConfig) -> None:
    """Point Numba's cache at the state directory before any kernel module is imported."""
    cfg.state_dir.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("NUMBA_CACHE_DIR", str(cfg.state_dir / "numba-cache"))
