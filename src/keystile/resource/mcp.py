"""MCP servers protected by keystile: a token verifier for the official ``mcp`` Python SDK.

The SDK's ``FastMCP`` server takes any object with
``async verify_token(token) -> AccessToken | None`` (``mcp.server.auth.provider.TokenVerifier``).
``KeystileTokenVerifier`` is one, built on a keystile ``TokenValidator``: introspection
(RFC 7662) with the SDK's cache, single-flight and revocation events, and the audience check
of RFC 8707::

    validator = TokenValidator(issuer=AS, client_id="mcp-rs", client_secret="…")
    verifier = KeystileTokenVerifier(validator, resource="https://mcp.example.com/mcp")
    server = FastMCP("notes", token_verifier=verifier, auth=AuthSettings(
        issuer_url=AS, resource_server_url="https://mcp.example.com/mcp",
        required_scopes=["notes:read"], validate_token_resource=True))
    app = verifier.protect(server.streamable_http_app())

The SDK serves the RFC 9728 metadata document and answers 401 with
``WWW-Authenticate: Bearer …, resource_metadata="…"`` (RFC 9728 §5.1); ``protect`` adds the
503 the SDK cannot send when the AS cannot answer (docs/mcp.md). Needs the ``mcp`` extra.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

try:
    from mcp.server.auth.provider import AccessToken
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise ImportError(
        "keystile.resource.mcp needs the official MCP SDK: "
        "pip install 'mcp>=1.30,<2' (keystile's mcp extra)"
    ) from exc

from keystile.core.bearer import bearer_token
from keystile.errors import IntrospectionUnavailable, OAuthError
from keystile.resource.middleware import error_response
from keystile.resource.principal import Principal
from keystile.resource.validator import Validator

__all__ = ["KeystileTokenVerifier"]

log = logging.getLogger("keystile.resource")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class KeystileTokenVerifier:
    """The ``mcp`` SDK's ``TokenVerifier`` over a keystile validator.

    ``verify_token`` answers the SDK's ``AccessToken`` for an active token meant for
    ``resource`` (when given), and None for anything else: unknown, expired, revoked, for
    another resource, or without a ``client_id``. Scopes are left to the SDK
    (``AuthSettings.required_scopes``: 403 ``insufficient_scope``). The validator is started
    on first use (RFC 8414 discovery, then the revocation event stream), or by
    ``async with verifier:`` / ``await verifier.start()``.
    """

    def __init__(self, validator: Validator, *, resource: str | None = None) -> None:
        self.validator = validator
        # This server's identifier (RFC 8707 §2; the MCP server's URL, AuthSettings'
        # resource_server_url): a token whose audience does not name it is refused, so a
        # token issued for another API cannot be replayed here (RFC 9700 §2.3).
        self.resource = resource
        self._started = False
        self._starting: asyncio.Lock | None = None

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the validator once; a failed start (AS unreachable) is tried again later."""
        if self._started:
            return
        if self._starting is None:
            self._starting = asyncio.Lock()
        async with self._starting:
            if not self._started:
                await self.validator.start()  # raises IntrospectionUnavailable if the AS is down
                self._started = True

    async def close(self) -> None:
        if self._started:
            self._started = False
            await self.validator.close()

    async def __aenter__(self) -> KeystileTokenVerifier:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- the TokenVerifier protocol -----------------------------------------------------------

    async def verify_token(self, token: str) -> AccessToken | None:
        """The token's ``AccessToken``, or None when it must be refused (the SDK answers 401).

        Raises IntrospectionUnavailable when the AS cannot answer: the request is denied
        either way, but an unreachable AS is not a bad token (``protect`` makes it a 503).
        """
        principal = await self.principal(token)
        if principal is None:
            return None
        return self.access_token(token, principal)

    async def principal(self, token: str) -> Principal | None:
        """The keystile ``Principal`` of an acceptable token, or None."""
        await self.start()
        try:
            principal = await self.validator.validate(token)
        except OAuthError:  # InvalidToken: inactive, or the validator's own audience check
            return None
        if self.resource is not None and self.resource not in principal.aud:
            # RFC 8707: the token was issued for another resource server.
            log.info(
                "token refused: not meant for this MCP server",
                extra={"client_id": principal.client_id, "jti": principal.jti},
            )
            return None
        if principal.client_id is None:
            # The SDK binds MCP sessions to client_id; an answer without it (an AS hiding
            # the claim from this resource server) cannot be used safely.
            log.warning("token refused: the introspection answer carries no client_id")
            return None
        return principal

    def access_token(self, token: str, principal: Principal) -> AccessToken:
        """The SDK's view of a keystile principal: client, scopes, expiry, resource, subject."""
        assert principal.client_id is not None
        if self.resource is not None:
            resource: str | None = self.resource  # checked to be in aud
        else:
            resource = principal.aud[0] if len(principal.aud) == 1 else None
        claims = {k: v for k, v in principal.claims.items() if k != "active"}
        return AccessToken(
            token=token,
            client_id=principal.client_id,
            scopes=sorted(principal.scopes),
            expires_at=principal.exp,
            resource=resource,
            subject=principal.sub,
            claims=claims,
        )

    # -- 503 when the AS cannot answer ----------------------------------------------------------

    def protect(self, app: ASGIApp) -> ASGIApp:
        """Wrap the SDK's ASGI app so that an unreachable AS gives 503, not 500.

        The SDK calls ``verify_token`` inside Starlette's authentication middleware, where an
        exception can only become a 500. This wrapper validates the bearer token first (the
        answer is cached, so the SDK's own call costs a dictionary lookup) and answers
        ``503`` with ``Retry-After: 1`` when the AS cannot say whether the token is active:
        fail closed, without telling the caller its token is bad (docs/sdk.md).
        """
        return _AvailabilityGuard(app, self)


class _AvailabilityGuard:
    def __init__(self, app: ASGIApp, verifier: KeystileTokenVerifier) -> None:
        self.app = app
        self.verifier = verifier

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            authorization = None
            for key, value in scope.get("headers", ()):
                if key == b"authorization":
                    authorization = value.decode("latin-1")
                    break
            try:
                token = bearer_token(authorization)
                if token is not None:
                    await self.verifier.principal(token)
            except OAuthError:
                pass  # a malformed credential: the SDK refuses it with its own 401
            except IntrospectionUnavailable as exc:
                log.warning("introspection unavailable: %s", exc)
                status, headers, body = error_response(exc)
                headers = [*headers, (b"content-type", b"application/json")]
                headers.append((b"content-length", str(len(body)).encode()))
                await send({"type": "http.response.start", "status": status, "headers": headers})
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)
