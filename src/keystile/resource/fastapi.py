"""Bearer tokens (RFC 6750) in FastAPI and Starlette: a dependency that yields the Principal.

    validator = TokenValidator(issuer="https://auth.example.com",
                               client_id="orders-api", client_secret="…")
    auth = KeystileAuth(validator, realm="orders")
    app = FastAPI(lifespan=auth.lifespan, exception_handlers=auth.exception_handlers)

    @app.get("/orders")
    async def orders(principal: Principal = Depends(auth.require_scopes("orders:read"))):
        return {"sub": principal.sub}

``lifespan`` starts and closes the validator and puts ``auth`` on ``app.state.keystile``, where
the module-level ``require_scopes("orders:read")`` finds it. Refusals are ``BearerError``
(an ``HTTPException``); with ``exception_handlers`` (or ``auth.install(app)``) they are
answered exactly like ``BearerAuthMiddleware``: 400/401/403 with ``WWW-Authenticate``, 503
with ``Retry-After``. Without the handler the status and headers are still right, and
the body is the framework's usual ``HTTPException`` one.

Plain Starlette: ``principal = await auth.authenticate(request, {"orders:read"})``.
Needs the ``fastapi`` extra (or Starlette alone, without the OpenAPI marker).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterable
from typing import Any

try:
    from starlette.exceptions import HTTPException
    from starlette.requests import HTTPConnection, Request
    from starlette.responses import Response
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise ImportError(
        "keystile.resource.fastapi needs Starlette or FastAPI: "
        "pip install 'fastapi>=0.110' (keystile's fastapi extra)"
    ) from exc

from keystile.core.dpop_scheme import access_credentials
from keystile.errors import IntrospectionUnavailable, InvalidRequest, OAuthError
from keystile.resource.middleware import (
    STATE_KEY,
    MissingToken,
    certificate_thumbprint,
    error_response,
)
from keystile.resource.principal import Principal
from keystile.resource.sender import SenderCheck, SenderRefused, confirmation, request_url
from keystile.resource.validator import Validator

try:  # Marks protected operations in FastAPI's OpenAPI document ("Authorize" button).
    from fastapi import Depends
    from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

    _OPENAPI_SCHEME: HTTPBearer | None = HTTPBearer(
        auto_error=False,  # we read and judge the header ourselves, per RFC 6750
        description="An OAuth 2.0 access token (RFC 6750)",
    )
except ImportError:  # pragma: no cover - plain Starlette
    _OPENAPI_SCHEME = None

__all__ = ["BearerError", "KeystileAuth", "bearer_error_handler", "require_scopes"]

Dependency = Callable[..., Awaitable[Principal]]


class BearerError(HTTPException):
    """A refused request: its status, ``WWW-Authenticate``/``Retry-After`` headers and the
    body ``BearerAuthMiddleware`` would send (``.response()``: JSON, or empty when the
    request carried no credentials)."""

    def __init__(
        self,
        error: OAuthError | IntrospectionUnavailable,
        *,
        realm: str | None = None,
        resource_metadata: str | None = None,
    ) -> None:
        status, headers, body = error_response(
            error, realm=realm, resource_metadata=resource_metadata
        )
        self.error = error
        self.body = body
        text_headers = {name.decode("latin-1"): value.decode("latin-1") for name, value in headers}
        if not body:
            # No credentials: no error information anywhere (RFC 6750 §3.1), so Starlette's
            # own detail ("Unauthorized") without the handler.
            detail = None
        else:
            detail = (error.description if isinstance(error, OAuthError) else None) or str(error)
        super().__init__(status, detail=detail, headers=text_headers)

    def response(self) -> Response:
        return Response(
            self.body,
            status_code=self.status_code,
            headers=self.headers,
            media_type="application/json" if self.body else None,
        )


async def bearer_error_handler(request: Request, exc: Exception) -> Response:
    """The exception handler that answers a BearerError like the middleware does."""
    if not isinstance(exc, BearerError):  # pragma: no cover - registered for BearerError only
        raise exc
    return exc.response()


def _authorization(conn: HTTPConnection) -> str | None:
    values = conn.headers.getlist("authorization")
    if len(values) > 1:
        raise InvalidRequest("more than one Authorization header")
    return values[0] if values else None


class KeystileAuth:
    """Bearer-token checks for one Starlette or FastAPI app, backed by any ``Validator``."""

    def __init__(
        self,
        validator: Validator,
        *,
        realm: str | None = None,
        resource_metadata: str | None = None,
        sender: SenderCheck | None = None,
        origin: str | None = None,
    ) -> None:
        self.validator = validator
        self.realm = realm
        self.resource_metadata = resource_metadata
        # Sender-constrained tokens (RFC 9449, RFC 8705): checked with a SenderCheck,
        # refused without one (resource/sender.py); origin as in BearerAuthMiddleware.
        self.sender = sender
        self.origin = origin

    @property
    def exception_handlers(
        self,
    ) -> dict[int | type[Exception], Callable[[Request, Any], Coroutine[Any, Any, Response]]]:
        """For ``FastAPI(exception_handlers=...)`` or ``Starlette(exception_handlers=...)``."""
        return {BearerError: bearer_error_handler}

    def install(self, app: Any) -> None:
        """Register the BearerError handler and put ``self`` on ``app.state.keystile``.

        Call it before the app serves its first request (Starlette builds its exception
        handling then, so the lifespan is too late for the handler).
        """
        app.add_exception_handler(BearerError, bearer_error_handler)
        app.state.keystile = self

    @contextlib.asynccontextmanager
    async def lifespan(self, app: Any) -> AsyncIterator[None]:
        """Start the validator (discovery, event stream) with the app, close it after.

        ``FastAPI(lifespan=auth.lifespan)``, or inside your own lifespan
        ``async with auth.lifespan(app): yield``.
        """
        app.state.keystile = self
        await self.validator.start()
        try:
            yield
        finally:
            await self.validator.close()

    async def authenticate(self, conn: HTTPConnection, scopes: Iterable[str] = ()) -> Principal:
        """The request's Principal, holding ``scopes``; raises BearerError otherwise.

        A Principal the middleware already stored for this request is reused (its scopes
        are still checked), so the app and a route can both ask without a second lookup.
        """
        try:
            principal = conn.scope.get("state", {}).get(STATE_KEY)
            if not isinstance(principal, Principal):
                credentials = access_credentials(_authorization(conn))
                if credentials is None or (credentials[0] == "dpop" and self.sender is None):
                    raise MissingToken()
                scheme, token = credentials
                principal = await self.validator.validate(token)
                if self.sender is None:
                    # Nobody here could tell a bound token's holder from a thief.
                    if confirmation(principal) != (None, None):
                        raise SenderRefused("this resource does not accept bound tokens")
                else:
                    proofs = conn.headers.getlist("dpop")
                    if len(proofs) > 1:
                        raise SenderRefused("send one DPoP header")  # RFC 9449 §4.3 item 1
                    await self.sender.acheck(
                        principal,
                        scheme=scheme,
                        token=token,
                        proof=proofs[0] if proofs else None,
                        method=conn.scope.get("method", "GET"),
                        url=request_url(conn.scope, self.origin),
                        certificate_x5t=certificate_thumbprint(conn.scope),
                    )
            self.validator.require(principal, scopes)
        except (OAuthError, IntrospectionUnavailable) as exc:
            raise BearerError(
                exc, realm=self.realm, resource_metadata=self.resource_metadata
            ) from None
        conn.scope.setdefault("state", {})[STATE_KEY] = principal
        return principal

    def require_scopes(self, *scopes: str) -> Dependency:
        """A dependency yielding the Principal of a request that holds every scope::

        @app.get("/orders")
        async def orders(principal: Principal = Depends(auth.require_scopes("orders:read"))):
        """
        needed = frozenset(scopes)

        async def authenticate(request: Request) -> Principal:
            return await self.authenticate(request, needed)

        return _documented(authenticate)


def require_scopes(*scopes: str) -> Dependency:
    """Like ``KeystileAuth.require_scopes``, using the ``KeystileAuth`` (or the bare
    validator) on ``request.app.state.keystile``."""
    needed = frozenset(scopes)

    async def authenticate(request: Request) -> Principal:
        return await auth_of(request.app).authenticate(request, needed)

    return _documented(authenticate)


def auth_of(app: Any) -> KeystileAuth:
    """The ``KeystileAuth`` of an app; a bare validator on ``app.state.keystile`` gets the
    default settings (no realm, no ``resource_metadata``)."""
    found = getattr(getattr(app, "state", None), "keystile", None)
    if isinstance(found, KeystileAuth):
        return found
    if found is not None and hasattr(found, "validate") and hasattr(found, "require"):
        return KeystileAuth(found)
    raise RuntimeError(
        "no keystile validator on app.state.keystile: use FastAPI(lifespan=auth.lifespan), "
        "auth.install(app), or set app.state.keystile"
    )


def _documented(authenticate: Callable[[Request], Awaitable[Principal]]) -> Dependency:
    """Add FastAPI's HTTPBearer scheme as a sub-dependency, so the operation shows as
    protected in OpenAPI; it never refuses anything itself (auto_error=False)."""
    if _OPENAPI_SCHEME is None:  # pragma: no cover - plain Starlette
        return authenticate

    async def dependency(
        request: Request,
        _credentials: HTTPAuthorizationCredentials | None = Depends(_OPENAPI_SCHEME),  # noqa: B008
    ) -> Principal:
        return await authenticate(request)

    return dependency
