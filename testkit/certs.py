"""A throwaway PKI for TLS tests, made with the `openssl` command line (no Python crypto package needed):
a CA, and certificates it signs for a server (127.0.0.1 / localhost) or a client. EC P-256 keys: fast to make.
"""
from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

OPENSSL = "openssl"
DAYS = "2"
_KEY = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]


@dataclass(frozen=True)
class Issued:
    cert: Path
    key: Path


def _run(*args: str) -> None:
    subprocess.run([OPENSSL, *args], check=True, timeout=30, capture_output=True)


def make_ca(folder: Path, name: str) -> Issued:
    folder.mkdir(parents=True, exist_ok=True)
    cert, key = folder / f"{name}.crt", folder / f"{name}.key"
    _run("req", "-x509", *_KEY, "-keyout", str(key), "-out", str(cert), "-days", DAYS, "-subj", f"/CN={name}",
         "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
         "-addext", "subjectKeyIdentifier=hash")
    return Issued(cert, key)


def issue(ca: Issued, folder: Path, name: str, server: bool) -> Issued:
    """A leaf certificate signed by `ca`: for a server on 127.0.0.1/localhost, or for a client."""
    cert, key, csr, ext = (folder / f"{name}.crt", folder / f"{name}.key", folder / f"{name}.csr",
                           folder / f"{name}.ext")
    _run("req", *_KEY, "-keyout", str(key), "-out", str(csr), "-subj", f"/CN={name}")
    usage = "serverAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost" if server else "clientAuth"
    ext.write_text(f"basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n"
                   f"authorityKeyIdentifier=keyid,issuer\nextendedKeyUsage={usage}\n")
    _run("x509", "-req", "-in", str(csr), "-CA", str(ca.cert), "-CAkey", str(ca.key), "-CAcreateserial",
         "-out", str(cert), "-days", DAYS, "-extfile", str(ext))
    return Issued(cert, key)


def encrypt_key(key: Path, out: Path, passphrase: str) -> Path:
    """`key` protected with a passphrase (what a daemon cannot use unattended)."""
    _run("pkey", "-in", str(key), "-out", str(out), "-aes256", "-passout", f"pass:{passphrase}")
    return out
