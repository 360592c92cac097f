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
same ``401``/``403``/``405``/``503`` the proxy would answer, with the RFC 6750 challenge; and
``400`` for a request carrying an identity or forwarding header spelled another way
(``X_Auth_Subject``), which the proxy would pass to the service beside the headers we set.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import MutableMapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

import orjson

from keystile.core.dpop_state import NonceSource
from keystile.core.mtls import der_thumbprint, forwarded_thumbprint
from keystile.errors import IntrospectionUnavailable, OAuthError
from keystile.gateway.config import GatewayConfig
from keystile.gateway.headers import HeaderKinds
from keystile.gateway.metrics import GatewayMetrics
from keystile.gateway.phantom import PhantomTokens
from keystile.gateway.policy import Authorizer, Decision, identity_headers, refused
from keystile.gateway.proxy import Proxy, Receive, Send, UpstreamError
from keystile.gateway.routes import BadPath, Route, RouteTable, normalize_path
from keystile.resource.introspector import TokenValidator
from keystile.resource.middleware import certificate_thumbprint, error_response
from keystile.resource.principal import Principal
from keystile.resource.replay import SharedReplayCache
from keystile.server.tls_peer import PEER_CERTIFICATE

log = logging.getLogger("keystile.gateway")

Scope = MutableMapping[str, Any]
JSON = b"application/json"
_NO_STORE = (b"cache-control", b"no-store")
_START_RETRY = 2.0  # seconds between attempts to reach the AS when it was down at start

Answer = tuple[int, list[tuple[bytes, bytes]], bytes]
# Request headers that keep a request off the fast path: a DPoP proof (checked with the
# replay cache, which may await), and a body (relayed as it arrives by the full path).
_NOT_FAST = frozenset({b"dpop", b"content-length", b"transfer-encoding"})
_IDENTITIES = 4096  # identity headers remembered per principal, at most


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
                ca_file=a.ca_file,
            )
        self.validator = validator
        self.metrics.watch(validator)
        self.shared_replay = _shared_replay(config)
        self.authorizer = Authorizer(
            validator,
            self.metrics,
            dpop_max_age=listen.dpop_max_age,
            nonces=_nonces(config),
            shared_replay=self.shared_replay,
        )
        self.proxy = proxy or Proxy(config, self.metrics)
        self.phantoms = PhantomTokens(config, validator)
        self.identity = config.identity_headers
        self.identity_names = [n.lower() for n in self.identity.names]
        self.header_kinds = HeaderKinds(self.identity.names)
        self._identities: dict[int, tuple[Principal, list[tuple[bytes, bytes]]]] = {}
        self.realm = listen.realm
        self.forward_auth_path = listen.forward_auth_path
        self.metrics_path = listen.metrics_path
        self.health_path = listen.health_path
        self._retry: asyncio.Task[None] | None = None
        self.started = False  # the validator has started (discovery done, stream opened)

    # -- lifecycle --------------------------------------------------------------------------

    async def startup(self) -> None:
        self.metrics.start()
        try:
            await self.validator.start()
            self.started = True
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
            self.started = True
            log.info("authorization server reachable; validator started")
            return

    async def shutdown(self) -> None:
        if self._retry is not None:
            self._retry.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._retry
        await self.validator.close()
        await self.proxy.close()
        await self.metrics.stop()
        if self.shared_replay is not None:
            await self.shared_replay.close()

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

    def event_stream_state(self) -> str:
        """The revocation event stream as /healthz reports it.

        ``off``: events switched off in the configuration; ``not_offered``: the AS's
        metadata names no event stream; ``connecting``: not live yet (also while the AS
        could not be reached at start); ``connected``: live; ``unavailable``: lost, and
        reconnecting with backoff.
        """
        v = self.validator
        if not v.events_enabled:
            return "off"
        if v.cache.stream_connected:
            return "connected"
        stream = v.stream
        if stream is None:
            # Not started yet (the AS was unreachable), or started without a stream to follow.
            return "not_offered" if self.started else "connecting"
        return "unavailable" if getattr(stream, "readies", 0) else "connecting"

    async def _health(self, send: Send) -> None:
        body = {"status": "ok", "event_stream": self.event_stream_state()}
        await _respond(send, _json(200, body))

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
        proof: str | None = None
        proto: str | None = None
        repeated = False
        proofs = 0
        for name, value in scope["headers"]:
            if name == b"host":
                host = value.decode("latin-1")
            elif name == b"authorization":
                repeated = authorization is not None
                authorization = value.decode("latin-1")
            elif name == b"dpop":
                proof = value.decode("latin-1")
                proofs += 1
            elif name == b"x-forwarded-proto":
                proto = value.decode("latin-1")
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
        # htu (RFC 9449 §4.3): the URL the caller used. Behind a trusted proxy that
        # terminates TLS, its X-Forwarded-Proto names the scheme.
        if proto is None or not self.proxy.trusts(scope):
            proto = scope.get("scheme", "http")
        raw = scope.get("raw_path") or scope["path"].encode()
        url = f"{proto}://{host or 'localhost'}{raw.decode('latin-1').partition('?')[0]}"
        decision = await self.authorizer.decide(
            route,
            scope["method"],
            authorization,
            repeated=repeated,
            proof=proof,
            proofs=proofs,
            url=url,
            certificate_x5t=self._certificate(scope),
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
                self._identity(decision.principal),
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

    def proxy_now(self, scope: Scope) -> tuple[Route, bytes, list[tuple[bytes, bytes]], str] | None:
        """For the fast path: the route, upstream target, headers and outcome (for metrics)
        of a bodiless request that ``proxy_request`` would relay with the decision
        ``decide_now`` gives; None for anything else (then ``proxy_request`` handles it from
        the start)."""
        host: str | None = None
        authorization: str | None = None
        for name, value in scope["headers"]:
            if name == b"host":
                host = value.decode("latin-1")
            elif name == b"authorization":
                if authorization is not None:
                    return None  # two: the full path refuses it
                authorization = value.decode("latin-1")
            elif name in _NOT_FAST:
                return None
        try:
            path = normalize_path(scope["path"])
        except BadPath:
            return None
        route = self.table.match(host, path)
        if route is None or route.upstream is None or route.config.phantom_token:
            return None
        try:
            target = self.proxy.target(scope, route)
        except BadPath:
            return None
        decision = self.authorizer.decide_now(route, scope["method"], authorization)
        if decision is None:
            return None
        identity = self._identity(decision.principal)
        headers, _ = self.proxy.upstream_headers(scope, route, identity)
        return route, target, headers, decision.outcome

    def _identity(self, principal: Principal | None) -> list[tuple[bytes, bytes]]:
        """``identity_headers`` for a principal, remembered while the cache holds it (the
        cache hands out the same object until the entry goes)."""
        if principal is None:
            return []
        found = self._identities.get(id(principal))
        if found is not None and found[0] is principal:  # not another object at that id
            return found[1]
        headers = identity_headers(self.identity, principal)
        if len(self._identities) >= _IDENTITIES:
            self._identities.clear()
        self._identities[id(principal)] = (principal, headers)
        return headers

    def _certificate(self, scope: Scope) -> str | None:
        """The client certificate's ``x5t#S256``: from a trusted proxy's header when
        configured, else from the TLS connection (RFC 8705 §3)."""
        name = self.config.gateway.certificate_header
        if name is not None and self.proxy.trusts(scope):
            wanted = name.lower().encode("latin-1")
            for key, value in scope["headers"]:
                if key == wanted:
                    return forwarded_thumbprint(value.decode("latin-1"))
            return None
        # The TLS connection the gateway terminates (gateway/server.py), or an ASGI server's
        # TLS extension.
        der = (scope.get("state") or {}).get(PEER_CERTIFICATE)
        return der_thumbprint(der) if der else certificate_thumbprint(scope)

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
        length = (b"content-length", str(len(body)).encode())
        # No credentials: an empty body (RFC 6750 §3.1), so no content type either.
        headers = [(b"content-type", JSON), length, *headers] if body else [length, *headers]
        if isinstance(decision.error, IntrospectionUnavailable):
            headers.append(_NO_STORE)
        return status, headers, body

    # -- forward-auth -----------------------------------------------------------------------

    async def forward_auth(self, scope: Scope, send: Send) -> None:
        """One decision for nginx, Traefik or Envoy; see the module docstring."""
        check = self._forward_auth_check(scope)
        if isinstance(check, tuple):
            outcome, answer = check
            self.metrics.request("-", "forward_auth", outcome)
            await _respond(send, answer)
            return
        route = check.route
        decision = await self.authorizer.decide(
            route,
            check.method,
            check.authorization,
            repeated=check.repeated,
            proof=check.proof,
            proofs=check.proofs,
            url=check.url,
            certificate_x5t=_forwarded_certificate(
                check.headers, self.config.gateway.certificate_header
            ),
        )
        decision, phantom = await self._phantom(route, decision)
        self.metrics.request(route.label, "forward_auth", decision.outcome)
        await _respond(send, self._forward_auth_answer(route, decision, phantom))

    def forward_auth_now(self, scope: Scope) -> Answer | None:
        """``forward_auth``'s answer when it needs no I/O (a cache hit it allows, or a request
        refused before any token check); None: ``forward_auth`` decides (the fast path)."""
        check = self._forward_auth_check(scope)
        if isinstance(check, tuple):
            outcome, answer = check
            self.metrics.request("-", "forward_auth", outcome)
            return answer
        route = check.route
        if check.repeated or check.proofs or route.config.phantom_token:
            return None
        decision = self.authorizer.decide_now(route, check.method, check.authorization)
        if decision is None:
            return None
        if decision.outcome == "allowed":
            self.metrics.cache_hit.inc()
        self.metrics.request(route.label, "forward_auth", decision.outcome)
        return self._forward_auth_answer(route, decision, None)

    def _forward_auth_check(self, scope: Scope) -> _Check | tuple[str, Answer]:
        """The original request a forward-auth call describes, or the outcome and answer of
        one refused before any token check."""
        h: dict[bytes, str] = {}
        repeated = False
        spoofed = False
        proofs = 0
        spoofs = self.header_kinds.spoofs
        for name, value in scope["headers"]:
            if name == b"authorization" and name in h:
                repeated = True
            if name == b"dpop":
                proofs += 1
            spoofed = spoofed or spoofs(name)
            h[name] = value.decode("latin-1")
        if spoofed:
            # The proxy in front forwards the caller's headers with our answer's: it replaces
            # X-Auth-Subject, but X_Auth_Subject would reach the service beside it, and CGI and
            # WSGI read both as HTTP_X_AUTH_SUBJECT. Refuse rather than pass it on.
            return "bad_request", _json(
                400,
                {
                    "error": "invalid_request",
                    "error_description": "an identity or forwarding header is spelled "
                    "in another way (such as '_' for '-')",
                },
            )
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
            raw = forwarded.partition("?")[0]
            path = unquote(raw)
        else:  # Envoy ext_authz: path_prefix + original path, original method and Host
            assert self.forward_auth_path is not None
            raw_path = (scope.get("raw_path") or scope["path"].encode()).decode("latin-1")
            raw = raw_path.partition("?")[0][len(self.forward_auth_path) :] or "/"
            path = scope["path"][len(self.forward_auth_path) :] or "/"
        # htu (RFC 9449 §4.3): the caller's URL as the proxy in front saw it; the scheme from
        # its X-Forwarded-Proto (nginx: set it; Traefik and Envoy send it). Only the proxy
        # reaches this endpoint, so its headers are believed.
        proto = h.get(b"x-original-proto") or h.get(b"x-forwarded-proto") or scope["scheme"]
        url = f"{proto}://{host or 'localhost'}{raw}"
        try:
            path = normalize_path(path)
        except BadPath as exc:
            return "bad_request", _json(
                400, {"error": "invalid_request", "error_description": str(exc)}
            )
        route = self.table.match(host, path)
        if route is None:
            # No policy covers this request: fail closed.
            return "no_route", _json(
                403,
                {"error": "access_denied", "error_description": "no route matches this request"},
            )
        return _Check(
            route=route,
            method=method.upper(),
            authorization=h.get(b"authorization"),
            repeated=repeated,
            proof=h.get(b"dpop"),
            proofs=proofs,
            url=url,
            headers=h,
        )

    def _forward_auth_answer(
        self, route: Route, decision: Decision, phantom: bytes | None
    ) -> Answer:
        if not decision.allowed:
            return self._refusal(route, decision)
        given = self._identity(decision.principal)
        set_names = {name for name, _ in given}
        missing = [n for n in self.identity_names if n.encode() not in set_names]
        headers = [(b"content-length", b"0"), _NO_STORE, *given]
        if phantom is not None:
            headers.append((b"authorization", phantom))  # the proxy forwards this instead
        if missing:
            headers.append((b"x-envoy-auth-headers-to-remove", ", ".join(missing).encode()))
        return 200, headers, b""


@dataclass(slots=True)
class _Check:
    """A forward-auth request: the original request it describes, as the proxy sent it."""

    route: Route
    method: str
    authorization: str | None
    repeated: bool
    proof: str | None
    proofs: int
    url: str
    headers: dict[bytes, str]


def _forwarded_certificate(headers: dict[bytes, str], name: str | None) -> str | None:
    """``x5t#S256`` of the certificate the proxy in front forwarded (RFC 8705 §3), if any."""
    if name is None:
        return None
    value = headers.get(name.lower().encode("latin-1"))
    return None if value is None else forwarded_thumbprint(value)


def _nonces(config: GatewayConfig) -> NonceSource | None:
    """Server nonces for DPoP proofs (RFC 9449 §9), when ``dpop_nonce`` is on."""
    listen = config.gateway
    if not listen.dpop_nonce:
        return None
    secret = listen.dpop_nonce_secret
    return NonceSource(secret.get_secret_value().encode("utf-8") if secret else None)


def _shared_replay(config: GatewayConfig) -> SharedReplayCache | None:
    """Proof jtis shared by every gateway instance through Redis (``dpop_replay_redis``)."""
    url = config.gateway.dpop_replay_redis
    if url is None:
        return None
    try:
        import redis.asyncio as aioredis
    except ImportError as exc:  # pragma: no cover - only without the extra
        raise ImportError(
            "dpop_replay_redis needs redis-py: pip install 'keystile[redis]'"
        ) from exc
    client = aioredis.Redis.from_url(url, socket_timeout=0.5, socket_connect_timeout=0.5)
    return SharedReplayCache(client, prefix="keystile:gateway:dpop")
