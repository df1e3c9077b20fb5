"""edge-gateway: a street-cabinet IoT gateway daemon.

Data flows one way: drivers -> batcher -> analytics kernels -> aggregates and
events -> durable queue -> MQTT uplink. Only :mod:`edge_gateway.daemon` wires
the parts together.
"""

__version__ = "0.1.0"
