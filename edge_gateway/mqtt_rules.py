"""What MQTT itself allows and says, apart from any client: the topics a PUBLISH can carry, the size of a
PUBLISH as a broker's Maximum Packet Size counts it, and what a disconnect's reason code means to a
technician. Pure functions; uplink.py applies them before paho sees a message.
"""

from __future__ import annotations

from .config import MAX_TOPIC


def topic_problem(topic: str) -> str:
    """Why MQTT cannot carry a PUBLISH on ``topic`` ("" if it can); checked before paho, which raises."""
    if not isinstance(topic, str) or not topic:
        return "empty topic" if isinstance(topic, str) else "topic is not a string"
    if "+" in topic or "#" in topic:
        return "wildcard in topic"
    if "\0" in topic:
        return "NUL in topic"
    try:
        n = len(topic.encode("utf-8"))
    except UnicodeEncodeError:
        return "topic is not valid UTF-8"
    if n > MAX_TOPIC:
        return f"topic is {n} bytes (MQTT allows {MAX_TOPIC})"
    return ""


class TopicError(RuntimeError):
    """``publish()`` refused a topic MQTT cannot carry. A RuntimeError, as callers already handle
    a publish that cannot be made, so a bad reply topic costs one log line, not the link."""


def publish_size(topic: str, payload: bytes, v5: bool) -> int:
    """Bytes of a QoS 1 PUBLISH without properties, as a CONNACK's Maximum Packet Size counts them."""
    rest = 2 + len(topic.encode()) + 2 + v5 + len(payload)
    return 1 + (1 if rest < 0x80 else 2 if rest < 0x4000 else 3 if rest < 0x200000 else 4) + rest


def disconnect_reason(reason_code, from_server: bool) -> str:
    """A disconnect's reason for the log and ``status``. paho reports a connection that ended without
    a DISCONNECT packet (the broker stopped, crashed or became unreachable) as "Unspecified error"
    (0x80): say what that means, keeping the code; a broker's own DISCONNECT keeps its reason."""
    if not from_server and reason_code.value == 0x80:
        return f"the broker closed the connection or became unreachable (reason code {reason_code.value})"
    return str(reason_code)
