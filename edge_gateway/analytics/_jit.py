"""Compile kernels with Numba when it is importable; run them as Python when not.

The undecorated function stays reachable as ``kernel.py_func`` in both cases,
so tests compare the compiled and the pure-Python paths on the same inputs.
Numba reads ``NUMBA_CACHE_DIR`` when first imported: the daemon sets it to its
state directory before importing any kernel module.
"""

from __future__ import annotations

from typing import Callable, TypeVar

F = TypeVar("F", bound=Callable)

try:  # pragma: no cover - depends on the platform
    from numba import njit as _njit
    from numba.core import config as _numba_config

    HAVE_NUMBA = not _numba_config.DISABLE_JIT  # NUMBA_DISABLE_JIT=1: the pure-Python path, as without Numba
    if not HAVE_NUMBA:
        _njit = None
except ImportError:  # pragma: no cover
    _njit = None
    HAVE_NUMBA = False


def kernel(fn: F) -> F:
    """Decorate a kernel: ``njit(cache=True, nogil=True)`` or the function itself."""
    if _njit is None:
        fn.py_func = fn  # type: ignore[attr-defined]
        return fn
    return _njit(cache=True, nogil=True)(fn)
