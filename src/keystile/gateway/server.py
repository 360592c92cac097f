"""Running the gateway: bind, then serve the ASGI app with uvicorn (httptools, uvloop)."""

from __future__ import annotations

import socket
import sys
from typing import Any

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


CONFIG_ENV = "KEYSTILE_INTERNAL_GATEWAY_CONFIG"  # the config file, for worker processes
WORKERS_ENV = "KEYSTILE_INTERNAL_GATEWAY_WORKERS"


def app_from_environment() -> GatewayApp:
    """Factory for worker processes: loads the configuration file ``keystile gateway`` read
    (and the same environment overrides)."""
    import os
    from pathlib import Path

    from keystile.gateway.config import load_config
    from keystile.server.logs import configure_logging

    config = load_config(Path(os.environ[CONFIG_ENV]))
    configure_logging(config.gateway.log_level, config.gateway.log_format)
    return GatewayApp(config)


def serve(config: GatewayConfig, sock: socket.socket, *, path: str | None = None) -> None:
    """Serve until SIGINT/SIGTERM; with ``workers`` > 1, in that many processes that each
    load ``path`` again."""
    import ssl

    import uvicorn

    from keystile.gateway.fastpath import GatewayProtocol

    listen = config.gateway
    workers = listen.workers
    app: Any
    if workers > 1:
        import os

        assert path is not None
        os.environ[CONFIG_ENV] = path
        app = "keystile.gateway.server:app_from_environment"
    else:
        app = GatewayApp(config)
    client_ca: dict[str, object] = {}
    if listen.tls_client_ca is not None:
        # RFC 8705 §3: a client certificate when the caller has one (optional), verified
        # against this CA; the protocol reports it to the app (server/tls_peer.py).
        client_ca = {"ssl_ca_certs": str(listen.tls_client_ca), "ssl_cert_reqs": ssl.CERT_OPTIONAL}
    uv = uvicorn.Config(
        app,
        # uvicorn's httptools protocol, reporting the TLS peer certificate, with the fast
        # path (fastpath.py; off with fast_path = false: then it only forwards to ASGI).
        http=GatewayProtocol,
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
        factory=workers > 1,
        workers=workers,
        **client_ca,  # type: ignore[arg-type]
    )
    scheme = "https" if listen.tls_cert else "http"
    address = sock.getsockname()
    shown = f"[{address[0]}]" if ":" in address[0] else address[0]
    several = f" ({workers} workers)" if workers > 1 else ""
    print(f"keystile gateway listening on {scheme}://{shown}:{address[1]}{several}", flush=True)
    sys.stdout.flush()
    if workers > 1:
        from keystile import multiprocess_metrics

        # Each worker records its metrics in files in this folder, which /metrics adds up
        # (prometheus_client multiprocess mode); it lives as long as the gateway.
        with multiprocess_metrics.shared_folder():
            # Each worker inherits the socket object (as `keystile serve` does: with fd=
            # uvicorn would rebuild it as AF_UNIX and never set TCP_NODELAY).
            multiprocess_metrics.supervisor(uv, sock).run()
        return
    uvicorn.Server(uv).run(sockets=[sock])
