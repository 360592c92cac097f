"""The resource server's cache of introspection results, keyed by SHA-256(token).

Rules (ARCHITECTURE.md, decision 5):

- a positive entry lives no longer than the token's ``exp`` and ``max_ttl``; while the
  revocation event stream is configured but disconnected, no entry older than
  ``degraded_ttl`` is used (entries are kept, since the stream's replay evicts what was
  revoked meanwhile once it reconnects);
- a negative entry (inactive token) lives ``negative_ttl``;
- errors are never cached;
- bounded: the least recently used entry goes first.

The key is the same SHA-256 the AS's events carry, so an event evicts an entry without
the cache ever holding a raw token.
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable

from keystile.resource.principal import Principal

MISS = object()  # sentinel: nothing usable cached
_sha256 = hashlib.sha256


def cache_key(token: str) -> bytes:
    # Strict UTF-8 is the fast path and gives the same bytes whenever it succeeds; only a
    # string with lone surrogates needs surrogateescape (the hot path: ~100 ns saved).
    try:
        return _sha256(token.encode()).digest()
    except UnicodeEncodeError:
        return _sha256(token.encode("utf-8", "surrogateescape")).digest()


class TokenCache:
    """Bounded LRU of introspection results with expiry: ``cache.get(key)``."""

    def __init__(
        self,
        *,
        max_entries: int = 100_000,
        max_ttl: float = 60.0,
        negative_ttl: float = 5.0,
        degraded_ttl: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        if min(max_ttl, negative_ttl, degraded_ttl) < 0:
            raise ValueError("cache lifetimes cannot be negative")
        self.max_entries = max_entries
        self.max_ttl = max_ttl
        self.negative_ttl = negative_ttl
        self.degraded_ttl = degraded_ttl
        self._clock = clock
        self._wall = wall
        # key -> (deadline, cached_at, principal or None)
        self._entries: OrderedDict[bytes, tuple[float, float, Principal | None]] = OrderedDict()
        self._by_client: dict[str, set[bytes]] = {}
        # None: no event stream configured (pure TTL mode); True/False: stream state.
        self.stream_connected: bool | None = None
        self.hits = 0
        self.misses = 0
        self.evictions = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: bytes) -> Principal | object | None:
        """The cached principal, None for a cached "inactive", or MISS."""
        entry = self._entries.get(key)
        if entry is not None:
            now = self._clock()
            deadline, cached_at, principal = entry
            if now < deadline and (
                self.stream_connected is not False or now - cached_at < self.degraded_ttl
            ):
                self._entries.move_to_end(key)
                self.hits += 1
                return principal
        self.misses += 1
        return MISS

    def get_stale(self, key: bytes, max_age: float) -> Principal | None:
        """A positive entry cached less than ``max_age`` seconds ago, even past its TTL,
        but never past the token's ``exp``; None otherwise.

        Only for answering while the AS cannot: an entry a revocation event evicted, or one
        a later "inactive" answer replaced, is gone, so it is never served stale.
        """
        entry = self._entries.get(key)
        if entry is None or entry[2] is None or self._clock() - entry[1] >= max_age:
            return None
        principal = entry[2]
        if principal.exp is not None and principal.exp <= self._wall():
            return None
        return principal

    def put(self, key: bytes, principal: Principal | None) -> None:
        now = self._clock()
        if principal is None:
            ttl = self.negative_ttl
        else:
            ttl = self.max_ttl if self.stream_connected is not False else self.degraded_ttl
            if principal.exp is not None:
                ttl = min(ttl, principal.exp - self._wall())
        if ttl <= 0:
            return
        if key in self._entries:
            self._forget(key)
        elif len(self._entries) >= self.max_entries:
            oldest, _ = next(iter(self._entries.items()))
            self._forget(oldest)
        self._entries[key] = (now + ttl, now, principal)
        if principal is not None and principal.client_id is not None:
            self._by_client.setdefault(principal.client_id, set()).add(key)

    def _forget(self, key: bytes) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None and entry[2] is not None and entry[2].client_id is not None:
            keys = self._by_client.get(entry[2].client_id)
            if keys is not None:
                keys.discard(key)
                if not keys:
                    del self._by_client[entry[2].client_id]

    def evict(self, key: bytes) -> bool:
        """Drop one token's entry (a ``token_revoked`` event)."""
        if key in self._entries:
            self._forget(key)
            self.evictions += 1
            return True
        return False

    def evict_client(self, client_id: str) -> int:
        """Drop every entry of one client (``client_disabled``, ``client_deleted``)."""
        keys = self._by_client.pop(client_id, set())
        for key in keys:
            self._entries.pop(key, None)
        self.evictions += len(keys)
        return len(keys)

    def clear(self) -> None:
        """Drop everything (``reset``, or an event type this version does not know)."""
        self.evictions += len(self._entries)
        self._entries.clear()
        self._by_client.clear()
