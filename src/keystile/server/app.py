"""The authorization server as an ASGI app: ``create_app(settings, store=..., clock=...)``."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from keystile.clock import Clock, SystemClock
from keystile.core.metadata import (
    EVENTS_PATH,
    INTROSPECTION_PATH,
    METADATA_PATH,
    REVOCATION_PATH,
    TOKEN_PATH,
    server_metadata,
)
from keystile.errors import KeystileError
from keystile.events.bus import EventBus
from keystile.server.endpoints import OAuthEndpoints
from keystile.server.events import EventStream
from keystile.server.http import Receive, Scope, Send
from keystile.server.metrics import ServerMetrics
from keystile.settings import ServerSettings
from keystile.store.base import Store

log = logging.getLogger("keystile.server")


def open_store(settings: ServerSettings) -> Store:
    """The store a settings object names (the embedded SQLite file by default)."""
    from keystile.store.sqlite import SQLiteStore

    db = settings.db
    if db.startswith(("postgres://", "postgresql://")):
        raise KeystileError("PostgreSQL is not supported by this version; use a SQLite path")
    if db.startswith("sqlite:///"):
        db = db[len("sqlite:///") :]
    return SQLiteStore(db)


class KeystileApp:
    """Dispatches the OAuth endpoints straight to their handlers, the rest to Starlette."""

    def __init__(self, oauth: dict[str, Any], fallback: Starlette, endpoints: OAuthEndpoints):
        self._oauth = oauth
        self._fallback = fallback
        self.endpoints = endpoints
        self.store = endpoints.store
        self.bus: EventBus | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            handler = self._oauth.get(scope["path"])
            if handler is not None:
                await handler(scope, receive, send)
                return
        await self._fallback(scope, receive, send)


async def _purge_loop(store: Store, settings: ServerSettings, clock: Clock) -> None:
    while True:
        await asyncio.sleep(settings.purge_interval)
        try:
            result = await store.purge(
                clock.now(),
                token_grace=settings.token_grace,
                event_retention=settings.event_retention,
            )
            if result.tokens or result.events:
                log.info("purged", extra={"tokens": result.tokens, "events": result.events})
        except KeystileError as exc:
            log.warning("purge failed", extra={"error": str(exc)})


def create_app(
    settings: ServerSettings,
    *,
    store: Store | None = None,
    clock: Clock | None = None,
    metrics: ServerMetrics | None = None,
) -> KeystileApp:
    """Build the AS. A given ``store`` must be open already; otherwise the app opens the
    one the settings name at startup and closes it at shutdown."""
    owns_store = store is None
    the_store: Store = store if store is not None else open_store(settings)
    the_clock = clock or SystemClock()
    the_metrics = metrics or ServerMetrics()
    endpoints = OAuthEndpoints(settings, the_store, the_clock, the_metrics)
    bus = EventBus(the_store)
    endpoints.on_event = bus.notify  # wake the bus at once for this process's own writes

    async def metadata(request: Request) -> Response:
        body = server_metadata(settings.effective_issuer, scopes=await the_store.all_scopes())
        # Public and stable: caches may keep it for a while.
        return JSONResponse(body, headers={"Cache-Control": "public, max-age=300"})

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"}, headers={"Cache-Control": "no-store"})

    async def readyz(request: Request) -> Response:
        try:
            await the_store.ping()
        except KeystileError as exc:
            return JSONResponse(
                {"status": "unavailable", "store": str(exc)},
                status_code=503,
                headers={"Cache-Control": "no-store", "Retry-After": "1"},
            )
        return JSONResponse({"status": "ok", "store": "ok"}, headers={"Cache-Control": "no-store"})

    async def metrics_endpoint(request: Request) -> Response:
        return Response(the_metrics.render(), media_type=the_metrics.content_type)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        code = "invalid_request" if exc.status_code < 500 else "server_error"
        return JSONResponse(
            {"error": code, "error_description": exc.detail},
            status_code=exc.status_code,
            headers=exc.headers,
        )

    async def server_error(request: Request, exc: Exception) -> Response:
        log.exception("unexpected error", exc_info=exc)
        return JSONResponse(
            {"error": "server_error", "error_description": "internal error"}, status_code=500
        )

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if owns_store:
            await the_store.open()
        # Everything allocated so far lives as long as the process: keep it out of the
        # cyclic collector's full passes, which otherwise walk it again and again.
        await bus.start()
        gc.freeze()
        purge: asyncio.Task[None] | None = None
        if settings.purge_interval > 0:
            purge = asyncio.create_task(_purge_loop(the_store, settings, the_clock))
        try:
            yield
        finally:
            if purge is not None:
                purge.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await purge
            await bus.stop()
            if owns_store:
                await the_store.close()

    fallback = Starlette(
        routes=[
            Route(METADATA_PATH, metadata, methods=["GET"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/readyz", readyz, methods=["GET"]),
            Route("/metrics", metrics_endpoint, methods=["GET"]),
        ],
        exception_handlers={HTTPException: http_error, Exception: server_error},
        lifespan=lifespan,
    )
    oauth = {
        TOKEN_PATH: endpoints.asgi("token", endpoints.token),
        INTROSPECTION_PATH: endpoints.asgi("introspect", endpoints.introspect),
        REVOCATION_PATH: endpoints.asgi("revoke", endpoints.revoke),
        EVENTS_PATH: EventStream(endpoints, bus),
    }
    app = KeystileApp(oauth, fallback, endpoints)
    app.bus = bus
    return app


def app_from_environment() -> KeystileApp:
    """Factory for worker processes: rebuilds the settings ``keystile serve`` resolved."""
    import os

    from keystile.server.logs import configure_logging

    raw = os.environ.get("KEYSTILE_INTERNAL_SETTINGS_JSON")
    settings = ServerSettings.model_validate_json(raw) if raw else ServerSettings()
    configure_logging(settings.log_level, settings.log_format)
    return create_app(settings)
