"""Sensor drivers, one module each, found by the name the config gives.

This registry is the one place a new driver is named: add its module here and
write the module; nothing in the core changes. Modules are imported only when a
config asks for them, so an optional dependency (aiocoap, pymodbus) is needed
only by the gateways that use it.
"""

from __future__ import annotations

import importlib

from .base import Driver

_MODULES: dict[str, str] = {
    "serial_line": "drivers.serial_line",
    "pms5003": "drivers.pms5003",
    "modbus_rtu": "drivers.modbus_rtu",
    "coap": "drivers.coap",
}


def names() -> list[str]:
    """Every driver name a config may use."""
    return sorted(_MODULES)


def get(name: str) -> type[Driver]:
    """The driver class registered under ``name``; KeyError if there is none."""
    module = importlib.import_module(_MODULES[name])
    return module.DRIVER
