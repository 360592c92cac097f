"""Pure ASGI middleware that lets only requests with an active bearer token through.

    app = BearerAuthMiddleware(app, validator, scopes={"orders:read"})

Answers per RFC 6750 §3: no credentials (no Authorization header, an empty one, or one
with another scheme than Bearer) → 401 with a bare ``Bearer`` challenge and an empty body; a
malformed bearer credential → 400 ``invalid_request``; an inactive token → 401 ``invalid_token``;
missing scopes → 403 ``insufficient_scope`` with ``scope=``; the AS unable to answer → 503
with ``Retry-After`` (fail closed, and honest). On success the Principal is in
``scope["state"]["keystile.principal"]`` (``principal_of(request)`` reads it).

Sender-constrained tokens (RFC 9449, RFC 8705): with ``sender=SenderCheck(...)`` the
middleware also takes ``Authorization: DPoP`` and checks every request's proof or
certificate against the token's ``cnf`` (``resource/sender.py``); refusals carry a ``DPoP``
challenge (RFC 9449 §7.1). Without it, a bound token is refused: this app could not tell
its holder from someone who copied it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any

import orjson

from keystile.core.bearer import challenge
from keystile.core.dpop_scheme import access_credentials, dpop_challenge
from keystile.errors import IntrospectionUnavailable, InvalidRequest, OAuthError
from keystile.resource.principal import Principal
from keystile.resource.sender import SenderCheck, SenderRefused, confirmation, request_url
from keystile.resource.validator import Validator

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

STATE_KEY = "keystile.principal"
_NO_STORE = (b"cache-control", b"no-store")


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
    """Status, headers and body for a refused request (RFC 6750 §3, RFC 9728 §5.1); the body
    is JSON, or empty for a request without credentials (``MissingToken``)."""
    body: dict[str, str]
    if isinstance(exc, IntrospectionUnavailable):
        body = {
            "error": "temporarily_unavailable",
            "error_description": exc.public_description,
        }
        return 503, [(b"retry-after", b"1")], orjson.dumps(body)
    status = exc.status_code
    if getattr(exc, "bare", False):
        # RFC 6750 §3.1: "If the request lacks any authentication information (e.g., the
        # client was unaware that authentication is necessary or attempted using an
        # unsupported authentication method), the resource server SHOULD NOT include an error
        # code or other error information": a bare challenge and an empty body.
        value = challenge(realm=realm, resource_metadata=resource_metadata)
        return status, [(b"www-authenticate", value.encode()), _NO_STORE], b""
    error = exc.error
    description = exc.description
    if getattr(exc, "dpop", False):
        # RFC 9449 §7.1: a DPoP challenge naming the algorithms, and any DPoP-Nonce (§9).
        value = dpop_challenge(realm=realm, error=error, description=description)
        headers = [(b"www-authenticate", value.encode()), _NO_STORE]
        headers += [(k.lower().encode(), v.encode()) for k, v in exc.headers.items()]
        body = {"error": error}
        if description:
            body["error_description"] = description
        return status, headers, orjson.dumps(body)
    scope_param = None
    if error == "insufficient_scope":
        scope_param = description  # the scopes the request needs
        description = "the access token lacks a required scope"
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
    return status, [(b"www-authenticate", value.encode()), _NO_STORE], orjson.dumps(body)


class MissingToken(OAuthError):
    """No credentials (RFC 6750 §3.1: 401 with a challenge but no error information)."""

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
        sender: SenderCheck | None = None,
        origin: str | None = None,
    ) -> None:
        self.app = app
        self.sender = sender
        self.origin = origin  # scheme://host clients use, when a proxy terminates TLS
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
            authorization = proof = None
            proofs = 0
            for key, value in scope["headers"]:
                if key == b"authorization":
                    if authorization is not None:
                        raise InvalidRequest("more than one Authorization header")
                    authorization = value.decode("latin-1")
                elif key == b"dpop":
                    proof = value.decode("latin-1")
                    proofs += 1
            credentials = access_credentials(authorization)
            if credentials is None or (credentials[0] == "dpop" and self.sender is None):
                raise MissingToken()
            scheme, token = credentials
            principal = await self.validator.validate(token)
            # Every request, cached answer or not: the binding is the sender's, not the token's.
            if self.sender is None:
                if confirmation(principal) != (None, None):
                    raise SenderRefused("this resource does not accept sender-constrained tokens")
            else:
                if proofs > 1:
                    raise SenderRefused("send one DPoP header")  # RFC 9449 §4.3 item 1
                await self.sender.acheck(
                    principal,
                    scheme=scheme,
                    token=token,
                    proof=proof,
                    method=scope["method"],
                    url=request_url(scope, self.origin),
                    certificate_x5t=certificate_thumbprint(scope),
                )
            if self.scopes:
                self.validator.require(principal, self.scopes)
        except (OAuthError, IntrospectionUnavailable) as exc:
            status, headers, body = error_response(
                exc, realm=self.realm, resource_metadata=self.resource_metadata
            )
            length = (b"content-length", str(len(body)).encode())
            if body:
                headers = [(b"content-type", b"application/json"), length, *headers]
            else:
                headers = [length, *headers]
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": body})
            return
        scope.setdefault("state", {})[STATE_KEY] = principal
        await self.app(scope, receive, send)


def certificate_thumbprint(scope: Scope) -> str | None:
    """``x5t#S256`` of the client certificate of a TLS connection the ASGI server reports
    (the ASGI TLS extension: ``scope["extensions"]["tls"]["client_cert_chain"]``, PEM)."""
    tls = (scope.get("extensions") or {}).get("tls") or {}
    chain = tls.get("client_cert_chain") or ()
    if not chain:
        return None
    from keystile.core.mtls import pem_thumbprint

    return pem_thumbprint(chain[0])
