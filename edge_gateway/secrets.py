"""MQTT credentials from a secrets file, read at connect time only.

The file holds two lines (a YAML subset)::

    username: gateway-17
    password: "s3cret: with colon"

Blank lines and ``#`` comments are ignored; values may be quoted. A file with
no entries is an error that says a broker without a password needs no
``secrets_file`` (the unit's fallback credential, used when its source file is
missing, is such a file). The file must not be accessible by group or others
(mode 0600 or stricter): otherwise a warning is logged, or, with
``broker.strict_secrets: true``, the gateway refuses to connect. A file directly
in ``$CREDENTIALS_DIRECTORY`` (systemd ``LoadCredential=``) may also be
group-readable: newer systemd grants the service user read access with an ACL,
which stat() shows in the group bits (0440). The values are never logged and
never stored in a config object; the returned :class:`Credentials` hides the
password in its repr.
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


class EmptySecrets(SecretsError):
    """The file has no entries (blank or comments only)."""


EMPTY_HINT = ("a broker without a password needs no secrets_file: remove broker.secrets_file from the config; "
              "otherwise write its 'username: ...' and 'password: ...' lines")


def parse(text: str) -> Credentials:
    values: dict[str, str] = {}
    if not any(ln.strip() and not ln.strip().startswith("#") for ln in text.splitlines()):
        raise EmptySecrets(f"empty: {EMPTY_HINT}")
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


def in_credentials_dir(path: str) -> bool:
    """Whether ``path`` lies directly in ``$CREDENTIALS_DIRECTORY`` (set by systemd inside the service only)."""
    creds = os.environ.get("CREDENTIALS_DIRECTORY")
    return bool(creds) and os.path.dirname(os.path.abspath(path)) == os.path.abspath(creds)


def mode_problem(path: str, mode: int, strict: bool = False, what: str = "secrets file") -> str:
    """The rule for files that hold secrets (this one, the TLS client key): "" when only the owner may
    access the file (or, in ``$CREDENTIALS_DIRECTORY``, also read it by its group bits: systemd's ACL),
    else the warning to log; with ``strict`` raise :class:`SecretsError` instead."""
    allowed = stat.S_IRGRP if in_credentials_dir(path) else 0
    if not mode & (stat.S_IRWXG | stat.S_IRWXO) & ~allowed:
        return ""
    msg = f"{what} {path} is accessible by group/others (mode {stat.S_IMODE(mode):04o}); chmod 600 it"
    if strict:
        raise SecretsError(msg + " (refused: broker.strict_secrets is true)")
    return msg


def load(path: str, strict: bool = False) -> Credentials:
    """Read and check the secrets file; raise :class:`SecretsError` (never with a secret in it)."""
    creds, warning = read(path, strict)
    if warning:
        log.warning("%s", warning)
    return creds


def read(path: str, strict: bool = False) -> tuple[Credentials, str]:
    """:func:`load` without logging: the credentials and the mode warning ("" if none), for ``doctor``."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as exc:
        raise SecretsError(f"secrets file {path}: cannot open: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        msg = mode_problem(path, st.st_mode, strict)
        if st.st_size > MAX_SIZE:
            raise SecretsError(f"secrets file {path}: larger than {MAX_SIZE} bytes")
        data = os.read(fd, MAX_SIZE + 1)
    finally:
        os.close(fd)
    try:
        return parse(data.decode("utf-8")), msg
    except UnicodeDecodeError:
        raise SecretsError(f"secrets file {path}: not UTF-8") from None
    except EmptySecrets:
        source = " (in $CREDENTIALS_DIRECTORY: the unit's LoadCredential= source file is missing or empty)" \
            if in_credentials_dir(path) else ""
        raise SecretsError(f"secrets file {path} is empty{source}: {EMPTY_HINT}") from None
    except SecretsError as exc:
        raise SecretsError(f"secrets file {path}: {exc}") from None
