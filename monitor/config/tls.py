"""Checks of TLS files named in the config (mqtt.tls): loaded with the same ssl calls paho's tls_set makes, so
that a wrong file is a config error naming its key and path at load time, not a handshake failure later.
"""
from __future__ import annotations

import re
import ssl
from pathlib import Path

from monitor.config.fields import problem, read_secret

_SSL_SOURCE = re.compile(r"\s*\(_ssl\.c:\d+\)")


class _Encrypted(Exception):
    pass


def _ask_password() -> bytes:
    # Without a password callback OpenSSL would prompt on the terminal (none under systemd): refuse instead.
    raise _Encrypted()


def _reason(exc: ssl.SSLError) -> str:
    text = str(exc.args[1]) if len(exc.args) > 1 else str(exc)
    return _SSL_SOURCE.sub("", text).strip()


def check_ca_file(file: Path, key: str) -> None:
    """`file` is readable and holds at least one PEM certificate OpenSSL accepts as a trust anchor."""
    if "-----BEGIN CERTIFICATE-----" not in read_secret(file, key):
        raise problem(f"'{file}' holds no PEM certificate (-----BEGIN CERTIFICATE-----)", show_value=False)
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cafile=str(file))
    except ssl.SSLError as exc:
        raise problem(f"'{file}' is not a usable CA certificate: {_reason(exc)}", show_value=False) from None


def check_client_certificate(cert: Path, key: Path | None, cert_field: str, key_field: str) -> None:
    """The client certificate and its private key (in `key`, or in `cert` too when key is None) load together;
    an error names `key_field` when a key file is given, else `cert_field`."""
    if "-----BEGIN CERTIFICATE-----" not in read_secret(cert, cert_field):
        raise problem(f"'{cert}' holds no PEM certificate (-----BEGIN CERTIFICATE-----)", show_value=False,
                      sibling=cert_field)
    if key is not None:
        read_secret(key, key_field)
    blame = key_field if key is not None else cert_field
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_cert_chain(str(cert), str(key) if key else None,
                                                                 password=_ask_password)
    except _Encrypted:
        raise problem(f"'{key or cert}': the private key is encrypted with a passphrase, which the daemon "
                      f"cannot type in; decrypt it (openssl pkey -in KEY -out KEY.plain) and protect it by "
                      f"file permissions", show_value=False, sibling=blame) from None
    except ssl.SSLError as exc:
        if key is None:
            raise problem(f"cannot load client certificate '{cert}': {_reason(exc)} (without key_file the file "
                          f"must hold the private key too)", show_value=False, sibling=blame) from None
        raise problem(f"cannot load client certificate '{cert}' with key '{key}': {_reason(exc)}",
                      show_value=False, sibling=blame) from None
