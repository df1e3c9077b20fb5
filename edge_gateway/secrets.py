"""MQTT credentials from a secrets file, read at connect time only.

The file holds two lines (a YAML subset)::

    username: gateway-17
    password: "s3cret: with colon"

Blank lines and ``#`` comments are ignored; values may be quoted. The file must
not be readable by group or others (mode 0600 or stricter, or a systemd
``LoadCredential=`` file under ``$CREDENTIALS_DIRECTORY``): otherwise a warning
is logged, or, with ``broker.strict_secrets: true``, the gateway refuses to
connect. The values are never logged and never stored in a config object; the
returned :class:`Credentials` hides the password in its repr.
"""

from __future__ import annotations

import logging
import os
import stat
from typing import NamedTuple

log = logging.getLogger(__name__)
MAX_SIZE = 64 * 1024


class SecretsError(Exception):
    """The secrets file is missing, unsafe (strict mode) or malformed. The message holds no secret."""


class Credentials(NamedTuple):
    username: str
    password: str

    def __repr__(self) -> str:
        return f"Credentials(username={self.username!r}, password=<hidden>)"

    __str__ = __repr__


def parse(text: str) -> Credentials:
    values: dict[str, str] = {}
    for n, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        key, sep, value = stripped.partition(":")
        key, value = key.strip(), value.strip()
        if not sep or key not in ("username", "password"):
            raise SecretsError(f"line {n}: expected 'username: ...' or 'password: ...'")
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        if key in values:
            raise SecretsError(f"line {n}: {key} given twice")
        values[key] = value
    if "username" not in values:
        raise SecretsError("no 'username:' line")
    return Credentials(values["username"], values.get("password", ""))


def mode_problem(path: str, mode: int, strict: bool = False, what: str = "secrets file") -> str:
    """The rule for files that hold secrets (this one, the TLS client key): "" when only the owner may
    access the file, else the warning to log; with ``strict`` raise :class:`SecretsError` instead."""
    if not mode & (stat.S_IRWXG | stat.S_IRWXO):
        return ""
    msg = f"{what} {path} is accessible by group/others (mode {stat.S_IMODE(mode):04o}); chmod 600 it"
    if strict:
        raise SecretsError(msg + " (refused: broker.strict_secrets is true)")
    return msg


def load(path: str, strict: bool = False) -> Credentials:
    """Read and check the secrets file; raise :class:`SecretsError` (never with a secret in it)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as exc:
        raise SecretsError(f"secrets file {path}: cannot open: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        msg = mode_problem(path, st.st_mode, strict)
        if msg:
            log.warning("%s", msg)
        if st.st_size > MAX_SIZE:
            raise SecretsError(f"secrets file {path}: larger than {MAX_SIZE} bytes")
        data = os.read(fd, MAX_SIZE + 1)
    finally:
        os.close(fd)
    try:
        return parse(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise SecretsError(f"secrets file {path}: not UTF-8") from None
    except SecretsError as exc:
        raise SecretsError(f"secrets file {path}: {exc}") from None
