"""Where Numba keeps the compiled kernels: a folder per version of the code it compiled.

Numba's ``cache=True`` checks a kernel's own source file, not the helpers or the
Numba and Python it was built with, and never deletes anything. Keying the folder on
all of them means an upgrade can never load stale machine code, and removing the
folders of older versions keeps them from piling up on the SD card.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import re
import shutil
import sys
from pathlib import Path

log = logging.getLogger(__name__)

_TAG = re.compile(r"[0-9a-f]{16}")


def code_tag() -> str:
    """16 hex digits from the analytics sources and the Numba and Python versions."""
    h = hashlib.sha256()
    spec = importlib.util.find_spec("numba")  # found, not imported: it reads NUMBA_CACHE_DIR on import
    version = Path(spec.origin).with_name("_version.py") if spec and spec.origin else None
    h.update(version.read_bytes() if version and version.is_file() else b"no numba")
    h.update(sys.version.encode())
    pkg = Path(__file__).resolve().parent / "analytics"
    for src in sorted(pkg.glob("*.py")):
        h.update(src.name.encode() + b"\0" + src.read_bytes())
    return h.hexdigest()[:16]


def cache_dir(root: Path) -> Path:
    """``root/<code_tag>``, after deleting the tag folders of other versions under ``root``."""
    tag = code_tag()
    if root.is_dir():
        for old in root.iterdir():
            if old.is_dir() and _TAG.fullmatch(old.name) and old.name != tag:
                shutil.rmtree(old, ignore_errors=True)
                log.info("removed the Numba cache of another code version: %s", old)
    return root / tag
