"""A throwaway certificate authority and a 127.0.0.1 certificate, for the HTTPS upstream.

Made with the `openssl` command: a CA (which clients trust through its file) signs a leaf for
127.0.0.1, because rustls (the gateway's HTTP/2 client) refuses a self-signed leaf as a root.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Certificates", "make_certificates"]


@dataclass(frozen=True)
class Certificates:
    ca: Path  # what clients trust
    cert: Path  # the leaf, then the CA, as servers send them
    key: Path


def make_certificates(folder: Path) -> Certificates:
    folder.mkdir(parents=True, exist_ok=True)
    ca, ca_key = folder / "ca.pem", folder / "ca-key.pem"
    leaf, key, request = folder / "leaf.pem", folder / "key.pem", folder / "leaf.csr"
    chain, extensions = folder / "cert.pem", folder / "leaf.ext"
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _openssl("req", "-x509", *ec, "-keyout", ca_key, "-out", ca, "-days", "2",
             "-subj", "/CN=CallMissed benchmark CA")  # fmt: skip
    _openssl("req", "-new", *ec, "-keyout", key, "-out", request, "-subj", "/CN=127.0.0.1")
    extensions.write_text(
        "basicConstraints=critical,CA:FALSE\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n"
        "extendedKeyUsage=serverAuth\n"
    )
    _openssl("x509", "-req", "-in", request, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial",
             "-out", leaf, "-days", "2", "-extfile", extensions)  # fmt: skip
    chain.write_bytes(leaf.read_bytes() + ca.read_bytes())
    return Certificates(ca, chain, key)


def _openssl(*args: str | Path) -> None:
    subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True)
