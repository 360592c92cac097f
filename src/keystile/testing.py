"""Helpers for testing your own API without a live authorization server.

``StaticValidator`` (asyncio) and ``SyncStaticValidator`` (Flask, threads) are real
validators (the ``Validator``/``SyncValidator`` protocols of ``keystile.resource``) that know
a table of tokens instead of asking an AS. Put them where the real one goes::

    from keystile.testing import StaticValidator, issue_test_token, make_principal

    validator = StaticValidator()
    token = validator.add(make_principal(sub="alice", scopes={"orders:read"}))
    app = create_app(validator)           # your factory, given the fake instead of TokenValidator
    r = client.get("/orders", headers={"authorization": f"Bearer {token}"})
    validator.revoke(token)               # now 401 invalid_token
    validator.unavailable = True          # now 503, as when the AS is down

Unknown, revoked or expired tokens raise ``InvalidToken``, a missing scope raises
``InsufficientScope`` and ``unavailable`` raises ``IntrospectionUnavailable``: the same errors,
so your app answers exactly as it will in production.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from keystile.clock import FixedClock
from keystile.errors import IntrospectionUnavailable, InvalidToken
from keystile.resource.cache import MISS
from keystile.resource.introspection import check_scopes
from keystile.resource.principal import Principal

__all__ = [
    "FixedClock",
    "StaticValidator",
    "SyncStaticValidator",
    "issue_test_token",
    "make_principal",
]


def issue_test_token(prefix: str = "ks_test_") -> str:
    """A fresh random token that is a valid RFC 6750 ``b64token`` (256 bits, URL-safe)."""
    return prefix + secrets.token_urlsafe(32)


def make_principal(
    sub: str | None = "test-user",
    *,
    client_id: str | None = "test-client",
    scopes: Iterable[str] | str = (),
    aud: Iterable[str] | str = (),
    username: str | None = None,
    exp: int | None = None,
    expires_in: int = 3600,
    iss: str | None = "https://as.example.test",
    jti: str | None = None,
    claims: Mapping[str, Any] | None = None,
) -> Principal:
    """A Principal as an active introspection response would give it (RFC 7662 §2.2).

    ``scopes`` may be a space-separated string; ``exp`` defaults to now + ``expires_in``;
    ``claims`` adds members (and is what ``principal.claims`` shows)::

        make_principal("alice", scopes="orders:read orders:write", aud="https://api.test")
    """
    scope_set = frozenset(scopes.split() if isinstance(scopes, str) else scopes)
    audiences = (aud,) if isinstance(aud, str) else tuple(aud)
    now = int(time.time())
    body: dict[str, Any] = {
        "active": True,
        "token_type": "Bearer",
        "iat": now,
        "exp": now + expires_in if exp is None else exp,
        "jti": jti or secrets.token_hex(8),
    }
    for name, value in (
        ("sub", sub),
        ("client_id", client_id),
        ("username", username),
        ("iss", iss),
    ):
        if value is not None:
            body[name] = value
    if scope_set:
        body["scope"] = " ".join(sorted(scope_set))
    if audiences:
        body["aud"] = list(audiences) if len(audiences) > 1 else audiences[0]
    body.update(claims or {})
    principal = Principal.from_introspection(body)
    if principal is None:
        raise ValueError("these claims do not make an active token")
    return principal


def _principal(value: Principal | Mapping[str, Any]) -> Principal:
    if isinstance(value, Principal):
        return value
    principal = Principal.from_introspection({"active": True, **value})
    if principal is None:
        raise ValueError("these claims do not make an active token")
    return principal


class _TokenTable:
    """The validator logic both fakes share: a table, revocation, expiry, audience."""

    def __init__(
        self,
        tokens: Mapping[str, Principal | Mapping[str, Any]] | None = None,
        *,
        audience: str | None = None,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.audience = audience
        self.unavailable = False  # True: answer as if the AS were down (503)
        self.validations = 0  # how many tokens were checked, to assert on
        self.started = False
        self.closed = False
        self._wall = wall
        self._lock = threading.Lock()
        self._tokens: dict[str, Principal] = {
            token: _principal(value) for token, value in (tokens or {}).items()
        }

    def add(
        self,
        principal: Principal | Mapping[str, Any] | None = None,
        *,
        token: str | None = None,
        **fields: Any,
    ) -> str:
        """Make ``token`` (default: a new random one) active for a principal; return it.

        Without a principal, ``fields`` go to ``make_principal``:
        ``validator.add(sub="alice", scopes="read")``.
        """
        if principal is None:
            principal = make_principal(**fields)
        elif fields:
            raise TypeError("give a principal or make_principal fields, not both")
        token = token or issue_test_token()
        with self._lock:
            self._tokens[token] = _principal(principal)
        return token

    def revoke(self, token: str) -> None:
        """Make a token inactive, as a revocation on the AS would."""
        with self._lock:
            self._tokens.pop(token, None)

    def _lookup(self, token: str) -> Principal:
        with self._lock:
            self.validations += 1
            principal = self._tokens.get(token)
        if self.unavailable:
            raise IntrospectionUnavailable("StaticValidator.unavailable is set")
        if principal is None or (principal.exp is not None and principal.exp <= self._wall()):
            raise InvalidToken("the access token is not active")
        if self.audience is not None and self.audience not in principal.aud:
            raise InvalidToken("the access token is not meant for this resource")
        return principal

    def cached(self, token: str) -> Principal | object | None:
        """What ``validate`` would answer, without raising: a Principal, None, or MISS."""
        if self.unavailable:
            return MISS
        with self._lock:
            principal = self._tokens.get(token)
        if principal is None or (principal.exp is not None and principal.exp <= self._wall()):
            return None
        return principal

    @staticmethod
    def require(principal: Principal, scopes: Iterable[str] = ()) -> None:
        """Raise InsufficientScope (403, RFC 6750 §3.1) unless every scope was granted."""
        check_scopes(principal, scopes)


class StaticValidator(_TokenTable):
    """An asyncio ``Validator`` that knows a fixed table of tokens; no AS, no I/O."""

    async def validate(self, token: str) -> Principal:
        return self._lookup(token)

    async def start(self) -> None:
        self.started = True

    async def close(self) -> None:
        self.closed = True

    async def __aenter__(self) -> StaticValidator:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class SyncStaticValidator(_TokenTable):
    """A ``SyncValidator`` (Flask, threads) that knows a fixed table of tokens."""

    def validate(self, token: str) -> Principal:
        return self._lookup(token)

    def start(self) -> None:
        self.started = True

    def close(self) -> None:
        self.closed = True

    def __enter__(self) -> SyncStaticValidator:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
