"""TLS for chat clients: the server context, built once from PEM files.

``CHAT_TLS_LISTEN`` serves the same line protocol as ``CHAT_LISTEN`` over TLS
(trio's ``SSLStream``); the listener (:mod:`services.gateway.server`) does the
handshake under ``CHAT_TLS_HANDSHAKE_TIMEOUT_S``.  Everything wrong with the
files is a :class:`~services.common.config.ConfigError` of one line, raised at
start, never a traceback.
"""

from __future__ import annotations

import ssl

from services.common.config import ConfigError, Settings


def server_context(settings: Settings) -> ssl.SSLContext | None:
    """The server-side context for ``settings`` (``None`` when TLS is off).

    Raises :class:`ConfigError` when a file is missing or unreadable, is not
    PEM, the key does not match the certificate, or the key is encrypted.
    """
    if settings.tls_listen is None:
        return None
    for variable, path in (("CHAT_TLS_CERT", settings.tls_cert), ("CHAT_TLS_KEY", settings.tls_key)):
        try:
            with open(path, "rb") as file:
                file.read(1)
        except OSError as exc:
            raise ConfigError(f"cannot read {variable} {path!r}: {exc.strerror or exc}") from None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        # An encrypted key would make OpenSSL prompt on the terminal: refuse it instead.
        context.load_cert_chain(settings.tls_cert, settings.tls_key, password=_no_password)
    except ssl.SSLError as exc:
        reason = exc.reason or str(exc)
        raise ConfigError(
            f"CHAT_TLS_CERT {settings.tls_cert!r} and CHAT_TLS_KEY {settings.tls_key!r} are not a "
            f"usable PEM certificate chain and its unencrypted private key ({reason})"
        ) from None
    return context


def _no_password() -> bytes:
    return b""
