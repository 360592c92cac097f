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
import contextlib
import logging
import os
from collections.abc import Iterable
from typing import Any

import httpx

from keystile.errors import (
    InsufficientScope,
    IntrospectionUnavailable,
    InvalidToken,
)
from keystile.resource.cache import MISS, TokenCache, cache_key
from keystile.resource.introspection import (
    METADATA_PATH,
    AuthMethod,
    basic_authorization,
    discovered_endpoints,
    introspection_request,
    principal_from_response,
    tls_verify,
)
from keystile.resource.jwt import JWTValidator, looks_like_jwt
from keystile.resource.principal import Principal
from keystile.resource.revoked import RevokedTokens
from keystile.resource.shared_cache import SharedCache

log = logging.getLogger("keystile.resource")


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
        jwt: JWTValidator | bool = False,
        shared_cache: SharedCache | None = None,
        max_ttl: float = 60.0,
        negative_ttl: float = 5.0,
        degraded_ttl: float = 5.0,
        max_entries: int = 100_000,
        timeout: float = 5.0,
        ca_file: str | os.PathLike[str] | None = None,
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
        self.shared = shared_cache
        self.cache = TokenCache(
            max_entries=max_entries,
            max_ttl=max_ttl,
            negative_ttl=negative_ttl,
            degraded_ttl=degraded_ttl,
        )
        self._own_http = http is None
        if http is not None and ca_file is not None:
            raise ValueError("give ca_file or http (a client of your own), not both")
        self.http = http or httpx.AsyncClient(
            timeout=httpx.Timeout(timeout, connect=min(timeout, 2.0)),
            limits=httpx.Limits(max_connections=100, max_keepalive_connections=20),
            trust_env=False,
            verify=tls_verify(ca_file),
        )
        # JWT access tokens (RFC 9068) validated locally; jwt=True reads the issuer's JWKS.
        if jwt is True:
            if issuer is None or audience is None:
                raise ValueError("jwt=True needs issuer and audience (RFC 9068 §4)")
            jwt = JWTValidator(issuer=issuer, audience=audience, http=self.http)
        self.jwt = jwt if isinstance(jwt, JWTValidator) else None
        # Fed by the event stream: refuses locally validated tokens revoked since issuance.
        self.revoked = RevokedTokens()
        self._inflight: dict[bytes, asyncio.Future[Principal | None]] = {}
        self._events_task: asyncio.Task[None] | None = None
        self.introspections = 0  # calls made to the AS, for tests and metrics
        self.stream: Any = None  # the EventStreamClient, once started

    @property
    def basic_authorization(self) -> str:
        """client_secret_basic, with the RFC 6749 §2.3.1 form-encoding before base64."""
        return basic_authorization(self.client_id, self._secret)

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
        if self.jwt is not None:
            await self.jwt.close()
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
        self.introspection_endpoint, self.events_endpoint = discovered_endpoints(
            meta,
            issuer=self.issuer,
            url=url,
            introspection_endpoint=self.introspection_endpoint,
            events_endpoint=self.events_endpoint,
        )

    # -- validation -------------------------------------------------------------------------

    def cached(self, token: str) -> Principal | object | None:
        """The cached answer for a token without any I/O: a Principal, None, or MISS."""
        return self.cache.get(cache_key(token))

    async def validate(self, token: str, *, realtime: bool = False) -> Principal:
        """The principal of an active token; InvalidToken otherwise (RFC 6750 §3.1).

        With ``jwt`` configured, a JWT access token (RFC 9068) is validated locally and
        others are introspected. ``realtime=True`` asks the AS now, even for a JWT and
        whatever is cached, and caches its answer. Raises IntrospectionUnavailable when the
        AS cannot answer: fail closed, but do not call the token bad.
        """
        key = cache_key(token)
        if realtime:
            found: Principal | object | None = await self._introspect_once(key, token)
        else:
            found = self.cache.get(key)
            if found is MISS:
                if self.revoked.has_hash(key):
                    # The event stream reported this very token revoked: no need to ask.
                    raise InvalidToken("the access token is not active")
                if self.jwt is not None and looks_like_jwt(token):
                    found = await self._validate_jwt(key, token)
                else:
                    found = await self._introspect_once(key, token)
        if not isinstance(found, Principal):  # None: inactive (MISS was answered above)
            raise InvalidToken("the access token is not active")
        if self.audience is not None and self.audience not in found.aud:
            raise InvalidToken("the access token is not meant for this resource")
        return found

    @staticmethod
    def require(principal: Principal, scopes: Iterable[str] = ()) -> None:
        """Raise InsufficientScope (403, RFC 6750 §3.1) unless every scope was granted."""
        if isinstance(scopes, frozenset) and principal.scopes >= scopes:
            return  # the hot path: a route's scopes are a frozenset already
        needed = frozenset(scopes)
        if not principal.scopes.issuperset(needed):
            raise InsufficientScope(" ".join(sorted(needed)))

    async def _validate_jwt(self, key: bytes, token: str) -> Principal:
        """Local RFC 9068 validation, then the revocations the event stream reported."""
        assert self.jwt is not None
        principal = await self.jwt.validate(token)
        # Checked after the await: an event may have come in while the keys were fetched.
        if self.revoked.is_revoked(key, principal):
            raise InvalidToken("the access token is not active")
        self.cache.put(key, principal)
        return principal

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
            principal = await self._shared_or_introspect(key, token)
        except asyncio.CancelledError:
            future.cancel()
            raise
        except Exception as exc:
            future.set_exception(exc)
            future.exception()  # mark retrieved: there may be no waiter
            raise
        else:
            # A revocation event may have arrived while we asked: keep its word, not ours.
            if principal is None or not self.revoked.is_revoked(key, principal):
                self.cache.put(key, principal)
            future.set_result(principal)
            return principal
        finally:
            del self._inflight[key]

    async def _shared_or_introspect(self, key: bytes, token: str) -> Principal | None:
        """The shared (Redis) cache's answer if it has a usable one, else the AS's."""
        if self.shared is not None:
            found = await self.shared.get(key, self.cache)
            if found is None or (
                isinstance(found, Principal) and not self.revoked.is_revoked(key, found)
            ):
                return found
        principal = await self.introspect(token)
        if self.shared is not None and (
            principal is None or not self.revoked.is_revoked(key, principal)
        ):
            await self.shared.put(key, principal, self.cache)
        return principal

    async def introspect(self, token: str) -> Principal | None:
        """One RFC 7662 call, no cache: the principal, or None when inactive."""
        if self.introspection_endpoint is None:
            await self._discover()
        assert self.introspection_endpoint is not None
        data, headers = introspection_request(
            token,
            client_id=self.client_id,
            client_secret=self._secret,
            auth_method=self.auth_method,
        )
        self.introspections += 1
        try:
            r = await self.http.post(self.introspection_endpoint, data=data, headers=headers)
        except httpx.HTTPError as exc:
            raise IntrospectionUnavailable(f"introspection failed: {type(exc).__name__}") from exc
        return principal_from_response(r)
