"""Where Numba keeps the compiled kernels: a folder per version of the code it compiled; and
:class:`Compiler`, which compiles them beside the event loop.

Numba's ``cache=True`` checks a kernel's own source file, not the helpers or the
Numba and Python it was built with, and never deletes anything. Keying the folder on
all of them means an upgrade can never load stale machine code, and removing the
folders of older versions keeps them from piling up on the SD card.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import importlib.util
import logging
import re
import shutil
import sys
import threading
from pathlib import Path
from typing import Callable

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
    """``root/<code_tag>``: the folder of the running code version (nothing is created or deleted)."""
    return root / code_tag()


def prune(root: Path) -> None:
    """Delete the tag folders under ``root`` of every code version but the running one.

    The daemon calls it only once it holds the state directory's lock, so a second
    ``run`` that is then refused cannot delete the cache of the gateway that is running.
    """
    tag = code_tag()
    if root.is_dir():
        for old in root.iterdir():
            if old.is_dir() and _TAG.fullmatch(old.name) and old.name != tag:
                shutil.rmtree(old, ignore_errors=True)
                log.info("removed the Numba cache of another code version: %s", old)


class Compiler:
    """Runs kernel compiles in daemon threads of their own, each seen from asyncio as a future.

    Not the default executor, which ``asyncio.run`` joins at exit: nothing interrupts a compile,
    and on a Pi one takes minutes. Cancelling a future abandons its compile; :attr:`busy` then
    tells the daemon not to let the interpreter shut down around it.
    """

    def __init__(self) -> None:
        self._threads: set[threading.Thread] = set()

    def submit(self, fn: Callable, *args) -> asyncio.Future:
        """``fn(*args)`` in a new thread; a future, of the running loop, of its result."""
        loop = asyncio.get_running_loop()
        fut = loop.create_future()

        def settle(result, exc) -> None:
            if not fut.done():
                if exc is None:
                    fut.set_result(result)
                else:
                    fut.set_exception(exc)

        def work() -> None:
            result, exc = None, None
            try:
                result = fn(*args)
            except Exception as e:  # noqa: BLE001 - handed to whoever awaits the future
                exc = e
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
                loop.call_soon_threadsafe(settle, result, exc)

        thread = threading.Thread(target=work, name="kernel-compile", daemon=True)
        self._threads = {t for t in self._threads if t.is_alive()} | {thread}
        thread.start()
        return fut

    @property
    def busy(self) -> bool:
        """A compile is still running (perhaps one nobody waits for any more)."""
        return any(t.is_alive() for t in self._threads)
