"""`keystile gateway`: run the introspecting reverse proxy (docs/gateway.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from keystile.cli.common import fail
from keystile.errors import ConfigurationError


def gateway(
    config: Annotated[
        Path,
        typer.Option(
            "--config",
            "-c",
            help="Gateway TOML file (docs/gateway.md).",
            envvar="KEYSTILE_GATEWAY_CONFIG",
        ),
    ],
    workers: Annotated[
        int | None,
        typer.Option(
            min=1,
            max=64,
            help="Gateway processes sharing the port, each with its own cache and event "
            "stream (default: [gateway] workers, else 1).",
        ),
    ] = None,
) -> None:
    """Run the gateway: an introspecting reverse proxy that also answers forward-auth checks."""
    from keystile.gateway.config import load_config
    from keystile.gateway.server import bind, check_bind, serve
    from keystile.server.logs import configure_logging

    try:
        settings = load_config(config)
        if workers is not None:
            listen = settings.gateway.model_copy(update={"workers": workers})
            settings = settings.model_copy(update={"gateway": listen})
        check_bind(settings)
    except ConfigurationError as exc:
        fail(str(exc), 2)
        raise  # unreachable
    configure_logging(settings.gateway.log_level, settings.gateway.log_format)
    try:
        sock = bind(settings)
    except OSError as exc:
        fail(f"cannot bind {settings.gateway.host}:{settings.gateway.port}: {exc.strerror}", 1)
        raise  # unreachable
    serve(settings, sock, path=str(config.resolve()))
