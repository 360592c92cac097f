"""The gateway as one ASGI app: reverse proxy, forward-auth endpoint, /metrics and /healthz.

    app = GatewayApp(load_config(Path("gateway.toml")))

Every request is matched to a route (``routes.py``) and judged by its policy (``policy.py``)
with the SDK's validator: cache, single-flight and the revocation event stream, started with
the app. Allowed requests are relayed upstream (``proxy.py``). The forward-auth endpoint gives
the same decision to nginx ``auth_request``, Traefik ``forwardAuth`` and Envoy ``ext_authz``
(HTTP service) without relaying anything:

- nginx sends the original request in ``X-Original-URI`` / ``X-Original-Method`` (and the
  host in ``X-Original-Host`` or ``Host``);
- Traefik sends ``X-Forwarded-Method`` / ``-Host`` / ``-Uri``;
- Envoy appends the original path to the endpoint's path (``path_prefix``) and keeps the
  method and ``Host``.

Allowed: ``200`` with the identity headers (and ``x-envoy-auth-headers-to-remove`` naming the
identity headers it did not set, so Envoy strips any copy the caller sent), and on a
``phantom_token`` route an ``Authorization`` header carrying the signed introspection JWT
(RFC 9701) for the proxy to forward instead of the caller's token. Refused: the
same ``401``/``403``/``405``/``503`` the proxy would answer, with the RFC 6750 challenge.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import MutableMapping
from typing import Any
from urllib.parse import unquote

import orjson

from keystile.errors import IntrospectionUnavailable, OAuthError
from keystile.gateway.config import GatewayConfig
from keystile.gateway.metrics import GatewayMetrics
from keystile.gateway.phantom import PhantomTokens
from keystile.gateway.policy import Authorizer, Decision, identity_headers, refused
from keystile.gateway.proxy import Proxy, Receive, Send, UpstreamError
from keystile.gateway.routes import BadPath, Route, RouteTable, normalize_path
from keystile.resource.introspector import TokenValidator
from keystile.resource.middleware import error_response

log = logging.getLogger("keystile.gateway")

Scope = MutableMapping[str, Any]
JSON = b"application/json"
_NO_STORE = (b"cache-control", b"no-store")
_START_RETRY = 2.0  # seconds between attempts to reach the AS when it was down at start

Answer = tuple[int, list[tuple[bytes, bytes]], bytes]


def _json(
    status: int, body: dict[str, str], extra: list[tuple[bytes, bytes]] | None = None
) -> Answer:
    data = orjson.dumps(body)
    headers = [(b"content-type", JSON), (b"content-length", str(len(data)).encode()), _NO_STORE]
    if extra:
        headers.extend(extra)
    return status, headers, data


async def _respond(send: Send, answer: Answer) -> None:
    status, headers, body = answer
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class GatewayApp:
    """The ASGI application ``keystile gateway`` serves."""

    def __init__(
        self,
        config: GatewayConfig,
        *,
        validator: TokenValidator | None = None,
        proxy: Proxy | None = None,
    ) -> None:
        self.config = config
        listen = config.gateway
        self.table = RouteTable(config.routes)
        self.metrics = GatewayMetrics()
        if validator is None:
            a = config.authorization_server
            c = config.cache
            validator = TokenValidator(
                client_id=a.client_id,
                client_secret=config.client_secret,
                issuer=a.issuer,
                introspection_endpoint=a.introspection_endpoint,
                events_endpoint=a.events_endpoint,
                events=a.events,
                auth_method=a.auth_method,
                max_ttl=c.max_ttl,
                negative_ttl=c.negative_ttl,
                degraded_ttl=c.degraded_ttl,
                max_entries=c.max_entries,
                timeout=a.timeout,
            )
        self.validator = validator
        self.metrics.watch(validator)
        self.authorizer = Authorizer(validator, self.metrics)
        self.proxy = proxy or Proxy(config, self.metrics)
        self.phantoms = PhantomTokens(config, validator)
        self.identity = config.identity_headers
        self.identity_names = [n.lower() for n in self.identity.names]
        self.realm = listen.realm
        self.forward_auth_path = listen.forward_auth_path
        self.metrics_path = listen.metrics_path
        self.health_path = listen.health_path
        self._retry: asyncio.Task[None] | None = None

    # -- lifecycle --------------------------------------------------------------------------

    async def startup(self) -> None:
        try:
            await self.validator.start()
        except IntrospectionUnavailable as exc:
            # Start anyway: every protected request answers 503 until the AS is reachable,
            # and the event stream starts as soon as it is.
            log.warning("authorization server unreachable at start", extra={"error": str(exc)})
            self._retry = asyncio.create_task(self._start_later(), name="keystile-gateway-start")

    async def _start_later(self) -> None:
        while True:
            await asyncio.sleep(_START_RETRY)
            try:
                await self.validator.start()
            except IntrospectionUnavailable:
                continue
            log.info("authorization server reachable; validator started")
            return

    async def shutdown(self) -> None:
        if self._retry is not None:
            self._retry.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._retry
        await self.validator.close()
        await self.proxy.close()

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.startup()
                except Exception as exc:
                    log.exception("gateway startup failed")
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return

    # -- dispatch ---------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            path: str = scope["path"]
            fa = self.forward_auth_path
            if fa is not None and (path == fa or path.startswith(fa + "/")):
                await self.forward_auth(scope, send)
            elif path == self.health_path:
                await self._health(send)
            elif path == self.metrics_path:
                await self._metrics(send)
            else:
                await self.proxy_request(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)
        else:  # websocket: not relayed (yet)
            await send({"type": "websocket.close", "code": 1008})

    async def _health(self, send: Send) -> None:
        state = self.validator.cache.stream_connected
        events = "off" if state is None else ("connected" if state else "disconnected")
        await _respond(send, _json(200, {"status": "ok", "event_stream": events}))

    async def _metrics(self, send: Send) -> None:
        body = self.metrics.render()
        headers = [
            (b"content-type", self.metrics.content_type.encode()),
            (b"content-length", str(len(body)).encode()),
        ]
        await _respond(send, (200, headers, body))

    # -- proxy ------------------------------------------------------------------------------

    async def proxy_request(self, scope: Scope, receive: Receive, send: Send) -> None:
        host: str | None = None
        authorization: str | None = None
        repeated = False
        for name, value in scope["headers"]:
            if name == b"host":
                host = value.decode("latin-1")
            elif name == b"authorization":
                repeated = authorization is not None
                authorization = value.decode("latin-1")
        try:
            path = normalize_path(scope["path"])
        except BadPath as exc:
            self.metrics.request("-", "proxy", "bad_request")
            await _respond(
                send, _json(400, {"error": "invalid_request", "error_description": str(exc)})
            )
            return
        route = self.table.match(host, path)
        if route is None:
            self.metrics.request("-", "proxy", "not_found")
            await _respond(
                send,
                _json(
                    404,
                    {"error": "not_found", "error_description": "no route matches this request"},
                ),
            )
            return
        decision = await self.authorizer.decide(
            route, scope["method"], authorization, repeated=repeated
        )
        decision, phantom = await self._phantom(route, decision)
        if not decision.allowed:
            self.metrics.request(route.label, "proxy", decision.outcome)
            await _respond(send, self._refusal(route, decision))
            return
        if route.upstream is None:
            self.metrics.request(route.label, "proxy", "not_found")
            await _respond(
                send,
                _json(
                    404,
                    {
                        "error": "not_found",
                        "error_description": "this route only answers forward-auth checks",
                    },
                ),
            )
            return
        try:
            result = await self.proxy.forward(
                scope,
                receive,
                send,
                route,
                identity_headers(self.identity, decision.principal),
                phantom,
            )
        except UpstreamError as exc:
            log.warning(
                "upstream failed",
                extra={"route": route.label, "status": exc.status, "error": str(exc)},
            )
            self.metrics.request(route.label, "proxy", exc.outcome)
            message = (
                "the upstream service did not answer in time"
                if exc.status == 504
                else "the upstream service cannot be reached"
            )
            await _respond(
                send, _json(exc.status, {"error": exc.outcome, "error_description": message})
            )
            return
        except BadPath as exc:
            self.metrics.request(route.label, "proxy", "bad_request")
            await _respond(
                send, _json(400, {"error": "invalid_request", "error_description": str(exc)})
            )
            return
        self.metrics.request(route.label, "proxy", decision.outcome if result == "ok" else result)

    async def _phantom(self, route: Route, decision: Decision) -> tuple[Decision, bytes | None]:
        """On a phantom_token route: the signed introspection answer to forward, or the
        refusal when it cannot be had (fail closed)."""
        if (
            not route.config.phantom_token
            or not decision.allowed
            or decision.principal is None
            or decision.token is None
        ):
            return decision, None
        try:
            jws = await self.phantoms.exchange(decision.token, decision.principal)
        except (OAuthError, IntrospectionUnavailable) as exc:
            return refused(exc), None
        return decision, b"Bearer " + jws.encode("ascii")

    def _refusal(self, route: Route, decision: Decision) -> Answer:
        if decision.error is None:  # the method
            return _json(
                405,
                {
                    "error": "method_not_allowed",
                    "error_description": "this route does not accept the method",
                },
                [(b"allow", route.allow_header)],
            )
        status, headers, body = error_response(decision.error, realm=self.realm)
        headers = [(b"content-type", JSON), (b"content-length", str(len(body)).encode()), *headers]
        if isinstance(decision.error, IntrospectionUnavailable):
            headers.append(_NO_STORE)
        return status, headers, body

    # -- forward-auth -----------------------------------------------------------------------

    async def forward_auth(self, scope: Scope, send: Send) -> None:
        """One decision for nginx, Traefik or Envoy; see the module docstring."""
        h: dict[bytes, str] = {}
        repeated = False
        for name, value in scope["headers"]:
            if name == b"authorization" and name in h:
                repeated = True
            h[name] = value.decode("latin-1")
        method = scope["method"]
        host = h.get(b"host")
        original = h.get(b"x-original-uri")
        if original is not None:  # nginx auth_request
            method = h.get(b"x-original-method", "GET")
            host = h.get(b"x-original-host", host)
            raw = original.partition("?")[0]
            path = unquote(raw)
        elif (forwarded := h.get(b"x-forwarded-uri")) is not None:  # Traefik forwardAuth
            method = h.get(b"x-forwarded-method", method)
            host = h.get(b"x-forwarded-host", host)
            path = unquote(forwarded.partition("?")[0])
        else:  # Envoy ext_authz: path_prefix + original path, original method and Host
            assert self.forward_auth_path is not None
            path = scope["path"][len(self.forward_auth_path) :] or "/"
        try:
            path = normalize_path(path)
        except BadPath as exc:
            self.metrics.request("-", "forward_auth", "bad_request")
            await _respond(
                send, _json(400, {"error": "invalid_request", "error_description": str(exc)})
            )
            return
        route = self.table.match(host, path)
        if route is None:
            # No policy covers this request: fail closed.
            self.metrics.request("-", "forward_auth", "no_route")
            await _respond(
                send,
                _json(
                    403,
                    {
                        "error": "access_denied",
                        "error_description": "no route matches this request",
                    },
                ),
            )
            return
        decision = await self.authorizer.decide(
            route, method.upper(), h.get(b"authorization"), repeated=repeated
        )
        decision, phantom = await self._phantom(route, decision)
        self.metrics.request(route.label, "forward_auth", decision.outcome)
        if not decision.allowed:
            await _respond(send, self._refusal(route, decision))
            return
        given = identity_headers(self.identity, decision.principal)
        set_names = {name for name, _ in given}
        missing = [n for n in self.identity_names if n.encode() not in set_names]
        headers = [(b"content-length", b"0"), _NO_STORE, *given]
        if phantom is not None:
            headers.append((b"authorization", phantom))  # the proxy forwards this instead
        if missing:
            headers.append((b"x-envoy-auth-headers-to-remove", ", ".join(missing).encode()))
        await _respond(send, (200, headers, b""))
