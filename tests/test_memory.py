"""Resident-memory hygiene calls (glibc)."""

import ctypes
import subprocess
import sys

import pytest

from edge_gateway import memory
from support import REPO

glibc = pytest.mark.skipif(memory._glibc() is None, reason="needs glibc")


@glibc
def test_arena_cap_and_trim_are_accepted_by_glibc():
    assert memory.limit_arenas(2) is True
    assert isinstance(memory.trim(), bool)
    assert ctypes.CDLL(None).mallopt(memory._M_ARENA_MAX, 8) == 1  # back to a sane cap for this process


def test_numba_builds_its_tables_without_cffi_and_cffi_stays_importable():
    code = (
        "import sys\n"
        "from edge_gateway import memory\n"
        "with memory.numba_without_cffi():\n"
        "    inside = sys.modules.get('cffi', 'absent')\n"
        "    from numba import njit\n"
        "    assert njit(lambda x: x + 1)(1) == 2\n"
        "from numba.core.typing import cffi_utils\n"
        "import importlib.util\n"
        "loaded = 'cffi' in sys.modules\n"
        "installed = importlib.util.find_spec('cffi') is not None\n"
        "try:\n"
        "    import cffi\n"
        "    importable = True\n"
        "except ImportError:\n"
        "    importable = False\n"
        "print(inside, cffi_utils.SUPPORTED, loaded, installed == importable)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["None", "False", "False", "True"]
