"""Pure-Python twins of kernel modules.

``kernel.py_func`` alone is not pure Python: its body still calls the other
*compiled* kernels of its module. :func:`pure_twin` executes a kernel module's
source again with :func:`._jit.kernel` replaced by the identity, so every kernel
and every helper it calls is plain Python. Twins are cached in ``sys.modules``.
"""

from __future__ import annotations

import importlib.util
import sys
from types import ModuleType

from . import _jit


def _identity(fn):
    fn.py_func = fn
    return fn


def pure_twin(module: ModuleType) -> ModuleType:
    name = module.__name__ + "_pure"
    twin = sys.modules.get(name)
    if twin is not None:
        return twin
    spec = importlib.util.spec_from_file_location(name, module.__file__)
    twin = importlib.util.module_from_spec(spec)
    saved = _jit.kernel
    _jit.kernel = _identity
    try:
        spec.loader.exec_module(twin)
    finally:
        _jit.kernel = saved
    twin.pure_module = lambda: twin
    sys.modules[name] = twin
    return twin
