"""The analytics stage of the daemon: one batch in, the messages it produces out.

Owns every piece of analytics state (open windows, detector tables, the time
each channel last delivered) and turns kernel outputs into
:class:`~edge_gateway.messages.Message` objects. It does no I/O: the daemon
commits what :meth:`Pipeline.process` returns and checkpoints what
:meth:`Pipeline.checkpoint` returns.
"""

from __future__ import annotations

import logging
import time
import zlib
from typing import Callable

import msgpack
import numpy as np

from . import messages
from .analytics.chain import DetectorSettings
from .analytics.engine import REWIND_AFTER, Engine
from .batcher import Batch, Batcher, FutureFilter
from .conditioning import Conditioning
from .config import DetectorSection, GatewayConfig
from .detector_groups import DetectorGroups, warm_detectors

log = logging.getLogger(__name__)

FORGOTTEN = "(forgotten channels)"  # channel_counters' entry for the drops of channels forget_idle forgot
# marks, per channel: the start of the newest aggregate sent, of the newest event sent closed and open
_M_WINDOW, _M_CLOSED, _M_OPENED = range(3)


class Pipeline:
    """Window aggregates for every channel, and anomaly events from the detector ensemble.

    Channels share one :class:`Detector` per distinct settings (one in all unless
    the config's ``detector.sensors`` tunes some sensors apart; see :mod:`.detector_groups`).

    Readings stamped too far ahead of ``wall_clock`` never reach the kernels (see
    :class:`~.batcher.FutureFilter`). That is a clock of its own: reading timestamps
    are epoch seconds, while the ``now`` given to :meth:`process` only measures idle time.
    """

    def __init__(self, cfg: GatewayConfig, topics: messages.Topics, batcher: Batcher,
                 wall_clock: Callable[[], float] = time.time) -> None:
        self.cfg = cfg
        self.topics = topics
        self.batcher = batcher
        self.wall_clock = wall_clock
        self.engine = Engine(cfg.windows.seconds, rewind_margin_s=cfg.windows.seconds + cfg.windows.grace_s,
                             hop_s=cfg.windows.hop_s)
        self.conditioning = Conditioning(cfg.sensors)
        self.future = FutureFilter(cfg.windows.future_tolerance_s)
        self._last_arrival = np.zeros(0)
        self._announced = np.zeros(0)  # per channel: start of the open event already published, NaN: none
        self._orphans: list[dict] = []  # announced events a restore could not keep: closed by the next round
        self._marks = np.full((0, 3), np.nan)  # per channel, what was sent last (the _M_* columns)
        self._marks_dirty = False
        # windows closed by a restore, and the length and hop (None: tumbling) they were opened with
        self._regrid: tuple[np.ndarray, float, float | None] | None = None
        # the restore changed the window geometry: until a checkpoint of the new one is stored, a crash
        # restores the old checkpoint again, whose closed-on-the-old-grid windows the marks do not cover
        self.regridded = False
        self._numbering = 0  # how many times channels were renumbered (forget_idle): marks and checkpoint agree on it
        self._retired_rewinds: dict[str, int] = {}  # engine.rewinds of forgotten channels, per sensor
        self._retired_drops: dict[str, list[int]] = {}  # [late, future] of forgotten channels, per sensor
        self._use_detectors(cfg.detector)

    def _use_detectors(self, section: DetectorSection) -> None:
        """Fresh detectors for ``section`` (state zero), channels grouped by their settings."""
        self._section = section
        self.detectors = DetectorGroups(section)
        self.detectors.assign(self.batcher.keys)

    def settings_of(self, channel: int) -> DetectorSettings:
        """The detector settings channel number ``channel`` is scored with."""
        self.detectors.assign(self.batcher.keys)
        return self.detectors.settings_of(channel)

    def warm(self, progress: Callable[[], None] = lambda: None) -> None:
        """Compile (or load from the Numba cache) every kernel the pipeline calls with this config;
        ``progress()`` after each part (from the thread this runs in).

        Only the compile: no state of this pipeline is touched.
        """
        self.engine.warm()
        progress()
        Conditioning.warm()
        progress()
        warm_detectors(self._section, [s.id for s in self.cfg.sensors], progress)

    def set_filters(self, sensors) -> None:
        """New per-sensor ``filters`` (reload): kernels already warm (:meth:`warm`), nothing compiles."""
        self.conditioning.set_sensors(sensors)

    def set_detector(self, section: DetectorSection) -> None:
        """New detector settings (reload, downlink ``set``); the learned state is kept.

        Call :func:`warm_detectors` for ``section`` off the event loop first: this compiles nothing.
        """
        state = self.detectors.state()
        self._use_detectors(section)
        self.detectors.load_state(state)

    def process(self, batch: Batch, now: float) -> list[messages.Message]:
        """Aggregates of the windows this batch (or the passage of time) closed, and anomaly events:
        each closed one, and each newly open one once (``state`` ``closed`` / ``open``)."""
        cfg = self.cfg
        n_keys = len(self.batcher.keys)
        self._last_arrival = _padded(self._last_arrival, n_keys, now)
        self._announced = _padded(self._announced, n_keys, np.nan)
        self._marks = _padded_rows(self._marks, n_keys)
        self.engine.ensure_channels(n_keys)
        self.detectors.assign(self.batcher.keys)
        if self.conditioning.active:
            self.conditioning.ensure(self.batcher.keys)
        out = [self._anomaly(ev, "closed") for ev in self._orphans]
        self._orphans = []
        if self._regrid is not None:
            rows, old_s, old_hop = self._regrid
            self._regrid = None
            # not through _aggregates: starts on the old grid must not become marks on the new one
            out += messages.aggregates(rows, self.batcher.keys, old_s, self.topics, cfg.gateway.id, hop_s=old_hop)
        batch = self.future.admit(batch, self.wall_clock())
        if len(batch):
            val = self.conditioning.values(batch.chan, batch.val) if self.conditioning.active else batch.val
            out += self._aggregates(self.engine.process(batch.chan, batch.ts, val))
            if self.engine.rewound.size:
                self._rewound(self.engine.rewound)
            touched = np.unique(batch.chan)
            # only a value keeps a window open: a sensor sending nothing but NaN is idle for windows
            self._last_arrival[np.unique(batch.chan[~np.isnan(batch.val)])] = now
            closed, opened = self._detect(batch, touched)
            for ev in closed:
                if self._announced[ev["channel"]] == ev["start"]:
                    self._announced[ev["channel"]] = np.nan
                out.append(self._anomaly(ev, "closed"))
            for ev in opened:
                if self._announced[ev["channel"]] != ev["start"]:
                    self._announced[ev["channel"]] = ev["start"]
                    out.append(self._anomaly(ev, "open"))
        stale = now - self._last_arrival[:n_keys] >= cfg.windows.seconds + cfg.windows.grace_s
        idle = np.nonzero(self.engine.open_mask() & stale)[0]
        if idle.size:
            out += self._aggregates(self.engine.flush_channels(idle))
        if stale.any():  # no reading will ever close an event on a silent channel
            quiet = np.nonzero(stale)[0]
            # silent also by the channel's own rhythm: a sensor read every 30 s is not silent after 12 s
            quiet = quiet[now - self._last_arrival[quiet] >= self._silence_after(quiet)]
            for ev in self._close_events(quiet):
                out.append(self._anomaly(ev, "closed"))
        return out

    def clock_stepped(self) -> None:
        """The gateway's wall clock jumped (NTP's first sync): the jump in the stamps of the readings it
        dates is not a dropout, and after a step back the gaps would be negative until time caught up."""
        self.detectors.resume()

    def resume_sensor(self, sensor: str) -> int:
        """The link to ``sensor`` was down and is back (a ``link_gap``): the gap in its stamps is not a
        dropout of each of its channels. Re-anchors their dropout clocks as :meth:`clock_stepped` does
        for all (see :meth:`.Detector.resume`); returns how many channels. Call it before the first
        reading of the new link is processed."""
        channels = np.array([c for c, k in enumerate(self.batcher.keys) if k.sensor == sensor], dtype=np.int64)
        if channels.size:  # a channel no batch has reached yet has no dropout clock: skipped
            self.detectors.resume(channels)
        return int(channels.size)

    def _rewound(self, channels: np.ndarray) -> None:
        """Channels whose time went back and whose windows start afresh (see :meth:`.Engine.process`)."""
        self._marks[channels] = np.nan  # what was sent ahead must not make the new windows and events late
        self._marks_dirty = True
        self.detectors.resume(channels)
        keys = self.batcher.keys
        log.warning("time went back on %s: readings stamped more than %g s before their windows, %d in a row; "
                    "their windows start afresh at the new time (a clock step: windows may repeat a start "
                    "already sent)", ", ".join(f"{keys[c].sensor}/{keys[c].channel}" for c in channels.tolist()),
                    self.engine.rewind_margin_s, REWIND_AFTER)

    def forget_idle(self, sensors: set[str], now: float, idle_s: float) -> list:
        """Forget the channels of ``sensors`` that delivered nothing for ``idle_s`` (``now``: the steady
        clock of :meth:`process`) and have no window or event open; returns their keys.

        A sensor that names its channels (SenML) can name new ones for ever: a node replaced, a name with
        a serial number in it. At its cap (:data:`.batcher.MAX_CHANNELS_PER_SENSOR`) the daemon calls this
        to make room, and every state table is renumbered without the forgotten rows. Call it right
        after :meth:`process`, with no reading pending in the batcher. The next checkpoint and marks
        carry the new numbering (``numbering``): marks of the old one are never applied to it.
        """
        if self._orphans or self._regrid is not None:
            return []
        keys = self.batcher.keys
        n = len(keys)
        idle = np.zeros(n, dtype=bool)
        m = min(self._last_arrival.shape[0], n)
        idle[:m] = now - self._last_arrival[:m] >= idle_s
        if not idle.any():
            return []
        idle &= np.array([k.sensor in sensors for k in keys], dtype=bool)
        busy = np.zeros(n, dtype=bool)
        for mask in (self.engine.open_mask(), ~np.isnan(self._announced), self.detectors.open_mask(n)):
            k = min(mask.shape[0], n)
            busy[:k] |= mask[:k]
        idle &= ~busy
        if not idle.any():
            return []
        keep = np.flatnonzero(~idle)
        gone = [keys[c] for c in np.flatnonzero(idle).tolist()]
        kept = [keys[c] for c in keep.tolist()]
        late, future = self.engine.late_counts(), self.future.dropped
        for c, k in zip(np.flatnonzero(idle).tolist(), gone):  # counters never go down
            if c < self.engine.rewinds.shape[0] and self.engine.rewinds[c]:
                self._retired_rewinds[k.sensor] = self._retired_rewinds.get(k.sensor, 0) + int(self.engine.rewinds[c])
            d = self._retired_drops.setdefault(k.sensor, [0, 0])
            d[0] += int(late[c]) if c < late.shape[0] else 0
            d[1] += int(future[c]) if c < future.shape[0] else 0
        self.batcher.renumber(kept)
        self.engine.keep_channels(keep)
        self.detectors.keep_channels(keep)
        self.future.keep_channels(keep)
        self.conditioning.keep_channels(keep, kept)
        self._last_arrival = _kept(self._last_arrival, keep)
        self._announced = _kept(self._announced, keep)
        self._marks = _kept(self._marks, keep)
        self._numbering += 1
        self._marks_dirty = True
        return gone

    def rewind_counts(self) -> dict[str, int]:
        """Per sensor, how many times a channel's windows started afresh after its time went back."""
        out = dict(self._retired_rewinds)
        counts = self.engine.rewinds
        for c, k in enumerate(self.batcher.keys[: counts.shape[0]]):
            if counts[c]:
                out[k.sensor] = out.get(k.sensor, 0) + int(counts[c])
        return out

    def _silence_after(self, channels: np.ndarray) -> np.ndarray:
        return self.detectors.silence_after(channels)

    def _close_events(self, channels: np.ndarray) -> list[dict]:
        closed = self.detectors.close_events(channels)
        for ev in closed:
            self._announced[ev["channel"]] = np.nan
        return closed

    def channel_counters(self) -> dict[tuple[str, str], dict[str, int]]:
        """Readings each ``(sensor, channel)`` lost before its windows: ``late`` (older than the window
        open or last closed) and ``future`` (stamped too far ahead of the gateway's clock). Channels
        forgotten (:meth:`forget_idle`) count on under ``(sensor, FORGOTTEN)``."""
        late = self.engine.late_counts()
        future = self.future.dropped
        out: dict[tuple[str, str], dict[str, int]] = {}
        for sensor, (n_late, n_future) in self._retired_drops.items():
            if n_late or n_future:
                out[(sensor, FORGOTTEN)] = {"late": n_late, "future": n_future}
        for i, k in enumerate(self.batcher.keys):  # a channel whose unit changed has a key per unit
            c = out.setdefault((k.sensor, k.channel), {"late": 0, "future": 0})
            c["late"] += int(late[i]) if i < late.shape[0] else 0
            c["future"] += int(future[i]) if i < future.shape[0] else 0
        return out

    def _aggregates(self, rows: np.ndarray) -> list[messages.Message]:
        if rows.shape[0]:
            c = rows[:, 0].astype(np.int64)
            np.fmax.at(self._marks[:, _M_WINDOW], c, rows[:, 1])  # also those the deadband holds back
            self._marks_dirty = True
            if self.conditioning.active:
                rows = rows[self.conditioning.reportable(rows)]
        return messages.aggregates(rows, self.batcher.keys, self.cfg.windows.seconds, self.topics, self.cfg.gateway.id,
                                   hop_s=self.engine.hop_s)

    def _anomaly(self, ev: dict, state: str) -> messages.Message:
        """An ``anomaly`` event message; an ``open`` one has no ``end`` yet."""
        c = ev["channel"]
        col = _M_CLOSED if state == "closed" else _M_OPENED
        self._marks[c, col] = np.fmax(self._marks[c, col], ev["start"])
        self._marks_dirty = True
        key = self.batcher.keys[c]
        fields = dict(channel=key.channel, unit=key.unit, detector=ev["detector"], start=ev["start"])
        if state == "closed":
            fields["end"] = ev["end"]
        return messages.event(self.topics, self.cfg.gateway.id, key.sensor, "anomaly", state=state,
                              peak_value=ev["peak_value"], peak_score=ev["peak_score"], **fields)

    def _detect(self, batch: Batch, touched: np.ndarray) -> tuple[list[dict], list[dict]]:
        """Events closed by this batch, and events open at its end on the channels it touched (``touched``).

        Each channel's readings are scored by its own detector. An event that opened and closed
        within the batch is only in the first list; one still open is announced once (see
        :meth:`process`), so the cloud hears of a stuck sensor while it is stuck, not when it recovers.
        """
        return self.detectors.process(batch.chan, batch.ts, batch.val, touched)

    def checkpoint(self) -> bytes:
        """Channel names and every state table, so a restart resumes windows and detectors."""
        return pack_checkpoint(self.checkpoint_state())

    def checkpoint_state(self) -> dict:
        """What :meth:`checkpoint` saves, as copies: :func:`pack_checkpoint` (the deflate) may then run
        off the event loop while the pipeline goes on."""
        arrays = {f"win.{k}": v for k, v in self.engine.state().items()}
        arrays.update({f"det.{k}": v for k, v in self.detectors.state().items()})
        arrays["announced"] = self._announced.copy()
        arrays.update({f"future.{k}": v for k, v in self.future.state().items()})
        if self.conditioning.active:  # otherwise tables of zeros: two more pages a minute on the SD card
            arrays.update({f"filters.{k}": v for k, v in self.conditioning.state().items()})
        return {"window_s": self.cfg.windows.seconds, "hop_s": self.engine.hop_s, "numbering": self._numbering,
                "retired": {s: list(d) for s, d in self._retired_drops.items()},
                "retired_rewinds": dict(self._retired_rewinds),
                "keys": [[k.sensor, k.channel, k.unit] for k in self.batcher.keys], "arrays": arrays}

    def marks_unsaved(self) -> None:
        """The marks :meth:`take_marks` last gave were not stored: give them again next time."""
        self._marks_dirty = True

    def take_marks(self) -> bytes | None:
        """What was sent per channel, when it changed since the last call: the daemon stores it in the
        transaction that commits the messages (see :meth:`restore`)."""
        if not self._marks_dirty:
            return None
        self._marks_dirty = False
        return pack_marks(self._marks, self.cfg.windows.seconds, self._numbering, self.engine.hop_s)

    def restore(self, blob: bytes | None, marks: bytes | None = None) -> int:
        """Load a checkpoint; returns the number of channels restored (0 when it is unusable).

        The checkpoint is written once a minute, the messages every round: after a crash it can be
        older than what was committed. ``marks`` (:meth:`take_marks`, committed with the messages)
        then says which windows and events the cloud already has, and they are not sent again.
        """
        n = self._restore(blob, marks) if blob else 0
        if marks and n:
            self._apply_marks(marks, n)
        return n

    def _apply_marks(self, blob: bytes, n: int) -> None:
        """Only the first ``n`` channels: others were numbered after the checkpoint and may be numbered
        differently in this run. Window marks of another geometry than this run's are not applied here
        (those of the checkpoint's were, to its windows, by :meth:`_restore_windows`)."""
        got = _unpack_marks(blob)
        if got is None:
            return
        marks, window_s, numbering, hop_s = got
        if numbering != self._numbering:
            # channels were renumbered after these marks (forget_idle) and the crash came before the
            # marks of the new numbering were committed: applied, they would name other channels
            log.warning("marks of another channel numbering (%d, the checkpoint's is %d) not applied: "
                        "windows and events sent since the checkpoint may be sent again", numbering, self._numbering)
            return
        marks = marks[:n]
        if (window_s, hop_s) != (self.cfg.windows.seconds, self.engine.hop_s):
            # starts on another grid: they would drop the new windows' readings
            marks[:, _M_WINDOW] = np.nan
        windows = self.engine.close_through(marks[:, _M_WINDOW])
        sent_closed = marks[:, _M_CLOSED]
        events = self.detectors.forget_events(sent_closed)
        k = marks.shape[0]
        ann = self._announced[:k]
        ann[ann <= sent_closed] = np.nan  # NaN compares false: kept
        open_now = {e["channel"]: e["start"] for e in self.detectors.open_events(np.arange(min(k, n)))}
        for c in np.nonzero(~(marks[:, _M_OPENED] <= sent_closed) & ~np.isnan(marks[:, _M_OPENED]))[0].tolist():
            start = marks[c, _M_OPENED]
            if open_now.get(c) == start:
                ann[c] = start
            elif not any(o["channel"] == c and o["start"] == start for o in self._orphans):
                self._orphans.append(_orphan(c, start))  # announced after the checkpoint: nothing would close it
        self._marks = _padded_rows(marks, self._marks.shape[0])
        if windows or events or self._orphans:
            log.info("the checkpoint was older than what was sent: %d window(s) and %d event(s) already sent "
                     "dropped, %d event(s) announced since closed", windows, events, len(self._orphans))

    def _restore_windows(self, state: dict[str, np.ndarray], old_s: float, old_hop: float | None,
                         marks: bytes | None = None) -> None:
        """Load the window tables of a checkpoint whose windows were ``old_s`` long, every ``old_hop`` (None:
        tumbling). When ``windows.seconds`` or ``windows.hop_s`` changed since, the windows open at the restart
        that are windows of the new grid too go on in the new tables (:meth:`.Engine.adopt`: one aggregate
        each, with all its readings), the others are closed and sent on their old grid (:attr:`_regrid`).
        ``marks`` (:meth:`take_marks`) of this checkpoint's numbering and grid say which of its windows were
        sent after it, before a crash: those are dropped first, as on an unchanged grid. Tables that do not
        load (another layout) are dropped with a warning."""
        eng = self.engine
        old_hop = None if old_hop is None or float(old_hop) == old_s else float(old_hop)
        same = (old_s, old_hop) == (eng.window_s, eng.hop_s)
        old = eng if same else Engine(old_s, hop_s=old_hop)
        try:
            old.load_state(state)
        except ValueError as exc:
            log.warning("window state not restored (%s): the windows open at the restart are lost", exc)
            return
        if same:
            return
        sent = 0
        got = _unpack_marks(marks) if marks else None
        if got is not None and got[2] == self._numbering and (got[1], got[3]) == (old_s, old_hop):
            sent = old.close_through(got[0][:, _M_WINDOW])  # sent after the checkpoint, on its grid
        rows, adopted = eng.adopt(old)
        self._regrid = (rows, old_s, old_hop)
        self.regridded = True
        log.info("windows changed from %s to %s: of the windows open at the restart, %d go on on the new grid, "
                 "%d closed on the old grid, %d already sent dropped", _geometry(old_s, old_hop),
                 _geometry(eng.window_s, eng.hop_s), adopted, rows.shape[0], sent)

    def _restore(self, blob: bytes, marks: bytes | None = None) -> int:
        data = msgpack.unpackb(blob)
        if not isinstance(data, dict) or data.get("version") not in (2, 3):
            return 0
        inflate = zlib.decompress if data["version"] == 3 else bytes
        self._numbering = int(data.get("numbering", 0))
        self._retired_drops = {str(s): [int(d[0]), int(d[1])] for s, d in data.get("retired", {}).items()}
        self._retired_rewinds = {str(s): int(n) for s, n in data.get("retired_rewinds", {}).items()}
        for sensor, channel, unit in data["keys"]:
            self.batcher.index_of(sensor, channel, unit)
        arrays = {name: np.frombuffer(inflate(raw), dtype=np.float64).reshape(shape).copy()
                  for name, (shape, raw) in data["arrays"].items()}
        self._restore_windows({k[4:]: v for k, v in arrays.items() if k.startswith("win.")},
                              float(data.get("window_s", self.cfg.windows.seconds)), data.get("hop_s"), marks)
        self.detectors.assign(self.batcher.keys)
        n = len(self.batcher.keys)
        announced = _padded(arrays.get("announced", np.zeros(0))[:n], n, np.nan)  # absent in older ones
        try:
            self.detectors.load_state({k[4:]: v for k, v in arrays.items() if k.startswith("det.")})
        except (ValueError, KeyError) as exc:
            # e.g. an upgrade changed a table's layout: the detectors relearn, and the events the cloud was
            # told are open are closed now, since no state is left that could ever close them
            opened = np.nonzero(~np.isnan(announced))[0]
            log.warning("detector state not restored (%s): detectors start learning again; %d announced "
                        "event(s) closed", exc, opened.size)
            self._orphans = [_orphan(int(c), float(announced[c])) for c in opened]
            announced = np.full(n, np.nan)
        self.detectors.resume()
        self._announced = announced
        self.future.load_state({k[7:]: v[:n] for k, v in arrays.items() if k.startswith("future.")})
        self.conditioning.ensure(self.batcher.keys)
        self.conditioning.load_state({k[8:]: v for k, v in arrays.items() if k.startswith("filters.")})
        return len(data["keys"])


def pack_checkpoint(state: dict) -> bytes:
    """:meth:`Pipeline.checkpoint_state`, every table deflated: most of a detector row is zeros (phase bins
    a channel never used), and the blob is rewritten on the SD card every minute: 3.4 KB a channel raw,
    about a tenth deflated (review 16, bounds #1: 98 MB/h of writes at 200 channels)."""
    hop = {"hop_s": state["hop_s"]} if state.get("hop_s") is not None else {}  # tumbling: as before hop_s existed
    return msgpack.packb({
        "version": 3,
        "window_s": state["window_s"],
        **hop,
        "numbering": state.get("numbering", 0),
        "retired": state.get("retired", {}),
        **({"retired_rewinds": state["retired_rewinds"]} if state.get("retired_rewinds") else {}),
        "keys": state["keys"],
        "arrays": {name: [list(a.shape), zlib.compress(a.tobytes(), 1)] for name, a in state["arrays"].items()},
    })


def pack_marks(marks: np.ndarray, window_s: float, numbering: int = 0, hop_s: float | None = None) -> bytes:
    """The marks table, deflated: channels on one window grid share their marks, so 200 channels take
    a few hundred bytes instead of 4,800, and what an append rewrites stays within a page or two.
    ``window_s`` and ``hop_s`` (None: tumbling): the windows the window marks are starts of;
    ``numbering``: which channel numbering the rows follow (see :meth:`Pipeline.forget_idle`)."""
    hop = {"hop_s": float(hop_s)} if hop_s is not None else {}
    return msgpack.packb({"version": 1, "shape": list(marks.shape), "window_s": float(window_s), **hop,
                          "numbering": int(numbering), "deflated": zlib.compress(marks.tobytes(), 6)})


def unpack_marks(blob: bytes) -> tuple[np.ndarray, float, int] | None:
    """Inverse of :func:`pack_marks`: ``(marks, window_s, numbering)``; None for a blob of another version."""
    got = _unpack_marks(blob)
    return None if got is None else got[:3]


def _unpack_marks(blob: bytes) -> tuple[np.ndarray, float, int, float | None] | None:
    """:func:`unpack_marks` and the ``hop_s`` of the marks (None: tumbling windows, or marks from before hop_s)."""
    data = msgpack.unpackb(blob)
    if not isinstance(data, dict) or data.get("version") != 1:
        return None
    marks = np.frombuffer(zlib.decompress(data["deflated"]), dtype=np.float64).reshape(data["shape"]).copy()
    hop = data.get("hop_s")
    return marks, float(data["window_s"]), int(data.get("numbering", 0)), None if hop is None else float(hop)


def _geometry(window_s: float, hop_s: float | None) -> str:
    """``10 s windows`` or ``10 s windows every 2 s``, for log lines."""
    return f"{window_s:g} s windows" + ("" if hop_s is None else f" every {hop_s:g} s")


def _kept(a: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """The entries ``keep`` of a per-channel array sized by the channels seen (padded as they come)."""
    return a[keep[keep < a.shape[0]]]


def _orphan(channel: int, start: float) -> dict:
    """An announced event no state is left to close: closed with its start as its end, peak unknown."""
    return {"channel": channel, "start": start, "end": start, "peak_score": float("nan"),
            "peak_value": float("nan"), "detector": "none"}


def _padded_rows(marks: np.ndarray, n: int) -> np.ndarray:
    if marks.shape[0] >= n:
        return marks
    return np.vstack([marks, np.full((n - marks.shape[0], marks.shape[1]), np.nan)])


def _padded(a: np.ndarray, n: int, fill: float) -> np.ndarray:
    """``a`` extended to ``n`` entries with ``fill`` (itself when already that long)."""
    if a.shape[0] >= n:
        return a
    return np.concatenate([a, np.full(n - a.shape[0], fill)])
