"""Validating bearer tokens by introspection (RFC 7662) against any compliant AS.

``TokenValidator`` discovers the AS (RFC 8414), introspects with pooled connections,
caches results safely (``cache.py``), makes one AS call for N concurrent requests with the
same uncached token, and — when the AS publishes revocation events — keeps a stream open
that evicts revoked tokens at once (``events.py``)::

    validator = TokenValidator(issuer="https://auth.example.com",
                               client_id="orders-api", client_secret="…")
    await validator.start()
    principal = await validator.validate(token)      # raises InvalidToken
    validator.require(principal, scopes={"orders:read"})  # raises InsufficientScope
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
from collections.abc import Iterable
from typing import Any, Literal
from urllib.parse import quote_plus

import httpx

from keystile.errors import (
    InsufficientScope,
    IntrospectionUnavailable,
    InvalidToken,
)
from keystile.resource.cache import MISS, TokenCache, cache_key
from keystile.resource.principal import Principal

log = logging.getLogger("keystile.resource")

AuthMethod = Literal["client_secret_basic", "client_secret_post"]
METADATA_PATH = "/.well-known/oauth-authorization-server"


class TokenValidator:
    """Introspection client with a safe cache, single-flight and revocation events."""

    def __init__(
        self,
        *,
        client_id: str,
        client_secret: str,
        issuer: str | None = None,
        introspection_endpoint: str | None = None,
        events_endpoint: str | None = None,
        events: bool = True,
        auth_method: AuthMethod = "client_secret_basic",
        audience: str | None = None,
        max_ttl: float = 60.0,
        negative_ttl: float = 5.0,
        degraded_ttl: float = 5.0,
        max_entries: int = 100_000,
        timeout: float = 5.0,
        http: httpx.AsyncClient | None = None,
    ) -> None:
        if issuer is None and introspection_endpoint is None:
            raise ValueError("give issuer (for RFC 8414 discovery) or introspection_endpoint")
        self.client_id = client_id
        self._secret = client_secret
        self.issuer = issuer.rstrip("/") if issuer else None
        self.introspection_endpoint = introspection_endpoint
        self.events_endpoint = events_endpoint
        self.events_enabled = events
        self.auth_method = auth_method
        self.audience = audience
        self.cache = TokenCache(
            max_entries=max_entries,
            max_ttl=max_ttl,
            negative_ttl=negative_ttl,
            degraded_ttl=degraded_ttl,
        )
        self._own_http = http is None
        self.http = http or httpx.AsyncClient(
            timeout=httpx.Timeout(timeout, connect=min(timeout, 2.0)),
            limits=httpx.Limits(max_connections=100, max_keepalive_connections=20),
            trust_env=False,
        )
        self._inflight: dict[bytes, asyncio.Future[Principal | None]] = {}
        self._events_task: asyncio.Task[None] | None = None
        self.introspections = 0  # calls made to the AS, for tests and metrics
        self.stream: Any = None  # the EventStreamClient, once started

    @property
    def basic_authorization(self) -> str:
        """client_secret_basic, with the RFC 6749 §2.3.1 form-encoding before base64."""
        raw = f"{quote_plus(self.client_id)}:{quote_plus(self._secret)}"
        return "Basic " + base64.b64encode(raw.encode()).decode("ascii")

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        """Discover the AS if needed and open the event stream if it has one."""
        if self.introspection_endpoint is None or (
            self.events_enabled and self.events_endpoint is None and self.issuer
        ):
            await self._discover()
        if self.events_enabled and self.events_endpoint:
            from keystile.resource.events import EventStreamClient

            self.stream = EventStreamClient(self)
            self.cache.stream_connected = False  # degraded until the stream says ready
            self._events_task = asyncio.create_task(self.stream.run(), name="keystile-events")

    async def close(self) -> None:
        if self._events_task is not None:
            self._events_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._events_task
            self._events_task = None
        if self._own_http:
            await self.http.aclose()

    async def __aenter__(self) -> TokenValidator:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _discover(self) -> None:
        assert self.issuer is not None
        url = self.issuer + METADATA_PATH
        try:
            r = await self.http.get(url)
            r.raise_for_status()
            meta = r.json()
        except (httpx.HTTPError, ValueError) as exc:
            raise IntrospectionUnavailable(f"cannot read AS metadata at {url}: {exc}") from exc
        # RFC 8414 §3.3: the metadata must name the issuer it was fetched for.
        if not isinstance(meta, dict) or str(meta.get("issuer", "")).rstrip("/") != self.issuer:
            raise IntrospectionUnavailable(f"AS metadata at {url} names another issuer")
        endpoint = meta.get("introspection_endpoint")
        if self.introspection_endpoint is None:
            if not isinstance(endpoint, str):
                raise IntrospectionUnavailable("the AS metadata has no introspection_endpoint")
            self.introspection_endpoint = endpoint
        events = meta.get("keystile_events_endpoint")
        if self.events_endpoint is None and isinstance(events, str):
            self.events_endpoint = events

    # -- validation -------------------------------------------------------------------------

    def cached(self, token: str) -> Principal | object | None:
        """The cached answer for a token without any I/O: a Principal, None, or MISS."""
        return self.cache.get(cache_key(token))

    async def validate(self, token: str) -> Principal:
        """The principal of an active token; InvalidToken otherwise (RFC 6750 §3.1).

        Raises IntrospectionUnavailable when the AS cannot answer: fail closed, but do not
        call the token bad.
        """
        key = cache_key(token)
        found = self.cache.get(key)
        if found is MISS:
            found = await self._introspect_once(key, token)
        if found is None:
            raise InvalidToken("the access token is not active")
        assert isinstance(found, Principal)
        if self.audience is not None and self.audience not in found.aud:
            raise InvalidToken("the access token is not meant for this resource")
        return found

    @staticmethod
    def require(principal: Principal, scopes: Iterable[str] = ()) -> None:
        """Raise InsufficientScope (403, RFC 6750 §3.1) unless every scope was granted."""
        needed = frozenset(scopes)
        if not principal.scopes.issuperset(needed):
            raise InsufficientScope(" ".join(sorted(needed)))

    async def _introspect_once(self, key: bytes, token: str) -> Principal | None:
        """Single-flight: concurrent misses for one token share one AS call."""
        pending = self._inflight.get(key)
        if pending is not None:
            try:
                return await asyncio.shield(pending)
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if not pending.cancelled() or (task is not None and task.cancelling()):
                    raise
                # The request that was asking for us was cancelled, not this one: ask again.
                return await self._introspect_once(key, token)
        future: asyncio.Future[Principal | None] = asyncio.get_running_loop().create_future()
        self._inflight[key] = future
        try:
            principal = await self.introspect(token)
        except asyncio.CancelledError:
            future.cancel()
            raise
        except Exception as exc:
            future.set_exception(exc)
            future.exception()  # mark retrieved: there may be no waiter
            raise
        else:
            self.cache.put(key, principal)
            future.set_result(principal)
            return principal
        finally:
            del self._inflight[key]

    async def introspect(self, token: str) -> Principal | None:
        """One RFC 7662 call, no cache: the principal, or None when inactive."""
        if self.introspection_endpoint is None:
            await self._discover()
        assert self.introspection_endpoint is not None
        data = {"token": token, "token_type_hint": "access_token"}
        headers = {"accept": "application/json"}
        if self.auth_method == "client_secret_post":
            data.update(client_id=self.client_id, client_secret=self._secret)
        else:
            headers["authorization"] = self.basic_authorization
        self.introspections += 1
        try:
            r = await self.http.post(self.introspection_endpoint, data=data, headers=headers)
        except httpx.HTTPError as exc:
            raise IntrospectionUnavailable(f"introspection failed: {type(exc).__name__}") from exc
        if r.status_code != 200:
            # 401/403 means our own credentials or registration are wrong; 5xx the AS is
            # in trouble. Either way we cannot tell whether the token is good.
            log.error("introspection refused", extra={"status": r.status_code})
            raise IntrospectionUnavailable(f"introspection answered HTTP {r.status_code}")
        try:
            body = r.json()
        except ValueError as exc:
            raise IntrospectionUnavailable("introspection answered invalid JSON") from exc
        if not isinstance(body, dict) or not isinstance(body.get("active"), bool):
            raise IntrospectionUnavailable("introspection answer has no boolean 'active'")
        return Principal.from_introspection(body)
