"""The authorization server as an ASGI app: ``create_app(settings, store=..., clock=...)``."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from keystile import multiprocess_metrics
from keystile.clock import Clock, SystemClock
from keystile.core.client_assertion import ASSERTION_ALGS
from keystile.core.metadata import (
    EVENTS_PATH,
    INTROSPECTION_PATH,
    JWKS_PATH,
    METADATA_PATH,
    OPENID_CONFIGURATION_PATH,
    REVOCATION_PATH,
    TOKEN_PATH,
    USERINFO_PATH,
    openid_configuration,
    server_metadata,
)
from keystile.core.oidc import CLAIMS_SUPPORTED
from keystile.core.passwords import dummy_hash
from keystile.errors import ConfigurationError, KeystileError
from keystile.events.bus import EventBus
from keystile.server.admin_api import AdminApi
from keystile.server.admin_console import AdminConsole
from keystile.server.admin_dashboard import Dashboard
from keystile.server.demo import DEMO_CALLBACK_PATH, demo_callback_page
from keystile.server.endpoints import OAuthEndpoints
from keystile.server.events import EventStream
from keystile.server.http import Receive, Scope, Send
from keystile.server.instance_stats import InstanceStatsBoard
from keystile.server.metrics import ServerMetrics
from keystile.server.registration_endpoint import RegistrationEndpoint
from keystile.server.shedding import NOT_COUNTED, send_busy
from keystile.server.ui import SECURITY_HEADERS, ui_routes
from keystile.server.userinfo_endpoint import UserInfoEndpoint
from keystile.settings import ServerSettings
from keystile.store.base import Store

if TYPE_CHECKING:
    from keystile.server.shared_throttle import RedisFailureThrottle

log = logging.getLogger("keystile.server")


def open_store(settings: ServerSettings) -> Store:
    """The store a settings object names (the embedded SQLite file by default)."""
    from keystile.store.sqlite import SQLiteStore

    db = settings.db
    if settings.uses_postgres:
        return _open_postgres(settings)
    if db.startswith("sqlite:///"):
        db = db[len("sqlite:///") :]
    return SQLiteStore(db)


# -- scale-out (issue 5): PostgreSQL store and Redis-shared throttling ---------------------


def _open_postgres(settings: ServerSettings) -> Store:
    try:
        from keystile.store.postgres import PostgresStore
    except ImportError as exc:
        raise ConfigurationError(str(exc)) from None
    return PostgresStore(
        settings.db,
        pool_size=settings.db_pool_size,
        acquire_timeout=settings.db_acquire_timeout,
        query_timeout=settings.db_query_timeout,
        max_waiting=settings.db_max_waiting,
    )


def _shared_throttle(
    settings: ServerSettings, clock: Clock, *, limit: int, window: int, name: str
) -> RedisFailureThrottle | None:
    """A failure throttle shared through Redis when ``redis_url`` is set (None: each process
    counts for itself). ``name`` keeps the counters of different throttles apart."""
    if settings.redis_url is None:
        return None
    try:
        from keystile.server.shared_throttle import RedisFailureThrottle
    except ImportError as exc:
        raise ConfigurationError(str(exc)) from None
    return RedisFailureThrottle(
        settings.redis_url,
        clock,
        limit=limit,
        window=window,
        prefix=f"{settings.redis_prefix}:{name}",
    )


# ------------------------------------------------------------------------------------------


class KeystileApp:
    """Dispatches the OAuth endpoints straight to their handlers, the rest to Starlette."""

    def __init__(
        self,
        oauth: dict[str, Any],
        fallback: Starlette,
        endpoints: OAuthEndpoints,
        *,
        max_in_flight: int = 0,
    ):
        self._oauth = oauth
        self._fallback = fallback
        self.endpoints = endpoints
        self.store = endpoints.store
        self.bus: EventBus | None = None
        # Load shedding (server/shedding.py): HTTP requests in progress, and the most allowed.
        self.max_in_flight = max_in_flight
        self.in_flight = 0
        self._shed = endpoints.metrics.shed
        gauge = endpoints.metrics.in_flight
        # --workers: the gauge's value lives in the shared files, kept as requests come and
        # go; alone, it is read from this counter at scrape time.
        self._gauge = gauge if endpoints.metrics.shared_in_flight else None
        if self._gauge is None:
            gauge.set_function(lambda: self.in_flight)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._fallback(scope, receive, send)
            return
        path = scope["path"]
        if path in NOT_COUNTED:
            await self._dispatch(path, scope, receive, send)
            return
        if self.in_flight >= self.max_in_flight > 0:
            self._shed.inc()
            await send_busy(send)
            return
        self.in_flight += 1
        gauge = self._gauge
        if gauge is not None:
            gauge.inc()
        try:
            await self._dispatch(path, scope, receive, send)
        finally:
            self.in_flight -= 1
            if gauge is not None:
                gauge.dec()

    async def _dispatch(self, path: str, scope: Scope, receive: Receive, send: Send) -> None:
        handler = self._oauth.get(path)
        if handler is not None:
            await handler(scope, receive, send)
        else:
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
            if settings.registration != "off":
                # Open registrations never used expire (docs/registration.md).
                now = clock.now()
                await store.expire_registrations(
                    "open", now - settings.registration_open_unused_ttl, now
                )
            if settings.client_metadata_documents:
                # Clients known by a document that never got a token are forgotten
                # (docs/client-metadata-documents.md); disabled ones stay blocked.
                now = clock.now()
                await store.expire_registrations(
                    "metadata-document",
                    now - settings.client_metadata_documents_unused_ttl,
                    now,
                    keep_disabled=True,
                )
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
    # Failed client authentications, and failed sign-ins on the pages (issue 3): counted
    # apart, each with its own limits.
    shared_throttle = _shared_throttle(
        settings,
        the_clock,
        limit=settings.throttle_failures,
        window=settings.throttle_window,
        name="throttle",
    )
    login_throttle = _shared_throttle(
        settings,
        the_clock,
        limit=settings.login_failures,
        window=settings.login_window,
        name="login-throttle",
    )
    # Registration attempts per address (RFC 7591 endpoint), when registration is on.
    registration_throttle = (
        _shared_throttle(
            settings,
            the_clock,
            limit=settings.registration_rate_limit,
            window=settings.registration_rate_window,
            name="registration-throttle",
        )
        if settings.registration != "off"
        else None
    )
    own_throttles = [t for t in (shared_throttle, login_throttle, registration_throttle) if t]
    endpoints = OAuthEndpoints(
        settings, the_store, the_clock, the_metrics, throttle=shared_throttle
    )
    bus = EventBus(the_store)
    endpoints.on_event = bus.notify  # wake the bus at once for this process's own writes
    # The dashboard's counters, published for the other processes (docs/admin.md).
    stats = InstanceStatsBoard(
        the_metrics,
        the_store,
        the_clock,
        subscribers=lambda: bus.subscriber_count,
        lag=bus.lag,
        interval=settings.stats_interval if settings.admin_api else 0,
    )

    async def _metadata_body() -> dict[str, Any]:
        ring = await endpoints.signing.ready()
        return server_metadata(
            settings.effective_issuer,
            scopes=await the_store.all_scopes(),
            signing_algs=ring.signing_algs(),
            auth_signing_algs=ASSERTION_ALGS,
            registration=settings.registration != "off",
            client_id_metadata_document=settings.client_metadata_documents,
            certificate_bound=(settings.tls and settings.tls_client_ca is not None)
            or settings.tls_client_certificate_header is not None,
        )

    async def metadata(request: Request) -> Response:
        # Public and stable: caches may keep it for a while.
        return JSONResponse(
            await _metadata_body(), headers={"Cache-Control": "public, max-age=300"}
        )

    async def openid_metadata(request: Request) -> Response:
        # OIDC Discovery §4: beside RFC 8414, with the same keys.
        ring = await endpoints.signing.ready()
        body = openid_configuration(
            await _metadata_body(),
            id_token_algs=ring.id_token_algs(),
            claims=CLAIMS_SUPPORTED,
        )
        return JSONResponse(body, headers={"Cache-Control": "public, max-age=300"})

    async def jwks(request: Request) -> Response:
        # RFC 7517 §5: next, active and still-needed retired keys. Public; caches may keep
        # it for jwks_max_age, so make a next key at least that long before rotating to it.
        ring = await endpoints.signing.ready()
        return JSONResponse(
            ring.jwks(the_clock.now()),
            headers={"Cache-Control": f"public, max-age={settings.jwks_max_age}"},
        )

    userinfo = UserInfoEndpoint(settings, the_store, endpoints.signing)

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
        body = {"status": "ok", "store": "ok"}
        if shared_throttle is not None:
            # Degraded, not unready: without Redis throttling counts per process, and every
            # answer stays right.
            body["redis"] = shared_throttle.state
        return JSONResponse(body, headers={"Cache-Control": "no-store"})

    async def demo_callback(request: Request) -> Response:
        # The demo client's landing page (docs/users.md, "Try it"): shows the code and the
        # command that redeems it; 404 on a database without the demo setup.
        status, html = await demo_callback_page(
            the_store, settings.effective_issuer, dict(request.query_params)
        )
        return HTMLResponse(html, status_code=status, headers=dict(SECURITY_HEADERS))

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
        # PostgreSQL: remembered introspection answers, under a lease (store/postgres/answers.py).
        lease = getattr(the_store, "start_answer_lease", None)
        if lease is not None and settings.fast_path and settings.answer_lease > 0:
            await lease(settings.answer_lease)
        else:
            lease = None
        for throttle in own_throttles:
            await throttle.start()
        try:
            await endpoints.signing.start()  # the first start makes a signing key
        except KeystileError as exc:
            log.warning("signing keys not loaded; retrying on first use", extra={"error": str(exc)})
        gc.freeze()
        # The dummy password hash unknown usernames are checked against, made now in a thread
        # so the first failed sign-in takes as long as any other (core/passwords.py).
        warm = asyncio.get_running_loop().run_in_executor(None, dummy_hash)
        await stats.start()
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
            await warm
            await stats.stop()
            await bus.stop()
            multiprocess_metrics.process_ended()  # --workers: leave the in-flight sum
            if lease is not None:
                await the_store.stop_answer_lease()  # type: ignore[attr-defined]
            for throttle in own_throttles:
                await throttle.stop()
            if owns_store:
                await the_store.close()

    token_endpoint = endpoints.asgi("token", endpoints.token)
    admin_api = AdminApi(settings, the_store, the_clock, endpoints.signing, stats=stats)
    admin_console = AdminConsole(
        settings,
        the_store,
        the_clock,
        auth=admin_api.auth,
        token_endpoint=token_endpoint,
        dashboard=Dashboard(stats),
    )
    fallback = Starlette(
        routes=[
            Route(METADATA_PATH, metadata, methods=["GET"]),
            Route(OPENID_CONFIGURATION_PATH, openid_metadata, methods=["GET"]),
            Route(JWKS_PATH, jwks, methods=["GET"]),
            # OIDC Core §5.3: GET and POST.
            Route(USERINFO_PATH, userinfo.endpoint, methods=["GET", "POST"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/readyz", readyz, methods=["GET"]),
            Route("/metrics", metrics_endpoint, methods=["GET"]),
            Route(DEMO_CALLBACK_PATH, demo_callback, methods=["GET"]),
            # The browser side of the authorization code flow (issue 3).
            *ui_routes(
                settings,
                the_store,
                the_clock,
                throttle=login_throttle,
                clients=endpoints.clients,  # one document cache per process
            ),
            # Dynamic client registration (RFC 7591, RFC 7592): no routes while off.
            *RegistrationEndpoint(
                settings, the_store, the_clock, throttle=registration_throttle
            ).routes(),
            # The admin API and console (docs/admin.md): no routes while off.
            *admin_api.routes(),
            *admin_console.routes(),
        ],
        exception_handlers={HTTPException: http_error, Exception: server_error},
        lifespan=lifespan,
    )
    oauth = {
        TOKEN_PATH: token_endpoint,
        INTROSPECTION_PATH: endpoints.asgi("introspect", endpoints.introspect),
        REVOCATION_PATH: endpoints.asgi("revoke", endpoints.revoke),
        EVENTS_PATH: EventStream(endpoints, bus),
    }
    app = KeystileApp(oauth, fallback, endpoints, max_in_flight=settings.max_in_flight)
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
