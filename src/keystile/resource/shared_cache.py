"""An optional second-level cache in Redis, shared by every instance of a resource server.

The in-process ``TokenCache`` answers hits; on a miss, before asking the AS, the validator
looks here, so N instances behind a load balancer make about one introspection per token
instead of N. Values carry the introspection claims and when they were cached, never the
token: the key is ``<prefix>:<generation>:<SHA-256 hex of the token>``.

Safety rules (the same as the local cache, plus what sharing needs):

- a value lives in Redis at most ``min(exp - now, max_ttl)`` (``negative_ttl`` for an
  inactive answer), and is used only while the local rules allow its age: while this
  instance's event stream is disconnected, nothing older than ``degraded_ttl``;
- every instance applies revocation events here too: ``token_revoked`` deletes the key;
  ``client_disabled``/``client_deleted`` and ``reset`` bump the generation, which retires
  every value at once;
- a value fetched from Redis is checked against this instance's revoked set before use, so
  an instance that already saw a revocation never takes the token back from a slower peer;
- Redis errors never fail a request: the validator falls back to the AS (and logs).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import orjson

from keystile.resource.cache import TokenCache
from keystile.resource.principal import Principal

log = logging.getLogger("keystile.resource")


class SharedCache:
    """``SharedCache(redis.asyncio.Redis.from_url(url), prefix="ks:orders-api")``"""

    def __init__(self, redis: Any, *, prefix: str = "keystile:rs") -> None:
        self.redis = redis
        self.prefix = prefix
        self._gen_key = f"{prefix}:generation"
        self.errors = 0

    async def _generation(self) -> int:
        value = await self.redis.get(self._gen_key)
        return int(value) if value is not None else 0

    async def _key(self, key: bytes) -> str:
        return f"{self.prefix}:{await self._generation()}:{key.hex()}"

    async def get(self, key: bytes, cache: TokenCache) -> Principal | object | None:
        """A shared answer usable under ``cache``'s rules: Principal, None, or ``MISS``."""
        from keystile.resource.cache import MISS

        try:
            raw = await self.redis.get(await self._key(key))
        except Exception as exc:  # any Redis failure: fall back to the AS
            self._failed(exc)
            return MISS
        if raw is None:
            return MISS
        try:
            value = orjson.loads(raw)
            age = time.time() - float(value["at"])
            claims = value["claims"]
        except (ValueError, KeyError, TypeError):
            return MISS
        limit = cache.max_ttl if claims is not None else cache.negative_ttl
        if claims is not None and cache.stream_connected is False:
            limit = cache.degraded_ttl
        if age < 0 or age >= limit:
            return MISS
        if claims is None:
            return None
        principal = Principal.from_introspection(claims)
        if principal is None or (principal.exp is not None and principal.exp <= time.time()):
            return MISS
        return principal

    async def put(self, key: bytes, principal: Principal | None, cache: TokenCache) -> None:
        if principal is None:
            ttl = cache.negative_ttl
            claims: dict[str, Any] | None = None
        else:
            ttl = cache.max_ttl if cache.stream_connected is not False else cache.degraded_ttl
            if principal.exp is not None:
                ttl = min(ttl, principal.exp - time.time())
            claims = dict(principal.claims)
        millis = int(ttl * 1000)
        if millis <= 0:
            return
        value = orjson.dumps({"at": time.time(), "claims": claims})
        try:
            await self.redis.set(await self._key(key), value, px=millis)
        except Exception as exc:
            self._failed(exc)

    async def apply_event(self, event: str, data: dict[str, Any]) -> None:
        """Mirror a revocation event into Redis (every instance does; all are idempotent)."""
        try:
            if event == "token_revoked" and isinstance(data.get("token_sha256"), str):
                await self.redis.delete(await self._key(bytes.fromhex(data["token_sha256"])))
            elif event in ("client_disabled", "client_deleted", "reset") or event not in (
                "ready",
                "token_revoked",
            ):
                await self.redis.incr(self._gen_key)
        except ValueError:
            await self.redis.incr(self._gen_key)
        except Exception as exc:
            self._failed(exc)

    def _failed(self, exc: Exception) -> None:
        self.errors += 1
        if self.errors == 1 or self.errors % 1000 == 0:
            log.warning("shared cache unavailable", extra={"error": type(exc).__name__})
