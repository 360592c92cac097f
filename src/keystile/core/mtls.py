"""Certificate-bound access tokens (RFC 8705 §3): the ``x5t#S256`` thumbprint of a client
certificate, the base64url SHA-256 of its DER encoding (§3.1)."""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import ssl
from urllib.parse import unquote

_XFCC_CERT = re.compile(r'(?:^|;)\s*Cert="([^"]*)"', re.IGNORECASE)


def der_thumbprint(der: bytes) -> str:
    """``x5t#S256`` of a DER certificate (RFC 8705 §3.1)."""
    return base64.urlsafe_b64encode(hashlib.sha256(der).digest()).rstrip(b"=").decode("ascii")


def pem_thumbprint(pem: str) -> str:
    """``x5t#S256`` of a PEM certificate; ValueError when it is not one."""
    return der_thumbprint(ssl.PEM_cert_to_DER_cert(pem.strip()))


def forwarded_thumbprint(value: str) -> str | None:
    """``x5t#S256`` of a client certificate a TLS-terminating proxy forwarded in a header:
    URL-escaped PEM (nginx ``$ssl_client_escaped_cert``), base64 DER (Traefik
    ``passTLSClientCert``), or Envoy's ``x-forwarded-client-cert`` (its ``Cert="…"``, the
    first element). None when the value holds no certificate."""
    value = value.strip()
    if not value:
        return None
    xfcc = _XFCC_CERT.search(value.split(",", 1)[0])
    if xfcc is not None:
        value = xfcc.group(1)
    text = unquote(value)
    try:
        if "BEGIN CERTIFICATE" in text:
            return pem_thumbprint(text)
        der = base64.b64decode(text.replace(" ", ""), validate=True)
    except (ValueError, binascii.Error):
        return None
    return der_thumbprint(der) if der[:1] == b"\x30" else None  # a DER SEQUENCE
