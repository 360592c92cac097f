"""The admin API's HTTP shell (docs/admin.md): RFC 9457 problem details, bearer-token
authentication with keystile's own tokens (RFC 6750), JSON bodies, pagination, and the
``Call`` each handler (admin_handlers.py) receives.

The operations themselves live in admin.py, key_admin.py, registration_admin.py and
token_admin.py, shared with the CLI; this module only turns HTTP into calls and back.
"""

from __future__ import annotations

import ipaddress
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from keystile.admin import ADMIN_ROLE
from keystile.admin_audit import change
from keystile.clock import Clock
from keystile.core.jwt_profile import looks_like_jwt
from keystile.core.models import Client, TokenRecord, User
from keystile.core.tokens import stored_digest
from keystile.errors import ConfigurationError, StoreUnavailable
from keystile.server.keys import SigningKeys
from keystile.settings import ServerSettings
from keystile.store.base import Conflict, NotFound, Store

if TYPE_CHECKING:
    from keystile.server.instance_stats import InstanceStatsBoard

log = logging.getLogger("keystile.admin")

ADMIN_SCOPE = "keystile:admin"
ADMIN_READ_SCOPE = "keystile:admin:read"
# Every admin answer may carry credentials (a new secret) or private records.
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
PROBLEM_TYPE = "urn:keystile:problem:"  # + a short name: invalid-input, not-found, ...
REALM = 'realm="keystile-admin"'
MAX_BODY = 65536
MAX_PAGE = 500


class Problem(Exception):
    """An RFC 9457 problem: ``type``, ``title``, ``status`` and ``detail``."""

    def __init__(
        self,
        status: int,
        name: str,
        title: str,
        detail: str,
        *,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.type = PROBLEM_TYPE + name
        self.title = title
        self.detail = detail
        self.headers = dict(headers or {})

    def response(self) -> Response:
        body = {"type": self.type, "title": self.title, "status": self.status}
        if self.detail:
            body["detail"] = self.detail
        return JSONResponse(
            body,
            status_code=self.status,
            media_type="application/problem+json",
            headers={**NO_STORE, **self.headers},
        )


def problem_from(exc: Exception) -> Problem:
    """The problem an operation's exception means; the detail is the message the CLI
    prints after ``keystile:``, so both say the same thing."""
    if isinstance(exc, Problem):
        return exc
    if isinstance(exc, ConfigurationError):
        return Problem(400, "invalid-input", "Invalid input", str(exc))
    if isinstance(exc, NotFound):
        return Problem(404, "not-found", "Not found", str(exc))
    if isinstance(exc, Conflict):
        return Problem(409, "conflict", "Conflict", str(exc))
    if isinstance(exc, StoreUnavailable):
        return Problem(
            503,
            "store-unavailable",
            "Store unavailable",
            "the store cannot answer; try again",
            headers={"Retry-After": "1"},
        )
    # Never echo internals back (STYLE.md §3): log them instead.
    log.exception("unexpected error in the admin API", exc_info=exc)
    return Problem(500, "server-error", "Internal error", "internal error")


# -- authentication (RFC 6750 bearer tokens issued by keystile itself) ------------------------


@dataclass(frozen=True, slots=True)
class AdminCaller:
    """Who calls: the client the token was issued to, its token's jti, and the address."""

    client_id: str
    jti: str
    address: str
    may_write: bool
    user: str | None = None  # the username, for a person's token (the console)


def _challenge(error: str | None = None, description: str = "", scope: str = "") -> str:
    parts = [REALM]
    if error:
        parts.append(f'error="{error}"')
    if description:
        parts.append(f'error_description="{description}"')
    if scope:
        parts.append(f'scope="{scope}"')
    return "Bearer " + ", ".join(parts)


def _unauthorized(detail: str, error: str | None = "invalid_token") -> Problem:
    return Problem(
        401,
        "unauthorized",
        "Unauthorized",
        detail,
        headers={"WWW-Authenticate": _challenge(error, detail if error else "")},
    )


def admin_access(
    record: TokenRecord | None,
    client: Client | None,
    *,
    now: int,
    method: str,
    user: User | None = None,
) -> Literal["write", "read", "invalid_token", "insufficient_scope", "not_admin"]:
    """The decision for a looked-up token and its client, with the rules of
    /oauth2/introspect (RFC 7662: unknown, expired and revoked are all just not active): an
    active access token of an enabled client, holding the admin scope, which its client
    must still be allowed (taking the scope away ends admin access at once). Reads need
    ``keystile:admin:read`` or ``keystile:admin``, changes ``keystile:admin``.

    A person's token (from the code flow, e.g. the console's) also needs its user to be
    enabled and to hold the ``admin`` role now: the scope alone is what any user could
    consent to."""
    if record is None or record.kind != "access_token" or not record.is_active(now):
        return "invalid_token"
    if client is None or not client.enabled or client.client_id != record.client_id:
        return "invalid_token"
    if record.grant_id is not None:
        if user is None or user.user_id != record.sub or not user.enabled:
            return "invalid_token"
        if ADMIN_ROLE not in user.roles:
            return "not_admin"
    granted = record.scope & client.scopes
    if ADMIN_SCOPE in granted:
        return "write"
    if ADMIN_READ_SCOPE in granted and method in ("GET", "HEAD"):
        return "read"
    return "insufficient_scope"


class AdminAuthenticator:
    """Authenticates every admin request: address allow-list, then the bearer token,
    looked up in the store each time (no cache: a revoked token is refused at once)."""

    def __init__(
        self, settings: ServerSettings, store: Store, clock: Clock, signing: SigningKeys
    ) -> None:
        self.store = store
        self.clock = clock
        self.signing = signing
        self.networks = [ipaddress.ip_network(a, strict=False) for a in settings.admin_api_allow]

    def address_allowed(self, address: str) -> bool:
        if not self.networks:
            return True
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in net for net in self.networks)

    async def authenticate(self, request: Request) -> AdminCaller:
        """The caller of an admin API request (its bearer token), or a Problem."""
        address = request.client.host if request.client else "unknown"
        self.check_address(address)
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            # RFC 6750 §3.1: no error code when the request carried no credentials.
            raise _unauthorized("a bearer token is required", error=None)
        return await self.check_token(token, address, request.method)

    def check_address(self, address: str) -> None:
        # The allow-list first: from elsewhere nothing about tokens is revealed.
        if not self.address_allowed(address):
            raise Problem(
                403, "address-not-allowed", "Forbidden", "the admin API is not open to this address"
            )

    async def check_token(self, token: str, address: str, method: str) -> AdminCaller:
        """The caller a token stands for, for a request with this method; a Problem if it
        may not (the console calls this with the token its session holds)."""
        digest = stored_digest(token)
        if digest is None and looks_like_jwt(token):
            _, record = await self.signing.lookup(token)  # RFC 9068, as introspection does
        elif digest is None:
            record = None
        else:
            record = await self.store.find_token(digest)
        client = user = None
        if record is not None:
            client = await self.store.get_client(record.client_id)
            if record.grant_id is not None and record.sub is not None:
                user = await self.store.get_user(record.sub)
        decision = admin_access(record, client, now=self.clock.now(), method=method, user=user)
        if decision == "invalid_token" or record is None:
            raise _unauthorized("the token is not active")
        if decision == "not_admin":
            raise Problem(
                403, "not-an-admin", "Forbidden", "this user does not hold the admin role"
            )
        if decision == "insufficient_scope":
            needed = ADMIN_SCOPE if method not in ("GET", "HEAD") else ADMIN_READ_SCOPE
            raise Problem(
                403,
                "insufficient-scope",
                "Forbidden",
                f"this needs scope {needed}",
                headers={
                    "WWW-Authenticate": _challenge(
                        "insufficient_scope", f"this needs scope {needed}", needed
                    )
                },
            )
        return AdminCaller(
            client_id=record.client_id,
            jti=record.jti,
            address=address,
            may_write=decision == "write",
            user=None if user is None else user.username,
        )


# -- bodies and pages ---------------------------------------------------------------------


class Body:
    """A JSON object body, read field by field with its type checked; unknown fields are
    an error, so a typo never silently does nothing."""

    def __init__(self, data: dict[str, Any]) -> None:
        self.data = data
        self._read: set[str] = set()

    @classmethod
    async def read(cls, request: Request) -> Body:
        raw = await request.body()
        if len(raw) > MAX_BODY:
            raise Problem(413, "too-large", "Content too large", f"at most {MAX_BODY} bytes")
        if not raw.strip():
            return cls({})
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if kind != "application/json":
            raise Problem(
                415, "unsupported-media-type", "Unsupported media type", "send application/json"
            )
        try:
            data = json.loads(raw)
        except ValueError:
            raise ConfigurationError("the body is not valid JSON") from None
        if not isinstance(data, dict):
            raise ConfigurationError("the body must be a JSON object")
        return cls(data)

    def _get(self, name: str, kinds: tuple[type, ...], what: str) -> Any:
        self._read.add(name)
        value = self.data.get(name)
        if value is None:
            return None
        if isinstance(value, bool) and bool not in kinds:
            raise ConfigurationError(f"{name} must be {what}")
        if not isinstance(value, kinds):
            raise ConfigurationError(f"{name} must be {what}")
        return value

    def text(self, name: str) -> str | None:
        return self._get(name, (str,), "a string")  # type: ignore[no-any-return]

    def required(self, name: str) -> str:
        value = self.text(name)
        if value is None:
            raise ConfigurationError(f"missing field: {name}")
        return value

    def integer(self, name: str) -> int | None:
        return self._get(name, (int,), "an integer")  # type: ignore[no-any-return]

    def flag(self, name: str) -> bool | None:
        return self._get(name, (bool,), "true or false")  # type: ignore[no-any-return]

    def texts(self, name: str) -> list[str] | None:
        value = self._get(name, (list,), "a list of strings")
        if value is not None and not all(isinstance(v, str) for v in value):
            raise ConfigurationError(f"{name} must be a list of strings")
        return value  # type: ignore[no-any-return]

    def mapping(self, name: str) -> dict[str, Any] | None:
        return self._get(name, (dict,), "a JSON object")  # type: ignore[no-any-return]

    def done(self) -> None:
        unknown = sorted(set(self.data) - self._read)
        if unknown:
            raise ConfigurationError(f"unknown field(s): {', '.join(unknown)}")


def query_int(request: Request, name: str, default: int | None, low: int, high: int) -> int | None:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    if not raw.isdigit() or not low <= int(raw) <= high:
        raise ConfigurationError(f"{name} must be an integer {low}..{high}")
    return int(raw)


def page(request: Request, items: list[dict[str, Any]], key: str) -> dict[str, Any]:
    """One page of ``items`` ordered by ``key``: ``?limit=`` (1..500, default 100) and
    ``?cursor=`` (the ``next_cursor`` of the previous page: the last key it held)."""
    limit = query_int(request, "limit", 100, 1, MAX_PAGE) or 100
    cursor = request.query_params.get("cursor")
    ordered = sorted(items, key=lambda item: str(item[key]))
    if cursor:
        ordered = [item for item in ordered if str(item[key]) > cursor]
    shown = ordered[:limit]
    more = len(ordered) > limit
    return {"items": shown, "next_cursor": str(shown[-1][key]) if more and shown else None}


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return JSONResponse(body, status_code=status, headers={**NO_STORE, **(headers or {})})


# -- one request -----------------------------------------------------------------------------


@dataclass
class Call:
    """One admin request: the caller, the request, and what the handler needs."""

    request: Request
    caller: AdminCaller
    store: Store
    clock: Clock
    settings: ServerSettings
    signing: SigningKeys
    audit: dict[str, Any] = field(default_factory=dict)
    stats: InstanceStatsBoard | None = None

    def param(self, name: str) -> str:
        return str(self.request.path_params[name])

    async def body(self) -> Body:
        return await Body.read(self.request)

    def changed(self, action: str, target: str, **details: Any) -> None:
        """Note the change for the audit event (never a secret in ``details``)."""
        self.audit = change(action, target, **details)


Handler = Callable[[Call], Awaitable[Response]]
