"""Tokens the revocation event stream said are revoked, for tokens validated without the AS.

A JWT access token (RFC 9068) validated locally stays valid by signature until its ``exp``,
so evicting it from the cache is not enough: the next request would validate it again. The
event stream therefore also records what it revoked here, and a locally validated token is
refused when it matches:

- ``token_revoked``: the token's SHA-256 (our cache key) and its ``jti``, each until the
  event's ``exp`` (after which the token is expired anyway);
- ``client_disabled`` / ``client_deleted``: every token of that client issued (``iat``) no
  later than the event.

Bounded: when full, expired records go first, then the oldest. Pure and synchronous, so the
async validator and a sync one can share it.
"""

from __future__ import annotations

import contextlib
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any, TypeGuard

from keystile.resource.principal import Principal


class RevokedTokens:
    """What the event stream revoked: ``revoked.token_revoked(event_data)``, then
    ``revoked.is_revoked(cache_key, principal)``."""

    def __init__(
        self,
        *,
        max_entries: int = 100_000,
        retention: float = 86_400.0,
        wall: Callable[[], float] = time.time,
    ) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self.max_entries = max_entries
        # Kept this long when an event does not say when the token expires.
        self.retention = retention
        self._wall = wall
        # value -> wall-clock time after which the record is useless
        self._hashes: OrderedDict[bytes, float] = OrderedDict()
        self._jtis: OrderedDict[str, float] = OrderedDict()
        # client_id -> (tokens issued at or before this time are revoked, record expiry)
        self._clients: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._hashes) + len(self._jtis) + len(self._clients)

    # -- recording (from events) ------------------------------------------------------------

    def token_revoked(self, data: Mapping[str, Any]) -> None:
        """Record a ``token_revoked`` event's ``token_sha256`` (hex) and ``jti``."""
        now = self._wall()
        exp = data.get("exp")
        until = float(exp) if _is_number(exp) else now + self.retention
        if until <= now:
            return  # the token has expired: nothing can accept it any more
        digest = data.get("token_sha256")
        if isinstance(digest, str):
            with contextlib.suppress(ValueError):  # malformed: the caller flushes its cache
                self._put(self._hashes, bytes.fromhex(digest), until, now)
        jti = data.get("jti")
        if isinstance(jti, str) and jti:
            self._put(self._jtis, jti, until, now)

    def client_revoked(self, data: Mapping[str, Any]) -> None:
        """Record ``client_disabled`` / ``client_deleted``: the client's tokens issued so far."""
        client_id = data.get("client_id")
        if not isinstance(client_id, str):
            return
        now = self._wall()
        iat = data.get("iat")
        # Without the event's time, take ours: later than the AS's, so on the safe side.
        issued_before = float(iat) if _is_number(iat) else now
        self._put(self._clients, client_id, (issued_before, now + self.retention), now)

    # -- checking (before accepting a locally validated token) ------------------------------

    def has_hash(self, key: bytes) -> bool:
        """Whether an event revoked the token with this SHA-256 (before knowing its claims)."""
        return bool(self._hashes) and _live(self._hashes, key, self._wall())

    def is_revoked(self, key: bytes, principal: Principal) -> bool:
        """Whether an event revoked this token (by cache key, ``jti`` or client)."""
        if not (self._hashes or self._jtis or self._clients):
            return False
        now = self._wall()
        if _live(self._hashes, key, now):
            return True
        if principal.jti is not None and _live(self._jtis, principal.jti, now):
            return True
        if principal.client_id is not None:
            record = self._clients.get(principal.client_id)
            if record is not None:
                issued_before, until = record
                if until <= now:
                    del self._clients[principal.client_id]
                # A token without iat cannot show it came after the revocation.
                elif principal.iat is None or principal.iat <= issued_before:
                    return True
        return False

    def clear(self) -> None:
        self._hashes.clear()
        self._jtis.clear()
        self._clients.clear()

    # -- bounds -------------------------------------------------------------------------------

    def _put(self, records: OrderedDict[Any, Any], name: Any, value: Any, now: float) -> None:
        records.pop(name, None)
        if len(self) >= self.max_entries:
            self._purge(now)
        while len(self) >= self.max_entries:
            largest: OrderedDict[Any, Any] = max((self._hashes, self._jtis, self._clients), key=len)
            largest.popitem(last=False)  # its oldest record
        records[name] = value

    def _purge(self, now: float) -> None:
        for digest in [h for h, until in self._hashes.items() if until <= now]:
            del self._hashes[digest]
        for jti in [j for j, until in self._jtis.items() if until <= now]:
            del self._jtis[jti]
        for client_id in [c for c, (_, until) in self._clients.items() if until <= now]:
            del self._clients[client_id]


def _live(records: OrderedDict[Any, float], name: Any, now: float) -> bool:
    until = records.get(name)
    if until is None:
        return False
    if until <= now:
        del records[name]
        return False
    return True


def _is_number(value: object) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool)
