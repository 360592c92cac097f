"""Dynamic client registration over HTTP: RFC 7591 §3 (register) and RFC 7592 §2 (read,
update and delete a registered client with its registration access token).

Off unless ``registration`` is set (docs/registration.md). The rules for metadata are in
core/registration.py; this module authenticates, throttles, stores and renders.
"""

from __future__ import annotations

import hmac
import json
import logging
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from keystile.clock import Clock
from keystile.core.metadata import REGISTRATION_PATH
from keystile.core.models import Client, ClientRegistration
from keystile.core.registration import (
    SERVER_FIELDS,
    ClientMetadata,
    RegistrationPolicy,
    check_metadata,
)
from keystile.core.tokens import (
    new_client_secret,
    new_registration_access_token,
    token_hash,
    token_kind,
)
from keystile.errors import (
    InvalidClientMetadata,
    InvalidRequest,
    InvalidToken,
    OAuthError,
    RequestTooLarge,
    StoreUnavailable,
    TooManyRequests,
)
from keystile.server.throttle import FailureThrottle, Throttle
from keystile.settings import ServerSettings
from keystile.store.base import Conflict, NotFound, Store

log = logging.getLogger("keystile.server")

# RFC 7591 §3.2.1 / RFC 6749 §5.1: the answers carry credentials.
_NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
CLIENT_ID_PREFIX = "dcr_"


class RegistrationFull(OAuthError):
    """The cap on open registrations is reached (our own policy; RFC 7591 §3.2.2 allows
    other codes). It frees up as unused registrations expire."""

    error, status_code = "access_denied", 403


class RegistrationEndpoint:
    """``RegistrationEndpoint(settings, store, clock).routes()``: the Starlette routes."""

    def __init__(
        self,
        settings: ServerSettings,
        store: Store,
        clock: Clock,
        *,
        throttle: Throttle | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.clock = clock
        self.base = settings.effective_issuer.rstrip("/") + REGISTRATION_PATH
        # Every registration attempt, and every failed management call, counts against
        # the caller's address: a fixed window, shared by every AS process through Redis
        # when redis_url is set (``throttle``), else per process (server/throttle.py).
        self.throttle: Throttle = throttle or FailureThrottle(
            clock,
            limit=settings.registration_rate_limit,
            window=settings.registration_rate_window,
        )

    def routes(self) -> list[Route]:
        if self.settings.registration == "off":
            return []
        return [
            Route(REGISTRATION_PATH, self._guard(self.register), methods=["POST"]),
            Route(
                REGISTRATION_PATH + "/{client_id}",
                self._guard(self.manage),
                methods=["GET", "PUT", "DELETE"],
            ),
        ]

    def _guard(
        self, handler: Callable[[Request], Awaitable[Response]]
    ) -> Callable[[Request], Awaitable[Response]]:
        async def run(request: Request) -> Response:
            try:
                return await handler(request)
            except OAuthError as exc:
                headers = {**_NO_STORE, **exc.headers}
                if isinstance(exc, InvalidToken):
                    # RFC 6750 §3: a 401 for a bearer token names the scheme and the error.
                    headers["WWW-Authenticate"] = 'Bearer error="invalid_token"'
                log.info(
                    "registration refused",
                    extra={
                        "error": exc.error,
                        "description": exc.description,
                        "source": _address(request),
                    },
                )
                return JSONResponse(exc.body(), status_code=exc.status_code, headers=headers)
            except StoreUnavailable as exc:
                log.error("store unavailable", extra={"endpoint": "register", "error": str(exc)})
                return JSONResponse(
                    {
                        "error": "temporarily_unavailable",
                        "error_description": "the store is unavailable; retry shortly",
                    },
                    status_code=503,
                    headers={**_NO_STORE, "Retry-After": "1"},
                )

        return run

    # -- RFC 7591 §3.1: the client registration request ----------------------------------------

    async def register(self, request: Request) -> Response:
        key = "a:" + _address(request)
        wait = self.throttle.retry_after(key)
        if wait:
            raise TooManyRequests(wait, "too many registrations from this address; retry later")
        self.throttle.failed(key)
        policy = self.settings.registration
        initial_token = None
        if policy == "initial-access-token":
            # RFC 7591 §3: the initial access token is a bearer token (RFC 6750 §2.1).
            initial_token = _bearer(request)
            if token_kind(initial_token) != "initial_access_token":
                raise InvalidToken("an initial access token is required")
        body = await self._json(request)
        metadata = check_metadata(
            body, policy=policy, scope_ceiling=frozenset(self.settings.registration_scopes)
        )
        now = self.clock.now()
        # Spent only once the request is known good, so a typo does not burn a use.
        if initial_token is not None and not await self.store.use_initial_access_token(
            token_hash(initial_token), now
        ):
            raise InvalidToken("the initial access token is unknown, expired or used up")
        cap = None
        if policy == "open":
            cap = self.settings.registration_open_max
            await self.store.expire_registrations(
                "open", now - self.settings.registration_open_unused_ttl, now
            )
        secret = new_client_secret()
        access_token = new_registration_access_token()
        client = _client(
            CLIENT_ID_PREFIX + secrets.token_urlsafe(16),
            metadata,
            secret,
            audience=tuple(self.settings.registration_audience),
            ttl=self.settings.access_token_ttl,
            now=now,
        )
        registration = ClientRegistration(
            client_id=client.client_id,
            method=policy,  # type: ignore[arg-type]  # not "off": no route then
            registered_at=now,
            access_token_hash=token_hash(access_token),
            metadata=metadata.stored(),
        )
        try:
            stored = await self.store.register_client(client, registration, cap=cap)
        except Conflict:  # 128 random bits collided: do not guess, let the caller retry
            raise InvalidRequest("could not register the client; retry") from None
        if not stored:
            raise RegistrationFull(
                "open registration is full; ask the operator for an initial access token"
            )
        log.info(
            "client registered",
            extra={"client_id": client.client_id, "method": policy, "source": _address(request)},
        )
        body = self._information(client, metadata, registration, access_token)
        if client.auth_method in ("client_secret_basic", "client_secret_post"):
            # RFC 7591 §3.2.1: shown once, stored only as SHA-256; 0 = does not expire.
            body["client_secret"] = secret
            body["client_secret_expires_at"] = 0
        return JSONResponse(body, status_code=201, headers=_NO_STORE)

    # -- RFC 7592 §2: the client configuration endpoint ------------------------------------------

    async def manage(self, request: Request) -> Response:
        client_id = request.path_params["client_id"]
        key = "a:" + _address(request)
        wait = self.throttle.retry_after(key)
        if wait:
            raise TooManyRequests(wait, "too many failed requests from this address")
        token = _bearer(request)
        client, registration = await self._authorize(client_id, token, key)
        if request.method == "DELETE":
            # RFC 7592 §2.3: 204; the client's tokens are revoked with it.
            await self.store.delete_client(client_id, self.clock.now())
            log.info("registered client deleted", extra={"client_id": client_id})
            return Response(status_code=204, headers=_NO_STORE)
        metadata = _stored_metadata(registration)
        if request.method == "PUT":
            client, metadata = await self._update(request, client, registration)
        body = self._information(client, metadata, registration, token)
        return JSONResponse(body, headers=_NO_STORE)

    async def _authorize(
        self, client_id: str, token: str, key: str
    ) -> tuple[Client, ClientRegistration]:
        registration = await self.store.get_registration(client_id)
        client = await self.store.get_client(client_id)
        # RFC 7592 §2.1: a wrong token and an unknown client answer alike (401). Compare in
        # constant time; a disabled client is the operator's, not its own, to manage.
        presented = token_hash(token)
        if (
            registration is None
            or client is None
            or not hmac.compare_digest(presented, registration.access_token_hash)
        ):
            self.throttle.failed(key)
            raise InvalidToken("the registration access token is not valid for this client")
        if not client.enabled:
            raise InvalidToken("this client is disabled")
        return client, registration

    async def _update(
        self, request: Request, client: Client, registration: ClientRegistration
    ) -> tuple[Client, ClientMetadata]:
        """RFC 7592 §2.2: the body replaces the client's metadata as a whole."""
        body = await self._json(request)
        if not isinstance(body, dict):
            raise InvalidClientMetadata("the request body must be a JSON object")
        if body.get("client_id") != client.client_id:
            raise InvalidRequest("client_id must be given and match the client's")
        sent = [name for name in SERVER_FIELDS if name in body]
        if sent:
            raise InvalidRequest(", ".join(sent) + " must not be sent in an update")
        if "client_secret" in body:
            secret = body["client_secret"]
            if not isinstance(secret, str) or not hmac.compare_digest(
                token_hash(secret), client.secret_hash
            ):
                raise InvalidRequest("client_secret does not match the client's secret")
        policy: RegistrationPolicy = (
            "open" if registration.method == "open" else "initial-access-token"
        )
        metadata = check_metadata(
            body, policy=policy, scope_ceiling=frozenset(self.settings.registration_scopes)
        )
        if metadata.token_endpoint_auth_method != client.auth_method:
            raise InvalidClientMetadata(
                "token_endpoint_auth_method cannot change; register a new client instead"
            )
        updated = replace(
            client,
            name=metadata.extra.get("client_name", client.client_id),
            grant_types=frozenset(metadata.grant_types),
            scopes=metadata.scope,
            jwks=metadata.jwks,
            redirect_uris=metadata.redirect_uris,
            id_token_signed_response_alg=metadata.id_token_signed_response_alg,
            post_logout_redirect_uris=metadata.post_logout_redirect_uris,
            updated_at=self.clock.now(),
        )
        try:
            await self.store.update_registration(updated, metadata.stored())
        except NotFound:  # deleted meanwhile
            raise InvalidToken(
                "the registration access token is not valid for this client"
            ) from None
        return updated, metadata

    def _information(
        self,
        client: Client,
        metadata: ClientMetadata,
        registration: ClientRegistration,
        access_token: str,
    ) -> dict[str, Any]:
        """RFC 7591 §3.2.1 with RFC 7592 §3: the client information response."""
        return {
            "client_id": client.client_id,
            "client_id_issued_at": registration.registered_at,
            **metadata.to_json(),
            "registration_access_token": access_token,
            "registration_client_uri": f"{self.base}/{client.client_id}",
        }

    async def _json(self, request: Request) -> Any:
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type != "application/json":
            raise InvalidClientMetadata("the request body must be application/json")
        limit = self.settings.max_body_bytes
        raw = b""
        async for chunk in request.stream():
            raw += chunk
            if len(raw) > limit:
                raise RequestTooLarge(f"request body over {limit} bytes")
        try:
            return json.loads(raw)
        except ValueError:
            raise InvalidClientMetadata("the request body is not valid JSON") from None


def _client(
    client_id: str,
    metadata: ClientMetadata,
    secret: str,
    *,
    audience: tuple[str, ...],
    ttl: int,
    now: int,
) -> Client:
    # A public or private_key_jwt client gets an unusable random secret hash, as CLI-made
    # ones do, so that no empty digest ever exists to match.
    return Client(
        client_id=client_id,
        name=metadata.extra.get("client_name", client_id),
        secret_hash=token_hash(secret),
        auth_method=metadata.token_endpoint_auth_method,
        grant_types=frozenset(metadata.grant_types),
        scopes=metadata.scope,
        default_audience=audience,
        access_token_ttl=ttl,
        enabled=True,
        created_at=now,
        updated_at=now,
        jwks=metadata.jwks,
        redirect_uris=metadata.redirect_uris,
        id_token_signed_response_alg=metadata.id_token_signed_response_alg,
        post_logout_redirect_uris=metadata.post_logout_redirect_uris,
    )


def _stored_metadata(registration: ClientRegistration) -> ClientMetadata:
    data = json.loads(registration.metadata)
    jwks = data.pop("jwks", None)
    return ClientMetadata(
        redirect_uris=tuple(data.pop("redirect_uris", [])),
        token_endpoint_auth_method=data.pop("token_endpoint_auth_method"),
        grant_types=tuple(data.pop("grant_types", [])),
        response_types=tuple(data.pop("response_types", [])),
        scope=frozenset(data.pop("scope", "").split()),
        jwks=None if jwks is None else json.dumps(jwks, separators=(",", ":"), sort_keys=True),
        id_token_signed_response_alg=data.pop("id_token_signed_response_alg", None),
        post_logout_redirect_uris=tuple(data.pop("post_logout_redirect_uris", [])),
        extra=data,
    )


def _bearer(request: Request) -> str:
    """The bearer token of the Authorization header (RFC 6750 §2.1), or 401."""
    value = request.headers.get("authorization", "")
    scheme, _, token = value.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise InvalidToken("a bearer token is required")
    return token.strip()


def _address(request: Request) -> str:
    return request.client.host if request.client else "unknown"
