"""The gateway's one config schema, and loading it from YAML once at start-up.

Everything after :func:`load` receives these frozen dataclasses, never dicts.
``${NAME}``, ``${NAME:-default}`` and ``${NAME-default}`` in values are replaced
from the environment after parsing (see :func:`expand_env`). Relative paths are
taken relative to the config file's folder.
"""

from __future__ import annotations

import difflib
import ipaddress
import math
import os
import re
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from .schema import ConfigError, Problems, Validator

__all__ = ["ConfigError", "DetectorOverride", "GatewayConfig", "load", "loads", "read_state_dir"]


@dataclass(frozen=True)
class GatewaySection:
    """This gateway: its name on MQTT, and where it keeps its state.

    ``id``: the gateway's name in every topic, ``<topic_prefix>/<id>/...`` (1-64 letters, digits, '.',
    '_' or '-'). ``topic_prefix``: the topic root before the id. ``state_dir``: the folder of the queue
    database, the analytics checkpoint, the Numba cache and the control socket (a relative path is taken
    from the config file's folder). ``batch_interval_s``: how often readings go through the detectors
    and are committed to the queue. ``clock_sync_wait_s``: at start, while the system clock is not
    synchronised (a Pi without an RTC, before NTP's first sync), hold readings in memory up to this many
    seconds and re-date the ones the gateway stamped by the step NTP makes (0: off; docs/uplink.md).
    """

    id: str
    topic_prefix: str = "city"
    state_dir: str = "/var/lib/edge-gateway"
    batch_interval_s: float = 0.2
    status_interval_s: float = 60.0  # retained status message on MQTT; 0 = only birth/will
    clock_sync_wait_s: float = 0.0

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", self.id):
            raise ValueError("id: use 1-64 letters, digits, '.', '_' or '-' (it is part of MQTT topics)")
        problem = topic_prefix_problem(self.topic_prefix, self.id)
        if problem:
            raise ValueError(f"topic_prefix: {problem}")
        if self.batch_interval_s <= 0:
            raise ValueError("batch_interval_s: must be positive")
        if self.status_interval_s < 0:
            raise ValueError("status_interval_s: must be 0 (off) or positive")
        if not 0 <= self.clock_sync_wait_s <= 86400:
            raise ValueError("clock_sync_wait_s: must be 0 (off) or positive, at most 86400 (a day): readings "
                             "wait in memory")


# After ``<prefix>/<id>``, the longest topic the gateway uses: ``/cmd-res/`` and a 64-character command name
_LONGEST_SUFFIX = len("/cmd-res/") + 64
MAX_TOPIC = 65535  # bytes of UTF-8 in an MQTT topic name


def topic_prefix_problem(prefix: str, gateway_id: str = "") -> str:
    """Why MQTT cannot carry the topics under ``prefix`` ("" if it can): at load, not as a silent
    reconnect loop (Mosquitto closes a connection whose will or PUBLISH topic holds such characters)."""
    if not prefix:
        return "must not be empty"
    for i, c in enumerate(prefix, 1):
        o = ord(c)
        if c in "+#":
            return f"MQTT wildcard {c!r} at character {i}"
        if o <= 0x1F or 0x7F <= o <= 0x9F:
            return f"control character U+{o:04X} at character {i}: MQTT topics cannot carry it"
        if 0xD800 <= o <= 0xDFFF:
            return f"U+{o:04X} at character {i} is not valid UTF-8 (a lone surrogate)"
        if 0xFDD0 <= o <= 0xFDEF or (o & 0xFFFE) == 0xFFFE:
            return f"U+{o:04X} at character {i} is a Unicode noncharacter: MQTT topics cannot carry it"
    if prefix.startswith("$"):
        return "must not start with '$': such topics are the broker's own ($SYS), hidden from '#' subscribers"
    if "" in prefix.split("/"):
        return "empty topic level (a leading, trailing or doubled '/')"
    n = len(prefix.encode()) + 1 + len(gateway_id) + _LONGEST_SUFFIX
    if n > MAX_TOPIC:
        return f"too long: topics would be up to {n} bytes, MQTT allows {MAX_TOPIC}"
    return ""


@dataclass(frozen=True)
class TlsSection:
    """TLS to the broker.

    ``ca_file``: the CA certificate the broker's certificate must be signed by. ``cert_file`` and
    ``key_file``: this gateway's client certificate and key (mutual TLS), both or neither.
    ``check_hostname``: the broker's certificate must name ``broker.host``.
    """

    ca_file: str
    cert_file: str = ""
    key_file: str = ""
    check_hostname: bool = True

    def __post_init__(self) -> None:
        if not self.ca_file:
            raise ValueError("ca_file: a CA certificate file is required for TLS")
        if bool(self.cert_file) != bool(self.key_file):
            given = "cert_file" if self.cert_file else "key_file"
            raise ValueError(f"{given}: give both cert_file and key_file (mutual TLS) or neither")


COMMANDS = ("ping", "status", "set", "reload")


@dataclass(frozen=True)
class BrokerSection:
    """The MQTT broker the gateway sends to (docs/uplink.md).

    ``host``: the broker's host name or IP address (no URL, no port). ``port``: its TCP port (8883 for
    TLS, usually). ``protocol``: the MQTT version; only "5" can report a message the broker refuses.
    ``keepalive_s``: a dead link is noticed after about 1.5 to 2 keepalives. ``session_expiry_s``: how long
    the broker keeps the gateway's session while it is away (MQTT 5). ``max_inflight``: messages sent and
    not yet acknowledged, at most. ``tls``: connect with TLS (absent: plain TCP). ``secrets_file``: the file
    with the broker's username and password (never printed). ``reconnect_max_s``: the longest wait between
    two connection attempts.
    """

    host: str = "127.0.0.1"
    port: int = 1883
    protocol: Literal["5", "3.1.1"] = "5"
    keepalive_s: int = 30
    session_expiry_s: int = 7 * 24 * 3600
    max_inflight: int = 100
    tls: TlsSection | None = None
    secrets_file: str = field(default="", metadata={"secret_path": True})
    strict_secrets: bool = False  # refuse (not just warn about) a group/world-readable secrets_file
    reconnect_min_s: float = 1.0  # reconnect backoff: doubles from min to max, each delay jittered
    reconnect_max_s: float = 60.0
    commands: tuple[str, ...] = ("ping", "status")  # downlink commands accepted (see docs/uplink.md)
    max_message_bytes: int = 0  # largest payload the broker takes (Mosquitto message_size_limit); 0 = no limit
    retain_status: bool = True  # status, birth and will retained; false for a broker without retained messages

    def __post_init__(self) -> None:
        if not 0 < self.port < 65536:
            raise ValueError(f"port: {self.port} is not a TCP port")
        if not 1 <= self.max_inflight <= 65535:
            raise ValueError("max_inflight: must be 1 to 65535 (MQTT packet ids are 16 bits)")
        if not 1 <= self.keepalive_s <= 65535:
            raise ValueError("keepalive_s: must be 1 to 65535 (MQTT carries it in 16 bits)")
        if not 0 <= self.session_expiry_s <= 0xFFFFFFFF:
            raise ValueError("session_expiry_s: must be 0 to 4294967295 (MQTT carries it in 32 bits)")
        if self.max_message_bytes < 0:
            raise ValueError("max_message_bytes: must be 0 (no limit) or more")
        if self.reconnect_min_s <= 0:
            raise ValueError("reconnect_min_s: must be positive")
        if self.reconnect_min_s > self.reconnect_max_s:
            if self.reconnect_max_s != BrokerSection.reconnect_max_s:  # so it was given: blame it
                raise ValueError(f"reconnect_max_s: must be at least reconnect_min_s ({self.reconnect_min_s:g})")
            raise ValueError(f"reconnect_min_s: must be at most reconnect_max_s ({self.reconnect_max_s:g})")
        unknown = [c for c in self.commands if c not in COMMANDS]
        if unknown:
            raise ValueError(f"commands: unknown command {unknown[0]!r}; known: {', '.join(COMMANDS)}")


_HOST_LABEL = re.compile(r"(?!-)[A-Za-z0-9_-]{1,63}(?<!-)")


def host_problem(host: str) -> str:
    """Why ``host`` is not a host name or IP address ('' when it is one). A URL or a ``host:port`` here
    loads, then fails every connect as a DNS error: ``config validate`` warns at the key. (A warning,
    not an error: ``${VAR}`` values are taken as any string, and ``load`` stays the schema's.)"""
    if not host:
        return "give the broker's host name or IP address"
    if "://" in host:
        return (f"{host!r} is a URL: give the host name or IP address alone; the port goes in broker.port "
                "and TLS in broker.tls")
    try:
        ipaddress.ip_address(host)
        return ""
    except ValueError:
        pass
    if host.count(":") == 1 and host.rsplit(":", 1)[1].isdigit():
        return f"{host!r}: give the host alone; the port goes in broker.port"
    if all(p.isdigit() for p in host.split(".")):
        return f"{host!r} is not an IP address"
    labels = host.rstrip(".").split(".")
    if len(host) > 253 or not all(_HOST_LABEL.fullmatch(p) for p in labels):
        return f"{host!r} is not a host name or IP address"
    return ""


def warnings_of(cfg: "GatewayConfig") -> list[tuple[str, str]]:
    """(key path, text) of settings that load but cost something an operator should know about."""
    out = []
    problem = host_problem(cfg.broker.host)
    if problem:
        out.append(("broker.host", f"{problem} (the gateway will not reach the broker)"))
    for i, sensor in enumerate(cfg.sensors):
        port = getattr(sensor.options, "port", None)
        if isinstance(port, str):
            from drivers.serial_port import port_problem

            problem = port_problem(port)
            if problem:
                out.append((f"sensors[{i}].options.port", f"{problem} (the sensor will not be read)"))
    out.extend(transport_warnings(cfg.broker))
    if cfg.broker.protocol == "3.1.1":
        out.append(("broker.protocol", "MQTT 3.1.1 cannot report a refused message: the broker acknowledges it "
                    "(ACL deny, size limit) and it is lost without a trace; use \"5\" unless the broker lacks it"))
    hop, seconds = cfg.windows.hop_s, cfg.windows.seconds
    if hop is not None and hop < seconds and abs(seconds / hop - round(seconds / hop)) > 1e-9:
        out.append(("windows.hop_s", f"{hop:g} does not divide seconds ({seconds:g}): in a long broker outage the "
                    "queue cannot thin these windows to ones that tile time, so it drops the oldest instead of "
                    "rolling them up (docs/uplink.md)"))
    out.extend(no_effect_warnings(cfg.detector, [s.id for s in cfg.sensors]))
    if not cfg.sensors:
        out.append(("sensors", NO_SENSORS))
    return out


def no_effect_warnings(det: "DetectorSection", sensors: list[str]) -> list[tuple[str, str]]:
    """(key path, text) of each ``params`` setting that changes nothing the gateway sends on any channel it
    applies to, such as ``cusum_h`` while the cusum detector has weight 0 there: it loads, yet a technician
    tuning it would wait for a change that cannot come (``analyze --set`` warns the same way)."""
    from .analytics.settings import why_no_effect
    from .config_keys import key_part

    def split(key: str) -> tuple[str, str]:
        sensor, _, channel = key.partition("/")
        return sensor, channel

    channels = [split(k) for k in det.sensors if "/" in k]
    layers = [("detector.params", det, [("", "")] + [(s, "") for s in sensors] + channels)]
    for key, entry in det.sensors.items():
        sensor, channel = split(key)
        reach = [(sensor, channel)] if channel else [(sensor, "")] + [c for c in channels if c[0] == sensor]
        layers.append((f"detector.sensors{key_part(key)}.params", entry, reach))
    out = []
    for prefix, layer, reach in layers:
        if not layer.params:
            continue
        variants = list(dict.fromkeys(det.settings_for(s, c) for s, c in reach))
        for name in layer.params:
            whys = [why_no_effect(v, name, live=True) for v in variants]
            if all(whys):
                out.append((f"{prefix}.{name}", f"has no effect on any channel it applies to: {whys[0]}"))
    return out


NO_SENSORS = "no sensors configured: the gateway will run but read nothing"


def loopback(host: str) -> bool:
    """``host`` names this machine (localhost, 127.0.0.0/8, ::1): what goes to it never crosses a network."""
    if host.rstrip(".").lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def transport_warnings(broker: "BrokerSection") -> list[tuple[str, str]]:
    """(key path, text) of broker settings that expose the link: a password sent in clear to another machine
    (MQTT's CONNECT carries it as is: anyone on the cabinet's network or the operator's reads it), and a TLS
    link that accepts any certificate of its CA for this broker. Also ``doctor``'s."""
    out = []
    if broker.secrets_file and broker.tls is None and not loopback(broker.host):
        out.append(("broker.secrets_file", f"the broker's username and password go to {broker.host} in clear text: "
                    "there is no broker.tls (set it, or keep the password on a broker on this machine)"))
    if broker.tls is not None and not broker.tls.check_hostname:
        out.append(("broker.tls.check_hostname", f"false: any certificate the CA signed is taken for {broker.host}, "
                    "so whoever holds one can pose as the broker (set true, or give the broker a certificate "
                    "naming it)"))
    return out


@dataclass(frozen=True)
class FilterSection:
    """Conditioning of one sensor's values (edge_gateway/conditioning.py); everything off by default.

    Despiking and smoothing change only the values the windows aggregate, never what the detectors score.
    ``despike_window``: readings of rolling median/MAD (Hampel; 0: off) that a reading is compared with.
    ``despike_sigma``: a reading more than this many scaled MADs from the median is replaced by it.
    ``lowpass_alpha``: below 1, each value is smoothed (EMA) with this weight of the new reading.
    ``deadband``: above 0, a channel's aggregate is sent only when its mean moved more than this since
    the last one sent, or ``heartbeat_s`` after it. ``heartbeat_s``: see ``deadband``.
    """

    despike_window: int = 0
    despike_sigma: float = 3.0
    lowpass_alpha: float = 1.0
    deadband: float = 0.0
    heartbeat_s: float = 600.0

    def __post_init__(self) -> None:
        if self.despike_window and not 3 <= self.despike_window <= 101:
            raise ValueError("despike_window: 0 (off) or 3 to 101 readings")
        if not self.despike_sigma > 0:
            raise ValueError("despike_sigma: must be positive")
        if not 0 < self.lowpass_alpha <= 1:
            raise ValueError("lowpass_alpha: must be in (0, 1] (1: off)")
        if not self.deadband >= 0:
            raise ValueError("deadband: must be 0 (off) or more")
        if not self.heartbeat_s > 0:
            raise ValueError("heartbeat_s: must be positive")


@dataclass(frozen=True)
class SensorSection:
    """One sensor: a driver reading one device or node.

    ``id``: the sensor's name in topics and ``status`` (1-64 letters, digits, '.', '_' or '-').
    ``driver``: serial_line, pms5003, modbus_rtu or coap. ``options``: the driver's settings
    (``edge-gateway config options DRIVER`` lists them). ``filters``: conditioning of the values
    its windows aggregate (``edge-gateway config options filters``).
    """

    id: str
    driver: str
    options: Any = field(default=None, metadata={"options_of": "driver"})
    filters: FilterSection = FilterSection()

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", self.id):
            raise ValueError("id: use 1-64 letters, digits, '.', '_' or '-'")


MAX_HOP_OVERLAP = 60  # windows.seconds / windows.hop_s: the hopping windows that can hold one instant


@dataclass(frozen=True)
class WindowSection:
    """The windows each channel's readings are aggregated in (docs/windows.md).

    ``seconds``: the length of a window. ``grace_s``: an idle channel's window closes ``seconds + grace_s``
    after its last reading. ``hop_s``: below ``seconds``, hopping windows: a window of ``seconds`` starts
    every ``hop_s`` (at least ``seconds / 60``); left out, or equal to ``seconds``, tumbling windows.
    """

    seconds: float = 60.0
    grace_s: float = 2.0
    future_tolerance_s: float = 600.0  # readings stamped further ahead of the gateway clock are dropped
    hop_s: float | None = None  # a window of ``seconds`` starts every hop_s (hopping); None or ``seconds``: tumbling

    def __post_init__(self) -> None:
        if self.seconds <= 0:
            raise ValueError("seconds: must be positive")
        if self.future_tolerance_s <= 0:
            raise ValueError("future_tolerance_s: must be positive")
        if self.hop_s is not None:
            if not self.hop_s > 0:
                raise ValueError("hop_s: must be positive (leave it out, or set it to seconds, for tumbling windows)")
            if self.hop_s > self.seconds:
                raise ValueError(f"hop_s: must be at most seconds ({self.seconds:g}): windows would leave gaps")
            if self.seconds / self.hop_s > MAX_HOP_OVERLAP * (1 + 1e-9):  # 21 / 0.35 is 60.00000000000001
                raise ValueError(f"hop_s: must be at least seconds / {MAX_HOP_OVERLAP} "
                                 f"({self.seconds / MAX_HOP_OVERLAP:g}): at most {MAX_HOP_OVERLAP} windows may overlap")


@dataclass(frozen=True)
class DetectorOverride:
    """Detector settings for one sensor or one channel, on top of the ``detector`` section's.

    Sensors differ: a level change that matters on a noise meter is routine on an
    electricity meter, so a detector can be switched on (or tuned) where it pays.
    """

    threshold: float | None = None
    params: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        problems = []
        if self.threshold is not None and not _in_score_range(self.threshold):
            problems.append(f"threshold: {_THRESHOLD_RANGE}")
        if self.params:
            from .analytics.settings import DetectorSettings  # no Numba: its cache is not placed yet

            # each key alone first, so that every mistake of the map is reported, not only the first
            base = DetectorSettings()
            for k, v in self.params.items():
                try:  # (event_threshold, the same setting as ``threshold``, gets threshold's range and words there)
                    base.with_overrides(self._override(k, v))
                except ValueError as exc:
                    problems.append(f"params: {exc}")
            if not problems:
                try:
                    base.with_overrides(self.overrides())
                except ValueError as exc:
                    problems.append(f"params: {exc}")
        if len(problems) == 1:
            raise ValueError(problems[0])
        if problems:
            raise Problems(problems)

    def overrides(self) -> dict[str, str]:
        """``params`` as the ``key=value`` strings ``DetectorSettings.with_overrides`` takes."""
        out = {}
        for k, v in self.params.items():
            out.update(self._override(k, v))
        return out

    @staticmethod
    def _override(k: str, v: Any) -> dict[str, str]:
        items = v if isinstance(v, (list, tuple)) else (v,)
        if not items or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in items):
            raise ValueError(f"{k}: expected a number or a list of numbers, got {v!r}")
        bad = [i for i, x in enumerate(items) if not (math.isfinite(x) or (x == x and k in _UNBOUNDED))]
        if bad and k in _UNBOUNDED:
            raise ValueError(f"{k}: expected a number, or -.inf/.inf for no limit, got {v!r}")
        if bad and isinstance(v, (list, tuple)):
            from .analytics.layout import DETECTOR_NAMES, NOV_FEATURES

            labels = {"weights": DETECTOR_NAMES, "nov_decay": NOV_FEATURES, "nov_weights": NOV_FEATURES}.get(k, ())
            which = f" ({labels[bad[0]]})" if bad[0] < len(labels) else ""
            raise ValueError(f"{k}: expected finite numbers; {k}[{bad[0]}]{which} is {items[bad[0]]}")
        if bad:
            raise ValueError(f"{k}: expected a finite number, got {v!r}")
        return {k: ",".join(repr(float(x)) for x in items)}


_THRESHOLD_RANGE = "the combined score is in [0, 1]; give a value in (0, 1]"


def _in_score_range(value: float) -> bool:
    return 0 < value <= 1


_UNBOUNDED = ("range_lo", "range_hi")  # detector params where -.inf/.inf mean "no bound" (their default)
_OVERRIDE_KEY = re.compile(r"([A-Za-z0-9_.-]{1,64})(?:/(.+))?")


@dataclass(frozen=True)
class DetectorSection(DetectorOverride):
    """Anomaly events from the detector ensemble (``edge_gateway/analytics/chain.py``).

    ``threshold``: the event threshold on the combined score in [0, 1] (default:
    the NAB-tuned one). ``params``: overrides any ``DetectorSettings`` field by name
    (e.g. ``range_hi``, ``flat_min_run``, ``nov_hold``). ``sensors``: maps a
    sensor id, or ``sensor/channel``, to its own ``threshold`` and ``params``, applied on top
    (a channel's over its sensor's), e.g. a level-change detector on one noise meter.
    """

    sensors: dict[str, DetectorOverride] = field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__post_init__()
        for key in self.sensors:
            if not _OVERRIDE_KEY.fullmatch(key):
                raise ValueError(f"sensors: {key}: expected a sensor id or sensor/channel")

    def override_sensors(self) -> list[tuple[str, str]]:
        """``(key, sensor id)`` of every entry of ``sensors``, for checking the ids against the sensors."""
        return [(key, _OVERRIDE_KEY.fullmatch(key).group(1)) for key in self.sensors]

    def settings_for(self, sensor: str = "", channel: str = ""):
        """The ensemble's settings (a ``DetectorSettings``) for one channel: the tuned defaults, then this
        section's threshold and params, then its ``sensors`` entries for the sensor and for ``sensor/channel``
        (the most specific wins). Here, not beside the detectors, because it needs no Numba."""
        import dataclasses

        from .analytics.settings import DetectorSettings

        base = DetectorSettings()
        for layer in self.for_channel(sensor, channel):
            if layer.params:
                base = base.with_overrides(layer.overrides())
            if layer.threshold is not None:
                base = dataclasses.replace(base, event_threshold=layer.threshold)
        return base

    def for_channel(self, sensor: str, channel: str) -> tuple[DetectorOverride, ...]:
        """The layers of settings for one channel, least specific first: this section, then its sensor's
        and its channel's entries of ``sensors`` where given."""
        layers: tuple[DetectorOverride, ...] = (self,)
        for key in (sensor, f"{sensor}/{channel}"):
            if key in self.sensors:
                layers += (self.sensors[key],)
        return layers


@dataclass(frozen=True)
class QueueSection:
    """The on-disk queue of messages not yet acknowledged by the broker (docs/uplink.md).

    ``path``: the queue database, relative to ``gateway.state_dir``. ``synchronous``: full survives a
    power loss; normal may lose the last commits then (and reuse their seqs).
    """

    path: str = "queue.db"
    max_bytes: int = 64 * 1024 * 1024  # backlog bound (sum of payload bytes); see docs/uplink.md
    max_age_s: float = 7 * 24 * 3600.0  # older unsent messages are dropped (counted); 0 = no limit
    high_water: float = 0.8  # above high_water * max_bytes, the oldest aggregates are rolled up
    rollup_factor: int = 10  # a rollup merges up to this many windows of one channel into one
    max_file_bytes: int = 0  # SQLite file cap (PRAGMA max_page_count); 0 = 2 * max_bytes + 4 MiB
    reserve_bytes: int = 16 * 1024 * 1024  # free space left on the file system for WAL/checkpoints
    synchronous: Literal["full", "normal"] = "full"

    def __post_init__(self) -> None:
        if self.max_bytes < 4096:
            raise ValueError("max_bytes: must be at least 4096")
        if not 0 < self.high_water <= 1:
            raise ValueError("high_water: must be in (0, 1]")
        if self.rollup_factor < 2:
            raise ValueError("rollup_factor: must be at least 2")
        for name in ("max_age_s", "max_file_bytes", "reserve_bytes"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}: must not be negative")


@dataclass(frozen=True)
class MetricsSection:
    """Optional Prometheus text endpoint on 127.0.0.1 (same figures as ``edge-gateway status``)."""

    prometheus_port: int = 0  # 0 = off

    def __post_init__(self) -> None:
        if not 0 <= self.prometheus_port < 65536:
            raise ValueError(f"prometheus_port: {self.prometheus_port} is not a TCP port (0 = off)")


@dataclass(frozen=True)
class GatewayConfig:
    gateway: GatewaySection
    broker: BrokerSection = BrokerSection()
    sensors: tuple[SensorSection, ...] = ()
    windows: WindowSection = WindowSection()
    detector: DetectorSection = DetectorSection()
    queue: QueueSection = QueueSection()
    metrics: MetricsSection = MetricsSection()
    log_level: Literal["debug", "info", "warning", "error"] = "info"  # a reload applies it; ``run --log-level`` wins
    source: str = field(default="<string>", metadata={"internal": True})

    def __post_init__(self) -> None:
        problems = []
        ids = [s.id for s in self.sensors]
        for i, sid in enumerate(ids):
            if sid in ids[:i]:
                problems.append(f"sensors: [{i}]: id: duplicate sensor id {sid!r} (also sensors[{ids.index(sid)}])")
        for key, sensor in self.detector.override_sensors():
            if sensor not in ids:
                near = difflib.get_close_matches(sensor, ids, n=1)
                known = ", ".join(dict.fromkeys(ids)) or "none"
                hint = f"; did you mean {near[0]!r}?" if near else f"; sensors: {known}"
                problems.append(f"detector: sensors: {key}: no sensor {sensor!r}{hint}")
        if problems:
            raise Problems(problems)

    @property
    def state_dir(self) -> Path:
        return Path(self.gateway.state_dir)

    @property
    def control_socket(self) -> Path:
        return self.state_dir / CONTROL_SOCKET

    @property
    def queue_path(self) -> Path:
        return self.state_dir / self.queue.path


_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?-)([^}]*))?\}")
_BREAK = re.compile(r"\r\n|[\n\r\x85\u2028\u2029]")  # what PyYAML's marks count as a line break
_STR = "tag:yaml.org,2002:str"
_TYPED = {f"tag:yaml.org,2002:{t}" for t in ("bool", "int", "float", "null", "timestamp")}
_RESOLVER = yaml.resolver.Resolver()
_HINTS = {"CREDENTIALS_DIRECTORY": "systemd sets it only inside the service: to check this file from a shell "
                                   "too, write ${CREDENTIALS_DIRECTORY:-/etc/edge-gateway/credentials}"}


def expand_env(root: yaml.Node, text: str, source: str, env: Mapping[str, str],
               unset: list[tuple[yaml.Node, ConfigError]] | None = None) -> set[int]:
    """Replace ``${NAME}``, ``${NAME:-default}`` and ``${NAME-default}`` in the scalar values of ``root``.

    Done on the composed nodes, not the text, so comments and keys are never expanded, and a value
    from the environment is exactly one string: a ``#``, ``: `` or newline in it cannot change the
    document. ``:-`` takes the default when NAME is unset or empty, ``-`` only when it is unset (as
    in a shell). An unset NAME without a default is a ConfigError at the reference, with the key
    path: raised, or if ``unset`` is given, appended to it with its node (left as written) and the
    expansion goes on. Returns the ids of the changed nodes, which :class:`_EnvValidator` types by
    their field.
    """
    expanded: set[int] = set()
    seen: set[int] = set()
    stack: list[tuple[yaml.Node, str]] = [(root, "")]
    while stack:
        node, path = stack.pop()
        if id(node) in seen:  # an alias: its value is expanded already
            continue
        seen.add(id(node))
        if isinstance(node, yaml.MappingNode):
            stack.extend(reversed([(v, _key_path(path, k)) for k, v in node.value]))
        elif isinstance(node, yaml.SequenceNode):
            stack.extend(reversed([(v, f"{path}[{i}]") for i, v in enumerate(node.value)]))
        elif isinstance(node, yaml.ScalarNode) and "${" in node.value:
            if _expand_scalar(node, path, text, source, env, unset):
                expanded.add(id(node))
    return expanded


def _expand_scalar(node: yaml.ScalarNode, path: str, text: str, source: str, env: Mapping[str, str],
                   unset: list[tuple[yaml.Node, ConfigError]] | None = None) -> bool:
    missing: list[ConfigError] = []

    def sub(m: re.Match) -> str:
        name, op, default = m.groups()
        value = env.get(name)
        if value is not None and not (value == "" and op == ":-"):
            return value
        if op is not None:
            return default
        hint = f"; {_HINTS[name]}" if name in _HINTS else ""
        exc = ConfigError(source, *_position(node, text, m), path, f"environment variable {name} is not set{hint}")
        if unset is None:
            raise exc
        missing.append(exc)
        return m.group(0)

    value, count = _ENV.subn(sub, node.value)
    if missing:
        unset.extend((node, e) for e in missing)
        return False
    if count:
        node.value, node.tag = value, _plain_tag(value)
    return bool(count)


def _position(node: yaml.ScalarNode, text: str, ref: re.Match) -> tuple[int, int]:
    """Line and column of ``ref`` in the file where the source shows the references verbatim, else the value's."""
    start = node.start_mark
    raw = text[start.index:node.end_mark.index]
    in_raw = list(_ENV.finditer(raw))
    in_value = list(_ENV.finditer(node.value))
    if [m.group(0) for m in in_raw] != [m.group(0) for m in in_value]:
        return start.line + 1, start.column + 1
    k = next(i for i, m in enumerate(in_value) if m.start() == ref.start())
    before = raw[:in_raw[k].start()]
    breaks = list(_BREAK.finditer(before))
    if not breaks:
        return start.line + 1, start.column + len(before) + 1
    return start.line + len(breaks) + 1, len(before) - breaks[-1].end() + 1


def _plain_tag(value: str) -> str:
    """The tag ``value`` would get written unquoted, if that is a bool, number, null or date; else str."""
    if "\n" in value:  # the resolver's ``$`` would match before a final newline
        return _STR
    tag = _RESOLVER.resolve(yaml.ScalarNode, value, (True, False))
    return tag if tag in _TYPED else _STR


def _key_path(path: str, key: yaml.Node) -> str:
    if not isinstance(key, yaml.ScalarNode):
        return path
    return f"{path}.{key.value}" if path else str(key.value)


def _wants_text(tp: Any) -> bool:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return any(_wants_text(a) for a in typing.get_args(tp) if a is not type(None))
    if origin is typing.Literal:
        return all(isinstance(a, str) for a in typing.get_args(tp))
    return tp is str


class _EnvValidator(Validator):
    """A value taken from the environment is text; the field it is in says what type to read it as.

    A string field gets the text exactly (``""``, ``null`` and ``1883`` included); any other field
    reads it as if it were written unquoted, so ``port: ${PORT}`` (or ``"${PORT}"``) is a number.
    """

    def __init__(self, source: str, resolve_options: Callable[[str], type], expanded: set[int]) -> None:
        super().__init__(source, resolve_options)
        self.expanded = expanded

    def _convert(self, node: yaml.Node, tp: Any, path: str) -> Any:
        if id(node) in self.expanded:
            node.tag = _STR if _wants_text(tp) else _plain_tag(node.value)
        return super()._convert(node, tp, path)


def _driver_options(name: str) -> type:
    import drivers

    try:
        return drivers.get(name).Options
    except KeyError:
        near = difflib.get_close_matches(name, drivers.names(), n=1)
        hint = f"; did you mean {near[0]!r}?" if near else f"; known drivers: {', '.join(drivers.names())}"
        raise LookupError(f"unknown driver {name!r}{hint}") from None


def compose(text: str, source: str = "<string>") -> yaml.Node | None:
    """The YAML node tree of ``text`` (None if it holds no document); ConfigError with the line if not YAML.

    ``config set`` checks the file with this too, so it reports a broken file as ``validate`` does.
    """
    try:
        return yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        if mark and mark.column and text[mark.index - 1:mark.index + 1] == "${":  # a plain scalar ends at "{"
            hint = '; inside [...] or {...}, put a ${NAME} reference in quotes: "${NAME}"'
            raise ConfigError(source, line, col - 1, "", f"not valid YAML: {exc.problem}{hint}") from None
        try:
            plain = _yaml_mistake(exc, text)
        except Exception:  # noqa: BLE001 - the plain words are a courtesy: never a traceback instead
            plain = None
        if plain is None:
            raise ConfigError(source, line, col, "", f"not valid YAML: {exc.problem}") from None
        line, col, said = plain
        raise ConfigError(source, line, col, "", f"not valid YAML: {said} (YAML parser: {exc.problem})") from None
    except yaml.YAMLError as exc:
        raise ConfigError(source, 1, 1, "", f"not valid YAML: {exc}") from None
    except RecursionError:
        raise ConfigError(source, 1, 1, "", "document nested too deeply") from None


def _yaml_mistake(exc: yaml.MarkedYAMLError, text: str) -> tuple[int, int, str] | None:
    """The common YAML mistakes in plain words: (line, column, what and how to fix it); None for the rest.

    A technician meets these after an edit on site: a tab, a key indented unlike its neighbours, an
    unclosed quote or bracket, ``key:value`` without the space, a value starting with ``@``, ``%`` or a
    backtick. The caller adds the parser's own words.
    """
    problem, context = str(exc.problem or ""), str(exc.context or "")
    pm, cm = exc.problem_mark, exc.context_mark
    if pm is None:
        return None
    lines = _BREAK.split(text)
    ln, col = pm.line + 1, pm.column + 1

    def line(n: int) -> str:  # 1-based; "" past the end
        return lines[n - 1] if 0 < n <= len(lines) else ""

    at = line(ln)[pm.column:pm.column + 1]
    if at == "\t" or "tab character" in problem:
        head = line(ln)[:pm.column]
        if not head.strip():
            return ln, col, (f"a tab at line {ln}, column {col}: YAML indents with spaces only; "
                             "replace the tab with spaces")
        return ln, col, f"a tab at line {ln}, column {col}: YAML separates with spaces only; use a space"
    m = re.fullmatch(r"found character '(.)' that cannot start any token", problem)
    if m and m.group(1) in "@`%":
        c = m.group(1)
        if not line(ln)[_key_start(line(ln)[:pm.column]):pm.column].strip():  # where a key starts
            return ln, col, f"a key cannot start with {c!r} (line {ln}, column {col}): remove it, or quote the key"
        value = line(ln)[pm.column:].split(" #")[0].strip()
        example = "" if re.search(r"[,\[\]{}'\"]|: ", value) else f', e.g. "{value}"'
        return ln, col, f"a value cannot start with {c!r} (line {ln}, column {col}): put it in quotes{example}"
    if "quoted scalar" in context and cm is not None and "unexpected end of stream" in problem:
        q = line(cm.line + 1)[cm.column:cm.column + 1] or '"'
        return cm.line + 1, cm.column + 1, (f"the quote {q} opened at line {cm.line + 1}, column {cm.column + 1} "
                                            f"is never closed: end the value with {q}")
    if "flow node" in context:  # an item or value missing inside [...] or {...}: its context is the gap
        cm = _open_bracket(text, pm.index) or cm
        context = "flow collection"
    m = re.search(r"flow (sequence|mapping|collection)", context)
    b = line(cm.line + 1)[cm.column:cm.column + 1] if m and cm is not None else ""
    close, kind = ("]", "list") if b == "[" else ("}", "mapping")
    opened = f"the {b!r} at line {cm.line + 1}, column {cm.column + 1}" if b else ""
    got = re.search(r"but (?:got|found) '(.)'", problem)
    if b in ("[", "{") and got and got.group(1) in "]}" and got.group(1) != close:
        return ln, col, f"line {ln}, column {col}: {got.group(1)!r} cannot close {opened}: end the {kind} with {close!r}"
    if b in ("[", "{") and (pm.line > cm.line or "<stream end>" in problem):
        def indent(n: int) -> int:
            return len(line(n)) - len(line(n).lstrip(" "))

        # a key back at the bracket's own indentation (``broker:`` after ``sensors: [``) starts the next
        # setting: the collection was never closed, though the parser stumbles only further down
        at_key = any(indent(n) <= indent(cm.line + 1) and re.match(r"\s*[^\s:#,\[\]{}'\"][^:#]*:(\s|$)", line(n))
                     for n in range(cm.line + 2, ln + 1))
        if "<stream end>" in problem or indent(ln) <= indent(cm.line + 1) or at_key:
            return cm.line + 1, cm.column + 1, f"{opened} is never closed: end the {kind} with {close!r}"
        # still indented inside the collection: the items go on, one ',' between two of them is missing
        return ln, indent(ln) + 1, (f"line {ln}: a ',' is missing before this line? The items of {opened} are "
                                    f"separated by commas (or end the {kind} with {close!r})")
    if problem == "could not find expected ':'" and cm is not None:
        n = cm.line + 1
        word = line(n)[cm.column:].split(" #")[0].rstrip()
        glued = re.fullmatch(r"([^\s:]+):(\S.*)", word)
        if glued:
            return n, cm.column + 1, (f"line {n}: put a space after ':' in {word!r} (YAML reads it as one word, "
                                      f"not a key and a value: {glued.group(1)}: {glued.group(2)})")
        return n, cm.column + 1, f"line {n}: {word!r} is not a 'key: value' line (no ': ' after it)"
    if problem == "mapping values are not allowed here":
        head = line(ln)[:pm.column]
        key_end = _key_start(head)
        if ": " in head[key_end:] and not re.search(r"[\[{]", head):
            k, _, v = line(ln)[key_end:].partition(": ")
            return ln, col, (f"line {ln}: a second ': ' in one line; a value holding ': ' must be in quotes, "
                             f"e.g. {k}: \"{v.split(' #')[0].rstrip()}\"")
        above = _line_above(lines, ln)
        if above:
            n, text_above = above
            glued = re.fullmatch(r"\s*(?:-\s+)*([^\s:#'\"][^\s:]*):(\S+)", text_above.split(" #")[0].rstrip())
            if glued:
                word = f"{glued.group(1)}:{glued.group(2)}"
                said = (f"line {n}: put a space after ':' in {word!r} (without it, YAML reads it as text, "
                        f"and line {ln} as more of that text)")
                return n, _key_start(text_above) + 1, said
            if not re.search(r":(\s|$)", text_above.split(" #")[0]):
                said = (f"line {n}: {text_above.strip()!r} is not a 'key: value' line (no ': ' in it), so YAML "
                        f"reads line {ln} as more of it")
                return n, _key_start(text_above) + 1, said
            return _indent_mistake(ln, line(ln), n, text_above)
        return None
    m = re.fullmatch(r"expected <block end>, but found '(.+)'", problem)
    if m:
        found = m.group(1)
        if found == "<scalar>" and line(ln)[:pm.column].rstrip()[-1:] in ("'", '"'):
            start = _quote_start(text, pm.index)
            if start is not None and start.line != pm.line:
                return start.line + 1, start.column + 1, (
                    f"the quote opened at line {start.line + 1}, column {start.column + 1} is closed only on line "
                    f"{ln}: a closing quote is missing")
            return ln, col, f"text after the closing quote on line {ln}: put the whole value inside the quotes"
        above = _line_above(lines, ln)
        if above and found in ("<block mapping start>", "?", "-", "<block sequence start>"):
            return _indent_mistake(ln, line(ln), *above)
    return None


def _key_start(line: str) -> int:
    """Where the key of ``line`` starts: after the indentation and any ``- `` list item marks."""
    m = re.match(r"\s*(?:-(?:\s+|$))*", line)
    return m.end()


def _line_above(lines: list[str], n: int) -> tuple[int, str] | None:
    """(number, text) of the last line before line ``n`` that holds more than blanks and a comment."""
    for k in range(n - 1, 0, -1):
        t = lines[k - 1]
        if t.strip() and not t.lstrip().startswith("#"):
            return k, t
    return None


def _indent_mistake(n: int, text: str, n_above: int, above: str) -> tuple[int, int, str] | None:
    col, col_above = _key_start(text) + 1, _key_start(above) + 1
    if col == col_above:
        return None
    what = "key" if re.match(r"\s*(?:-\s+)*[^\s:#][^:]*:(\s|$)", text) else "line"
    return n, col, (f"line {n}: this {what} is indented differently from the keys above it (it starts at column "
                    f"{col}, the key on line {n_above} at column {col_above})")


def _open_bracket(text: str, index: int) -> yaml.Mark | None:
    """Where the innermost ``[`` or ``{`` still open before ``index`` was opened (None if none is)."""
    stack: list[yaml.Mark] = []
    try:
        for token in yaml.scan(text, Loader=yaml.SafeLoader):
            if token.start_mark.index >= index:
                break
            if isinstance(token, (yaml.FlowSequenceStartToken, yaml.FlowMappingStartToken)):
                stack.append(token.start_mark)
            elif isinstance(token, (yaml.FlowSequenceEndToken, yaml.FlowMappingEndToken)) and stack:
                stack.pop()
    except yaml.YAMLError:
        pass
    return stack[-1] if stack else None


def _quote_start(text: str, index: int) -> yaml.Mark | None:
    """Start of the last quoted scalar the scanner read before ``index`` (None if none)."""
    last = None
    try:
        for token in yaml.scan(text, Loader=yaml.SafeLoader):
            if token.start_mark.index >= index:
                break
            if isinstance(token, yaml.ScalarToken) and token.style in ("'", '"'):
                last = token.start_mark
    except yaml.YAMLError:
        pass
    return last


def loads(text: str, source: str = "<string>", base_dir: Path | None = None, *,
          env: Mapping[str, str] | None = None) -> GatewayConfig:
    """Parse, expand (from ``env``, default ``os.environ``) and validate a config held in a string."""
    root = compose(text, source)
    if root is None:
        raise ConfigError(source, 1, 1, "", "the file is empty")
    unset: list[tuple[yaml.Node, ConfigError]] = []
    expanded = expand_env(root, text, source, os.environ if env is None else env, unset)
    validator = _EnvValidator(source, _driver_options, expanded)
    validator.errors.extend(e for _, e in unset)  # reported with the schema's mistakes, in file order
    validator.failed_nodes.update(id(n) for n, _ in unset)
    try:
        cfg = validator.convert(root, GatewayConfig, "")
    except RecursionError:  # the validator recurses per nesting level too
        raise ConfigError(source, 1, 1, "", "document nested too deeply") from None
    cfg = _resolve_paths(cfg, base_dir, source)
    _check_socket_path(cfg, root, source)
    return cfg


CONTROL_SOCKET = "control.sock"
_MAX_UNIX_PATH = 107  # sun_path holds 108 bytes with the terminating NUL


def _check_socket_path(cfg: GatewayConfig, root: yaml.Node, source: str) -> None:
    """The control socket ``<state_dir>/control.sock`` must fit a Unix socket address, or ``run`` would fail
    only after warming every kernel (minutes on a Pi)."""
    sock = os.fsencode(str(cfg.control_socket))
    if len(sock) <= _MAX_UNIX_PATH:
        return
    node = root
    for key in ("gateway", "state_dir"):
        node = next((v for k, v in node.value if getattr(k, "value", None) == key), node)
    mark = node.start_mark
    raise ConfigError(source, mark.line + 1, mark.column + 1, "gateway.state_dir",
                      f"too long: the control socket {sock.decode(errors='replace')} would be {len(sock)} bytes, "
                      f"a Unix socket path holds at most {_MAX_UNIX_PATH}")


def read_text(path: str | os.PathLike, newline: str | None = None) -> str:
    """The file's text; ConfigError if it cannot be read (no line), or is not UTF-8 (at the first bad byte).

    ``newline=""`` keeps line endings as they are (``config set`` writes CRLF files back as CRLF).
    """
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise ConfigError(str(path), 0, 0, "", f"cannot read: {exc}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(str(path), *not_utf8(data, exc)) from None
    if newline is None:  # as open() in text mode reads it: universal newlines
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    return text


_BOMS = {b"\xff\xfe": "UTF-16", b"\xfe\xff": "UTF-16"}


def not_utf8(data: bytes, exc: UnicodeDecodeError) -> tuple[int, int, str, str]:
    """(line, column, key path, message) for the first byte of ``data`` that is not UTF-8."""
    bom = _BOMS.get(data[:2])
    if bom:
        return 1, 1, "", (f"not UTF-8: the file is saved as {bom} (it starts with bytes "
                          f"0x{data[0]:02x} 0x{data[1]:02x}); save it as UTF-8")
    before = data[:exc.start].decode("utf-8")
    breaks = list(_BREAK.finditer(before))
    line = len(breaks) + 1
    col = len(before) - (breaks[-1].end() if breaks else 0) + 1
    byte = data[exc.start]
    try:  # most likely a Windows editor's letter or curly quote
        guess = f", {bytes([byte]).decode('cp1252')!r} in Windows-1252/Latin-1" if byte >= 0x80 else ""
    except UnicodeDecodeError:
        guess = ""
    return line, col, "", (f"line {line}, column {col}: not UTF-8 (byte 0x{byte:02x}{guess}); "
                           "save the file as UTF-8")


def load(path: str | os.PathLike, *, env: Mapping[str, str] | None = None) -> GatewayConfig:
    """Read, parse, expand and validate a config file; raise ConfigError on any mistake."""
    p = Path(path)
    return loads(read_text(p), str(p), p.resolve().parent, env=env)


def _resolve_path(base: Path, path: str) -> str:
    """``path`` (``~`` expanded) against ``base``, normalised (``cfg/../run`` is ``run``); "" stays ""."""
    return os.path.normpath(base / os.path.expanduser(path)) if path else path


def _resolve_paths(cfg: GatewayConfig, base_dir: Path | None, source: str) -> GatewayConfig:
    """Relative paths (state directory, TLS files, secrets file) against the config file's folder.

    The service runs with ``/`` as its working directory, so ``ca_file: certs/ca.pem`` next to
    the config must not mean ``/certs/ca.pem``.
    """
    import dataclasses

    base = base_dir or Path.cwd()

    def at(path: str) -> str:
        return _resolve_path(base, path)

    gw = dataclasses.replace(cfg.gateway, state_dir=at(cfg.gateway.state_dir))
    b = cfg.broker
    tls = b.tls and dataclasses.replace(b.tls, ca_file=at(b.tls.ca_file), cert_file=at(b.tls.cert_file),
                                        key_file=at(b.tls.key_file))
    broker = dataclasses.replace(b, tls=tls, secrets_file=at(b.secrets_file))
    return dataclasses.replace(cfg, gateway=gw, broker=broker, source=source)


def read_state_dir(path: str | os.PathLike, *, env: Mapping[str, str] | None = None) -> Path | None:
    """``gateway.state_dir`` of a config file that may not load, resolved as :func:`load` resolves it.

    For finding a running daemon's control socket while the file on disk is broken (the daemon
    keeps running the config it loaded last): no schema, and the YAML is read only as far as it
    parses, so a mistake after ``state_dir`` does not matter. ``${NAME}`` is expanded as by
    :func:`load`. None when there is no usable value (missing, not a string, a mistake before it,
    an unset ``${NAME}``); ConfigError if the file cannot be read.
    """
    p = Path(path)
    text = read_text(p)
    node = _state_dir_scalar(text)
    if node is None:
        return None
    try:
        expand_env(node, text, str(p), os.environ if env is None else env)
    except ConfigError:
        return None
    return Path(_resolve_path(p.resolve().parent, node.value)) if node.value else None


def _state_dir_scalar(text: str) -> yaml.ScalarNode | None:
    """The string scalar at ``gateway.state_dir`` of the first document, from the YAML events before any error."""
    found = None
    # per open collection: [key path (None: not followed), is a mapping, key (None: a key comes next;
    # False: a key not followed), is itself a key]
    frames: list[list] = []
    try:
        for ev in yaml.parse(text, Loader=yaml.SafeLoader):
            if isinstance(ev, yaml.DocumentEndEvent):
                break
            top = frames[-1] if frames else None
            in_map = top is not None and top[1]
            if isinstance(ev, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
                is_key = in_map and top[2] is None
                if top is None:
                    where = ()
                elif in_map and not is_key and top[0] is not None and isinstance(top[2], str):
                    where = (*top[0], top[2])
                else:
                    where = None
                if is_key:
                    top[2] = False
                frames.append([where, isinstance(ev, yaml.MappingStartEvent), None, is_key])
            elif isinstance(ev, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
                was_key = frames.pop()[3]
                if frames and frames[-1][1] and not was_key:
                    frames[-1][2] = None
            elif in_map and isinstance(ev, (yaml.ScalarEvent, yaml.AliasEvent)):
                if top[2] is None:
                    top[2] = ev.value if isinstance(ev, yaml.ScalarEvent) else False
                    continue
                if top[0] == ("gateway",) and top[2] == "state_dir":
                    found = None
                    if isinstance(ev, yaml.ScalarEvent):
                        tag = (ev.tag if ev.tag not in (None, "!")
                               else _RESOLVER.resolve(yaml.ScalarNode, ev.value, ev.implicit))
                        if tag == _STR:
                            found = yaml.ScalarNode(_STR, ev.value, ev.start_mark, ev.end_mark, ev.style)
                top[2] = None
    except yaml.YAMLError:
        pass
    return found
