"""DPoP proof ``jti``s shared by several instances through Redis (RFC 9449 §11.1).

Each ``SenderCheck`` remembers proofs in its own process first (``MemoryReplayCache``); with
``shared_replay=SharedReplayCache(redis)`` it also records each proof in Redis with ``SET NX``
and an expiry at the end of the proof's window, so a proof replayed to *another* gateway or
API instance is refused too.

If Redis cannot answer, requests are not failed: the proof has passed this process's own
replay check, and a warning is logged (counted in ``errors``); only cross-instance replay
protection is lost until Redis is back.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any

log = logging.getLogger("keystile.resource")


class SharedReplayCache:
    """``SharedReplayCache(redis.asyncio.Redis.from_url(url), prefix="keystile:gw")``"""

    def __init__(self, redis: Any, *, prefix: str = "keystile:dpop") -> None:
        self.redis = redis
        self.prefix = prefix
        self.errors = 0

    async def first_use(self, key: str, expires_at: int, now: int) -> bool:
        """True the first time ``key`` is seen by any instance until ``expires_at``."""
        # Keys hold a caller-chosen jti: hashed, so their size is bounded.
        digest = hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()[:40]
        try:
            stored = await self.redis.set(
                f"{self.prefix}:{digest}", b"1", nx=True, ex=max(1, expires_at - now)
            )
        except Exception as exc:  # any Redis failure: this process's check stands alone
            self.errors += 1
            if self.errors == 1 or self.errors % 1000 == 0:
                log.warning(
                    "Redis unreachable: DPoP proofs are checked for replay per process only",
                    extra={"error": str(exc) or type(exc).__name__, "errors": self.errors},
                )
            return True
        return bool(stored)

    async def close(self) -> None:
        await self.redis.aclose()
