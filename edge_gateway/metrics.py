"""The figures a technician and a scraper see: rates, last values, recent events, reload outcome.

:class:`Telemetry` is fed by the daemon (every batch, every event) and turns
that into the ``status`` document served on the control socket, the retained
status message on MQTT, and, when ``metrics.prometheus_port`` is set, a
Prometheus text endpoint on 127.0.0.1. All three show the same figures: the
exporter reads the last document the event loop assembled (refreshed every
second), on the event loop itself (:class:`PrometheusEndpoint`: no thread, a
bounded number of connections, a read timeout).

The recent events are kept across restarts in a queue checkpoint (:func:`pack_events`).

Not here: the socket protocol (:mod:`edge_gateway.control`) or when a status
message is sent (:mod:`edge_gateway.daemon`).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import gzip
import logging
import socket
import time
from typing import Any, Callable

import msgpack
import numpy as np

from .acceptor import AcceptorCounters, CappedAcceptor

log = logging.getLogger(__name__)

RECENT_EVENTS = 10
EVENTS_CHECKPOINT = "events"  # the queue checkpoint that keeps the recent events across restarts
EVENTS_FORMAT = 1  # version of that blob (see pack_events)

# A connected sensor silent this long is flagged in ``status`` (``no_data_s`` >= ``no_data_after_s``):
# NO_DATA_INTERVALS of the pace its options promise, at least NO_DATA_MIN_S (a missed poll or two is
# not worth a warning); NO_DATA_FIXED_S for a device that sets its own pace (text lines, CoAP Observe).
NO_DATA_INTERVALS = 10
NO_DATA_MIN_S = 30.0
NO_DATA_FIXED_S = 60.0


def expected_interval(driver) -> float | None:
    """Seconds between readings that a driver's options promise (the shortest Modbus block interval,
    the CoAP poll interval, the PMS5003 frame interval); None when the device decides (text lines,
    CoAP Observe)."""
    opts = getattr(driver, "options", None)
    if getattr(opts, "mode", None) == "observe":
        return None
    blocks = getattr(opts, "blocks", None)
    if blocks:
        return min(float(b.interval_s) for b in blocks)
    for name in ("interval_s", "frame_interval_s"):
        v = getattr(opts, name, None)
        if isinstance(v, (int, float)) and v > 0:
            return float(v)
    return None


def no_data_after(interval: float | None) -> float:
    """How long a connected sensor may stay silent before ``status`` warns (see NO_DATA_INTERVALS)."""
    return NO_DATA_FIXED_S if interval is None else max(NO_DATA_MIN_S, NO_DATA_INTERVALS * interval)


_NOT_SHOWN = ("last_error_link",)  # DriverStats bookkeeping that status shows as last_error_before_reconnect


def _health(d, now: float) -> dict:
    """When the last error happened and whether the sensor connected since; how long a connected
    sensor has been silent, against the threshold its pace allows (``status`` warns past it).

    All read from what the driver and the supervisor recorded as it happened
    (:meth:`drivers.base.DriverStats.note_error`), so the times are exact, not estimated here.
    """
    st = d.stats
    error_ts = (st.last_error_ts or None) if st.last_error else None
    interval = expected_interval(d)
    quiet_from = max(st.last_connect_ts, st.last_reading_ts)
    return {
        "last_error_ts": error_ts,
        "last_error_age_s": None if error_ts is None else round(max(0.0, now - error_ts), 1),
        "last_error_before_reconnect": bool(st.last_error) and st.error_before_reconnect,
        "link_up": st.link_up,
        "expected_interval_s": interval,
        "no_data_s": round(max(0.0, now - quiet_from), 1) if st.link_up and quiet_from else None,
        "no_data_after_s": no_data_after(interval),
    }


RATE_WINDOW_S = 30.0  # status rates span about this long: steady, yet a change shows within a minute
RATE_SAMPLES = 128  # samples kept at most (the daemon takes one a second: the window, with room to spare)


class RateMeter:
    """Per-key rate over the last ``window_s`` (30 s): from the oldest sample taken within the window
    to now, ``(count now - count then) / (now - then)``.

    A one-second sample step made the rate cover 1 to 2 s, and readings that arrive in bursts (a
    Modbus block, a batch of lines) made it jump by half its value from one ``status`` to the next.
    Samples are timestamped and kept in a bounded deque (``maxlen``: samples taken faster than
    ``window_s / maxlen`` apart shorten the window). Counting up to the live count, not to the last
    sample, shows readings as soon as they flow; a sensor that started after the oldest sample is
    counted from the oldest sample that has it, one not sampled yet from ``since``; a count that went
    down (a driver replaced by a reload) starts the count again from the first sample after it.
    """

    def __init__(self, window_s: float = RATE_WINDOW_S, maxlen: int = RATE_SAMPLES) -> None:
        self.window_s = window_s
        self._samples: collections.deque[tuple[float, dict[str, int]]] = collections.deque(maxlen=maxlen)

    def sample(self, now: float, counts: dict[str, int]) -> None:
        self._samples.append((now, dict(counts)))
        while self._samples and self._samples[0][0] < now - self.window_s:
            self._samples.popleft()

    def rate(self, key: str, now: float, count: int, since: float) -> float:
        """Readings per second since the oldest sample within the window that has ``key`` (with no
        drop of the count after it), or since ``since`` when no sample has it."""
        ref = None
        newer = count
        for t, counts in reversed(self._samples):
            c = counts.get(key)
            if c is None or c > newer or t < now - self.window_s:
                break
            if now > t:
                ref, newer = (t, c), c
        if ref is not None:
            return (count - ref[1]) / (now - ref[0])
        return count / (now - since) if now > since else 0.0


class Telemetry:
    """Observes the pipeline; assembles the status document.

    ``channel_counters`` (e.g. :meth:`.pipeline.Pipeline.channel_counters`) gives each
    ``(sensor, channel)``'s ``late`` and ``future`` drops; when set, every sensor's entry
    has their totals and a ``channel_drops`` breakdown of the channels that lost any.
    """

    def __init__(self, clock: Callable[[], float] = time.time,
                 channel_counters: Callable[[], dict[tuple[str, str], dict[str, int]]] | None = None,
                 sensor_counters: Callable[[], dict[str, dict[str, int]]] | None = None) -> None:
        self.clock = clock
        self.channel_counters = channel_counters
        self.sensor_counters = sensor_counters
        self.rates = RateMeter()
        self.last_values: dict[tuple[str, str], tuple[float, float, str]] = {}
        self.events: collections.deque = collections.deque(maxlen=RECENT_EVENTS)
        self.reload: dict[str, Any] = {"count": 0, "ok": 0, "failed": 0, "last_ts": None,
                                       "last_ok": None, "last_error": "", "last_plan": None}
        self.cached: dict = {}

    # --- fed by the daemon --------------------------------------------------------------------

    def observe_batch(self, chan: np.ndarray, ts: np.ndarray, val: np.ndarray, keys: list) -> None:
        """Remember the newest value of every channel in a batch (one vectorised pass)."""
        if not len(chan):
            return
        rev = chan[::-1]
        uniq, first = np.unique(rev, return_index=True)
        last = len(chan) - 1 - first
        for c, i in zip(uniq.tolist(), last.tolist()):
            k = keys[c]
            self.last_values[(k.sensor, k.channel)] = (float(val[i]), float(ts[i]), k.unit)

    def observe_event(self, fields: dict) -> None:
        self.events.append({k: v for k, v in fields.items() if k != "gw"})

    def events_blob(self) -> bytes:
        """The recent events for the queue's :data:`EVENTS_CHECKPOINT` (:func:`pack_events`)."""
        return pack_events(list(self.events))

    def restore_events(self, blob: bytes, restarted_at: float) -> int:
        """Put back the recent events of the runs before this one (:func:`unpack_events`; ValueError,
        nothing changed, for a blob that is not one), oldest first, before any this run saw, within
        :data:`RECENT_EVENTS`. Each gets ``before_restart``: the wall time of the restart that ended
        its run (``restarted_at``, this run's start, unless an earlier restart already set it), which
        ``status`` shows as a line between the runs. Returns how many were put back."""
        old = unpack_events(blob)
        for e in old:
            e.setdefault("before_restart", restarted_at)
        self.events = collections.deque(old + list(self.events), maxlen=RECENT_EVENTS)
        return min(len(old), RECENT_EVENTS)

    def reload_done(self, ok: bool, error: str = "", plan: dict | None = None) -> None:
        r = self.reload
        r["count"] += 1
        r["ok" if ok else "failed"] += 1
        r["last_ts"] = self.clock()
        r["last_ok"] = ok
        r["last_error"] = "" if ok else error
        r["last_plan"] = plan

    # --- read by status, MQTT and Prometheus --------------------------------------------------

    def sensors(self, drivers: list, started: float) -> dict:
        now = self.clock()
        by_sensor: dict[str, dict[str, dict[str, int]]] | None = None
        if self.channel_counters is not None:
            by_sensor = {}
            for (sid, ch), c in self.channel_counters().items():
                by_sensor.setdefault(sid, {})[ch] = c
        extra = self.sensor_counters() if self.sensor_counters is not None else {}
        out = {}
        for d in drivers:
            st = d.stats
            values = {ch: {"value": v, "ts": ts, "unit": unit}
                      for (sid, ch), (v, ts, unit) in self.last_values.items() if sid == d.sensor_id}
            out[d.sensor_id] = {
                **{k: v for k, v in vars(st).items() if k not in _NOT_SHOWN},
                "driver": getattr(d, "name", type(d).__name__),
                "rate_per_s": round(self.rates.rate(d.sensor_id, now, st.readings, started), 3),
                "readings": st.readings, "malformed": st.malformed, "link_errors": st.link_errors, "bad_time": 0,
                "connects": st.connects, "last_error": st.last_error,
                "last_reading_age_s": round(now - st.last_reading_ts, 1) if st.last_reading_ts else None,
                "last_values": values,
                **_health(d, now),
            }
            out[d.sensor_id].update(extra.get(d.sensor_id, {}))
            parts = d.part_stats() if hasattr(d, "part_stats") else {}
            if parts:
                out[d.sensor_id]["parts"] = parts
            if by_sensor is not None:
                mine = by_sensor.get(d.sensor_id, {})
                out[d.sensor_id].update(
                    late=sum(c["late"] for c in mine.values()), future=sum(c["future"] for c in mine.values()),
                    channel_drops={ch: dict(c) for ch, c in mine.items() if c["late"] or c["future"]})
        return out

    def sample_rates(self, drivers: list) -> None:
        self.rates.sample(self.clock(), {d.sensor_id: d.stats.readings for d in drivers})


# --- the recent events across restarts ----------------------------------------------------------

_NUMBERS = ("start", "end", "ts", "before_restart", "peak_value", "peak_score")
_TEXTS = ("type", "sensor", "channel", "state", "reason", "detector")


def pack_events(events: list[dict]) -> bytes:
    """The recent events as a checkpoint blob: msgpack ``{"format": 1, "events": [...]}``, oldest first,
    the fields as sent (without ``gw``), plus ``before_restart`` on those restored from an earlier run.

    The daemon stores it with the analytics checkpoint, in the same rhythm (``CHECKPOINT_EVERY_S``, 60 s,
    riding the next write transaction; and at a clean stop), not once per event; the same events give
    the same bytes, which the queue does not write again. A power cut (or a crash) loses from the
    ``status`` view the events seen since the last checkpoint that committed: about the last minute's,
    as for the analytics state (docs/uplink.md, "Flash writes"), and with ``queue.synchronous: normal``
    maybe the last commits too. The events themselves are queued messages, committed in their round,
    and reach the cloud regardless."""
    return msgpack.packb({"format": EVENTS_FORMAT, "events": events}, use_bin_type=True)


def unpack_events(blob: bytes) -> list[dict]:
    """Inverse of :func:`pack_events`; ValueError, saying why, for anything else (a corrupt or foreign
    blob, another format version, fields of the wrong type that ``status`` could not show). At most
    :data:`RECENT_EVENTS` of the newest are returned."""
    try:
        doc = msgpack.unpackb(blob, raw=False, max_bin_len=1 << 16, max_str_len=1 << 16,
                              max_array_len=1 << 12, max_map_len=1 << 12)
    except Exception as exc:  # noqa: BLE001 - msgpack raises several kinds for a damaged blob
        raise ValueError(f"not msgpack: {exc.__class__.__name__}" + (f": {exc}" if str(exc) else "")) from None
    if not isinstance(doc, dict) or "events" not in doc or "format" not in doc:
        raise ValueError("not a recent-events checkpoint")
    if doc["format"] != EVENTS_FORMAT:
        raise ValueError(f"format {doc['format']!r}, this version reads {EVENTS_FORMAT}")
    events = doc["events"]
    if not isinstance(events, list):
        raise ValueError("its events are not a list")
    for i, e in enumerate(events):
        if not isinstance(e, dict) or not all(isinstance(k, str) for k in e):
            raise ValueError(f"event {i} is not a map of names")
        for k in _NUMBERS:
            if k in e and e[k] is not None and (isinstance(e[k], bool) or not isinstance(e[k], (int, float))):
                raise ValueError(f"event {i}: {k} is not a number")
        for k in _TEXTS:
            if k in e and e[k] is not None and not isinstance(e[k], str):
                raise ValueError(f"event {i}: {k} is not text")
    return events[-RECENT_EVENTS:]


# --- Prometheus -------------------------------------------------------------------------------

def _collector(get_status: Callable[[], dict]):
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    class StatusCollector:
        def collect(self):
            s = get_status() or {}
            if not s:
                return
            gw = str(s.get("gateway", ""))
            g = GaugeMetricFamily("edge_gateway_up", "1 while the gateway runs", labels=["gateway"])
            g.add_metric([gw], 1)
            yield g
            g = GaugeMetricFamily("edge_gateway_uptime_seconds", "seconds since start", labels=["gateway"])
            g.add_metric([gw], float(s.get("uptime_s", 0)))
            yield g
            g = GaugeMetricFamily("edge_gateway_link_up", "1 when connected to the broker", labels=["gateway"])
            g.add_metric([gw], 1.0 if s.get("link") == "up" else 0.0)
            yield g
            q = s.get("queue", {})
            g = GaugeMetricFamily("edge_gateway_queue_depth", "messages waiting in the durable queue",
                                  labels=["gateway"])
            g.add_metric([gw], float(q.get("depth", s.get("queue_depth", 0))))
            yield g
            g = GaugeMetricFamily("edge_gateway_queue_oldest_age_seconds",
                                  "age of the oldest queued message (0 when empty)", labels=["gateway"])
            g.add_metric([gw], float(q.get("oldest_age_s") or 0.0))
            yield g
            c = CounterMetricFamily("edge_gateway_messages", "messages produced", labels=["gateway", "kind"])
            for kind, n in s.get("counts", {}).items():
                c.add_metric([gw, kind], float(n))
            yield c
            c = CounterMetricFamily("edge_gateway_published", "messages acknowledged by the broker",
                                    labels=["gateway", "kind"])
            for kind, n in s.get("published", {}).items():
                c.add_metric([gw, kind], float(n))
            yield c
            sensors = s.get("sensors", {})
            rate = GaugeMetricFamily("edge_gateway_sensor_rate", "readings per second", labels=["gateway", "sensor"])
            readings = CounterMetricFamily("edge_gateway_sensor_readings", "readings", labels=["gateway", "sensor"])
            errors = CounterMetricFamily("edge_gateway_sensor_errors", "errors by kind",
                                         labels=["gateway", "sensor", "kind"])
            filtered = CounterMetricFamily("edge_gateway_sensor_filtered",
                                           "readings despiked and aggregates held back by the deadband",
                                           labels=["gateway", "sensor", "kind"])
            channels = CounterMetricFamily("edge_gateway_sensor_channels",
                                           "readings of new channels refused at the sensor's cap, and channels "
                                           "forgotten to make room", labels=["gateway", "sensor", "kind"])
            last = GaugeMetricFamily("edge_gateway_sensor_last_value", "newest value",
                                     labels=["gateway", "sensor", "channel", "unit"])
            for sid, st in sensors.items():
                rate.add_metric([gw, sid], float(st.get("rate_per_s", 0)))
                readings.add_metric([gw, sid], float(st.get("readings", 0)))
                errors.add_metric([gw, sid, "malformed"], float(st.get("malformed", 0)))
                errors.add_metric([gw, sid, "link"], float(st.get("link_errors", 0)))
                for kind in ("late", "future", "bad_time"):
                    if kind in st:
                        errors.add_metric([gw, sid, kind], float(st[kind]))
                for kind in ("despiked", "deadband_held"):
                    if kind in st:
                        filtered.add_metric([gw, sid, kind], float(st[kind]))
                for kind in ("channels_refused", "channels_forgotten"):
                    if kind in st:
                        channels.add_metric([gw, sid, kind[len("channels_"):]], float(st[kind]))
                for ch, v in st.get("last_values", {}).items():
                    last.add_metric([gw, sid, ch, v.get("unit", "")], float(v["value"]))
            yield from (rate, readings, errors, filtered, channels, last)
            r = s.get("reload", {})
            c = CounterMetricFamily("edge_gateway_reloads", "config reloads", labels=["gateway", "result"])
            c.add_metric([gw, "ok"], float(r.get("ok", 0)))
            c.add_metric([gw, "failed"], float(r.get("failed", 0)))
            yield c

    return StatusCollector()


HTTP_MAX_CLIENTS = 8
"""Prometheus connections served at once (security review 19 #2). prometheus_client's server started a
thread per connection and kept an idle one open for ever: any local user held 1,015 idle connections, the
daemon reached its 1,024 descriptors, and the MQTT reconnect (EMFILE) and the control socket failed. A
scraper needs one connection at a time; more are answered 503 and closed at once."""
HTTP_READ_TIMEOUT_S = 5.0  # a request head not complete by then: the connection is closed (slot freed)
HTTP_WRITE_TIMEOUT_S = 10.0  # a response not taken by then (a client that does not read): aborted
HTTP_MAX_HEAD = 8 * 1024  # request line and headers, at most
HTTP_LISTEN_BACKLOG = 16
_BUSY = (b"HTTP/1.0 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\n"
         b"Retry-After: 1\r\nContent-Length: 18\r\nConnection: close\r\n\r\ntoo many clients\r\n")


class PrometheusEndpoint(AcceptorCounters):
    """``/metrics`` on 127.0.0.1:port, served on the daemon's event loop (like the control socket).

    The text is what prometheus_client's own server made (the same registry and encoder: ``Accept``
    chooses the plain text or OpenMetrics format, ``Accept-Encoding: gzip`` compresses, ``name[]``
    filters, every path but ``/favicon.ico`` serves the metrics), from the status document the event loop
    caches every second; it is encoded once per document and format. Bounded: at most
    :data:`HTTP_MAX_CLIENTS` connections (more get a 503 and are closed, counted in ``refused`` and
    logged at most once a minute), one request per connection, a head of at most :data:`HTTP_MAX_HEAD`
    bytes that must arrive within :data:`HTTP_READ_TIMEOUT_S`, no thread. A failing ``accept()``
    (EMFILE) is retried with backoff and logged once, as on the control socket."""

    def __init__(self, port: int, get_status: Callable[[], dict], host: str = "127.0.0.1",
                 max_clients: int = HTTP_MAX_CLIENTS) -> None:
        self.port = port
        self.host = host
        self.get_status = get_status
        self.timeouts = 0  # connections closed because the request head did not arrive in time
        self.served = 0
        self._registry = None
        self._cache: tuple[Any, str, bytes] | None = None  # (status document, content type, text)
        self._acceptor = CappedAcceptor("prometheus", "prometheus", self._client, _BUSY, HTTP_MAX_HEAD,
                                        max_clients, log)

    def stats(self) -> dict:
        return {"port": self.port, "clients": self.clients, "served": self.served, "refused": self.refused,
                "timeouts": self.timeouts, "accept_errors": self.accept_errors}

    async def start(self) -> None:
        from prometheus_client import CollectorRegistry

        registry = CollectorRegistry(auto_describe=False)
        registry.register(_collector(self.get_status))
        self._registry = registry
        sock = socket.create_server((self.host, self.port), backlog=HTTP_LISTEN_BACKLOG)
        sock.setblocking(False)
        self.port = sock.getsockname()[1]
        self._acceptor.start(sock)
        log.info("prometheus metrics on http://%s:%d/metrics", self.host, self.port)

    async def stop(self) -> None:
        await self._acceptor.stop()

    async def _client(self, conn: socket.socket) -> None:
        from . import aio

        try:
            reader, writer = await asyncio.open_connection(sock=conn, limit=HTTP_MAX_HEAD)
        except OSError:
            conn.close()
            return
        try:
            try:
                head = await aio.wait_for(reader.readuntil(b"\r\n\r\n"), HTTP_READ_TIMEOUT_S)
            except asyncio.TimeoutError:
                self.timeouts += 1
                return
            except (asyncio.IncompleteReadError, asyncio.LimitOverrunError):
                writer.write(_response("400 Bad Request", [], b"bad request\n"))
            else:
                writer.write(self._respond(head))
            await aio.wait_for(writer.drain(), HTTP_WRITE_TIMEOUT_S)
        except (asyncio.TimeoutError, ConnectionError):
            writer.transport.abort()
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    def _respond(self, head: bytes) -> bytes:
        """The response to one request head, as prometheus_client's WSGI app answers it."""
        from urllib.parse import parse_qs, urlsplit

        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/"):
            return _response("400 Bad Request", [], b"bad request\n")
        method, target = parts[0], urlsplit(parts[1])
        headers = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if sep:
                headers[name.strip().lower()] = value.strip()
        if method == "OPTIONS":
            return _response("200 OK", [("Allow", "OPTIONS,GET")], b"")
        if method != "GET":
            return _response("405 Method Not Allowed", [("Allow", "OPTIONS,GET")],
                             f"# HTTP 405 Method Not Allowed: {method}; use OPTIONS or GET\n".encode())
        if target.path == "/favicon.ico":
            return _response("200 OK", [], b"")
        self.served += 1
        return _response("200 OK", *self._exposition(headers.get("accept"), headers.get("accept-encoding"),
                                                     parse_qs(target.query)))

    def _exposition(self, accept: str | None, accept_encoding: str | None, params: dict):
        from prometheus_client.exposition import choose_encoder, gzip_accepted

        encoder, content_type = choose_encoder(accept)
        if "name[]" in params:
            output = encoder(self._registry.restricted_registry(params["name[]"]))
        else:
            doc, cached = self.get_status(), self._cache
            if cached is not None and cached[0] is doc and cached[1] == content_type:
                output = cached[2]
            else:
                output = encoder(self._registry)
                self._cache = (doc, content_type, output)
        headers = [("Content-Type", content_type)]
        if gzip_accepted(accept_encoding):
            output = gzip.compress(output)
            headers.append(("Content-Encoding", "gzip"))
        return headers, output


def _response(status: str, headers: list[tuple[str, str]], body: bytes) -> bytes:
    head = [f"HTTP/1.0 {status}", *(f"{k}: {v}" for k, v in headers), f"Content-Length: {len(body)}",
            "Connection: close", "", ""]
    return "\r\n".join(head).encode("latin-1") + body
