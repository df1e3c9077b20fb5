"""Files and folders the daemon creates in its state directory, private whatever the umask.

Under the systemd unit (``UMask=0077``) everything the daemon creates is private anyway; run by hand
with the usual umask 022 the queue (every reading not yet sent, the broker's topics), the lock and
``last-run.json`` came out 0644, readable by every account on the box. Here files are created 0600 and
folders 0700 with an explicit ``chmod`` after creation (the umask cannot widen or narrow them). The state
directory itself is :data:`STATE_DIR_MODE`, 0750 as the unit's ``StateDirectoryMode=``: its group may
reach the control socket (0660, control.py) and list names, and read no file.

What already exists keeps the mode an operator gave it, except one writable by everyone (a
``chmod -R 777``): that is narrowed to the private mode and logged, since anyone could then rewrite the
queue. Only what this process's user owns is changed, never a sticky folder (``/tmp`` as a state
directory), and symbolic links are not followed.

Not here: what goes in those files (queue.py, statelock.py, daemon.py) and the control socket's mode.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

log = logging.getLogger(__name__)

FILE_MODE = 0o600
DIR_MODE = 0o700
STATE_DIR_MODE = 0o750  # as StateDirectoryMode= in the unit (cmd_service.py): the group reaches control.sock


def make_dir(path: str | os.PathLike, mode: int = DIR_MODE) -> Path:
    """``path`` as a folder: created with exactly ``mode`` if missing (its missing parents as the umask
    says: they are outside the state directory), else left as it is unless world-writable."""
    path = Path(path)
    if not path.is_dir():
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.mkdir(path, mode)
        except FileExistsError:  # made meanwhile by someone else: treat it as existing
            pass
        else:
            os.chmod(path, mode)
            return path
    tighten(path, mode)
    return path


def create_file(path: str | os.PathLike, mode: int = FILE_MODE) -> bool:
    """Make sure ``path`` exists before something else opens it (SQLite, which gives its -wal and -shm
    the database file's mode): created empty with exactly ``mode`` if missing; True if it was created."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    except FileExistsError:
        tighten(path, mode)
        return False
    try:
        os.fchmod(fd, mode)
    finally:
        os.close(fd)
    return True


def open_fd(path: str | os.PathLike, flags: int, mode: int = FILE_MODE) -> int:
    """``os.open(path, flags | O_CREAT)`` whose file, if this call created it, has exactly ``mode``."""
    try:
        fd = os.open(path, flags | os.O_CREAT | os.O_EXCL, mode)
    except FileExistsError:
        tighten(path, mode)
        return os.open(path, flags & ~os.O_EXCL | os.O_CREAT, mode)
    try:
        os.fchmod(fd, mode)
    except BaseException:
        os.close(fd)
        raise
    return fd


def write_text(path: str | os.PathLike, text: str, mode: int = FILE_MODE) -> None:
    """``Path.write_text`` for a file of the state directory: created with exactly ``mode``."""
    fd = open_fd(path, os.O_WRONLY | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)


def tighten(path: str | os.PathLike, mode: int) -> bool:
    """Narrow an existing ``path`` writable by everyone to ``mode`` (see the module docstring); any other
    mode is the operator's and is kept. True if it was changed."""
    try:
        st = os.lstat(path)
    except OSError:
        return False
    if (not st.st_mode & stat.S_IWOTH or stat.S_ISLNK(st.st_mode) or st.st_uid != os.geteuid()
            or (stat.S_ISDIR(st.st_mode) and st.st_mode & stat.S_ISVTX)):
        return False
    try:
        os.chmod(path, mode)  # not a link (lstat above)
    except OSError as exc:
        log.warning("%s is writable by everyone (mode %04o) and could not be made private: %s",
                    path, stat.S_IMODE(st.st_mode), exc)
        return False
    log.warning("%s was writable by everyone (mode %04o): made %04o", path, stat.S_IMODE(st.st_mode), mode)
    return True
