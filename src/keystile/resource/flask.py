"""Bearer tokens (RFC 6750) in Flask: a decorator, and the Principal of the request.

    validator = SyncTokenValidator(issuer="https://auth.example.com",
                                   client_id="orders-api", client_secret="…")
    keystile = KeystileFlask(app, validator, realm="orders")

    @app.get("/orders")
    @require_scopes("orders:read")
    def orders():
        return {"sub": current_principal().sub}

Refusals are answered like ``BearerAuthMiddleware``: no token → 401 with a bare challenge
and an empty body, a malformed bearer credential → 400 ``invalid_request``, an inactive token → 401
``invalid_token``, a missing scope → 403 ``insufficient_scope`` with ``scope=``, the AS
unable to answer → 503 with ``Retry-After``. The validator is started (discovery, events
thread) on the first protected request, or by ``keystile.start()``.

Needs the ``flask`` extra.
"""

from __future__ import annotations

import functools
import inspect
import threading
from collections.abc import Callable, Iterable
from typing import Any, ParamSpec, TypeVar, cast

try:
    from flask import Blueprint, Flask, Response, current_app, g, request
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise ImportError(
        "keystile.resource.flask needs Flask (keystile's flask extra): pip install 'flask>=3.0'"
    ) from exc

from keystile.core.dpop_scheme import access_credentials
from keystile.errors import IntrospectionUnavailable, InvalidRequest, OAuthError
from keystile.resource.metadata import ProtectedResourceMetadata
from keystile.resource.middleware import MissingToken, error_response
from keystile.resource.principal import Principal
from keystile.resource.sender import SenderCheck, SenderRefused, confirmation
from keystile.resource.validator import SyncValidator

__all__ = [
    "KeystileFlask",
    "current_principal",
    "metadata_view",
    "require_scopes",
]

P = ParamSpec("P")
R = TypeVar("R")

EXTENSION_KEY = "keystile"
METADATA_ENDPOINT = "keystile_protected_resource_metadata"
_G_KEY = "keystile_principal"


class KeystileFlask:
    """The Flask extension: ``KeystileFlask(app, validator)`` or ``init_app(app)`` later."""

    def __init__(
        self,
        app: Flask | None = None,
        validator: SyncValidator | None = None,
        *,
        realm: str | None = None,
        resource_metadata: str | None = None,
        metadata: ProtectedResourceMetadata | None = None,
        sender: SenderCheck | None = None,
        origin: str | None = None,
    ) -> None:
        self.validator = validator
        # Sender-constrained tokens (RFC 9449, RFC 8705): checked with a SenderCheck (its
        # replay cache per process), refused without one (resource/sender.py).
        self.sender = sender
        self.origin = origin
        self.realm = realm
        self.metadata = metadata
        # The challenge points at the metadata document when we serve one (RFC 9728 §5.1).
        self.resource_metadata = resource_metadata or (metadata.url if metadata else None)
        self._started = False
        self._starting = threading.Lock()
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask, validator: SyncValidator | None = None) -> None:
        if validator is not None:
            self.validator = validator
        if self.validator is None:
            raise ValueError("KeystileFlask needs a validator (SyncTokenValidator or a fake)")
        app.extensions[EXTENSION_KEY] = self
        if self.metadata is not None:
            app.add_url_rule(
                self.metadata.path,
                endpoint=METADATA_ENDPOINT,
                view_func=metadata_view(self.metadata),
                methods=["GET"],
            )

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> None:
        """Start the validator now (otherwise the first protected request does)."""
        with self._starting:
            if not self._started:
                self._sync_validator().start()
                self._started = True

    def close(self) -> None:
        with self._starting:
            if self._started:
                self._sync_validator().close()
                self._started = False

    def _sync_validator(self) -> SyncValidator:
        if self.validator is None:
            raise RuntimeError("KeystileFlask has no validator: call init_app(app, validator)")
        return self.validator

    # -- checking requests ------------------------------------------------------------------

    def authenticate(self, scopes: Iterable[str] = ()) -> Principal:
        """The current request's Principal, holding ``scopes``.

        Raises OAuthError (400/401/403) or IntrospectionUnavailable (503); ``refusal()``
        turns either into the response.
        """
        principal = g.get(_G_KEY)
        if not isinstance(principal, Principal):
            values = request.headers.getlist("Authorization")
            if len(values) > 1:
                raise InvalidRequest("more than one Authorization header")
            credentials = access_credentials(values[0] if values else None)
            if credentials is None or (credentials[0] == "dpop" and self.sender is None):
                raise MissingToken()
            scheme, token = credentials
            if not self._started:
                self.start()  # raises IntrospectionUnavailable while the AS is down: 503
            principal = self._sync_validator().validate(token)
            if self.sender is None:
                # Nobody here could tell a bound token's holder from a thief.
                if confirmation(principal) != (None, None):
                    raise SenderRefused("this resource does not accept bound tokens")
            else:
                proofs = request.headers.getlist("DPoP")
                if len(proofs) > 1:
                    raise SenderRefused("send one DPoP header")  # RFC 9449 §4.3 item 1
                base = self.origin.rstrip("/") if self.origin else request.host_url.rstrip("/")
                self.sender.check(
                    principal,
                    scheme=scheme,
                    token=token,
                    proof=proofs[0] if proofs else None,
                    method=request.method,
                    url=base + request.script_root + request.path,
                )
        self._sync_validator().require(principal, scopes)
        setattr(g, _G_KEY, principal)
        return principal

    def refusal(self, exc: OAuthError | IntrospectionUnavailable) -> Response:
        """The RFC 6750 answer to a refused request, as the ASGI middleware gives it."""
        status, headers, body = error_response(
            exc, realm=self.realm, resource_metadata=self.resource_metadata
        )
        response = Response(
            body,
            status=status,
            headers=[(k.decode("latin-1"), v.decode("latin-1")) for k, v in headers],
            content_type="application/json",
        )
        if not body:  # no credentials: an empty body (RFC 6750 §3.1), of no type
            del response.headers["Content-Type"]
        return response

    def check(self, scopes: Iterable[str] = ()) -> Response | None:
        """None when the request may go on; otherwise the refusal to send."""
        try:
            self.authenticate(scopes)
        except (OAuthError, IntrospectionUnavailable) as exc:
            return self.refusal(exc)
        return None

    def require_scopes(self, *scopes: str) -> Callable[[Callable[P, R]], Callable[P, R | Response]]:
        """A view decorator: the view runs only for a token holding every scope."""
        return _decorator(lambda: self, frozenset(scopes))

    def protect(self, target: Flask | Blueprint, *scopes: str) -> None:
        """Require a token (with ``scopes``) on every request to an app or a blueprint,
        as ``BearerAuthMiddleware`` does; the metadata document stays public."""
        needed = frozenset(scopes)

        def check_request() -> Response | None:
            if request.endpoint == METADATA_ENDPOINT:
                return None
            return self.check(needed)

        target.before_request(check_request)


def _extension() -> KeystileFlask:
    ext = current_app.extensions.get(EXTENSION_KEY)
    if not isinstance(ext, KeystileFlask):
        raise RuntimeError("KeystileFlask is not set up on this app: KeystileFlask(app, validator)")
    return ext


def _decorator(
    extension: Callable[[], KeystileFlask], scopes: frozenset[str]
) -> Callable[[Callable[P, R]], Callable[P, R | Response]]:
    def decorate(view: Callable[P, R]) -> Callable[P, R | Response]:
        if inspect.iscoroutinefunction(view):

            @functools.wraps(view)
            async def async_wrapper(*args: P.args, **kwargs: P.kwargs) -> Any:
                refused = extension().check(scopes)
                if refused is not None:
                    return refused
                return await view(*args, **kwargs)

            return cast("Callable[P, R | Response]", async_wrapper)

        @functools.wraps(view)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R | Response:
            refused = extension().check(scopes)
            if refused is not None:
                return refused
            return view(*args, **kwargs)

        return wrapper

    return decorate


def require_scopes(*scopes: str) -> Callable[[Callable[P, R]], Callable[P, R | Response]]:
    """A view decorator using the app's ``KeystileFlask``::

    @app.get("/orders")
    @require_scopes("orders:read")
    def orders(): ...
    """
    return _decorator(_extension, frozenset(scopes))


def current_principal() -> Principal:
    """The Principal of the current request, once a protected view or ``protect`` let it in."""
    principal = g.get(_G_KEY)
    if not isinstance(principal, Principal):
        raise LookupError("no authenticated principal on this request")
    return principal


def metadata_view(metadata: ProtectedResourceMetadata) -> Callable[[], Response]:
    """A Flask view serving the RFC 9728 document: ``app.add_url_rule(metadata.path, ...)``."""
    body = metadata.json()

    def protected_resource_metadata() -> Response:
        return Response(
            body,
            content_type="application/json",
            headers={"cache-control": "public, max-age=3600"},
        )

    return protected_resource_metadata
