"""Is the system clock synchronised? Asked by :mod:`.clockhold` before it lets readings through.

A Raspberry Pi has no RTC: until NTP's first sync its clock is at the last time fake-hwclock saved,
or at 1970. The kernel knows: ``adjtimex(2)`` with ``modes = 0`` only reads, and returns
``TIME_ERROR`` (5) while the clock is not synchronised (``STA_UNSYNC``, which every NTP client clears
once it has set the clock), 0-4 once it is. But the shipped unit (``ProtectClock=yes``,
``SystemCallFilter=~@privileged``) denies even the read-only call with EPERM (systemd issue
#26413), so then systemd-timesyncd's flag answers instead: it creates
``/run/systemd/timesync/synchronized`` at its first sync and its folder when it starts. With neither
(chrony or ntpd under the unit, no timesyncd) the answer is "unknown", and the caller does not wait.
"""

from __future__ import annotations

import ctypes
import errno
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

TIME_ERROR = 5  # adjtimex(2): the clock is not synchronised
TIMESYNC_DIR = Path("/run/systemd/timesync")  # systemd-timesyncd's runtime folder


@dataclass(frozen=True)
class SyncState:
    """``synced``: True, False, or None when no source can tell; ``source``: which one answered, or why none."""

    synced: bool | None
    source: str


class _Timex(ctypes.Structure):
    """struct timex up to ``status`` and padded past its end (208 bytes on 64-bit Linux): only read."""

    _fields_ = [("modes", ctypes.c_uint), ("offset", ctypes.c_long), ("freq", ctypes.c_long),
                ("maxerror", ctypes.c_long), ("esterror", ctypes.c_long), ("status", ctypes.c_int),
                ("_rest", ctypes.c_byte * 256)]


_libc = None


def read_timex() -> tuple[int, int, int]:
    """``adjtimex(2)`` with ``modes = 0`` (nothing set): the clock state it returns, ``status`` and
    ``maxerror`` (us); OSError when refused. ``edge-gateway doctor`` shows the same call's answer."""
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)  # on first use, not at import
    tx = _Timex()
    state = _libc.adjtimex(ctypes.byref(tx))
    if state < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return int(state), int(tx.status), int(tx.maxerror)


def read_adjtimex() -> int:
    """The clock state ``adjtimex(2)`` returns with ``modes = 0``; OSError when refused."""
    return read_timex()[0]


class ClockSync:
    """The oracle: :meth:`state` reads the kernel's clock state, or systemd-timesyncd's flag when the
    kernel may not be asked. ``adjtimex`` and ``timesync_dir`` are for tests."""

    def __init__(self, adjtimex: Callable[[], int] = read_adjtimex, timesync_dir: Path | str = TIMESYNC_DIR) -> None:
        self.adjtimex = adjtimex
        self.timesync_dir = Path(timesync_dir)
        self._refused = ""  # why adjtimex failed: not asked again (a seccomp filter does not go away)

    def state(self) -> SyncState:
        if not self._refused:
            try:
                state = self.adjtimex()
            except (OSError, AttributeError) as exc:  # AttributeError: a libc without adjtimex
                code = getattr(exc, "errno", None)
                self._refused = f"adjtimex refused ({errno.errorcode.get(code, code) if code else exc})"
            else:
                return SyncState(state != TIME_ERROR, "adjtimex")
        flag = self.timesync_dir / "synchronized"
        if flag.exists():
            return SyncState(True, f"{self._refused}; {flag} exists")
        if self.timesync_dir.is_dir():
            return SyncState(False, f"{self._refused}; {self.timesync_dir} without synchronized")
        return SyncState(None, f"{self._refused}, and no {self.timesync_dir} (systemd-timesyncd not running)")
