"""A pseudo-terminal pair standing in for a serial device, optionally behind a stable link.

The simulator writes to the master side; the gateway opens the slave path (or
the symlink ``link``, as a ``/dev/serial/by-id/...`` name would be).
"""

from __future__ import annotations

import errno
import os
import time
import tty


class LinkError(OSError):
    """The pty was opened but ``link`` could not be made (it is closed again); ``filename`` is the link."""


def _is_pty_link(path: str) -> bool:
    """True for a symlink to a pseudo-terminal slave, such as one an earlier run left behind."""
    try:
        return os.readlink(path).startswith("/dev/pts/")
    except OSError:
        return False


class PtyPort:
    def __init__(self, link: str | None = None, nonblocking: bool = False) -> None:
        self.master, self.slave = os.openpty()
        tty.setraw(self.slave)
        self.nonblocking = nonblocking
        self.dropped = 0  # bytes try_write could not write (nobody read them in time)
        if nonblocking:
            os.set_blocking(self.master, False)
        self.slave_path = os.ttyname(self.slave)
        self.link = link
        if link:
            try:
                self._make_link(link)
            except BaseException as exc:
                self.link = None
                self.close()
                if isinstance(exc, OSError) and not isinstance(exc, LinkError):
                    raise LinkError(exc.errno, exc.strerror or str(exc), link) from exc
                raise

    def _make_link(self, link: str) -> None:
        """Point ``link`` at the pty; an old link to a pty is replaced, anything else there is refused
        (a typo such as ``--link gateway.yaml`` must not destroy that file). A missing parent folder
        is created, as ``mkdir -p`` would."""
        parent = os.path.dirname(link)
        if parent and not os.path.isdir(parent):
            try:
                os.makedirs(parent)
            except FileExistsError:
                pass  # a file in the way: os.symlink below reports it (ENOTDIR)
        try:
            os.symlink(self.slave_path, link)
            return
        except FileExistsError:
            if not _is_pty_link(link):
                raise FileExistsError(errno.EEXIST, "exists and is not a link to a pseudo-terminal, "
                                                    "not replacing it", link) from None
        tmp = f"{link}.tmp{os.getpid()}"
        os.symlink(self.slave_path, tmp)
        try:
            os.replace(tmp, link)
        except BaseException:
            os.unlink(tmp)
            raise

    @property
    def path(self) -> str:
        return self.link or self.slave_path

    def opened_by_other(self) -> bool:
        """True once another process holds the slave open (pyserial flushes input at open)."""
        me = os.getpid()
        for pid in os.listdir("/proc"):
            if not pid.isdigit() or int(pid) == me:
                continue
            try:
                fds = os.listdir(f"/proc/{pid}/fd")
            except OSError:
                continue
            for fd in fds:
                try:
                    if os.readlink(f"/proc/{pid}/fd/{fd}") == self.slave_path:
                        return True
                except OSError:
                    continue
        return False

    def wait_opened(self, timeout: float = 60.0, settle: float = 0.3) -> bool:
        """Block until a reader has opened the port (and had time to flush it), or time out."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.opened_by_other():
                time.sleep(settle)
                return True
            time.sleep(0.05)
        return False

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            n = os.write(self.master, view)
            view = view[n:]

    def try_write(self, data: bytes) -> int:
        """Write what fits without blocking (a nonblocking port); bytes beyond are dropped, as a
        UART nobody reads would lose them (counted in ``dropped``). Returns the number of bytes written."""
        try:
            n = os.write(self.master, data)
        except (BlockingIOError, OSError):
            n = 0
        self.dropped += len(data) - n
        return n

    def read(self, max_bytes: int = 4096) -> bytes:
        """What the gateway wrote to the device (b"" when nothing is waiting on a nonblocking port)."""
        try:
            return os.read(self.master, max_bytes)
        except (BlockingIOError, OSError):
            return b""

    def close(self) -> None:
        if self.link:
            try:
                if os.readlink(self.link) == self.slave_path:
                    os.unlink(self.link)
            except OSError:
                pass
        fds, self.master, self.slave = (self.master, self.slave), -1, -1
        for fd in fds:
            if fd < 0:
                continue
            try:
                os.close(fd)
            except OSError:
                pass
