"""The analytics stage of the daemon: one batch in, the messages it produces out.

Owns every piece of analytics state (open windows, detector tables, the time
each channel last delivered) and turns kernel outputs into
:class:`~edge_gateway.messages.Message` objects. It does no I/O: the daemon
commits what :meth:`Pipeline.process` returns and checkpoints what
:meth:`Pipeline.checkpoint` returns.
"""

from __future__ import annotations

import dataclasses

import msgpack
import numpy as np

from . import messages
from .analytics.chain import Detector, DetectorSettings
from .analytics.engine import Engine
from .batcher import Batch, Batcher
from .config import DetectorSection, GatewayConfig


def detector_settings(section: DetectorSection) -> DetectorSettings:
    """The ensemble's settings: the tuned defaults, then the config's threshold and overrides."""
    base = DetectorSettings()
    if section.params:
        base = base.with_overrides(section.overrides())
    if section.threshold is not None:
        base = dataclasses.replace(base, event_threshold=section.threshold)
    return base


class Pipeline:
    """Window aggregates for every channel, and anomaly events from the detector ensemble."""

    def __init__(self, cfg: GatewayConfig, topics: messages.Topics, batcher: Batcher) -> None:
        self.cfg = cfg
        self.topics = topics
        self.batcher = batcher
        self.engine = Engine(cfg.windows.seconds)
        self.detector = Detector(detector_settings(cfg.detector))
        self._last_arrival = np.zeros(0)

    def warm(self) -> None:
        """Compile (or load from the Numba cache) every kernel the pipeline calls."""
        self.engine.warm()
        self.detector.warm()

    def set_detector(self, section: DetectorSection) -> None:
        """New detector settings (reload, downlink ``set``); the learned state is kept."""
        state = self.detector.state()
        self.detector = Detector(detector_settings(section))
        self.detector.load_state(state)

    def process(self, batch: Batch, now: float) -> list[messages.Message]:
        """Aggregates of the windows this batch (or the passage of time) closed, and closed events."""
        cfg = self.cfg
        gw = cfg.gateway.id
        keys = self.batcher.keys
        n_keys = len(keys)
        if n_keys > self._last_arrival.shape[0]:
            grown = np.full(n_keys, now)
            grown[: self._last_arrival.shape[0]] = self._last_arrival
            self._last_arrival = grown
        self.engine.ensure_channels(n_keys)
        self.detector.ensure_channels(n_keys)
        out: list[messages.Message] = []
        if len(batch):
            rows = self.engine.process(batch.chan, batch.ts, batch.val)
            out += messages.aggregates(rows, keys, cfg.windows.seconds, self.topics, gw)
            self._last_arrival[np.unique(batch.chan)] = now
            _, events = self.detector.process(batch.chan, batch.ts, batch.val)
            for ev in events:
                key = keys[ev["channel"]]
                out.append(messages.event(self.topics, gw, key.sensor, "anomaly", channel=key.channel,
                                          unit=key.unit, detector=ev["detector"], start=ev["start"],
                                          end=ev["end"], peak_value=ev["peak_value"],
                                          peak_score=ev["peak_score"]))
        idle = np.nonzero(self.engine.open_mask()
                          & (now - self._last_arrival[:n_keys] >= cfg.windows.seconds + cfg.windows.grace_s))[0]
        if idle.size:
            out += messages.aggregates(self.engine.flush_channels(idle), keys, cfg.windows.seconds, self.topics, gw)
        return out

    def checkpoint(self) -> bytes:
        """Channel names and every state table, so a restart resumes windows and detectors."""
        arrays = {f"win.{k}": v for k, v in self.engine.state().items()}
        arrays.update({f"det.{k}": v for k, v in self.detector.state().items()})
        return msgpack.packb({
            "version": 2,
            "keys": [[k.sensor, k.channel, k.unit] for k in self.batcher.keys],
            "arrays": {name: [list(a.shape), a.tobytes()] for name, a in arrays.items()},
        })

    def restore(self, blob: bytes) -> int:
        """Load a checkpoint; returns the number of channels restored (0 when it is unusable)."""
        data = msgpack.unpackb(blob)
        if not isinstance(data, dict) or data.get("version") != 2:
            return 0
        for sensor, channel, unit in data["keys"]:
            self.batcher.index_of(sensor, channel, unit)
        arrays = {name: np.frombuffer(raw, dtype=np.float64).reshape(shape).copy()
                  for name, (shape, raw) in data["arrays"].items()}
        self.engine.load_state({k[4:]: v for k, v in arrays.items() if k.startswith("win.")})
        try:
            self.detector.load_state({k[4:]: v for k, v in arrays.items() if k.startswith("det.")})
        except (ValueError, KeyError):
            pass
        return len(data["keys"])
