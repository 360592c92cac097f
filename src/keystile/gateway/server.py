"""Running the gateway: bind, then serve the ASGI app with uvicorn (httptools, uvloop)."""

from __future__ import annotations

import socket
import sys

from keystile.errors import ConfigurationError
from keystile.gateway.app import GatewayApp
from keystile.gateway.config import GatewayConfig
from keystile.settings import is_loopback


def check_bind(config: GatewayConfig) -> None:
    """Refuse plain HTTP on a non-loopback address unless explicitly allowed: bearer tokens
    would cross the network in clear (RFC 6750 §5.3)."""
    listen = config.gateway
    if listen.tls_cert is None and not is_loopback(listen.host) and not listen.allow_insecure_http:
        raise ConfigurationError(
            f"refusing to serve plain HTTP on {listen.host}: bearer tokens would cross the "
            "network in clear. Set gateway.tls_cert and gateway.tls_key, or "
            "gateway.allow_insecure_http = true when a TLS-terminating proxy is in front."
        )


def bind(config: GatewayConfig) -> socket.socket:
    """The listening socket; raises OSError when the address is taken."""
    host, port = config.gateway.host, config.gateway.port
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.listen(2048)
    return sock


def serve(config: GatewayConfig, sock: socket.socket) -> None:
    """Serve until SIGINT/SIGTERM."""
    import uvicorn

    listen = config.gateway
    app = GatewayApp(config)
    uv = uvicorn.Config(
        app,
        http="httptools",
        loop="uvloop",
        lifespan="on",
        access_log=False,
        server_header=False,
        date_header=False,  # the upstream's Date is relayed as it is
        # X-Forwarded-* are the gateway's business (proxy.py), not uvicorn's: the peer address
        # must stay the TCP peer so untrusted callers cannot pick what upstream sees.
        proxy_headers=False,
        log_config=None,
        log_level=listen.log_level,
        timeout_graceful_shutdown=3,
        ssl_certfile=str(listen.tls_cert) if listen.tls_cert else None,
        ssl_keyfile=str(listen.tls_key) if listen.tls_key else None,
    )
    server = uvicorn.Server(uv)
    scheme = "https" if listen.tls_cert else "http"
    address = sock.getsockname()
    shown = f"[{address[0]}]" if ":" in address[0] else address[0]
    print(f"keystile gateway listening on {scheme}://{shown}:{address[1]}", flush=True)
    sys.stdout.flush()
    server.run(sockets=[sock])
