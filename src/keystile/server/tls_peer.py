"""The client certificate of a TLS connection, for certificate-bound tokens (RFC 8705 §3).

ASGI has no standard place for the peer certificate, and uvicorn does not report it, so our
HTTP protocol (uvicorn's httptools one) reads it once per connection from the TLS object
and puts its DER bytes, and the socket's real peer address, into every request's
``scope["state"]``, which uvicorn copies per request from the connection's app state.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

PEER_CERTIFICATE = "keystile.tls_client_certificate"  # DER bytes
PEER_ADDRESS = "keystile.peer_address"  # the socket's peer, before any X-Forwarded-For


class PeerCertificateProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, reporting the TLS client certificate to the app."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        extra: dict[str, Any] = {}
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple) and peer:
            extra[PEER_ADDRESS] = str(peer[0])
        ssl_object = transport.get_extra_info("ssl_object")
        if ssl_object is not None:
            der = ssl_object.getpeercert(binary_form=True)
            if der:
                extra[PEER_CERTIFICATE] = der
        if extra:
            self.app_state = {**self.app_state, **extra}  # this connection's copy only
