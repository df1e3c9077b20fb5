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

What needs a restart (the reload is refused, the old config keeps running):
``gateway.id``, ``gateway.topic_prefix``, ``gateway.state_dir``, ``queue``,
``windows`` (open windows would change length half-way) and ``metrics``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from .config import GatewayConfig

RESTART_FIELDS = ("gateway.id", "gateway.topic_prefix", "gateway.state_dir", "queue", "windows", "metrics")


@dataclass(frozen=True)
class ReloadPlan:
    stop: tuple[str, ...] = ()  # sensors to stop (removed, or changed: also in ``start``)
    start: tuple[str, ...] = ()  # sensors to start (new, or changed)
    keep: tuple[str, ...] = ()  # sensors left running untouched
    broker_changed: bool = False
    detector_changed: bool = False
    other_changed: tuple[str, ...] = ()  # live settings: log_level, batch interval...
    restart_required: tuple[str, ...] = ()  # changed settings a reload cannot apply

    @property
    def ok(self) -> bool:
        return not self.restart_required

    @property
    def changed(self) -> bool:
        return bool(self.stop or self.start or self.broker_changed or self.detector_changed
                    or self.other_changed or self.restart_required)

    def reason(self) -> str:
        """Why the plan cannot be applied live ('' when it can)."""
        if self.ok:
            return ""
        return f"needs a restart to change {', '.join(self.restart_required)}"

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
        other_changed=tuple(live), restart_required=restart,
    )
