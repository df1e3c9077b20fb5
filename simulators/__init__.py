"""Sensor simulators that speak the drivers' exact wire formats, from seeded scenarios."""
