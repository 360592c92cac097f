"""`keystile serve`: bind, first start (demo setup), then uvicorn with one or more workers."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from keystile.cli.common import ConfigOpt, DbOpt, fail, load_settings, run_admin
from keystile.clock import SystemClock
from keystile.errors import ConfigurationError
from keystile.settings import ServerSettings

_INTERNAL_SETTINGS = "KEYSTILE_INTERNAL_SETTINGS_JSON"


def serve(
    config: ConfigOpt = None,
    db: DbOpt = None,
    host: Annotated[str | None, typer.Option(help="Address to bind (default 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default 8000).")] = None,
    issuer: Annotated[str | None, typer.Option(help="Issuer URL (RFC 8414).")] = None,
    tls_cert: Annotated[Path | None, typer.Option(help="PEM certificate chain.")] = None,
    tls_key: Annotated[Path | None, typer.Option(help="PEM private key.")] = None,
    tls_client_ca: Annotated[
        Path | None,
        typer.Option(help="PEM CA of client certificates: bind tokens to them (RFC 8705)."),
    ] = None,
    dpop_nonce: Annotated[
        bool | None,
        typer.Option(
            "--dpop-nonce/--no-dpop-nonce",
            help="Require server nonces in DPoP proofs at the token endpoint (RFC 9449).",
        ),
    ] = None,
    allow_insecure_http: Annotated[
        bool | None,
        typer.Option("--allow-insecure-http", help="Plain HTTP on a non-loopback address."),
    ] = None,
    workers: Annotated[int | None, typer.Option(help="Worker processes (default 1).")] = None,
    demo: Annotated[
        bool | None,
        typer.Option(
            "--demo/--no-demo", help="Demo setup on an empty database (default: on loopback)."
        ),
    ] = None,
    log_level: Annotated[str | None, typer.Option(help="debug|info|warning|error")] = None,
    log_format: Annotated[str | None, typer.Option(help="json|text")] = None,
    fast_path: Annotated[
        bool | None,
        typer.Option(
            "--fast-path/--no-fast-path",
            help="Answer common introspection requests without ASGI (default: on).",
        ),
    ] = None,
    max_in_flight: Annotated[
        int | None,
        typer.Option(
            help="Requests in progress per process before 503 + Retry-After (default 256; "
            "0: no limit)."
        ),
    ] = None,
    client_metadata_documents: Annotated[
        bool | None,
        typer.Option(
            "--client-metadata-documents/--no-client-metadata-documents",
            help="Accept https URLs as client ids, fetching the client's metadata document "
            "(default: off).",
        ),
    ] = None,
    admin_api: Annotated[
        bool | None,
        typer.Option(
            "--admin-api/--no-admin-api",
            help="Serve the admin API and console under /admin (default: off; docs/admin.md).",
        ),
    ] = None,
    answer_lease: Annotated[
        float | None,
        typer.Option(
            help="PostgreSQL: seconds of the lease under which introspection answers come "
            "from memory (default 2; 0: always read the database)."
        ),
    ] = None,
) -> None:
    """Run the authorization server (SQLite file by default, created on first start)."""
    settings = load_settings(
        config,
        db=db,
        host=host,
        port=port,
        issuer=issuer,
        tls_cert=tls_cert,
        tls_key=tls_key,
        tls_client_ca=tls_client_ca,
        dpop_nonce=dpop_nonce,
        allow_insecure_http=allow_insecure_http,
        workers=workers,
        demo=demo,
        log_level=log_level,
        log_format=log_format,
        fast_path=fast_path,
        max_in_flight=max_in_flight,
        client_metadata_documents=client_metadata_documents,
        admin_api=admin_api,
        answer_lease=answer_lease,
    )
    try:
        settings.check_bind()
    except ConfigurationError as exc:
        fail(str(exc), 2)
    from keystile.server.demo import demo_text, first_start
    from keystile.server.logs import configure_logging

    configure_logging(settings.log_level, settings.log_format)
    # Bind first: if the port is taken, fail before the one-time demo secrets are printed
    # and the database is marked initialized.
    sock = _bind(settings)
    if settings.port == 0:
        # Port 0 lets the kernel pick a free port: the derived issuer (and every worker's
        # settings) must name the port actually bound, not 0.
        settings = settings.model_copy(update={"port": sock.getsockname()[1]})
    clock = SystemClock()
    setup = run_admin(
        settings,
        lambda store: first_start(
            store,
            clock,
            demo=settings.demo_enabled,
            ttl=settings.access_token_ttl,
            issuer=settings.effective_issuer,
        ),
        create=True,
    )
    if setup is not None:
        typer.echo(demo_text(setup, settings.effective_issuer))
    _serve(settings, sock)


def _bind(settings: ServerSettings) -> socket.socket:
    family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((settings.host, settings.port))
    except OSError as exc:
        sock.close()
        fail(f"cannot bind {settings.host}:{settings.port}: {exc.strerror}", 1)
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def _bound_url(settings: ServerSettings, sock: socket.socket) -> str:
    """scheme://address:port of the socket as bound (the real port when 0 was asked for)."""
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    return f"{'https' if settings.tls else 'http'}://{shown}:{port}"


def _announce(settings: ServerSettings, sock: socket.socket) -> None:
    """The last lines of a start: where the server listens, then the issuer when it is not
    that address (a public URL behind a proxy, or a host name bound through its address)."""
    url = _bound_url(settings, sock)
    workers = f" ({settings.workers} workers)" if settings.workers > 1 else ""
    typer.echo(f"keystile listening on {url}{workers}")
    if settings.effective_issuer != url:
        typer.echo(f"issuer {settings.effective_issuer}")
    sys.stdout.flush()


def _serve(settings: ServerSettings, sock: socket.socket) -> None:
    import uvicorn

    from keystile.server.fastpath import FastPathProtocol
    from keystile.server.tls_peer import PeerCertificateProtocol

    common: dict[str, Any] = {
        # uvicorn's httptools protocol; with the fast path, one that answers common
        # introspection requests without an ASGI task (server/fastpath.py).
        # Both report a TLS client certificate to the app (RFC 8705, server/tls_peer.py).
        "http": FastPathProtocol if settings.fast_path else PeerCertificateProtocol,
        "loop": "uvloop",
        "lifespan": "on",
        "access_log": False,  # our own structured log covers requests, without secrets
        "server_header": False,
        # Event streams never end by themselves: give them this long once asked to stop.
        "timeout_graceful_shutdown": 3,
        # X-Forwarded-* are believed only from proxies the operator names: otherwise any
        # caller could pick the source address that failed-authentication throttling counts.
        "proxy_headers": bool(settings.trusted_proxies),
        "forwarded_allow_ips": ",".join(settings.trusted_proxies) or None,
        "log_config": None,
        "log_level": settings.log_level,
        "ssl_certfile": str(settings.tls_cert) if settings.tls_cert else None,
        "ssl_keyfile": str(settings.tls_key) if settings.tls_key else None,
    }
    if settings.tls_client_ca is not None:
        import ssl

        # RFC 8705 §2: ask for a client certificate, verified against this CA; clients
        # without one still connect (their tokens are not certificate-bound).
        common["ssl_ca_certs"] = str(settings.tls_client_ca)
        common["ssl_cert_reqs"] = ssl.CERT_OPTIONAL
    if settings.workers > 1:
        from keystile import multiprocess_metrics

        # Workers are separate processes: they rebuild the same settings from this.
        os.environ[_INTERNAL_SETTINGS] = settings.model_dump_json()
        _announce(settings, sock)
        # Metrics of all workers are summed from files in this folder (prometheus_client
        # multiprocess mode); it lives as long as this server.
        with multiprocess_metrics.shared_folder():
            # The workers inherit the socket bound above, passed as the socket object: with
            # `fd=` uvicorn rebuilds it as AF_UNIX, so asyncio never sets TCP_NODELAY and
            # every response waits ~40 ms on Nagle + delayed ACK.
            config = uvicorn.Config(
                "keystile.server.app:app_from_environment",
                factory=True,
                workers=settings.workers,
                **common,
            )
            multiprocess_metrics.supervisor(config, sock).run()
        return
    from keystile.server.app import create_app

    app = create_app(settings)

    from keystile.server.accept import EagerAcceptor

    class Server(uvicorn.Server):
        acceptor: EagerAcceptor | None = None

        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            if not sockets or settings.tls:
                await super().startup(sockets)
                return
            # All waiting connections per loop turn, not uvloop's one (server/accept.py).
            await super().startup([])
            self.acceptor = EagerAcceptor.for_server(self, sockets[0])

        async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
            if self.acceptor is not None:
                self.acceptor.stop()
            if app.bus is not None:
                app.bus.end_streams()  # event streams end now instead of timing out
            await super().shutdown(sockets)

    config = uvicorn.Config(app, **common)
    server = Server(config)
    _announce(settings, sock)
    server.run(sockets=[sock])
