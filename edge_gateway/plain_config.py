"""Config objects as plain data, secrets masked: what ``config show`` and ``get`` print, and how the options
reference writes a default."""

from __future__ import annotations

import dataclasses
import re

MASK = "********"
_SECRET_NAME = re.compile(r"(password|passwd|secret|token|psk|api_key|private_key)", re.I)
_PATH_NAME = re.compile(r"(_file|_path|_dir)$")


def plain(obj, name: str):
    """``obj`` (config dataclasses, dicts, lists) as plain data; ``name`` is its key, by which a secret is known."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        out = {}
        for f in dataclasses.fields(obj):
            if f.metadata.get("internal"):
                continue
            value = getattr(obj, f.name)
            if f.metadata.get("secret_path") or f.metadata.get("secret"):
                out[f.name] = value if (value and f.metadata.get("secret_path")) else (MASK if value else value)
                continue
            out[f.name] = plain(value, f.name)
        return out
    if isinstance(obj, dict):
        return {str(k): plain(v, str(k)) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v, name) for v in obj]
    if isinstance(obj, str) and obj and _SECRET_NAME.search(name) and not _PATH_NAME.search(name):
        return MASK
    return obj
