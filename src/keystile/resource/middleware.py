"""Pure ASGI middleware that lets only requests with an active bearer token through.

    app = BearerAuthMiddleware(app, validator, scopes={"orders:read"})

Answers per RFC 6750 §3: no credentials → 401 with a bare ``Bearer`` challenge; a malformed
Authorization header → 400 ``invalid_request``; an inactive token → 401 ``invalid_token``;
missing scopes → 403 ``insufficient_scope`` with ``scope=``; the AS unable to answer → 503
with ``Retry-After`` (fail closed, and honest). On success the Principal is in
``scope["state"]["keystile.principal"]`` (``principal_of(request)`` reads it).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any

import orjson

from keystile.core.bearer import bearer_token, challenge
from keystile.errors import IntrospectionUnavailable, InvalidRequest, OAuthError
from keystile.resource.principal import Principal
from keystile.resource.validator import Validator

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

STATE_KEY = "keystile.principal"


def principal_of(request_or_scope: Any) -> Principal:
    """The Principal the middleware stored for this request (Starlette request or scope)."""
    scope = getattr(request_or_scope, "scope", request_or_scope)
    principal = scope.get("state", {}).get(STATE_KEY)
    if not isinstance(principal, Principal):
        raise LookupError("no authenticated principal on this request")
    return principal


def error_response(
    exc: OAuthError | IntrospectionUnavailable,
    *,
    realm: str | None = None,
    resource_metadata: str | None = None,
) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """Status, headers and body for a refused request (RFC 6750 §3, RFC 9728 §5.1)."""
    body: dict[str, str]
    if isinstance(exc, IntrospectionUnavailable):
        body = {
            "error": "temporarily_unavailable",
            "error_description": "the authorization server cannot be reached",
        }
        return 503, [(b"retry-after", b"1")], orjson.dumps(body)
    status = exc.status_code
    error = exc.error
    description = exc.description
    scope_param = None
    if error == "insufficient_scope":
        scope_param = description  # the scopes the request needs
        description = "the access token lacks a required scope"
    if getattr(exc, "bare", False):
        # No credentials at all: RFC 6750 §3.1 says no error code in the challenge.
        value = challenge(realm=realm, resource_metadata=resource_metadata)
        body = {
            "error": "invalid_token",
            "error_description": "a bearer token is required",
        }
    else:
        value = challenge(
            realm=realm,
            error=error,
            description=description,
            scope=scope_param,
            resource_metadata=resource_metadata,
        )
        body = {"error": error}
        if description:
            body["error_description"] = description
    headers = [(b"www-authenticate", value.encode()), (b"cache-control", b"no-store")]
    return status, headers, orjson.dumps(body)


class MissingToken(OAuthError):
    """No credentials (RFC 6750 §3.1: 401 with a challenge but no error code)."""

    error, status_code = "invalid_token", 401
    bare = True


class BearerAuthMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        validator: Validator,
        *,
        scopes: Iterable[str] = (),
        realm: str | None = None,
        resource_metadata: str | None = None,
        exempt_paths: Iterable[str] = (),
    ) -> None:
        self.app = app
        self.validator = validator
        self.scopes = frozenset(scopes)
        self.realm = realm
        self.resource_metadata = resource_metadata
        self.exempt = frozenset(exempt_paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path") in self.exempt:
            await self.app(scope, receive, send)
            return
        try:
            authorization = None
            for key, value in scope["headers"]:
                if key == b"authorization":
                    if authorization is not None:
                        raise InvalidRequest("more than one Authorization header")
                    authorization = value.decode("latin-1")
            token = bearer_token(authorization)
            if token is None:
                raise MissingToken()
            principal = await self.validator.validate(token)
            if self.scopes:
                self.validator.require(principal, self.scopes)
        except (OAuthError, IntrospectionUnavailable) as exc:
            status, headers, body = error_response(
                exc, realm=self.realm, resource_metadata=self.resource_metadata
            )
            headers = [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *headers,
            ]
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": body})
            return
        scope.setdefault("state", {})[STATE_KEY] = principal
        await self.app(scope, receive, send)
