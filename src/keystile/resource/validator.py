"""What the integrations need from a token validator: two small protocols.

``TokenValidator`` (asyncio) and ``SyncTokenValidator`` (threads) implement them against a
real AS; ``keystile.testing.StaticValidator`` and ``SyncStaticValidator`` implement them from
a table, so an application's own tests need no AS. The middleware, the FastAPI/Starlette
helpers and the Flask extension accept anything that fits::

    def protect(app: ASGIApp, validator: Validator) -> ASGIApp:
        return BearerAuthMiddleware(app, validator, scopes={"read"})
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from keystile.resource.principal import Principal


class Validator(Protocol):
    """Validates bearer tokens with asyncio (``TokenValidator``, ``StaticValidator``)."""

    async def validate(self, token: str) -> Principal:
        """The token's principal; raises InvalidToken or IntrospectionUnavailable."""
        ...

    def require(self, principal: Principal, scopes: Iterable[str] = ()) -> None:
        """Raises InsufficientScope unless the principal holds every scope."""
        ...

    def cached(self, token: str) -> Principal | object | None:
        """The answer known without I/O: a Principal, None (inactive), or ``cache.MISS``."""
        ...

    async def start(self) -> None: ...

    async def close(self) -> None: ...


class SyncValidator(Protocol):
    """Validates bearer tokens from threads (``SyncTokenValidator``, ``SyncStaticValidator``)."""

    def validate(self, token: str) -> Principal:
        """The token's principal; raises InvalidToken or IntrospectionUnavailable."""
        ...

    def require(self, principal: Principal, scopes: Iterable[str] = ()) -> None:
        """Raises InsufficientScope unless the principal holds every scope."""
        ...

    def cached(self, token: str) -> Principal | object | None:
        """The answer known without I/O: a Principal, None (inactive), or ``cache.MISS``."""
        ...

    def start(self) -> None: ...

    def close(self) -> None: ...
