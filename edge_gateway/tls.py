"""The TLS client context the uplink connects with, built from the TLS files as they are now.

Apart from the link because it is a job of its own: reading and checking files (the key file follows
the secrets file's mode rule, an encrypted key is refused, and errors name the file, as ssl's own
messages do not). The link builds a new context before every connect, so that files renewed in
place are used without a restart (``MqttLink._prepare`` in uplink.py). Not here: handing the context
to paho (``mqtt_client.Client.use_tls_context``).
"""

from __future__ import annotations

import os
import ssl

from . import secrets
from .config import TlsSection


class TlsFilesError(Exception):
    """A TLS file cannot be used now (missing, unreadable, malformed, or cert and key do not match)."""


def _encrypted_key() -> bytes:
    raise TlsFilesError("the key is encrypted (a passphrase-protected key is not supported)")


def tls_context(tls: TlsSection, strict: bool = False) -> tuple[ssl.SSLContext, str]:
    """A new client context from the TLS files as they are now, and the key file's mode warning ("").

    The key file follows the secrets file's mode rule (:func:`secrets.mode_problem`; ``strict`` refuses
    with :class:`secrets.SecretsError`). Errors name the file: ssl's own messages do not."""
    warning = ""
    if tls.key_file:
        try:
            st = os.stat(tls.key_file)
        except OSError as exc:
            raise TlsFilesError(f"TLS key file {tls.key_file}: cannot open: {exc.strerror}") from None
        warning = secrets.mode_problem(tls.key_file, st.st_mode, strict, what="TLS key file")
    what = f"CA file {tls.ca_file}"
    try:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=tls.ca_file)
        if tls.cert_file:
            what = f"certificate {tls.cert_file} with key {tls.key_file}"
            ctx.load_cert_chain(tls.cert_file, tls.key_file or None, password=_encrypted_key)
    except TlsFilesError as exc:
        raise TlsFilesError(f"TLS {what}: {exc}") from None
    except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
        raise TlsFilesError(f"TLS {what}: cannot load: {exc.strerror or exc}") from None
    ctx.check_hostname = tls.check_hostname
    return ctx, warning
