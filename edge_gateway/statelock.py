"""One gateway per state directory: an exclusive ``flock`` on ``<state_dir>/gateway.lock``.

Two gateways on one state directory would share the queue and take the MQTT session (one
client id) from each other. The kernel drops the lock with the process: a crash leaves no
stale lock behind. A missing state directory is made 0750 and the lock 0600, whatever the umask
(private_files.py).
"""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path

from .private_files import STATE_DIR_MODE, make_dir, open_fd

LOCK_FILE = "gateway.lock"


class AlreadyRunning(RuntimeError):
    """Another gateway holds the state directory's lock."""


class NotOurs(RuntimeError):
    """The state directory holds another gateway's queue and state (a different ``gateway.id``)."""


class StateDirLock:
    """The lock of one state directory; holds the pid of its holder for the refusal message."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.path = state_dir / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock now or raise :class:`AlreadyRunning` (never waits)."""
        make_dir(self.state_dir, STATE_DIR_MODE)
        fd = open_fd(self.path, os.O_RDWR | os.O_CLOEXEC)  # 0600 whatever the umask
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
            os.close(fd)
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise
            who = f" (pid {holder})" if holder.isdigit() else ""
            raise AlreadyRunning(f"another edge-gateway{who} is running on state directory {self.state_dir} "
                                 f"(it holds {self.path}); stop it first") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def holder(state_dir: Path) -> int | None:
    """The pid holding ``state_dir``'s lock, from ``/proc/locks`` (None: none, or unknown here).

    ``status`` asks this when the control socket does not answer: a gateway still compiling its
    kernels holds the lock but opens the socket only when ready. Reading ``/proc/locks`` takes no
    lock, so asking cannot make a gateway that is starting at that moment find its directory taken.
    """
    try:
        inode = os.stat(state_dir / LOCK_FILE).st_ino
        with open("/proc/locks", encoding="ascii", errors="replace") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    for line in lines:
        parts = line.split()
        # "1: FLOCK  ADVISORY  WRITE 4373 00:1b:1234 0 EOF" (a waiter has "->" after the id)
        if len(parts) == 8 and parts[1] == "FLOCK" and parts[5].rsplit(":", 1)[-1] == str(inode):
            return int(parts[4]) if parts[4].isdigit() else None
    return None
