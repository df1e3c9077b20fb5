"""Resident-memory hygiene for a gateway with 1 GB of RAM: a cap on glibc's malloc arenas and
giving freed heap back to the kernel after start-up.

glibc gives every thread that calls malloc its own arena (up to 8 per core), and
frees into an arena seldom shrink it: warming the kernels in an executor thread
leaves megabytes of freed LLVM scratch resident. Both calls are no-ops where the
C library is not glibc.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib
import logging
import sys

log = logging.getLogger(__name__)

_M_ARENA_MAX = -8


def _glibc():
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # noqa: B018 - only glibc has it
    except (OSError, AttributeError):
        return None
    return libc


def limit_arenas(n: int = 2) -> bool:
    """Let at most ``n`` malloc arenas exist (``M_ARENA_MAX``); call before threads start."""
    libc = _glibc()
    return bool(libc and libc.mallopt(_M_ARENA_MAX, int(n)) == 1)


def trim() -> bool:
    """Return free heap pages of every arena to the kernel (``malloc_trim(0)``)."""
    libc = _glibc()
    return bool(libc and libc.malloc_trim(0))


@contextlib.contextmanager
def numba_without_cffi():
    """Let Numba build its typing tables without importing cffi, then allow cffi again.

    Numba imports cffi (and pycparser's parser tables, about 1.6 MB resident)
    whenever it is installed, to type cffi functions; our kernels call none.
    cffi stays importable for anything else once the kernels are loaded.
    """
    blocked = "cffi" not in sys.modules
    if blocked:
        sys.modules["cffi"] = None  # type: ignore[assignment]
    try:
        with contextlib.suppress(ImportError):
            importlib.import_module("numba.core.typing.cffi_utils")
        yield
    finally:
        if blocked and sys.modules.get("cffi", 0) is None:
            del sys.modules["cffi"]
