"""Planning a config reload: what differs between the running config and a new one.

Pure: two :class:`~edge_gateway.config.GatewayConfig` objects in, a
:class:`ReloadPlan` out. :meth:`edge_gateway.daemon.Gateway.reload` carries
the plan out (SIGHUP, ``edge-gateway reload``, and the MQTT ``reload`` command
all end there).

What a reload can change while the gateway runs:

* ``sensors``: a removed sensor's driver is stopped, a new one started, a
  changed one (driver or options) restarted; unchanged sensors keep running
  untouched. A sensor's ``filters`` apply live (its channels' filters start afresh).
  Detector and window state is per (sensor, channel) and is kept for every channel,
  so an unchanged sensor loses nothing.
* ``broker``: the MQTT link is replaced; the durable queue is untouched, and
  what was in flight is sent again (same ``seq``: a duplicate, never a gap).
* ``detector``: thresholds and EWMA settings apply from the next batch.
* ``log_level``, ``gateway.batch_interval_s``, ``gateway.status_interval_s``.
* ``gateway.clock_sync_wait_s``: a wait for the clock's sync in progress takes the new length (0 ends
  it); a wait begins only at a start.

What needs a restart (the reload is refused, the old config keeps running):
``gateway.id``, ``gateway.topic_prefix``, ``gateway.state_dir``, ``queue``,
``windows`` (open windows would change length half-way) and ``metrics``.
A refusal applies nothing from the file, not even its live changes;
:meth:`ReloadPlan.reason` says so, names each such setting down to the value
that changed with its running and its new value, and how to go on. A new
``gateway.id`` on the same ``gateway.state_dir`` needs more than a restart:
the state directory (its queue of unsent messages) belongs to the old id, and
the gateway refuses to start on it (exit 2, which systemd does not restart):
:func:`state_dir_taken` and :func:`new_id_advice` say so, here and in
``doctor`` and ``config set``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from .config import GatewayConfig

RESTART_FIELDS = ("gateway.id", "gateway.topic_prefix", "gateway.state_dir", "queue", "windows", "metrics")
RESTART_HOW = "restart the service (systemctl restart edge-gateway)"


def state_dir_taken(state_dir, owner: str, new_id: str) -> str:
    """Why a gateway ``new_id`` cannot start on ``state_dir``, which ``owner``'s queue is in."""
    return (f"the state directory {state_dir} (its queue of unsent messages) belongs to gateway {owner!r}, "
            f"so gateway {new_id!r} would not start on it")


def new_id_advice(state_dir, owner: str) -> str:
    """How to give a gateway a new ``gateway.id`` when ``state_dir`` belongs to ``owner``, without losing its queue."""
    return (f"let its queue drain under gateway.id {owner!r} (`edge-gateway status` shows the depth), then also "
            f"change gateway.state_dir to a new folder (or move {state_dir} away), then {RESTART_HOW}")


@dataclass(frozen=True)
class ReloadPlan:
    stop: tuple[str, ...] = ()  # sensors to stop (removed, or changed: also in ``start``)
    start: tuple[str, ...] = ()  # sensors to start (new, or changed)
    keep: tuple[str, ...] = ()  # sensors left running untouched
    broker_changed: bool = False
    detector_changed: bool = False
    other_changed: tuple[str, ...] = ()  # live settings: log_level, batch interval...
    restart_required: tuple[str, ...] = ()  # changed settings a reload cannot apply
    # (dotted key down to the changed value, running value, value in the file) of each of those
    restart_changes: tuple[tuple[str, Any, Any], ...] = ()
    state_dir: str = ""  # the running gateway.state_dir

    @property
    def ok(self) -> bool:
        return not self.restart_required

    @property
    def changed(self) -> bool:
        return bool(self.stop or self.start or self.broker_changed or self.detector_changed
                    or self.other_changed or self.restart_required)

    def reason(self) -> str:
        """Why the plan cannot be applied live and what to do ('' when it can), e.g. ``nothing from this file was
        applied; needs a restart: windows.seconds (running 10, file 30); restart the service (systemctl restart
        edge-gateway) or set it back``."""
        if self.ok:
            return ""
        changes = self.restart_changes or tuple((name, _UNKNOWN, _UNKNOWN) for name in self.restart_required)
        keys = ", ".join(name if old is _UNKNOWN else f"{name} (running {_show(old)}, file {_show(new)})"
                         for name, old, new in changes)
        back = "set it back" if len(changes) == 1 else "set them back"
        text = f"nothing from this file was applied; needs a restart: {keys}; "
        ids = [(old, new) for name, old, new in changes if name == "gateway.id"]
        if ids and "gateway.state_dir" not in self.restart_required:
            old, new = ids[0]
            return (f"{text}{state_dir_taken(self.state_dir, old, new)}: {new_id_advice(self.state_dir, old)}; "
                    f"or {back}")
        if "gateway.state_dir" in self.restart_required:  # the new folder starts empty: the old queue stays behind
            return (f"{text}let the queue in {self.state_dir} drain first (`edge-gateway status` shows the depth; what "
                    f"is left stays there unsent), then {RESTART_HOW}; or {back}")
        return f"{text}{RESTART_HOW} or {back}"

    def summary(self) -> dict:
        return {
            "stop": list(self.stop), "start": list(self.start), "keep": list(self.keep),
            "broker_changed": self.broker_changed, "detector_changed": self.detector_changed,
            "other_changed": list(self.other_changed), "restart_required": list(self.restart_required),
        }


def _get(cfg: GatewayConfig, dotted: str):
    obj = cfg
    for part in dotted.split("."):
        obj = getattr(obj, part, None)
    return obj


_UNKNOWN = object()  # a value not known (a plan made without them)
_UNSET = object()  # a key one side does not have


def _leaves(name: str, old, new) -> list[tuple[str, Any, Any]]:
    """The changed values under ``name``: (dotted key down to the value that changed, old value, new value)."""
    if old == new:
        return []
    if dataclasses.is_dataclass(old) and type(old) is type(new) and not isinstance(old, type):
        found = [leaf for f in dataclasses.fields(old)
                 for leaf in _leaves(f"{name}.{f.name}", getattr(old, f.name), getattr(new, f.name))]
        return found or [(name, old, new)]
    if isinstance(old, dict) and isinstance(new, dict):
        found = [leaf for k in sorted(set(old) | set(new), key=str)
                 for leaf in _leaves(f"{name}.{k}", old.get(k, _UNSET), new.get(k, _UNSET))]
        return found or [(name, old, new)]
    return [(name, old, new)]


def _show(value) -> str:
    """A value as a technician compares it: ``10`` (not 10.0), ``'gw-1'``, ``true``, ``null``, ``unset``."""
    if value is _UNSET:
        return "unset"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _driver_of(s) -> tuple:
    """What a sensor's driver is built from: a change restarts it (``filters`` apply live)."""
    return s.driver, s.options


def plan(old: GatewayConfig, new: GatewayConfig) -> ReloadPlan:
    """Compare two configs; see the module docstring for what each difference means."""
    old_s = {s.id: s for s in old.sensors}
    new_s = {s.id: s for s in new.sensors}
    removed = [i for i in old_s if i not in new_s]
    added = [i for i in new_s if i not in old_s]
    changed = [i for i in new_s if i in old_s and _driver_of(new_s[i]) != _driver_of(old_s[i])]
    keep = [i for i in new_s if i in old_s and i not in changed]
    restart = tuple(f for f in RESTART_FIELDS if _get(old, f) != _get(new, f))
    changes = tuple(leaf for f in restart for leaf in _leaves(f, _get(old, f), _get(new, f)))
    live = []
    if old.log_level != new.log_level:
        live.append("log_level")
    live += [f"sensors.{i}.filters" for i in keep if new_s[i].filters != old_s[i].filters]
    old_gw = dataclasses.asdict(old.gateway)
    new_gw = dataclasses.asdict(new.gateway)
    for key in sorted(set(old_gw) | set(new_gw)):
        name = f"gateway.{key}"
        if name not in RESTART_FIELDS and old_gw.get(key) != new_gw.get(key):
            live.append(name)
    return ReloadPlan(
        stop=tuple(removed + changed), start=tuple(changed + added), keep=tuple(keep),
        broker_changed=old.broker != new.broker, detector_changed=old.detector != new.detector,
        other_changed=tuple(live), restart_required=restart, restart_changes=changes,
        state_dir=old.gateway.state_dir,
    )
